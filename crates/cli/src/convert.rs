//! `patchbay convert`: export a GGUF model as an HF safetensors directory.

use std::path::PathBuf;

use anyhow::{bail, Result};
use patchbay_models::catalog;
use patchbay_models::runners::convert::{to_safetensors, ExportDType};

/// Arguments of `patchbay convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Model short name or path (a Llama-family or Gemma 3 GGUF).
    #[arg(short, long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Target format (only `safetensors`).
    #[arg(long, default_value = "safetensors")]
    pub to: String,
    /// Element type of the written weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Output directory (created if needed).
    #[arg(short, long)]
    pub output: PathBuf,
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
    for f in to_safetensors(&path, &args.output, dtype)? {
        println!("{}", f.display());
    }
    Ok(())
}
