//! The tokenizer of a GGUF file, from the `tokenizer.*` keys of its metadata
//! as the shared reader ([`crate::formats::gguf`]) parsed them.

use std::path::Path;

use crate::formats::gguf::{Array, Gguf, StringArray, Value};

use super::{TokenizerError, Vocab};

/// Reads the tokenizer of a GGUF file into a [`Vocab`].
///
/// Flags missing from the file get llama.cpp's defaults for the tokenizer
/// model (`llama`: add BOS; `gpt2`: no BOS).
pub fn read_vocab(path: &Path) -> Result<Vocab, TokenizerError> {
    let gguf = Gguf::open(path).map_err(|e| TokenizerError::File(Box::new(e)))?;
    vocab_of(&gguf)
}

/// The [`Vocab`] of a parsed GGUF file (as [`read_vocab`] reads it), so a
/// model's file is parsed once for its network and its tokenizer.
pub fn vocab_of(gguf: &Gguf) -> Result<Vocab, TokenizerError> {
    let path = gguf.path();
    let missing = |key: &str| TokenizerError::MissingKey {
        path: path.to_path_buf(),
        key: key.to_string(),
    };
    let wrong = |key: &str, want: &str| TokenizerError::Format {
        path: path.to_path_buf(),
        msg: format!("metadata key {key}: expected {want}"),
    };
    let string = |key: &str| -> Result<Option<String>, TokenizerError> {
        match gguf.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(wrong(key, "a string")),
        }
    };
    let array = |key: &str| gguf.get(key).map(|v| v.as_array());
    let model = string("tokenizer.ggml.model")?.ok_or_else(|| missing("tokenizer.ggml.model"))?;
    let pre = string("tokenizer.ggml.pre")?;
    let chat_template = string("tokenizer.chat_template")?;
    let tokens = match array("tokenizer.ggml.tokens") {
        Some(Some(Array::String(v))) => v.clone(),
        Some(_) => return Err(wrong("tokenizer.ggml.tokens", "an array of strings")),
        None => return Err(missing("tokenizer.ggml.tokens")),
    };
    let scores = match array("tokenizer.ggml.scores") {
        Some(Some(Array::F32(v))) => v.clone(),
        Some(Some(Array::I32(v))) => v.iter().map(|&x| x as f32).collect(),
        Some(_) => return Err(wrong("tokenizer.ggml.scores", "an array of f32")),
        None => Vec::new(),
    };
    let token_types = match array("tokenizer.ggml.token_type") {
        Some(Some(Array::I32(v))) => v.clone(),
        Some(_) => return Err(wrong("tokenizer.ggml.token_type", "an array of i32")),
        None => Vec::new(),
    };
    let merges = match array("tokenizer.ggml.merges") {
        Some(Some(Array::String(v))) => v.clone(),
        Some(_) => return Err(wrong("tokenizer.ggml.merges", "an array of strings")),
        None => StringArray::default(),
    };
    let id = |key: &str| -> Option<u32> {
        gguf.get(key)
            .and_then(Value::as_int)
            .and_then(|x| u32::try_from(x).ok())
    };
    let flag = |key: &str| -> Option<bool> {
        match gguf.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    };
    let is_spm = model == "llama";
    Ok(Vocab {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        unk: id("tokenizer.ggml.unknown_token_id"),
        eot: id("tokenizer.ggml.eot_token_id"),
        add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(is_spm),
        add_eos: flag("tokenizer.ggml.add_eos_token").unwrap_or(false),
        add_space_prefix: flag("tokenizer.ggml.add_space_prefix").unwrap_or(is_spm),
        tokens,
        scores,
        token_types,
        merges,
        model,
        pre,
        chat_template,
    })
}
