//! RoPE cos/sin tables, computed on the CPU for just the positions of one step.
//!
//! Why on the CPU: WGSL `sin`/`cos` carry no accuracy guarantee for large arguments, and
//! `p·inv_freq` reaches ~3·10⁴ rad at position 32K (GEMMA.md §2.1.4, pitfall 20). The model
//! calls [`RopeTable::fill`] once per step and uploads the few KB with `queue.write_buffer`; the
//! `QkvPrep` kernel (`kernels::qkv_prep`) reads row `t` for the step's token `t`.
//!
//! Layout is half-split ("NeoX"): pair `i` rotates dims `(i, i + d/2)` by angle
//! `p · inv_freq[i]`, for `i < d/2`.
//!
//! Precision, chosen to match Hugging Face (`freqs = inv_freq @ positions` in f32, then
//! `cos`/`sin` in f32): the angle is the **f32 product** `f32(p) · inv_freq[i]` (rounded to f32
//! exactly as HF does, so the table carries HF's own angle rounding, ≈ 2 mrad at p = 32K), and
//! its cos/sin are then evaluated in f64 and rounded to f32, i.e. correctly rounded where HF's
//! f32 `cos`/`sin` are within an ulp of that. `inv_freq` itself is `θ^(−2i/d)` evaluated in f64
//! and rounded once to f32 (HF computes it in f32 and may differ by an ulp).

use crate::{Error, Result};

/// Frequencies of one RoPE variant (one per distinct (θ, head_dim, factors) in the model).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    /// Head dimension `d` (even).
    pub head_dim: usize,
    /// `[d/2]` angular frequency of pair `i`, in rad per position (0 for pass-through pairs).
    pub inv_freq: Vec<f32>,
}

/// Below this an `inv_freq` can only come from a "do not rotate" factor (real tables stay above
/// `1/θ ≈ 1e-6`, `1e-7` with linear scaling): it is stored as exactly 0 so the pair is an exact
/// identity (cos = 1, sin = 0), as in HF's proportional RoPE where `inv_freq = 0`.
const IDENTITY_BELOW: f64 = 1e-20;

impl RopeTable {
    /// Default RoPE: `inv_freq[i] = θ^(−2i/d)` (Gemma 3 all layers, Gemma 4 sliding layers).
    pub fn new(theta: f32, head_dim: usize) -> Result<Self> {
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(Error::InvalidArgument(format!(
                "RoPE head_dim must be even and non-zero, got {head_dim}"
            )));
        }
        if theta.is_nan() || theta <= 1.0 || theta.is_infinite() {
            return Err(Error::InvalidArgument(format!(
                "RoPE theta must be finite and > 1, got {theta}"
            )));
        }
        let d = head_dim as f64;
        let inv_freq = (0..head_dim / 2)
            .map(|i| (theta as f64).powf(-2.0 * i as f64 / d) as f32)
            .collect();
        Ok(Self { head_dim, inv_freq })
    }

    /// Default frequencies divided by llama.cpp's per-pair `rope_freqs` factors:
    /// angle = `p · inv_freq[i] / ff[i]` (Gemma 4 full layers: 64 × 1.0 then 192 × 1e30, which
    /// makes dims 64–255 and 320–511 pass through unchanged). Factors are applied in f64.
    pub fn with_freq_factors(theta: f32, head_dim: usize, factors: &[f32]) -> Result<Self> {
        let mut t = Self::new(theta, head_dim)?;
        if factors.len() != head_dim / 2 {
            return Err(Error::InvalidArgument(format!(
                "rope_freqs has {} factors, head_dim {head_dim} needs {}",
                factors.len(),
                head_dim / 2
            )));
        }
        let d = head_dim as f64;
        for (i, (f, &ff)) in t.inv_freq.iter_mut().zip(factors).enumerate() {
            if ff.is_nan() || ff <= 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "rope_freqs[{i}] = {ff} (factors must be positive)"
                )));
            }
            let v = (theta as f64).powf(-2.0 * i as f64 / d) / ff as f64;
            *f = if v < IDENTITY_BELOW { 0.0 } else { v as f32 };
        }
        Ok(t)
    }

    /// HF "linear" scaling: every frequency divided by `factor` (Gemma 3 4B+ full layers: 8).
    pub fn linear_scaled(mut self, factor: f32) -> Self {
        for f in &mut self.inv_freq {
            *f = (*f as f64 / factor as f64) as f32;
        }
        self
    }

    /// Floats per token in a filled table: `d/2` (cos, sin) pairs.
    pub fn floats_per_token(&self) -> usize {
        self.head_dim
    }

    /// Writes the table for positions `pos0 … pos0 + n_tokens − 1` into `out` (cleared first):
    /// `[n_tokens, d/2, 2]` f32, `(cos, sin)` of `f32(p)·inv_freq[i]` (see the module doc).
    pub fn fill(&self, pos0: u32, n_tokens: usize, out: &mut Vec<f32>) {
        out.clear();
        out.reserve(n_tokens * self.head_dim);
        for t in 0..n_tokens {
            // Positions are exact in f32 up to 2^24, far beyond any context we support.
            let p = (pos0 as u64 + t as u64) as f32;
            for &f in &self.inv_freq {
                let angle = (p * f) as f64;
                out.push(angle.cos() as f32);
                out.push(angle.sin() as f32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_follow_the_formula() {
        let t = RopeTable::new(10_000.0, 256).unwrap();
        assert_eq!(t.inv_freq.len(), 128);
        assert_eq!(t.inv_freq[0], 1.0);
        let want = 10_000f64.powf(-2.0 * 127.0 / 256.0);
        assert!((t.inv_freq[127] as f64 - want).abs() <= want * 1e-7);
        let s = t.clone().linear_scaled(8.0);
        assert_eq!(s.inv_freq[0], 0.125);
    }

    #[test]
    fn proportional_factors_give_identity_pairs() {
        let mut ff = vec![1.0f32; 64];
        ff.extend(std::iter::repeat_n(1e30f32, 192));
        let t = RopeTable::with_freq_factors(1e6, 512, &ff).unwrap();
        let plain = RopeTable::new(1e6, 512).unwrap();
        assert_eq!(t.inv_freq[..64], plain.inv_freq[..64]);
        assert!(t.inv_freq[64..].iter().all(|&f| f == 0.0));
        let mut out = Vec::new();
        t.fill(32767, 2, &mut out);
        assert_eq!(out.len(), 2 * 512);
        for row in out.chunks(512) {
            for pair in row[128..].chunks(2) {
                assert_eq!(pair, [1.0, 0.0]);
            }
        }
    }

    /// The table's only departure from exact RoPE is HF's f32 angle rounding: at most
    /// `|angle|·2^-24` (plus the f32 inv_freq rounding), i.e. ≈ 2 mrad at p = 32767, i = 0.
    #[test]
    fn table_error_is_the_f32_angle_rounding() {
        let t = RopeTable::new(10_000.0, 256).unwrap();
        let mut out = Vec::new();
        for pos in [1u32, 511, 4097, 32767] {
            t.fill(pos, 1, &mut out);
            let mut worst = 0f64;
            for (i, pair) in out.chunks(2).enumerate() {
                let a = pos as f64 * 10_000f64.powf(-2.0 * i as f64 / 256.0);
                let e = (pair[0] as f64 - a.cos())
                    .abs()
                    .max((pair[1] as f64 - a.sin()).abs());
                assert!(e <= a * 1.2e-7 + 1e-7, "pos {pos} pair {i}: err {e}");
                worst = worst.max(e);
            }
            assert!(
                pos < 4097 || worst > 1e-5,
                "f32 angle rounding is visible at pos {pos}"
            );
        }
    }

    #[test]
    fn fill_uses_the_f32_angle() {
        let t = RopeTable::new(10_000.0, 8).unwrap();
        let mut out = Vec::new();
        t.fill(4097, 3, &mut out);
        assert_eq!(out.len(), 3 * 8);
        for (tok, row) in out.chunks(8).enumerate() {
            let p = (4097 + tok) as f32;
            for (i, pair) in row.chunks(2).enumerate() {
                let a = (p * t.inv_freq[i]) as f64;
                assert_eq!(pair, [a.cos() as f32, a.sin() as f32]);
            }
        }
        assert!(RopeTable::new(1e4, 7).is_err());
        assert!(RopeTable::with_freq_factors(1e4, 8, &[1.0; 3]).is_err());
    }
}
