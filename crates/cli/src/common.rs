//! Options shared by the commands that run a model.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use patchbay_blocks::SamplerConfig;
use patchbay_combinators::{KvType, Plan};
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
    /// Prompt rows per forward call. The logits do not depend on it (the
    /// kernels are batch-invariant); only speed and scratch memory do.
    #[arg(long, default_value_t = 512, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch: usize,
    /// How the KV cache stores keys: f32 (exactly as computed) or f16
    /// (rounded as they are cached, as llama.cpp's default: half the memory,
    /// and half the bytes attention over a long context reads). Rounded keys
    /// move the attention scores (README, "KV cache in f16").
    #[arg(long, visible_alias = "ctk", default_value_t = KvType::F32, value_name = "f32|f16")]
    pub cache_type_k: KvType,
    /// How the KV cache stores values: f32 or f16 (whose rounding barely
    /// moves the logits).
    #[arg(long, visible_alias = "ctv", default_value_t = KvType::F32, value_name = "f32|f16")]
    pub cache_type_v: KvType,
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
        batch: args.batch,
        key_type: args.cache_type_k,
        value_type: args.cache_type_v,
        sampler,
        ..SessionOptions::default()
    };
    if args.layers.is_some() {
        let source = families::open(&path)?;
        opts.build.plan = parse_plan(args.layers.as_deref(), &source)?;
    }
    let bar = busy(&path, "loading");
    let job = Loaded { job, bar };
    session::with_session(&path, &opts, job)
        .map_err(|e| loading(&path, e))?
        .map_err(|e| diagnose_non_finite(e, &path, &opts))
}

/// Model files at least this large show a spinner while they load or convert.
const LARGE_FILE: u64 = 64 << 20;

/// A spinner on stderr (`loading model.gguf 3s`) while a large model file is
/// being worked on; hidden when stderr is not a terminal or the file is small,
/// so pipes and logs stay clean.
pub fn busy(path: &std::path::Path, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let size = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    };
    if !std::io::stderr().is_terminal() || size < LARGE_FILE {
        return indicatif::ProgressBar::hidden();
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = indicatif::ProgressBar::new_spinner()
        .with_message(format!("{what} {name} ({} MB)", size >> 20));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// A job that clears the loading spinner once the session is built.
struct Loaded<J> {
    job: J,
    bar: indicatif::ProgressBar,
}

impl<J: SessionJob> SessionJob for Loaded<J> {
    type Output = J::Output;
    fn run<N: patchbay_combinators::Layer>(self, session: session::Session<N>) -> J::Output {
        self.bar.finish_and_clear();
        self.job.run(session)
    }
}

/// When the logits went non-finite, a diagnostic pass names the first
/// decoder layer that did (only then: the check on the logits is cheap, this
/// pass is not).
fn diagnose_non_finite(
    e: anyhow::Error,
    path: &std::path::Path,
    opts: &SessionOptions,
) -> anyhow::Error {
    use patchbay_models::error::ModelError;
    let Some(ModelError::NonFinite {
        what,
        position,
        replay,
        ..
    }) = e.chain().find_map(|c| c.downcast_ref::<ModelError>())
    else {
        return e;
    };
    let diagnosis = if replay.is_empty() {
        String::new()
    } else {
        let mut build = opts.build.clone();
        build.max_context = opts.max_context;
        match patchbay_models::runners::diagnose::first_bad_layer(path, &build, replay) {
            Ok(d) => format!(": {d}"),
            Err(d) => format!(" (the diagnostic pass failed: {d})"),
        }
    };
    anyhow::Error::new(ModelError::NonFinite {
        what,
        position: *position,
        replay: Vec::new(),
        diagnosis,
    })
}

/// A model-loading error, with "loading PATH" in front only when the error
/// does not already name the file.
pub fn loading(path: &std::path::Path, e: impl Into<anyhow::Error>) -> anyhow::Error {
    let e = e.into();
    let shown = path.display().to_string();
    if render_error(&e).contains(&shown) {
        e
    } else {
        e.context(format!("loading {shown}"))
    }
}

/// The one-line message of an error chain (contexts, then sources), each
/// fact once: a cause whose text the line already holds (an I/O error that
/// a wrapper printed as part of its own message) is left out, and so is a
/// `PATH: ` prefix on a cause when the line already names PATH.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let mut text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if let Some((head, rest)) = text.split_once(": ") {
            if !line.is_empty() && head.contains('/') && line.contains(head) {
                text = rest.to_string();
                if line.contains(&text) {
                    continue;
                }
            }
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// What to do about a prompt of `tokens` tokens that does not fit a context
/// of `held` positions, when `--max-context` asked for `requested`: raising
/// `--max-context` is suggested only if the context was not already capped at
/// the model's own limit.
pub fn context_advice(tokens: usize, held: usize, requested: usize) -> String {
    if held >= requested {
        format!(
            "the prompt has {tokens} tokens; the context holds {held} (raise --max-context, up to the model's limit)"
        )
    } else {
        let verb = if tokens > held { "exceeds" } else { "fills" };
        format!(
            "the prompt has {tokens} tokens: it {verb} the model's context of {held} tokens, leaving no room to generate; shorten the prompt"
        )
    }
}

/// Reads a text file a user named (a corpus), with the file named in every
/// error: unreadable, or not UTF-8 (with the offset of the first bad byte).
pub fn read_text_file(path: &Path) -> Result<String> {
    let bytes = read_file(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
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
