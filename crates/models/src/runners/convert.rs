//! Export a Llama-family GGUF as an HF-style safetensors directory:
//! `model.safetensors` (HF tensor names, HF q/k layout, f32/f16/bf16),
//! `config.json`, `tokenizer.json` built from the GGUF vocabulary, and
//! `tokenizer_config.json` with the chat template.
//!
//! llama.cpp stores Q and K of `llama` models permuted so RoPE rotates adjacent
//! pairs; HF checkpoints rotate half-split pairs. Export undoes the permutation
//! (row `h*hd + 2j + t` of the GGUF becomes row `h*hd + t*hd/2 + j`), so the
//! converted checkpoint runs with half-split RoPE and computes the same values.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::ModelError;
use crate::families::llama::{self, LlamaConfig};
use crate::formats::source::{ModelSource, RopeScaling};
use crate::tokenizer::gguf_vocab;
use patchbay_primitives::rope::RopeLayout;

/// Element type of the exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDType {
    /// 32-bit float (exact dequantised values).
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl ExportDType {
    /// Parses `f32`, `f16` or `bf16`.
    pub fn parse(s: &str) -> Option<ExportDType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(ExportDType::F32),
            "f16" => Some(ExportDType::F16),
            "bf16" => Some(ExportDType::BF16),
            _ => None,
        }
    }

    fn st(self) -> safetensors::Dtype {
        match self {
            ExportDType::F32 => safetensors::Dtype::F32,
            ExportDType::F16 => safetensors::Dtype::F16,
            ExportDType::BF16 => safetensors::Dtype::BF16,
        }
    }

    fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            ExportDType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ExportDType::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            ExportDType::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ExportDType::F32 => "float32",
            ExportDType::F16 => "float16",
            ExportDType::BF16 => "bfloat16",
        }
    }
}

fn unsupported(path: &Path, detail: impl Into<String>) -> ModelError {
    ModelError::Unsupported {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn io(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::io(path, e)
}

/// Undoes llama.cpp's Q/K row permutation for `heads` heads of `rows/heads` rows.
fn unpermute(rows: &[f32], n_rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = n_rows / heads;
    let half = hd / 2;
    let mut out = vec![0.0; rows.len()];
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let src = h * hd + 2 * j + t;
                let dst = h * hd + t * half + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&rows[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Writes the HF directory for the Llama-family model at `model` into `out`.
/// Returns the files written.
pub fn to_safetensors(
    model: &Path,
    out: &Path,
    dtype: ExportDType,
) -> Result<Vec<PathBuf>, ModelError> {
    let source = ModelSource::open(model)?;
    let cfg = LlamaConfig::from_source(&source)?;
    if source.gguf().is_none() {
        return Err(unsupported(model, "convert reads GGUF files"));
    }
    if cfg.rope_freq_factors.is_some() {
        return Err(unsupported(
            model,
            "convert cannot export per-frequency RoPE divisors (rope_freqs.weight) as an HF rope_scaling",
        ));
    }
    let rope_scaling = match cfg.rope_scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position,
        }),
    };
    let arch = source.arch().to_string();
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let permuted = cfg.rope_layout == RopeLayout::Interleaved;

    // Tensors: every canonical name the Llama type reads, dequantised.
    let mut names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".into(),
        "output.weight".into(),
    ];
    for i in 0..cfg.n_layers {
        for t in [
            "attn_norm.weight",
            "attn_q.weight",
            "attn_k.weight",
            "attn_v.weight",
            "attn_output.weight",
            "attn_q.bias",
            "attn_k.bias",
            "attn_v.bias",
            "attn_output.bias",
            "ffn_norm.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            "ffn_down.weight",
        ] {
            names.push(format!("blk.{i}.{t}"));
        }
    }
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in names {
        let Some(t) = source.try_tensor(&name)? else {
            continue;
        };
        let mut v = vec![0.0f32; t.numel()];
        patchbay_primitives::quant::dequantize_row(t.dtype(), t.bytes(), &mut v)
            .map_err(|e| ModelError::bad_tensor(model, &name, e.to_string()))?;
        let shape = t.shape().to_vec();
        if permuted {
            let heads = if name.contains("attn_q.") {
                Some(cfg.n_heads)
            } else if name.contains("attn_k.") {
                Some(cfg.n_kv_heads)
            } else {
                None
            };
            if let Some(h) = heads {
                let (rows, cols) = t.matrix_dims();
                let cols = if shape.len() == 1 { 1 } else { cols };
                let rows = if shape.len() == 1 { shape[0] } else { rows };
                v = unpermute(&v, rows, cols, h);
            }
        }
        let hf = llama::hf_name(&name)
            .ok_or_else(|| unsupported(model, format!("no HF name for {name}")))?;
        data.push((hf, shape, dtype.encode(&v)));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(dtype.st(), s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| unsupported(model, format!("{n}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let st_path = out.join("model.safetensors");
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(views, Some(meta), &st_path)
        .map_err(|e| unsupported(&st_path, e.to_string()))?;

    // config.json
    let vocab = gguf_vocab::read_vocab(model)?;
    let tied = source.try_tensor("output.weight")?.is_none();
    let model_type = if arch == "qwen2" { "qwen2" } else { "llama" };
    let architectures = if arch == "qwen2" {
        "Qwen2ForCausalLM"
    } else {
        "LlamaForCausalLM"
    };
    let h = source.hparams();
    let config = json!({
        "architectures": [architectures],
        "model_type": model_type,
        "hidden_size": cfg.dim,
        "intermediate_size": h.n_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_base,
        "rope_scaling": rope_scaling,
        "vocab_size": cfg.vocab,
        "max_position_embeddings": cfg.context_length,
        "tie_word_embeddings": tied,
        "attention_bias": source.try_tensor("blk.0.attn_q.bias")?.is_some(),
        "hidden_act": "silu",
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
        "torch_dtype": dtype.name(),
    });
    let mut written = vec![st_path];
    let write_json = |name: &str, v: &Value| -> Result<PathBuf, ModelError> {
        let p = out.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|e| unsupported(&p, e.to_string()))?;
        std::fs::write(&p, text).map_err(|e| io(&p, e))?;
        Ok(p)
    };
    written.push(write_json("config.json", &config)?);
    written.push(write_json(
        "tokenizer.json",
        &tokenizer_json(model, &vocab)?,
    )?);
    let text = |id: Option<u32>| id.and_then(|i| vocab.tokens.get(i as usize).cloned());
    let tcfg = json!({
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "bos_token": text(vocab.bos),
        "eos_token": text(vocab.eos),
        "chat_template": vocab.chat_template,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    written.push(write_json("tokenizer_config.json", &tcfg)?);
    Ok(written)
}

/// An HF `tokenizer.json` for a GGUF `gpt2` (byte-level BPE) vocabulary.
fn tokenizer_json(model: &Path, v: &crate::tokenizer::Vocab) -> Result<Value, ModelError> {
    if v.model != "gpt2" {
        return Err(unsupported(
            model,
            format!(
                "tokenizer.json export supports byte-level BPE ('gpt2') vocabularies, not '{}'",
                v.model
            ),
        ));
    }
    // The pre-tokenizer regexes HF uses for these models.
    const GPT2: &str =
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre = match v.pre.as_deref() {
        Some("smollm") => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        Some("qwen2") => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        _ => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GPT2}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
    };
    let vocab: serde_json::Map<String, Value> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // Control (3) and user-defined (4) tokens are added tokens, matched whole.
    let added: Vec<Value> = v
        .token_types
        .iter()
        .enumerate()
        .filter(|(_, &ty)| ty == 3 || ty == 4)
        .map(|(i, &ty)| {
            json!({"id": i, "content": v.tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": ty == 4, "special": ty == 3})
        })
        .collect();
    let bos = v.bos.and_then(|b| v.tokens.get(b as usize)).cloned();
    let post = match (v.add_bos, bos) {
        (true, Some(b)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.clone(): {"id": b, "ids": [v.bos], "tokens": [b]}}}),
        _ => Value::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": v.merges},
    }))
}
