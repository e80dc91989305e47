//! RoPE scaling as files declare it: HF `rope_scaling` (linear, llama3), GGUF
//! `rope.scaling.*` and `rope_freqs.weight`. Each declaration must change the
//! model the way another, independent route to the same frequencies does;
//! types patchbay does not implement must fail with a clear error instead of
//! running silently wrong.

mod support;

use std::path::{Path, PathBuf};

use patchbay_combinators::{Capacity, Ctx, Layer};
use patchbay_models::error::ModelError;
use patchbay_models::families::{self, llama};
use patchbay_models::formats::gguf::Value;
use patchbay_models::formats::source::RopeScaling;
use patchbay_primitives::{Act, Simd, Threads};
use serde_json::json;
use support::gguf_writer::{f32_bytes, to_bytes, TensorData};

const E: usize = 16;
const HEADS: usize = 2;
const KV: usize = 1;
const HD: usize = 8;
const FF: usize = 24;
const VOCAB: usize = 32;
const LAYERS: usize = 2;
const CTX: usize = 64;
const PROMPT: [u32; 8] = [3, 17, 5, 29, 11, 2, 23, 8];

/// Canonical tensors of the tiny llama with deterministic pseudo-random values.
fn tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                offset + scale * ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            })
            .collect()
    };
    let mut t = vec![
        (
            "token_embd.weight".to_owned(),
            vec![VOCAB, E],
            rand(VOCAB * E, 2.0, 0.0),
        ),
        ("output_norm.weight".to_owned(), vec![E], rand(E, 0.2, 1.0)),
    ];
    for i in 0..LAYERS {
        for (n, shape, scale, offset) in [
            ("attn_norm", vec![E], 0.2, 1.0),
            ("attn_q", vec![HEADS * HD, E], 1.5, 0.0),
            ("attn_k", vec![KV * HD, E], 1.5, 0.0),
            ("attn_v", vec![KV * HD, E], 1.0, 0.0),
            ("attn_output", vec![E, HEADS * HD], 1.0, 0.0),
            ("ffn_norm", vec![E], 0.2, 1.0),
            ("ffn_gate", vec![FF, E], 1.0, 0.0),
            ("ffn_up", vec![FF, E], 1.0, 0.0),
            ("ffn_down", vec![E, FF], 1.0, 0.0),
        ] {
            let n_el = shape.iter().product();
            t.push((
                format!("blk.{i}.{n}.weight"),
                shape,
                rand(n_el, scale, offset),
            ));
        }
    }
    t
}

fn temp_dir(tag: &str) -> PathBuf {
    support::temp_dir("rope", tag)
}

/// Writes a tiny GGUF llama with extra metadata and, optionally, a
/// `rope_freqs.weight` tensor.
fn write_gguf(path: &Path, extra: &[(&str, Value)], rope_freqs: Option<Vec<f32>>) {
    let mut meta = vec![
        (
            "general.architecture".to_owned(),
            Value::String("llama".into()),
        ),
        ("llama.embedding_length".to_owned(), Value::U32(E as u32)),
        ("llama.block_count".to_owned(), Value::U32(LAYERS as u32)),
        (
            "llama.attention.head_count".to_owned(),
            Value::U32(HEADS as u32),
        ),
        (
            "llama.attention.head_count_kv".to_owned(),
            Value::U32(KV as u32),
        ),
        (
            "llama.feed_forward_length".to_owned(),
            Value::U32(FF as u32),
        ),
        ("llama.context_length".to_owned(), Value::U32(CTX as u32)),
        ("llama.rope.freq_base".to_owned(), Value::F32(100.0)),
    ];
    meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let mut ts: Vec<TensorData> = tensors()
        .into_iter()
        .map(|(name, shape, v)| TensorData::f32(&name, &shape, &v))
        .collect();
    if let Some(f) = rope_freqs {
        ts.push(TensorData::f32("rope_freqs.weight", &[f.len()], &f));
    }
    std::fs::write(path, to_bytes(3, &meta, &ts)).unwrap();
}

/// Writes a tiny HF llama checkpoint (`model.safetensors` + `config.json`)
/// into `dir`, with `rope_scaling` as given.
fn write_hf(dir: &Path, rope_scaling: serde_json::Value) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, v) in tensors() {
        let bytes = f32_bytes(&v);
        header.insert(
            llama::hf_name(&name).unwrap(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend(bytes);
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h.as_bytes());
    b.extend(data);
    std::fs::write(dir.join("model.safetensors"), b).unwrap();
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": E, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "intermediate_size": FF, "vocab_size": VOCAB,
        "rope_theta": 100.0, "rms_norm_eps": 1e-5, "max_position_embeddings": CTX,
        "tie_word_embeddings": true, "rope_scaling": rope_scaling,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// The logits of every prompt position (`PROMPT.len() x VOCAB`, row-major).
fn logits(path: &Path) -> Result<Vec<f32>, ModelError> {
    let source = families::open(path)?;
    let model = llama::build(
        &source,
        &patchbay_models::families::BuildOptions {
            max_context: CTX,
            plan: None,
        },
    )?;
    let threads = Threads::new(1);
    let scratch = patchbay_combinators::Scratch::new();
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let mut st = model.net.new_state(Capacity::new(PROMPT.len(), CTX));
    let x = Act::from_tokens(&PROMPT);
    Ok(model.net.apply(&x, &mut st, &ctx)?.into_vec())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Scaled and unscaled logits agree at position 0 (angle 0 everywhere) and
/// differ clearly after it.
fn assert_rescaled(scaled: &[f32], plain: &[f32], what: &str) {
    assert_eq!(
        &scaled[..VOCAB],
        &plain[..VOCAB],
        "{what}: position 0 must not change"
    );
    let d = max_diff(&scaled[VOCAB..], &plain[VOCAB..]);
    assert!(d > 1e-2, "{what}: scaling changed the logits by only {d}");
}

#[test]
fn gguf_linear_scaling_and_rope_freqs() {
    let dir = temp_dir("gguf");
    let p = |n: &str| dir.join(n);
    write_gguf(&p("plain.gguf"), &[], None);
    let plain = logits(&p("plain.gguf")).unwrap();

    write_gguf(
        &p("linear.gguf"),
        &[
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(2.0)),
        ],
        None,
    );
    let src = families::open(p("linear.gguf")).unwrap();
    assert_eq!(
        src.hparams().rope_scaling,
        RopeScaling::Linear { factor: 2.0 }
    );
    let linear = logits(&p("linear.gguf")).unwrap();
    assert_rescaled(&linear, &plain, "gguf linear 2");

    // The same frequencies by another route: per-frequency divisors of 2.
    write_gguf(&p("freqs.gguf"), &[], Some(vec![2.0; HD / 2]));
    let freqs = logits(&p("freqs.gguf")).unwrap();
    let d = max_diff(&freqs, &linear);
    assert!(d <= 1e-5, "rope_freqs 2 vs linear 2: {d}");

    // llama.cpp's default type is linear, and the factor's older key.
    write_gguf(
        &p("legacy.gguf"),
        &[("llama.rope.scale_linear", Value::F32(2.0))],
        None,
    );
    assert!(max_diff(&logits(&p("legacy.gguf")).unwrap(), &linear) <= 1e-5);

    // Type none (whatever the factor), and a factor of 1, change nothing.
    for (name, extra) in [
        (
            "none.gguf",
            vec![
                ("llama.rope.scaling.type", Value::String("none".into())),
                ("llama.rope.scaling.factor", Value::F32(4.0)),
            ],
        ),
        (
            "one.gguf",
            vec![("llama.rope.scaling.factor", Value::F32(1.0))],
        ),
    ] {
        write_gguf(&p(name), &extra, None);
        assert_eq!(logits(&p(name)).unwrap(), plain, "{name}");
    }

    // Unimplemented types fail, naming the file and the type.
    write_gguf(
        &p("yarn.gguf"),
        &[
            ("llama.rope.scaling.type", Value::String("yarn".into())),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
        ],
        None,
    );
    let e = families::open(p("yarn.gguf")).unwrap_err();
    assert!(
        matches!(&e, ModelError::Unsupported { path, detail } if path == &p("yarn.gguf") && detail.contains("'yarn'")),
        "{e}"
    );

    // Divisors of the wrong count or value.
    write_gguf(&p("short.gguf"), &[], Some(vec![2.0; HD / 2 - 1]));
    let e = logits(&p("short.gguf")).unwrap_err();
    assert!(
        matches!(&e, ModelError::ShapeMismatch { tensor, .. } if tensor == "rope_freqs.weight"),
        "{e}"
    );
    write_gguf(&p("zero.gguf"), &[], Some(vec![1.0, 0.0, 1.0, 1.0]));
    let e = logits(&p("zero.gguf")).unwrap_err();
    assert!(e.to_string().contains("rope_freqs.weight"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hf_rope_scaling_linear_llama3_and_unsupported() {
    let root = temp_dir("hf");
    let run = |tag: &str, scaling: serde_json::Value| -> Result<Vec<f32>, ModelError> {
        let dir = root.join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        write_hf(&dir, scaling);
        logits(&dir)
    };
    let plain = run("plain", serde_json::Value::Null).unwrap();
    assert_eq!(
        run("default", json!({"rope_type": "default"})).unwrap(),
        plain
    );
    let linear = run("linear", json!({"type": "linear", "factor": 2.0})).unwrap();
    assert_rescaled(&linear, &plain, "hf linear 2");
    assert_eq!(
        run("linear2", json!({"rope_type": "linear", "factor": 2.0})).unwrap(),
        linear
    );
    // llama3 with every wavelength (>= 2 pi) above original / low = 1: every
    // frequency is divided by the factor, as linear scaling does.
    let all_low = json!({"rope_type": "llama3", "factor": 2.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 1});
    let d = max_diff(&run("llama3-low", all_low).unwrap(), &linear);
    assert!(d <= 1e-5, "llama3 (all low) vs linear: {d}");
    // ... and with every wavelength (< 200 at base 100, head size 8) below
    // original / high = 250, nothing changes.
    let all_high = json!({"rope_type": "llama3", "factor": 2.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 1000});
    assert_eq!(run("llama3-high", all_high).unwrap(), plain);
    // A real band (wavelengths 6.3, 20, 63, 199 against 16 and 64): one
    // frequency kept, two interpolated, one divided.
    let mixed = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    let dir = root.join("llama3-mixed");
    std::fs::create_dir_all(&dir).unwrap();
    write_hf(&dir, mixed);
    let cfg = llama::LlamaConfig::from_source(&families::open(&dir).unwrap()).unwrap();
    assert!(matches!(cfg.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    assert_rescaled(&logits(&dir).unwrap(), &plain, "hf llama3");

    // Unimplemented or malformed declarations are errors naming the key.
    for (tag, scaling, want) in [
        (
            "dynamic",
            json!({"type": "dynamic", "factor": 2.0}),
            "'dynamic'",
        ),
        (
            "yarn",
            json!({"rope_type": "yarn", "factor": 4.0}),
            "'yarn'",
        ),
        ("nofactor", json!({"type": "linear"}), "rope_scaling.factor"),
        (
            "negative",
            json!({"type": "linear", "factor": -2.0}),
            "rope_scaling.factor",
        ),
        ("notype", json!({"factor": 2.0}), "rope_scaling.rope_type"),
        (
            "band",
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                   "high_freq_factor": 1.0, "original_max_position_embeddings": 64}),
            "rope_scaling.high_freq_factor",
        ),
    ] {
        let e = run(tag, scaling).unwrap_err();
        let m = e.to_string();
        assert!(m.contains(want) && m.contains("config.json"), "{tag}: {m}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}
