//! `patchbay logits`: per-position logsumexp and top-k logits as JSON, in the
//! shape of `../shared/golden` files, plus an optional greedy continuation.
//! External checks use this interface: keep it stable.

use anyhow::Result;
use patchbay_combinators::{Layer, Step, PLAN_HELP};
use patchbay_models::runners::session::{Session, SessionJob};
use serde_json::json;

use crate::common::{self, ModelArgs};

/// Arguments of `patchbay logits`.
#[derive(clap::Args, Debug)]
#[command(after_help = PLAN_HELP)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-` for stdin).
    #[arg(short, long)]
    pub file: Option<std::path::PathBuf>,
    /// How many of the best `[id, logit]` pairs to print per position.
    #[arg(long, default_value_t = 10, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub top: usize,
    /// Also print the greedy continuation of N tokens.
    #[arg(long, default_value_t = 0, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub greedy: usize,
    /// JSON output (the default is a readable table).
    #[arg(long)]
    pub json: bool,
    /// Do not add BOS or parse special tokens.
    #[arg(long)]
    pub no_special: bool,
}

/// Runs `patchbay logits`.
pub fn run(args: &LogitsArgs) -> Result<()> {
    let text = common::prompt_text(&args.prompt, &args.file)?;
    common::with_session(
        &args.model,
        patchbay_blocks::SamplerConfig::greedy(),
        Logits { args, text },
    )
}

struct Logits<'a> {
    args: &'a LogitsArgs,
    text: String,
}

impl SessionJob for Logits<'_> {
    type Output = Result<()>;
    fn run<N: Layer>(self, mut session: Session<N>) -> Result<()> {
        let (args, text) = (self.args, self.text);
        let tokens = session.tokenizer.encode(&text, !args.no_special);
        if tokens.is_empty() {
            anyhow::bail!("the prompt has no tokens");
        }
        let vocab = session.info.vocab;
        let logits = session.logits(&tokens)?.clone();
        let mut positions = Vec::with_capacity(tokens.len());
        for i in 0..tokens.len() {
            let row = &logits.as_slice()[i * vocab..(i + 1) * vocab];
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            let mut idx: Vec<usize> = (0..vocab).collect();
            let k = args.top.min(vocab).max(1);
            idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            idx.truncate(k);
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let top: Vec<_> = idx.iter().map(|&j| json!([j, row[j]])).collect();
            positions.push(json!({"logsumexp": lse, "top": top}));
        }
        let mut greedy = Vec::new();
        if args.greedy > 0 {
            session.reset();
            session.generate_raw(&tokens, args.greedy, |t| {
                greedy.push(t);
                Step::Continue
            })?;
        }
        let greedy_text = session.tokenizer.decode(&greedy);
        if args.json {
            let out = json!({
                "prompt": text,
                "add_special": !args.no_special,
                "tokens": tokens,
                "positions": positions,
                "greedy": greedy,
                "greedy_text": greedy_text,
            });
            outln!("{}", serde_json::to_string(&out)?);
        } else {
            for (i, p) in positions.iter().enumerate() {
                outln!(
                    "pos {i:4} token {:6} lse {:.4} top {}",
                    tokens[i],
                    p["logsumexp"],
                    p["top"]
                );
            }
            if !greedy.is_empty() {
                outln!("greedy: {greedy:?}\n{greedy_text}");
            }
        }
        Ok(())
    }
}
