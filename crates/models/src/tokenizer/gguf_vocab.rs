//! A minimal reader for the tokenizer metadata of a GGUF file.
//!
//! It parses only the header and the key/value metadata (never the tensors)
//! and stops as soon as the metadata ends. It is bounds-checked against the
//! file length so a corrupt file yields an error, not a panic or a huge
//! allocation. (The shared GGUF reader in `crate::formats::gguf` will replace it.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use patchbay_primitives::Storage;

use crate::formats::gguf::StringArray;

use super::{TokenizerError, Vocab};

/// A metadata value; only what the tokenizer needs is kept in full.
// Scalars are parsed in full even when no tokenizer key reads them.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Val {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    ArrStr(StringArray),
    ArrF32(Vec<f32>),
    ArrI32(Vec<i32>),
    /// Arrays of other element types (skipped).
    ArrOther,
}

/// A cursor over the memory-mapped file: texts are validated and copied once,
/// straight from the map (a buffered reader cost a zeroed buffer and a copy
/// more per token).
struct Reader {
    map: Arc<Storage>,
    /// Where the next read starts in `map`.
    pos: usize,
    path: PathBuf,
    /// Bytes left in the file; every length is checked against it.
    left: u64,
}

impl Reader {
    fn err(&self, msg: impl Into<String>) -> TokenizerError {
        TokenizerError::Format {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    /// The next `n` bytes (`n` already checked against `left`).
    fn take(&mut self, n: usize) -> &[u8] {
        let at = self.pos;
        self.pos += n;
        self.left -= n as u64;
        &self.map.bytes()[at..at + n]
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], TokenizerError> {
        if (N as u64) > self.left {
            return Err(self.err("unexpected end of file in metadata"));
        }
        Ok(self.take(N).try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, TokenizerError> {
        Ok(u32::from_le_bytes(self.bytes::<4>()?))
    }

    fn u64(&mut self) -> Result<u64, TokenizerError> {
        Ok(u64::from_le_bytes(self.bytes::<8>()?))
    }

    fn skip(&mut self, n: u64) -> Result<(), TokenizerError> {
        if n > self.left {
            return Err(self.err("unexpected end of file in metadata"));
        }
        self.take(n as usize);
        Ok(())
    }

    /// The next string's bytes, length-prefixed.
    fn string_bytes(&mut self) -> Result<&[u8], TokenizerError> {
        let n = self.u64()?;
        if n > self.left {
            return Err(self.err(format!("string length {n} exceeds the file")));
        }
        Ok(self.take(n as usize))
    }

    // Token texts are UTF-8 in practice; a stray invalid byte must not abort
    // loading: it becomes U+FFFD.
    fn string(&mut self) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(self.string_bytes()?).into_owned())
    }

    /// Appends the next string to `out` (as [`Reader::string`] reads it).
    fn string_into(&mut self, out: &mut StringArray) -> Result<(), TokenizerError> {
        let bytes = self.string_bytes()?;
        // `from_utf8` first: `from_utf8_lossy` walks valid text chunk by chunk,
        // which showed up in profiles at 10^5 texts.
        match std::str::from_utf8(bytes) {
            Ok(s) => out.push(s),
            Err(_) => out.push(&String::from_utf8_lossy(bytes)),
        }
        Ok(())
    }

    /// Size in bytes of a fixed-size scalar type, `None` for string/array.
    fn scalar_size(ty: u32) -> Option<u64> {
        match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }

    fn scalar(&mut self, ty: u32) -> Result<Val, TokenizerError> {
        Ok(match ty {
            0 => Val::U64(self.bytes::<1>()?[0] as u64),
            1 => Val::I64(self.bytes::<1>()?[0] as i8 as i64),
            2 => Val::U64(u16::from_le_bytes(self.bytes::<2>()?) as u64),
            3 => Val::I64(i16::from_le_bytes(self.bytes::<2>()?) as i64),
            4 => Val::U64(self.u32()? as u64),
            5 => Val::I64(i32::from_le_bytes(self.bytes::<4>()?) as i64),
            6 => Val::F64(f32::from_le_bytes(self.bytes::<4>()?) as f64),
            7 => Val::Bool(self.bytes::<1>()?[0] != 0),
            8 => Val::Str(self.string()?),
            10 => Val::U64(self.u64()?),
            11 => Val::I64(i64::from_le_bytes(self.bytes::<8>()?)),
            12 => Val::F64(f64::from_le_bytes(self.bytes::<8>()?)),
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }

    fn value(&mut self, ty: u32) -> Result<Val, TokenizerError> {
        if ty != 9 {
            return self.scalar(ty);
        }
        let ety = self.u32()?;
        let n = self.u64()?;
        // Every element takes at least one byte: reject counts the file cannot hold.
        if n > self.left {
            return Err(self.err(format!("array length {n} exceeds the file")));
        }
        match ety {
            8 => {
                // Packed: one buffer for all texts, no allocation per string.
                let mut v = StringArray::with_capacity(
                    n as usize,
                    (n as usize).saturating_mul(8).min(self.left as usize),
                );
                for _ in 0..n {
                    self.string_into(&mut v)?;
                }
                Ok(Val::ArrStr(v))
            }
            6 => {
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(f32::from_le_bytes(self.bytes::<4>()?));
                }
                Ok(Val::ArrF32(v))
            }
            5 => {
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(i32::from_le_bytes(self.bytes::<4>()?));
                }
                Ok(Val::ArrI32(v))
            }
            t => match Self::scalar_size(t) {
                Some(sz) => {
                    let total = n
                        .checked_mul(sz)
                        .ok_or_else(|| self.err("array size overflow"))?;
                    self.skip(total)?;
                    Ok(Val::ArrOther)
                }
                None if t == 9 => Err(self.err("nested arrays are not supported")),
                None => Err(self.err(format!("unknown array element type {t}"))),
            },
        }
    }
}

/// Reads all metadata key/values of a GGUF file.
fn read_metadata(path: &Path) -> Result<HashMap<String, Val>, TokenizerError> {
    let io = |e| TokenizerError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let map = crate::formats::mmap::map_read_only(path).map_err(io)?;
    let len = map.bytes().len() as u64;
    let mut r = Reader {
        map,
        pos: 0,
        path: path.to_path_buf(),
        left: len,
    };
    let magic = r.bytes::<4>()?;
    if &magic != b"GGUF" {
        return Err(r.err(format!("not a GGUF file (magic {magic:?})")));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(r.err(format!(
            "unsupported GGUF version {version} (expected 2 or 3)"
        )));
    }
    let _n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    if n_kv > r.left {
        return Err(r.err(format!("metadata count {n_kv} exceeds the file")));
    }
    let mut kv = HashMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let v = r.value(ty)?;
        kv.insert(key, v);
    }
    Ok(kv)
}

/// Reads the tokenizer of a GGUF file into a [`Vocab`].
///
/// Flags missing from the file get llama.cpp's defaults for the tokenizer
/// model (`llama`: add BOS; `gpt2`: no BOS).
pub fn read_vocab(path: &Path) -> Result<Vocab, TokenizerError> {
    let mut kv = read_metadata(path)?;
    let missing = |key: &str| TokenizerError::MissingKey {
        path: path.to_path_buf(),
        key: key.to_string(),
    };
    let wrong = |key: &str, want: &str| TokenizerError::Format {
        path: path.to_path_buf(),
        msg: format!("metadata key {key}: expected {want}"),
    };
    let take_str =
        |kv: &mut HashMap<String, Val>, key: &str| -> Result<Option<String>, TokenizerError> {
            match kv.remove(key) {
                None => Ok(None),
                Some(Val::Str(s)) => Ok(Some(s)),
                Some(_) => Err(wrong(key, "a string")),
            }
        };
    let model = take_str(&mut kv, "tokenizer.ggml.model")?
        .ok_or_else(|| missing("tokenizer.ggml.model"))?;
    let pre = take_str(&mut kv, "tokenizer.ggml.pre")?;
    let chat_template = take_str(&mut kv, "tokenizer.chat_template")?;
    let tokens = match kv.remove("tokenizer.ggml.tokens") {
        Some(Val::ArrStr(v)) => v,
        Some(_) => return Err(wrong("tokenizer.ggml.tokens", "an array of strings")),
        None => return Err(missing("tokenizer.ggml.tokens")),
    };
    let scores = match kv.remove("tokenizer.ggml.scores") {
        Some(Val::ArrF32(v)) => v,
        Some(Val::ArrI32(v)) => v.into_iter().map(|x| x as f32).collect(),
        Some(_) => return Err(wrong("tokenizer.ggml.scores", "an array of f32")),
        None => Vec::new(),
    };
    let token_types = match kv.remove("tokenizer.ggml.token_type") {
        Some(Val::ArrI32(v)) => v,
        Some(_) => return Err(wrong("tokenizer.ggml.token_type", "an array of i32")),
        None => Vec::new(),
    };
    let merges = match kv.remove("tokenizer.ggml.merges") {
        Some(Val::ArrStr(v)) => v,
        Some(_) => return Err(wrong("tokenizer.ggml.merges", "an array of strings")),
        None => StringArray::default(),
    };
    let id = |kv: &HashMap<String, Val>, key: &str| -> Option<u32> {
        match kv.get(key) {
            Some(Val::U64(x)) => u32::try_from(*x).ok(),
            Some(Val::I64(x)) => u32::try_from(*x).ok(),
            _ => None,
        }
    };
    let flag = |kv: &HashMap<String, Val>, key: &str| -> Option<bool> {
        match kv.get(key) {
            Some(Val::Bool(b)) => Some(*b),
            _ => None,
        }
    };
    let is_spm = model == "llama";
    Ok(Vocab {
        bos: id(&kv, "tokenizer.ggml.bos_token_id"),
        eos: id(&kv, "tokenizer.ggml.eos_token_id"),
        unk: id(&kv, "tokenizer.ggml.unknown_token_id"),
        eot: id(&kv, "tokenizer.ggml.eot_token_id"),
        add_bos: flag(&kv, "tokenizer.ggml.add_bos_token").unwrap_or(is_spm),
        add_eos: flag(&kv, "tokenizer.ggml.add_eos_token").unwrap_or(false),
        add_space_prefix: flag(&kv, "tokenizer.ggml.add_space_prefix").unwrap_or(is_spm),
        tokens,
        scores,
        token_types,
        merges,
        model,
        pre,
        chat_template,
    })
}
