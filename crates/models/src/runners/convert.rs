//! Export a causal LM as an HF-style safetensors directory: a GGUF (Llama
//! family, Gemma 3) or a llama2.c checkpoint with its `tokenizer.bin` become
//! `model.safetensors` (HF tensor names, HF q/k layout, f32/f16/bf16),
//! `config.json`, `tokenizer.json` built from the GGUF vocabulary (or the
//! llama2.c pieces and scores), and `tokenizer_config.json` with the chat
//! template.
//!
//! llama.cpp stores Q and K of `llama` models permuted so RoPE rotates adjacent
//! pairs, and llama2.c's run.c rotates adjacent pairs `(2j, 2j+1)` of each
//! head too; HF checkpoints rotate half-split pairs `(j, j + hd/2)`. Export
//! undoes the permutation (row `h*hd + 2j + t` of the source becomes row
//! `h*hd + t*hd/2 + j`), so the converted checkpoint runs with half-split
//! RoPE and computes the same values.
//!
//! Writing never corrupts what is there: every file goes to a temporary file
//! in the output directory and is renamed into place once all are complete
//! (a process mapping the old file keeps its inode), a non-empty output
//! directory needs [`ConvertOptions::force`], and a failure removes the
//! temporary files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::ModelError;
use crate::families::gemma3::{self, Gemma3Config};
use crate::families::llama::{self, LlamaConfig};
use crate::families::{self, Family, Kind};
use crate::formats::source::{Format, ModelSource, NameMap, RopeScaling};
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

/// Turns a tensor's dequantised values (canonical name, shape) into the
/// values the HF checkpoint stores.
type Transform = Box<dyn Fn(&str, &[usize], Vec<f32>) -> Vec<f32>>;

/// What one family contributes to an export: the canonical tensors to write,
/// their HF names, a per-tensor value transform, and the family's
/// `config.json` keys.
struct ExportPlan {
    /// Canonical (GGUF) names of the tensors the family reads; absent
    /// optional ones are skipped.
    names: Vec<String>,
    /// Canonical name to HF name.
    hf_name: NameMap,
    /// Turns a tensor's dequantised values (canonical name, GGUF shape) into
    /// the values the HF checkpoint stores.
    transform: Transform,
    /// The family's `config.json` keys (the exporter adds the token ids and
    /// `torch_dtype`).
    config: serde_json::Map<String, Value>,
}

/// An `f32` as the JSON number of its shortest decimal form (`1e-5`, not
/// `9.999999747378752e-6`), as HF configs write it.
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn object(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// The Llama family (llama, mistral, qwen2): HF names, Q/K un-permuted for
/// interleaved-RoPE GGUFs.
fn llama_plan(model: &Path, source: &ModelSource) -> Result<ExportPlan, ModelError> {
    let cfg = LlamaConfig::from_source(source)?;
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
    let permuted = cfg.rope_layout == RopeLayout::Interleaved;
    let (n_heads, n_kv_heads) = (cfg.n_heads, cfg.n_kv_heads);
    let transform = move |name: &str, shape: &[usize], v: Vec<f32>| -> Vec<f32> {
        if !permuted {
            return v;
        }
        let heads = if name.contains("attn_q.") {
            n_heads
        } else if name.contains("attn_k.") {
            n_kv_heads
        } else {
            return v;
        };
        // Shapes are row-major: [rows, cols] for weights, [rows] for biases.
        let (rows, cols) = match shape {
            [rows] => (*rows, 1),
            _ => {
                let cols = shape.last().copied().unwrap_or(1).max(1);
                (v.len() / cols, cols)
            }
        };
        unpermute(&v, rows, cols, heads)
    };
    let tied = source.try_tensor("output.weight")?.is_none();
    let (model_type, architectures) = if arch == "qwen2" {
        ("qwen2", "Qwen2ForCausalLM")
    } else {
        ("llama", "LlamaForCausalLM")
    };
    let config = json!({
        "architectures": [architectures],
        "model_type": model_type,
        "hidden_size": cfg.dim,
        "intermediate_size": source.hparams().n_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": f32_json(cfg.rms_eps),
        "rope_theta": cfg.rope_base,
        "rope_scaling": rope_scaling,
        "vocab_size": cfg.vocab,
        "max_position_embeddings": cfg.context_length,
        "tie_word_embeddings": tied,
        "attention_bias": source.try_tensor("blk.0.attn_q.bias")?.is_some(),
        "hidden_act": "silu",
    });
    Ok(ExportPlan {
        names,
        hf_name: llama::hf_name,
        transform: Box::new(transform),
        config: object(config),
    })
}

/// Gemma 3: HF names, half-split Q/K as stored, and every RMSNorm weight
/// minus 1 (llama.cpp's GGUF stores HF's `1 + w`; HF checkpoints store `w`).
fn gemma3_plan(source: &ModelSource) -> Result<ExportPlan, ModelError> {
    let cfg = Gemma3Config::from_source(source)?;
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
            "attn_q_norm.weight",
            "attn_k_norm.weight",
            "post_attention_norm.weight",
            "ffn_norm.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            "ffn_down.weight",
            "post_ffw_norm.weight",
        ] {
            names.push(format!("blk.{i}.{t}"));
        }
    }
    // What the HF checkpoint's loader adds back (`gemma3::norm_weight_offset`).
    let offset = gemma3::norm_weight_offset(Format::Safetensors)
        - gemma3::norm_weight_offset(source.format());
    let transform = move |name: &str, _: &[usize], mut v: Vec<f32>| -> Vec<f32> {
        if name.ends_with("norm.weight") {
            v.iter_mut().for_each(|x| *x -= offset);
        }
        v
    };
    let layer_types: Vec<&str> = (0..cfg.n_layers)
        .map(|i| {
            if cfg.is_global(i) {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    let h = source.hparams();
    let config = json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": cfg.dim,
        "intermediate_size": h.n_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.heads.n_heads,
        "num_key_value_heads": cfg.heads.n_kv_heads,
        "head_dim": cfg.heads.head_dim,
        "rms_norm_eps": f32_json(cfg.rms_eps),
        "rope_theta": cfg.rope_base_global,
        "rope_local_base_freq": cfg.rope_base_local,
        "rope_scaling": null,
        "sliding_window": cfg.sliding_window,
        "sliding_window_pattern": cfg.pattern,
        "layer_types": layer_types,
        "query_pre_attn_scalar": query_pre_attn_scalar(&cfg),
        "vocab_size": cfg.vocab,
        "max_position_embeddings": cfg.context_length,
        "tie_word_embeddings": source.try_tensor("output.weight")?.is_none(),
        "attention_bias": false,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": null,
        "attn_logit_softcapping": null,
    });
    Ok(ExportPlan {
        names,
        hf_name: gemma3::hf_name,
        transform: Box::new(transform),
        config: object(config),
    })
}

/// `query_pre_attn_scalar` that reproduces the model's attention scale
/// (`scale = query_pre_attn_scalar^-1/2`): the head size when that is what
/// the scale is, as in every Gemma 3 config.
fn query_pre_attn_scalar(cfg: &Gemma3Config) -> f64 {
    let hd = cfg.heads.head_dim as f64;
    let s = 1.0 / (cfg.attn_scale as f64 * cfg.attn_scale as f64);
    if ((s - hd) / hd).abs() < 1e-5 {
        hd
    } else {
        s
    }
}

/// How [`convert`] writes its output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Element type of the exported weights.
    pub dtype: ExportDType,
    /// Replace the files of an existing non-empty output directory (without
    /// it, such a directory is an error and nothing is written).
    pub force: bool,
}

/// Why a conversion failed. Whatever the cause, no temporary file is left
/// behind, and a file already in the output directory is either untouched or
/// (only when a rename fails part-way through the final step) replaced by a
/// complete new one.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The model could not be read or exported, or a file could not be written.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The output directory already holds files and `force` was not given.
    #[error("output directory {dir} is not empty; convert does not overwrite it unless --force is given", dir = dir.display())]
    OutputNotEmpty {
        /// The output directory.
        dir: PathBuf,
    },
}

/// Writes the HF directory for the causal language model in `model` into
/// `out` (f32/f16/bf16 per `dtype`), refusing a non-empty `out`. Returns the
/// files written. See [`convert`].
pub fn to_safetensors(
    model: &Path,
    out: &Path,
    dtype: ExportDType,
) -> Result<Vec<PathBuf>, ConvertError> {
    convert(
        model,
        out,
        &ConvertOptions {
            dtype,
            force: false,
        },
    )
}

/// Writes the HF directory for the causal language model in `model` (a
/// Llama-family or Gemma 3 GGUF, or a llama2.c checkpoint with its
/// `tokenizer.bin`/`tok*.bin` beside it) into `out`. Returns the files
/// written.
///
/// Everything is computed before the disk is touched. `out` must not exist,
/// be empty, or `opts.force` must be set. Each file is written to a temporary
/// file in `out` and renamed over its final name only once all of them are
/// complete, so a process that maps an old `model.safetensors` keeps its
/// inode and never sees a truncated file. On any error the temporary files
/// (and `out`, when this call created it) are removed.
pub fn convert(
    model: &Path,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<Vec<PathBuf>, ConvertError> {
    convert_with_layers(model, out, opts, None)
}

/// `blk.{i}.rest` -> `(i, rest)`.
fn block_of(name: &str) -> Option<(usize, &str)> {
    let (i, rest) = name.strip_prefix("blk.")?.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// The old layer behind each layer of a sequential plan (layers and
/// repeats; a parallel group cannot be written as a plain stack).
fn layer_order(model: &Path, plan: &patchbay_combinators::Plan) -> Result<Vec<usize>, ModelError> {
    use patchbay_combinators::PlanStep;
    let mut order = Vec::new();
    for step in plan.steps() {
        match step {
            PlanStep::Layer(i) => order.push(*i),
            PlanStep::Repeat { layer, times } => order.extend(std::iter::repeat_n(*layer, *times)),
            PlanStep::Parallel { .. } => {
                return Err(unsupported(
                    model,
                    format!(
                        "--layers {plan}: a parallel group has no plain-stack equivalent to write; \
                         convert writes plans of layers and repeats"
                    ),
                ))
            }
        }
    }
    Ok(order)
}

/// [`convert`] of the model re-wired by `layers`: the layers are written in
/// the plan's order under their new indices (a repeated layer is written
/// once per repetition), and `num_hidden_layers` (and Gemma 3's
/// `layer_types`) follow. `None` writes the model as trained.
pub fn convert_with_layers(
    model: &Path,
    out: &Path,
    opts: &ConvertOptions,
    layers: Option<&patchbay_combinators::Plan>,
) -> Result<Vec<PathBuf>, ConvertError> {
    let dtype = opts.dtype;
    let source = families::open(model)?;
    let family = families::family_of(&source)?;
    if family.kind() != Kind::CausalLm {
        return Err(unsupported(
            model,
            format!(
                "convert exports causal language models (llama, mistral, qwen2, gemma3); '{}' is a {} encoder",
                source.arch(),
                family.name()
            ),
        )
        .into());
    }
    let vocab = match source.format() {
        Format::Gguf => gguf_vocab::read_vocab(model).map_err(ModelError::from)?,
        Format::Llama2c => llama2c_vocab(model, source.hparams().n_vocab)?,
        Format::Safetensors => {
            return Err(unsupported(
                model,
                "convert reads GGUF files and llama2.c checkpoints; this is already a safetensors checkpoint",
            )
            .into())
        }
    };
    let plan = match family {
        Family::Llama => llama_plan(model, &source)?,
        Family::Gemma3 => gemma3_plan(&source)?,
        Family::Bert => return Err(unsupported(model, "convert cannot export encoders").into()),
        f @ (Family::Gpt2 | Family::Phi) => {
            return Err(unsupported(
                model,
                format!("convert does not export {} models yet", f.name()),
            )
            .into())
        }
    };

    // Which stored tensor each written one comes from: the plan's layers
    // under their new indices.
    let mut plan = plan;
    let mut pairs: Vec<(String, String)> =
        plan.names.iter().map(|n| (n.clone(), n.clone())).collect();
    if let Some(layers) = layers {
        let order = layer_order(model, layers)?;
        let globals = plan.names.iter().filter(|n| block_of(n).is_none());
        let mut re: Vec<(String, String)> = globals.map(|n| (n.clone(), n.clone())).collect();
        for (j, &old) in order.iter().enumerate() {
            for n in &plan.names {
                if let Some((i, rest)) = block_of(n) {
                    if i == old {
                        re.push((n.clone(), format!("blk.{j}.{rest}")));
                    }
                }
            }
        }
        pairs = re;
        plan.config
            .insert("num_hidden_layers".into(), json!(order.len()));
        if let Some(Value::Array(types)) = plan.config.get("layer_types").cloned() {
            let remapped: Vec<Value> = order
                .iter()
                .map(|&i| types.get(i).cloned().unwrap_or(Value::Null))
                .collect();
            plan.config
                .insert("layer_types".into(), Value::Array(remapped));
        }
    }

    // Tensors: every canonical name the family reads, dequantised.
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, written) in &pairs {
        let Some(t) = source.try_tensor(name)? else {
            continue;
        };
        let mut v = vec![0.0f32; t.numel()];
        patchbay_primitives::quant::dequantize_row(t.dtype(), t.bytes(), &mut v)
            .map_err(|e| ModelError::bad_tensor(model, name, e.to_string()))?;
        let shape = t.shape().to_vec();
        let v = (plan.transform)(name, &shape, v);
        let hf = (plan.hf_name)(written)
            .ok_or_else(|| unsupported(model, format!("no HF name for {written}")))?;
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

    // config.json: the family's keys plus what every checkpoint states.
    let mut config = plan.config;
    config.insert("bos_token_id".into(), json!(vocab.bos));
    config.insert("eos_token_id".into(), json!(vocab.eos));
    config.insert("torch_dtype".into(), json!(dtype.name()));
    let config = Value::Object(config);
    let tokenizer = tokenizer_json(model, &vocab)?;
    let text = |id: Option<u32>| id.and_then(|i| vocab.tokens.get(i as usize).map(str::to_owned));
    let tcfg = json!({
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "bos_token": text(vocab.bos),
        "eos_token": text(vocab.eos),
        "unk_token": text(vocab.unk),
        "chat_template": vocab.chat_template,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let mut jsons = Vec::new();
    for (name, v) in [
        ("config.json", &config),
        ("tokenizer.json", &tokenizer),
        ("tokenizer_config.json", &tcfg),
    ] {
        let p = out.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|e| unsupported(&p, e.to_string()))?;
        jsons.push((name, text));
    }

    // Only now touch the disk.
    let mut staging = Staging::begin(out, opts.force)?;
    let st_tmp = staging.file("model.safetensors");
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(views, Some(meta), &st_tmp)
        .map_err(|e| unsupported(&st_tmp, format!("writing the checkpoint: {e}")))?;
    sync_file(&st_tmp)?;
    for (name, text) in jsons {
        let tmp = staging.file(name);
        std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
        sync_file(&tmp)?;
    }
    Ok(staging.commit()?)
}

/// Flushes a written file to the disk before it is renamed into place.
fn sync_file(path: &Path) -> Result<(), ModelError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(path, e))
}

/// The output files of one conversion while they are written: each goes to
/// a temporary file beside its final name. [`Staging::commit`] renames them
/// into place; dropping the staging without committing (an error, a panic)
/// removes the temporary files, and the output directory if it created it.
struct Staging {
    dir: PathBuf,
    /// The output directory, when [`Staging::begin`] created it.
    created: bool,
    /// (temporary, final) paths not yet renamed.
    pending: Vec<(PathBuf, PathBuf)>,
}

impl Staging {
    /// Checks `dir` (absent, an empty directory, or any directory with
    /// `force`) and creates it when absent.
    fn begin(dir: &Path, force: bool) -> Result<Staging, ConvertError> {
        let created = match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(
                    unsupported(dir, "the output path exists and is not a directory").into(),
                )
            }
            Ok(_) => {
                let mut entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
                if !force && entries.next().is_some() {
                    return Err(ConvertError::OutputNotEmpty { dir: dir.into() });
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
                true
            }
            Err(e) => return Err(io(dir, e).into()),
        };
        Ok(Staging {
            dir: dir.into(),
            created,
            pending: Vec::new(),
        })
    }

    /// The temporary path to write output file `name` to (registered for
    /// clean-up before anything is written to it).
    fn file(&mut self, name: &str) -> PathBuf {
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        self.pending.push((tmp.clone(), self.dir.join(name)));
        tmp
    }

    /// Renames every temporary file over its final name. Returns the final
    /// paths. A failed rename leaves the files not yet renamed to `Drop`.
    fn commit(mut self) -> Result<Vec<PathBuf>, ModelError> {
        // A final name that is a directory would fail half-way: refuse first.
        for (_, dst) in &self.pending {
            if dst.is_dir() {
                return Err(io(
                    dst,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a directory is in the way of the output file",
                    ),
                ));
            }
        }
        let mut done = Vec::with_capacity(self.pending.len());
        while !self.pending.is_empty() {
            let (tmp, dst) = &self.pending[0];
            std::fs::rename(tmp, dst).map_err(|e| io(dst, e))?;
            let (_, dst) = self.pending.remove(0);
            done.push(dst);
        }
        // Make the renames durable (best effort: not every filesystem
        // supports syncing a directory).
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.created = false;
        Ok(done)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for (tmp, _) in &self.pending {
            let _ = std::fs::remove_file(tmp);
        }
        if self.created {
            // Only succeeds when the directory is empty again.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// The SentencePiece vocabulary of a llama2.c checkpoint, from the
/// `tokenizer.bin`/`tok*.bin` patchbay runs it with. llama2.c's export wrote
/// `▁` as a space and BOS/EOS as `"\n<s>\n"`/`"\n</s>\n"`; this restores
/// SentencePiece's texts (`▁`, `<s>`, `</s>`) and token types (unknown,
/// control, byte `<0xXX>`, normal) and keeps the scores. run.c encodes with a
/// dummy prefix space and BOS 1 / EOS 2.
fn llama2c_vocab(model: &Path, n_vocab: usize) -> Result<crate::tokenizer::Vocab, ModelError> {
    use crate::tokenizer::{Tokenizer, Vocab, LLAMA2C_BOS, LLAMA2C_EOS};
    let tok = match Tokenizer::load(model)? {
        Tokenizer::Llama2c(t) => t,
        _ => {
            return Err(unsupported(
                model,
                "no llama2.c tokenizer (tokenizer.bin or tok*.bin) beside the checkpoint",
            ))
        }
    };
    if tok.vocab_size() != n_vocab {
        return Err(unsupported(
            model,
            format!(
                "the llama2.c tokenizer beside the checkpoint has {} tokens but the model has {n_vocab}",
                tok.vocab_size()
            ),
        ));
    }
    let mut v = Vocab {
        model: "llama".into(),
        bos: Some(LLAMA2C_BOS),
        eos: Some(LLAMA2C_EOS),
        add_bos: true,
        add_eos: false,
        add_space_prefix: true,
        ..Vocab::default()
    };
    for id in 0..n_vocab as u32 {
        let raw = tok.raw_piece(id).unwrap_or_default();
        let text = String::from_utf8(raw.to_vec()).map_err(|_| {
            unsupported(
                model,
                format!(
                    "llama2.c token {id} is not valid UTF-8 ({raw:?}); tokenizer.json needs text"
                ),
            )
        })?;
        let is_byte = text.len() == 6
            && text.starts_with("<0x")
            && text.ends_with('>')
            && u8::from_str_radix(&text[3..5], 16).is_ok();
        let (text, ty) = if id == LLAMA2C_BOS {
            ("<s>".to_string(), 3)
        } else if id == LLAMA2C_EOS {
            ("</s>".to_string(), 3)
        } else if text == "<unk>" {
            v.unk = Some(id);
            (text, 2)
        } else if is_byte {
            (text, 6)
        } else {
            (text.replace(' ', "\u{2581}"), 1)
        };
        v.tokens.push(&text);
        v.token_types.push(ty);
        v.scores.push(tok.score(id).unwrap_or(0.0));
    }
    Ok(v)
}

/// Control (3) and user-defined (4) tokens: HF added tokens, matched whole.
fn added_tokens(v: &crate::tokenizer::Vocab) -> Vec<Value> {
    v.token_types
        .iter()
        .enumerate()
        .filter(|(_, &ty)| ty == 3 || ty == 4)
        .map(|(i, &ty)| {
            json!({"id": i, "content": &v.tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": ty == 4, "special": ty == 3})
        })
        .collect()
}

/// The post-processor that prepends BOS when the vocabulary asks for it.
fn bos_post_processor(v: &crate::tokenizer::Vocab) -> Value {
    let bos = v
        .bos
        .and_then(|b| v.tokens.get(b as usize))
        .map(str::to_owned);
    match (v.add_bos, bos) {
        (true, Some(b)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.clone(): {"id": b, "ids": [v.bos], "tokens": [b]}}}),
        _ => Value::Null,
    }
}

/// An HF `tokenizer.json` for a GGUF vocabulary: byte-level BPE (`gpt2`) or
/// SentencePiece BPE (`llama`).
fn tokenizer_json(model: &Path, v: &crate::tokenizer::Vocab) -> Result<Value, ModelError> {
    match v.model.as_str() {
        "gpt2" => Ok(gpt2_tokenizer_json(v)),
        "llama" => Ok(spm_tokenizer_json(v)),
        other => Err(unsupported(
            model,
            format!(
                "tokenizer.json export supports byte-level BPE ('gpt2') and SentencePiece ('llama') vocabularies, not '{other}'"
            ),
        )),
    }
}

/// SentencePiece BPE as HF writes it (Gemma, Llama 2): spaces become `▁`, BPE
/// with byte fallback over the whole text, merges derived from the scores.
///
/// SentencePiece merges the adjacent pair whose concatenation is the
/// highest-scoring vocabulary entry; as HF's converter does, every split
/// `a + b` of a vocabulary entry into two entries becomes a merge, ranked by
/// the entry's score (then id).
fn spm_tokenizer_json(v: &crate::tokenizer::Vocab) -> Value {
    let ty = |i: usize| v.token_types.get(i).copied().unwrap_or(1);
    let score = |i: usize| v.scores.get(i).copied().unwrap_or(0.0);
    let ids: HashMap<&str, usize> = v.tokens.iter().enumerate().map(|(i, t)| (t, i)).collect();
    // (merged id, left id, left, right)
    let mut merges: Vec<(usize, usize, &str, &str)> = Vec::new();
    for (id, t) in v.tokens.iter().enumerate() {
        // Control, unused and byte tokens are never the result of a merge.
        if matches!(ty(id), 3 | 5 | 6) {
            continue;
        }
        for (cut, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(cut);
            if let (Some(&ia), Some(_)) = (ids.get(a), ids.get(b)) {
                merges.push((id, ia, a, b));
            }
        }
    }
    merges.sort_by(|x, y| {
        score(y.0)
            .total_cmp(&score(x.0))
            .then(x.0.cmp(&y.0))
            .then(x.1.cmp(&y.1))
    });
    let merges: Vec<Value> = merges.iter().map(|&(_, _, a, b)| json!([a, b])).collect();
    let vocab: serde_json::Map<String, Value> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_owned(), json!(i)))
        .collect();
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if v.add_space_prefix {
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let unk = v
        .unk
        .and_then(|u| v.tokens.get(u as usize))
        .map(str::to_owned);
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(v),
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": bos_post_processor(v),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    })
}

/// An HF `tokenizer.json` for a GGUF `gpt2` (byte-level BPE) vocabulary.
fn gpt2_tokenizer_json(v: &crate::tokenizer::Vocab) -> Value {
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
        .map(|(i, t)| (t.to_owned(), json!(i)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(v),
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": bos_post_processor(v),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": v.merges.iter().collect::<Vec<_>>()},
    })
}
