//! GPT-2 and Phi (parallel blocks) through the CLI, on the tiny random
//! checkpoints `scripts/tiny-reference.py` writes with its independent float64
//! reference: `generate --temp 0` prints the reference's greedy text, and
//! `graph` draws both, the Phi block with its parallel fork.

mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the reference script for `family` into a fresh directory.
fn make_reference(family: &str) -> (PathBuf, serde_json::Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tiny-reference.py");
    let tokdir = patchbay_models::catalog::models_dir().join("gpt2-tokenizer");
    assert!(
        tokdir.join("encoder.json").is_file() && tokdir.join("vocab.bpe").is_file(),
        "GPT-2 tokenizer files are not in {}; run `scripts/fetch-gpt2-tokenizer`",
        tokdir.display()
    );
    let dir = std::env::temp_dir().join(format!(
        "patchbay-cli-tiny-{family}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let out = match Command::new("python3")
        .arg(&script)
        .arg(family)
        .arg(&dir)
        .arg("--tokenizer-dir")
        .arg(&tokdir)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "python3 is not installed: it is needed to run {} (the reference for the \
             GPT-2 and Phi families); install Python 3",
            script.display()
        ),
        Err(e) => panic!("running python3 {}: {e}", script.display()),
    };
    assert!(
        out.status.success(),
        "{} {family} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

/// Generates greedily and draws the graph; returns the text graph.
fn generate_and_graph(family: &str) -> String {
    let (dir, r) = make_reference(family);
    let m = dir.to_str().unwrap();
    let prompt = r["prompt"].as_str().unwrap();
    let steps = r["greedy_ids"].as_array().unwrap().len().to_string();
    let text = ok(
        &patchbay(&[
            "generate", "-m", m, "-p", prompt, "-n", &steps, "--temp", "0",
        ]),
        &format!("generate {family}"),
    );
    assert_eq!(
        text.strip_suffix('\n').unwrap_or(&text),
        r["greedy_text"].as_str().unwrap(),
        "{family}: greedy text"
    );
    let graph = ok(&patchbay(&["graph", "-m", m]), &format!("graph {family}"));
    let dot = ok(
        &patchbay(&["graph", "-m", m, "--format", "dot"]),
        &format!("graph --format dot {family}"),
    );
    assert!(dot.contains("digraph"), "{family}: {dot}");
    let _ = std::fs::remove_dir_all(&dir);
    graph
}

#[test]
fn gpt2_generates_reference_text_and_draws_its_graph() {
    let g = generate_and_graph("gpt2");
    for part in [
        "PositionEmbedding",
        "attn_qkv",
        "Attend",
        "GeluTanh",
        "LayerNorm",
    ] {
        assert!(g.contains(part), "gpt2 graph lacks {part}:\n{g}");
    }
    // Serial blocks: residuals only, no parallel fork.
    assert!(!g.contains("Sum"), "{g}");
    assert!(!g.contains("Rope"), "{g}");
}

#[test]
fn phi_generates_reference_text_and_draws_its_parallel_fork() {
    let g = generate_and_graph("phi");
    assert!(
        g.contains("Sum"),
        "the Phi graph shows no parallel fork:\n{g}"
    );
    assert!(g.contains("Rope"), "{g}");
    // One norm per block, both branches fed by it: a LayerNorm line, then the
    // fork whose children are the attention and the MLP.
    let lines: Vec<&str> = g.lines().collect();
    let sum = lines.iter().position(|l| l.contains("Sum")).unwrap();
    assert!(lines[sum - 1].contains("LayerNorm"), "{g}");
}
