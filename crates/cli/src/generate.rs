//! `patchbay generate`: stream a continuation of a prompt.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use patchbay_combinators::{Layer, Step, PLAN_HELP};
use patchbay_models::runners::session::{GenStats, Session, SessionJob, StopReason};

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
                "{}",
                crate::common::context_advice(
                    tokens.len(),
                    session.max_context(),
                    args.model.max_context
                )
            );
        }
        let mut out = std::io::stdout().lock();
        let tok = session.tokenizer.clone();
        let mut dec = tok.stream();
        // A closed pipe (`| head`) stops quietly; any other write error (a
        // full disk) stops and fails the command once the summary is out.
        let mut lost: Option<std::io::Error> = None;
        let mut write = |out: &mut std::io::StdoutLock<'_>, s: &str| -> bool {
            match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
                Ok(()) => true,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        lost = Some(e);
                    }
                    false
                }
            }
        };
        let mut open = true;
        let stats = session.generate(&tokens, args.n_predict, |t| {
            let piece = dec.push(t);
            if !write(&mut out, &piece) {
                open = false;
                return Step::Stop;
            }
            Step::Continue
        })?;
        if open {
            let tail = dec.finish() + "\n";
            write(&mut out, &tail);
        }
        eprintln!("{}", summary(&session, &stats, args));
        if let Some(e) = lost {
            return Err(anyhow::Error::new(e).context("writing the generated text to stdout"));
        }
        Ok(())
    }
}

/// The summary line: only figures that mean something (no rate for a
/// single token or none), the time to the first token, and why it stopped.
fn summary<N: Layer>(session: &Session<N>, stats: &GenStats, args: &GenerateArgs) -> String {
    let mut parts = vec![format!(
        "load {:.0} ms",
        session.load_time.as_secs_f64() * 1e3
    )];
    match stats.time_to_first_token() {
        Some(ttft) => {
            parts.push(format!(
                "prompt {} tokens, {:.1} t/s",
                stats.prompt_tokens,
                stats.prompt_tps()
            ));
            parts.push(format!("first token {:.0} ms", ttft.as_secs_f64() * 1e3));
        }
        None => parts.push(format!("prompt {} tokens, not run", stats.prompt_tokens)),
    }
    if stats.gen_tokens >= 2 {
        parts.push(format!(
            "generated {} tokens, {:.1} t/s",
            stats.gen_tokens,
            stats.gen_tps()
        ));
    } else {
        parts.push(format!("generated {} tokens", stats.gen_tokens));
    }
    parts.push(format!("{} threads", session.threads()));
    let why = match stats.stop {
        StopReason::MaxTokens => format!("stopped: token limit reached (-n {})", args.n_predict),
        StopReason::ContextFull => format!(
            "stopped: context full (it holds {} tokens) before -n {} tokens",
            session.max_context(),
            args.n_predict
        ),
        StopReason::EndOfSequence => "stopped: end of sequence".to_string(),
        StopReason::Caller => "stopped: output closed".to_string(),
    };
    format!("{}\n{why}", parts.join(" | "))
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
                let advice = crate::common::context_advice(
                    tokens.len(),
                    session.max_context(),
                    self.args.model.max_context,
                );
                anyhow::bail!("prompt {i}: {advice}");
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
