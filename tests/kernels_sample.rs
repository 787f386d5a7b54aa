//! Full-vocabulary sampling (`kernels::sample`) against the CPU sampler's exact distribution.
//!
//! For every case:
//! 1. the kept set (entries the perturbation leaves finite) is **exactly** the set the CPU
//!    sampler (`Sampler::distribution` over the whole row, f64) keeps; the cases are built so
//!    that no cut falls within 2e-6 of a boundary (cumulative mass for top-p, probability
//!    ratio for min-p), where f32 and f64 could disagree: the GPU's masses are f32 `exp`
//!    (~1e-7 relative) summed exactly in 2^-40 fixed point, its top-p target f32 (6e-8);
//! 2. 1,500 draws (300 on the 262,144-entry row) with fresh seeds: every one in the kept set,
//!    and their distribution matches
//!    the CPU probabilities by a χ² test over bins of ≥ 10 expected draws (rank-ordered), the
//!    test statistic normalised as z = (χ² − df)/√(2·df) and refused above z = 3.72 (one-sided
//!    α = 1e-4 per case: a wrong temperature, threshold or Gumbel variate gives z in the tens).

mod common;

use common::{block, variants, Rng};
use gemma_wgpu::gpu::{GpuContext, Op, StepParams};
use gemma_wgpu::kernels::logits::{LogitRows, Logits, LogitsConfig, LogitsIo, Sampling};
use gemma_wgpu::kernels::sample::{VocabSampler, VocabSamplerIo, VocabSampling};
use gemma_wgpu::sampler::{Sampler, SamplingParams};

const DRAWS: usize = 1500;
const Z_MAX: f64 = 3.72;
const MARGIN: f64 = 2e-6;

struct Gpu {
    topk: Logits,
    sampler: VocabSampler,
    _logits: wgpu::Buffer,
}

fn build(ctx: &GpuContext, row: &[f32], s: VocabSampling) -> Gpu {
    let vocab = row.len() as u32;
    let logits = ctx.storage_init("logits", row).unwrap();
    let out = ctx.storage("out", Logits::out_bytes(1, 64)).unwrap();
    let step = ctx.params_init("step", &StepParams::new(1, 0));
    let mut topk = Logits::new(
        ctx,
        LogitsIo {
            logits: logits.as_entire_binding(),
            penalty_ids: None,
            out: out.as_entire_binding(),
            step: step.as_entire_binding(),
        },
        &LogitsConfig {
            vocab,
            rows: LogitRows::Fixed(1),
            softcap: None,
        },
    )
    .unwrap();
    topk.set_sampling(ctx, &Sampling::default()).unwrap();
    let mut sampler = VocabSampler::new(
        ctx,
        VocabSamplerIo {
            logits: logits.as_entire_binding(),
            topk: out.as_entire_binding(),
        },
        vocab,
    )
    .unwrap();
    sampler.set_sampling(ctx, &s).unwrap();
    // Keep the buffers alive with the ops.
    std::mem::forget((out, step));
    Gpu {
        topk,
        sampler,
        _logits: logits,
    }
}

fn draw(ctx: &GpuContext, g: &Gpu, seed: u64) -> u32 {
    g.sampler.set_seed(ctx, seed);
    let step = StepParams::new(1, 0);
    block(ctx.run(|pass| {
        g.topk.encode(pass, &step);
        g.sampler.encode(pass, &step);
    }))
    .unwrap();
    let words: Vec<u32> = block(ctx.read(&g.sampler.out, 0, 4)).unwrap();
    VocabSampler::parse(&words)
}

/// The CPU sampler's kept set and probabilities, plus how far the top-p cut is from a
/// boundary (in units of the kept mass).
fn reference(row: &[f32], s: VocabSampling) -> Vec<(u32, f64)> {
    let params = SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        ..Default::default()
    };
    let pairs: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, x))
        .collect();
    let mut sampler = Sampler::new(params).unwrap();
    sampler.distribution(&pairs).unwrap()
}

/// Distance of every cut from flipping: for top-p, |cumulative mass − p| at the last kept
/// and the first dropped token; for min-p, the relative gap of their probabilities to the
/// floor.
fn margin(row: &[f32], s: VocabSampling, kept: usize) -> f64 {
    let mut x: Vec<f64> = row
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| v as f64)
        .collect();
    x.sort_by(|a, b| b.total_cmp(a));
    if s.top_k > 0 {
        x.truncate(s.top_k as usize);
    }
    let t = s.temperature as f64;
    let p: Vec<f64> = x.iter().map(|v| ((v - x[0]) / t).exp()).collect();
    let z: f64 = p.iter().sum();
    let mut m = f64::INFINITY;
    if s.top_p < 1.0 {
        let mut cum = 0.0;
        for (i, pi) in p.iter().enumerate() {
            cum += pi / z;
            if i + 1 >= kept.saturating_sub(1) && i <= kept {
                m = m.min((cum - s.top_p as f64).abs());
            }
        }
    }
    if s.min_p > 0.0 {
        for pi in p.iter().skip(kept.saturating_sub(1)).take(2) {
            m = m.min((pi / p[0] - s.min_p as f64).abs());
        }
    }
    m
}

fn check(name: &str, row: &[f32], s: VocabSampling) {
    check_draws(name, row, s, DRAWS);
}

fn check_draws(name: &str, row: &[f32], s: VocabSampling, draws: usize) {
    let want = reference(row, s);
    let m = margin(row, s, want.len());
    assert!(
        m > MARGIN,
        "{name}: test data puts a cut within {m:.1e} of a boundary"
    );
    let mut want_ids: Vec<u32> = want.iter().map(|w| w.0).collect();
    want_ids.sort_unstable();
    for v in variants() {
        let what = format!("{name} [{}]", v.name);
        let g = build(&v.ctx, row, s);
        // Any draw leaves the perturbed row behind: its finite entries are the kept set.
        draw(&v.ctx, &g, 1);
        let y: Vec<f32> = block(v.ctx.read(&g.sampler.perturbed, 0, row.len())).unwrap();
        let kept: Vec<u32> = (0..row.len() as u32)
            .filter(|&i| y[i as usize].is_finite())
            .collect();
        assert_eq!(kept.len(), want_ids.len(), "{what}: kept set size");
        assert_eq!(kept, want_ids, "{what}: kept set");

        let mut counts = std::collections::HashMap::<u32, usize>::new();
        for i in 0..draws {
            let id = draw(&v.ctx, &g, 0x5eed_0000_0000 + i as u64 * 7919);
            assert!(
                want_ids.binary_search(&id).is_ok(),
                "{what}: drew {id}, outside the kept set"
            );
            *counts.entry(id).or_default() += 1;
        }
        // χ² over rank-ordered bins of at least 10 expected draws.
        let (chi2, df, z) = common::chi_square(want.iter().map(|&(id, p)| {
            (
                p * draws as f64,
                counts.get(&id).copied().unwrap_or(0) as u64,
            )
        }));
        eprintln!(
            "{what}: kept {} of {}; χ² {chi2:.1} df {df} z {z:.2} ({draws} draws)",
            kept.len(),
            row.len()
        );
        assert!(
            z < Z_MAX,
            "{what}: draws do not follow the distribution (z = {z:.2})"
        );
    }
}

fn sampling(temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> VocabSampling {
    VocabSampling {
        temperature,
        top_k,
        top_p,
        min_p,
    }
}

#[test]
fn no_cut_draws_from_the_whole_row() {
    let row = Rng::new(11).vec(10_000, 3.0);
    check("T 1", &row, sampling(1.0, 0, 1.0, 0.0));
}

#[test]
fn top_k_above_the_candidates() {
    let row = Rng::new(12).vec(10_000, 4.0);
    check("top-k 200, T 0.8", &row, sampling(0.8, 200, 1.0, 0.0));
}

#[test]
fn top_p_over_the_whole_row() {
    let row = Rng::new(13).vec(10_000, 5.0);
    check("top-p 0.9", &row, sampling(1.0, 0, 0.9, 0.0));
}

#[test]
fn all_cuts_together() {
    let row = Rng::new(14).vec(9_000, 6.0);
    check(
        "top-k 500, top-p 0.7, min-p 0.02, T 1.3",
        &row,
        sampling(1.3, 500, 0.7, 0.02),
    );
    check("min-p 0.1, T 0.6", &row, sampling(0.6, 0, 1.0, 0.1));
}

#[test]
fn masked_entries_are_never_drawn() {
    // Every other entry at -inf (what a constraint mask leaves) and the best entries masked.
    let mut row = Rng::new(15).vec(5_000, 3.0);
    for (i, x) in row.iter_mut().enumerate() {
        if i % 2 == 0 {
            *x = f32::NEG_INFINITY;
        }
    }
    check("masked, T 1", &row, sampling(1.0, 0, 1.0, 0.0));
    check(
        "masked, top-k 3000 (more than finite)",
        &row,
        sampling(1.0, 3000, 0.95, 0.0),
    );
}

#[test]
fn gemma_vocabulary() {
    // 64 slices: the pick level sums every slice's histogram.
    let row = Rng::new(16).vec(262_144, 16.0);
    check_draws("V 262144, top-p 0.5", &row, sampling(1.0, 0, 0.5, 0.0), 300);
    check_draws(
        "V 262144, top-k 1000, T 0.5",
        &row,
        sampling(0.5, 1000, 1.0, 0.0),
        300,
    );
}
