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
    use patchbay_models::formats::gguf::Gguf;
    use patchbay_models::{catalog, tokenizer::Tokenizer};

    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    if path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        // A .gguf path: report what is wrong with it as a GGUF (bad magic,
        // truncation, no vocabulary), not a guess at other formats.
        let gguf = Gguf::open(&path).map_err(|e| crate::common::loading(&path, e))?;
        for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens"] {
            if gguf.get(key).is_none() {
                anyhow::bail!(
                    "{}: this GGUF has no tokenizer metadata (key '{key}' not found), so it cannot tokenize; use a GGUF that embeds its vocabulary",
                    path.display()
                );
            }
        }
    }
    let tok = Tokenizer::load(&path).map_err(|e| {
        let e = anyhow::Error::new(e);
        if crate::common::render_error(&e).contains(&path.display().to_string()) {
            e.context("loading the tokenizer")
        } else {
            e.context(format!("loading the tokenizer of {}", path.display()))
        }
    })?;
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
