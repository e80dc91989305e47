//! Writing GGUF files, to craft test fixtures (valid and hostile ones) in the
//! format `formats::gguf` reads.

#![allow(dead_code)]

use patchbay_models::formats::gguf::{Array, Value, DEFAULT_ALIGNMENT, MAGIC};
use patchbay_primitives::DType;

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

/// A tensor to write: its data must be exactly the bytes of `dtype` x `shape`.
#[derive(Debug, Clone)]
pub struct TensorData {
    /// Name.
    pub name: String,
    /// Element format.
    pub dtype: DType,
    /// Row-major shape, outermost first.
    pub shape: Vec<usize>,
    /// Raw bytes.
    pub data: Vec<u8>,
}

impl TensorData {
    /// A tensor of `dtype` and `shape` with the bytes `data`.
    pub fn new(name: &str, dtype: DType, shape: &[usize], data: Vec<u8>) -> TensorData {
        TensorData {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }

    /// An f32 tensor holding `values`.
    pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> TensorData {
        TensorData::new(name, DType::F32, shape, f32_bytes(values))
    }
}

/// `v` as little-endian f32 bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => ty::U8,
        Value::I8(_) => ty::I8,
        Value::U16(_) => ty::U16,
        Value::I16(_) => ty::I16,
        Value::U32(_) => ty::U32,
        Value::I32(_) => ty::I32,
        Value::F32(_) => ty::F32,
        Value::Bool(_) => ty::BOOL,
        Value::String(_) => ty::STRING,
        Value::Array(_) => ty::ARRAY,
        Value::U64(_) => ty::U64,
        Value::I64(_) => ty::I64,
        Value::F64(_) => ty::F64,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    macro_rules! prim {
        ($t:expr, $v:expr) => {{
            out.extend_from_slice(&$t.to_le_bytes());
            out.extend_from_slice(&($v.len() as u64).to_le_bytes());
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }};
    }
    match a {
        Array::U8(v) => prim!(ty::U8, v),
        Array::I8(v) => prim!(ty::I8, v),
        Array::U16(v) => prim!(ty::U16, v),
        Array::I16(v) => prim!(ty::I16, v),
        Array::U32(v) => prim!(ty::U32, v),
        Array::I32(v) => prim!(ty::I32, v),
        Array::F32(v) => prim!(ty::F32, v),
        Array::U64(v) => prim!(ty::U64, v),
        Array::I64(v) => prim!(ty::I64, v),
        Array::F64(v) => prim!(ty::F64, v),
        Array::Bool(v) => prim!(ty::BOOL, v.iter().map(|&b| b as u8).collect::<Vec<u8>>()),
        Array::String(v) => {
            out.extend_from_slice(&ty::STRING.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for s in v.iter() {
                put_str(out, s);
            }
        }
        Array::Array(v) => {
            out.extend_from_slice(&ty::ARRAY.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for a in v {
                put_array(out, a);
            }
        }
    }
}

/// Serialises a GGUF file of `version` (2 or 3). The alignment is taken
/// from a `general.alignment` entry of `metadata` when it is a power of two.
pub fn to_bytes(version: u32, metadata: &[(String, Value)], tensors: &[TensorData]) -> Vec<u8> {
    let alignment = metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_int())
        .and_then(|a| usize::try_from(a).ok())
        // An invalid value is still written (to craft bad files) but not used.
        .filter(|a| a.is_power_of_two())
        .unwrap_or(DEFAULT_ALIGNMENT);
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend_from_slice(&value_type(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + t.data.len()).next_multiple_of(alignment);
    }
    out.resize(out.len().next_multiple_of(alignment), 0);
    for t in tensors {
        out.extend_from_slice(&t.data);
        out.resize(out.len().next_multiple_of(alignment), 0);
    }
    out
}
