//! Model families: one file per architecture, and the registry that maps a
//! file's declared architecture to its family.
//!
//! A family file owns everything about its architecture: the network as a type
//! alias over `patchbay-blocks` and the combinators, the hyper-parameters it
//! reads and their defaults, the weight names it maps (GGUF and HF), which RoPE
//! layout its stored Q/K need, the shape checks of its tensors, and the build.
//! Families read files only through [`ModelSource`], under canonical (GGUF)
//! tensor names; [`open`] opens a file and gives it the name map of its
//! declared architecture. The readers in [`crate::formats`] know formats, not
//! architectures.
//!
//! Commands dispatch once, at the top, through [`with_causal_lm`]: the
//! registry builds the family's network and hands it to a
//! [`CausalLmVisitor`], whose generic `visit` is monomorphised for each family,
//! so the forward pass makes no virtual call per layer or token. The runners in
//! [`crate::runners`] drive the networks families build.

pub mod bert;
mod bind;
pub mod gemma3;
pub mod gpt2;
pub mod llama;
pub mod phi;

pub use bind::Weights;

use std::path::Path;

use patchbay_combinators::{Layer, Plan};
use patchbay_primitives::rope::RopeLayout;

use crate::error::ModelError;
use crate::formats::source::{HParams, ModelSource, NameMap};

/// Options for building a network.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// Longest context to prepare RoPE tables for (capped by the model's own).
    pub max_context: usize,
    /// A re-wiring of the decoder layers (`None`: as trained).
    pub plan: Option<Plan>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            max_context: 4096,
            plan: None,
        }
    }
}

/// What every runner needs to know about a built model, whatever its family.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The family (`llama`, `gemma3`, `bert`).
    pub family: &'static str,
    /// The architecture the file declares (`qwen2`, `LlamaForCausalLM`).
    pub arch: String,
    /// Residual width.
    pub dim: usize,
    /// Decoder layers as trained.
    pub n_layers: usize,
    /// Vocabulary size (logits per row); for an encoder, the embedding
    /// width (features per output row).
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

/// The architectures patchbay knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama, Mistral, Qwen2 ([`llama`]).
    Llama,
    /// Gemma 3 ([`gemma3`]).
    Gemma3,
    /// BERT encoders ([`bert`]).
    Bert,
    /// GPT-2 ([`gpt2`]).
    Gpt2,
    /// Phi, parallel blocks ([`phi`]).
    Phi,
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
        } else if gpt2::is_gpt2_arch(&h.arch) {
            Some(Family::Gpt2)
        } else if phi::is_phi_arch(&h.arch) {
            Some(Family::Phi)
        } else {
            None
        }
    }

    /// What the family builds.
    pub fn kind(self) -> Kind {
        match self {
            Family::Llama | Family::Gemma3 | Family::Gpt2 | Family::Phi => Kind::CausalLm,
            Family::Bert => Kind::Encoder,
        }
    }

    /// Short name (`llama`, `gemma3`, `bert`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Gemma3 => "gemma3",
            Family::Bert => "bert",
            Family::Gpt2 => "gpt2",
            Family::Phi => "phi",
        }
    }

    /// How the family's canonical tensor names read in HF checkpoints.
    pub fn name_map(self) -> NameMap {
        match self {
            Family::Llama => llama::hf_name,
            Family::Gemma3 => gemma3::hf_name,
            Family::Bert => bert::hf_name,
            Family::Gpt2 => gpt2::hf_name,
            Family::Phi => phi::hf_name,
        }
    }

    /// The rotation `source`'s stored Q/K need; `None` for models without
    /// RoPE.
    pub fn rope_layout(self, source: &ModelSource) -> Option<RopeLayout> {
        match self {
            Family::Llama => Some(llama::rope_layout(source)),
            Family::Gemma3 => Some(gemma3::ROPE_LAYOUT),
            Family::Bert | Family::Gpt2 => None,
            Family::Phi => Some(phi::ROPE_LAYOUT),
        }
    }

    /// Whether attention is causal, as the file states or the family
    /// defaults (decoders causal, BERT not).
    pub fn causal(self, h: &HParams) -> bool {
        match self {
            Family::Bert => bert::causal(h),
            Family::Llama | Family::Gemma3 | Family::Gpt2 | Family::Phi => h.causal.unwrap_or(true),
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

/// The HF name of canonical tensor `name` in a decoder-only checkpoint
/// (`model.embed_tokens`, `model.norm`, `lm_head`, and
/// `model.layers.{i}.{local}` where `local` names the family's block tensors).
fn hf_decoder_name(name: &str, local: fn(&str) -> Option<&'static str>) -> Option<String> {
    let (stem, kind) = split_kind(name)?;
    let global = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(format!("{g}.{kind}"));
    }
    let (i, t) = split_block(stem)?;
    Some(format!("model.layers.{i}.{}.{kind}", local(t)?))
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

/// The family of an open model file; an unknown architecture is an error.
pub fn family_of(source: &ModelSource) -> Result<Family, ModelError> {
    let h = source.hparams();
    Family::of(h).ok_or_else(|| ModelError::Unsupported {
        path: source.path().to_path_buf(),
        detail: format!(
            "architecture '{}' is not one patchbay knows (llama, mistral, qwen2, gemma3, bert)",
            h.arch
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
    match family_of(source)? {
        Family::Llama => Ok(job.visit(llama::build(source, opts)?)),
        Family::Gemma3 => Ok(job.visit(gemma3::build(source, opts)?)),
        Family::Gpt2 => Ok(job.visit(gpt2::build(source, opts)?)),
        Family::Phi => Ok(job.visit(phi::build(source, opts)?)),
        f @ Family::Bert => Err(ModelError::NotCausal {
            path: source.path().to_path_buf(),
            family: f.name(),
        }),
    }
}

/// Builds the model in `source` with its family, whatever it builds (a
/// causal language model or an encoder), and runs `job` on it: for commands
/// that only describe a network (`graph`). Check [`Family::kind`] first when
/// the job needs one kind.
pub fn with_model<V: CausalLmVisitor>(
    source: &ModelSource,
    opts: &BuildOptions,
    job: V,
) -> Result<V::Output, ModelError> {
    match family_of(source)? {
        Family::Bert => Ok(job.visit(bert::build(source, opts)?)),
        _ => with_causal_lm(source, opts, job),
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

/// A job to run on several builds of one causal language model (one per
/// plan), all of the same network type.
pub trait CausalLmVariantsVisitor {
    /// What the job returns.
    type Output;
    /// Runs the job on the builds, in the order of the plans.
    fn visit<N: Layer>(self, models: Vec<Model<N>>) -> Self::Output;
}

/// Builds the causal language model in `source` once per entry of `plans`
/// (`None`: as trained), with `opts` otherwise, and runs `job` on all of
/// them. Every build reads the same open file: the weights are views into
/// its one mapping, shared by all the builds, never copied.
pub fn with_causal_lm_variants<V: CausalLmVariantsVisitor>(
    source: &ModelSource,
    opts: &BuildOptions,
    plans: &[Option<Plan>],
    job: V,
) -> Result<V::Output, ModelError> {
    fn all<N>(
        plans: &[Option<Plan>],
        opts: &BuildOptions,
        build: impl Fn(&BuildOptions) -> Result<Model<N>, ModelError>,
    ) -> Result<Vec<Model<N>>, ModelError> {
        plans
            .iter()
            .map(|p| {
                build(&BuildOptions {
                    plan: p.clone(),
                    ..opts.clone()
                })
            })
            .collect()
    }
    match family_of(source)? {
        Family::Llama => Ok(job.visit(all(plans, opts, |o| llama::build(source, o))?)),
        Family::Gemma3 => Ok(job.visit(all(plans, opts, |o| gemma3::build(source, o))?)),
        Family::Gpt2 => Ok(job.visit(all(plans, opts, |o| gpt2::build(source, o))?)),
        Family::Phi => Ok(job.visit(all(plans, opts, |o| phi::build(source, o))?)),
        f @ Family::Bert => Err(ModelError::NotCausal {
            path: source.path().to_path_buf(),
            family: f.name(),
        }),
    }
}
