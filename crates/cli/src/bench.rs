//! `patchbay bench`: prompt processing and generation speed, as `llama-bench`
//! measures them (pp: a batch of N prompt tokens; tg: N tokens decoded one by
//! one), on synthetic token ids so the tokenizer plays no part. For an encoder
//! (all-MiniLM-L6-v2): sentences per second embedding the first non-blank
//! lines of the WikiText-2 test file, one text a line, tokenizer included.

use std::time::Instant;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use patchbay_combinators::{Capacity, Ctx, Layer, Rows, Scratch};
use patchbay_models::catalog;
use patchbay_models::families::{self, BuildOptions, CausalLmVisitor, Kind, Model};
use patchbay_models::runners::embed::{Embedder, EmbedderOptions};
use patchbay_primitives::quant::DotMode;
use patchbay_primitives::{Act, Simd, Threads};

/// Arguments of `patchbay bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model short name or path.
    #[arg(short, long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Prompt tokens per prompt-processing run (0 to skip).
    #[arg(short = 'p', long, default_value_t = 128, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub n_prompt: usize,
    /// Tokens per generation run (0 to skip).
    #[arg(short = 'n', long, default_value_t = 64, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub n_gen: usize,
    /// Repetitions (the figure is their mean).
    #[arg(short = 'r', long, default_value_t = 3, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub repetitions: usize,
    /// Worker threads (0 = one per core).
    #[arg(short = 't', long, default_value_t = 0, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub threads: usize,
    /// Int8 activations for quantised weights (as `generate --fast`); the
    /// default is the exact f32 path that `generate` uses by default.
    #[arg(long)]
    pub fast: bool,
    /// Encoders: how many non-blank lines of the WikiText-2 test file to embed.
    #[arg(long, default_value_t = 512, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub texts: usize,
    /// Encoders: texts per forward group.
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch: usize,
}

/// The most tokens (`-p` + `-n`) a bench run may ask for, whatever context a
/// model file claims.
const MAX_BENCH_TOKENS: usize = 1 << 20;

/// Runs `patchbay bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    let source = patchbay_models::families::open(&path)?;
    if families::family_of(&source)?.kind() == Kind::Encoder {
        return bench_encoder(args, &path);
    }
    // -p and -n share one KV cache: together they must fit the model's
    // context (and a sane bound, should a file claim a huge one).
    let limit = source.hparams().n_ctx.clamp(1, MAX_BENCH_TOKENS);
    let ctx_len = args.n_prompt.saturating_add(args.n_gen);
    if ctx_len > limit {
        anyhow::bail!(
            "-p {} + -n {} = {ctx_len} tokens do not fit the model's context: \
             -p and -n must add up to at most {limit}",
            args.n_prompt,
            args.n_gen
        );
    }
    let ctx_len = ctx_len.max(1);
    crate::common::warn_if_capped(args.threads);
    let opts = BuildOptions {
        dot_mode: if args.fast {
            DotMode::Q8
        } else {
            DotMode::Exact
        },
        max_context: ctx_len,
        plan: None,
    };
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    families::with_causal_lm(&source, &opts, Bench { args, name })?
}

/// The shared reference data (`corpus/`, `golden/`): `$PATCHBAY_SHARED`,
/// else `shared/` beside the workspace root (as the tests resolve it).
fn shared_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PATCHBAY_SHARED") {
        return PathBuf::from(p);
    }
    // CARGO_MANIFEST_DIR is crates/cli.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// Sentences per second of an encoder over the first `args.texts` non-blank
/// lines of WikiText-2's test file, embedded in file order.
fn bench_encoder(args: &BenchArgs, path: &Path) -> Result<()> {
    let corpus = shared_dir().join("corpus").join("wikitext-2-test.txt");
    let text = std::fs::read_to_string(&corpus).with_context(|| {
        format!(
            "reading the benchmark corpus {} (set PATCHBAY_SHARED to the shared directory)",
            corpus.display()
        )
    })?;
    let texts: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(args.texts.max(1))
        .collect();
    if args.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let opts = EmbedderOptions {
        threads: args.threads,
        batch: args.batch,
        ..EmbedderOptions::default()
    };
    let mut embedder = Embedder::open(path, &opts)?;
    let tokens: usize = texts.iter().map(|t| embedder.tokenize(t).len()).sum();
    embedder.embed(&texts[..texts.len().min(4)])?; // warm-up
    let reps = args.repetitions.max(1);
    let t0 = Instant::now();
    for _ in 0..reps {
        embedder.embed(&texts)?;
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    outln!("| model | threads | simd | texts | tokens | batch | sentences/s | tokens/s |\n|---|---|---|---|---|---|---|---|");
    outln!(
        "| {name} | {} | {} | {} | {tokens} | {} | {:.2} | {:.1} |",
        embedder.threads(),
        Simd::detect().level(),
        texts.len(),
        args.batch,
        (texts.len() * reps) as f64 / secs,
        (tokens * reps) as f64 / secs
    );
    Ok(())
}

struct Bench<'a> {
    args: &'a BenchArgs,
    name: String,
}

impl CausalLmVisitor for Bench<'_> {
    type Output = Result<()>;
    fn visit<N: Layer>(self, model: Model<N>) -> Result<()> {
        let (args, name) = (self.args, self.name);
        let ctx_len = (args.n_prompt + args.n_gen).max(1);
        let threads = Threads::new(args.threads);
        let scratch = Scratch::new();
        let simd = Simd::detect();
        let vocab = model.info.vocab;
        let cap = Capacity::new(args.n_prompt.max(1), ctx_len);
        let mut st = model.net.new_state(cap);
        let mut out = Act::default();
        // Deterministic pseudo-random ids, as llama-bench uses random tokens.
        let ids: Vec<f32> = (0..ctx_len)
            .map(|i| ((i as u64 * 2_654_435_761 + 12345) % vocab as u64) as f32)
            .collect();
        let reps = args.repetitions.max(1);
        outln!("| model | threads | simd | mode | test | t/s |\n|---|---|---|---|---|---|");
        let mode = if args.fast { "q8" } else { "exact" };
        let row = |test: String, tps: f64| -> Result<()> {
            outln!(
                "| {name} | {} | {} | {mode} | {test} | {tps:.2} |",
                threads.count(),
                simd.level()
            );
            Ok(())
        };
        if args.n_prompt > 0 {
            let x = Act::from_vec(args.n_prompt, 1, ids[..args.n_prompt].to_vec())?;
            let ctx = Ctx::new(simd, &threads, &scratch).with_rows(Rows::Last);
            model.net.forward(&x, &mut out, &mut st, &ctx)?; // warm-up
            let t0 = Instant::now();
            for _ in 0..reps {
                model.net.reset(&mut st);
                model.net.forward(&x, &mut out, &mut st, &ctx)?;
            }
            row(
                format!("pp{}", args.n_prompt),
                (args.n_prompt * reps) as f64 / t0.elapsed().as_secs_f64(),
            )?;
        }
        if args.n_gen > 0 {
            let mut x = Act::zeros(1, 1);
            let mut total = 0.0;
            for _ in 0..reps {
                model.net.reset(&mut st);
                let t0 = Instant::now();
                for (pos, &id) in ids.iter().enumerate().take(args.n_gen) {
                    x.as_mut_slice()[0] = id;
                    let ctx = Ctx::new(simd, &threads, &scratch)
                        .at(pos)
                        .with_rows(Rows::Last);
                    model.net.forward(&x, &mut out, &mut st, &ctx)?;
                }
                total += t0.elapsed().as_secs_f64();
            }
            row(
                format!("tg{}", args.n_gen),
                (args.n_gen * reps) as f64 / total,
            )?;
        }
        Ok(())
    }
}
