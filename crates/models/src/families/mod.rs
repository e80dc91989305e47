//! Model families: one file per architecture, and the registry that maps a
//! file's declared architecture to its family.
//!
//! A family file owns everything about its architecture: the network as a type
//! alias over `patchbay-blocks` and the combinators, the hyper-parameters it
//! reads, the weight names it maps (GGUF and HF), and the build. The readers
//! in [`crate::formats`] know formats, not architectures.
//!
//! Commands dispatch once, at the top, through [`with_causal_lm`]: the
//! registry builds the family's network and hands it to a
//! [`CausalLmVisitor`], whose generic `visit` is monomorphised for each family,
//! so the forward pass makes no virtual call per layer or token.

mod bind;
pub mod gemma3;
pub mod llama;

pub use bind::Weights;

use patchbay_combinators::{Layer, Plan};
use patchbay_primitives::quant::DotMode;

use crate::error::ModelError;
use crate::formats::source::ModelSource;

/// Options for building a network.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// How quantised weights meet activations.
    pub dot_mode: DotMode,
    /// Longest context to prepare RoPE tables for (capped by the model's own).
    pub max_context: usize,
    /// A re-wiring of the decoder layers (`None`: as trained).
    pub plan: Option<Plan>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            dot_mode: DotMode::Exact,
            max_context: 4096,
            plan: None,
        }
    }
}

/// What every runner needs to know about a built model, whatever its family.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The family (`llama`, `gemma3`).
    pub family: &'static str,
    /// The architecture the file declares (`qwen2`, `LlamaForCausalLM`).
    pub arch: String,
    /// Residual width.
    pub dim: usize,
    /// Decoder layers as trained.
    pub n_layers: usize,
    /// Vocabulary size (logits per row).
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// Longest context this build prepared for.
    pub max_context: usize,
}

/// A built network with what runners need to know about it.
#[derive(Debug, Clone)]
pub struct Model<N> {
    /// Facts about the model.
    pub info: ModelInfo,
    /// The network: token ids (one per row) in, logits out.
    pub net: N,
}

/// What kind of network a family builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A causal language model: token ids in, next-token logits out.
    CausalLm,
    /// An encoder: token ids in, contextual embeddings out.
    Encoder,
}

/// A family as the registry knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// Short name.
    pub name: &'static str,
    /// What it builds.
    pub kind: Kind,
    /// GGUF `general.architecture` values and HF `model_type` values it reads.
    pub archs: &'static [&'static str],
    /// HF `architectures` class names it reads.
    pub hf_classes: &'static [&'static str],
}

/// Every family patchbay knows, in lookup order.
pub const FAMILIES: &[Family] = &[llama::FAMILY, gemma3::FAMILY, BERT];

/// BERT encoders (MiniLM): known, so commands can say what they are.
pub const BERT: Family = Family {
    name: "bert",
    kind: Kind::Encoder,
    archs: &["bert"],
    hf_classes: &["BertModel"],
};

/// The family of an open model file.
pub fn family_of(source: &ModelSource) -> Result<&'static Family, ModelError> {
    let h = source.hparams();
    FAMILIES
        .iter()
        .find(|f| f.archs.contains(&h.arch.as_str()))
        .ok_or_else(|| ModelError::Unsupported {
            path: source.path().to_path_buf(),
            detail: format!(
                "architecture '{}' is not one patchbay knows ({})",
                h.arch,
                FAMILIES
                    .iter()
                    .flat_map(|f| f.archs.iter().copied())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// A job to run on a causal language model of any family: its `visit` is
/// monomorphised for each family's network type.
pub trait CausalLmVisitor {
    /// What the job returns.
    type Output;
    /// Runs the job on a built model.
    fn visit<N: Layer>(self, model: Model<N>) -> Self::Output;
}

/// Builds the causal language model in `source` with its family and runs `job`
/// on it. An encoder, or an unknown architecture, is an error that says so.
pub fn with_causal_lm<V: CausalLmVisitor>(
    source: &ModelSource,
    opts: &BuildOptions,
    job: V,
) -> Result<V::Output, ModelError> {
    let family = family_of(source)?;
    match family.name {
        "llama" => Ok(job.visit(llama::build(source, opts)?)),
        "gemma3" => Ok(job.visit(gemma3::build(source, opts)?)),
        _ => Err(ModelError::NotCausal {
            path: source.path().to_path_buf(),
            family: family.name,
        }),
    }
}

/// Applies `opts.plan` to a decoder stack (every family calls this once).
pub fn planned<L: Layer>(
    stack: patchbay_combinators::Stack<L>,
    opts: &BuildOptions,
) -> Result<patchbay_combinators::Stack<L>, ModelError> {
    match &opts.plan {
        Some(plan) => stack
            .with_plan(plan.clone())
            .map_err(|e| ModelError::Usage(e.to_string())),
        None => Ok(stack),
    }
}
