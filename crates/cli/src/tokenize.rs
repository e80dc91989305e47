//! `patchbay tokenize -m MODEL TEXT`.

/// Arguments of `patchbay tokenize`.
#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// Model short name or path.
    #[arg(short, long, default_value = "smollm2-135m")]
    pub model: String,
    /// The text to tokenize.
    pub text: String,
    /// Show each token's piece beside its id.
    #[arg(long)]
    pub pieces: bool,
    /// Do not add BOS or parse special tokens.
    #[arg(long)]
    pub no_special: bool,
}

/// Runs `patchbay tokenize`.
pub fn run(args: &TokenizeArgs) -> anyhow::Result<()> {
    anyhow::bail!("tokenize {:?}: not implemented yet", args.text)
}
