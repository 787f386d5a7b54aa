//! CPU references for every kernel, written for clarity and accumulating in f64 so the
//! ground truth is better than the GPU result it judges (llm.c's rule).

pub mod gelu;
pub mod logits;
pub mod quant;
pub mod rope;

/// `y = x / sqrt(mean(x²) + eps) · w` per row of `len`; `w = None` means no weight.
pub fn rmsnorm(x: &[f32], w: Option<&[f32]>, len: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(len).zip(y.chunks_mut(len)) {
        let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
        let scale = 1.0 / (ss / len as f64 + eps as f64).sqrt();
        for (i, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            let wi = w.map_or(1.0, |w| w[i] as f64);
            *o = (v as f64 * scale * wi) as f32;
        }
    }
    y
}

pub mod attention;

/// Gemma 4 per-layer inputs (see `shaders/ple_combine.wgsl`), per row of `width`:
/// `(rms(ctx·ctx_scale)·w + tok·tok_scale)·out_scale`.
pub fn ple_combine(
    ctx: &[f32],
    tok: &[f32],
    w: &[f32],
    eps: f32,
    ctx_scale: f32,
    tok_scale: f32,
    out_scale: f32,
) -> Vec<f32> {
    let scaled: Vec<f32> = ctx.iter().map(|&c| c * ctx_scale).collect();
    let normed = rmsnorm(&scaled, Some(w), w.len(), eps);
    normed
        .iter()
        .zip(tok)
        .map(|(&n, &t)| ((n as f64 + t as f64 * tok_scale as f64) * out_scale as f64) as f32)
        .collect()
}
