//! Every causal model through every command that fits it, the graph in every
//! format, `--layers` on the commands that take it, and a clear one-line error
//! for a command that does not fit the model.

mod support;
use support::*;

use std::process::{Command, Stdio};

const CAUSAL: [&str; 4] = ["stories260k", "smollm2-135m", "qwen2.5-0.5b", "gemma3-270m"];

#[test]
fn gemma3_generates_its_golden_greedy_text() {
    require("gemma3-270m");
    let o = patchbay(&[
        "generate",
        "-m",
        "gemma3-270m",
        "-p",
        "The capital of France is",
        "-n",
        "10",
        "--temp",
        "0",
    ]);
    let text = ok(&o, "generate gemma3");
    // ../shared/golden/gemma3-270m/capital.json: exact.greedy_text.
    assert!(
        text.starts_with(" the capital of the country of France."),
        "{text:?}"
    );
}

#[test]
fn every_causal_model_runs_every_command() {
    let corpus = corpus("tinyshakespeare.txt");
    let dir = std::env::temp_dir().join(format!("patchbay-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A short text so perplexity stays quick: two chunks of 64.
    let text: String = std::fs::read_to_string(&corpus)
        .unwrap_or_else(|e| panic!("{corpus}: {e}"))
        .chars()
        .take(4000)
        .collect();
    let file = dir.join("text.txt");
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();
    for m in CAUSAL {
        require(m);
        let g = ok(
            &patchbay(&[
                "generate",
                "-m",
                m,
                "-p",
                "Once upon a time",
                "-n",
                "4",
                "--temp",
                "0",
            ]),
            &format!("generate -m {m}"),
        );
        assert!(!g.trim().is_empty(), "{m}: no text");
        let l = ok(
            &patchbay(&["logits", "-m", m, "-p", "Hello", "--json", "--top", "3"]),
            &format!("logits -m {m}"),
        );
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert!(!v["positions"].as_array().unwrap().is_empty(), "{m}");
        let p = ok(
            &patchbay(&[
                "perplexity",
                "-m",
                m,
                "-f",
                file,
                "--ctx",
                "64",
                "--chunks",
                "2",
            ]),
            &format!("perplexity -m {m}"),
        );
        let ppl: f64 = p
            .split("PPL = ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{m}: no PPL in {p}"));
        assert!(ppl.is_finite() && ppl > 1.0, "{m}: PPL {ppl}");
        let b = ok(
            &patchbay(&["bench", "-m", m, "-p", "8", "-n", "4", "-r", "1"]),
            &format!("bench -m {m}"),
        );
        assert!(b.contains("pp8") && b.contains("tg4"), "{m}: {b}");
        let c = Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .args(["chat", "-m", m, "-n", "4", "--temp", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"Hi\n")?;
                child.wait_with_output()
            })
            .unwrap();
        // stories260K has no chat template: it must say so, not crash.
        if m == "stories260k" {
            assert!(!c.status.success());
            assert!(stderr(&c).contains("no chat template"), "{}", stderr(&c));
        } else {
            ok(&c, &format!("chat -m {m}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn graph_renders_every_model_in_every_format() {
    let dir = std::env::temp_dir().join(format!("patchbay-graph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for m in CAUSAL {
        require(m);
        let text = ok(&patchbay(&["graph", "-m", m]), &format!("graph -m {m}"));
        assert!(text.contains("Stack") && text.contains("Attend"), "{text}");
        assert!(
            text.contains("(+) add") && text.contains("(×) multiply"),
            "{text}"
        );
        let dot = ok(
            &patchbay(&["graph", "-m", m, "--format", "dot"]),
            &format!("graph dot -m {m}"),
        );
        assert!(dot.starts_with("digraph"), "{dot}");
        let mermaid = ok(
            &patchbay(&["graph", "-m", m, "--format", "mermaid"]),
            &format!("graph mermaid -m {m}"),
        );
        assert!(mermaid.starts_with("flowchart"), "{mermaid}");
        let svg = dir.join(format!("{m}.svg"));
        ok(
            &patchbay(&[
                "graph",
                "-m",
                m,
                "--format",
                "svg",
                "-o",
                svg.to_str().unwrap(),
            ]),
            &format!("graph svg -m {m}"),
        );
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{m}");
        assert!(svg.trim_end().ends_with("</svg>"), "{m}");
    }
    // Gemma 3 alternates five local layers with one global one.
    let g = ok(&patchbay(&["graph", "-m", "gemma3-270m"]), "graph gemma3");
    assert!(
        g.contains("sliding window 512") && g.contains("QkNorm"),
        "{g}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn graph_renders_the_encoder_in_every_format() {
    require("minilm-l6-v2");
    let m = "minilm-l6-v2";
    let text = ok(&patchbay(&["graph", "-m", m]), "graph -m minilm-l6-v2");
    for part in [
        "PositionEmbedding",
        "Stack ×6",
        "Attend",
        "bidirectional",
        "GeluErf",
        "LayerNorm",
        "MeanPool",
        "L2Normalize",
        "(+) add",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    let dot = ok(&patchbay(&["graph", "-m", m, "--format", "dot"]), "dot");
    assert!(dot.starts_with("digraph"), "{dot}");
    let mermaid = ok(
        &patchbay(&["graph", "-m", m, "--format", "mermaid"]),
        "mermaid",
    );
    assert!(mermaid.starts_with("flowchart"), "{mermaid}");
    let svg = ok(&patchbay(&["graph", "-m", m, "--format", "svg"]), "svg");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    // --layers plans re-wire the encoder stack too.
    let g = ok(
        &patchbay(&["graph", "-m", m, "--layers", "0-2,3x2,5"]),
        "graph --layers",
    );
    assert!(g.contains("repeat x2, layer 3"), "{g}");
}

#[test]
fn layers_plans_rewire_generate_logits_perplexity_and_graph() {
    require("stories260k");
    let m = "stories260k";
    let logits = |plan: Option<&str>| {
        let mut args = vec![
            "logits",
            "-m",
            m,
            "-p",
            "Once upon a time",
            "--json",
            "--top",
            "5",
        ];
        if let Some(p) = plan {
            args.extend(["--layers", p]);
        }
        let o = patchbay(&args);
        serde_json::from_str::<serde_json::Value>(&ok(&o, "logits --layers")).unwrap()
    };
    // The identity plan is the model itself, to the bit.
    assert_eq!(logits(None), logits(Some("0-4")));
    assert_eq!(logits(None), logits(Some("all")));
    // Dropping a layer changes the answer.
    assert_ne!(logits(None), logits(Some("0-1,3-4")));
    let g = ok(
        &patchbay(&[
            "generate",
            "-m",
            m,
            "-p",
            "Once",
            "-n",
            "4",
            "--temp",
            "0",
            "--layers",
            "0-2,3x2,4",
        ]),
        "generate --layers",
    );
    assert!(!g.trim().is_empty());
    let graph = ok(
        &patchbay(&["graph", "-m", m, "--layers", "0,(1|2),3x3,4"]),
        "graph --layers",
    );
    assert!(graph.contains("repeat x3, layer 3"), "{graph}");
    assert!(graph.contains("residual updates of layers 1|2"), "{graph}");
    // A bad plan: one clear line naming the flag and the problem, exit 1, no panic.
    for (plan, says) in [
        ("0-9", "out of range"),
        ("0,,1", "--layers"),
        ("3x0", "at least 1"),
        ("(1", "unclosed"),
    ] {
        let o = patchbay(&["logits", "-m", m, "-p", "a", "--layers", plan]);
        assert_eq!(o.status.code(), Some(1), "{plan}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(says) && !e.contains("panicked"), "{plan}: {e}");
    }
}

#[test]
fn a_command_that_does_not_fit_the_model_says_so_in_one_line() {
    require("minilm-l6-v2");
    for cmd in [
        vec!["generate", "-m", "minilm-l6-v2", "-p", "hi", "-n", "2"],
        vec!["logits", "-m", "minilm-l6-v2", "-p", "hi"],
        vec!["perplexity", "-m", "minilm-l6-v2", "-f", "Cargo.toml"],
        vec!["chat", "-m", "minilm-l6-v2"],
    ] {
        let o = patchbay(&cmd);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}");
        let e = stderr(&o);
        assert!(e.contains("encoder"), "{cmd:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{cmd:?}: {e}");
    }
}
