//! GPT-2 as a type: learned absolute positions, pre-norm LayerNorm blocks
//! with one fused `[q | k | v]` projection, a tanh-GELU MLP, a final
//! LayerNorm and a head tied to the token embedding.
//!
//! ```text
//! Gpt2Attention = series![Linear (c_attn, [q | k | v]), Attend<Causal>, Linear (c_proj)]
//! Gpt2Mlp       = series![Linear (c_fc), GeluTanh, Linear (c_proj)]
//! Gpt2Block     = series![Residual<series![LayerNorm, Gpt2Attention]>,
//!                         Residual<series![LayerNorm, Gpt2Mlp]>]        (SerialBlock)
//! Gpt2Net       = series![Embedding, PositionEmbedding, Stack<Gpt2Block>, LayerNorm, LmHead]
//! ```
//!
//! The fused projection writes each row as `[q | k | v]`, exactly the layout
//! [`Attend`] reads, so the three are never split into separate tensors. There
//! is no RoPE: positions enter once, through the [`PositionEmbedding`] added
//! to the token embedding.
//!
//! HF checkpoints (`GPT2LMHeadModel`: `wte`, `wpe`, `h.{i}.ln_1`,
//! `h.{i}.attn.c_attn`, ..., `ln_f`, optionally all under `transformer.`)
//! store their projections as `Conv1D`, `[in, out]`: they are transposed once
//! at load into [`Linear`]'s `[out, in]`. GGUF files (llama.cpp's `gpt2`
//! architecture: `token_embd`, `position_embd`, `blk.{i}.attn_qkv`, ...) are
//! already `[out, in]` and are read in place. The math follows HF's
//! `modeling_gpt2.py`.

use patchbay_blocks::{
    Attend, Causal, Embedding, GeluTanh, Heads, LayerNorm, LmHead, PositionEmbedding,
};
use patchbay_blocks::{BlockError, Linear};
use patchbay_combinators::{residual, series, LayerExt, Residual, Stack};
use patchbay_primitives::{DType, Tensor};

use super::{split_block, split_kind, BuildOptions, Family, Model, ModelInfo, Weights};
use crate::error::ModelError;
use crate::formats::source::{Format, ModelSource};

/// GPT-2's attention: the fused `[q | k | v]` projection, causal attend, the
/// output projection. No RoPE.
pub type Gpt2Attention = series![Linear, Attend<Causal>, Linear];

/// GPT-2's MLP: up projection, tanh GELU, down projection.
pub type Gpt2Mlp = series![Linear, GeluTanh, Linear];

/// The serial pre-norm block: a normed attention residual, then a normed MLP
/// residual, each with its own LayerNorm (GPT-2, and Llama's shape).
/// Compare [`super::phi::ParallelBlock`], where one norm feeds both.
pub type SerialBlock<A, M> = series![
    Residual<series![LayerNorm, A]>,
    Residual<series![LayerNorm, M]>
];

/// One GPT-2 layer.
pub type Gpt2Block = SerialBlock<Gpt2Attention, Gpt2Mlp>;

/// The whole network: token ids in, logits out.
pub type Gpt2Net = series![
    Embedding,
    PositionEmbedding,
    Stack<Gpt2Block>,
    LayerNorm,
    LmHead
];

/// Whether a declared architecture is GPT-2 (GGUF and HF `gpt2`).
pub fn is_gpt2_arch(arch: &str) -> bool {
    arch == "gpt2"
}

/// The HF name of canonical tensor `name` in a GPT-2 checkpoint
/// (`blk.3.attn_qkv.weight` -> `h.3.attn.c_attn.weight`). Checkpoints that
/// put every name under `transformer.` are read too: the source tries a
/// prefix every tensor shares.
pub fn hf_name(name: &str) -> Option<String> {
    let (stem, kind) = split_kind(name)?;
    let global = match stem {
        "token_embd" => Some("wte"),
        "position_embd" => Some("wpe"),
        "output_norm" => Some("ln_f"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(format!("{g}.{kind}"));
    }
    let (i, t) = split_block(stem)?;
    let local = match t {
        "attn_norm" => "ln_1",
        "attn_qkv" => "attn.c_attn",
        "attn_output" => "attn.c_proj",
        "ffn_norm" => "ln_2",
        "ffn_up" => "mlp.c_fc",
        "ffn_down" => "mlp.c_proj",
        _ => return None,
    };
    Some(format!("h.{i}.{local}.{kind}"))
}

/// HF `activation_function` values that are the tanh approximation of GELU.
pub const TANH_GELU_NAMES: [&str; 3] = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast"];

/// Hyper-parameters of a GPT-2 model.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Residual width (`n_embd`).
    pub dim: usize,
    /// Layers (`n_layer`).
    pub n_layers: usize,
    /// Heads (`n_head`, all full multi-head).
    pub heads: Heads,
    /// MLP width (`n_inner`, `4 * n_embd` when unset).
    pub n_ff: usize,
    /// Learned positions (`n_positions`).
    pub n_positions: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// LayerNorm epsilon (`layer_norm_epsilon`).
    pub norm_eps: f32,
    /// Attention scores are scaled by `1/sqrt(head_dim)` (`scale_attn_weights`).
    pub scale_attn_weights: bool,
    /// Layer `i`'s scores are further divided by `i + 1`
    /// (`scale_attn_by_inverse_layer_idx`).
    pub scale_by_layer: bool,
}

impl Gpt2Config {
    /// Reads the hyper-parameters; an activation other than tanh GELU is an
    /// error that says which ones are supported.
    pub fn from_source(source: &ModelSource) -> Result<Gpt2Config, ModelError> {
        let h = source.hparams();
        let path = source.path().to_path_buf();
        if !is_gpt2_arch(&h.arch) {
            return Err(ModelError::Unsupported {
                path,
                detail: format!("architecture '{}' is not GPT-2", h.arch),
            });
        }
        let (mut scale_attn_weights, mut scale_by_layer) = (true, false);
        if let Some((_, config)) = source.safetensors() {
            let act = config.opt_str("activation_function")?.unwrap_or("gelu_new");
            if !TANH_GELU_NAMES.contains(&act) {
                return Err(ModelError::Unsupported {
                    path: config.path().to_path_buf(),
                    detail: format!(
                        "activation_function '{act}': the GPT-2 family runs the tanh GELU ({})",
                        TANH_GELU_NAMES.join(", ")
                    ),
                });
            }
            scale_attn_weights = config.opt_bool("scale_attn_weights")?.unwrap_or(true);
            scale_by_layer = config
                .opt_bool("scale_attn_by_inverse_layer_idx")?
                .unwrap_or(false);
        }
        let heads = Heads::new(h.n_head, h.n_head, h.head_dim).map_err(|e| ModelError::Block {
            path: path.clone(),
            tensor: "attention heads".into(),
            source: e,
        })?;
        if heads.q_width() != h.n_embd {
            return Err(ModelError::Unsupported {
                path,
                detail: format!(
                    "{} heads of {} do not make the width {}",
                    h.n_head, h.head_dim, h.n_embd
                ),
            });
        }
        Ok(Gpt2Config {
            dim: h.n_embd,
            n_layers: h.n_layer,
            heads,
            n_ff: h.n_ff,
            n_positions: h.n_ctx,
            vocab: h.n_vocab,
            norm_eps: h.norm_eps,
            scale_attn_weights,
            scale_by_layer,
        })
    }

    /// The attention score scale of layer `i`, as HF's GPT-2 computes it.
    pub fn attn_scale(&self, layer: usize) -> f32 {
        let mut s = 1.0f64;
        if self.scale_attn_weights {
            s /= (self.heads.head_dim as f64).sqrt();
        }
        if self.scale_by_layer {
            s /= (layer + 1) as f64;
        }
        s as f32
    }
}

/// A row-major matrix transposed: `[rows, cols]` -> `[cols, rows]`, for any
/// element format that is not a block format (f32, f16, bf16). Used for HF
/// `Conv1D` weights, stored `[in, out]`; the result is an owned copy.
pub fn transpose(t: &Tensor) -> Result<Tensor, BlockError> {
    let shape = t.shape();
    if shape.len() != 2 {
        return Err(BlockError::Shape {
            what: "a matrix to transpose must be 2-D",
            expected: vec![0, 0],
            found: shape.to_vec(),
        });
    }
    if t.dtype().block_len() != 1 || matches!(t.dtype(), DType::I32 | DType::I64) {
        return Err(BlockError::DType {
            what: "Conv1D weight (transposed at load)",
            found: t.dtype(),
        });
    }
    let (rows, cols) = (shape[0], shape[1]);
    let size = t.dtype().bytes_for(1).unwrap_or(4);
    let src = t.bytes();
    let mut out = vec![0u8; src.len()];
    for r in 0..rows {
        for c in 0..cols {
            let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
            out[to..to + size].copy_from_slice(&src[from..from + size]);
        }
    }
    let storage = std::sync::Arc::new(patchbay_primitives::Storage::from_bytes(&out));
    Ok(Tensor::new(storage, 0, t.dtype(), vec![cols, rows])?)
}

/// The projection `{stem}` (`.weight` and `.bias`) as a `[out, in]` [`Linear`]:
/// HF `Conv1D` weights (`[in, out]`) are transposed, GGUF weights used in place.
fn projection(
    w: &Weights<'_>,
    stem: &str,
    out: usize,
    inp: usize,
    label: &'static str,
) -> Result<Linear, ModelError> {
    let name = format!("{stem}.weight");
    let weight = match w.source().format() {
        Format::Safetensors => {
            let t = w.tensor_shaped(&name, &[inp, out])?;
            transpose(&t).map_err(|e| w.error(&name, e))?
        }
        _ => w.tensor_shaped(&name, &[out, inp])?,
    };
    let bias_name = format!("{stem}.bias");
    let bias = match w.source().try_tensor_shaped(&bias_name, &[out])? {
        Some(b) => Some(w.f32_values(&bias_name, &b)?),
        None => None,
    };
    Linear::new(weight, bias)
        .map(|l| l.named(label))
        .map_err(|e| w.error(stem, e))
}

/// A LayerNorm over `{stem}.weight` and `{stem}.bias`.
pub(crate) fn layer_norm(
    w: &Weights<'_>,
    stem: &str,
    dim: usize,
    eps: f32,
) -> Result<LayerNorm, ModelError> {
    let weight = w.tensor_shaped(&format!("{stem}.weight"), &[dim])?;
    let bias = w
        .source()
        .try_tensor_shaped(&format!("{stem}.bias"), &[dim])?;
    LayerNorm::new(&weight, bias.as_ref(), eps).map_err(|e| w.error(stem, e))
}

/// Builds a GPT-2 network from an HF or GGUF checkpoint.
pub fn build(source: &ModelSource, opts: &BuildOptions) -> Result<Model<Gpt2Net>, ModelError> {
    let cfg = Gpt2Config::from_source(source)?;
    let w = Weights::new(source);
    let (e, ff, heads) = (cfg.dim, cfg.n_ff, cfg.heads);
    let proj = |stem: String, out: usize, inp: usize, label: &'static str| {
        projection(&w, &stem, out, inp, label)
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("blk.{i}");
        let attn = proj(format!("{p}.attn_qkv"), heads.qkv_width(), e, "attn_qkv")?
            .then(Attend::new(heads, Causal).with_scale(cfg.attn_scale(i)))
            .then(proj(format!("{p}.attn_output"), e, e, "attn_output")?);
        let mlp = proj(format!("{p}.ffn_up"), ff, e, "ffn_up")?
            .then(GeluTanh::new(ff))
            .then(proj(format!("{p}.ffn_down"), e, ff, "ffn_down")?);
        let block =
            residual(layer_norm(&w, &format!("{p}.attn_norm"), e, cfg.norm_eps)?.then(attn)).then(
                residual(layer_norm(&w, &format!("{p}.ffn_norm"), e, cfg.norm_eps)?.then(mlp)),
            );
        layers.push(block);
    }
    let embd = w.tensor_shaped("token_embd.weight", &[cfg.vocab, e])?;
    let positions = w.tensor_shaped("position_embd.weight", &[cfg.n_positions, e])?;
    let (head_w, tied) = match source.try_tensor_shaped("output.weight", &[cfg.vocab, e])? {
        Some(t) => (t, false),
        None => (embd.clone(), true),
    };
    let head = LmHead::new(w.linear_from("output.weight", head_w)?).tied(tied);
    let stack = super::planned(Stack::new(layers), opts)?;
    let max_context = opts.max_context.min(cfg.n_positions).max(1);
    let net = Embedding::new(embd)
        .map_err(|err| w.error("token_embd.weight", err))?
        .then(
            PositionEmbedding::new(positions, None)
                .map_err(|err| w.error("position_embd.weight", err))?,
        )
        .then(stack)
        .then(layer_norm(&w, "output_norm", e, cfg.norm_eps)?)
        .then(head);
    Ok(Model {
        info: ModelInfo {
            family: Family::Gpt2.name(),
            arch: source.hparams().arch.clone(),
            dim: e,
            n_layers: cfg.n_layers,
            vocab: cfg.vocab,
            context_length: cfg.n_positions,
            max_context,
        },
        net,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names() {
        assert_eq!(hf_name("token_embd.weight").unwrap(), "wte.weight");
        assert_eq!(hf_name("position_embd.weight").unwrap(), "wpe.weight");
        assert_eq!(
            hf_name("blk.3.attn_qkv.bias").unwrap(),
            "h.3.attn.c_attn.bias"
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").unwrap(),
            "h.0.mlp.c_proj.weight"
        );
        assert_eq!(hf_name("output_norm.bias").unwrap(), "ln_f.bias");
        assert!(hf_name("blk.0.ffn_gate.weight").is_none());
    }

    #[test]
    fn transpose_swaps_axes() {
        let t = Tensor::from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![2, 3]).unwrap();
        let u = transpose(&t).unwrap();
        assert_eq!(u.shape(), &[3, 2]);
        assert_eq!(u.as_f32().unwrap(), &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
