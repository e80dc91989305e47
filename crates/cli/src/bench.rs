//! `patchbay bench`: prompt processing and generation speed, as `llama-bench`
//! measures them (pp: a batch of N prompt tokens; tg: N tokens decoded one by
//! one), on synthetic token ids so the tokenizer plays no part. For an encoder
//! (all-MiniLM-L6-v2): sentences per second embedding the first non-blank
//! lines of the WikiText-2 test file, one text a line, tokenizer included.

use std::time::Instant;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use patchbay_combinators::{Capacity, Ctx, KvType, Layer, Rows, Scratch};
use patchbay_models::catalog;
use patchbay_models::families::{self, BuildOptions, CausalLmVisitor, Kind, Model};
use patchbay_models::runners::embed::{Embedder, EmbedderOptions};
use patchbay_models::runners::session::first_non_finite;
use patchbay_models::ModelSource;
use patchbay_primitives::{kernels, Act, Simd, Threads};

/// Arguments of `patchbay bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model short names or paths, comma-separated (each is benchmarked in turn).
    #[arg(short, long, value_delimiter = ',', default_value = catalog::DEFAULT_MODEL)]
    pub model: Vec<String>,
    /// Prompt tokens per prompt-processing run, comma-separated (each is a
    /// test, as llama-bench's `-p`; 0 to skip).
    #[arg(short = 'p', long, value_delimiter = ',', default_value = "128", value_parser = crate::common::count, allow_negative_numbers = true)]
    pub n_prompt: Vec<usize>,
    /// Tokens per generation run, comma-separated (each is a test, as
    /// llama-bench's `-n`; 0 to skip).
    #[arg(short = 'n', long, value_delimiter = ',', default_value = "64", value_parser = crate::common::count, allow_negative_numbers = true)]
    pub n_gen: Vec<usize>,
    /// A prompt of PP tokens then TG tokens generated, timed together as
    /// one test (`ppPP+tgTG`, tokens/s over both), as llama-bench's `-pg`
    /// (which is also accepted); repeat the flag for more.
    #[arg(long = "pg", value_name = "PP,TG", value_parser = prompt_gen)]
    pub prompt_gen: Vec<(usize, usize)>,
    /// Repetitions: each is one sample; the table shows their mean ± stddev.
    #[arg(short = 'r', long, default_value_t = 5, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub repetitions: usize,
    /// Tokens already in the context before each test, comma-separated, as
    /// llama-bench's `-d`: pp and tg then run at positions `depth..`, their
    /// attention over the earlier tokens too (the depth's prompt is not timed).
    #[arg(short = 'd', long, value_delimiter = ',', default_value = "0", value_parser = crate::common::count, allow_negative_numbers = true)]
    pub depth: Vec<usize>,
    /// Worker thread counts, comma-separated (0 = one per core).
    #[arg(short = 't', long, value_delimiter = ',', default_value = "0", value_parser = crate::common::count, allow_negative_numbers = true)]
    pub threads: Vec<usize>,
    /// KV cache key types, comma-separated (f32, f16), as llama-bench's
    /// `-ctk`: each is benchmarked with each value type.
    #[arg(
        long,
        visible_alias = "ctk",
        value_delimiter = ',',
        default_value = "f32",
        value_name = "f32|f16"
    )]
    pub cache_type_k: Vec<KvType>,
    /// KV cache value types, comma-separated, as llama-bench's `-ctv`.
    #[arg(
        long,
        visible_alias = "ctv",
        value_delimiter = ',',
        default_value = "f32",
        value_name = "f32|f16"
    )]
    pub cache_type_v: Vec<KvType>,
    /// Print every sample as JSON (one array of records) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Skip the read-bandwidth probe that tg's bandwidth share is measured
    /// against.
    #[arg(long)]
    pub no_probe: bool,
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

/// Bytes the read-bandwidth probe streams per pass: far larger than any
/// last-level cache here, so it measures memory, not cache.
const PROBE_BYTES: usize = 512 << 20;

/// One benchmark result: every sample and where it came from.
#[derive(Debug, Clone, serde::Serialize)]
struct Record {
    model: String,
    file_bytes: u64,
    threads: usize,
    simd: String,
    test: String,
    /// Tokens in the context before the test (`-d`).
    depth: usize,
    /// Causal models: prompt tokens in one forward call (as llama-bench's
    /// `n_prompt`), then tokens generated one by one (`n_gen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    n_prompt: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_gen: Option<usize>,
    /// How the KV cache stored keys (causal models).
    #[serde(skip_serializing_if = "Option::is_none")]
    type_k: Option<&'static str>,
    /// How the KV cache stored values (causal models).
    #[serde(skip_serializing_if = "Option::is_none")]
    type_v: Option<&'static str>,
    /// Throughput per repetition (tokens/s, or sentences/s for `embed`).
    samples: Vec<f64>,
    unit: &'static str,
    mean: f64,
    stddev: f64,
    /// tg only: the file size times tokens/s, in GB/s (the file is read once
    /// per token).
    #[serde(skip_serializing_if = "Option::is_none")]
    bandwidth_gbs: Option<f64>,
    /// tg only: the probe's read bandwidth at this thread count, in GB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    probe_gbs: Option<f64>,
    /// Encoders only: texts and tokens embedded per sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    texts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<usize>,
}

impl Record {
    fn new(
        model: &str,
        file_bytes: u64,
        threads: usize,
        test: String,
        samples: Vec<f64>,
        unit: &'static str,
    ) -> Record {
        let (mean, stddev) = mean_stddev(&samples);
        Record {
            model: model.to_owned(),
            file_bytes,
            threads,
            simd: Simd::detect().level().to_string(),
            depth: 0,
            n_prompt: None,
            n_gen: None,
            type_k: None,
            type_v: None,
            test,
            samples,
            unit,
            mean,
            stddev,
            bandwidth_gbs: None,
            probe_gbs: None,
            texts: None,
            tokens: None,
        }
    }

    /// The markdown table row.
    fn row(&self) -> String {
        let share = match (self.bandwidth_gbs, self.probe_gbs) {
            (Some(bw), Some(probe)) => format!("{bw:.2} | {:.0}%", 100.0 * bw / probe),
            (Some(bw), None) => format!("{bw:.2} | "),
            _ => " | ".to_owned(),
        };
        // Only a cache other than the default is named, after the test.
        let kv = match (self.type_k, self.type_v) {
            (Some(k), Some(v)) if (k, v) != (KvType::F32.name(), KvType::F32.name()) => {
                format!(" (k {k}, v {v})")
            }
            _ => String::new(),
        };
        format!(
            "| {} | {} | {} | {}{kv} | {:.2} ± {:.2} {} | {share} |",
            self.model, self.threads, self.simd, self.test, self.mean, self.stddev, self.unit
        )
    }
}

/// Mean and sample standard deviation (0 for one sample).
fn mean_stddev(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Runs `patchbay bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    // Resolve and open every model first, so a bad name fails before any timing.
    let mut models = Vec::with_capacity(args.model.len());
    for m in &args.model {
        let path = catalog::resolve_model(m).map_err(anyhow::Error::msg)?;
        let source = patchbay_models::families::open(&path)?;
        let kind = families::family_of(&source)?.kind();
        models.push((path, source, kind));
    }
    for &t in &args.threads {
        crate::common::warn_if_capped(t);
    }
    let mut records = Vec::new();
    let mut probes: Vec<(usize, f64)> = Vec::new();
    if !args.json {
        outln!("| model | threads | simd | test | throughput | GB/s | of probe |\n|---|---|---|---|---|---|---|");
    }
    for (path, source, kind) in &models {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let file_bytes = model_bytes(path);
        for &threads in &args.threads {
            let threads = Threads::new(threads);
            let mut new = if *kind == Kind::Encoder {
                vec![bench_encoder(args, path, &threads, &name, file_bytes)?]
            } else {
                let mut new = Vec::new();
                for &k in &args.cache_type_k {
                    for &v in &args.cache_type_v {
                        let kv = (k, v);
                        new.extend(bench_causal(args, source, &threads, kv, &name, file_bytes)?);
                    }
                }
                new
            };
            for r in &mut new {
                if r.bandwidth_gbs.is_some() && !args.no_probe {
                    let n = threads.count();
                    let probe = match probes.iter().find(|p| p.0 == n) {
                        Some(&(_, gbs)) => gbs,
                        None => {
                            let gbs = read_bandwidth(&threads) / 1e9;
                            probes.push((n, gbs));
                            gbs
                        }
                    };
                    r.probe_gbs = Some(probe);
                }
                if !args.json {
                    outln!("{}", r.row());
                }
            }
            records.extend(new);
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        for (n, gbs) in &probes {
            outln!(
                "read-bandwidth probe: {gbs:.2} GB/s at {n} thread(s) ({} MiB streamed, best of 3)",
                PROBE_BYTES >> 20
            );
        }
    }
    Ok(())
}

/// The bytes of a model's weight files: a file's size, or the sum of the
/// weight files in a directory.
fn model_bytes(path: &Path) -> u64 {
    let weight_file = |p: &Path| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("safetensors" | "gguf" | "bin")
        )
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| weight_file(&e.path()))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0),
        _ => 0,
    }
}

/// Read bandwidth in bytes/s: the best of three passes summing a buffer far
/// larger than the caches, split over `threads`.
fn read_bandwidth(threads: &Threads) -> f64 {
    let simd = Simd::detect();
    let data = vec![1.0f32; PROBE_BYTES / 4];
    let parts = threads.count() * 8;
    let part_len = data.len().div_ceil(parts);
    let mut sums = vec![0.0f32; parts];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        threads.for_each_chunk(&mut sums, 1, |i, out| {
            let start = (i * part_len).min(data.len());
            let end = (start + part_len).min(data.len());
            out[0] = kernels::sum(simd, &data[start..end]);
        });
        best = best.min(t0.elapsed().as_secs_f64());
        // Keep the sums observable so the passes are not optimised away.
        std::hint::black_box(&sums);
    }
    PROBE_BYTES as f64 / best.max(1e-9)
}

/// The folder holding `corpus/`: `$PATCHBAY_SHARED`, else `shared/` beside
/// the workspace root when it exists (the whole WikiText-2 test file), else
/// the repository's `testdata/` (a slice of it: fewer lines).
fn shared_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PATCHBAY_SHARED") {
        return PathBuf::from(p);
    }
    // CARGO_MANIFEST_DIR is crates/cli.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = root.join("../shared");
    if shared.join("corpus").is_dir() {
        shared
    } else {
        root.join("testdata")
    }
}

/// Fails when a forward pass produced a NaN or an infinity: a figure for a
/// broken model would mean nothing.
fn check_finite(out: &Act, test: &str) -> Result<()> {
    if let Some((row, what)) = first_non_finite(out) {
        anyhow::bail!(
            "{test}: the forward pass produced {what} logits (row {row}); \
             `patchbay generate` on this model names the first layer that goes non-finite"
        );
    }
    Ok(())
}

/// Sentences per second of an encoder over the first `args.texts` non-blank
/// lines of WikiText-2's test file, embedded in file order.
fn bench_encoder(
    args: &BenchArgs,
    path: &Path,
    threads: &Threads,
    name: &str,
    file_bytes: u64,
) -> Result<Record> {
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
    let opts = EmbedderOptions {
        threads: threads.count(),
        batch: args.batch,
        ..EmbedderOptions::default()
    };
    let mut embedder = Embedder::open(path, &opts)?;
    let tokens: usize = texts.iter().map(|t| embedder.tokenize(t).len()).sum();
    embedder.embed(&texts[..texts.len().min(4)])?; // warm-up
    let mut samples = Vec::with_capacity(args.repetitions);
    for _ in 0..args.repetitions.max(1) {
        let t0 = Instant::now();
        embedder.embed(&texts)?;
        samples.push(texts.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9));
    }
    let test = format!("embed {} texts, batch {}", texts.len(), args.batch);
    let mut r = Record::new(
        name,
        file_bytes,
        embedder.threads(),
        test,
        samples,
        "sentences/s",
    );
    r.texts = Some(texts.len());
    r.tokens = Some(tokens);
    Ok(r)
}

/// Rows per forward call when a depth's tokens fill the context, as
/// llama.cpp's default micro-batch: bounds the scratch a deep context needs.
const DEPTH_ROWS: usize = 512;

/// pp and tg of a causal model at one thread count, at each depth.
fn bench_causal(
    args: &BenchArgs,
    source: &ModelSource,
    threads: &Threads,
    kv: (KvType, KvType),
    name: &str,
    file_bytes: u64,
) -> Result<Vec<Record>> {
    // Each test runs from its depth: its depth and tokens must fit the
    // model's context (and a sane bound, should a file claim a huge one).
    let limit = source.hparams().n_ctx.clamp(1, MAX_BENCH_TOKENS);
    let deepest = args.depth.iter().copied().max().unwrap_or(0);
    let (longest, tokens) = longest_test(args);
    let ctx_len = deepest.saturating_add(tokens);
    if ctx_len > limit {
        let depth = if deepest > 0 {
            format!("-d {deepest} + ")
        } else {
            String::new()
        };
        anyhow::bail!(
            "{depth}{longest} = {ctx_len} tokens do not fit the model's context: \
             each test's tokens, after the deepest -d, must come to at most {limit}"
        );
    }
    let ctx_len = ctx_len.max(1);
    let opts = BuildOptions {
        max_context: ctx_len,
        plan: None,
    };
    families::with_causal_lm(
        source,
        &opts,
        Bench {
            args,
            name,
            threads,
            kv,
            file_bytes,
            deepest,
            ctx_len,
        },
    )?
}

struct Bench<'a> {
    args: &'a BenchArgs,
    name: &'a str,
    threads: &'a Threads,
    /// Key and value types of the KV cache.
    kv: (KvType, KvType),
    file_bytes: u64,
    deepest: usize,
    /// Positions the KV cache holds: the deepest depth and the longest test.
    ctx_len: usize,
}

/// A test's name as llama-bench prints it (`tg64`, `pp512+tg128`), with its
/// depth when there is one (`tg64 @ d1024`).
fn test_name(test: &str, depth: usize) -> String {
    if depth == 0 {
        test.to_owned()
    } else {
        format!("{test} @ d{depth}")
    }
}

/// The test that runs over the most positions past its depth, as its flag
/// says it (`-p 512`, `--pg 512,128`), and how many.
fn longest_test(args: &BenchArgs) -> (String, usize) {
    let pp = args.n_prompt.iter().map(|&n| (format!("-p {n}"), n));
    let tg = args.n_gen.iter().map(|&n| (format!("-n {n}"), n));
    let pg = (args.prompt_gen.iter()).map(|&(p, g)| (format!("--pg {p},{g}"), p.saturating_add(g)));
    pp.chain(tg).chain(pg).fold(
        (String::new(), 0),
        |best, t| if t.1 > best.1 { t } else { best },
    )
}

/// Parses `--pg PP,TG`: two whole numbers, each at least 1.
fn prompt_gen(s: &str) -> std::result::Result<(usize, usize), String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [pp, tg] = parts[..] else {
        return Err("must be two counts PP,TG (prompt tokens, then tokens generated)".into());
    };
    Ok((
        crate::common::positive(pp).map_err(|e| format!("PP {e}"))?,
        crate::common::positive(tg).map_err(|e| format!("TG {e}"))?,
    ))
}

impl CausalLmVisitor for Bench<'_> {
    type Output = Result<Vec<Record>>;
    fn visit<N: Layer>(self, model: Model<N>) -> Result<Vec<Record>> {
        let Bench {
            args,
            name,
            threads,
            kv,
            file_bytes,
            deepest,
            ctx_len,
        } = self;
        let scratch = Scratch::new();
        let simd = Simd::detect();
        let vocab = model.info.vocab;
        let prompt_rows = (args.n_prompt.iter().copied())
            .chain(args.prompt_gen.iter().map(|pg| pg.0))
            .max()
            .unwrap_or(0);
        let cap =
            Capacity::new(prompt_rows.max(deepest.min(DEPTH_ROWS)), ctx_len).with_kv(kv.0, kv.1);
        let mut st = model.net.new_state(cap);
        let mut out = Act::default();
        // Deterministic pseudo-random ids, as llama-bench uses random tokens.
        let ids: Vec<u32> = (0..ctx_len)
            .map(|i| ((i as u64 * 2_654_435_761 + 12345) % vocab as u64) as u32)
            .collect();
        let reps = args.repetitions.max(1);
        let mut records = Vec::new();
        let record = |test: &str, depth: usize, (pp, tg), samples: Vec<f64>| Record {
            depth,
            n_prompt: Some(pp),
            n_gen: Some(tg),
            type_k: Some(kv.0.name()),
            type_v: Some(kv.1.name()),
            ..Record::new(
                name,
                file_bytes,
                threads.count(),
                test_name(test, depth),
                samples,
                "t/s",
            )
        };
        let ctx_at = |pos: usize| {
            Ctx::new(simd, threads, &scratch)
                .at(pos)
                .with_rows(Rows::Last)
        };
        // A fresh context holding the first `depth` ids, in micro-batches.
        // Each test then runs from position `depth`, which forgets whatever
        // an earlier repetition left after it.
        let fill = |st: &mut N::State, out: &mut Act, depth: usize| -> Result<()> {
            model.net.reset(st);
            for from in (0..depth).step_by(DEPTH_ROWS) {
                let x = Act::from_tokens(&ids[from..depth.min(from + DEPTH_ROWS)]);
                model.net.forward(&x, out, st, &ctx_at(from))?;
            }
            Ok(())
        };
        // One timed run: a prompt of `pp` ids in one forward call at `depth`,
        // then `tg` ids one by one after it; tokens/s over both.
        let mut token = Act::from_tokens(&[0]);
        let mut run = |st: &mut N::State, out: &mut Act, depth: usize, pp: usize, tg: usize| {
            if depth == 0 {
                model.net.reset(st);
            }
            let t0 = Instant::now();
            if pp > 0 {
                let x = Act::from_tokens(&ids[depth..depth + pp]);
                model.net.forward(&x, out, st, &ctx_at(depth))?;
            }
            for (pos, &id) in ids.iter().enumerate().skip(depth + pp).take(tg) {
                token.set_token(0, id);
                model.net.forward(&token, out, st, &ctx_at(pos))?;
            }
            Ok::<f64, anyhow::Error>((pp + tg) as f64 / t0.elapsed().as_secs_f64().max(1e-9))
        };
        for &depth in &args.depth {
            let pp = (args.n_prompt.iter()).map(|&n| (n, 0, format!("pp{n}")));
            let tg = args.n_gen.iter().map(|&n| (0, n, format!("tg{n}")));
            let pg = (args.prompt_gen.iter()).map(|&(p, g)| (p, g, format!("pp{p}+tg{g}")));
            for (pp, tg, test) in pp.chain(tg).chain(pg).filter(|t| t.0 + t.1 > 0) {
                fill(&mut st, &mut out, depth)?;
                // One untimed run first: page in the weights.
                run(&mut st, &mut out, depth, pp, tg)?;
                check_finite(&out, &test)?;
                let samples = (0..reps)
                    .map(|_| run(&mut st, &mut out, depth, pp, tg))
                    .collect::<Result<Vec<f64>>>()?;
                let mut r = record(&test, depth, (pp, tg), samples);
                // tg reads the file once per token; at depth it reads the KV
                // cache too, so the share of the probe says less: left out.
                if pp == 0 && depth == 0 {
                    r.bandwidth_gbs = Some(file_bytes as f64 * r.mean / 1e9);
                }
                records.push(r);
            }
        }
        Ok(records)
    }
}
