//! The reader layer: weight files as tensors by name and a record of what the
//! file declares, with no architecture knowledge.
//!
//! * [`mmap`] maps a file read-only; the readers take their bytes from it.
//! * [`gguf`], [`safetensors`] and [`llama2c`] parse one format each and hand
//!   out tensors as views into the map, checking every offset and length the
//!   file states.
//! * [`source`] puts the three behind one interface, [`ModelSource`]: tensors
//!   under canonical (GGUF) names and [`HParams`], the hyper-parameters as the
//!   file declares them.
//!
//! Dependencies point one way: `source` → readers → `mmap`. What a given
//! architecture means by its tensors and settings (name maps for HF
//! checkpoints, defaults, RoPE layout, shape checks) belongs to
//! [`crate::families`].

pub mod gguf;
pub mod llama2c;
pub mod mmap;
pub mod safetensors;
pub mod source;

pub use source::{Format, HParams, ModelSource, NameMap, RopeScaling, TensorEntry};
