//! `patchbay graph`: the composed type of a model, drawn from the layers'
//! own descriptions — the very pipeline that runs, with `--layers` applied.

use std::path::PathBuf;

use anyhow::{Context, Result};
use patchbay_combinators::{graph, GraphFormat, Layer, PLAN_HELP};
use patchbay_models::catalog;
use patchbay_models::families::{self, BuildOptions, CausalLmVisitor, Model};

use crate::common;

/// Arguments of `patchbay graph`.
#[derive(clap::Args, Debug)]
#[command(after_help = PLAN_HELP)]
pub struct GraphArgs {
    /// Model short name or path.
    #[arg(short, long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Re-wire the decoder layers (see below), e.g. `0-9,11-29`.
    #[arg(long, value_name = "PLAN")]
    pub layers: Option<String>,
    /// text, dot, svg or mermaid.
    #[arg(long, default_value = "text")]
    pub format: GraphFormat,
    /// Write to this file instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

struct Describe;

impl CausalLmVisitor for Describe {
    type Output = patchbay_combinators::Node;
    fn visit<N: Layer>(self, model: Model<N>) -> Self::Output {
        model.net.describe()
    }
}

/// Runs `patchbay graph`.
pub fn run(args: &GraphArgs) -> Result<()> {
    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    let source = families::open(&path)?;
    let opts = BuildOptions {
        plan: common::parse_plan(args.layers.as_deref(), &source)?,
        // Only the tables are sized by it: keep them small.
        max_context: 16,
    };
    let node = families::with_model(&source, &opts, Describe)?;
    let text = graph::render(&node, args.format);
    match &args.output {
        Some(file) => std::fs::write(file, text.as_bytes())
            .with_context(|| format!("writing {}", file.display()))?,
        None => common::write_stdout(text.as_bytes())?,
    }
    Ok(())
}
