//! The header parser: a synchronous core that works on whatever prefix of the file it is given
//! and, when that prefix is too short, says how far the file must be read ([`Halt::More`]).
//!
//! It is resumable: everything parsed before the item that ran short is kept (whole metadata
//! entries, single strings of a string array, whole tensor infos), so feeding the header in
//! pieces costs linear time even for a 262,144-string vocabulary, and the caller can drop the
//! bytes already consumed. Its size requests are lower bounds on where the header ends, so a
//! driver that reads exactly what is asked never reads into the tensor data.

use std::collections::HashSet;

use super::metadata::{Array, Metadata, Value};
use super::types::GgmlType;
use super::{Gguf, TensorInfo};
use crate::Error;

/// Largest header we accept. A corrupt length field could otherwise make the reader fetch and
/// allocate gigabytes before noticing; real headers are a few MB (vocabulary) and this leaves a
/// wide margin for models with much larger tokenizers.
pub const MAX_HEADER_BYTES: u64 = 256 << 20;

/// Deepest array nesting accepted. Each level costs 12 bytes in the file, so without a limit a
/// few MB of hostile header could recurse deep enough to overflow the stack.
const MAX_ARRAY_DEPTH: u32 = 8;

/// Capacity to reserve for `n` elements of `T` before they are read: a count only proves the
/// file holds 8 or 12 bytes per element while each costs `size_of::<T>()` in memory, so the
/// reservation never exceeds the bytes left in the file (beyond that the list grows with what
/// was actually parsed). A real vocabulary is reserved whole, in one allocation.
fn presize<T>(cur: &Cursor, n: usize) -> usize {
    let left = cur
        .file_size
        .unwrap_or(MAX_HEADER_BYTES)
        .saturating_sub(cur.offset());
    n.min((left / std::mem::size_of::<T>() as u64) as usize)
}

/// GGML's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;

/// The smallest possible encodings, used both to reject absurd counts before allocating and to
/// ask for enough bytes at once when reading progressively.
const MIN_KV_BYTES: u64 = 8 + 4 + 1; // key length, value type, 1-byte value
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8; // name length, n_dims, type, offset
const PREAMBLE_BYTES: u64 = 4 + 4 + 8 + 8; // magic, version, n_tensors, n_kv

/// Why parsing stopped.
#[derive(Debug)]
pub enum Halt {
    /// The file must be available up to this absolute offset to go on.
    More(u64),
    /// The file is broken (or unsupported).
    Fail(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Fail(e)
    }
}

type PResult<T> = std::result::Result<T, Halt>;

/// Prefixes `ctx` to a structural error's message, leaving other errors alone. Applied only on
/// the error path, so the hot loop never formats strings.
fn with_context(h: Halt, ctx: impl FnOnce() -> String) -> Halt {
    match h {
        Halt::Fail(Error::Gguf(s)) => Halt::Fail(Error::Gguf(format!("{}: {s}", ctx()))),
        Halt::Fail(Error::Truncated(s)) => Halt::Fail(Error::Truncated(format!("{}: {s}", ctx()))),
        other => other,
    }
}

fn fail<T>(msg: String) -> PResult<T> {
    Err(Halt::Fail(Error::Gguf(msg)))
}

/// A view of the bytes `[base, base + buf.len())` of the file, reading from `pos`.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    buf: &'a [u8],
    base: u64,
    pos: usize,
    file_size: Option<u64>,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Ok if `n` more bytes are in the buffer; otherwise a truncation error (the file is known
    /// to be too short), a size error (beyond [`MAX_HEADER_BYTES`]) or a request for more.
    fn check(&self, n: u64, what: &str) -> PResult<()> {
        let start = self.offset();
        let Some(end) = start.checked_add(n) else {
            return fail(format!("{what} at offset {start}: impossible size {n}"));
        };
        if end <= self.base + self.buf.len() as u64 {
            return Ok(());
        }
        if let Some(size) = self.file_size {
            if end > size {
                return Err(Error::Truncated(format!(
                    "{what} at offset {start} needs {n} bytes, but the file ends at byte {size}"
                ))
                .into());
            }
        }
        if end > MAX_HEADER_BYTES {
            return fail(format!(
                "{what} at offset {start} claims {n} bytes, which would make the header larger \
                 than {MAX_HEADER_BYTES} bytes (corrupt length?)"
            ));
        }
        Err(Halt::More(end))
    }

    fn take(&mut self, n: u64, what: &str) -> PResult<&'a [u8]> {
        self.check(n, what)?;
        // `check` proved the bytes are in `buf`, so `n` fits in usize.
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> PResult<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn raw_string(&mut self, what: &str) -> PResult<&'a [u8]> {
        let len = self.u64(what)?;
        self.take(len, what)
    }

    /// A key or tensor name: must be valid UTF-8, since code looks them up by `&str`.
    fn name(&mut self, what: &str) -> PResult<String> {
        let at = self.offset();
        let raw = self.raw_string(what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => fail(format!("{what} at offset {at} is not valid UTF-8 ({e})")),
        }
    }

    /// A string value. Invalid UTF-8 is replaced (U+FFFD) rather than rejected: llama.cpp keeps
    /// strings as raw bytes, and some converted vocabularies carry broken byte sequences that no
    /// valid input text can produce anyway.
    fn value_string(&mut self) -> PResult<String> {
        let raw = self.raw_string("string")?;
        Ok(String::from_utf8_lossy(raw).into_owned())
    }
}

/// What a file that is not GGUF most likely is, from its first bytes: the usual mistakes are a
/// web page saved instead of the model, a Git LFS pointer, an image, an archive, or weights in
/// another format.
fn sniff(head: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(&head[..head.len().min(64)]).to_ascii_lowercase();
    let text = text.trim_start();
    Some(match head {
        [0xff, 0xd8, 0xff, ..] => "a JPEG image",
        [0x89, b'P', b'N', b'G', ..] => "a PNG image",
        [b'G', b'I', b'F', b'8', ..] => "a GIF image",
        [b'P', b'K', 3, 4, ..] => "a ZIP archive (a PyTorch checkpoint or a zipped download?)",
        [0x1f, 0x8b, ..] => "a gzip archive: unpack it first",
        [b'l', b'm', b'g', b'g', ..]
        | [b't', b'j', b'g', b'g', ..]
        | [b'f', b'm', b'g', b'g', ..] => {
            "a pre-GGUF GGML file: convert the model again with a current llama.cpp"
        }
        [_, _, _, _, _, _, 0, 0, b'{', ..] => {
            "a safetensors file: convert it to GGUF with llama.cpp's convert_hf_to_gguf.py"
        }
        _ if text.starts_with("version https://git-lfs") => {
            "a Git LFS pointer, not the file itself (run `git lfs pull`, or download the file)"
        }
        _ if text.starts_with("<!doctype html") || text.starts_with("<html") => {
            "an HTML page (the download returned a web page instead of the model)"
        }
        _ if text.starts_with('{') || text.starts_with('[') => {
            "JSON text (a config or tokenizer file, not the weights)"
        }
        _ => return None,
    })
}

/// Bytes of one element of a value type; `None` for unknown type ids.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1, // u8, i8, bool
        2 | 3 => 2,     // u16, i16
        4..=6 => 4,     // u32, i32, f32
        8 => 8,         // string: length
        9 => 4 + 8,     // array: element type + count
        10..=12 => 8,   // u64, i64, f64
        _ => return None,
    })
}

fn unknown_value_type(ty: u32) -> Halt {
    Halt::Fail(Error::Gguf(format!("unknown metadata value type {ty}")))
}

fn fixed<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

fn bool_byte(b: u8) -> PResult<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => fail(format!("bool value {b} is neither 0 nor 1")),
    }
}

fn scalar(cur: &mut Cursor, ty: u32) -> PResult<Value> {
    Ok(match ty {
        0 => Value::U8(cur.array::<1>("u8")?[0]),
        1 => Value::I8(cur.array::<1>("i8")?[0] as i8),
        2 => Value::U16(u16::from_le_bytes(cur.array("u16")?)),
        3 => Value::I16(i16::from_le_bytes(cur.array("i16")?)),
        4 => Value::U32(cur.u32("u32")?),
        5 => Value::I32(i32::from_le_bytes(cur.array("i32")?)),
        6 => Value::F32(f32::from_le_bytes(cur.array("f32")?)),
        7 => Value::Bool(bool_byte(cur.array::<1>("bool")?[0])?),
        8 => Value::String(cur.value_string()?),
        9 => Value::Array(array(cur, 1)?),
        10 => Value::U64(cur.u64("u64")?),
        11 => Value::I64(i64::from_le_bytes(cur.array("i64")?)),
        12 => Value::F64(f64::from_le_bytes(cur.array("f64")?)),
        _ => return Err(unknown_value_type(ty)),
    })
}

/// Reads the element type and count of an array, and checks that `count` elements can fit in
/// what is left of the file before anything is allocated for them.
fn array_head(cur: &mut Cursor) -> PResult<(u32, usize)> {
    let elem = cur.u32("array element type")?;
    let count = cur.u64("array length")?;
    let min = min_value_bytes(elem).ok_or_else(|| unknown_value_type(elem))?;
    let Some(bytes) = count.checked_mul(min) else {
        return fail(format!("array length {count} is impossible"));
    };
    cur.check(bytes, "array elements")?;
    // The elements are in the buffer, so the count fits in usize.
    Ok((elem, count as usize))
}

/// An array body; `depth` is 1 for a top-level array.
fn array(cur: &mut Cursor, depth: u32) -> PResult<Array> {
    if depth > MAX_ARRAY_DEPTH {
        return fail(format!(
            "arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
        ));
    }
    let (elem, n) = array_head(cur)?;
    let size = min_value_bytes(elem).unwrap_or(1);
    // Only used by the fixed-size arms; `array_head` checked these bytes are present.
    let len = n as u64 * size;
    Ok(match elem {
        0 => Array::U8(cur.take(len, "array elements")?.to_vec()),
        1 => Array::I8(fixed(cur.take(len, "array elements")?, |[b]: [u8; 1]| {
            b as i8
        })),
        2 => Array::U16(fixed(cur.take(len, "array elements")?, u16::from_le_bytes)),
        3 => Array::I16(fixed(cur.take(len, "array elements")?, i16::from_le_bytes)),
        4 => Array::U32(fixed(cur.take(len, "array elements")?, u32::from_le_bytes)),
        5 => Array::I32(fixed(cur.take(len, "array elements")?, i32::from_le_bytes)),
        6 => Array::F32(fixed(cur.take(len, "array elements")?, f32::from_le_bytes)),
        7 => Array::Bool(
            cur.take(len, "array elements")?
                .iter()
                .map(|&b| bool_byte(b))
                .collect::<PResult<_>>()?,
        ),
        8 => {
            let mut v = Vec::with_capacity(presize::<String>(cur, n));
            for _ in 0..n {
                v.push(cur.value_string()?);
            }
            Array::String(v)
        }
        9 => {
            let mut v = Vec::with_capacity(presize::<Array>(cur, n));
            for _ in 0..n {
                v.push(array(cur, depth + 1)?);
            }
            Array::Array(v)
        }
        10 => Array::U64(fixed(cur.take(len, "array elements")?, u64::from_le_bytes)),
        11 => Array::I64(fixed(cur.take(len, "array elements")?, i64::from_le_bytes)),
        12 => Array::F64(fixed(cur.take(len, "array elements")?, f64::from_le_bytes)),
        _ => return Err(unknown_value_type(elem)),
    })
}

/// A top-level array of strings being read one string at a time, so a short buffer in the
/// middle of the vocabulary does not throw away the strings already read.
struct PendingStrings {
    key: String,
    total: usize,
    items: Vec<String>,
}

/// A tensor info as stored: offset still relative to the data section.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    rel_offset: u64,
    n_bytes: u64,
}

#[derive(Default)]
pub struct HeaderParser {
    /// Absolute offset up to which everything is parsed and kept.
    pos: u64,
    preamble_done: bool,
    version: u32,
    n_tensors: u64,
    n_kv: u64,
    metadata: Metadata,
    pending: Option<PendingStrings>,
    infos: Vec<RawTensorInfo>,
    names: HashSet<String>,
}

impl HeaderParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Absolute offset of the first byte not yet consumed; earlier bytes need not be fed again.
    pub fn consumed(&self) -> u64 {
        self.pos
    }

    /// Parses as far as `buf` (the file's bytes from `base`, where `base <= consumed()`) allows.
    /// `file_size`, if known, turns "need more" past the end into a truncation error and bounds
    /// every tensor.
    pub fn feed(&mut self, buf: &[u8], base: u64, file_size: Option<u64>) -> PResult<Gguf> {
        debug_assert!(base <= self.pos && self.pos <= base + buf.len() as u64);
        let mut cur = Cursor {
            buf,
            base,
            pos: (self.pos - base) as usize,
            file_size,
        };
        match self.run(&mut cur) {
            Err(Halt::More(end)) => {
                // Ask for at least the smallest possible rest of the header at once, so a
                // driver reading exactly what is asked needs few round trips.
                let hint = self.pos.saturating_add(self.rest_lower_bound());
                Err(Halt::More(end.max(hint.min(MAX_HEADER_BYTES))))
            }
            other => other,
        }
    }

    /// Smallest number of bytes the header can still need after `pos`.
    fn rest_lower_bound(&self) -> u64 {
        if !self.preamble_done {
            return PREAMBLE_BYTES;
        }
        let pending = self.pending.as_ref();
        let kv_left = self.n_kv - self.metadata.len() as u64 - pending.map_or(0, |_| 1);
        let strings_left = pending.map_or(0, |p| (p.total - p.items.len()) as u64);
        let tensors_left = self.n_tensors - self.infos.len() as u64;
        (kv_left.saturating_mul(MIN_KV_BYTES))
            .saturating_add(strings_left.saturating_mul(8))
            .saturating_add(tensors_left.saturating_mul(MIN_TENSOR_INFO_BYTES))
    }

    fn run(&mut self, cur: &mut Cursor) -> PResult<Gguf> {
        if !self.preamble_done {
            self.preamble(cur)?;
        }
        while (self.metadata.len() as u64) < self.n_kv {
            self.kv(cur)?;
        }
        while (self.infos.len() as u64) < self.n_tensors {
            self.tensor_info(cur)?;
        }
        self.finish(cur.offset(), cur.file_size).map_err(Halt::Fail)
    }

    fn preamble(&mut self, cur: &mut Cursor) -> PResult<()> {
        let size = cur.file_size.unwrap_or(0);
        let magic = cur.take(4, "magic").map_err(|h| match h {
            Halt::Fail(Error::Truncated(_)) => Halt::Fail(Error::Gguf(format!(
                "not a GGUF file: it is only {size} bytes long"
            ))),
            other => other,
        })?;
        if magic != b"GGUF" {
            let head = &cur.buf[cur.pos - 4..];
            if let Some(kind) = sniff(head) {
                return fail(format!("not a GGUF file: it looks like {kind}"));
            }
            return fail(format!(
                "not a GGUF file: it starts with bytes {:02x?} ({:?}), expected \"GGUF\"",
                magic,
                String::from_utf8_lossy(magic)
            ));
        }
        let version = cur.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return fail(
                    "unsupported GGUF version 1 (only versions 2 and 3 are read; re-convert the \
                     model with a current llama.cpp)"
                        .into(),
                )
            }
            // A big-endian file stores the version byte-swapped; gguf-py detects it the same way.
            v if v != 0 && v & 0xffff == 0 => {
                return fail(format!(
                    "big-endian GGUF (version {}) is not supported; use a little-endian file",
                    v.swap_bytes()
                ))
            }
            v => return fail(format!("unsupported GGUF version {v} (supported: 2 and 3)")),
        }
        let n_tensors = cur.u64("tensor count")?;
        let n_kv = cur.u64("metadata count")?;
        // Reject absurd counts now, before anything is sized from them.
        let min_rest = n_kv
            .checked_mul(MIN_KV_BYTES)
            .and_then(|a| n_tensors.checked_mul(MIN_TENSOR_INFO_BYTES)?.checked_add(a));
        let Some(min_rest) = min_rest else {
            return fail(format!(
                "impossible counts: {n_tensors} tensors, {n_kv} metadata entries"
            ));
        };
        cur.check(min_rest, "the rest of the header").map_err(|h| {
            with_context(h, || {
                format!("header declares {n_kv} metadata entries and {n_tensors} tensors")
            })
        })?;
        self.version = version;
        self.n_tensors = n_tensors;
        self.n_kv = n_kv;
        self.preamble_done = true;
        self.pos = cur.offset();
        Ok(())
    }

    /// One metadata entry, or the rest of a pending string array.
    fn kv(&mut self, cur: &mut Cursor) -> PResult<()> {
        if self.pending.is_none() {
            let index = self.metadata.len();
            let key = cur
                .name("key")
                .map_err(|h| with_context(h, || format!("metadata entry #{index}")))?;
            let ctx = |h| with_context(h, || format!("metadata key `{key}`"));
            if self.metadata.contains_key(&key) {
                return fail(format!("duplicate metadata key `{key}`"));
            }
            let ty = cur.u32("value type").map_err(ctx)?;
            if ty == 9 {
                let mut peek = *cur;
                if peek.u32("array element type").map_err(ctx)? == 8 {
                    let (_, total) = array_head(cur).map_err(ctx)?;
                    self.pending = Some(PendingStrings {
                        key,
                        total,
                        items: Vec::with_capacity(presize::<String>(cur, total)),
                    });
                    self.pos = cur.offset();
                    return self.kv(cur);
                }
            }
            let value = scalar(cur, ty).map_err(ctx)?;
            self.metadata
                .insert(key, value)
                .expect("duplicate keys were rejected above");
            self.pos = cur.offset();
            return Ok(());
        }
        let p = self.pending.as_mut().expect("checked above");
        while p.items.len() < p.total {
            let i = p.items.len();
            let s = cur.value_string().map_err(|h| {
                with_context(h, || format!("metadata key `{}`, string #{i}", p.key))
            })?;
            p.items.push(s);
            self.pos = cur.offset();
        }
        let p = self.pending.take().expect("checked above");
        self.metadata
            .insert(p.key, Value::Array(Array::String(p.items)))
            .expect("duplicate keys were rejected when the array started");
        Ok(())
    }

    fn tensor_info(&mut self, cur: &mut Cursor) -> PResult<()> {
        let index = self.infos.len();
        let name = cur
            .name("name")
            .map_err(|h| with_context(h, || format!("tensor info #{index}")))?;
        let ctx = |h| with_context(h, || format!("tensor `{name}`"));
        let n_dims = cur.u32("n_dims").map_err(ctx)?;
        if n_dims > MAX_DIMS {
            return fail(format!(
                "tensor `{name}` has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(cur.u64("dimension").map_err(ctx)?);
        }
        let ty_id = cur.u32("type").map_err(ctx)?;
        let rel_offset = cur.u64("offset").map_err(ctx)?;
        let ty = GgmlType::from_id(ty_id).map_err(|e| ctx(Halt::Fail(e)))?;
        if dims.contains(&0) {
            return fail(format!("tensor `{name}` has a zero dimension ({dims:?})"));
        }
        // ggml stores element counts as int64.
        let n_elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64);
        let Some(n_elements) = n_elements else {
            return fail(format!(
                "tensor `{name}`: element count of {dims:?} overflows"
            ));
        };
        let row = dims.first().copied().unwrap_or(1);
        if row % ty.block_elems() != 0 {
            return fail(format!(
                "tensor `{name}`: row length {row} is not a multiple of the {ty} block size {}",
                ty.block_elems()
            ));
        }
        let Some(n_bytes) = (n_elements / ty.block_elems()).checked_mul(ty.block_bytes()) else {
            return fail(format!(
                "tensor `{name}`: byte size of {dims:?} {ty} overflows"
            ));
        };
        if !self.names.insert(name.clone()) {
            return fail(format!("duplicate tensor name `{name}`"));
        }
        self.infos.push(RawTensorInfo {
            name,
            dims,
            ty,
            rel_offset,
            n_bytes,
        });
        self.pos = cur.offset();
        Ok(())
    }

    /// Places the data section and checks every tensor against alignment, overlap and (when the
    /// size is known) the end of the file.
    fn finish(&mut self, header_end: u64, file_size: Option<u64>) -> crate::Result<Gguf> {
        let metadata = std::mem::take(&mut self.metadata);
        let alignment = match metadata.opt_u32("general.alignment")? {
            None => 32,
            Some(a) if a.is_power_of_two() => a as u64,
            Some(a) => {
                return Err(Error::Metadata {
                    key: "general.alignment".into(),
                    problem: format!("{a} is not a power of two"),
                })
            }
        };
        // header_end <= MAX_HEADER_BYTES, so this cannot overflow.
        let data_offset = header_end.next_multiple_of(alignment);
        let mut tensors = Vec::with_capacity(self.infos.len());
        for t in std::mem::take(&mut self.infos) {
            let name = &t.name;
            if t.rel_offset % alignment != 0 {
                return Err(Error::Gguf(format!(
                    "tensor `{name}`: data offset {} (relative to the data section) is not a \
                     multiple of the alignment {alignment}",
                    t.rel_offset
                )));
            }
            let end = data_offset
                .checked_add(t.rel_offset)
                .and_then(|o| o.checked_add(t.n_bytes));
            let Some(end) = end else {
                return Err(Error::Gguf(format!(
                    "tensor `{name}`: data offset {} overflows",
                    t.rel_offset
                )));
            };
            let offset = data_offset + t.rel_offset;
            if let Some(size) = file_size {
                if end > size {
                    return Err(Error::Truncated(format!(
                        "tensor `{name}` ({} bytes at offset {offset}) ends at byte {end}, past \
                         the end of the file ({size} bytes)",
                        t.n_bytes
                    )));
                }
            }
            tensors.push(TensorInfo {
                name: t.name,
                dims: t.dims,
                ty: t.ty,
                offset,
                n_bytes: t.n_bytes,
            });
        }
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for w in order.windows(2) {
            if w[0].offset + w[0].n_bytes > w[1].offset {
                return Err(Error::Gguf(format!(
                    "tensors `{}` (bytes {}..{}) and `{}` (from byte {}) overlap",
                    w[0].name,
                    w[0].offset,
                    w[0].offset + w[0].n_bytes,
                    w[1].name,
                    w[1].offset
                )));
            }
        }
        Ok(Gguf {
            version: self.version,
            metadata,
            tensors,
            data_offset,
            alignment,
            file_size,
        })
    }
}
