//! GPT-2 and Phi (parallel blocks) against an independent float64 reference.
//!
//! No trained weights of either are available here, so `scripts/tiny-reference.py`
//! (plain Python, its own forward passes written from HF's `modeling_gpt2.py`
//! and `modeling_phi.py`, its own byte-level BPE) writes a tiny random HF
//! checkpoint with GPT-2's real tokenizer and vocabulary, and the float64
//! logits of every prompt position plus a greedy continuation. patchbay opens
//! the directory like any model: logits must agree within 1e-4 and the greedy
//! tokens must be identical.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use patchbay_blocks::SamplerConfig;
use patchbay_combinators::{Capacity, Ctx, Layer, Scratch, Step};
use patchbay_models::catalog;
use patchbay_models::families::{self, gpt2, BuildOptions, CausalLmVisitor, Model};
use patchbay_models::formats::gguf::Value;
use patchbay_models::formats::source::ModelSource;
use patchbay_models::runners::session::{self, Session, SessionJob, SessionOptions};
use patchbay_primitives::{Act, DType, Simd, Threads};
use support::gguf_writer::{to_bytes, TensorData};

/// Logits of every prompt position must lie this close to the reference.
const TOLERANCE: f64 = 1e-4;

/// Runs the reference script for `family` into a fresh directory and returns
/// the directory and its `reference.json`.
pub fn make_reference(family: &str) -> (PathBuf, serde_json::Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tiny-reference.py");
    let tokdir = catalog::models_dir().join("gpt2-tokenizer");
    assert!(
        tokdir.join("encoder.json").is_file() && tokdir.join("vocab.bpe").is_file(),
        "GPT-2 tokenizer files are not in {}; run `scripts/fetch-gpt2-tokenizer` \
         (or `scripts/fetch-models gpt2-tokenizer`)",
        tokdir.display()
    );
    let dir = std::env::temp_dir().join(format!(
        "patchbay-tiny-{family}-{}-{:?}",
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
            "python3 is not installed: it is needed to run {} (the independent float64 \
             reference for the GPT-2 and Phi families); install Python 3",
            script.display()
        ),
        Err(e) => panic!("running python3 {}: {e}", script.display()),
    };
    assert!(
        out.status.success(),
        "{} {family} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

struct Check<'a> {
    reference: &'a serde_json::Value,
    family: &'a str,
}

impl SessionJob for Check<'_> {
    type Output = f64;
    fn run<N: Layer>(self, mut session: Session<N>) -> f64 {
        let r = self.reference;
        assert_eq!(session.info.family, self.family);
        let prompt = ids(&r["prompt_ids"]);
        // patchbay's own tokenizer agrees with the script's BPE.
        let text = r["prompt"].as_str().unwrap();
        assert_eq!(session.tokenizer.encode(text, true), prompt, "{text:?}");

        let want = r["logits"].as_array().unwrap();
        assert_eq!(want.len(), prompt.len());
        let got = session.logits(&prompt).unwrap().clone();
        let vocab = session.info.vocab;
        assert_eq!(got.cols(), vocab);
        let mut worst: (f64, usize, usize) = (0.0, 0, 0);
        for (p, row) in want.iter().enumerate() {
            let row = row.as_array().unwrap();
            assert_eq!(row.len(), vocab);
            for (i, w) in row.iter().enumerate() {
                let d = (got.row(p)[i] as f64 - w.as_f64().unwrap()).abs();
                if d > worst.0 {
                    worst = (d, p, i);
                }
            }
        }
        let (max_diff, p, i) = worst;
        println!(
            "{}: max |Δlogit| = {max_diff:.3e} over {} positions x {vocab} (worst at position {p}, token {i})",
            self.family,
            prompt.len()
        );
        assert!(
            max_diff < TOLERANCE,
            "{}: logit {i} at position {p} is off by {max_diff:e} (tolerance {TOLERANCE:e})",
            self.family
        );

        // Greedy continuation from a fresh sequence.
        session.reset();
        let want_ids = ids(&r["greedy_ids"]);
        let mut greedy = Vec::new();
        session
            .generate_raw(&prompt, want_ids.len(), |t| {
                greedy.push(t);
                Step::Continue
            })
            .unwrap();
        assert_eq!(greedy, want_ids, "{}: greedy continuation", self.family);
        let shown: Vec<u32> = greedy.iter().copied().filter(|&t| t != 50256).collect();
        assert_eq!(
            session.tokenizer.decode(&shown),
            r["greedy_text"].as_str().unwrap()
        );
        max_diff
    }
}

fn check(family: &str) {
    let (dir, reference) = make_reference(family);
    let opts = SessionOptions {
        threads: 1,
        max_context: 64,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        },
        ..SessionOptions::default()
    };
    let job = Check {
        reference: &reference,
        family,
    };
    session::with_session(&dir, &opts, job).unwrap_or_else(|e| panic!("{family}: {e}"));

    // An activation the family does not run is refused, naming the key.
    let key = match family {
        "gpt2" => "activation_function",
        _ => "hidden_act",
    };
    let config = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c[key] = "relu".into();
    std::fs::write(&config, c.to_string()).unwrap();
    let err = session::with_session(
        &dir,
        &opts,
        Check {
            reference: &reference,
            family,
        },
    )
    .err()
    .unwrap_or_else(|| panic!("{family}: a relu config was accepted"))
    .to_string();
    assert!(err.contains(&format!("{key} 'relu'")), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gpt2_matches_float64_reference() {
    check("gpt2");
}

#[test]
fn phi_parallel_blocks_match_float64_reference() {
    check("phi");
}

/// The logits of every position of `ids` from the network in `source`.
fn logits_of(source: &ModelSource, ids: &[u32]) -> Vec<f32> {
    struct Run<'a>(&'a [u32]);
    impl CausalLmVisitor for Run<'_> {
        type Output = Vec<f32>;
        fn visit<N: Layer>(self, model: Model<N>) -> Vec<f32> {
            let (threads, scratch) = (Threads::single(), Scratch::new());
            let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
            let mut st = model.net.new_state(Capacity::new(self.0.len(), 64));
            let x = Act::from_tokens(self.0);
            model.net.apply(&x, &mut st, &ctx).unwrap().into_vec()
        }
    }
    let opts = BuildOptions {
        max_context: 64,
        ..BuildOptions::default()
    };
    families::with_causal_lm(source, &opts, Run(ids)).unwrap()
}

/// The same tiny weights under llama.cpp's GGUF names and layout bind to the
/// same family and give the same logits: GPT-2's `Conv1D` weights are stored
/// transposed (`[out, in]`) as llama.cpp's converter does, and read in place.
fn gguf_binds_the_same_weights(family: &str) {
    let (dir, r) = make_reference(family);
    let hf = families::open(&dir).unwrap();
    let h = hf.hparams().clone();
    let (arch, mut names) = match family {
        "gpt2" => (
            "gpt2",
            vec![
                "token_embd.weight".to_string(),
                "position_embd.weight".into(),
            ],
        ),
        _ => (
            "phi2",
            vec![
                "token_embd.weight".to_string(),
                "output.weight".into(),
                "output.bias".into(),
            ],
        ),
    };
    names.extend(["output_norm.weight".into(), "output_norm.bias".into()]);
    let block: &[&str] = match family {
        "gpt2" => &[
            "attn_norm",
            "attn_qkv",
            "attn_output",
            "ffn_norm",
            "ffn_up",
            "ffn_down",
        ],
        _ => &[
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_up",
            "ffn_down",
        ],
    };
    for i in 0..h.n_layer {
        for t in block {
            names.push(format!("blk.{i}.{t}.weight"));
            names.push(format!("blk.{i}.{t}.bias"));
        }
    }
    let conv1d = [
        "attn_qkv.weight",
        "attn_output.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ];
    let tensors: Vec<TensorData> = names
        .iter()
        .map(|name| {
            let mut t = hf.tensor(name).unwrap();
            if family == "gpt2"
                && name.starts_with("blk.")
                && conv1d.iter().any(|c| name.ends_with(c))
            {
                t = gpt2::transpose(&t).unwrap();
            }
            TensorData {
                name: name.clone(),
                dtype: DType::F32,
                shape: t.shape().to_vec(),
                data: t.bytes().to_vec(),
            }
        })
        .collect();
    assert_eq!(
        tensors.len(),
        hf.tensor_entries().len(),
        "every tensor mapped"
    );
    let k = |s: &str| format!("{arch}.{s}");
    let mut meta = vec![
        (
            "general.architecture".to_owned(),
            Value::String(arch.into()),
        ),
        (k("embedding_length"), Value::U32(h.n_embd as u32)),
        (k("block_count"), Value::U32(h.n_layer as u32)),
        (k("attention.head_count"), Value::U32(h.n_head as u32)),
        (k("attention.head_count_kv"), Value::U32(h.n_head_kv as u32)),
        (k("feed_forward_length"), Value::U32(h.n_ff as u32)),
        (k("context_length"), Value::U32(h.n_ctx as u32)),
        (k("attention.layer_norm_epsilon"), Value::F32(h.norm_eps)),
    ];
    if family == "phi" {
        meta.push((
            k("rope.dimension_count"),
            Value::U32((h.head_dim / 2) as u32),
        ));
    }
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, to_bytes(3, &meta, &tensors)).unwrap();
    let gguf = families::open(&path).unwrap();
    assert_eq!(families::family_of(&gguf).unwrap().name(), family);

    let ids = ids(&r["prompt_ids"]);
    let (a, b) = (logits_of(&hf, &ids), logits_of(&gguf, &ids));
    assert_eq!(a, b, "{family}: GGUF and safetensors logits differ");
    let want: Vec<f64> = r["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let max = b
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    assert!(max < TOLERANCE, "{family} GGUF: max |dlogit| {max:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gpt2_gguf_names_bind_the_same_weights() {
    gguf_binds_the_same_weights("gpt2");
}

#[test]
fn phi2_gguf_names_bind_the_same_weights() {
    gguf_binds_the_same_weights("phi");
}

/// A GPT-2 checkpoint saved from `GPT2LMHeadModel` names every tensor under
/// `transformer.`: the same weights read the same.
#[test]
fn gpt2_names_under_transformer_prefix_read_the_same() {
    let (dir, r) = make_reference("gpt2");
    let plain = logits_of(&families::open(&dir).unwrap(), &ids(&r["prompt_ids"]));
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let renamed: serde_json::Map<String, serde_json::Value> = header
        .into_iter()
        .map(|(k, v)| (format!("transformer.{k}"), v))
        .collect();
    let mut text = serde_json::Value::Object(renamed).to_string().into_bytes();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&file, out).unwrap();
    let source = families::open(&dir).unwrap();
    assert!(source
        .tensor_entries()
        .iter()
        .all(|t| t.name.starts_with("transformer.h.")
            || t.name.starts_with("transformer.w")
            || t.name.starts_with("transformer.ln_f")));
    let prefixed = logits_of(&source, &ids(&r["prompt_ids"]));
    assert_eq!(plain, prefixed);
    let _ = std::fs::remove_dir_all(&dir);
}
