//! CPU references for the quantized-matrix kernels: synthetic GGUF blocks for any supported
//! type, and the matrix product of dequantized weights in f64 (so a kernel test measures the
//! kernel's arithmetic, not quantization error: both sides use the *same* dequantized weights).

use half::{bf16, f16};

use crate::gguf::GgmlType;

/// Seeded SplitMix64 (the same generator as the test harness; benchmarks use it too).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// A finite f16 of random sign and magnitude in [2^lo, 2^hi).
    fn scale(&mut self, lo: f32, hi: f32) -> [u8; 2] {
        let e = lo + (self.unit() * 0.5 + 0.5) * (hi - lo);
        let sign = if self.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        f16::from_f32(sign * e.exp2()).to_le_bytes()
    }
}

/// `n_blocks` GGUF blocks of `ty` (elements for F32/F16/BF16): random quant bits with finite f16
/// scales chosen so weights stay within about ±1 (random scale bytes would be NaN/inf half the
/// time and say nothing about a kernel).
pub fn synthetic_blocks(ty: GgmlType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed ^ 0x5EED_0000 ^ ((ty.id() as u64) << 32));
    let bb = ty.block_bytes() as usize;
    let mut out = Vec::with_capacity(n_blocks * bb);
    for _ in 0..n_blocks {
        let start = out.len();
        match ty {
            GgmlType::F32 => out.extend(rng.unit().to_le_bytes()),
            GgmlType::F16 => out.extend(f16::from_f32(rng.unit()).to_le_bytes()),
            GgmlType::BF16 => out.extend(bf16::from_f32(rng.unit()).to_le_bytes()),
            _ => {
                out.extend((0..bb).map(|_| rng.next_u64() as u8));
                let b = &mut out[start..];
                // (offset, log2 range) of each f16 field; ranges keep |w| ≲ 1.
                let fields: &[(usize, f32, f32)] = match ty {
                    GgmlType::Q4_0 => &[(0, -7.0, -3.0)],
                    GgmlType::Q4_1 => &[(0, -8.0, -4.0), (2, -3.0, -1.0)],
                    GgmlType::Q5_0 => &[(0, -8.0, -4.0)],
                    GgmlType::Q5_1 => &[(0, -9.0, -5.0), (2, -3.0, -1.0)],
                    GgmlType::Q8_0 => &[(0, -11.0, -7.0)],
                    GgmlType::Q4K | GgmlType::Q5K => &[(0, -12.0, -8.0), (2, -10.0, -6.0)],
                    GgmlType::Q6K => &[(208, -14.0, -10.0)],
                    _ => panic!("synthetic_blocks: unsupported {ty}"),
                };
                for &(at, lo, hi) in fields {
                    b[at..at + 2].copy_from_slice(&rng.scale(lo, hi));
                }
            }
        }
    }
    out
}

/// `y[t, r] = Σ_c w[r, c] · x[t, c]` for `w: [n, k]`, `x: [t, k]`, accumulated in f64; also
/// returns `Σ_c |w[r, c] · x[t, c]|`, the scale a kernel's rounding error is judged against.
pub fn matmul(w: &[f32], k: usize, n: usize, x: &[f32], t: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; t * n];
    let mut abs = vec![0.0; t * n];
    for ti in 0..t {
        let xr = &x[ti * k..(ti + 1) * k];
        for r in 0..n {
            let wr = &w[r * k..(r + 1) * k];
            let (mut s, mut a) = (0f64, 0f64);
            for (&wv, &xv) in wr.iter().zip(xr) {
                let p = wv as f64 * xv as f64;
                s += p;
                a += p.abs();
            }
            y[ti * n + r] = s;
            abs[ti * n + r] = a;
        }
    }
    (y, abs)
}
