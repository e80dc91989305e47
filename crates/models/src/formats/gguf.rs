//! GGUF v2/v3 reader: header, metadata, tensor infos; tensors are views into the map.
//!
//! Layout (little-endian): magic `GGUF`, `u32` version, `u64` tensor count,
//! `u64` metadata count, the metadata key/value pairs, the tensor infos (name,
//! `u32` n_dims, `u64` ne\[n_dims\] innermost first, `u32` ggml type, `u64`
//! offset relative to the data section), padding to `general.alignment`
//! (default 32), then the tensor data.
//!
//! Every count and length read from the header is checked against the bytes
//! that remain before anything is allocated, so a lying header yields a
//! [`ModelError`] rather than a huge allocation, a panic or an out-of-bounds
//! read.

use crate::error::ModelError;
use patchbay_primitives::{DType, Storage, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The four magic bytes a GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Arrays nest at most this deep (a guard against stack exhaustion).
const MAX_ARRAY_DEPTH: usize = 8;
/// GGML tensors have at most this many dimensions.
const MAX_DIMS: usize = 4;

/// GGUF metadata value type ids.
mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u8` (type 0).
    U8(u8),
    /// `i8` (type 1).
    I8(i8),
    /// `u16` (type 2).
    U16(u16),
    /// `i16` (type 3).
    I16(i16),
    /// `u32` (type 4).
    U32(u32),
    /// `i32` (type 5).
    I32(i32),
    /// `f32` (type 6).
    F32(f32),
    /// `bool` (type 7, one byte, non-zero is true).
    Bool(bool),
    /// UTF-8 string (type 8; invalid UTF-8 is replaced by U+FFFD).
    String(String),
    /// Array of values of one type (type 9).
    Array(Array),
    /// `u64` (type 10).
    U64(u64),
    /// `i64` (type 11).
    I64(i64),
    /// `f64` (type 12).
    F64(f64),
}

/// A typed metadata array; arrays may nest.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// Strings, packed in one buffer (vocabularies hold 10^5 entries).
    String(StringArray),
    /// Arrays, each with its own element type.
    Array(Vec<Array>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f64` elements.
    F64(Vec<f64>),
}

impl Array {
    /// Number of elements.
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

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's name (`u32`, `string`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Array::U8(_) => "u8",
            Array::I8(_) => "i8",
            Array::U16(_) => "u16",
            Array::I16(_) => "i16",
            Array::U32(_) => "u32",
            Array::I32(_) => "i32",
            Array::F32(_) => "f32",
            Array::Bool(_) => "bool",
            Array::String(_) => "string",
            Array::Array(_) => "array",
            Array::U64(_) => "u64",
            Array::I64(_) => "i64",
            Array::F64(_) => "f64",
        }
    }

    /// The elements as `i64` when this is an integer array (any width).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I64(v) => v.clone(),
            Array::U64(v) => v
                .iter()
                .map(|&x| i64::try_from(x).ok())
                .collect::<Option<_>>()?,
            _ => return None,
        })
    }
}

/// Strings packed into one buffer: `array[i]` is the i-th string.
#[derive(Clone, PartialEq, Default)]
pub struct StringArray {
    data: String,
    ends: Vec<usize>,
}

impl std::fmt::Debug for StringArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().take(8)).finish()?;
        if self.len() > 8 {
            write!(f, " ({} strings)", self.len())?;
        }
        Ok(())
    }
}

impl StringArray {
    /// An empty array with room for `n` strings.
    pub fn with_capacity(n: usize, bytes: usize) -> StringArray {
        StringArray {
            data: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
        }
    }

    /// Appends a string.
    pub fn push(&mut self, s: &str) {
        self.data.push_str(s);
        self.ends.push(self.data.len());
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are no strings.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`-th string.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.data[start..end])
    }

    /// The strings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i).unwrap_or(""))
    }

    /// The strings as owned `String`s.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

/// Texts gathered as raw bytes and checked as UTF-8 once, when finished: one
/// pass over all the bytes instead of a call per text (a vocabulary has 10^5
/// of them, and the calls were a third of a tokenizer's load).
#[derive(Default)]
pub(crate) struct RawStrings {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl RawStrings {
    /// Room for `n` texts of `bytes` bytes in all.
    pub(crate) fn with_capacity(n: usize, bytes: usize) -> RawStrings {
        RawStrings {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(n),
        }
    }

    /// Appends a text, not yet checked.
    pub(crate) fn push(&mut self, text: &[u8]) {
        self.data.extend_from_slice(text);
        self.ends.push(self.data.len());
    }

    /// The texts as strings; a text's invalid bytes become U+FFFD, as
    /// `String::from_utf8_lossy` makes them.
    pub(crate) fn finish(self) -> StringArray {
        // The whole is valid with every end on a character boundary exactly
        // when each text is valid on its own.
        match String::from_utf8(self.data) {
            Ok(data) if self.ends.iter().all(|&e| data.is_char_boundary(e)) => StringArray {
                data,
                ends: self.ends,
            },
            Ok(data) => Self::lossy(data.as_bytes(), &self.ends),
            Err(e) => Self::lossy(e.as_bytes(), &self.ends),
        }
    }

    fn lossy(data: &[u8], ends: &[usize]) -> StringArray {
        let mut out = StringArray::with_capacity(ends.len(), data.len());
        let mut start = 0;
        for &end in ends {
            out.push(&String::from_utf8_lossy(&data[start..end]));
            start = end;
        }
        out
    }
}

impl std::ops::Index<usize> for StringArray {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        match self.get(i) {
            Some(s) => s,
            None => panic!("StringArray index {i} out of range ({})", self.len()),
        }
    }
}

impl<S: AsRef<str>> FromIterator<S> for StringArray {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> StringArray {
        let mut a = StringArray::default();
        for s in iter {
            a.push(s.as_ref());
        }
        a
    }
}

impl Value {
    /// The type's name (`u32`, `string`, `array of f32`...), for messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "u8".into(),
            Value::I8(_) => "i8".into(),
            Value::U16(_) => "u16".into(),
            Value::I16(_) => "i16".into(),
            Value::U32(_) => "u32".into(),
            Value::I32(_) => "i32".into(),
            Value::F32(_) => "f32".into(),
            Value::Bool(_) => "bool".into(),
            Value::String(_) => "string".into(),
            Value::Array(a) => format!("array of {}", a.type_name()),
            Value::U64(_) => "u64".into(),
            Value::I64(_) => "i64".into(),
            Value::F64(_) => "f64".into(),
        }
    }

    /// The value as `i128` when it is an integer of any width (or a bool).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(x) => x.into(),
            Value::I8(x) => x.into(),
            Value::U16(x) => x.into(),
            Value::I16(x) => x.into(),
            Value::U32(x) => x.into(),
            Value::I32(x) => x.into(),
            Value::U64(x) => x.into(),
            Value::I64(x) => x.into(),
            Value::Bool(b) => b.into(),
            _ => return None,
        })
    }

    /// The value as `f64` when it is any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(x) => Some(x.into()),
            Value::F64(x) => Some(x),
            Value::Bool(_) => None,
            _ => self.as_int().map(|i| i as f64),
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for listings (arrays show their length and head).
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.chars().count() > 60 => {
                format!(
                    "{:?}... ({} bytes)",
                    s.chars().take(57).collect::<String>(),
                    s.len()
                )
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{}; {}]", a.type_name(), a.len()),
            Value::U8(x) => x.to_string(),
            Value::I8(x) => x.to_string(),
            Value::U16(x) => x.to_string(),
            Value::I16(x) => x.to_string(),
            Value::U32(x) => x.to_string(),
            Value::I32(x) => x.to_string(),
            Value::U64(x) => x.to_string(),
            Value::I64(x) => x.to_string(),
            Value::F32(x) => x.to_string(),
            Value::F64(x) => x.to_string(),
            Value::Bool(x) => x.to_string(),
        }
    }
}

/// Where a tensor lies in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Element format.
    pub dtype: DType,
    /// Row-major shape, outermost first (GGUF's ne\[\] reversed).
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub offset: usize,
    /// Byte length.
    pub bytes: usize,
}

/// An open GGUF file: parsed header plus the memory map the tensors view.
pub struct Gguf {
    path: PathBuf,
    storage: Arc<Storage>,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader over the header bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], ModelError> {
        if n > self.remaining() {
            return Err(ModelError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                needed: (self.pos as u64).saturating_add(n as u64),
                file_len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], ModelError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string; the length is checked before any allocation.
    fn string_bytes(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8], ModelError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| ModelError::Truncated {
                path: self.path.to_path_buf(),
                what: format!("{} (string of {len} bytes)", what()),
                needed: (self.pos as u64).saturating_add(len),
                file_len: self.buf.len() as u64,
            })?;
        self.take(len, what)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, ModelError> {
        Ok(String::from_utf8_lossy(self.string_bytes(what)?).into_owned())
    }

    /// An element count whose elements take at least `min_size` bytes each:
    /// a count the rest of the file cannot hold is rejected before allocating.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize, ModelError> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_size))
            .is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(ModelError::Truncated {
                path: self.path.to_path_buf(),
                what: format!("{} ({n} elements of at least {min_size} bytes)", what()),
                needed: (n as u128 * min_size as u128 + self.pos as u128).min(u64::MAX as u128)
                    as u64,
                file_len: self.buf.len() as u64,
            });
        }
        Ok(n as usize)
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, ModelError> {
        let what = || format!("metadata value '{key}'");
        Ok(match ty {
            ty::U8 => Value::U8(self.array::<1>(&what)?[0]),
            ty::I8 => Value::I8(self.array::<1>(&what)?[0] as i8),
            ty::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ty::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ty::U32 => Value::U32(self.u32(&what)?),
            ty::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ty::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ty::BOOL => Value::Bool(self.array::<1>(&what)?[0] != 0),
            ty::STRING => Value::String(self.string(&what)?),
            ty::ARRAY => Value::Array(self.array_value(key, depth + 1)?),
            ty::U64 => Value::U64(self.u64(&what)?),
            ty::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ty::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(ModelError::corrupt(
                    self.path,
                    format!("metadata value '{key}'"),
                    format!("expected a value type 0..=12, found {other}"),
                ))
            }
        })
    }

    /// Reads `n` fixed-size elements in one bounds check.
    fn fixed<T, const N: usize>(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
        f: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, ModelError> {
        // `count` has checked n * N against the remaining bytes.
        let bytes = self.take(n * N, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array, ModelError> {
        let what = || format!("metadata array '{key}'");
        if depth > MAX_ARRAY_DEPTH {
            return Err(ModelError::corrupt(
                self.path,
                what(),
                format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
            ));
        }
        let ety = self.u32(&what)?;
        let min_size = match ety {
            ty::U8 | ty::I8 | ty::BOOL => 1,
            ty::U16 | ty::I16 => 2,
            ty::U32 | ty::I32 | ty::F32 => 4,
            ty::U64 | ty::I64 | ty::F64 | ty::STRING => 8,
            ty::ARRAY => 12,
            other => {
                return Err(ModelError::corrupt(
                    self.path,
                    what(),
                    format!("expected an element type 0..=12, found {other}"),
                ))
            }
        };
        let n = self.count(min_size, &what)?;
        Ok(match ety {
            ty::U8 => Array::U8(self.fixed(n, &what, |[b]| b)?),
            ty::I8 => Array::I8(self.fixed(n, &what, |[b]| b as i8)?),
            ty::BOOL => Array::Bool(self.fixed(n, &what, |[b]| b != 0)?),
            ty::U16 => Array::U16(self.fixed(n, &what, u16::from_le_bytes)?),
            ty::I16 => Array::I16(self.fixed(n, &what, i16::from_le_bytes)?),
            ty::U32 => Array::U32(self.fixed(n, &what, u32::from_le_bytes)?),
            ty::I32 => Array::I32(self.fixed(n, &what, i32::from_le_bytes)?),
            ty::F32 => Array::F32(self.fixed(n, &what, f32::from_le_bytes)?),
            ty::U64 => Array::U64(self.fixed(n, &what, u64::from_le_bytes)?),
            ty::I64 => Array::I64(self.fixed(n, &what, i64::from_le_bytes)?),
            ty::F64 => Array::F64(self.fixed(n, &what, f64::from_le_bytes)?),
            ty::STRING => {
                // `count` checked 8 bytes (a length) per string against the
                // file, so this is no larger than the file; a vocabulary's
                // texts average 4-16 bytes.
                let mut a = RawStrings::with_capacity(n, n * 8);
                for _ in 0..n {
                    a.push(self.string_bytes(&what)?);
                }
                Array::String(a.finish())
            }
            _ => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

impl Gguf {
    /// Memory-maps and parses `path`. Only the header is read; tensor data
    /// stays in the map until a kernel touches it.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf, ModelError> {
        let path = path.as_ref();
        let storage = crate::formats::mmap::mmap_file(path)?;
        Gguf::from_storage(storage, path)
    }

    /// Parses a GGUF image held in memory (`path` only names it in errors).
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Gguf, ModelError> {
        Gguf::from_storage(Arc::new(Storage::from_bytes(bytes)), path.as_ref())
    }

    /// Parses the GGUF image in `storage`.
    pub fn from_storage(storage: Arc<Storage>, path: &Path) -> Result<Gguf, ModelError> {
        let buf = storage.bytes();
        let mut c = Cursor { buf, pos: 0, path };
        let magic = c
            .take(4, &|| "magic".into())
            .map_err(|_| ModelError::BadMagic {
                path: path.into(),
                format: "GGUF",
                expected: "GGUF".into(),
                found: String::from_utf8_lossy(buf).into_owned(),
            })?;
        if magic != MAGIC {
            return Err(ModelError::BadMagic {
                path: path.into(),
                format: "GGUF",
                expected: "GGUF".into(),
                found: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        let version = c.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            return Err(ModelError::UnsupportedVersion {
                path: path.into(),
                format: "GGUF",
                found: version.into(),
                supported: "2, 3 (little-endian)",
            });
        }
        // A tensor info takes at least 8 (name len) + 4 + 8 + 4 + 8 bytes.
        let n_tensors = c.count(32, &|| "tensor count".into())?;
        // A key/value takes at least 8 (key len) + 4 (type) + 1 bytes.
        let n_kv = c.count(13, &|| "metadata count".into())?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let ty = c.u32(&|| format!("metadata type of '{key}'"))?;
            let value = c.value(ty, &key, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(ModelError::corrupt(
                    path,
                    format!("metadata key '{key}'"),
                    "appears twice",
                ));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let v = &metadata[i].1;
                match v.as_int() {
                    Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 20 => a as usize,
                    _ => {
                        return Err(ModelError::WrongType {
                            path: path.into(),
                            key: "general.alignment".into(),
                            expected: "a power of two integer up to 2^20",
                            found: v.summary(),
                        })
                    }
                }
            }
        };

        let mut raw = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor info #{i}"))?;
            let what = || format!("tensor info '{name}'");
            let n_dims = c.u32(&what)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(ModelError::bad_tensor(
                    path,
                    &name,
                    format!("expected 1..={MAX_DIMS} dimensions, found {n_dims}"),
                ));
            }
            let mut shape = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = c.u64(&what)?;
                shape.push(usize::try_from(d).map_err(|_| {
                    ModelError::bad_tensor(path, &name, format!("dimension {d} overflows usize"))
                })?);
            }
            shape.reverse();
            let type_id = c.u32(&what)?;
            let offset = c.u64(&what)?;
            let dtype =
                DType::from_ggml_id(type_id).ok_or_else(|| ModelError::UnsupportedType {
                    path: path.into(),
                    tensor: name.clone(),
                    found: format!("ggml type {type_id}"),
                })?;
            if tensor_index.insert(name.clone(), raw.len()).is_some() {
                return Err(ModelError::bad_tensor(path, &name, "appears twice"));
            }
            raw.push((name, dtype, shape, offset));
        }

        let data_offset = c.pos.next_multiple_of(alignment);
        let file_len = buf.len();
        let mut tensors = Vec::with_capacity(n_tensors);
        for (name, dtype, shape, offset) in raw {
            let bytes = Tensor::byte_len(dtype, &shape).map_err(|e| {
                ModelError::bad_tensor(path, &name, format!("{dtype} shape {shape:?}: {e}"))
            })?;
            if offset % alignment as u64 != 0 {
                return Err(ModelError::bad_tensor(
                    path,
                    &name,
                    format!("offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_offset));
            let end = start.and_then(|s| s.checked_add(bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                    name,
                    dtype,
                    shape,
                    offset: start,
                    bytes,
                }),
                _ => {
                    return Err(ModelError::bad_tensor(
                        path,
                        &name,
                        format!(
                            "data at {data_offset} + {offset} ({bytes} bytes of {dtype} {shape:?}) \
                             lies beyond the end of the file ({file_len} bytes)"
                        ),
                    ))
                }
            }
        }
        // Overlap check on the extents sorted by start.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| (tensors[i].offset, tensors[i].bytes));
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.offset + a.bytes > b.offset && a.bytes > 0 && b.bytes > 0 {
                return Err(ModelError::bad_tensor(
                    path,
                    &b.name,
                    format!(
                        "data {}..{} overlaps tensor '{}' at {}..{}",
                        b.offset,
                        b.offset + b.bytes,
                        a.name,
                        a.offset,
                        a.offset + a.bytes
                    ),
                ));
            }
        }

        Ok(Gguf {
            path: path.to_path_buf(),
            storage,
            version,
            alignment,
            data_offset,
            metadata,
            meta_index,
            tensors,
            tensor_index,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The storage (memory map) tensors view.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value, ModelError> {
        self.get(key).ok_or_else(|| ModelError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &Value) -> ModelError {
        ModelError::WrongType {
            path: self.path.clone(),
            key: key.into(),
            expected,
            found: format!("{} {}", v.type_name(), v.summary()),
        }
    }

    /// An integer of any width that fits `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, ModelError> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// An integer of any width that fits `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, ModelError> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, "an integer in u32 range", v))
    }

    /// An integer of any width that fits `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize, ModelError> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| usize::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, "an integer in usize range", v))
    }

    /// An integer of any width that fits `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64, ModelError> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| i64::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, "an integer in i64 range", v))
    }

    /// A number (f32, f64 or any integer) as `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32, ModelError> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| self.wrong(key, "a number", v))
    }

    /// A bool (or an integer 0/1).
    pub fn get_bool(&self, key: &str) -> Result<bool, ModelError> {
        let v = self.require(key)?;
        match v {
            Value::Bool(b) => Ok(*b),
            _ => match v.as_int() {
                Some(0) => Ok(false),
                Some(1) => Ok(true),
                _ => Err(self.wrong(key, "a bool", v)),
            },
        }
    }

    /// A string.
    pub fn get_str(&self, key: &str) -> Result<&str, ModelError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }

    /// An array of any element type.
    pub fn get_array(&self, key: &str) -> Result<&Array, ModelError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong(key, "an array", v))
    }

    /// An array of strings (borrowed; index it or iterate it).
    pub fn get_str_array(&self, key: &str) -> Result<&StringArray, ModelError> {
        let v = self.require(key)?;
        match v {
            Value::Array(Array::String(a)) => Ok(a),
            _ => Err(self.wrong(key, "an array of strings", v)),
        }
    }

    /// An array of f32 (f64 elements are narrowed).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, ModelError> {
        let v = self.require(key)?;
        match v {
            Value::Array(Array::F32(a)) => Ok(a.clone()),
            Value::Array(Array::F64(a)) => Ok(a.iter().map(|&x| x as f32).collect()),
            _ => Err(self.wrong(key, "an array of f32", v)),
        }
    }

    /// An array of integers of any width, each of which must fit `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, ModelError> {
        let v = self.require(key)?;
        v.as_array()
            .and_then(Array::to_i64_vec)
            .and_then(|a| a.into_iter().map(|x| i32::try_from(x).ok()).collect())
            .ok_or_else(|| self.wrong(key, "an array of integers in i32 range", v))
    }

    /// An array of non-negative integers of any width, each fitting `u32`.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>, ModelError> {
        let v = self.require(key)?;
        v.as_array()
            .and_then(Array::to_i64_vec)
            .and_then(|a| a.into_iter().map(|x| u32::try_from(x).ok()).collect())
            .ok_or_else(|| self.wrong(key, "an array of integers in u32 range", v))
    }

    /// `general.architecture` (`llama`, `qwen2`, `gemma3`...).
    pub fn architecture(&self) -> Result<&str, ModelError> {
        self.get_str("general.architecture")
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Tensor `name` as a view into the map, if present.
    pub fn try_tensor(&self, name: &str) -> Result<Option<Tensor>, ModelError> {
        let Some(info) = self.tensor_info(name) else {
            return Ok(None);
        };
        Tensor::new(
            self.storage.clone(),
            info.offset,
            info.dtype,
            info.shape.clone(),
        )
        .map(Some)
        .map_err(|e| ModelError::bad_tensor(&self.path, name, e.to_string()))
    }

    /// Tensor `name` as a view into the map.
    pub fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        self.try_tensor(name)?
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Each text as `String::from_utf8_lossy` makes it alone.
    fn lossy_each(texts: &[Vec<u8>]) -> Vec<String> {
        texts
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect()
    }

    fn raw(texts: &[Vec<u8>]) -> Vec<String> {
        let mut r = RawStrings::with_capacity(texts.len(), 0);
        for t in texts {
            r.push(t);
        }
        r.finish().to_vec()
    }

    #[test]
    fn raw_strings_check_each_text_on_its_own() {
        // 'Ġ' (C4 A0) split over two texts: valid as a whole, not apart.
        let split = vec![b"a\xC4".to_vec(), b"\xA0b".to_vec()];
        assert_eq!(raw(&split), ["a\u{FFFD}", "\u{FFFD}b"]);
        let mixed = vec![
            "Ġthe".as_bytes().to_vec(),
            Vec::new(),
            b"x\xFFy".to_vec(),
            "日本".as_bytes().to_vec(),
        ];
        assert_eq!(raw(&mixed), ["Ġthe", "", "x\u{FFFD}y", "日本"]);
        assert!(raw(&[]).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Random texts, mostly of valid characters cut anywhere, give what
        /// each would alone.
        #[test]
        fn raw_strings_are_lossy_text_by_text(
            chars in proptest::collection::vec(any::<char>(), 0..40),
            cuts in proptest::collection::vec(0usize..200, 0..12),
            junk in proptest::collection::vec((0usize..200, any::<u8>()), 0..3),
        ) {
            let mut bytes = chars.iter().collect::<String>().into_bytes();
            for (at, b) in junk {
                if !bytes.is_empty() {
                    let n = bytes.len();
                    bytes[at % n] = b;
                }
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut texts = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                texts.push(bytes[start..c].to_vec());
                start = c;
            }
            prop_assert_eq!(raw(&texts), lossy_each(&texts));
        }
    }
}
