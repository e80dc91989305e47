//! The model-family layer: each architecture as a type built from the
//! combinators, plus everything that architecture means by a file's contents —
//! its HF tensor-name map, its hyper-parameter defaults, which RoPE layout its
//! stored Q/K need, and the shape checks of its tensors.
//!
//! Families read files only through [`ModelSource`], under canonical (GGUF)
//! tensor names; [`open`] opens a file and gives it the name map of its
//! declared architecture. The runners in [`crate::runners`] drive the
//! networks families build.

pub mod bert;
pub mod gemma3;
pub mod llama;

use std::path::Path;

use patchbay_primitives::rope::RopeLayout;

use crate::error::ModelError;
use crate::formats::source::{HParams, ModelSource, NameMap};

/// The architectures patchbay knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama, Mistral, Qwen2 ([`llama`]).
    Llama,
    /// Gemma 3 ([`gemma3`]).
    Gemma3,
    /// BERT encoders ([`bert`]).
    Bert,
}

impl Family {
    /// The family of a file's declared architecture, if patchbay knows it.
    pub fn of(h: &HParams) -> Option<Family> {
        if llama::is_llama_arch(&h.arch) {
            Some(Family::Llama)
        } else if gemma3::is_gemma3_arch(&h.arch) {
            Some(Family::Gemma3)
        } else if bert::is_bert_arch(&h.arch) {
            Some(Family::Bert)
        } else {
            None
        }
    }

    /// Short name (`llama`, `gemma3`, `bert`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Gemma3 => "gemma3",
            Family::Bert => "bert",
        }
    }

    /// How the family's canonical tensor names read in HF checkpoints.
    pub fn name_map(self) -> NameMap {
        match self {
            Family::Llama => llama::hf_name,
            Family::Gemma3 => gemma3::hf_name,
            Family::Bert => bert::hf_name,
        }
    }

    /// The rotation `source`'s stored Q/K need; `None` for models without
    /// RoPE.
    pub fn rope_layout(self, source: &ModelSource) -> Option<RopeLayout> {
        match self {
            Family::Llama => Some(llama::rope_layout(source)),
            Family::Gemma3 => Some(gemma3::ROPE_LAYOUT),
            Family::Bert => None,
        }
    }

    /// Whether attention is causal, as the file states or the family
    /// defaults (decoders causal, BERT not).
    pub fn causal(self, h: &HParams) -> bool {
        match self {
            Family::Bert => bert::causal(h),
            Family::Llama | Family::Gemma3 => h.causal.unwrap_or(true),
        }
    }
}

/// Opens a model file and, when its declared architecture is one patchbay
/// knows, sets that family's name map (which safetensors checkpoints need to
/// be read under canonical names).
pub fn open(path: impl AsRef<Path>) -> Result<ModelSource, ModelError> {
    let mut source = ModelSource::open(path)?;
    if let Some(f) = Family::of(source.hparams()) {
        source.set_name_map(f.name_map());
    }
    Ok(source)
}

/// `blk.{i}.rest` -> `(i, rest)`.
fn split_block(stem: &str) -> Option<(usize, &str)> {
    let rest = stem.strip_prefix("blk.")?;
    let (i, t) = rest.split_once('.')?;
    Some((i.parse().ok()?, t))
}

/// `stem.weight` / `stem.bias` -> `(stem, kind)`.
fn split_kind(name: &str) -> Option<(&str, &str)> {
    let (stem, kind) = name.rsplit_once('.')?;
    matches!(kind, "weight" | "bias").then_some((stem, kind))
}
