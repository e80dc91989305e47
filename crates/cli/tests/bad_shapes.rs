//! Every family is built from crafted files whose shapes do not add up (odd
//! RoPE widths, heads that do not divide the width, kv heads that do not
//! divide the heads): each must stop with a clear error naming the file,
//! exit code 1, and never reach a kernel (no panic, no backtrace with
//! `RUST_BACKTRACE=1`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn model(name: &str) -> PathBuf {
    patchbay_models::catalog::resolve_model(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A copy of GGUF `src` with the u32 metadata key `key` set to `value`.
fn gguf_with(src: &Path, key: &str, value: u32, out: &Path) {
    let mut b = std::fs::read(src).unwrap();
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend(key.as_bytes());
    let at = b
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{}: no key {key}", src.display()))
        + needle.len();
    assert_eq!(&b[at..at + 4], &4u32.to_le_bytes(), "{key} is not a u32");
    b[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
    std::fs::write(out, b).unwrap();
}

/// A copy of llama2.c checkpoint `src` with header field `field` (0 = dim,
/// 2 = n_layers, 3 = n_heads, 4 = n_kv_heads) set to `value`, its tokenizer beside it.
fn llama2c_with(src: &Path, field: usize, value: i32, out: &Path) {
    let mut b = std::fs::read(src).unwrap();
    b[4 * field..4 * field + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(out, b).unwrap();
    let tok = src.parent().unwrap().join("tok512.bin");
    std::fs::copy(tok, out.parent().unwrap().join("tok512.bin")).unwrap();
}

/// A copy of the HF model directory `src` (files linked) whose config.json
/// has `key` set to `value`.
fn hf_with(src: &Path, key: &str, value: serde_json::Value, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() && p.file_name().unwrap() != "config.json" {
            std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
        }
    }
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut c: serde_json::Value = serde_json::from_str(&text).unwrap();
    c[key] = value;
    std::fs::write(out.join("config.json"), c.to_string()).unwrap();
}

/// The tiny GPT-2 or Phi model of scripts/tiny-reference.py, in `dir`.
fn tiny(family: &str, dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tiny-reference.py");
    let tokdir = patchbay_models::catalog::models_dir().join("gpt2-tokenizer");
    assert!(
        tokdir.join("encoder.json").is_file(),
        "GPT-2 tokenizer files are not in {}; run `scripts/fetch-gpt2-tokenizer`",
        tokdir.display()
    );
    let out = dir.join(format!("tiny-{family}"));
    let o = Command::new("python3")
        .arg(&script)
        .arg(family)
        .arg(&out)
        .arg("--tokenizer-dir")
        .arg(&tokdir)
        .output()
        .unwrap_or_else(|e| panic!("python3 {} (install Python 3): {e}", script.display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn every_family_rejects_bad_shapes_before_any_kernel() {
    let dir = std::env::temp_dir().join(format!("patchbay-bad-shapes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let smol = model("smollm2-135m");
    let gemma = model("gemma3-270m");
    let qwen = model("qwen2.5-0.5b");
    let stories = model("stories260k");
    let minilm = model("minilm-l6-v2");
    let gpt2 = tiny("gpt2", &dir);
    let phi = tiny("phi", &dir);
    let p = |name: &str| dir.join(name);
    // (model path, command, expected stderr fragment)
    let mut cases: Vec<(PathBuf, &str, &str)> = Vec::new();
    for (key, value, name, want) in [
        ("llama.rope.dimension_count", 63, "llama-rope63.gguf", "hyper-parameter llama.rope.dimension_count: is 63 rotated dimensions per head (head size 64); RoPE needs an even number"),
        ("llama.rope.dimension_count", 128, "llama-rope128.gguf", "is 128 rotated dimensions per head (head size 64)"),
        ("llama.attention.head_count", 7, "llama-heads7.gguf", "tensor 'blk.0.attn_q.weight': expected shape"),
        ("llama.attention.head_count_kv", 2, "llama-kv2.gguf", "tensor 'blk.0.attn_k.weight': expected shape"),
        ("llama.embedding_length", 577, "llama-embd577.gguf", "tensor 'token_embd.weight': expected shape"),
    ] {
        gguf_with(&smol, key, value, &p(name));
        cases.push((p(name), "generate", want));
    }
    for (key, value, name, want) in [
        (
            "gemma3.attention.key_length",
            63,
            "gemma3-key63.gguf",
            "hyper-parameter gemma3.attention.key_length: is 63 rotated dimensions per head",
        ),
        (
            "gemma3.attention.head_count",
            3,
            "gemma3-heads3.gguf",
            "tensor 'blk.0.attn_q.weight': expected shape",
        ),
    ] {
        gguf_with(&gemma, key, value, &p(name));
        cases.push((p(name), "generate", want));
    }
    for (key, value, name, want) in [
        (
            "qwen2.attention.head_count_kv",
            3,
            "qwen2-kv3.gguf",
            "tensor 'blk.0.attn_k.weight': expected shape",
        ),
        (
            "qwen2.attention.head_count",
            5,
            "qwen2-heads5.gguf",
            "qwen2-heads5.gguf",
        ),
    ] {
        gguf_with(&qwen, key, value, &p(name));
        cases.push((p(name), "generate", want));
    }
    for (field, value, name) in [
        (3, 7, "l2c-heads7"),
        (4, 3, "l2c-kv3"),
        (0, 63, "l2c-dim63"),
    ] {
        let d = p(name);
        std::fs::create_dir_all(&d).unwrap();
        llama2c_with(&stories, field, value, &d.join("model.bin"));
        cases.push((d.join("model.bin"), "generate", "model.bin: "));
    }
    let cases_hf: Vec<(&Path, &str, serde_json::Value, &str, &str)> = vec![
        (
            &minilm,
            "num_attention_heads",
            5.into(),
            "bert-heads5",
            "BERT heads 5 x 76 do not make the hidden width 384",
        ),
        (
            &gpt2,
            "n_head",
            3.into(),
            "gpt2-heads3",
            "3 heads of 10 do not make the width 32",
        ),
        (
            &gpt2,
            "n_embd",
            33.into(),
            "gpt2-embd33",
            "4 heads of 8 do not make the width 33",
        ),
        (
            &phi,
            "num_attention_heads",
            3.into(),
            "phi-heads3",
            "5 rotated dimensions per head (head size 10): RoPE needs an even number",
        ),
        (
            &phi,
            "num_key_value_heads",
            3.into(),
            "phi-kv3",
            "attention heads 4 must be a positive multiple of kv heads 3",
        ),
    ];
    for (src, key, value, name, want) in cases_hf {
        hf_with(src, key, value, &p(name));
        let cmd = if name.starts_with("bert") {
            "embed"
        } else {
            "generate"
        };
        cases.push((p(name), cmd, want));
    }
    let mut failures = Vec::new();
    for (m, cmd, want) in &cases {
        let m = m.to_str().unwrap();
        let args: Vec<&str> = match *cmd {
            "embed" => vec!["embed", "-m", m, "hello"],
            _ => vec!["generate", "-m", m, "-p", "hi", "-n", "2"],
        };
        let o = Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("run patchbay");
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.code() != Some(1)
            || !err.contains(want)
            || !err.contains(m)
            || err.contains("panicked")
            || err.contains("backtrace")
        {
            failures.push(format!(
                "{args:?}: exit {:?}, wants {want:?}:\n{err}",
                o.status
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
