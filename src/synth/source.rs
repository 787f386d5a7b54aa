//! A synthetic model read like a file without being written anywhere: the GGUF header is built
//! in memory and each tensor's bytes are generated when a read touches them, identical to what
//! [`super::write()`] puts in the file. A full-size E4B is 5 GB on disk; served from here it costs
//! the header and one 4 MiB chunk, so tests and memory checks of the real shapes need no disk.

use std::sync::Mutex;

use super::{SynthSpec, TensorStream};
use crate::gguf::{range_end, RowSource, TensorSource};
use crate::Result;

/// The bytes of the GGUF file [`super::write()`] would write for a spec, served on demand.
///
/// As a [`TensorSource`] it loads a model; as a [`RowSource`] it serves the per-layer-embedding
/// rows of Gemma 4 (each row read generates the chunk that holds it, a few milliseconds).
pub struct SynthSource {
    /// Preamble, metadata and tensor infos, padded to the data section.
    header: Vec<u8>,
    /// Absolute offset of each tensor's data, in file order.
    starts: Vec<u64>,
    /// Each tensor's size without padding, in file order.
    sizes: Vec<u64>,
    streams: Vec<TensorStream>,
    /// File size.
    size: u64,
    /// The chunk a partial read generated last, as (tensor, chunk, bytes): reads of neighbouring
    /// rows or the pieces of one tensor reuse it.
    last: Mutex<Option<(usize, u64, Vec<u8>)>>,
}

impl std::fmt::Debug for SynthSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynthSource")
            .field("tensors", &self.streams.len())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl SynthSource {
    /// Lays out the file of `spec` (checking the spec as [`super::write()`] does); no tensor
    /// data is generated yet.
    pub fn new(spec: &SynthSpec) -> Result<Self> {
        let tensors = spec.tensors()?;
        let plan = spec.plan_for(&tensors)?;
        let header = plan.header()?;
        let data = header.len() as u64;
        let starts = plan.tensors().iter().map(|t| data + t.offset).collect();
        let sizes = plan.tensors().iter().map(|t| t.n_bytes).collect();
        let streams = tensors
            .iter()
            .map(|t| TensorStream::new(t, spec.seed))
            .collect::<Result<_>>()?;
        Ok(Self {
            size: data + plan.data_bytes(),
            header,
            starts,
            sizes,
            streams,
            last: Mutex::new(None),
        })
    }

    /// Size of the file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` with the file's bytes from `offset`; a range past the end is an error.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        range_end(offset, buf.len() as u64, self.size)?;
        let mut pos = offset;
        let mut out = buf;
        while !out.is_empty() {
            let n = self.read_piece(pos, out);
            out = &mut out[n..];
            pos += n as u64;
        }
        Ok(())
    }

    /// Fills the start of `out` with the bytes at `pos` up to the next boundary (header, tensor
    /// padding, chunk); returns how many it filled (at least one).
    fn read_piece(&self, pos: u64, out: &mut [u8]) -> usize {
        let header = self.header.len() as u64;
        if pos < header {
            let n = out.len().min((header - pos) as usize);
            out[..n].copy_from_slice(&self.header[pos as usize..][..n]);
            return n;
        }
        // The last tensor starting at or before `pos`: the data section starts with tensor 0.
        let i = self.starts.partition_point(|&s| s <= pos) - 1;
        let rel = pos - self.starts[i];
        if rel >= self.sizes[i] {
            // Alignment padding up to the next tensor (or the end of the file).
            let next = self.starts.get(i + 1).copied().unwrap_or(self.size);
            let n = out.len().min((next - pos) as usize);
            out[..n].fill(0);
            return n;
        }
        let stream = &self.streams[i];
        let chunk = rel / stream.chunk_bytes();
        let within = (rel % stream.chunk_bytes()) as usize;
        let len = stream.chunk_len(chunk);
        let n = out.len().min(len - within);
        if within == 0 && n == len {
            // A whole chunk: generate it in place.
            stream.fill_chunk(chunk, &mut out[..n]);
            return n;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let cached = matches!(&*last, Some((t, c, _)) if *t == i && *c == chunk);
        if !cached {
            let mut bytes = vec![0u8; len];
            stream.fill_chunk(chunk, &mut bytes);
            *last = Some((i, chunk, bytes));
        }
        let (_, _, bytes) = last.as_ref().expect("filled above");
        out[..n].copy_from_slice(&bytes[within..][..n]);
        n
    }
}

impl TensorSource for SynthSource {
    fn len(&self) -> Option<u64> {
        Some(self.size)
    }

    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read(offset, buf)
    }
}

impl RowSource for SynthSource {
    fn read_rows(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read(offset, buf)
    }
}
