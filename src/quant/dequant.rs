//! CPU dequantizers of GGUF tensor bytes, bit-exact against gguf-py (`gguf.quants.dequantize`,
//! gguf 0.19): every value is computed with the same f32 operations in the same order (e.g.
//! Q4_K is `(d·sc)·q − (dmin·m)`, Q4_1 is `d·q + m`), so `to_bits()` agree. They are the ground
//! truth for the GPU layout (`super::layout`) and for the kernel tests.

use half::f16;

use crate::gguf::GgmlType;
use crate::{Error, Result};

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q4_K / Q5_K 6-bit sub-block scale and min (`get_scale_min_k4` in ggml).
#[inline]
pub(crate) fn k4_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Dequantizes `n` elements of `ty` from GGUF bytes into f32, in element order. `bytes` must
/// hold exactly the whole blocks of `n` elements (errors otherwise, and for unsupported types).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    if !ty.is_supported() {
        return Err(Error::UnsupportedTensorType {
            tensor: "(dequantize)".into(),
            ty: ty.name().into(),
        });
    }
    let bb = ty.block_bytes() as usize;
    let be = ty.block_elems() as usize;
    if n % be != 0 || bytes.len() != n / be * bb {
        return Err(Error::InvalidArgument(format!(
            "{n} {ty} elements need a multiple of {be} elements in {} bytes; got {} bytes",
            n.div_ceil(be) * bb,
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    for b in bytes.chunks_exact(bb) {
        dequantize_block(ty, b, &mut out);
    }
    Ok(out)
}

/// Appends the `block_elems()` values of one block (`b.len() == block_bytes()`).
pub(crate) fn dequantize_block(ty: GgmlType, b: &[u8], out: &mut Vec<f32>) {
    match ty {
        GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => out.push(f16_at(b, 0)),
        GgmlType::BF16 => out.push(f32::from_bits(
            (u16::from_le_bytes([b[0], b[1]]) as u32) << 16,
        )),
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            for sh in [0, 4] {
                out.extend(
                    qs.iter()
                        .map(|&q| d * (((q >> sh) & 0xF) as i32 - 8) as f32),
                );
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qs = &b[4..20];
            for sh in [0, 4] {
                out.extend(qs.iter().map(|&q| d * ((q >> sh) & 0xF) as f32 + m));
            }
        }
        GgmlType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for (half, sh) in [(0usize, 0u8), (16, 4)] {
                out.extend(qs.iter().enumerate().map(|(j, &q)| {
                    let hi = ((qh >> (j + half)) & 1) as u8;
                    d * ((((q >> sh) & 0xF) | (hi << 4)) as i32 - 16) as f32
                }));
            }
        }
        GgmlType::Q5_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for (half, sh) in [(0usize, 0u8), (16, 4)] {
                out.extend(qs.iter().enumerate().map(|(j, &q)| {
                    let hi = ((qh >> (j + half)) & 1) as u8;
                    d * (((q >> sh) & 0xF) | (hi << 4)) as f32 + m
                }));
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            out.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if ty == GgmlType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for s in 0..8 {
                let (sc, mn) = k4_scale_min(scales, s);
                let a = d * sc as f32;
                let m = dmin * mn as f32;
                let g = s / 2;
                for l in 0..32 {
                    let byte = qs[32 * g + l];
                    let mut q = if s % 2 == 1 { byte >> 4 } else { byte & 0xF };
                    if let Some(qh) = qh {
                        q |= ((qh[l] >> s) & 1) << 4;
                    }
                    out.push(a * q as f32 - m);
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for e in 0..256 {
                let (n, r) = (e / 128, e % 128);
                let (t, l) = (r / 32, r % 32);
                let lo = ql[64 * n + 32 * (t & 1) + l];
                let lo = if t >= 2 { lo >> 4 } else { lo & 0xF };
                let hi = (qh[32 * n + l] >> (2 * t)) & 3;
                let q = (lo | (hi << 4)) as i32 - 32;
                out.push((d * (sc[e / 16] as i8) as f32) * q as f32);
            }
        }
        _ => unreachable!("dequantize_block called for unsupported {ty}"),
    }
}
