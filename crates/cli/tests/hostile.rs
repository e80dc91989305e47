//! Hostile input against the `patchbay` binary: every case must end with a
//! clear message naming what was wrong and the expected exit code, in bounded
//! memory, and never with a panic or a backtrace (the binary runs with
//! `RUST_BACKTRACE=1`, so a panic would show one).

mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the case's stdout goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Out {
    /// Captured.
    Pipe,
    /// `/dev/full`: every write fails with "No space left on device".
    Full,
}

/// One row of the table.
struct Case {
    args: Vec<String>,
    stdout: Out,
    /// Expected exit code.
    code: i32,
    /// A substring stderr must contain (case-sensitive).
    stderr: &'static str,
    /// A substring stderr must not contain.
    not: Option<&'static str>,
    /// What stdin holds (empty when `None`).
    input: Option<&'static str>,
    /// Peak resident memory allowed, in MB (300 MB unless set: the
    /// stories260K cases; a larger model's cases set its file size + 150 MB).
    peak_mb: u64,
    /// Most seconds the case may take, if bounded.
    secs: Option<f64>,
}

impl Case {
    fn without(self, not: &'static str) -> Case {
        Case {
            not: Some(not),
            ..self
        }
    }
    fn stdout_full(self, code: i32, stderr: &'static str) -> Case {
        Case {
            stdout: Out::Full,
            code,
            stderr,
            ..self
        }
    }
    fn stdin(self, input: &'static str) -> Case {
        Case {
            input: Some(input),
            ..self
        }
    }
    fn peak(self, peak_mb: u64) -> Case {
        Case { peak_mb, ..self }
    }
    fn within(self, secs: f64) -> Case {
        Case {
            secs: Some(secs),
            ..self
        }
    }
}

fn case(args: &[&str], code: i32, stderr: &'static str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdout: Out::Pipe,
        code,
        stderr,
        not: None,
        input: None,
        peak_mb: 300,
        secs: None,
    }
}

fn full(args: &[&str], code: i32, stderr: &'static str) -> Case {
    Case {
        stdout: Out::Full,
        ..case(args, code, stderr)
    }
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("patchbay-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one case, returning a description of what went wrong, if anything.
fn run(c: &Case) -> Option<String> {
    let stdout = match c.stdout {
        Out::Pipe => Stdio::piped(),
        Out::Full => Stdio::from(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("open /dev/full"),
        ),
    };
    let input = match c.input {
        Some(text) => {
            let f = scratch_dir().join(format!("stdin-{:x}.txt", text.len()));
            std::fs::write(&f, text).unwrap();
            Stdio::from(std::fs::File::open(f).unwrap())
        }
        None => Stdio::null(),
    };
    let t0 = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(&c.args)
        .env("RUST_BACKTRACE", "1")
        .env("PATCHBAY_REPORT_PEAK_RSS", "1")
        .stdin(input)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("run patchbay");
    let secs = t0.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout);
    let mut wrong = Vec::new();
    for bad in ["lse null", ",null]", "PPL = NaN", "NaN +/-"] {
        if out.contains(bad) {
            wrong.push(format!("stdout has {bad:?}"));
        }
    }
    if o.status.code() != Some(c.code) {
        wrong.push(format!("exit {:?}, expected {}", o.status, c.code));
    }
    if !err.contains(c.stderr) {
        wrong.push(format!("stderr lacks {:?}", c.stderr));
    }
    if let Some(not) = c.not {
        if err.contains(not) {
            wrong.push(format!("stderr has {not:?}"));
        }
    }
    if err.contains("panicked") || err.contains("stack backtrace") {
        wrong.push("panicked".to_string());
    }
    // Progress bars and running figures are for terminals only.
    if err.contains('\r') || err.contains("\x1b[") {
        wrong.push("stderr (a pipe) has progress output".to_string());
    }
    match peak_kb(&err) {
        None => wrong.push("no peak RSS report on stderr".to_string()),
        Some(kb) => {
            let shown: Vec<String> = c
                .args
                .iter()
                .map(|a| match a.char_indices().nth(40) {
                    Some((i, _)) => format!("{}...", &a[..i]),
                    None => a.clone(),
                })
                .collect();
            eprintln!(
                "peak {:>7.1} MB (bound {:>4} MB), {secs:>6.2} s: {shown:?}",
                kb as f64 / 1024.0,
                c.peak_mb,
            );
            if kb > c.peak_mb * 1024 {
                wrong.push(format!(
                    "peak RSS {kb} kB over the bound of {} MB",
                    c.peak_mb
                ));
            }
        }
    }
    if let Some(max) = c.secs {
        if secs > max {
            wrong.push(format!("took {secs:.2} s, bound {max} s"));
        }
    }
    if wrong.is_empty() {
        None
    } else {
        Some(format!(
            "patchbay {:?} (stdout {:?}): {}\n--- stderr ---\n{err}",
            c.args,
            c.stdout,
            wrong.join("; ")
        ))
    }
}

/// The `peak RSS: N kB` figure the binary prints with
/// `PATCHBAY_REPORT_PEAK_RSS` set.
fn peak_kb(stderr: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.starts_with("peak RSS: "))?;
    line["peak RSS: ".len()..]
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()
}

/// A model file's size + 150 MB, in MB: the bound for cases running it.
fn size_bound(name: &str) -> u64 {
    let path = patchbay_models::catalog::resolve_model(name).unwrap();
    let bytes = if path.is_dir() {
        std::fs::read_dir(&path)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    } else {
        std::fs::metadata(&path).unwrap().len()
    };
    bytes / (1 << 20) + 150
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn hostile_inputs_get_clear_errors_and_exit_codes() {
    require("stories260k");
    require("smollm2-135m");
    require("minilm-l6-v2");
    let dir = scratch_dir();
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "Once upon a time there was a little girl. ".repeat(40),
    )
    .unwrap();
    let text = path_str(&text).to_string();
    let two_prompts = dir.join("two.txt");
    std::fs::write(&two_prompts, "Once upon a time\nThe sun\n").unwrap();
    let two_prompts = path_str(&two_prompts).to_string();
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let fifo = path_str(&fifo).to_string();
    let converted = path_str(&dir.join("converted")).to_string();
    // 100 000 characters: far more tokens than stories260K's 512 positions.
    let long = dir.join("long.txt");
    std::fs::write(&long, "Once upon a time. ".repeat(100_000 / 18 + 1)).unwrap();
    let long = path_str(&long).to_string();
    // Chat templates that are small programs gone wrong.
    let doubling = dir.join("doubling.jinja");
    std::fs::write(
        &doubling,
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    )
    .unwrap();
    let doubling = path_str(&doubling).to_string();
    let endless = dir.join("endless.jinja");
    std::fs::write(
        &endless,
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let endless = path_str(&endless).to_string();
    let missing_template = path_str(&dir.join("no-such.jinja")).to_string();
    let random_gguf = dir.join("random.gguf");
    std::fs::write(&random_gguf, pseudo_random_bytes(3000)).unwrap();
    let random_gguf = path_str(&random_gguf).to_string();
    let novocab = dir.join("novocab.gguf");
    std::fs::write(&novocab, gguf_without_vocab()).unwrap();
    let novocab = path_str(&novocab).to_string();
    // Weights that make the forward pass non-finite.
    let nan_bin = stories_with_bad_norm(&dir, "nan.bin", 2, f32::NAN);
    let inf_bin = stories_with_bad_norm(&dir, "inf.bin", 1, f32::INFINITY);
    let mislabelled = smollm2_with_q4_1_labelled_q4_0(&dir);
    let smol = size_bound("smollm2-135m");
    let minilm = size_bound("minilm-l6-v2");
    // Crafted GGUFs from SmolLM2's: hyper-parameters, tensor infos, lengths.
    let gguf =
        std::fs::read(patchbay_models::catalog::resolve_model("smollm2-135m").unwrap()).unwrap();
    let put = |name: &str, bytes: Vec<u8>| -> String {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        path_str(&p).to_string()
    };
    let nan_eps = put(
        "nan-eps.gguf",
        patch_key(
            &gguf,
            "llama.attention.layer_norm_rms_epsilon",
            6,
            &f32::NAN.to_le_bytes(),
        ),
    );
    let blocks0 = put(
        "blocks0.gguf",
        patch_key(&gguf, "llama.block_count", 4, &0u32.to_le_bytes()),
    );
    let lying = put(
        "lying-offset.gguf",
        patch_tensor(&gguf, Field::Offset, &(1u64 << 60).to_le_bytes()),
    );
    let huge = put(
        "huge-dim.gguf",
        patch_tensor(&gguf, Field::Dim, &(1u64 << 62).to_le_bytes()),
    );
    let dtype = put(
        "dtype99.gguf",
        patch_tensor(&gguf, Field::Type, &99u32.to_le_bytes()),
    );
    let head = put("truncated-header.gguf", gguf[..1000].to_vec());
    let half = put("truncated-data.gguf", gguf[..gguf.len() / 2].to_vec());
    drop(gguf);
    let stories =
        std::fs::read(patchbay_models::catalog::resolve_model("stories260k").unwrap()).unwrap();
    let short_bin = put("short.bin", stories[..1000].to_vec());
    let mut v256 = stories.clone();
    v256[20..24].copy_from_slice(&256i32.to_le_bytes()); // vocab_size: ids of tok512 overflow it
    let vocab256 = put("vocab256.bin", v256);
    let bad_utf8 = put("bad-utf8.txt", b"Once \xff\xfe upon".to_vec());
    let one_mb = put(
        "1mb.txt",
        "Once upon a time. ".repeat((1 << 20) / 18).into_bytes(),
    );
    let forty_kb = "Once upon a time there was a little girl named Lily. ".repeat(40_000 / 53);
    let m = ["-m", "stories260k"];
    let with_m = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.splice(1..1, m.iter().map(|s| s.to_string()));
        v
    };
    let cm = |args: &[&str], code, stderr| Case {
        args: with_m(args),
        ..case(&[], code, stderr)
    };
    let fm = |args: &[&str], code, stderr| Case {
        args: with_m(args),
        ..full(&[], code, stderr)
    };
    let cases: Vec<Case> = vec![
        // 1. A huge penalty window: an error, not a multi-terabyte allocation.
        cm(
            &["generate", "-p", "hi", "--repeat-last-n", "1000000000000"],
            1,
            "repeat-last-n = 1000000000000 is invalid: it must be in [0, ",
        ),
        cm(
            &[
                "generate",
                "-p",
                "hi",
                "-n",
                "4",
                "--repeat-penalty",
                "1.1",
                "--repeat-last-n",
                "1000000",
            ],
            0,
            "generated",
        ),
        // 2. A prompt batch far past the context: an error, not an abort.
        cm(
            &["bench", "-p", "1000000000"],
            1,
            "-p 1000000000 = 1000000000 tokens do not fit the model's context: each test's tokens, after the deepest -d, must come to at most 512",
        ),
        cm(
            &["bench", "-d", "500", "-p", "8", "-n", "4", "--pg", "8,8"],
            1,
            "-d 500 + --pg 8,8 = 516 tokens do not fit the model's context: each test's tokens, after the deepest -d, must come to at most 512",
        ),
        // 3. Flags that must be at least 1.
        cm(&["logits", "-p", "hi", "--top", "0"], 2, "--top <TOP>': must be a whole number from 1 to"),
        cm(&["bench", "-r", "0"], 2, "--repetitions <REPETITIONS>': must be a whole number from 1 to"),
        // 4. Negative numbers name the flag and its range.
        cm(&["generate", "-p", "hi", "-n", "-1"], 2, "--n-predict <N_PREDICT>': must be a whole number from 0 to"),
        cm(&["generate", "-p", "hi", "--seed", "-1"], 2, "--seed <SEED>': must be a whole number from 0 to"),
        cm(&["generate", "-p", "hi", "--threads", "-1"], 2, "--threads <THREADS>': must be a whole number from 0 to"),
        cm(&["bench", "-p", "-5"], 2, "--n-prompt <N_PROMPT>': must be a whole number from 0 to"),
        cm(&["bench", "-n", "8,-5"], 2, "--n-gen <N_GEN>': must be a whole number from 0 to"),
        cm(&["bench", "--pg", "8"], 2, "for '--pg <PP,TG>': must be two counts PP,TG"),
        cm(&["bench", "-pg", "8,0"], 2, "for '--pg <PP,TG>': TG must be a whole number from 1 to"),
        cm(&["bench", "--pg", "x,8"], 2, "for '--pg <PP,TG>': PP must be a whole number from 1 to"),
        cm(&["generate", "-p", "hi", "--max-context", "0"], 2, "--max-context <MAX_CONTEXT>': must be a whole number from 1 to"),
        cm(&["generate", "-p", "hi", "--ctk", "q8_0"], 2, "invalid value 'q8_0' for '--cache-type-k <f32|f16>': \"q8_0\" is not a KV cache type (f32 or f16)"),
        cm(&["perplexity", "-f", &text, "--cache-type-v", "F64"], 2, "invalid value 'F64' for '--cache-type-v <f32|f16>'"),
        cm(&["bench", "--ctv", "f16,"], 2, "for '--cache-type-v <f32|f16>'"),
        // 5. Perplexity: a context too small to score, and --chunks 0 = all.
        cm(
            &["perplexity", "-f", &text, "--ctx", "2"],
            1,
            "--ctx 2 is too small: a chunk scores only its second half (0 tokens here); --ctx must be at least 5",
        ),
        cm(&["perplexity", "-f", &text, "--ctx", "64", "--chunks", "0"], 0, "tokenized")
            .without("[1]"),
        // 6. Honest summaries: no rate without two tokens, the time to the
        // first token, and why generation stopped.
        cm(&["generate", "-p", "Once upon a time", "-n", "0"], 0, "prompt 5 tokens, not run | generated 0 tokens |")
            .without("t/s"),
        cm(&["generate", "-p", "Once upon a time", "-n", "1"], 0, "first token")
            .without("generated 1 tokens,"),
        cm(&["generate", "-p", "Once upon a time", "-n", "3"], 0, "stopped: token limit reached (-n 3)"),
        cm(
            &["generate", "-p", "Once upon a time", "--max-context", "32", "-n", "100"],
            0,
            "stopped: context full (it holds 32 tokens) before -n 100 tokens",
        ),
        // 7. A full device loses output: a message and a failure.
        fm(&["generate", "-p", "Once upon a time", "-n", "20"], 1, "error: writing the generated text to stdout: No space left on device"),
        fm(&["logits", "-p", "hi"], 1, "error: writing to stdout: No space left on device"),
        case(&["inspect", "stories260k"], 0, "").stdout_full(1, "error: writing to stdout: No space left on device"),
        fm(&["tokenize", "hi"], 1, "error: writing to stdout: No space left on device"),
        fm(&["bench", "-p", "8", "-n", "8", "-r", "1"], 1, "error: writing to stdout: No space left on device"),
        fm(&["perplexity", "-f", &text, "--ctx", "64", "--chunks", "1"], 1, "error: writing to stdout: No space left on device"),
        fm(&["convert", "-o", &converted], 1, "error: writing to stdout: No space left on device"),
        full(&["embed", "hello"], 1, "error: writing to stdout: No space left on device").peak(minilm),
        fm(&["graph"], 1, "error: writing to stdout: No space left on device"),
        // The convert above left its output: it is not overwritten without
        // --force, and --force replaces it (by rename, see models' tests).
        cm(&["convert", "-o", &converted], 1, "is not empty; convert does not overwrite it unless --force is given"),
        cm(&["convert", "-o", &converted, "--force"], 0, ""),
        // 8. A FIFO or a device is refused, not read forever.
        case(&["generate", "-m", &fifo, "-p", "hi"], 1, "is not a regular file or a directory: a model must be one"),
        case(&["inspect", "/dev/zero"], 1, "/dev/zero is not a regular file or a directory: a model must be one"),
        cm(&["generate", "-f", &fifo], 1, "not a regular file: -f needs one"),
        cm(&["perplexity", "-f", "/dev/zero"], 1, "reading /dev/zero: not a regular file: -f needs one"),
        case(&["embed", "-f", "/dev/zero"], 1, "reading /dev/zero: not a regular file: -f needs one"),
        // Chat says when a reply was cut, and fails when it is lost.
        case(&["chat", "-m", "smollm2-135m", "-n", "3", "--temp", "0"], 0, "[reply cut at -n 3 tokens]")
            .stdin("Hello\n").peak(smol),
        full(&["chat", "-m", "smollm2-135m", "-n", "3", "--temp", "0"], 1, "error: writing the reply to stdout: No space left on device")
            .stdin("Hello\n").peak(smol),
        // A chat template is untrusted code: a string doubled in a loop is
        // stopped at its memory bound (256 MB) and a loop at its fuel.
        cm(&["chat", "--chat-template-file", &doubling], 1, "error: the chat template needed more than 256 MB of memory and was stopped")
            .stdin("Hello\n"),
        cm(&["chat", "--chat-template-file", &endless], 1, "the chat template ran more than 20000000 instructions and was stopped")
            .stdin("Hello\n"),
        cm(&["chat", "--chat-template-file", &missing_template], 2, "no-such.jinja: No such file or directory")
            .stdin("Hello\n"),
        // A prompt past the context: raising --max-context is suggested only
        // when it would help.
        cm(&["generate", "-f", &long, "--max-context", "100000"], 1, "exceeds the model's context of 512 tokens, leaving no room to generate; shorten the prompt")
            .without("raise --max-context"),
        cm(&["generate", "-f", &text, "--max-context", "32"], 1, "the context holds 32 (raise --max-context, up to the model's limit)"),
        // A .gguf that is not one, and one without a vocabulary.
        case(&["tokenize", "-m", &random_gguf, "hi"], 1, "random.gguf: not a GGUF file: expected magic \"GGUF\"")
            .without("expected a .gguf file"),
        case(&["tokenize", "-m", &novocab, "hi"], 1, "novocab.gguf: this GGUF has no tokenizer metadata (key 'tokenizer.ggml.model' not found)")
            .without("expected a .gguf file"),
        // Non-finite logits stop every command with an error naming the
        // first layer that went non-finite (no `null` logits, no `PPL = NaN`).
        case(&["generate", "-m", &nan_bin, "-p", "Once upon a time", "-n", "5"], 1, "logits at position 4: layer 2 is the first to produce NaN (at position 0)"),
        case(&["logits", "-m", &nan_bin, "-p", "Once upon a time"], 1, "the forward pass produced NaN logits at position 0: layer 2 is the first to produce NaN"),
        // Perplexity computes the logits of the scored half only (positions 32.. of a
        // 64-token chunk); the diagnosis still finds the first layer and position.
        case(&["perplexity", "-m", &nan_bin, "-f", &text, "--ctx", "64", "--chunks", "2"], 1, "the forward pass produced NaN logits at position 32: layer 2 is the first to produce NaN (at position 0)"),
        case(&["generate", "-m", &nan_bin, "-f", &two_prompts, "--batch-prompts", "-n", "4"], 1, "layer 2 is the first to produce NaN"),
        case(&["bench", "-m", &nan_bin, "-p", "8", "-n", "4", "-r", "1"], 1, "pp8: the forward pass produced NaN logits"),
        case(&["generate", "-m", &inf_bin, "-p", "Once upon a time", "-n", "5"], 1, "layer 1 is the first to produce"),
        // A Q4_1 tensor labelled Q4_0 still fits the file (Q4_0 blocks are
        // smaller), so it opens; its garbage scales must not print garbage.
        case(&["generate", "-m", &mislabelled, "-p", "Once upon a time", "-n", "5"], 1, "non-finite logits at position 3: layer 0 (or the token embedding feeding it) is the first to produce NaN").peak(smol),
        case(&["logits", "-m", &mislabelled, "-p", "Once upon a time"], 1, "layer 0 (or the token embedding feeding it) is the first to produce NaN").peak(smol),
        // Too many threads: capped, said so, memory bounded.
        cm(&["generate", "-p", "hi", "-n", "4", "--threads", "1000"], 0, "note: --threads 1000 capped to"),
        cm(&["generate", "-p", "hi", "-n", "4", "--threads", "1000000000"], 0, "note: --threads 1000000000 capped to"),
        // Impossible hyper-parameters, named with the file.
        case(&["generate", "-m", &nan_eps, "-p", "hi"], 1, "nan-eps.gguf: corrupt header: hyper-parameter llama.attention.layer_norm_rms_epsilon: is NaN"),
        case(&["generate", "-m", &blocks0, "-p", "hi"], 1, "blocks0.gguf: corrupt header: hyper-parameter llama.block_count: is 0; it must be at least 1"),
        // Lying offsets, overflowing shapes, unknown types, truncations.
        case(&["generate", "-m", &lying, "-p", "hi"], 1, "lying-offset.gguf: tensor 'blk.0.ffn_down.weight': data at").peak(smol),
        case(&["inspect", &huge], 1, "huge-dim.gguf: tensor 'blk.0.ffn_down.weight': q4_1 shape [4611686018427387904, 1536]: Tensor shape: shape overflows usize").peak(smol),
        case(&["generate", "-m", &dtype, "-p", "hi"], 1, "dtype99.gguf: tensor 'blk.0.ffn_down.weight': unsupported element type ggml type 99").peak(smol),
        case(&["generate", "-m", &head, "-p", "hi"], 1, "truncated-header.gguf: truncated: tensor count"),
        case(&["logits", "-m", &half, "-p", "hi"], 1, "truncated-data.gguf: tensor 'blk.15.attn_output.weight': data at").peak(smol),
        case(&["generate", "-m", &short_bin, "-p", "hi"], 1, "short.bin: truncated: tensor 'token_embedding_table'"),
        // Token ids past the embedding table.
        case(&["generate", "-m", &vocab256, "-p", "Once upon a time there"], 1, "token id 403 is outside the vocabulary of 256"),
        // Invalid UTF-8, a 1 MB prompt, a 40 KB text for llama2.c's tokenizer.
        cm(&["generate", "-f", &bad_utf8], 1, "bad-utf8.txt is not valid UTF-8 (first bad byte at offset 5)"),
        cm(&["generate", "-f", &one_mb], 1, "exceeds the model's context of 512 tokens"),
        cm(&["perplexity", "-f", &bad_utf8], 1, "bad-utf8.txt is not valid UTF-8"),
        cm(&["tokenize", &forty_kb], 0, "").within(5.0),
    ];
    let failures: Vec<String> = cases.iter().filter_map(run).collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Deterministic noise (an LCG), so a "random" file is the same every run.
fn pseudo_random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// A valid GGUF (version 3) with one metadata key and no tensors: no
/// `tokenizer.*` keys at all.
fn gguf_without_vocab() -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata keys
    let key = b"general.architecture";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key);
    b.extend(8u32.to_le_bytes()); // string
    b.extend(5u64.to_le_bytes());
    b.extend(b"llama");
    b
}

/// Each file error names the path once and the OS error once (no
/// `loading X: X: ...`, no `... (os error 2): ... (os error 2)`).
#[test]
fn file_errors_name_the_path_once() {
    let dir = scratch_dir().join("once");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.gguf");
    let empty = dir.join("empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let truncated = dir.join("truncated.gguf");
    let mut t = gguf_without_vocab();
    t.truncate(30);
    std::fs::write(&truncated, t).unwrap();
    let bad_st = dir.join("bad.safetensors");
    std::fs::write(&bad_st, b"{\"x\":").unwrap();
    // Running as root, a permission error cannot be provoked: an index whose
    // shard is missing gives an OS error from the file system instead.
    let sharded = dir.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        r#"{"weight_map":{"a":"gone.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(
        sharded.join("config.json"),
        r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama"}"#,
    )
    .unwrap();
    let gone = sharded.join("gone.safetensors");
    let cases: Vec<(&Path, &Path, &str)> = vec![
        (
            &missing,
            &missing,
            "neither an existing file nor a known model",
        ),
        (&empty, &empty, "directory holds neither model.safetensors"),
        (&truncated, &truncated, "truncated"),
        (&bad_st, &bad_st, "truncated"),
        (&sharded, &gone, "No such file or directory"),
    ];
    let mut failures = Vec::new();
    for (model, named, what) in cases {
        for cmd in [
            vec!["generate", "-m", path_str(model), "-p", "hi"],
            vec!["inspect", path_str(model)],
        ] {
            let o = Command::new(env!("CARGO_BIN_EXE_patchbay"))
                .args(&cmd)
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .output()
                .expect("run patchbay");
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            let times = err.matches(path_str(named)).count();
            let os = err.matches("(os error").count();
            if o.status.code() != Some(1) || times != 1 || !err.contains(what) || os > 1 {
                failures.push(format!(
                    "{cmd:?}: exit {:?}, path named {times} times, OS error {os} times, wants {what:?}:\n{err}",
                    o.status
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// stories260K (llama2.c format) with layer `layer`'s attention-norm weights
/// set to `value`, and its tokenizer beside it; returns the model's path.
fn stories_with_bad_norm(dir: &Path, name: &str, layer: usize, value: f32) -> String {
    let src = patchbay_models::catalog::resolve_model("stories260k").unwrap();
    let mut b = std::fs::read(&src).unwrap();
    let h: Vec<i32> = (0..7)
        .map(|i| i32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()))
        .collect();
    let (dim, vocab) = (h[0] as usize, h[5].unsigned_abs() as usize);
    // Header, token embeddings, then every layer's attention-norm weights.
    let start = 28 + 4 * (vocab * dim + layer * dim);
    for i in 0..dim {
        b[start + 4 * i..start + 4 * i + 4].copy_from_slice(&value.to_le_bytes());
    }
    let out = dir.join(name);
    std::fs::write(&out, b).unwrap();
    let tok = src.parent().unwrap().join("tok512.bin");
    std::fs::copy(&tok, dir.join("tok512.bin")).unwrap();
    path_str(&out).to_string()
}

/// SmolLM2-135M (Q4_1) with its first Q4_1 tensor, `blk.0.ffn_down.weight`,
/// labelled Q4_0.
fn smollm2_with_q4_1_labelled_q4_0(dir: &Path) -> String {
    let src = patchbay_models::catalog::resolve_model("smollm2-135m").unwrap();
    let mut b = std::fs::read(&src).unwrap();
    let name = b"blk.0.ffn_down.weight";
    let at = b
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor info of blk.0.ffn_down.weight");
    let n_dims = u32::from_le_bytes(b[at + name.len()..at + name.len() + 4].try_into().unwrap());
    let ty = at + name.len() + 4 + 8 * n_dims as usize;
    assert_eq!(
        &b[ty..ty + 4],
        &3u32.to_le_bytes(),
        "expected a Q4_1 tensor"
    );
    b[ty..ty + 4].copy_from_slice(&2u32.to_le_bytes());
    let out = dir.join("mislabelled.gguf");
    std::fs::write(&out, b).unwrap();
    path_str(&out).to_string()
}

/// `gguf` with metadata key `key` (of GGUF type `ty`) holding `value`.
fn patch_key(gguf: &[u8], key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = gguf.to_vec();
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend(key.as_bytes());
    let at = b
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("key {key}"))
        + needle.len();
    assert_eq!(&b[at..at + 4], &ty.to_le_bytes(), "type of {key}");
    b[at + 4..at + 4 + value.len()].copy_from_slice(value);
    b
}

/// A field of `blk.0.ffn_down.weight`'s tensor info.
enum Field {
    Dim,
    Type,
    Offset,
}

/// `gguf` with a field of `blk.0.ffn_down.weight`'s tensor info overwritten.
fn patch_tensor(gguf: &[u8], field: Field, value: &[u8]) -> Vec<u8> {
    let mut b = gguf.to_vec();
    let name = b"blk.0.ffn_down.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let o = match field {
        Field::Dim => at + 4 + 8,
        Field::Type => at + 4 + 8 * n_dims,
        Field::Offset => at + 4 + 8 * n_dims + 4,
    };
    b[o..o + value.len()].copy_from_slice(value);
    b
}
