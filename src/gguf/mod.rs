//! GGUF reader: the header (version, metadata, tensor infos, data offset) of a GGUF v2/v3 file,
//! read through a [`TensorSource`] so that native files and browser downloads share one path.
//!
//! What it does:
//! * parses little-endian GGUF v2 and v3: every metadata value type including nested arrays,
//!   `general.alignment` (default 32), tensor infos, and the start of the data section;
//! * reads the header progressively ([`read_header`]), asking the source only for bytes that
//!   belong to the header, in increasing order, so a streamed download is never asked to go
//!   back and the tensor data is not touched;
//! * validates everything a hostile or corrupt file could get wrong, and reports it as an
//!   [`Error`] naming the key or tensor and the numbers involved: bad magic, unsupported version
//!   or endianness, truncation, absurd lengths (capped against the bytes that remain and
//!   [`MAX_HEADER_BYTES`], so nothing is allocated from a corrupt count), duplicate keys and
//!   tensor names, unknown types, more than 4 dimensions, zero or overflowing dimensions,
//!   misaligned, overlapping or out-of-file tensor data. It never panics on input bytes.
//!
//! What it does not do:
//! * interpret metadata (model configuration lives in `model`, the vocabulary in `tokenizer`);
//! * read, dequantize or repack tensor data (`quant` and the model loader do, through the same
//!   source; [`read_tensor_data`] and [`MmapSource::bytes`] are the plain accessors);
//! * decide which tensor types can run: every known ggml type parses, and the loader calls
//!   [`TensorInfo::check_supported`] on the tensors it actually uses;
//! * big-endian files or GGUF v1 (both are rejected with a message saying so);
//! * split (multi-file) GGUF models.

mod metadata;
mod parse;
mod source;
mod types;
pub mod writer;

pub use metadata::{Array, Metadata, Value};
pub use parse::MAX_HEADER_BYTES;
pub(crate) use source::range_end;
#[cfg(not(target_arch = "wasm32"))]
pub use source::MmapSource;
pub use source::{MemorySource, RowSource, TensorSource};
pub use types::GgmlType;

use crate::{Error, Result};
pub use parse::{Halt, HeaderParser};

/// One tensor as described by the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Shape with ne[0] first: ne[0] is contiguous (the row), so a PyTorch `[out, in]` weight is
    /// `[in, out]` here.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// ABSOLUTE file offset of the first byte of the data (the file stores it relative to the
    /// data section; the reader adds the data offset once so nobody else has to).
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Product of the dimensions (1 for a 0-d tensor).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Elements per row, ne[0].
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of ne[1..].
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Bytes per row; row `r` starts at `offset + r * row_bytes()`.
    pub fn row_bytes(&self) -> u64 {
        self.row_len() / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// `Err(Error::UnsupportedTensorType)` unless the engine has kernels for this tensor's type.
    pub fn check_supported(&self) -> Result<()> {
        if self.ty.is_supported() {
            Ok(())
        } else {
            Err(Error::UnsupportedTensorType {
                tensor: self.name.clone(),
                ty: self.ty.name().to_string(),
            })
        }
    }
}

/// A parsed GGUF header (candle's `gguf_file::Content` shape): everything but the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    /// 2 or 3 (the two share one layout).
    pub version: u32,
    pub metadata: Metadata,
    /// In file order. Names are unique, offsets absolute, data inside the file when its size is
    /// known.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section (end of the header rounded up to `alignment`).
    pub data_offset: u64,
    /// `general.alignment`, or 32 when absent.
    pub alignment: u64,
    /// Size of the whole file, when the source knew it.
    pub file_size: Option<u64>,
}

impl Gguf {
    /// Parses a complete file held in memory (or mapped). Synchronous: no source, no executor.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        match HeaderParser::new().feed(bytes, 0, Some(bytes.len() as u64)) {
            Ok(g) => Ok(g),
            Err(Halt::Fail(e)) => Err(e),
            // With the file size equal to the buffer, every shortfall is a truncation error.
            Err(Halt::More(end)) => Err(Error::Truncated(format!(
                "header needs {end} bytes, the file has {}",
                bytes.len()
            ))),
        }
    }

    /// The tensor called `name`, or `Error::MissingTensor`. A linear scan: a few hundred
    /// tensors, looked up once each at load time, and no index that could go stale if a caller
    /// edits `tensors`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.opt_tensor(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    /// The tensor called `name`, if present (e.g. `output.weight`, which tied models omit).
    pub fn opt_tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture` (`"gemma3"`, `"gemma4"`).
    pub fn architecture(&self) -> Result<&str> {
        self.metadata.str("general.architecture")
    }

    /// Total bytes of tensor data (without padding).
    pub fn tensor_data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes).sum()
    }

    /// Tensors in increasing offset order: the order a streaming source can serve them in.
    pub fn tensors_by_offset(&self) -> Vec<&TensorInfo> {
        let mut v: Vec<&TensorInfo> = self.tensors.iter().collect();
        v.sort_by_key(|t| t.offset);
        v
    }
}

/// Largest single read [`read_header`] makes.
const READ_STEP: u64 = 8 << 20;

/// Reads and parses the header through `src`, without touching tensor data.
///
/// Reads are contiguous and increasing from offset 0, and each asks for no more than the
/// smallest header the bytes seen so far allow, so they never pass the end of the tensor-info
/// table; a streaming source can serve them and then the tensors, in order, without seeking back.
/// Everything already parsed is kept between reads, so the cost is linear in the header size
/// (about 25 reads for the 6.5 MB Gemma 3 270M header).
pub async fn read_header<S: TensorSource>(src: &mut S) -> Result<Gguf> {
    let file_size = src.len();
    let mut parser = HeaderParser::new();
    // Bytes [base, base + buf.len()) of the file; the part before `parser.consumed()` is dropped
    // after every step, so only the item being parsed is held.
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0u64;
    let mut want = 24u64; // the fixed preamble
    let mut first = true;
    loop {
        let consumed = (parser.consumed() - base) as usize;
        buf.drain(..consumed);
        base += consumed as u64;
        let have = base + buf.len() as u64;
        // At most READ_STEP per read: when the size is unknown, a corrupt length is then caught
        // by the source failing at its real end instead of after a huge allocation.
        let want_now = file_size
            .map_or(want, |size| want.min(size))
            .min(have + READ_STEP);
        if want_now <= have && !first {
            // Cannot happen (the parser only asks for bytes beyond `have`); guards against a
            // silent endless loop should that invariant ever break.
            return Err(Error::Gguf(format!(
                "internal: header reader stalled at byte {have}"
            )));
        }
        if want_now > have {
            let old = buf.len();
            // want_now <= MAX_HEADER_BYTES, so this is bounded.
            buf.resize(old + (want_now - have) as usize, 0);
            src.read_at(have, &mut buf[old..]).await?;
        }
        first = false;
        match parser.feed(&buf, base, file_size) {
            Ok(g) => return Ok(g),
            Err(Halt::Fail(e)) => return Err(e),
            Err(Halt::More(end)) => {
                debug_assert!(
                    end > base + buf.len() as u64,
                    "parser must ask for new bytes"
                );
                want = end;
            }
        }
    }
}

/// Reads one tensor's bytes through `src` (the simple path; the model loader may stream
/// straight into GPU buffers instead).
pub async fn read_tensor_data<S: TensorSource>(src: &mut S, info: &TensorInfo) -> Result<Vec<u8>> {
    let len = usize::try_from(info.n_bytes).map_err(|_| too_big(info))?;
    let mut data = Vec::new();
    // Checked: when the file size was unknown, n_bytes was never bounded by it.
    data.try_reserve_exact(len).map_err(|_| too_big(info))?;
    data.resize(len, 0);
    src.read_at(info.offset, &mut data).await?;
    Ok(data)
}

fn too_big(info: &TensorInfo) -> Error {
    Error::Gguf(format!(
        "tensor `{}`: {} bytes do not fit in memory",
        info.name, info.n_bytes
    ))
}

/// Opens and parses a GGUF file (native). The header is parsed straight from the memory map;
/// tensor bytes are then available zero-copy through [`MmapSource::bytes`]. Errors name the
/// path.
#[cfg(not(target_arch = "wasm32"))]
pub fn open(path: impl AsRef<std::path::Path>) -> Result<(Gguf, MmapSource)> {
    let path = path.as_ref();
    let src = MmapSource::open(path)?;
    let gguf = Gguf::from_bytes(src.as_slice()).map_err(|e| match e {
        Error::Gguf(s) => Error::Gguf(format!("{}: {s}", path.display())),
        Error::Truncated(s) => Error::Truncated(format!("{}: {s}", path.display())),
        other => other,
    })?;
    Ok((gguf, src))
}

/// Where tests and the CLI look for the Gemma 3 270M Q4_K_M model: `$GEMMA_WGPU_MODEL` if set,
/// else `$XDG_CACHE_HOME/gemma-wgpu/gemma-3-270m-q4_k_m.gguf`, else the same under
/// `~/.cache`. The file may not exist; callers check.
#[cfg(not(target_arch = "wasm32"))]
pub fn default_model_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("GEMMA_WGPU_MODEL").filter(|p| !p.is_empty()) {
        return std::path::PathBuf::from(p);
    }
    cache_dir().join("gemma-3-270m-q4_k_m.gguf")
}

/// `$XDG_CACHE_HOME/gemma-wgpu`, else `~/.cache/gemma-wgpu`: downloaded and synthetic models.
#[cfg(not(target_arch = "wasm32"))]
pub fn cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("gemma-wgpu")
}
