//! `patchbay generate`: stream a continuation of a prompt.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use patchbay_combinators::{Layer, Step, PLAN_HELP};
use patchbay_models::runners::session::{Session, SessionJob};

use crate::common::{self, ModelArgs, SamplingArgs};

/// Arguments of `patchbay generate`.
#[derive(clap::Args, Debug)]
#[command(after_help = PLAN_HELP)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// Read the prompt from a file (`-` for stdin).
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Runs `patchbay generate`.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let text = common::prompt_text(&args.prompt, &args.file)?;
    common::with_session(
        &args.model,
        args.sampling.config()?,
        Generate { args, text },
    )
}

struct Generate<'a> {
    args: &'a GenerateArgs,
    text: String,
}

impl SessionJob for Generate<'_> {
    type Output = Result<()>;
    fn run<N: Layer>(self, mut session: Session<N>) -> Result<()> {
        let args = self.args;
        let tokens = session.tokenizer.encode(&self.text, true);
        if tokens.is_empty() {
            anyhow::bail!(
                "the prompt is empty and this model adds no BOS token: nothing to continue from"
            );
        }
        if tokens.len() >= session.max_context() {
            anyhow::bail!(
                "the prompt has {} tokens; the context holds {} (raise --max-context, up to the model's limit)",
                tokens.len(),
                session.max_context()
            );
        }
        let mut out = std::io::stdout().lock();
        let tok = session.tokenizer.clone();
        let mut dec = tok.stream();
        let stats = session.generate(&tokens, args.n_predict, |t| {
            let piece = dec.push(t);
            if out
                .write_all(piece.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                return Step::Stop; // stdout closed (e.g. piped into head)
            }
            Step::Continue
        })?;
        let _ = out.write_all(dec.finish().as_bytes());
        let _ = writeln!(out);
        eprintln!(
            "load {:.0} ms | prompt {} tokens, {:.1} t/s | generated {} tokens, {:.1} t/s | {} threads",
            session.load_time.as_secs_f64() * 1e3,
            stats.prompt_tokens,
            stats.prompt_tps(),
            stats.gen_tokens,
            stats.gen_tps(),
            session.threads()
        );
        Ok(())
    }
}
