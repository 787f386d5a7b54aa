//! GGUF v3 writer that streams tensor data: the header (metadata, tensor infos, offsets) is laid
//! out from names, shapes and types alone, then the data of each tensor is written in file
//! order, in as many pieces as the caller likes. Nothing but the header is ever held in memory,
//! so multi-gigabyte files (synthetic benchmark models) cost a few megabytes.
//!
//! Layout rules are gguf-py's (`GGUFWriter`): little-endian, metadata in insertion order, tensor
//! data offsets relative to the data section and each a multiple of `general.alignment` (32
//! unless that key is set), zero padding after the header and after every tensor, the last
//! included, so the file size is `data_offset + Σ padded tensor sizes`.

use std::collections::HashSet;
use std::io::Write;

use super::{Array, GgmlType, Value};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
const DEFAULT_ALIGNMENT: u64 = 32;

/// One tensor of a planned file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    pub name: String,
    /// `ne[0]` first (the contiguous row), as stored in the file.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data (without padding).
    pub n_bytes: u64,
}

/// The description of a GGUF file: metadata and tensor infos. Build it, then either take the
/// [`GgufWriter::header`] bytes or [`GgufWriter::start`] writing and feed the tensor data.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PlannedTensor>,
    alignment: u64,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Gguf(msg.into())
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            ..Default::default()
        }
    }

    /// Adds a metadata key (kept in insertion order). A duplicate key is reported by
    /// [`GgufWriter::header`], not here, so building stays chainable.
    pub fn kv(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        if key == "general.alignment" {
            if let Some(a) = match value {
                Value::U32(a) => Some(a as u64),
                Value::U64(a) => Some(a),
                _ => None,
            } {
                self.alignment = a;
            }
        }
        self.metadata.push((key, value));
        self
    }

    pub fn u32(&mut self, key: impl Into<String>, v: u32) -> &mut Self {
        self.kv(key, Value::U32(v))
    }

    pub fn f32(&mut self, key: impl Into<String>, v: f32) -> &mut Self {
        self.kv(key, Value::F32(v))
    }

    pub fn bool(&mut self, key: impl Into<String>, v: bool) -> &mut Self {
        self.kv(key, Value::Bool(v))
    }

    pub fn str(&mut self, key: impl Into<String>, v: impl Into<String>) -> &mut Self {
        self.kv(key, Value::String(v.into()))
    }

    pub fn array(&mut self, key: impl Into<String>, v: Array) -> &mut Self {
        self.kv(key, Value::Array(v))
    }

    /// Metadata in insertion order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// Adds a tensor; its data is written later, in the order tensors were added. Checks what
    /// the reader would reject: 1–4 nonzero dimensions, rows of whole blocks, a unique name.
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
    ) -> Result<&mut Self> {
        let name = name.into();
        if dims.is_empty() || dims.len() > 4 || dims.contains(&0) {
            return Err(err(format!("tensor `{name}`: bad shape {dims:?}")));
        }
        if dims[0] % ty.block_elems() != 0 {
            return Err(err(format!(
                "tensor `{name}`: ne[0] = {} is not a multiple of the {} block size {}",
                dims[0],
                ty.name(),
                ty.block_elems()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(err(format!("tensor `{name}` added twice")));
        }
        let n_bytes = dims
            .iter()
            .skip(1)
            .try_fold(dims[0] / ty.block_elems() * ty.block_bytes(), |a, &d| {
                a.checked_mul(d)
            })
            .ok_or_else(|| err(format!("tensor `{name}`: size overflows")))?;
        let offset = self
            .tensors
            .last()
            .map_or(0, |t| t.offset + t.n_bytes.next_multiple_of(self.alignment));
        self.tensors.push(PlannedTensor {
            name,
            dims: dims.to_vec(),
            ty,
            offset,
            n_bytes,
        });
        Ok(self)
    }

    /// Tensors in file order, with their offsets and sizes.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Bytes of the data section: every tensor padded to the alignment.
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .last()
            .map_or(0, |t| t.offset + t.n_bytes.next_multiple_of(self.alignment))
    }

    /// Sum of the tensors' own sizes (what [`super::Gguf::tensor_data_bytes`] reports).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes).sum()
    }

    /// The header: preamble, metadata, tensor infos and the padding up to the data section.
    /// Its length is the data section's absolute offset.
    pub fn header(&self) -> Result<Vec<u8>> {
        if self.alignment == 0 || !self.alignment.is_power_of_two() {
            return Err(err(format!(
                "general.alignment = {} is not a power of two",
                self.alignment
            )));
        }
        let mut seen = HashSet::new();
        for (k, _) in &self.metadata {
            if !seen.insert(k.as_str()) {
                return Err(err(format!("metadata key `{k}` added twice")));
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend(VERSION.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend(value_type(v).to_le_bytes());
            put_value(&mut out, v);
        }
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.id().to_le_bytes());
            out.extend(t.offset.to_le_bytes());
        }
        out.resize(
            (out.len() as u64).next_multiple_of(self.alignment) as usize,
            0,
        );
        Ok(out)
    }

    /// Size of the complete file.
    pub fn file_size(&self) -> Result<u64> {
        Ok(self.header()?.len() as u64 + self.data_bytes())
    }

    /// Writes the header to `out` and returns the writer for the tensor data.
    pub fn start<W: Write>(&self, mut out: W) -> Result<TensorDataWriter<'_, W>> {
        let header = self.header()?;
        out.write_all(&header)?;
        Ok(TensorDataWriter {
            plan: self,
            out,
            index: 0,
            written: 0,
            total: header.len() as u64,
        })
    }

    /// The whole file in memory, with every tensor's data given in order (for small files in
    /// tests).
    pub fn to_bytes(&self, data: &[&[u8]]) -> Result<Vec<u8>> {
        let mut w = self.start(Vec::new())?;
        for d in data {
            w.write(d)?;
        }
        w.finish()
    }
}

/// Writes tensor data in file order: [`TensorDataWriter::write`] takes any number of pieces per
/// tensor; when a tensor is complete its padding follows and the next one begins.
pub struct TensorDataWriter<'a, W: Write> {
    plan: &'a GgufWriter,
    out: W,
    index: usize,
    /// Bytes written of the current tensor.
    written: u64,
    /// Bytes written to `out` so far.
    total: u64,
}

impl<W: Write> TensorDataWriter<'_, W> {
    /// The tensor the next bytes belong to (`None` when all are complete).
    pub fn current(&self) -> Option<&PlannedTensor> {
        self.plan.tensors.get(self.index)
    }

    /// Bytes written to the output so far, header included.
    pub fn position(&self) -> u64 {
        self.total
    }

    /// Appends bytes of the current tensor; they must not run past its end (a piece never
    /// spans two tensors, so a size mistake is caught at the tensor it belongs to).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let t = self
            .plan
            .tensors
            .get(self.index)
            .ok_or_else(|| err("tensor data written after the last tensor"))?;
        let left = t.n_bytes - self.written;
        if bytes.len() as u64 > left {
            return Err(err(format!(
                "tensor `{}`: {} bytes written where {left} remain",
                t.name,
                bytes.len()
            )));
        }
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        self.total += bytes.len() as u64;
        if self.written == t.n_bytes {
            let pad = t.n_bytes.next_multiple_of(self.plan.alignment) - t.n_bytes;
            self.out.write_all(&vec![0u8; pad as usize])?;
            self.total += pad;
            self.index += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Checks that every tensor was written in full, flushes, and returns the output.
    pub fn finish(mut self) -> Result<W> {
        if let Some(t) = self.plan.tensors.get(self.index) {
            return Err(err(format!(
                "tensor `{}` has {} of {} bytes (and {} tensors follow)",
                t.name,
                self.written,
                t.n_bytes,
                self.plan.tensors.len() - self.index - 1
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF value type ids (GEMMA.md §4.1).
fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn elem_type(a: &Array) -> u32 {
    match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::String(_) => 8,
        Array::Array(_) => 9,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// Element type, count, elements (a nested array repeats this for each element).
fn put_array(out: &mut Vec<u8>, a: &Array) {
    fn each<T>(out: &mut Vec<u8>, v: &[T], f: impl Fn(&mut Vec<u8>, &T)) {
        out.extend((v.len() as u64).to_le_bytes());
        for x in v {
            f(out, x);
        }
    }
    out.extend(elem_type(a).to_le_bytes());
    match a {
        Array::U8(v) => each(out, v, |o, x| o.push(*x)),
        Array::I8(v) => each(out, v, |o, x| o.extend(x.to_le_bytes())),
        Array::U16(v) => each(out, v, |o, x| o.extend(x.to_le_bytes())),
        Array::I16(v) => each(out, v, |o, x| o.extend(x.to_le_bytes())),
        Array::U32(v) => each(out, v, |o, x| o.extend(x.to_le_bytes())),
        Array::I32(v) => each(out, v, |o, x| o.extend(x.to_le_bytes())),
        Array::F32(v) => each(out, v, |o, x| o.extend(x.to_le_bytes())),
        Array::Bool(v) => each(out, v, |o, x| o.push(*x as u8)),
        Array::String(v) => each(out, v, |o, s| put_str(o, s)),
        Array::Array(v) => each(out, v, put_array),
        Array::U64(v) => each(out, v, |o, x| o.extend(x.to_le_bytes())),
        Array::I64(v) => each(out, v, |o, x| o.extend(x.to_le_bytes())),
        Array::F64(v) => each(out, v, |o, x| o.extend(x.to_le_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;

    #[test]
    fn round_trips_through_the_reader() {
        let mut w = GgufWriter::new();
        w.str("general.architecture", "test")
            .u32("a.u32", 7)
            .f32("a.f32", 1.5)
            .bool("a.bool", true)
            .array("a.strs", Array::String(vec!["x".into(), "y z".into()]))
            .array(
                "a.nested",
                Array::Array(vec![Array::I32(vec![-1, 2]), Array::Bool(vec![false])]),
            )
            .kv("a.u64", Value::U64(1 << 40));
        w.tensor("q", &[64, 3], GgmlType::Q8_0).unwrap();
        w.tensor("v", &[5], GgmlType::F32).unwrap();
        let q: Vec<u8> = (0..2 * 34 * 3).map(|i| i as u8).collect();
        let v = [1u8; 20];
        let bytes = w.to_bytes(&[&q[..100], &q[100..], &v]).unwrap();
        assert_eq!(bytes.len() as u64, w.file_size().unwrap());
        let g = Gguf::from_bytes(&bytes).unwrap();
        for (k, val) in w.metadata() {
            assert_eq!(g.metadata.get(k), Some(val), "{k}");
        }
        let t = g.tensor("q").unwrap();
        assert_eq!(
            (t.dims.clone(), t.ty, t.n_bytes),
            (vec![64, 3], GgmlType::Q8_0, 204)
        );
        assert_eq!(&bytes[t.offset as usize..][..204], &q[..]);
        let t = g.tensor("v").unwrap();
        assert_eq!(t.offset, g.data_offset + 224);
        assert_eq!(&bytes[t.offset as usize..][..20], &v);
    }

    #[test]
    fn rejects_misuse() {
        let mut w = GgufWriter::new();
        assert!(w.tensor("bad", &[33, 2], GgmlType::Q4_0).is_err());
        assert!(w.tensor("bad", &[], GgmlType::F32).is_err());
        w.tensor("t", &[4], GgmlType::F32).unwrap();
        assert!(w.tensor("t", &[4], GgmlType::F32).is_err());
        // Too much data for the tensor, then too little.
        let mut s = w.start(Vec::new()).unwrap();
        assert!(s.write(&[0; 17]).is_err());
        s.write(&[0; 8]).unwrap();
        assert!(s.finish().is_err());
        w.u32("k", 1).u32("k", 2);
        assert!(w.header().is_err());
    }
}
