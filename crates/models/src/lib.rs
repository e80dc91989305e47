//! # patchbay-models
//!
//! Weight files (GGUF, safetensors, llama2.c), tokenizers, and model families
//! written as types over `patchbay-blocks`, in three layers:
//!
//! * [`formats`]: the readers — tensors by name and the hyper-parameters a
//!   file declares, with no architecture knowledge;
//! * [`families`]: the architectures — networks as types, and what each
//!   architecture means by a file (name maps, defaults, RoPE layout, shapes);
//! * [`runners`]: sessions, perplexity and conversion over built networks.
//!
//! [`tokenizer`] reads the vocabularies, [`catalog`] names the models the CLI
//! knows and where they live, [`error`] is the one error type.

pub mod catalog;
pub mod error;
pub mod families;
pub mod formats;
pub mod mergekit;
pub mod runners;
pub mod tokenizer;

pub use error::ModelError;
pub use formats::{Format, HParams, ModelSource};
pub use runners::session::{Session, SessionOptions};
