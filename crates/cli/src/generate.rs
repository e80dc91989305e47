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
    #[arg(short = 'n', long, default_value_t = 128, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub n_predict: usize,
    /// Treat each non-empty line of the prompt text (`-f FILE`) as a prompt of
    /// its own and continue them all together, several sequences per forward
    /// pass; each completion is printed after a `--- INDEX (why it stopped) ---`
    /// line, in the order of the prompts.
    #[arg(long)]
    pub batch_prompts: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Runs `patchbay generate`.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let text = common::prompt_text(&args.prompt, &args.file)?;
    if args.batch_prompts {
        let prompts: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        if prompts.is_empty() {
            anyhow::bail!("--batch-prompts: the prompt text has no non-empty line");
        }
        return common::with_session(
            &args.model,
            args.sampling.config()?,
            GenerateBatch { args, prompts },
        );
    }
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

struct GenerateBatch<'a> {
    args: &'a GenerateArgs,
    prompts: Vec<String>,
}

impl SessionJob for GenerateBatch<'_> {
    type Output = Result<()>;
    fn run<N: Layer>(self, mut session: Session<N>) -> Result<()> {
        let mut seqs = Vec::with_capacity(self.prompts.len());
        for (i, p) in self.prompts.iter().enumerate() {
            let tokens = session.tokenizer.encode(p, true);
            if tokens.len() >= session.max_context() {
                anyhow::bail!(
                    "prompt {i} has {} tokens; the context holds {} (raise --max-context, up to the model's limit)",
                    tokens.len(),
                    session.max_context()
                );
            }
            seqs.push(tokens);
        }
        let t0 = std::time::Instant::now();
        let done = session.generate_batch(&seqs, self.args.n_predict, |_, _| Step::Continue)?;
        let secs = t0.elapsed().as_secs_f64();
        let mut text = String::new();
        for (i, c) in done.iter().enumerate() {
            // Decoded as `generate` streams a single completion, so each
            // matches what the prompt alone would print.
            let mut dec = session.tokenizer.stream();
            text.push_str(&format!("--- {i} ({}) ---\n", c.stop));
            for &t in &c.tokens {
                text.push_str(&dec.push(t));
            }
            text.push_str(&dec.finish());
            text.push('\n');
        }
        common::write_stdout(text.as_bytes())?;
        let generated: usize = done.iter().map(|c| c.tokens.len()).sum();
        let prompt_tokens: usize = seqs.iter().map(Vec::len).sum();
        eprintln!(
            "load {:.0} ms | {} prompts, {prompt_tokens} prompt tokens | generated {generated} tokens in {secs:.2} s ({:.1} t/s overall) | {} threads",
            session.load_time.as_secs_f64() * 1e3,
            seqs.len(),
            (prompt_tokens + generated) as f64 / secs.max(1e-9),
            session.threads()
        );
        Ok(())
    }
}
