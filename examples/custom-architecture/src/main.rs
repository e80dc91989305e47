//! Builds the fused-pair SmolLM2 of this crate, prints its graph, generates
//! greedily and says how long it took.
//!
//! ```text
//! custom-architecture [-p PROMPT] [-n TOKENS]
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use custom_architecture::{build, mlp, FUSED};
use patchbay_blocks::SamplerConfig;
use patchbay_combinators::graph::{self, GraphFormat};
use patchbay_combinators::{Layer, Step};
use patchbay_models::catalog::resolve_model;
use patchbay_models::formats::source::ModelSource;
use patchbay_models::runners::session::{Session, SessionOptions};
use patchbay_models::tokenizer::Tokenizer;

const USAGE: &str = "usage: custom-architecture [-p PROMPT] [-n TOKENS]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (mut prompt, mut n) = ("Once upon a time".to_string(), 24usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            return Ok(());
        }
        let value = args
            .next()
            .ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "-p" => prompt = value,
            "-n" => {
                n = value
                    .parse()
                    .map_err(|_| format!("-n {value}: not a count\n{USAGE}"))?
            }
            _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
        }
    }
    let path = resolve_model("smollm2-135m")
        .map_err(|e| format!("{e}\nfetch it with: scripts/fetch-models smollm2-135m"))?;
    let source = ModelSource::open(&path)?;
    let opts = SessionOptions {
        sampler: SamplerConfig::greedy(),
        max_context: 1024,
        ..SessionOptions::default()
    };
    let model = build(&source, &opts.build, FUSED, mlp)?;
    println!(
        "{}",
        graph::render(&model.net.describe(), GraphFormat::Text)
    );
    let tokenizer = Tokenizer::load(&path)?;
    let mut session = Session::new(model, tokenizer.clone(), &opts)?;
    let ids = tokenizer.encode(&prompt, true);
    let mut text = tokenizer.stream();
    print!("{prompt}");
    let stats = session.generate(&ids, n, |t| {
        print!("{}", text.push(t));
        let _ = std::io::stdout().flush();
        Step::Continue
    })?;
    println!("{}", text.finish());
    println!(
        "{} blocks for {} layers: {} prompt tokens in {:.2} s, {} tokens generated at {:.1} tokens/s",
        session.info.n_layers,
        source.hparams().n_layer,
        stats.prompt_tokens,
        stats.prompt_time.as_secs_f64(),
        stats.gen_tokens,
        stats.gen_tps()
    );
    Ok(())
}
