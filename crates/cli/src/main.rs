//! `patchbay`: run transformer language models on the CPU.

use clap::{Parser, Subcommand};

mod bench;
mod inspect;
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
    /// Prompt-processing and generation speed, like llama-bench.
    Bench(bench::BenchArgs),
    /// Show a model file's format, architecture, hyper-parameters and tensors.
    Inspect(inspect::InspectArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Tokenize(a) => tokenize::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
