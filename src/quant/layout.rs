//! The GPU layout of a weight matrix and the CPU code that builds and reads it.
//!
//! GGUF blocks (18, 20, 22, 34, 144, 176, 210 bytes) are mostly not 4-byte aligned, and WGSL
//! storage buffers are arrays of `u32` (read by the kernels as `vec4<u32>`: 16 bytes per load).
//! At load time every tensor (or row range of one) is repacked into one word array of up to
//! three planes:
//!
//! 1. **payload**: for each row, for each block, `payload_words()` words of quant bits; every
//!    type's payload is a whole number of 16-byte words per block (or per 8 elements for the
//!    float types), so a block is read with `vec4<u32>` loads;
//! 2. **high bits** (Q5_0, Q5_1 only): one word of 5th bits per block, starting at word
//!    `hbase = rows · blocks_per_row · payload_words()`; kept out of the payload so its 4
//!    nibble words stay 16-byte aligned;
//! 3. **scales**: starting at word `sbase = hbase + rows · blocks_per_row · high_words()`.
//!
//! Inside a block, the shaders consume *chunks* of 8 consecutive elements `8j..8j+7`, split by
//! parity: `ev = (e0, e2, e4, e6)` and `od = (e1, e3, e5, e7)`. The bits are ordered so one
//! masked shift of a word yields four bytes, one per element, for either parity:
//!
//! | type | payload words / block | high words | scales per block |
//! |---|---|---|---|
//! | Q4_0, Q4_1 | 4: nibble `e` of the block = element `e` | — | Q4_0: f16 `d` (halves packed 2 per word); Q4_1: word `d | m<<16` |
//! | Q5_0, Q5_1 | 4 nibble words | 1: bit `8i + 2c + p` = 5th bit of element `8c + 2i + p` | as Q4_0 / Q4_1 |
//! | Q8_0 | 8: word `2c` holds bytes of elements `8c+0,2,4,6`, word `2c+1` of `8c+1,3,5,7` | — | f16 `d` (packed halves) |
//! | Q4_K | 32 nibble words | — | 5 words: `d | dmin<<16`, 8 × u8 `sc`, 8 × u8 `m` (6-bit fields pre-decoded) |
//! | Q5_K | 32 nibble words + 8 high-bit words (one per 32 elements, same bit order as Q5_0) | — | as Q4_K |
//! | Q6_K | 32 low-nibble words + 16 words of 2-bit highs (one per 16 elements: bits `8i + 2(2c+p)`) | — | 5 words: 16 × i8 scales, `d` |
//! | F32 / F16 / BF16 | 8 / 4 / 4 words per 8 elements, unchanged | — | none |
//!
//! Every type keeps its exact GGUF information, so GPU bytes / GGUF bytes is 1.0 for the
//! 32-element types and F*, 148/144 (Q4_K), 180/176 (Q5_K) and 212/210 (Q6_K): all ≤ 1.03
//! (plus at most 12 bytes of padding per buffer, which is rounded up to 16 bytes).
//! [`GpuLayout::dequantize`] decodes this layout with the same f32 operations as the shaders'
//! `dq8` (`shaders/quant/*.wgsl`) and is tested to equal [`super::dequantize`] bit for bit.

use half::f16;

use super::dequant::k4_scale_min;
use crate::gguf::GgmlType;
use crate::{Error, Result};

/// Geometry of one matrix type in the GPU layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuLayout {
    pub ty: GgmlType,
    /// Row length in elements (`ne[0]`).
    pub k: u32,
}

/// How a block's scales are stored in the scales plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scales {
    None,
    /// One f16 per block, two per word.
    Half,
    /// This many words per block.
    Words(u32),
}

impl GpuLayout {
    /// Checks that `ty` is supported and `k` a whole number of blocks; `name` labels errors.
    pub fn new(name: &str, ty: GgmlType, k: u32) -> Result<Self> {
        if !ty.is_supported() {
            return Err(Error::UnsupportedTensorType {
                tensor: name.to_string(),
                ty: ty.name().to_string(),
            });
        }
        let be = Self::block_elems_of(ty);
        if k == 0 || k % be != 0 {
            let why = if ty.block_elems() == 1 {
                format!("a multiple of 8 (the GPU kernels read {ty} rows in chunks of 8)")
            } else {
                format!("a multiple of the {ty} block size {be}")
            };
            return Err(Error::Shape {
                tensor: name.to_string(),
                expected: format!("row length (ne[0]) {why}"),
                found: format!("ne[0] = {k}"),
            });
        }
        Ok(Self { ty, k })
    }

    fn block_elems_of(ty: GgmlType) -> u32 {
        match ty.block_elems() {
            1 => 8,
            n => n as u32,
        }
    }

    /// Elements per GPU block: the GGUF block, or 8 for F32/F16/BF16.
    pub fn block_elems(&self) -> u32 {
        Self::block_elems_of(self.ty)
    }

    /// Blocks per row.
    pub fn blocks_per_row(&self) -> u32 {
        self.k / self.block_elems()
    }

    /// Payload words per block.
    pub fn payload_words(&self) -> u32 {
        match self.ty {
            GgmlType::F32 | GgmlType::Q8_0 => 8,
            GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1 => 4,
            GgmlType::Q4K => 32,
            GgmlType::Q5K => 40,
            GgmlType::Q6K => 48,
            _ => unreachable!("checked in GpuLayout::new"),
        }
    }

    fn scales(&self) -> Scales {
        match self.ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Scales::None,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => Scales::Half,
            GgmlType::Q4_1 | GgmlType::Q5_1 => Scales::Words(1),
            _ => Scales::Words(5),
        }
    }

    /// GGUF bytes of one row.
    pub fn row_bytes(&self) -> u64 {
        self.k as u64 / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// High-bit words per block (a plane of their own: Q5_0 and Q5_1).
    pub fn high_words(&self) -> u32 {
        match self.ty {
            GgmlType::Q5_0 | GgmlType::Q5_1 => 1,
            _ => 0,
        }
    }

    /// Word offset of the high-bit plane in a part of `rows` rows.
    pub fn hbase(&self, rows: u32) -> u64 {
        rows as u64 * self.blocks_per_row() as u64 * self.payload_words() as u64
    }

    /// Word offset of the scales plane in a part of `rows` rows.
    pub fn sbase(&self, rows: u32) -> u64 {
        self.hbase(rows) + rows as u64 * self.blocks_per_row() as u64 * self.high_words() as u64
    }

    /// Scale words of `rows` rows (whole words: an odd count of f16 scales rounds up).
    pub fn scale_words(&self, rows: u32) -> u64 {
        self.words(rows) - self.sbase(rows)
    }

    /// Bytes of a part buffer of `rows` rows: its words, rounded up to 16 bytes so the kernels
    /// can read it as `vec4<u32>` to the end.
    pub fn part_bytes(&self, rows: u32) -> u64 {
        (self.words(rows) * 4).next_multiple_of(16)
    }

    /// Total words of a part of `rows` rows.
    pub fn words(&self, rows: u32) -> u64 {
        let nb = rows as u64 * self.blocks_per_row() as u64;
        self.sbase(rows)
            + match self.scales() {
                Scales::None => 0,
                Scales::Half => nb.div_ceil(2),
                Scales::Words(w) => nb * w as u64,
            }
    }

    /// Repacks `bytes` (whole GGUF rows, `rows · row_bytes()` bytes) into the GPU layout.
    pub fn repack(&self, bytes: &[u8]) -> Vec<u32> {
        let rb = self.row_bytes() as usize;
        debug_assert_eq!(bytes.len() % rb, 0);
        let rows = (bytes.len() / rb) as u32;
        if self.scales() == Scales::None {
            // F32/F16/BF16: the little-endian words of the row are already the layout.
            return bytes
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
        }
        let mut out = vec![0u32; self.words(rows) as usize];
        let hbase = self.hbase(rows) as usize;
        let sbase = self.sbase(rows) as usize;
        let pw = self.payload_words() as usize;
        let hw = self.high_words() as usize;
        let bb = self.ty.block_bytes() as usize;
        for (gb, b) in bytes.chunks_exact(bb).enumerate() {
            let mut payload = [0u32; 48];
            let mut scale = [0u32; 5];
            self.repack_block(b, &mut payload, &mut scale);
            out[gb * pw..(gb + 1) * pw].copy_from_slice(&payload[..pw]);
            out[hbase + gb * hw..hbase + (gb + 1) * hw].copy_from_slice(&payload[pw..pw + hw]);
            match self.scales() {
                Scales::Half => out[sbase + gb / 2] |= scale[0] << (16 * (gb % 2)),
                Scales::Words(w) => {
                    let w = w as usize;
                    out[sbase + gb * w..sbase + (gb + 1) * w].copy_from_slice(&scale[..w]);
                }
                Scales::None => unreachable!(),
            }
        }
        out
    }

    /// One GGUF block into its payload words (followed by its high-bit words for Q5_0/Q5_1)
    /// and scale words (`scale[0]` holds the f16 bits for `Scales::Half`).
    fn repack_block(&self, b: &[u8], payload: &mut [u32], scale: &mut [u32; 5]) {
        let h16 = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as u32;
        // Element `e`'s stored quant (nibble, 5-bit, 6-bit or byte).
        let mut q = [0u8; 256];
        match self.ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let (qs, qh) = match self.ty {
                    GgmlType::Q4_0 => (&b[2..18], 0),
                    GgmlType::Q4_1 => (&b[4..20], 0),
                    GgmlType::Q5_0 => (&b[6..22], u32::from_le_bytes([b[2], b[3], b[4], b[5]])),
                    _ => (&b[8..24], u32::from_le_bytes([b[4], b[5], b[6], b[7]])),
                };
                for j in 0..16 {
                    q[j] = (qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
                    q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                }
                pack_nibbles(&q[..32], &mut payload[..4]);
                if matches!(self.ty, GgmlType::Q5_0 | GgmlType::Q5_1) {
                    payload[4] = pack_bits(&q[..32], 4);
                }
                scale[0] = match self.ty {
                    GgmlType::Q4_0 | GgmlType::Q5_0 => h16(0),
                    _ => h16(0) | (h16(2) << 16),
                };
            }
            GgmlType::Q8_0 => {
                for c in 0..4 {
                    for p in 0..2 {
                        let w = (0..4).fold(0u32, |w, i| {
                            w | (b[2 + 8 * c + 2 * i + p] as u32) << (8 * i)
                        });
                        payload[2 * c + p] = w;
                    }
                }
                scale[0] = h16(0);
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let scales = &b[4..16];
                let (qh, qs) = if self.ty == GgmlType::Q5K {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                for (e, qe) in q.iter_mut().enumerate() {
                    let (s, l) = (e / 32, e % 32);
                    let byte = qs[32 * (s / 2) + l];
                    *qe = if s % 2 == 1 { byte >> 4 } else { byte & 0xF };
                    if let Some(qh) = qh {
                        *qe |= ((qh[l] >> s) & 1) << 4;
                    }
                }
                pack_nibbles(&q, &mut payload[..32]);
                if self.ty == GgmlType::Q5K {
                    for s in 0..8 {
                        payload[32 + s] = pack_bits(&q[32 * s..32 * (s + 1)], 4);
                    }
                }
                scale[0] = h16(0) | (h16(2) << 16);
                for s in 0..8 {
                    let (sc, mn) = k4_scale_min(scales, s);
                    scale[1 + s / 4] |= (sc as u32) << (8 * (s % 4));
                    scale[3 + s / 4] |= (mn as u32) << (8 * (s % 4));
                }
            }
            GgmlType::Q6K => {
                let (ql, qh) = (&b[0..128], &b[128..192]);
                for (e, qe) in q.iter_mut().enumerate() {
                    let (n, r) = (e / 128, e % 128);
                    let (t, l) = (r / 32, r % 32);
                    let lo = ql[64 * n + 32 * (t & 1) + l];
                    let lo = if t >= 2 { lo >> 4 } else { lo & 0xF };
                    *qe = lo | (((qh[32 * n + l] >> (2 * t)) & 3) << 4);
                }
                pack_nibbles(&q, &mut payload[..32]);
                for h in 0..16 {
                    let mut w = 0u32;
                    for e in 0..16 {
                        let (c, i, p) = (e / 8, (e % 8) / 2, e % 2);
                        w |= ((q[16 * h + e] >> 4) as u32 & 3) << (8 * i + 2 * (2 * c + p));
                    }
                    payload[32 + h] = w;
                }
                for (w, s) in b[192..208].chunks_exact(4).enumerate() {
                    scale[w] = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
                scale[4] = h16(208);
            }
            _ => unreachable!("no scales plane for {}", self.ty),
        }
    }

    /// Dequantizes a part of `rows` rows from its GPU words, with the shaders' arithmetic.
    pub fn dequantize(&self, words: &[u32], rows: u32) -> Vec<f32> {
        let bpr = self.blocks_per_row();
        let cpb = self.block_elems() / 8;
        let planes = (self.hbase(rows) as u32, self.sbase(rows) as u32);
        let mut out = Vec::with_capacity(rows as usize * self.k as usize);
        for gb in 0..rows * bpr {
            for j in 0..cpb {
                let (ev, od) = self.chunk(words, planes, gb, j);
                for i in 0..4 {
                    out.push(ev[i]);
                    out.push(od[i]);
                }
            }
        }
        out
    }

    /// Elements `8j..8j+7` of block `gb` as (even, odd) lanes, in a part whose high-bit and
    /// scales planes start at words `(hbase, sbase)`: the CPU twin of `dq8` in
    /// `shaders/quant/<type>.wgsl`, operation for operation.
    pub fn chunk(
        &self,
        wq: &[u32],
        (hbase, sbase): (u32, u32),
        gb: u32,
        j: u32,
    ) -> ([f32; 4], [f32; 4]) {
        let (gb, j, hbase, sbase) = (gb as usize, j as usize, hbase as usize, sbase as usize);
        let pw = self.payload_words() as usize;
        let base = gb * pw;
        let half = |i: usize| f16::from_bits((wq[sbase + i / 2] >> (16 * (i % 2))) as u16).to_f32();
        let lo16 = |w: u32| f16::from_bits(w as u16).to_f32();
        let hi16 = |w: u32| f16::from_bits((w >> 16) as u16).to_f32();
        match self.ty {
            GgmlType::F32 => {
                let w = &wq[base..base + 8];
                (
                    [w[0], w[2], w[4], w[6]].map(f32::from_bits),
                    [w[1], w[3], w[5], w[7]].map(f32::from_bits),
                )
            }
            GgmlType::F16 => {
                let w: [u32; 4] = wq[base..base + 4].try_into().unwrap();
                (w.map(lo16), w.map(hi16))
            }
            GgmlType::BF16 => {
                let w: [u32; 4] = wq[base..base + 4].try_into().unwrap();
                (
                    w.map(|w| f32::from_bits(w << 16)),
                    w.map(|w| f32::from_bits(w & 0xFFFF_0000)),
                )
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let w = wq[base + j];
                let (mut ev, mut od) = (w & 0x0F0F_0F0F, (w >> 4) & 0x0F0F_0F0F);
                let five = matches!(self.ty, GgmlType::Q5_0 | GgmlType::Q5_1);
                if five {
                    let h = wq[hbase + gb] >> (2 * j);
                    ev |= (h & 0x0101_0101) << 4;
                    od |= ((h >> 1) & 0x0101_0101) << 4;
                }
                let (ev, od) = (u8x4(ev), u8x4(od));
                match self.ty {
                    GgmlType::Q4_0 | GgmlType::Q5_0 => {
                        let d = half(gb);
                        let off = if five { 16.0 } else { 8.0 };
                        (ev.map(|q| d * (q - off)), od.map(|q| d * (q - off)))
                    }
                    _ => {
                        let dm = wq[sbase + gb];
                        let (d, m) = (lo16(dm), hi16(dm));
                        (ev.map(|q| d * q + m), od.map(|q| d * q + m))
                    }
                }
            }
            GgmlType::Q8_0 => {
                let d = half(gb);
                let ev = i8x4(wq[base + 2 * j]);
                let od = i8x4(wq[base + 2 * j + 1]);
                (ev.map(|q| q * d), od.map(|q| q * d))
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let w = wq[base + j];
                let (mut ev, mut od) = (w & 0x0F0F_0F0F, (w >> 4) & 0x0F0F_0F0F);
                if self.ty == GgmlType::Q5K {
                    let h = wq[base + 32 + j / 4] >> (2 * (j % 4));
                    ev |= (h & 0x0101_0101) << 4;
                    od |= ((h >> 1) & 0x0101_0101) << 4;
                }
                let s = j / 4;
                let sb = sbase + gb * 5;
                let dd = wq[sb];
                let sh = 8 * (s % 4);
                let sc = ((wq[sb + 1 + s / 4] >> sh) & 0xFF) as f32;
                let mn = ((wq[sb + 3 + s / 4] >> sh) & 0xFF) as f32;
                let a = lo16(dd) * sc;
                let m = hi16(dd) * mn;
                (u8x4(ev).map(|q| a * q - m), u8x4(od).map(|q| a * q - m))
            }
            GgmlType::Q6K => {
                let w = wq[base + j];
                let h = wq[base + 32 + j / 2] >> (4 * (j % 2));
                let ev = (w & 0x0F0F_0F0F) | ((h & 0x0303_0303) << 4);
                let od = ((w >> 4) & 0x0F0F_0F0F) | (((h >> 2) & 0x0303_0303) << 4);
                let sb = sbase + gb * 5;
                let idx = j / 2;
                let sc = ((wq[sb + idx / 4] >> (8 * (idx % 4))) as u8 as i8) as f32;
                let a = lo16(wq[sb + 4]) * sc;
                (
                    u8x4(ev).map(|q| a * (q - 32.0)),
                    u8x4(od).map(|q| a * (q - 32.0)),
                )
            }
            _ => unreachable!("checked in GpuLayout::new"),
        }
    }
}

/// Packs 8·n quants (< 16 after masking) as nibbles: nibble `e` of the words = element `e`.
fn pack_nibbles(q: &[u8], words: &mut [u32]) {
    for (w, chunk) in words.iter_mut().zip(q.chunks_exact(8)) {
        *w = chunk
            .iter()
            .enumerate()
            .fold(0, |w, (i, &v)| w | ((v & 0xF) as u32) << (4 * i));
    }
}

/// Bit `shift` of 32 quants into one word: bit `8i + 2c + p` for element `8c + 2i + p`.
fn pack_bits(q: &[u8], shift: u32) -> u32 {
    (0..32).fold(0, |w, e| {
        let (c, i, p) = (e / 8, (e % 8) / 2, e % 2);
        w | (((q[e] >> shift) & 1) as u32) << (8 * i + 2 * c + p)
    })
}

fn u8x4(v: u32) -> [f32; 4] {
    [0, 8, 16, 24].map(|s| ((v >> s) & 0xFF) as f32)
}

fn i8x4(v: u32) -> [f32; 4] {
    [0, 8, 16, 24].map(|s| ((v >> s) as u8 as i8) as f32)
}
