//! The `patchbay` binary end to end: the main job, and clear errors (never a
//! panic) for bad prompts, files and flags.

mod support;
use support::*;

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn generate_the_capital_of_france() {
    require("smollm2-135m");
    let o = patchbay(&[
        "generate",
        "-p",
        "The capital of France is",
        "-n",
        "16",
        "--temp",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(text.starts_with(" Paris."), "{text:?}");
    let err = stderr(&o);
    assert!(
        err.contains("prompt 5 tokens") && err.contains("t/s"),
        "{err}"
    );
}

#[test]
fn same_seed_same_text() {
    require("stories260k");
    let run = |seed: &str| {
        let o = patchbay(&[
            "generate",
            "-m",
            "stories260k",
            "-p",
            "Once upon",
            "-n",
            "30",
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn bad_input_gives_clear_errors_not_panics() {
    require("stories260k");
    require("smollm2-135m");
    let dir = std::env::temp_dir().join(format!("patchbay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_utf8 = dir.join("bad.txt");
    std::fs::write(&bad_utf8, b"hello \xff\xfe world").unwrap();
    let bad_utf8 = bad_utf8.to_str().unwrap();
    let long = "word ".repeat(400);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["generate", "-m", "stories260k", "-p", "x", "--top-p", "1.5"],
            "top-p",
        ),
        (
            vec!["generate", "-m", "stories260k", "-p", "x", "--temp", "-1"],
            "temperature",
        ),
        (
            vec!["generate", "-m", "stories260k", "-p", "x", "--min-p", "2"],
            "min-p",
        ),
        (
            vec!["generate", "-m", "stories260k", "-f", bad_utf8],
            "not valid UTF-8",
        ),
        (
            vec!["generate", "-m", "stories260k", "-f", "/no/such/file.txt"],
            "/no/such/file.txt",
        ),
        (vec!["generate", "-m", "stories260k"], "no prompt"),
        (
            vec!["generate", "-m", "no-such-model", "-p", "x"],
            "known model",
        ),
        (
            vec!["generate", "-m", "/no/such/model.gguf", "-p", "x"],
            "model.gguf",
        ),
        (vec!["generate", "-p", ""], "empty"),
        (
            vec![
                "generate",
                "-m",
                "stories260k",
                "-p",
                &long,
                "--max-context",
                "64",
            ],
            "context",
        ),
        (vec!["inspect", bad_utf8], "bad.txt"),
    ];
    for (args, needle) in cases {
        let o = patchbay(&args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generation_stops_at_the_context_limit() {
    require("stories260k");
    let o = patchbay(&[
        "generate",
        "-m",
        "stories260k",
        "-p",
        "Once upon a time",
        "-n",
        "500",
        "--max-context",
        "32",
        "--temp",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    // 5 prompt tokens (with BOS) in a 32-position cache leave room for 28 tokens.
    assert!(err.contains("generated 28 tokens"), "{err}");
}

#[test]
fn chat_reads_one_turn_per_line_from_a_pipe() {
    require("smollm2-135m");
    let mut child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args([
            "chat",
            "--temp",
            "0",
            "-n",
            "24",
            "--system",
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\nWhat is the capital of Italy?\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    let replies: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(text.contains("Paris"), "{text}");
    assert!(text.contains("Rome"), "{text}");
    assert!(replies.len() >= 2, "{text}");
}

#[test]
fn logits_json_has_the_golden_shape() {
    require("stories260k");
    let o = patchbay(&[
        "logits",
        "-m",
        "stories260k",
        "-p",
        "The dog",
        "--top",
        "5",
        "--greedy",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    let positions = v["positions"].as_array().unwrap();
    assert_eq!(tokens[0], 1, "BOS first");
    assert_eq!(tokens.len(), positions.len());
    for p in positions {
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        let best = top[0][1].as_f64().unwrap();
        assert!(p["logsumexp"].as_f64().unwrap() >= best);
        assert!(top.windows(2).all(|w| w[0][1].as_f64() >= w[1][1].as_f64()));
    }
    assert_eq!(v["greedy"].as_array().unwrap().len(), 4);
}

#[test]
fn logits_and_perplexity_do_not_depend_on_batch() {
    let corpus = &corpus("tinyshakespeare.txt");
    for model in ["stories260k", "smollm2-135m"] {
        require(model);
        let prompt = "Once upon a time, a little girl named Lily went to the park and saw a bird.";
        let logits = |batch: &str, threads: &str| {
            let o = patchbay(&[
                "logits", "-m", model, "-p", prompt, "--json", "--top", "8", "--batch", batch,
                "-t", threads,
            ]);
            assert!(
                o.status.success(),
                "{model} --batch {batch}: {}",
                stderr(&o)
            );
            o.stdout
        };
        let whole = logits("512", "1");
        for (batch, threads) in [("1", "1"), ("3", "2"), ("7", "1"), ("64", "2")] {
            assert!(
                logits(batch, threads) == whole,
                "{model}: --batch {batch} -t {threads} changed the logits"
            );
        }
        // The final line without its speed: the figures must match to the digit.
        let ppl = |batch: &str| {
            let o = patchbay(&[
                "perplexity",
                "-m",
                model,
                "-f",
                corpus,
                "--ctx",
                "64",
                "--chunks",
                "3",
                "--batch",
                batch,
            ]);
            assert!(
                o.status.success(),
                "{model} --batch {batch}: {}",
                stderr(&o)
            );
            let out = String::from_utf8(o.stdout).unwrap();
            out.rsplit_once(" tokens scored").expect(&out).0.to_string()
        };
        let whole = ppl("64");
        assert!(whole.contains("PPL = "), "{whole}");
        for batch in ["1", "5", "1000"] {
            assert_eq!(ppl(batch), whole, "{model}: perplexity --batch {batch}");
        }
    }
    let o = patchbay(&["logits", "-m", "stories260k", "-p", "Hi", "--batch", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--batch"), "{}", stderr(&o));
}

#[test]
fn a_reader_closing_stdout_early_is_not_a_crash() {
    require("smollm2-135m");
    // Far more output than a pipe buffers (64 KiB), so writing must hit the closed pipe.
    let text = "a b c d e f g ".repeat(6_000); // 84 KB: under the 128 KiB limit of one argument
    let mut child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(["tokenize", "-m", "smollm2-135m", "--pieces", &text])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then close the pipe, as `| head -c 1` would.
    let mut out = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut out, &mut byte).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.status.success(), "{err}");
}

#[test]
fn batch_prompts_continue_each_line_as_it_would_alone() {
    require("stories260k");
    let dir = std::env::temp_dir().join(format!("patchbay-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompts.txt");
    let prompts = [
        "Once upon a time",
        "",
        "Lily and Tom went to the park. They saw",
        "The",
    ];
    std::fs::write(&file, prompts.join("\n")).unwrap();
    let common = ["-m", "stories260k", "-n", "20", "--temp", "0"];
    let mut args = vec!["generate", "-f", file.to_str().unwrap(), "--batch-prompts"];
    args.extend(common);
    let o = patchbay(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    let non_empty: Vec<&str> = prompts.iter().copied().filter(|p| !p.is_empty()).collect();
    for (i, p) in non_empty.iter().enumerate() {
        let mut one = vec!["generate", "-p", p];
        one.extend(common);
        let alone = patchbay(&one);
        assert!(alone.status.success(), "{}", stderr(&alone));
        let alone = String::from_utf8(alone.stdout).unwrap();
        let header = format!("--- {i} (");
        let start = out
            .find(&header)
            .unwrap_or_else(|| panic!("no {header} in {out}"));
        let body = &out[start..];
        let body = &body[body.find('\n').unwrap() + 1..];
        let end = body.find("\n--- ").map_or(body.len(), |e| e + 1);
        assert_eq!(&body[..end], alone, "prompt {i} ({p:?})");
    }
    assert!(stderr(&o).contains("3 prompts"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

/// The names in `dir`, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn convert_stories260k_runs_and_needs_force_to_overwrite() {
    require("stories260k");
    let dir = std::env::temp_dir().join(format!("patchbay-cli-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.to_str().unwrap();
    let exported = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    let o = patchbay(&["convert", "-m", "stories260k", "-o", out]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 4);
    assert_eq!(listing(&dir), exported);
    let first = std::fs::read(dir.join("model.safetensors")).unwrap();

    // The converted directory runs, with the llama2.c model's logits.
    let logits = |model: &str| {
        let o = patchbay(&[
            "logits", "-m", model, "-p", "The dog", "--top", "5", "--json",
        ]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let (a, b) = (logits("stories260k"), logits(out));
    assert_eq!(a["tokens"], b["tokens"]);
    let (pa, pb) = (
        a["positions"].as_array().unwrap(),
        b["positions"].as_array().unwrap(),
    );
    assert_eq!(pa.len(), pb.len());
    for (x, y) in pa.iter().zip(pb) {
        let (lx, ly) = (
            x["logsumexp"].as_f64().unwrap(),
            y["logsumexp"].as_f64().unwrap(),
        );
        assert!((lx - ly).abs() < 1e-3, "logsumexp {lx} vs {ly}");
        assert_eq!(x["top"][0][0], y["top"][0][0]);
    }

    // Again without --force: refused, naming the directory and the flag; the
    // first result stays as it was.
    let o = patchbay(&["convert", "-m", "stories260k", "-o", out, "--dtype", "f16"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--force") && err.contains(out), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(listing(&dir), exported);
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), first);

    // With --force the files are replaced.
    let o = patchbay(&[
        "convert",
        "-m",
        "stories260k",
        "-o",
        out,
        "--dtype",
        "f16",
        "--force",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(listing(&dir), exported);
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(st.len() < first.len(), "f16 is not smaller than f32");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_convert_leaves_no_files_behind() {
    require("stories260k");
    require("minilm-l6-v2");
    let dir =
        std::env::temp_dir().join(format!("patchbay-cli-convert-fail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let a_file = dir.join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let (enc_out, below_file, blocked) = (dir.join("enc"), a_file.join("out"), dir.join("blocked"));
    // A directory where convert would put config.json: fails after the
    // temporary files are written.
    std::fs::create_dir_all(blocked.join("config.json")).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "convert",
                "-m",
                "minilm-l6-v2",
                "-o",
                enc_out.to_str().unwrap(),
            ],
            "encoder",
        ),
        (
            vec![
                "convert",
                "-m",
                "stories260k",
                "-o",
                below_file.to_str().unwrap(),
            ],
            "a-file",
        ),
        (
            vec![
                "convert",
                "-m",
                "stories260k",
                "-o",
                blocked.to_str().unwrap(),
                "--force",
            ],
            "config.json",
        ),
    ];
    for (args, needle) in cases {
        let o = patchbay(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
    }
    assert_eq!(listing(&dir), ["a-file", "blocked"]);
    assert_eq!(listing(&blocked), ["config.json"]);
    assert!(listing(&blocked.join("config.json")).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
