//! Naive attention (the llama2.c loop) over *logical* positions: the ground truth the GPU
//! kernels, with their ring slots, staging rows and split key ranges, must reproduce. Scores,
//! softmax and the weighted sum accumulate in f64; K and V are taken exactly as given (tests pass
//! the same f16-rounded values the GPU reads).

/// Shape and masking of one attention layer (mirrors `kernels::attention::AttentionParams`,
/// minus the storage details the reference does not need).
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub n_q_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Sliding window `W` (0: full attention). Key `j` is visible from `p` iff `p − W < j ≤ p`.
    pub window: usize,
    /// Multiplies `q·k` (Gemma 3: `query_pre_attn_scalar^−0.5`, Gemma 4: 1.0).
    pub scale: f32,
}

/// Attention for `T = q.len() / (n_q_heads·head_dim)` queries at positions `pos0 + t`.
///
/// - `q`: `[T, n_q_heads, head_dim]`
/// - `k`, `v`: `[pos0 + T, n_kv_heads, head_dim]`, row `j` = the key/value of position `j`
///
/// Returns `[T, n_q_heads, head_dim]`. Query head `h` reads KV head `h / (n_q_heads/n_kv_heads)`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], pos0: usize, s: AttentionShape) -> Vec<f32> {
    let (nq, nkv, d) = (s.n_q_heads, s.n_kv_heads, s.head_dim);
    let t_count = q.len() / (nq * d);
    assert_eq!(q.len(), t_count * nq * d, "q shape");
    assert!(
        k.len() >= (pos0 + t_count) * nkv * d,
        "k holds every position"
    );
    assert!(
        v.len() >= (pos0 + t_count) * nkv * d,
        "v holds every position"
    );
    let group = nq / nkv;
    let mut out = vec![0.0f32; q.len()];
    for t in 0..t_count {
        let p = pos0 + t;
        let first = if s.window > 0 {
            (p + 1).saturating_sub(s.window)
        } else {
            0
        };
        for h in 0..nq {
            let g = h / group;
            let qh = &q[(t * nq + h) * d..][..d];
            let row = |x: &'_ [f32], j: usize| -> Vec<f64> {
                x[(j * nkv + g) * d..][..d]
                    .iter()
                    .map(|&e| e as f64)
                    .collect()
            };
            let scores: Vec<f64> = (first..=p)
                .map(|j| {
                    let kj = row(k, j);
                    let dot: f64 = qh.iter().zip(&kj).map(|(&a, b)| a as f64 * b).sum();
                    dot * s.scale as f64
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|&x| (x - max).exp()).collect();
            let sum: f64 = w.iter().sum();
            let mut acc = vec![0.0f64; d];
            for (j, wj) in (first..=p).zip(&w) {
                for (a, b) in acc.iter_mut().zip(row(v, j)) {
                    *a += wj * b;
                }
            }
            for (o, a) in out[(t * nq + h) * d..][..d].iter_mut().zip(acc) {
                *o = (a / sum) as f32;
            }
        }
    }
    out
}

/// Rounds to f16 and back: the values a packed-f16 KV cache holds.
pub fn f16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&e| half::f16::from_f32(e).to_f32()).collect()
}

/// Packs f32 values as f16 pairs in `u32` (low half first), as WGSL's `pack2x16float` does.
pub fn pack_f16(x: &[f32]) -> Vec<u32> {
    assert!(x.len() % 2 == 0, "f16 pairs");
    x.chunks(2)
        .map(|p| {
            let lo = half::f16::from_f32(p[0]).to_bits() as u32;
            let hi = half::f16::from_f32(p[1]).to_bits() as u32;
            lo | (hi << 16)
        })
        .collect()
}

/// Inverse of [`pack_f16`].
pub fn unpack_f16(w: &[u32]) -> Vec<f32> {
    w.iter()
        .flat_map(|&w| {
            [
                half::f16::from_bits(w as u16).to_f32(),
                half::f16::from_bits((w >> 16) as u16).to_f32(),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_returns_its_value() {
        let s = AttentionShape {
            n_q_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
            window: 0,
            scale: 1.0,
        };
        let out = attention(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0], &[7.0, 8.0], 0, s);
        assert_eq!(out, vec![7.0, 8.0, 7.0, 8.0]);
    }

    #[test]
    fn window_keeps_exactly_w_keys() {
        // Two keys with equal scores: full attention averages them; W = 1 sees only the last.
        let mut s = AttentionShape {
            n_q_heads: 1,
            n_kv_heads: 1,
            head_dim: 2,
            window: 0,
            scale: 1.0,
        };
        let k = [0.0, 0.0, 0.0, 0.0];
        let v = [2.0, 0.0, 4.0, 0.0];
        assert_eq!(attention(&[1.0, 1.0], &k, &v, 1, s), vec![3.0, 0.0]);
        s.window = 1;
        assert_eq!(attention(&[1.0, 1.0], &k, &v, 1, s), vec![4.0, 0.0]);
    }

    #[test]
    fn pack_roundtrip() {
        let x = [1.5, -2.25, 0.0, 65504.0];
        assert_eq!(unpack_f16(&pack_f16(&x)), x.to_vec());
    }
}
