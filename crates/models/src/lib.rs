//! # patchbay-models
//!
//! Weight files (GGUF, safetensors, llama2.c), tokenizers, and model families
//! written as types over `patchbay-blocks`.

pub mod convert;
pub mod error;
pub mod families;
pub mod gguf;
pub mod golden;
pub mod llama;
pub mod llama2c;
pub mod paths;
pub mod perplexity;
pub mod safetensors_file;
pub mod session;
pub mod source;
pub mod tokenizer;
