//! The `transformers` reference fixtures (`gemma-wgpu-reference/1`, written offline by the
//! `pkg-scripts/make_gemma*_reference.py` scripts) and the checks every end-to-end test runs
//! against them: top-k logits at every position, then greedy decoding up to the first near-tie.
#![allow(dead_code)]

use std::collections::HashMap;

use gemma_wgpu::model::Model;
use serde_json::Value;

/// How close a model must be to its reference.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Largest |our logit − transformers' logit| allowed for any token in both top-10 lists.
    pub logit_atol: f32,
    /// Greedy tokens must match until the reference's own top-2 margin drops below this.
    pub greedy_margin: f64,
}

pub struct Prompt {
    pub name: String,
    pub ids: Vec<u32>,
    /// Per position: (ids, logits, logsumexp) of transformers' top-10.
    pub score: Vec<(Vec<u32>, Vec<f32>, f32)>,
    pub greedy: Vec<u32>,
    pub margins: Vec<f64>,
}

/// The prompts of the fixture at `path` (relative to the crate root).
pub fn load(path: &str) -> Vec<Prompt> {
    let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).expect("reference JSON");
    assert_eq!(v["format"], "gemma-wgpu-reference/1");
    let u32s = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let f32s = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    v["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            name: p["name"].as_str().unwrap().to_string(),
            ids: u32s(&p["prompt_ids"]),
            score: p["score"]["positions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pos| {
                    (
                        u32s(&pos["ids"]),
                        f32s(&pos["logits"]),
                        pos["logsumexp"].as_f64().unwrap() as f32,
                    )
                })
                .collect(),
            greedy: u32s(&p["greedy"]["tokens"]),
            margins: p["greedy"]["margins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect(),
        })
        .collect()
}

/// For each prompt: `score` at every position against the reference, then greedy
/// decoding from the same cache (the prompt is already in it, and its last row gives the first
/// candidates) against the reference's greedy tokens, up to its first near-tie.
pub fn check(
    model: &mut Model,
    prompts: &[Prompt],
    variant: &str,
    tol: Tolerance,
    greedy: bool,
) -> f32 {
    let atol = tol.logit_atol;
    let mut worst = (0f32, String::new());
    let mut positions = 0;
    for p in prompts {
        let got = super::block(model.score(&p.ids, 10)).expect("score");
        assert_eq!(got.len(), p.ids.len(), "{}: one row per position", p.name);
        for (pos, (ours, (ref_ids, ref_logits, ref_lse))) in got.iter().zip(&p.score).enumerate() {
            let where_ = format!("{variant} {} position {pos}", p.name);
            let ours_map: HashMap<u32, f32> = ours.pairs().into_iter().collect();
            // Every reference candidate clearly inside the top 10 must be in ours, with a
            // logit within tolerance.
            let tenth = *ref_logits.last().unwrap();
            for (&id, &want) in ref_ids.iter().zip(ref_logits) {
                match ours_map.get(&id) {
                    Some(&got) => {
                        let err = (got - want).abs();
                        if err > worst.0 {
                            worst = (err, format!("{where_} token {id}"));
                        }
                        assert!(
                            err <= atol,
                            "{where_}: token {id} logit {got} vs transformers {want} (|Δ| {err:.4} > {atol})"
                        );
                    }
                    None => assert!(
                        want - tenth <= 2.0 * atol,
                        "{where_}: token {id} (logit {want}) missing from our top 10 {:?}",
                        ours.ids
                    ),
                }
            }
            // The argmax agrees unless the reference itself is within tolerance of a tie.
            if ref_logits[0] - ref_logits[1] > 2.0 * atol {
                assert_eq!(ours.ids[0], ref_ids[0], "{where_}: argmax");
            }
            let lse_err = (ours.logsumexp - ref_lse).abs();
            assert!(
                lse_err <= atol,
                "{where_}: logsumexp {} vs {ref_lse}",
                ours.logsumexp
            );
            positions += 1;
        }
        if greedy {
            check_greedy(
                model,
                variant,
                p,
                got.last().unwrap().ids[0],
                tol.greedy_margin,
            );
        }
    }
    eprintln!(
        "{variant}: {positions} positions of {} prompts agree with transformers; largest |Δlogit| {:.4} at {}",
        prompts.len(),
        worst.0,
        worst.1
    );
    worst.0
}

/// Greedy decoding, continuing from the scored prompt, matches the reference up to its
/// first near-tie. `first` is our argmax after the prompt.
pub fn check_greedy(model: &mut Model, variant: &str, p: &Prompt, first: u32, min_margin: f64) {
    let mut got = first;
    let mut matched = 0;
    for (step, (&want, &margin)) in p.greedy.iter().zip(&p.margins).enumerate() {
        if margin < min_margin {
            break;
        }
        assert_eq!(
            got, want,
            "{variant} {}: greedy step {step} gave {got}, transformers {want} (margin {margin:.3})",
            p.name
        );
        matched += 1;
        if step + 1 < p.greedy.len() {
            got = super::block(model.forward(&[got], &[], 1.0))
                .expect("decode")
                .ids[0];
        }
    }
    eprintln!("{variant} {}: {matched} greedy tokens identical", p.name);
}
