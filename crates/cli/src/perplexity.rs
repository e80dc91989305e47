//! `patchbay perplexity`: llama.cpp's perplexity over a text file.

use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use patchbay_combinators::{Layer, PLAN_HELP};
use patchbay_models::runners::perplexity;
use patchbay_models::runners::session::{Session, SessionJob};

use crate::common::{self, ModelArgs};

/// Arguments of `patchbay perplexity`.
#[derive(clap::Args, Debug)]
#[command(after_help = PLAN_HELP)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text file to score.
    #[arg(short, long)]
    pub file: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub ctx: usize,
    /// Score at most N chunks (0 = all).
    #[arg(long, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub chunks: Option<usize>,
}

/// Runs `patchbay perplexity`.
pub fn run(args: &PerplexityArgs) -> Result<()> {
    let text = common::read_text_file(&args.file)?;
    let mut model = args.model.clone();
    model.max_context = model.max_context.max(args.ctx);
    common::with_session(
        &model,
        patchbay_blocks::SamplerConfig::greedy(),
        Score { args, text },
    )
}

struct Score<'a> {
    args: &'a PerplexityArgs,
    text: String,
}

impl SessionJob for Score<'_> {
    type Output = Result<()>;
    fn run<N: Layer>(self, mut session: Session<N>) -> Result<()> {
        let (args, text) = (self.args, self.text);
        let t0 = std::time::Instant::now();
        let tokens = session.tokenizer.encode(&text, true);
        eprintln!(
            "tokenized {} tokens in {:.2} s",
            tokens.len(),
            t0.elapsed().as_secs_f64()
        );
        let n = perplexity::chunk_count(tokens.len(), args.ctx, args.chunks);
        let bar = ProgressBar::new(n as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} chunks, {msg} [{elapsed_precise} < {eta}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let t1 = std::time::Instant::now();
        let result =
            perplexity::perplexity(&mut session, &tokens, args.ctx, args.chunks, |i, _, acc| {
                bar.set_message(format!("PPL {:.4}", acc.ppl()));
                bar.set_position(i as u64 + 1);
                bar.println(format!("[{}] {:.4}", i + 1, acc.ppl()));
            })?;
        bar.finish_and_clear();
        let secs = t1.elapsed().as_secs_f64();
        outln!(
            "Final estimate: PPL = {:.4} +/- {:.5}  ({} chunks of {}, {} tokens scored, {:.1} t/s)",
            result.ppl(),
            result.std_error(),
            n,
            args.ctx,
            result.count,
            (n * args.ctx) as f64 / secs.max(1e-9)
        );
        Ok(())
    }
}
