//! RoPE and per-head Q/K/V preparation references (f64 arithmetic).

/// Half-split ("NeoX") RoPE of one head in f64: pair `i` rotates `(x[i], x[i+d/2])` by the angle
/// whose `(cos, sin)` is `cs[i]`. `cs` is `[d/2, 2]`, e.g. one token's row of
/// `RopeTable::fill`, so the reference sees the same (HF-rounded f32) angles as the GPU.
pub fn rope_half_split(x: &mut [f64], cs: &[f32]) {
    let h = x.len() / 2;
    assert_eq!(cs.len(), x.len(), "one (cos, sin) pair per rotated pair");
    for i in 0..h {
        let (c, s) = (cs[2 * i] as f64, cs[2 * i + 1] as f64);
        let (a, b) = (x[i], x[i + h]);
        x[i] = a * c - b * s;
        x[i + h] = b * c + a * s;
    }
}

/// The same rotation with angles `p · inv_freq[i]` evaluated entirely in f64 (no f32 angle
/// rounding): the mathematically exact RoPE, for judging the table's own error.
pub fn rope_exact(x: &mut [f64], pos: u64, inv_freq: &[f64]) {
    let h = x.len() / 2;
    for i in 0..h {
        let a = pos as f64 * inv_freq[i];
        let (c, s) = (a.cos(), a.sin());
        let (u, v) = (x[i], x[i + h]);
        x[i] = u * c - v * s;
        x[i + h] = v * c + u * s;
    }
}

/// A head's preparation (`QkvPrep`'s math) on the CPU: for each token `t` and head, `rope(norm(x))·scale` where norm is
/// `rms(x)·w` (`w = Some`), `rms(x)` (`normalize && w = None`) or nothing; `table` is the
/// `RopeTable::fill` output for the step (`None`: no RoPE). Input rows `[T, n_heads·d]`, output
/// `[T, n_heads, d]` f32 (rounded once from f64).
#[allow(clippy::too_many_arguments)]
pub fn head_prep(
    x: &[f32],
    n_tokens: usize,
    n_heads: usize,
    d: usize,
    normalize: bool,
    w: Option<&[f32]>,
    eps: f32,
    table: Option<&[f32]>,
    scale: f32,
) -> Vec<f32> {
    assert_eq!(x.len(), n_tokens * n_heads * d);
    let mut out = Vec::with_capacity(x.len());
    for t in 0..n_tokens {
        for h in 0..n_heads {
            let src = &x[(t * n_heads + h) * d..][..d];
            let mut v: Vec<f64> = src.iter().map(|&a| a as f64).collect();
            if normalize {
                let ss: f64 = v.iter().map(|a| a * a).sum();
                let r = 1.0 / (ss / d as f64 + eps as f64).sqrt();
                for (j, a) in v.iter_mut().enumerate() {
                    *a *= r * w.map_or(1.0, |w| w[j] as f64);
                }
            }
            if let Some(table) = table {
                rope_half_split(&mut v, &table[t * d..][..d]);
            }
            out.extend(v.iter().map(|a| (a * scale as f64) as f32));
        }
    }
    out
}
