//! Logits op (softcap, repetition penalty, top-k, logsumexp) against `reference::logits`.
//!
//! Checks, in order, for every case:
//! 1. the logits rewritten in place equal the CPU softcap + penalty within atol 1e-6,
//!    rtol 2e-6 (f32 tanh/division round differently from the f64 reference by an ulp or two);
//! 2. the ids are **exactly** the CPU top-k of those GPU-written logits with the tie rule
//!    (larger value first, then lower id), and the values bit-equal to them: ranking the GPU's
//!    own values keeps the check exact even where rounding could reorder near-ties;
//! 3. logsumexp within atol 1e-5, rtol 2e-6 of the f64 value (f32 exp-sums over ≤ 262144
//!    terms, combined through ≤ 3 levels).

// The shared harness trips this lint under clippy 1.95 (NaN-aware `!(err <= tol)` is deliberate).
mod common;

use common::{assert_close, block, variants, Rng};
use gemma_wgpu::gpu::{GpuContext, Op, StepParams};
use gemma_wgpu::kernels::logits::{LogitRows, Logits, LogitsConfig, LogitsIo, Sampling, MAX_K};
use gemma_wgpu::reference;

const LOGIT_ATOL: f32 = 1e-6;
const LOGIT_RTOL: f32 = 2e-6;
const LSE_ATOL: f32 = 1e-5;
const LSE_RTOL: f32 = 2e-6;

struct Case<'a> {
    name: &'a str,
    vocab: usize,
    rows: Vec<Vec<f32>>,
    k: u32,
    softcap: Option<f32>,
    penalty: f32,
    ids: Vec<u32>,
    temperature: f32,
    per_token: bool,
}

impl Default for Case<'_> {
    fn default() -> Self {
        Case {
            name: "",
            vocab: 0,
            rows: Vec::new(),
            k: 10,
            softcap: None,
            penalty: 1.0,
            ids: Vec::new(),
            temperature: 1.0,
            per_token: false,
        }
    }
}

/// GPU result: (logits after the op, top-k per row).
fn run_gpu(ctx: &GpuContext, c: &Case) -> (Vec<f32>, Vec<gemma_wgpu::kernels::logits::TopK>) {
    let r = c.rows.len() as u32;
    let flat: Vec<f32> = c.rows.concat();
    let lb = ctx.storage_init("logits", &flat).unwrap();
    let ib = ctx.storage_init("ids", &c.ids).unwrap();
    let ob = ctx.storage("out", Logits::out_bytes(r, MAX_K)).unwrap();
    // Per-token rows: the step has 2 more tokens than `max`, proving the clamp; fixed rows
    // ignore the step's 7 tokens.
    let step = StepParams::new(if c.per_token { r + 2 } else { 7 }, 0);
    let sb = ctx.params_init("step", &step);
    let mut op = Logits::new(
        ctx,
        LogitsIo {
            logits: lb.as_entire_binding(),
            penalty_ids: Some(ib.as_entire_binding()),
            out: ob.as_entire_binding(),
            step: sb.as_entire_binding(),
        },
        &LogitsConfig {
            vocab: c.vocab as u32,
            rows: if c.per_token {
                LogitRows::PerToken { max: r }
            } else {
                LogitRows::Fixed(r)
            },
            softcap: c.softcap,
        },
    )
    .unwrap();
    op.set_sampling(
        ctx,
        &Sampling {
            k: c.k,
            penalty: c.penalty,
            n_penalty_ids: c.ids.len() as u32,
            temperature: c.temperature,
        },
    )
    .unwrap();
    block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
    let logits: Vec<f32> = block(ctx.read(&lb, 0, flat.len())).unwrap();
    let words: Vec<u32> =
        block(ctx.read(&ob, 0, (Logits::out_bytes(r, c.k) / 4) as usize)).unwrap();
    (logits, Logits::parse(&words, r as usize, c.k as usize))
}

fn check(c: &Case) {
    let inv_temp = if c.temperature > 0.0 {
        1.0 / c.temperature as f64
    } else {
        1.0
    };
    let want_logits: Vec<f32> = c
        .rows
        .iter()
        .flat_map(|row| {
            let mut row = row.clone();
            if let Some(cap) = c.softcap {
                reference::logits::softcap(&mut row, cap);
            }
            reference::logits::repetition_penalty(&mut row, &c.ids, c.penalty);
            row
        })
        .collect();
    for v in variants() {
        let what = format!("{} V {} k {} [{}]", c.name, c.vocab, c.k, v.name);
        let (logits, top) = run_gpu(&v.ctx, c);
        // Equal infinities compare equal (assert_close's difference would be NaN).
        let same_inf = |g: f32, w: f32| if g == w && !w.is_finite() { 0.0 } else { g };
        let got: Vec<f32> = logits
            .iter()
            .zip(&want_logits)
            .map(|(&g, &w)| same_inf(g, w))
            .collect();
        let want: Vec<f32> = want_logits.iter().map(|&w| same_inf(w, w)).collect();
        assert_close(
            &format!("{what} logits"),
            &got,
            &want,
            LOGIT_ATOL,
            LOGIT_RTOL,
        );
        let worst_logit = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
            .fold(0f32, f32::max);
        let mut worst_lse = 0f64;
        for (r, (row, t)) in logits.chunks(c.vocab).zip(&top).enumerate() {
            let want = reference::logits::top_k(row, c.k as usize);
            let want_ids: Vec<u32> = want.iter().map(|p| p.0).collect();
            let want_vals: Vec<u32> = want.iter().map(|p| p.1.to_bits()).collect();
            let got_vals: Vec<u32> = t.values.iter().map(|v| v.to_bits()).collect();
            assert_eq!(t.ids, want_ids, "{what} row {r} ids");
            assert_eq!(got_vals, want_vals, "{what} row {r} values");
            let lse = reference::logits::logsumexp(row, inv_temp);
            let err = (t.logsumexp as f64 - lse).abs();
            assert!(
                err <= LSE_ATOL as f64 + LSE_RTOL as f64 * lse.abs()
                    || (lse == f64::NEG_INFINITY && t.logsumexp == f32::NEG_INFINITY),
                "{what} row {r} logsumexp got {} want {lse} (err {err:.2e})",
                t.logsumexp
            );
            if err.is_finite() {
                worst_lse = worst_lse.max(err);
            }
        }
        eprintln!(
            "{what}: max logit err {worst_logit:.2e} (relative, floor 1); max |lse err| {worst_lse:.2e}"
        );
    }
}

fn random_rows(rng: &mut Rng, n_rows: usize, vocab: usize, scale: f32) -> Vec<Vec<f32>> {
    (0..n_rows).map(|_| rng.vec(vocab, scale)).collect()
}

#[test]
fn random_rows_all_k() {
    let mut rng = Rng::new(1);
    for (vocab, n_rows) in [(1000usize, 3usize), (4096, 2), (70_000, 1)] {
        let rows = random_rows(&mut rng, n_rows, vocab, 12.0);
        for k in [1, 10, 64] {
            check(&Case {
                name: "random",
                vocab,
                rows: rows.clone(),
                k,
                ..Default::default()
            });
        }
    }
}

#[test]
fn full_gemma_vocabulary() {
    let mut rng = Rng::new(2);
    let rows = random_rows(&mut rng, 1, 262_144, 20.0);
    for k in [1, 64] {
        check(&Case {
            name: "V=262144",
            vocab: 262_144,
            rows: rows.clone(),
            k,
            ..Default::default()
        });
    }
    // Gemma 4 settings: softcap 30, penalty over a window with duplicates, temperature.
    let ids: Vec<u32> = (0..300).map(|_| rng.below(262_144) as u32).collect();
    let mut ids2 = ids.clone();
    ids2.extend_from_slice(&ids[..50]);
    check(&Case {
        name: "V=262144 softcap+penalty",
        vocab: 262_144,
        rows,
        k: 40,
        softcap: Some(30.0),
        penalty: 1.3,
        ids: ids2,
        temperature: 0.7,
        ..Default::default()
    });
}

#[test]
fn exact_ties_and_equal_rows() {
    let mut rng = Rng::new(3);
    let vocab = 5000;
    // Few distinct values: many exact ties, resolved by the lower id.
    let ties: Vec<f32> = (0..vocab).map(|_| rng.below(6) as f32 - 2.0).collect();
    let equal = vec![0.75f32; vocab];
    let zeros = vec![0.0f32; vocab];
    for k in [1, 10, 64] {
        check(&Case {
            name: "ties",
            vocab,
            rows: vec![ties.clone(), equal.clone(), zeros.clone()],
            k,
            ..Default::default()
        });
    }
}

#[test]
fn negative_infinity_like_values() {
    let mut rng = Rng::new(4);
    let vocab = 3000;
    // Masked vocabularies: most entries -inf or -f32::MAX, a few real logits.
    let mut masked = vec![f32::NEG_INFINITY; vocab];
    for i in (0..vocab).step_by(97) {
        masked[i] = rng.unit() * 5.0;
    }
    let mut huge = vec![-f32::MAX; vocab];
    huge[2999] = -1e30;
    huge[5] = -1e30;
    let all_inf = vec![f32::NEG_INFINITY; vocab];
    check(&Case {
        name: "-inf",
        vocab,
        rows: vec![masked.clone(), huge.clone(), all_inf.clone()],
        k: 64,
        ..Default::default()
    });
    check(&Case {
        name: "-inf softcap",
        vocab,
        rows: vec![masked, huge, all_inf],
        k: 10,
        softcap: Some(30.0),
        ..Default::default()
    });
}

#[test]
fn vocabulary_smaller_than_k() {
    let mut rng = Rng::new(5);
    let rows = random_rows(&mut rng, 2, 5, 3.0);
    let c = Case {
        name: "V<k",
        vocab: 5,
        rows,
        k: 10,
        ..Default::default()
    };
    check(&c);
    let (_, top) = run_gpu(&variants()[0].ctx, &c);
    assert!(top.iter().all(|t| t.ids.len() == 5));
}

#[test]
fn repetition_penalty_and_softcap() {
    let mut rng = Rng::new(6);
    let vocab = 2500;
    let rows = random_rows(&mut rng, 3, vocab, 40.0);
    // Duplicates, ids past V (ignored), positive and negative logits, penalty < 1 (a boost).
    let mut ids: Vec<u32> = (0..200).map(|_| rng.below(vocab as u64) as u32).collect();
    ids.extend_from_slice(&ids.clone()[..100]);
    ids.extend([vocab as u32, 1 << 30]);
    for (penalty, softcap) in [
        (1.5, None),
        (0.8, None),
        (1.2, Some(30.0)),
        (1.0, Some(30.0)),
    ] {
        check(&Case {
            name: "penalty",
            vocab,
            rows: rows.clone(),
            k: 64,
            penalty,
            softcap,
            ids: ids.clone(),
            ..Default::default()
        });
    }
    // The penalised ids top the list when their logits are the largest.
    let mut row = vec![0.0f32; vocab];
    row[10] = 5.0;
    row[20] = 4.0;
    check(&Case {
        name: "penalty reorders",
        vocab,
        rows: vec![row],
        k: 3,
        penalty: 2.0,
        ids: vec![10, 10, 10],
        ..Default::default()
    });
}

#[test]
fn rows_follow_the_step_in_score_mode() {
    let mut rng = Rng::new(7);
    check(&Case {
        name: "per-token rows",
        vocab: 3000,
        rows: random_rows(&mut rng, 5, 3000, 8.0),
        k: 64,
        temperature: 1.7,
        per_token: true,
        ..Default::default()
    });
}

#[test]
fn rejects_bad_settings() {
    let ctx = &variants()[0].ctx;
    let lb = ctx.storage("l", 4096).unwrap();
    let ob = ctx.storage("o", 4096).unwrap();
    let sb = ctx.params_init("s", &StepParams::new(1, 0));
    let mut op = Logits::new(
        ctx,
        LogitsIo {
            logits: lb.as_entire_binding(),
            penalty_ids: None,
            out: ob.as_entire_binding(),
            step: sb.as_entire_binding(),
        },
        &LogitsConfig {
            vocab: 1024,
            rows: LogitRows::Fixed(1),
            softcap: None,
        },
    )
    .unwrap();
    for s in [
        Sampling {
            k: 0,
            ..Default::default()
        },
        Sampling {
            k: MAX_K + 1,
            ..Default::default()
        },
        Sampling {
            n_penalty_ids: 3,
            ..Default::default()
        },
        Sampling {
            penalty: 0.0,
            ..Default::default()
        },
    ] {
        assert!(op.set_sampling(ctx, &s).is_err(), "{s:?}");
    }
}

/// Rows whose top k sit in one slice, in one invocation's entries (every 256th position, the
/// shader's per-invocation stride) or at the end, ascending and descending rows: the bound the
/// first level derives from invocation-group maxima must never drop a true candidate.
#[test]
fn adversarial_layouts() {
    let mut rng = Rng::new(8);
    let vocab = 3 * 4096 + 100;
    let base = rng.vec(vocab, 1.0);
    let mut one_slice = base.clone();
    for i in 0..100 {
        one_slice[4096 + 37 * i] = 10.0 + rng.unit();
    }
    let mut one_invocation = base.clone();
    for j in 0..16 {
        one_invocation[2 * 4096 + 17 + 256 * j] = 20.0 + j as f32;
    }
    let mut at_end = base.clone();
    for v in &mut at_end[vocab - 70..] {
        *v += 5.0;
    }
    let ascending: Vec<f32> = (0..vocab).map(|i| i as f32 * 1e-3).collect();
    let descending: Vec<f32> = (0..vocab).map(|i| -(i as f32) * 1e-3).collect();
    let rows = vec![one_slice, one_invocation, at_end, ascending, descending];
    for k in [1, 2, 16, 37, 63, 64] {
        check(&Case {
            name: "adversarial",
            vocab,
            rows: rows.clone(),
            k,
            ..Default::default()
        });
    }
}

/// Ties across slices and levels: equal rows, few distinct values and a row of -inf over the
/// whole Gemma vocabulary (the ties resolve by id through the merge level too), signed zeros
/// and the extremes of f32.
#[test]
fn ties_across_slices() {
    let mut rng = Rng::new(9);
    let vocab = 262_144;
    let few: Vec<f32> = (0..vocab).map(|_| rng.below(4) as f32).collect();
    let equal = vec![-1.25f32; vocab];
    let all_inf = vec![f32::NEG_INFINITY; vocab];
    for k in [1, 64] {
        check(&Case {
            name: "full-vocabulary ties",
            vocab,
            rows: vec![few.clone(), equal.clone(), all_inf.clone()],
            k,
            ..Default::default()
        });
    }
    let vocab = 9000;
    let zeros: Vec<f32> = (0..vocab)
        .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
        .collect();
    let mut extremes: Vec<f32> = (0..vocab)
        .map(|i| match i % 5 {
            0 => f32::MAX,
            1 => -f32::MAX,
            2 => f32::MIN_POSITIVE / 4.0, // subnormal
            3 => -f32::MIN_POSITIVE / 4.0,
            _ => f32::NEG_INFINITY,
        })
        .collect();
    extremes[8999] = f32::MAX;
    check(&Case {
        name: "signed zeros",
        vocab,
        rows: vec![zeros],
        k: 64,
        ..Default::default()
    });
    check(&Case {
        name: "extremes, softcap",
        vocab,
        rows: vec![extremes],
        k: 64,
        softcap: Some(30.0),
        ..Default::default()
    });
}

/// Vocabularies around the slice length (4096) and the two-level bound (64 slices of 4096 at
/// k = 64): one real entry in the last slice, a third level, V below k, V = 1.
#[test]
fn vocabulary_sizes_around_the_slice() {
    let mut rng = Rng::new(10);
    for (vocab, ks) in [
        (1usize, &[1u32, 64][..]),
        (63, &[64][..]),
        (4095, &[1, 64][..]),
        (4096, &[1, 64][..]),
        (4097, &[1, 64][..]),
        (64 * 4096 + 1, &[1, 40, 64][..]),
    ] {
        let rows = random_rows(&mut rng, 2, vocab, 10.0);
        for &k in ks {
            check(&Case {
                name: "slice edges",
                vocab,
                rows: rows.clone(),
                k,
                temperature: 0.8,
                ..Default::default()
            });
        }
    }
}

/// Penalty ids at slice edges and on the winners, with the softcap, at k = 1 and 64: the
/// penalised values must take their new ranks.
#[test]
fn penalty_at_slice_edges() {
    let mut rng = Rng::new(11);
    let vocab = 3 * 4096 + 5;
    let mut row = rng.vec(vocab, 4.0);
    let winners = [0usize, 4095, 4096, 8191, 8192, vocab - 1];
    for (i, &w) in winners.iter().enumerate() {
        row[w] = 50.0 - i as f32;
    }
    let mut ids: Vec<u32> = winners.iter().map(|&w| w as u32).collect();
    ids.extend(ids.clone());
    ids.extend((0..100).map(|_| rng.below(vocab as u64) as u32));
    for k in [1, 64] {
        for softcap in [None, Some(30.0)] {
            check(&Case {
                name: "penalty at slice edges",
                vocab,
                rows: vec![row.clone()],
                k,
                penalty: 3.0,
                softcap,
                ids: ids.clone(),
                ..Default::default()
            });
        }
    }
}
