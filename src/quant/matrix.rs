//! `QuantMatrix`: a weight matrix uploaded once in the GPU layout (`super::layout`), split by
//! rows into several buffers when one binding cannot hold it (a 262144-row LM head at WebGPU's
//! default 128 MiB per binding).

use super::GpuLayout;
use crate::gguf::GgmlType;
use crate::gpu::GpuContext;
use crate::{Error, Result};

/// One row range of a matrix, in its own buffer.
#[derive(Debug)]
pub struct QuantPart {
    /// `words` u32: payload plane `[rows, blocks_per_row, payload_words]`, then the scales plane.
    pub buffer: wgpu::Buffer,
    /// First row of the matrix held here.
    pub row0: u32,
    /// Rows held here.
    pub rows: u32,
    /// Word offset of the scales plane in `buffer`.
    pub sbase: u32,
    /// Words in `buffer` (the buffer itself may be rounded up).
    pub words: u64,
}

/// A `[n, k]` weight matrix (`n` rows of `k` elements, GGUF `ne = [k, n]`) on the GPU.
#[derive(Debug)]
pub struct QuantMatrix {
    pub name: String,
    pub layout: GpuLayout,
    /// Row length (`ne[0]`).
    pub k: u32,
    /// Rows (`ne[1]`).
    pub n: u32,
    pub parts: Vec<QuantPart>,
}

impl QuantMatrix {
    /// Validates and repacks `gguf_bytes` (the tensor's data, `n` rows of `k` elements of `ty`)
    /// and uploads it, in as many row-range buffers as `ctx`'s binding and buffer limits need.
    /// Errors name the tensor: unsupported type, `k` not a whole number of blocks, a byte count
    /// that does not match, or a single row that does not fit one binding.
    pub fn upload(
        ctx: &GpuContext,
        name: &str,
        ty: GgmlType,
        k: u32,
        n: u32,
        gguf_bytes: &[u8],
    ) -> Result<Self> {
        let layout = GpuLayout::new(name, ty, k)?;
        let row_bytes = layout.row_bytes();
        let expected = row_bytes * n as u64;
        if gguf_bytes.len() as u64 != expected || n == 0 {
            return Err(Error::Shape {
                tensor: name.to_string(),
                expected: format!("{n} rows × {k} {ty} elements = {expected} bytes (n > 0)"),
                found: format!("{} bytes", gguf_bytes.len()),
            });
        }
        let limit = ctx.caps.max_binding.min(ctx.caps.max_buffer);
        let rows_per_part = rows_fitting(&layout, n, limit);
        if rows_per_part == 0 {
            return Err(Error::Limit {
                what: format!("one row of tensor `{name}`"),
                needed: layout.words(1) * 4,
                available: limit,
                limit: "max_storage_buffer_binding_size",
            });
        }
        let mut parts = Vec::new();
        let mut row0 = 0u32;
        while row0 < n {
            let rows = rows_per_part.min(n - row0);
            let bytes = &gguf_bytes
                [(row0 as u64 * row_bytes) as usize..((row0 + rows) as u64 * row_bytes) as usize];
            let words = layout.repack(bytes);
            let label = if rows == n {
                name.to_string()
            } else {
                format!("{name}[{row0}..{}]", row0 + rows)
            };
            let buffer = ctx.storage_init(&label, &words)?;
            parts.push(QuantPart {
                buffer,
                row0,
                rows,
                sbase: layout.sbase(rows) as u32,
                words: words.len() as u64,
            });
            row0 += rows;
        }
        Ok(Self {
            name: name.to_string(),
            layout,
            k,
            n,
            parts,
        })
    }

    /// The GGUF element type.
    pub fn ty(&self) -> GgmlType {
        self.layout.ty
    }

    /// Bytes of GPU memory the weights occupy (all parts).
    pub fn gpu_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.buffer.size()).sum()
    }

    /// Size of the largest part's buffer (what one binding must hold).
    pub fn largest_buffer_bytes(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| p.buffer.size())
            .max()
            .unwrap_or(0)
    }

    /// Bytes the same tensor takes in the GGUF file.
    pub fn gguf_bytes(&self) -> u64 {
        self.layout.row_bytes() * self.n as u64
    }
}

/// The most rows (≤ `n`) whose part fits in `limit` bytes.
fn rows_fitting(layout: &GpuLayout, n: u32, limit: u64) -> u32 {
    let bytes = |rows: u32| (layout.words(rows) * 4).max(4);
    if bytes(n) <= limit {
        return n;
    }
    // words() is affine in rows up to one word of rounding: start from the estimate and step down.
    let per_row = (layout.words(2) - layout.words(1)) * 4;
    let mut rows = (limit / per_row).min(n as u64) as u32;
    while rows > 0 && bytes(rows) > limit {
        rows -= 1;
    }
    rows
}
