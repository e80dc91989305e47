//! Options shared by the commands that run a model.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use patchbay_blocks::SamplerConfig;
use patchbay_combinators::Plan;
use patchbay_models::catalog;
use patchbay_models::families;
use patchbay_models::formats::source::ModelSource;
use patchbay_models::runners::session::{self, SessionJob, SessionOptions};

/// Parses a count flag (`-n`, `--threads`, ...): a whole number >= 0. Clap
/// names the flag in front of the message.
pub fn count(s: &str) -> std::result::Result<usize, String> {
    whole(s, 0)
}

/// Parses a flag that must be at least 1 (`-r`, `--top`, `--batch`, ...).
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    whole(s, 1)
}

/// Parses `--seed`: any whole number from 0 to 2^64 - 1.
pub fn seed(s: &str) -> std::result::Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("must be a whole number from 0 to {}", u64::MAX))
}

fn whole(s: &str, min: usize) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if v >= min => Ok(v),
        _ => Err(format!(
            "must be a whole number from {min} to {}",
            usize::MAX
        )),
    }
}

/// Which model to load and how to run it.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model short name (smollm2-135m, qwen2.5-0.5b, stories260k, ...) or path.
    #[arg(short, long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Worker threads (0 = one per core).
    #[arg(short = 't', long, default_value_t = 0, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub threads: usize,
    /// Longest sequence to prepare the KV cache for (capped by the model's own context).
    #[arg(long, default_value_t = 4096, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub max_context: usize,
    /// Int8 activations for quantised weights (llama.cpp's way: faster, slightly less exact).
    #[arg(long)]
    pub fast: bool,
    /// Re-wire the decoder layers: drop, repeat, re-order, run in parallel
    /// (e.g. `0-9,11-29`, `0-4,5x3,6-29`, `0-9,(10|11),12-29`; see below).
    #[arg(long, value_name = "PLAN")]
    pub layers: Option<String>,
}

/// Sampling flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temp: f32,
    /// Keep the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub top_k: usize,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Minimum probability relative to the best token, in [0, 1].
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    #[arg(long, default_value_t = 64, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub repeat_last_n: usize,
    /// RNG seed (same seed, same text).
    #[arg(long, default_value_t = 0x5eed, value_parser = crate::common::seed, allow_negative_numbers = true)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampler settings, validated.
    pub fn config(&self) -> Result<SamplerConfig> {
        let c = SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        };
        c.validate()?;
        Ok(c)
    }
}

/// A command-line argument that cannot be used: the process exits with
/// status 2, as for the flags clap itself refuses.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses a `--layers` plan against the model's layer count: a plan, or
/// `@FILE`, a mergekit passthrough YAML file (its slices as a plan over the
/// original weights).
pub fn parse_plan(text: Option<&str>, source: &ModelSource) -> Result<Option<Plan>> {
    let Some(text) = text else { return Ok(None) };
    plan_of(text, source.hparams().n_layer).map(Some)
}

/// [`parse_plan`] of one `--layers` value for a model of `n` layers.
pub fn plan_of(text: &str, n: usize) -> Result<Plan> {
    if let Some(file) = text.strip_prefix('@') {
        let yaml = std::fs::read_to_string(file).map_err(|e| {
            UsageError(format!("--layers @{file}: cannot read the merge file: {e}"))
        })?;
        return patchbay_models::mergekit::plan_from_yaml(&yaml, n)
            .map_err(|e| UsageError(format!("--layers @{file}: {e}")).into());
    }
    Plan::parse(text, n).map_err(|e| anyhow::anyhow!("--layers {text:?}: {e}"))
}

/// Opens the model a command asked for and runs `job` on a session over it,
/// whatever the model's family.
pub fn with_session<J: SessionJob<Output = Result<()>>>(
    args: &ModelArgs,
    sampler: SamplerConfig,
    job: J,
) -> Result<()> {
    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    if args.max_context == 0 {
        bail!("--max-context must be at least 1");
    }
    warn_if_capped(args.threads);
    let mut opts = SessionOptions {
        threads: args.threads,
        max_context: args.max_context,
        sampler,
        ..SessionOptions::default()
    };
    if args.fast {
        opts.build.dot_mode = patchbay_primitives::quant::DotMode::Q8;
    }
    if args.layers.is_some() {
        let source = families::open(&path)?;
        opts.build.plan = parse_plan(args.layers.as_deref(), &source)?;
    }
    session::with_session(&path, &opts, job)
        .with_context(|| format!("loading {}", path.display()))?
}

/// Says on stderr when `--threads` asks for more workers than are useful here.
pub fn warn_if_capped(requested: usize) {
    let (n, capped) = patchbay_primitives::Threads::clamp(requested);
    if capped {
        eprintln!("note: --threads {requested} capped to {n} (2 per core)");
    }
}

/// Writes `bytes` to stdout: a closed pipe ends quietly, any other write error
/// (a full disk) is an error.
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// Reads a whole file given with `-f`, refusing anything but a regular file
/// (a FIFO or a device would block forever or never end; `-` is stdin).
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        bail!("not a regular file: -f needs one (or `-` for stdin)");
    }
    Ok(std::fs::read(path)?)
}

/// The prompt from `-p` or `-f` (a file, or `-` for stdin), as UTF-8.
pub fn prompt_text(prompt: &Option<String>, file: &Option<PathBuf>) -> Result<String> {
    match (prompt, file) {
        (Some(_), Some(_)) => bail!("give either -p PROMPT or -f FILE, not both"),
        (Some(p), None) => Ok(p.clone()),
        (None, Some(f)) => {
            let bytes = if f.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut b)
                    .context("reading the prompt from stdin")?;
                b
            } else {
                read_file(f).with_context(|| format!("reading prompt file {}", f.display()))?
            };
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "prompt file {} is not valid UTF-8 (first bad byte at offset {})",
                    f.display(),
                    e.utf8_error().valid_up_to()
                )
            })
        }
        (None, None) => bail!("no prompt: give -p PROMPT or -f FILE"),
    }
}
