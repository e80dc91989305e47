//! `patchbay inspect MODEL`.

use patchbay_models::catalog::resolve_model;
use patchbay_models::families::{self, gemma3, Family};
use patchbay_models::formats::source::{HParams, RopeScaling};
use patchbay_primitives::rope::RopeLayout;
use serde_json::json;

/// Arguments of `patchbay inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Model short name or path.
    pub model: String,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,
}

fn scaling_json(r: &RopeScaling) -> serde_json::Value {
    match *r {
        RopeScaling::None => serde_json::Value::Null,
        RopeScaling::Linear { factor } => json!({"type": "linear", "factor": factor}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => json!({
            "type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position": original_max_position,
        }),
    }
}

fn scaling_text(r: &RopeScaling) -> String {
    match *r {
        RopeScaling::None => String::new(),
        RopeScaling::Linear { factor } => format!(" scaling linear x{factor}"),
        RopeScaling::Llama3 {
            factor,
            original_max_position,
            ..
        } => format!(" scaling llama3 x{factor} (from {original_max_position})"),
    }
}

/// The hyper-parameters as the file declares them (`null`: not stated).
fn hparams_json(h: &HParams) -> serde_json::Value {
    json!({
        "arch": h.arch,
        "model_class": h.model_class,
        "n_vocab": h.n_vocab,
        "n_embd": h.n_embd,
        "n_layer": h.n_layer,
        "n_head": h.n_head,
        "n_head_kv": h.n_head_kv,
        "n_ff": h.n_ff,
        "head_dim": h.head_dim,
        "head_dim_v": h.head_dim_v,
        "n_ctx": h.n_ctx,
        "rope_dim": h.rope_dim,
        "rope_base": h.rope_base,
        "rope_base_local": h.rope_base_local,
        "rope_scaling": scaling_json(&h.rope_scaling),
        "norm_eps": h.norm_eps,
        "sliding_window": h.sliding_window,
        "sliding_window_pattern": h.sliding_window_pattern,
        "causal": h.causal,
        "tied_embeddings": h.tied_embeddings,
    })
}

fn rope_name(r: Option<RopeLayout>) -> &'static str {
    match r {
        None => "none",
        Some(RopeLayout::Interleaved) => "interleaved",
        Some(RopeLayout::HalfSplit) => "half-split (neox)",
    }
}

fn human_bytes(b: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// Runs `patchbay inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let path = resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    let src = families::open(&path).map_err(|e| crate::common::loading(&path, e))?;
    let h = src.hparams();
    let family = Family::of(h);
    let rope = match family {
        Some(f) => rope_name(f.rope_layout(&src)),
        None => "unknown (architecture not supported)",
    };
    let causal = family.map(|f| f.causal(h)).or(h.causal);
    // Gemma 3's local layers: what the file states, else the family's defaults.
    let (rope_base_local, window_pattern) = match family {
        Some(Family::Gemma3) => (
            Some(gemma3::rope_base_local(h)),
            Some(gemma3::sliding_window_pattern(h)),
        ),
        _ => (h.rope_base_local, h.sliding_window_pattern),
    };
    // What the decoders do: the head is the embedding when there is no
    // output.weight.
    let tied = match family {
        Some(Family::Llama | Family::Gemma3 | Family::Gpt2 | Family::Phi) => {
            Some(src.try_tensor("output.weight")?.is_none())
        }
        _ => h.tied_embeddings,
    };
    let tensors = src.tensor_entries();
    let total_bytes: usize = tensors.iter().map(|t| t.bytes).sum();
    let params = src.parameter_count();
    let format = match src.gguf() {
        Some(g) => format!("gguf v{}", g.version()),
        None => src.format().name().to_owned(),
    };
    let tokenizer = src.tokenizer_kind();

    if args.json {
        let out = json!({
            "path": path.display().to_string(),
            "format": format,
            "architecture": src.arch(),
            "family": family.map(Family::name),
            "rope_layout": rope,
            "causal": causal,
            "tied_embeddings": tied,
            "tokenizer": tokenizer,
            "hparams": hparams_json(h),
            "parameters": params,
            "tensor_bytes": total_bytes,
            "tensors": tensors.iter().map(|t| json!({
                "name": t.name,
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "bytes": t.bytes,
            })).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    outln!("model:        {}", path.display());
    outln!("format:       {format}");
    outln!(
        "architecture: {}{}",
        src.arch(),
        match (&h.model_class, family) {
            (Some(c), Some(f)) => format!(" ({c}, family {})", f.name()),
            (Some(c), None) => format!(" ({c}, no family)"),
            (None, Some(f)) => format!(" (family {})", f.name()),
            (None, None) => " (no family)".into(),
        }
    );
    outln!(
        "tokenizer:    {}",
        tokenizer.as_deref().unwrap_or("(none found)")
    );
    outln!("rope layout:  {rope}");
    outln!(
        "parameters:   {params} ({:.2} M), {} of tensor data",
        params as f64 / 1e6,
        human_bytes(total_bytes)
    );
    outln!("hyper-parameters:");
    outln!(
        "  vocab {}  width {}  layers {}  heads {} / {} kv  head dim {} (v {})  ffn {}",
        h.n_vocab,
        h.n_embd,
        h.n_layer,
        h.n_head,
        h.n_head_kv,
        h.head_dim,
        h.head_dim_v,
        h.n_ff
    );
    outln!(
        "  context {}  rope dim {}  rope base {}{}{}  norm eps {:e}",
        h.n_ctx,
        h.rope_dim.map_or("-".into(), |d| d.to_string()),
        h.rope_base,
        rope_base_local.map_or(String::new(), |b| format!(" (local {b})")),
        scaling_text(&h.rope_scaling),
        h.norm_eps
    );
    if let Some(w) = h.sliding_window {
        outln!(
            "  sliding window {w}{}",
            window_pattern.map_or(String::new(), |p| format!(", every {p}th layer global"))
        );
    }
    let stated = |b: Option<bool>| b.map_or("-".to_string(), |b| b.to_string());
    outln!(
        "  causal {}  tied embeddings {}",
        stated(causal),
        stated(tied)
    );
    outln!("tensors ({}):", tensors.len());
    let w = tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "  {:<w$}  {:<5}  {:<20}  {:>12}",
        "name",
        "dtype",
        "shape",
        "bytes"
    );
    for t in &tensors {
        outln!(
            "  {:<w$}  {:<5}  {:<20}  {:>12}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.bytes
        );
    }
    Ok(())
}
