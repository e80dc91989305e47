//! `patchbay inspect MODEL`.

/// Arguments of `patchbay inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Model short name or path.
    pub model: String,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Runs `patchbay inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("inspect {}: not implemented yet", args.model)
}
