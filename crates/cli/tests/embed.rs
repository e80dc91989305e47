//! `patchbay embed` against the golden reference of all-MiniLM-L6-v2
//! (`golden/minilm-l6-v2/sentences.json`): the JSON lines' embeddings and the
//! `--similarity` matrix within 1e-4; the error cases in one line; `bench` on
//! the encoder.

mod support;
use support::*;

use std::process::{Command, Output, Stdio};

const TOL: f64 = 1e-4;

fn patchbay(args: &[&str]) -> Output {
    // `bench` on an encoder reads the corpus from the reference data.
    Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(args)
        .env("PATCHBAY_SHARED", data_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run patchbay")
}

/// (texts, embeddings, cosine matrix) of the golden file.
fn golden() -> (Vec<String>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let path = data_dir().join("golden/minilm-l6-v2/sentences.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set PATCHBAY_SHARED)", path.display()));
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let nums = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let s = j["sentences"].as_array().unwrap();
    (
        s.iter()
            .map(|s| s["text"].as_str().unwrap().to_string())
            .collect(),
        s.iter().map(|s| nums(&s["embedding"])).collect(),
        j["cosine"].as_array().unwrap().iter().map(nums).collect(),
    )
}

fn max_dev(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn check_lines(out: &str, texts: &[String], embeddings: &[Vec<f64>]) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), texts.len(), "{out}");
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["index"].as_u64(), Some(i as u64), "{line}");
        assert_eq!(v["text"].as_str(), Some(texts[i].as_str()), "{line}");
        let e: Vec<f64> = v["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let d = max_dev(&e, &embeddings[i]);
        assert!(d <= TOL, "sentence {i}: deviation {d:e}");
    }
}

#[test]
fn embed_prints_the_golden_embeddings_and_cosines() {
    require("minilm-l6-v2");
    let (texts, embeddings, cosine) = golden();
    let mut args = vec!["embed", "-m", "minilm-l6-v2", "--batch", "2"];
    args.extend(texts.iter().map(String::as_str));
    let out = ok(&patchbay(&args), "embed");
    check_lines(&out, &texts, &embeddings);

    // From a file, blank lines skipped: the same lines.
    let dir = std::env::temp_dir().join(format!("patchbay-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("texts.txt");
    std::fs::write(&file, format!("\n{}\n  \n", texts.join("\n\n"))).unwrap();
    let out = ok(
        &patchbay(&["embed", "-m", "minilm-l6-v2", "-f", file.to_str().unwrap()]),
        "embed -f",
    );
    check_lines(&out, &texts, &embeddings);

    args.push("--similarity");
    let out = ok(&patchbay(&args), "embed --similarity");
    let rows: Vec<Vec<f64>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|c| c.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), cosine.len(), "{out}");
    for (i, (r, g)) in rows.iter().zip(&cosine).enumerate() {
        let d = max_dev(r, g);
        assert!(d <= TOL, "cosine row {i}: deviation {d:e}\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn embed_errors_are_one_clear_line() {
    require("minilm-l6-v2");
    require("stories260k");
    let missing = std::env::temp_dir().join("patchbay-embed-no-such-file.txt");
    for (args, says) in [
        (vec!["embed", "-m", "minilm-l6-v2"], "no text"),
        (
            vec!["embed", "-m", "stories260k", "hello"],
            "causal language model",
        ),
        (
            vec![
                "embed",
                "-m",
                "minilm-l6-v2",
                "-f",
                missing.to_str().unwrap(),
            ],
            "reading",
        ),
        (
            vec!["embed", "-m", "minilm-l6-v2", "-f", "x", "hello"],
            "not both",
        ),
    ] {
        let o = patchbay(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(says) && !e.contains("panicked"), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
    }
}

#[test]
fn bench_embeds_corpus_lines_on_an_encoder() {
    require("minilm-l6-v2");
    let out = ok(
        &patchbay(&[
            "bench",
            "-m",
            "minilm-l6-v2",
            "--texts",
            "4",
            "-r",
            "1",
            "-t",
            "1",
        ]),
        "bench -m minilm-l6-v2",
    );
    assert!(out.contains("sentences/s"), "{out}");
    let row = out
        .lines()
        .find(|l| l.contains("embed 4 texts"))
        .unwrap_or_else(|| panic!("no embed row in {out}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // | model | threads | simd | test | throughput | GB/s | of probe |
    assert_eq!(cells[2], "1", "{row}");
    let sps: f64 = cells[5].split(' ').next().unwrap().parse().unwrap();
    assert!(sps > 0.0, "{row}");
}
