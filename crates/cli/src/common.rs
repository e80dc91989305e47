//! Options shared by the commands that run a model.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use patchbay_blocks::SamplerConfig;
use patchbay_models::catalog;
use patchbay_models::runners::session::{Session, SessionOptions};

/// Which model to load and how to run it.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model short name (smollm2-135m, qwen2.5-0.5b, stories260k, ...) or path.
    #[arg(short, long, default_value = catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Worker threads (0 = one per core).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Longest sequence to prepare the KV cache for (capped by the model's own context).
    #[arg(long, default_value_t = 4096)]
    pub max_context: usize,
    /// Int8 activations for quantised weights (llama.cpp's way: faster, slightly less exact).
    #[arg(long)]
    pub fast: bool,
}

/// Sampling flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temp: f32,
    /// Keep the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
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
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// RNG seed (same seed, same text).
    #[arg(long, default_value_t = 0x5eed)]
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

/// Opens the session a command asked for.
pub fn open(args: &ModelArgs, sampler: SamplerConfig) -> Result<Session> {
    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    if args.max_context == 0 {
        bail!("--max-context must be at least 1");
    }
    let mut opts = SessionOptions {
        threads: args.threads,
        max_context: args.max_context,
        sampler,
        ..SessionOptions::default()
    };
    if args.fast {
        opts.build.dot_mode = patchbay_primitives::quant::DotMode::Q8;
    }
    Session::open(&path, &opts).with_context(|| format!("loading {}", path.display()))
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
                std::fs::read(f).with_context(|| format!("reading prompt file {}", f.display()))?
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
