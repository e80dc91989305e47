//! `patchbay`: run transformer language models on the CPU.

use clap::{Parser, Subcommand};

/// `println!` for results: a closed pipe ends quietly, any other write error
/// (a full disk) returns from the calling function with an error, instead of
/// `println!`'s panic. Only in functions returning `anyhow::Result`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::common::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())?
    };
}

mod bench;
mod chat;
mod common;
mod convert;
mod embed;
mod generate;
mod graph;
mod inspect;
mod logits;
mod perplexity;
mod plot;
mod rewire;
mod tokenize;

/// Run transformer language models on the CPU.
#[derive(Parser, Debug)]
#[command(name = "patchbay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Continue a prompt, streaming the text as it is produced.
    Generate(generate::GenerateArgs),
    /// Chat with the model's own template (one user turn per stdin line).
    Chat(chat::ChatArgs),
    /// Per-position logsumexp and top logits as JSON (the golden files' shape).
    Logits(logits::LogitsArgs),
    /// Perplexity of a text file, by llama.cpp's method.
    Perplexity(perplexity::PerplexityArgs),
    /// Re-wired variants (dropped, repeated, swapped, parallel layers) against the model.
    Rewire(rewire::RewireArgs),
    /// Prompt-processing and generation speed, like llama-bench.
    Bench(bench::BenchArgs),
    /// Export a GGUF model as an HF safetensors directory.
    Convert(convert::ConvertArgs),
    /// Draw the model's graph (text, DOT, SVG or Mermaid) from its own layers.
    Graph(graph::GraphArgs),
    /// Show a model file's format, architecture, hyper-parameters and tensors.
    Inspect(inspect::InspectArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
    /// Sentence embeddings from an encoder (JSON lines, or a cosine matrix).
    Embed(embed::EmbedArgs),
}

/// A reader that closed our stdout early (`patchbay inspect m | head`) is not
/// an error: stop quietly, as Unix tools do, instead of panicking in `println!`.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// With `PATCHBAY_REPORT_PEAK_RSS` set (a hidden switch for the tests'
/// memory bounds), prints the peak resident set size (`VmHWM` from
/// `/proc/self/status`) to stderr.
fn report_peak_rss() {
    if std::env::var_os("PATCHBAY_REPORT_PEAK_RSS").is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        eprintln!("peak RSS: {}", line["VmHWM:".len()..].trim());
    }
}

/// The global allocator: the system's, with the memory bound that chat
/// templates (untrusted code from model files) render under.
#[global_allocator]
static ALLOC: patchbay_primitives::alloc::BoundedAlloc =
    patchbay_primitives::alloc::BoundedAlloc::with_handler(memory_bound_exceeded);

/// A bounded piece of work went past its bound: the peak RSS report (for the
/// tests), then the allocator's usual message and exit 1.
fn memory_bound_exceeded(what: &'static str, limit: usize) -> ! {
    report_peak_rss();
    patchbay_primitives::alloc::exit_on_exceeded(what, limit)
}

/// The command line with llama-bench's single-dash spellings of `bench`'s
/// long flags (`-pg`, `-ctk`, `-ctv`) as their `--` forms, so a llama-bench
/// command line runs as it is (clap would read `-pg` as `-p g`). Only for
/// `bench`, whose arguments are never free text.
fn llama_bench_spellings(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if args.get(1).is_none_or(|a| a != "bench") {
        return args;
    }
    args.into_iter()
        .map(|a| match a.to_str() {
            Some("-pg" | "-ctk" | "-ctv") => format!("-{}", a.to_string_lossy()).into(),
            _ => a,
        })
        .collect()
}

fn main() -> std::process::ExitCode {
    quiet_on_broken_pipe();
    let cli = match Cli::try_parse_from(llama_bench_spellings(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            report_peak_rss();
            e.exit()
        }
    };
    let result = match &cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Rewire(a) => rewire::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Graph(a) => graph::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Embed(a) => embed::run(a),
    };
    report_peak_rss();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", common::render_error(&e));
            if e.downcast_ref::<common::UsageError>().is_some() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
