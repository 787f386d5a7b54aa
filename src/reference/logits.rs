//! Logits post-processing references: softcap, llama.cpp's repetition penalty, top-k with the
//! engine's tie rule, and logsumexp (f64). The sampler uses the penalty and top-k helpers too.

use std::collections::HashSet;

/// `c·tanh(x/c)` in f64, rounded to f32 (Gemma 4 final softcap, c = 30).
pub fn softcap(logits: &mut [f32], c: f32) {
    for x in logits {
        *x = (c as f64 * (*x as f64 / c as f64).tanh()) as f32;
    }
}

/// llama.cpp repetition penalty on one row, once per *distinct* id in `ids` (ids ≥ the row
/// length are ignored): `x > 0 → x / penalty`, otherwise `x · penalty` (f32 arithmetic, as in
/// `llama_sampler_penalties_apply`).
pub fn repetition_penalty(logits: &mut [f32], ids: &[u32], penalty: f32) {
    let mut seen = HashSet::new();
    for &id in ids {
        let Some(x) = logits.get_mut(id as usize) else {
            continue;
        };
        if seen.insert(id) {
            *x = if *x > 0.0 { *x / penalty } else { *x * penalty };
        }
    }
}

/// The ordering the engine's top-k uses: larger value first, equal values by lower id.
/// Values compare by `f32::total_cmp` (so -0 ranks below +0, as in the GPU's integer keys).
pub fn rank(a: (u32, f32), b: (u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `k` best `(id, value)` of a row, best first (see [`rank`]).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, x))
        .collect();
    all.sort_by(|&a, &b| rank(a, b));
    all.truncate(k);
    all
}

/// `log Σ exp(x·inv_temp)` in f64 (-inf entries contribute 0; an all -inf row gives -inf).
pub fn logsumexp(logits: &[f32], inv_temp: f64) -> f64 {
    let m = logits
        .iter()
        .map(|&x| x as f64 * inv_temp)
        .fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    let s: f64 = logits
        .iter()
        .map(|&x| (x as f64 * inv_temp - m).exp())
        .sum();
    m + s.ln()
}
