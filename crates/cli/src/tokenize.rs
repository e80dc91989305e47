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

/// Runs `patchbay tokenize`: prints the ids as a JSON array, or with
/// `--pieces` an array of `[id, "piece"]`.
pub fn run(args: &TokenizeArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use patchbay_models::{catalog, tokenizer::Tokenizer};

    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    let tok = Tokenizer::load(&path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    let special = !args.no_special;
    let ids = tok.encode_with(&args.text, special, special);
    let json = if args.pieces {
        let rows: Vec<serde_json::Value> = ids
            .iter()
            .map(|&id| {
                let piece = String::from_utf8_lossy(&tok.token_piece(id)).into_owned();
                serde_json::json!([id, piece])
            })
            .collect();
        serde_json::to_string(&rows)?
    } else {
        serde_json::to_string(&ids)?
    };
    outln!("{json}");
    Ok(())
}
