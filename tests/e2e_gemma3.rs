//! End to end on the real Gemma 3 270M (Q4_K_M GGUF) against Hugging Face `transformers` run
//! in fp32 on the same GGUF (`tests/data/gemma3_270m_reference.json`, made offline by
//! `pkg-scripts/make_gemma3_reference.py`).
//!
//! Tolerance. Both sides use identical dequantized weights, so the only differences are f32
//! summation order and our f16 KV cache (keys and values rounded to 11 significant bits, the
//! standard trade-off every GPU runtime makes). Measured on lavapipe the largest logit
//! difference over all positions of all prompts is reported by the test; the bound below,
//! `LOGIT_ATOL`, is a few times that. For scale: the logits span ±30 and a wrong attention
//! scale, a missing norm or an off-by-one sliding window moves them by whole units at most
//! positions (the window bug only after position 512, which the long prompts cover).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use gemma_wgpu::gguf;
use gemma_wgpu::gpu::{GpuContext, GpuOptions};
use gemma_wgpu::model::{LoadOptions, Model};
use serde_json::Value;

/// Largest |our logit − transformers' logit| allowed for any token in both top-10 lists.
const LOGIT_ATOL: f32 = 0.08;
/// Greedy tokens must match until the reference's own top-2 margin drops below this.
const GREEDY_MARGIN: f64 = 0.05;

struct Prompt {
    name: String,
    ids: Vec<u32>,
    /// Per position: (ids, logits, logsumexp) of transformers' top-10.
    score: Vec<(Vec<u32>, Vec<f32>, f32)>,
    greedy: Vec<u32>,
    margins: Vec<f64>,
}

fn reference() -> Vec<Prompt> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/gemma3_270m_reference.json"
    );
    let text = std::fs::read_to_string(path).expect("reference fixture");
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

fn model_path() -> std::path::PathBuf {
    let p = gguf::default_model_path();
    assert!(
        p.exists(),
        "the Gemma 3 270M model is not at {}; fetch it with pkg-scripts/fetch-model.sh",
        p.display()
    );
    p
}

fn load(portable: bool) -> Model {
    let (g, mut src) = gguf::open(model_path()).expect("open model");
    let ctx = Arc::new(
        common::block(GpuContext::new(&GpuOptions {
            webgpu_default_limits: true,
            disable_f16: portable,
            disable_subgroups: portable,
            backends: Some(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12),
            ..Default::default()
        }))
        .expect("GPU"),
    );
    let opts = LoadOptions {
        context: Some(2048),
        ..Default::default()
    };
    common::block(Model::load(ctx, &g, &mut src, &opts, |_, _| {})).expect("load model")
}

/// Compares `score` with the reference at every position of every prompt.
fn check_scores(model: &mut Model, variant: &str) {
    let prompts = reference();
    assert!(prompts.len() >= 5);
    assert!(
        prompts.iter().any(|p| p.ids.len() > 600),
        "a prompt must wrap the sliding window"
    );
    let mut worst = (0f32, String::new());
    let mut positions = 0;
    for p in &prompts {
        let got = common::block(model.score(&p.ids, 10)).expect("score");
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
                            err <= LOGIT_ATOL,
                            "{where_}: token {id} logit {got} vs transformers {want} (|Δ| {err:.4} > {LOGIT_ATOL})"
                        );
                    }
                    None => assert!(
                        want - tenth <= 2.0 * LOGIT_ATOL,
                        "{where_}: token {id} (logit {want}) missing from our top 10 {:?}",
                        ours.ids
                    ),
                }
            }
            // The argmax agrees unless the reference itself is within tolerance of a tie.
            if ref_logits[0] - ref_logits[1] > 2.0 * LOGIT_ATOL {
                assert_eq!(ours.ids[0], ref_ids[0], "{where_}: argmax");
            }
            let lse_err = (ours.logsumexp - ref_lse).abs();
            assert!(
                lse_err <= LOGIT_ATOL,
                "{where_}: logsumexp {} vs {ref_lse}",
                ours.logsumexp
            );
            positions += 1;
        }
    }
    eprintln!(
        "{variant}: {positions} positions agree with transformers; largest |Δlogit| {:.4} at {}",
        worst.0, worst.1
    );
}

/// Greedy decoding matches the reference up to its first near-tie.
fn check_greedy(model: &mut Model, variant: &str) {
    for p in reference() {
        model.reset();
        let mut cands = common::block(model.forward(&p.ids, &[], 1.0)).expect("prefill");
        let mut matched = 0;
        for (step, (&want, &margin)) in p.greedy.iter().zip(&p.margins).enumerate() {
            if margin < GREEDY_MARGIN {
                break;
            }
            let got = cands.ids[0];
            assert_eq!(
                got, want,
                "{variant} {}: greedy step {step} gave {got}, transformers {want} (margin {margin:.3})",
                p.name
            );
            matched += 1;
            if step + 1 < p.greedy.len() {
                cands = common::block(model.forward(&[got], &[], 1.0)).expect("decode");
            }
        }
        eprintln!("{variant} {}: {matched} greedy tokens identical", p.name);
    }
}

#[test]
fn gemma3_270m_matches_transformers() {
    let mut model = load(false);
    check_scores(&mut model, "default");
    check_greedy(&mut model, "default");
}

#[test]
fn gemma3_270m_matches_transformers_portable_kernels() {
    let mut model = load(true);
    check_scores(&mut model, "portable");
    check_greedy(&mut model, "portable");
}
