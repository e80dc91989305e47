//! `patchbay convert`: export a GGUF model or a llama2.c checkpoint as an HF
//! safetensors directory.

use std::path::PathBuf;

use anyhow::{bail, Result};
use patchbay_models::catalog;
use patchbay_models::runners::convert::{convert_with_layers, ConvertOptions, ExportDType};

/// Arguments of `patchbay convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Model short name or path (a Llama-family or Gemma 3 GGUF, or a
    /// llama2.c checkpoint with its tokenizer.bin/tok*.bin beside it).
    #[arg(short, long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Target format (only `safetensors`).
    #[arg(long, default_value = "safetensors")]
    pub to: String,
    /// Element type of the written weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Output directory (created if needed; must be empty unless --force).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace the files of an existing non-empty output directory.
    #[arg(long)]
    pub force: bool,
    /// Write the model re-wired by a plan of layers and repeats (`0-23,8-29`),
    /// or by a mergekit passthrough merge (`@merge.yml`); repeated layers are
    /// written under their new indices.
    #[arg(long, value_name = "PLAN")]
    pub layers: Option<String>,
}

/// Runs `patchbay convert`.
pub fn run(args: &ConvertArgs) -> Result<()> {
    if args.to != "safetensors" {
        bail!("--to {}: only 'safetensors' is supported", args.to);
    }
    let Some(dtype) = ExportDType::parse(&args.dtype) else {
        bail!("--dtype {}: expected f32, f16 or bf16", args.dtype);
    };
    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    let opts = ConvertOptions {
        dtype,
        force: args.force,
    };
    let plan = match &args.layers {
        Some(text) => {
            let source = patchbay_models::families::open(&path)?;
            Some(crate::common::plan_of(text, source.hparams().n_layer)?)
        }
        None => None,
    };
    let bar = crate::common::busy(&path, "converting");
    let files = convert_with_layers(&path, &args.output, &opts, plan.as_ref());
    bar.finish_and_clear();
    for f in files? {
        outln!("{}", f.display());
    }
    Ok(())
}
