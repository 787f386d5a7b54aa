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
    /// `words` u32 (padded to 16 bytes): payload plane `[rows, blocks_per_row,
    /// payload_words]`, the high-bit plane (Q5_0/Q5_1), then the scales plane.
    pub buffer: wgpu::Buffer,
    /// First row of the matrix held here.
    pub row0: u32,
    /// Rows held here.
    pub rows: u32,
    /// Word offset of the high-bit plane in `buffer` (= `sbase` for types without one).
    pub hbase: u32,
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
        let mut up = MatrixUpload::new(ctx, name, ty, k, n)?;
        up.check_len(gguf_bytes.len() as u64)?;
        up.write_rows(ctx, 0, gguf_bytes)?;
        up.finish()
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

/// A matrix being uploaded in row chunks, so that a loader never holds a whole tensor (the
/// 170 MB embedding of Gemma 3 270M would otherwise dominate a browser tab's memory): the part
/// buffers are created up front and every chunk is repacked and written into its place in the
/// payload and scales planes.
#[derive(Debug)]
pub struct MatrixUpload {
    name: String,
    layout: GpuLayout,
    k: u32,
    n: u32,
    parts: Vec<QuantPart>,
    /// Rows written so far (chunks arrive in order).
    written: u32,
}

impl MatrixUpload {
    /// Checks the geometry against the device's limits and creates the (zeroed) part buffers.
    pub fn new(ctx: &GpuContext, name: &str, ty: GgmlType, k: u32, n: u32) -> Result<Self> {
        let layout = GpuLayout::new(name, ty, k)?;
        let limit = ctx.caps.max_binding.min(ctx.caps.max_buffer);
        let mut parts = Vec::new();
        for (row0, rows) in part_ranges(&layout, n, name, limit)? {
            let label = if rows == n {
                name.to_string()
            } else {
                format!("{name}[{row0}..{}]", row0 + rows)
            };
            parts.push(QuantPart {
                buffer: ctx.storage(&label, layout.part_bytes(rows))?,
                row0,
                rows,
                hbase: layout.hbase(rows) as u32,
                sbase: layout.sbase(rows) as u32,
                words: layout.words(rows),
            });
        }
        Ok(Self {
            name: name.to_string(),
            layout,
            k,
            n,
            parts,
            written: 0,
        })
    }

    /// Rows per chunk for about `bytes` of GGUF data per read: even, so that two f16 scales
    /// always share a word within one chunk.
    pub fn chunk_rows(&self, bytes: u64) -> u32 {
        let rows = (bytes / self.layout.row_bytes().max(1)).max(2) as u32 & !1;
        rows.min(self.n)
    }

    /// Checks that `bytes` (the tensor's size in the file) is exactly its rows.
    pub fn check_len(&self, bytes: u64) -> Result<()> {
        let expected = self.layout.row_bytes() * self.n as u64;
        if bytes != expected {
            return Err(Error::Shape {
                tensor: self.name.clone(),
                expected: format!(
                    "{} rows × {} {} elements = {expected} bytes",
                    self.n, self.k, self.layout.ty
                ),
                found: format!("{bytes} bytes"),
            });
        }
        Ok(())
    }

    /// GGUF bytes of one row.
    pub fn row_bytes(&self) -> u64 {
        self.layout.row_bytes()
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> u32 {
        self.n
    }

    /// Repacks and writes whole GGUF rows starting at `row0` (which must be the next unwritten
    /// row, and even unless the chunk ends the matrix).
    pub fn write_rows(&mut self, ctx: &GpuContext, row0: u32, bytes: &[u8]) -> Result<()> {
        let rb = self.layout.row_bytes() as usize;
        let rows = (bytes.len() / rb) as u32;
        if bytes.len() % rb != 0 || row0 != self.written || row0 + rows > self.n {
            return Err(Error::Gguf(format!(
                "internal: tensor `{}`: chunk of {} bytes at row {row0} does not continue rows 0..{} of {}",
                self.name,
                bytes.len(),
                self.written,
                self.n
            )));
        }
        let mut row = row0;
        while row < row0 + rows {
            let part = self
                .parts
                .iter()
                .find(|p| row >= p.row0 && row < p.row0 + p.rows)
                .expect("parts cover every row");
            let take = (part.row0 + part.rows - row).min(row0 + rows - row);
            let local = row - part.row0;
            let chunk = &bytes[((row - row0) as usize * rb)..((row - row0 + take) as usize * rb)];
            let words = self.layout.repack(chunk);
            // The chunk's own planes (payload, high bits, scales), each written after the
            // same plane of the part's rows before `local` (an even count, so the f16 scales
            // of those rows fill whole words).
            let l = &self.layout;
            let (hbase, sbase) = (l.hbase(take) as usize, l.sbase(take) as usize);
            for (plane, at) in [
                (&words[..hbase], l.hbase(local)),
                (
                    &words[hbase..sbase],
                    part.hbase as u64 + l.sbase(local) - l.hbase(local),
                ),
                (&words[sbase..], part.sbase as u64 + l.scale_words(local)),
            ] {
                if !plane.is_empty() {
                    ctx.queue
                        .write_buffer(&part.buffer, at * 4, bytemuck::cast_slice(plane));
                }
            }
            row += take;
        }
        self.written = row0 + rows;
        Ok(())
    }

    /// The uploaded matrix; every row must have been written.
    pub fn finish(self) -> Result<QuantMatrix> {
        if self.written != self.n {
            return Err(Error::Gguf(format!(
                "internal: tensor `{}`: {} of {} rows uploaded",
                self.name, self.written, self.n
            )));
        }
        Ok(QuantMatrix {
            name: self.name,
            layout: self.layout,
            k: self.k,
            n: self.n,
            parts: self.parts,
        })
    }
}

/// Byte sizes of the part buffers a `[n, k]` matrix of `ty` is split into under `limit` bytes
/// per buffer (what [`MatrixUpload::new`] will create), or why it cannot be uploaded.
pub fn part_sizes(name: &str, ty: GgmlType, k: u32, n: u32, limit: u64) -> Result<Vec<u64>> {
    let layout = GpuLayout::new(name, ty, k)?;
    Ok(part_ranges(&layout, n, name, limit)?
        .into_iter()
        .map(|(_, rows)| layout.part_bytes(rows))
        .collect())
}

/// `(first row, rows)` of each part buffer: all rows in one when they fit a binding, else the
/// most that fit (an even count, so chunk boundaries inside a part stay even too).
fn part_ranges(layout: &GpuLayout, n: u32, name: &str, limit: u64) -> Result<Vec<(u32, u32)>> {
    if n == 0 {
        return Err(Error::Shape {
            tensor: name.to_string(),
            expected: "at least one row".into(),
            found: "0 rows".into(),
        });
    }
    let rows = rows_fitting(layout, n, limit);
    if rows == 0 {
        return Err(Error::Limit {
            what: format!("one row of tensor `{name}`"),
            needed: layout.part_bytes(1),
            available: limit,
            limit: "max_storage_buffer_binding_size",
        });
    }
    let per_part = if rows < n { (rows & !1).max(1) } else { rows };
    Ok((0..n)
        .step_by(per_part as usize)
        .map(|row0| (row0, per_part.min(n - row0)))
        .collect())
}

/// The most rows (≤ `n`) whose part fits in `limit` bytes.
fn rows_fitting(layout: &GpuLayout, n: u32, limit: u64) -> u32 {
    let bytes = |rows: u32| layout.part_bytes(rows);
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
