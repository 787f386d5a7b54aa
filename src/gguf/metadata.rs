//! GGUF metadata values and typed, error-reporting accessors.

use std::collections::HashMap;
use std::fmt;

use crate::{Error, Result};

/// One metadata value.
///
/// Arrays are stored typed ([`Array`]) rather than as `Vec<Value>`: Gemma's vocabulary is
/// 262,144 strings plus as many scores and token types, and a `Vec<Value>` would cost 32 bytes
/// per element and a match per access, where `Vec<f32>` can be handed out as a slice.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: one variant per element type; nested arrays hold arrays of any type
/// (each inner array carries its own element type, as in the file).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    /// The GGUF type name, for error messages ("expected u32, found string").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(a) => a.type_name(),
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// The value as an integer, if it is one of the eight integer types. `i128` holds them all,
    /// so range checks against the requested type are exact.
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl Array {
    /// Number of elements (not counting inside nested arrays).
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `"array of <elem>"`, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "array of u8",
            Array::I8(_) => "array of i8",
            Array::U16(_) => "array of u16",
            Array::I16(_) => "array of i16",
            Array::U32(_) => "array of u32",
            Array::I32(_) => "array of i32",
            Array::F32(_) => "array of f32",
            Array::Bool(_) => "array of bool",
            Array::String(_) => "array of string",
            Array::Array(_) => "array of array",
            Array::U64(_) => "array of u64",
            Array::I64(_) => "array of i64",
            Array::F64(_) => "array of f64",
        }
    }

    /// Every element as an integer, if this is an integer array.
    fn ints(&self) -> Option<Vec<i128>> {
        fn conv<T: Copy + Into<i128>>(v: &[T]) -> Vec<i128> {
            v.iter().map(|x| (*x).into()).collect()
        }
        Some(match self {
            Array::U8(v) => conv(v),
            Array::I8(v) => conv(v),
            Array::U16(v) => conv(v),
            Array::I16(v) => conv(v),
            Array::U32(v) => conv(v),
            Array::I32(v) => conv(v),
            Array::U64(v) => conv(v),
            Array::I64(v) => conv(v),
            _ => return None,
        })
    }
}

/// Shows scalars in full and arrays abbreviated (type, length, first few elements), so a
/// metadata dump of a real model stays readable despite the 262,144-entry vocabulary.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v:?}"),
            Value::Array(a) => write!(f, "{a}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
        }
    }
}

impl fmt::Display for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOW: usize = 4;
        fn list<T: fmt::Debug>(f: &mut fmt::Formatter<'_>, v: &[T]) -> fmt::Result {
            for (i, x) in v.iter().take(SHOW).enumerate() {
                write!(f, "{}{x:?}", if i > 0 { ", " } else { "" })?;
            }
            if v.len() > SHOW {
                write!(f, ", …")?;
            }
            Ok(())
        }
        write!(
            f,
            "[{} × {}: ",
            self.len(),
            &self.type_name()["array of ".len()..]
        )?;
        match self {
            Array::U8(v) => list(f, v)?,
            Array::I8(v) => list(f, v)?,
            Array::U16(v) => list(f, v)?,
            Array::I16(v) => list(f, v)?,
            Array::U32(v) => list(f, v)?,
            Array::I32(v) => list(f, v)?,
            Array::F32(v) => list(f, v)?,
            Array::Bool(v) => list(f, v)?,
            Array::String(v) => list(f, v)?,
            Array::Array(v) => {
                for (i, x) in v.iter().take(SHOW).enumerate() {
                    write!(f, "{}{x}", if i > 0 { ", " } else { "" })?;
                }
                if v.len() > SHOW {
                    write!(f, ", …")?;
                }
            }
            Array::U64(v) => list(f, v)?,
            Array::I64(v) => list(f, v)?,
            Array::F64(v) => list(f, v)?,
        }
        write!(f, "]")
    }
}

/// The key/value section of a GGUF file, in file order, with typed accessors.
///
/// Every accessor returns `Err(Error::Metadata { key, problem })` naming the key and what was
/// wrong (missing, wrong type, out of range), so model code can write
/// `md.u32("gemma3.block_count")?` and the user still learns which key broke. The `opt_*`
/// variants return `Ok(None)` for a missing key but still reject a present key of the wrong type:
/// a wrong type means a broken converter, which should not be silently replaced by a default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

fn problem(key: &str, problem: impl Into<String>) -> Error {
    Error::Metadata {
        key: key.to_string(),
        problem: problem.into(),
    }
}

fn wrong_type(key: &str, expected: &str, found: &Value) -> Error {
    problem(
        key,
        format!("expected {expected}, found {} ({found})", found.type_name()),
    )
}

impl Metadata {
    /// Adds a key; returns the value back if the key is already present (the reader treats a
    /// duplicate key as a corrupt file, like llama.cpp).
    pub(crate) fn insert(&mut self, key: String, value: Value) -> std::result::Result<(), Value> {
        if self.index.contains_key(&key) {
            return Err(value);
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys and values in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The raw value, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| problem(key, "missing"))
    }

    fn int<T: TryFrom<i128>>(&self, key: &str, what: &str) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let i = v.as_int().ok_or_else(|| wrong_type(key, what, v))?;
        T::try_from(i)
            .map(Some)
            .map_err(|_| problem(key, format!("value {i} does not fit in {what}")))
    }

    /// An integer of any stored integer type whose value fits in `u32` (converters disagree on
    /// u32 vs i32 vs u64 for counts and ids; the value is what matters).
    pub fn u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?.ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.int(key, "u32")
    }

    /// An integer of any stored integer type whose value fits in `u64`.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?.ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.int(key, "u64")
    }

    /// An integer of any stored integer type whose value fits in `i64`.
    pub fn i64(&self, key: &str) -> Result<i64> {
        self.opt_i64(key)?.ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        self.int(key, "i64")
    }

    /// An `f32`, or an `f64` rounded to `f32`. Integers are rejected: a float key stored as an
    /// integer means the converter wrote the wrong key.
    pub fn f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => Err(wrong_type(key, "f32", v)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool> {
        self.opt_bool(key)?.ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(v)) => Ok(Some(*v)),
            Some(v) => Err(wrong_type(key, "bool", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?.ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(v)) => Ok(Some(v)),
            Some(v) => Err(wrong_type(key, "string", v)),
        }
    }

    /// The whole array, of any element type.
    pub fn array(&self, key: &str) -> Result<&Array> {
        self.opt_array(key)?.ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(wrong_type(key, "array", v)),
        }
    }

    pub fn str_array(&self, key: &str) -> Result<&[String]> {
        self.opt_str_array(key)?
            .ok_or_else(|| problem(key, "missing"))
    }

    /// Moves a required string array out (leaving it empty), to avoid copying a large one.
    pub fn take_str_array(&mut self, key: &str) -> Result<Vec<String>> {
        self.str_array(key)?;
        let i = self.index[key];
        match &mut self.entries[i].1 {
            Value::Array(Array::String(v)) => Ok(std::mem::take(v)),
            _ => unreachable!("checked by str_array"),
        }
    }

    /// Empties an array value (keeping its type) to free its memory; no-op for other keys.
    pub fn release_array(&mut self, key: &str) {
        let Some(&i) = self.index.get(key) else {
            return;
        };
        if let Value::Array(a) = &mut self.entries[i].1 {
            match a {
                Array::String(v) => *v = Vec::new(),
                Array::F32(v) => *v = Vec::new(),
                Array::I32(v) => *v = Vec::new(),
                Array::U32(v) => *v = Vec::new(),
                _ => {}
            }
        }
    }

    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(Array::String(v)) => Ok(Some(v)),
            Some(_) => Err(wrong_type(key, "array of string", self.require(key)?)),
        }
    }

    /// An array of `f32` (exactly; a slice cannot be made from other element types).
    pub fn f32_array(&self, key: &str) -> Result<&[f32]> {
        self.opt_f32_array(key)?
            .ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_f32_array(&self, key: &str) -> Result<Option<&[f32]>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(Array::F32(v)) => Ok(Some(v)),
            Some(_) => Err(wrong_type(key, "array of f32", self.require(key)?)),
        }
    }

    /// An array of `i32` (exactly; e.g. `tokenizer.ggml.token_type`).
    pub fn i32_array(&self, key: &str) -> Result<&[i32]> {
        self.opt_i32_array(key)?
            .ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_i32_array(&self, key: &str) -> Result<Option<&[i32]>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(Array::I32(v)) => Ok(Some(v)),
            Some(_) => Err(wrong_type(key, "array of i32", self.require(key)?)),
        }
    }

    /// An array of any integer type whose elements all fit in `u32`, copied (Gemma 4 per-layer
    /// lists, e.g. sliding-window patterns, are written as i32 or u32 or bool depending on the
    /// converter version).
    pub fn u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.opt_u32_array(key)?
            .ok_or_else(|| problem(key, "missing"))
    }

    pub fn opt_u32_array(&self, key: &str) -> Result<Option<Vec<u32>>> {
        let Some(a) = self.opt_array(key)? else {
            return Ok(None);
        };
        if let Array::U32(v) = a {
            return Ok(Some(v.clone()));
        }
        let ints = a
            .ints()
            .ok_or_else(|| problem(key, format!("expected an integer array, found {a}")))?;
        ints.iter()
            .enumerate()
            .map(|(i, &x)| {
                u32::try_from(x)
                    .map_err(|_| problem(key, format!("element {i} = {x} does not fit in u32")))
            })
            .collect::<Result<Vec<u32>>>()
            .map(Some)
    }
}
