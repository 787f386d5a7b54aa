//! Where GGUF bytes come from: a memory map natively, a buffer anywhere, and (later) a streamed
//! download in the browser, all behind one trait so a single loader serves every platform.

use std::future::Future;

use crate::{Error, Result};

/// Random-access-in-principle, forward-in-practice byte source for a GGUF file.
///
/// Access pattern the reader and loader promise, so that a streaming source (a `fetch` body in
/// the browser) can discard bytes once they are served:
/// * [`super::read_header`] reads contiguous, increasing ranges starting at 0 and never reads
///   past the end of the tensor-info table, i.e. never into the data section;
/// * the model loader then reads tensors in increasing offset order.
///
/// `read_at` fills all of `buf` or fails; reading past the end is an error
/// ([`Error::Truncated`] for the sources here).
pub trait TensorSource {
    /// Total size in bytes, if known (a streamed download may know it from Content-Length).
    /// When known, the header reader checks every tensor against it.
    fn len(&self) -> Option<u64>;

    /// Whether the source is known to be empty.
    fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Fill `buf` with the bytes starting at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<()>>;
}

/// Random access to a model file after loading, for the tables that never go to the GPU: Gemma
/// 4's per-layer-embedding table is read one row per token (≈ 5–9 KB) from here. Natively a
/// memory map (the OS pages rows in from flash and may drop them again, so the table costs
/// address space, not resident memory); in the browser, a cached copy of the file.
pub trait RowSource: std::fmt::Debug {
    /// Fill `buf` with the bytes starting at `offset`; a range past the end is an error.
    fn read_rows(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl RowSource for MemorySource {
    fn read_rows(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(slice_at(&self.0, offset, buf.len() as u64)?);
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl RowSource for MmapSource {
    fn read_rows(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(slice_at(&self.map, offset, buf.len() as u64)?);
        Ok(())
    }
}

/// Lets a borrowed source be passed where a source is taken by value (e.g. to wrap it), so the
/// caller keeps it for the tensor reads that follow the header.
impl<S: TensorSource + ?Sized> TensorSource for &mut S {
    fn len(&self) -> Option<u64> {
        (**self).len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<()>> {
        (**self).read_at(offset, buf)
    }
}

/// `offset + len` when those bytes lie within a source of `size` bytes; otherwise the error
/// every in-memory source gives for a range outside its bytes.
pub(crate) fn range_end(offset: u64, len: u64, size: u64) -> Result<u64> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(end),
        _ => Err(Error::Truncated(format!(
            "read of {len} bytes at offset {offset} passes the end of the data ({size} bytes)"
        ))),
    }
}

/// `bytes[offset .. offset + len]`, with overflow-safe bounds checks.
fn slice_at(bytes: &[u8], offset: u64, len: u64) -> Result<&[u8]> {
    let end = range_end(offset, len, bytes.len() as u64)?;
    Ok(&bytes[offset as usize..end as usize])
}

/// A whole file held in memory: tests, small files, and a browser that already has the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySource(pub Vec<u8>);

impl MemorySource {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Zero-copy view of `len` bytes at `offset`.
    pub fn bytes(&self, offset: u64, len: u64) -> Result<&[u8]> {
        slice_at(&self.0, offset, len)
    }
}

impl TensorSource for MemorySource {
    fn len(&self) -> Option<u64> {
        Some(self.0.len() as u64)
    }

    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(slice_at(&self.0, offset, buf.len() as u64)?);
        Ok(())
    }
}

/// A memory-mapped file (native only). Reads are plain memory copies, so the async trait methods
/// complete immediately; [`MmapSource::bytes`] gives zero-copy access for uploads.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub struct MmapSource {
    map: memmap2::Mmap,
    path: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl MmapSource {
    /// Maps the file read-only. Errors name the path.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process. If another process truncates
        // or rewrites the file while it is mapped, reads may see the new bytes or fault (SIGBUS);
        // that is the standard mmap caveat, accepted for model files that nobody edits in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Self {
            map,
            path: path.to_path_buf(),
        })
    }

    /// The file that was mapped.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The whole file.
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// Zero-copy view of `len` bytes at `offset` (e.g. a tensor: `bytes(t.offset, t.n_bytes)`).
    pub fn bytes(&self, offset: u64, len: u64) -> Result<&[u8]> {
        slice_at(&self.map, offset, len)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl TensorSource for MmapSource {
    fn len(&self) -> Option<u64> {
        Some(self.map.len() as u64)
    }

    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(slice_at(&self.map, offset, buf.len() as u64)?);
        Ok(())
    }
}
