//! Crafted files, valid and corrupted: every bad file is a typed error that
//! names the file (and tensor), never a panic or a huge allocation.

mod support;

use patchbay_models::error::ModelError;
use patchbay_models::families::{self, llama, Family};
use patchbay_models::formats::gguf::{Array, Gguf, StringArray, Value};
use patchbay_models::formats::llama2c::Llama2c;
use patchbay_models::formats::safetensors::SafetensorsFile;
use patchbay_models::formats::source::ModelSource;
use patchbay_primitives::rope::RopeLayout;
use patchbay_primitives::DType;
use std::path::PathBuf;
use support::gguf_writer::{f32_bytes, to_bytes, TensorData};

const NAME: &str = "crafted.gguf";

fn kv(k: &str, v: Value) -> (String, Value) {
    (k.to_owned(), v)
}

/// Metadata with every value type, nested arrays included.
fn all_types() -> Vec<(String, Value)> {
    vec![
        kv("general.architecture", Value::String("test".into())),
        kv("a.u8", Value::U8(200)),
        kv("a.i8", Value::I8(-5)),
        kv("a.u16", Value::U16(60000)),
        kv("a.i16", Value::I16(-30000)),
        kv("a.u32", Value::U32(4_000_000_000)),
        kv("a.i32", Value::I32(-7)),
        kv("a.f32", Value::F32(1.5)),
        kv("a.bool", Value::Bool(true)),
        kv("a.str", Value::String("héllo".into())),
        kv("a.u64", Value::U64(1 << 40)),
        kv("a.i64", Value::I64(-(1 << 40))),
        kv("a.f64", Value::F64(0.25)),
        kv(
            "a.strs",
            Value::Array(Array::String(
                ["x", "", "ünï", "<0x0A>"].into_iter().collect(),
            )),
        ),
        kv("a.f32s", Value::Array(Array::F32(vec![0.5, -1.0]))),
        kv("a.u8s", Value::Array(Array::U8(vec![1, 2, 255]))),
        kv("a.bools", Value::Array(Array::Bool(vec![true, false]))),
        kv("a.i64s", Value::Array(Array::I64(vec![-1, 1 << 33]))),
        kv(
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::String(["p"].into_iter().collect()),
                Array::Array(vec![Array::F64(vec![3.0])]),
                Array::U16(vec![]),
            ])),
        ),
    ]
}

/// A small valid GGUF: three tensors of different formats.
fn small_gguf(version: u32) -> Vec<u8> {
    let q8: Vec<u8> = (0..2 * 34).map(|i| i as u8).collect();
    to_bytes(
        version,
        &all_types(),
        &[
            TensorData::new(
                "t.f32",
                DType::F32,
                &[2, 3],
                f32_bytes(&[1., 2., 3., 4., 5., 6.]),
            ),
            TensorData::new("t.q8", DType::Q8_0, &[2, 32], q8),
            TensorData::new("t.f16", DType::F16, &[4], vec![0; 8]),
        ],
    )
}

fn parse(bytes: &[u8]) -> Result<Gguf, ModelError> {
    Gguf::from_bytes(bytes, NAME)
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in crafted file")
}

/// Position right after the tensor info name `name` (its n_dims field).
fn tensor_info_at(bytes: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    find(bytes, &pat) + pat.len()
}

fn msg(e: &ModelError) -> String {
    let m = e.to_string();
    assert!(
        m.contains(NAME) || m.contains(".bin") || m.contains(".safetensors"),
        "{m}"
    );
    m
}

#[test]
fn gguf_round_trips_every_value_type() {
    for version in [2, 3] {
        let g = parse(&small_gguf(version)).unwrap();
        assert_eq!(g.version(), version);
        assert_eq!(g.alignment(), 32);
        assert_eq!(g.data_offset() % 32, 0);
        for (k, v) in all_types() {
            assert_eq!(g.get(&k), Some(&v), "{k}");
        }
        assert_eq!(g.metadata().len(), all_types().len());
        assert_eq!(g.get_u32("a.u8").unwrap(), 200);
        assert_eq!(g.get_u64("a.u32").unwrap(), 4_000_000_000);
        assert!(g.get_u32("a.i32").is_err());
        assert!(g.get_u32("a.u64").is_err());
        assert_eq!(g.get_i64("a.i64").unwrap(), -(1 << 40));
        assert_eq!(g.get_f32("a.f64").unwrap(), 0.25);
        assert_eq!(g.get_f32("a.u16").unwrap(), 60000.0);
        assert_eq!(g.get_str("a.str").unwrap(), "héllo");
        let s = g.get_str_array("a.strs").unwrap();
        assert_eq!(s.to_vec(), vec!["x", "", "ünï", "<0x0A>"]);
        assert_eq!(&s[2], "ünï");
        assert_eq!(g.get_i32_array("a.u8s").unwrap(), vec![1, 2, 255]);
        assert!(g.get_i32_array("a.i64s").is_err(), "1<<33 does not fit i32");
        assert_eq!(g.get_f32_array("a.f32s").unwrap(), vec![0.5, -1.0]);
        assert!(g.get_bool("a.bool").unwrap());
        match g.get_str("a.u8").unwrap_err() {
            ModelError::WrongType { key, .. } => assert_eq!(key, "a.u8"),
            e => panic!("{e}"),
        }
        assert!(matches!(
            g.get_u32("no.such.key"),
            Err(ModelError::MissingKey { .. })
        ));

        let t = g.tensor("t.f32").unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.as_f32().unwrap(), &[1., 2., 3., 4., 5., 6.]);
        let q = g.tensor("t.q8").unwrap();
        assert_eq!((q.dtype(), q.shape()), (DType::Q8_0, &[2, 32][..]));
        assert_eq!(q.bytes()[..3], [0, 1, 2]);
        assert_eq!(g.tensor("t.f16").unwrap().shape(), &[4]);
        let e = g.tensor("nope").unwrap_err();
        assert!(matches!(e, ModelError::MissingTensor { .. }));
        assert!(msg(&e).contains("nope"));
    }
}

#[test]
fn gguf_dims_are_innermost_first_on_disk() {
    // Hand-written: one f32 tensor "t" with ne = [3, 2] (3 columns, 2 rows).
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(0u64.to_le_bytes()); // metadata
    b.extend(1u64.to_le_bytes());
    b.push(b't');
    b.extend(2u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // f32
    b.extend(0u64.to_le_bytes());
    assert_eq!(b.len(), 65);
    b.resize(96, 0);
    b.extend(f32_bytes(&[0., 1., 2., 10., 11., 12.]));
    let g = parse(&b).unwrap();
    assert_eq!(g.data_offset(), 96);
    let t = g.tensor("t").unwrap();
    assert_eq!(t.shape(), &[2, 3]);
    assert_eq!(t.rows(1, 1).unwrap().as_f32().unwrap(), &[10., 11., 12.]);
}

#[test]
fn gguf_truncated_at_every_header_byte_and_in_the_data() {
    let bytes = small_gguf(3);
    let g = parse(&bytes).unwrap();
    let header_end = g.data_offset();
    // Past the last tensor's data only padding remains, which may be cut.
    let data_end = g
        .tensors()
        .iter()
        .map(|t| t.offset + t.bytes)
        .max()
        .unwrap();
    assert!(data_end > header_end);
    let lens = (0..=header_end).chain((header_end..data_end).step_by(7));
    for len in lens {
        let r = parse(&bytes[..len]);
        match r {
            Ok(_) => panic!("truncated at {len} of {} parsed", bytes.len()),
            Err(e) => {
                let m = msg(&e);
                match e {
                    ModelError::BadMagic { .. } => assert!(len < 4, "{len}: {m}"),
                    ModelError::Truncated {
                        needed, file_len, ..
                    } => {
                        assert_eq!(file_len, len as u64);
                        assert!(needed > len as u64, "{len}: {m}");
                    }
                    // Tensor data cut off: names the tensor.
                    ModelError::BadTensor { tensor, .. } => {
                        assert!(len >= header_end - 32, "{len}: {m}");
                        assert!(tensor.starts_with("t."), "{m}");
                    }
                    _ => panic!("{len}: unexpected {m}"),
                }
            }
        }
    }
}

#[test]
fn gguf_lying_lengths_and_counts_fail_without_allocating() {
    let good = small_gguf(3);
    // A key's string length far beyond the file.
    let mut b = good.clone();
    let at = find(&b, b"general.architecture") - 8;
    b[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(parse(&b), Err(ModelError::Truncated { .. })));
    // A string array claiming 2^60 entries.
    let mut b = good.clone();
    let at = find(&b, b"a.strs") + 6 + 8;
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = parse(&b).unwrap_err();
    assert!(matches!(e, ModelError::Truncated { .. }), "{e}");
    assert!(msg(&e).contains("a.strs"));
    // A u8 array claiming u64::MAX entries.
    let mut b = good.clone();
    let at = find(&b, b"a.u8s") + 5 + 8;
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(&b), Err(ModelError::Truncated { .. })));
    // Tensor and metadata counts beyond the file.
    for field in [8, 16] {
        let mut b = good.clone();
        b[field..field + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(parse(&b), Err(ModelError::Truncated { .. })));
    }
    // Unknown value and element types.
    let mut b = good.clone();
    let at = find(&b, b"a.u8") + 4;
    b[at..at + 4].copy_from_slice(&13u32.to_le_bytes());
    assert!(matches!(parse(&b), Err(ModelError::Corrupt { .. })));
    let mut b = good;
    let at = find(&b, b"a.f32s") + 6 + 4;
    b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    assert!(matches!(parse(&b), Err(ModelError::Corrupt { .. })));
}

#[test]
fn gguf_deeply_nested_arrays_are_rejected() {
    let mut a = Array::U8(vec![1]);
    for _ in 0..100 {
        a = Array::Array(vec![a]);
    }
    let b = to_bytes(3, &[kv("deep", Value::Array(a))], &[]);
    let e = parse(&b).unwrap_err();
    assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");
    // A modest depth is fine.
    let mut a = Array::U8(vec![1]);
    for _ in 0..5 {
        a = Array::Array(vec![a]);
    }
    assert!(parse(&to_bytes(3, &[kv("ok", Value::Array(a))], &[])).is_ok());
}

#[test]
fn gguf_bad_magic_versions_and_keys() {
    let good = small_gguf(3);
    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    let e = parse(&b).unwrap_err();
    assert!(matches!(e, ModelError::BadMagic { .. }), "{e}");
    assert!(msg(&e).contains("GGML"));
    for v in [0u32, 1, 4, 0x0300_0000] {
        let mut b = good.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        match parse(&b) {
            Err(ModelError::UnsupportedVersion { found, .. }) => assert_eq!(found, v as u64),
            other => panic!("version {v}: {other:?}"),
        }
    }
    // Duplicate metadata key.
    let b = to_bytes(3, &[kv("k", Value::U8(1)), kv("k", Value::U8(2))], &[]);
    assert!(matches!(parse(&b), Err(ModelError::Corrupt { .. })));
    // Bad alignment values.
    for a in [Value::U32(0), Value::U32(24), Value::String("32".into())] {
        let b = to_bytes(3, &[kv("general.alignment", a.clone())], &[]);
        assert!(
            matches!(parse(&b), Err(ModelError::WrongType { .. })),
            "{a:?}"
        );
    }
    // A custom alignment is honoured.
    let b = to_bytes(
        3,
        &[kv("general.alignment", Value::U32(64))],
        &[
            TensorData::new("a", DType::F32, &[3], vec![0; 12]),
            TensorData::new("b", DType::F32, &[1], f32_bytes(&[7.0])),
        ],
    );
    let g = parse(&b).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.tensor("b").unwrap().as_f32().unwrap(), &[7.0]);
}

#[test]
fn gguf_bad_tensor_infos() {
    let good = small_gguf(3);
    // Field offsets after the name "t.q8": n_dims(4) ne0(8) ne1(8) type(4) offset(8).
    let at = tensor_info_at(&good, "t.q8");
    let (ne0, ne1, ty, off) = (at + 4, at + 12, at + 20, at + 24);

    let mut b = good.clone();
    b[ty..ty + 4].copy_from_slice(&4u32.to_le_bytes()); // removed Q4_2
    match parse(&b).unwrap_err() {
        ModelError::UnsupportedType { tensor, found, .. } => {
            assert_eq!(tensor, "t.q8");
            assert!(found.contains('4'));
        }
        e => panic!("{e}"),
    }
    let mut b = good.clone();
    b[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    assert!(matches!(parse(&b), Err(ModelError::UnsupportedType { .. })));

    // Out of bounds.
    let mut b = good.clone();
    b[off..off + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let e = parse(&b).unwrap_err();
    assert!(
        matches!(&e, ModelError::BadTensor { tensor, .. } if tensor == "t.q8"),
        "{e}"
    );
    // Offset overflowing usize when added to the data offset.
    let mut b = good.clone();
    b[off..off + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(matches!(parse(&b), Err(ModelError::BadTensor { .. })));
    // Overlapping t.f32 at offset 0.
    let mut b = good.clone();
    b[off..off + 8].copy_from_slice(&0u64.to_le_bytes());
    let e = parse(&b).unwrap_err();
    assert!(msg(&e).contains("overlaps"), "{e}");
    // Misaligned.
    let mut b = good.clone();
    b[off..off + 8].copy_from_slice(&33u64.to_le_bytes());
    assert!(msg(&parse(&b).unwrap_err()).contains("alignment"));
    // Absurd shapes whose byte count overflows.
    let mut b = good.clone();
    b[ne0..ne0 + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    b[ne1..ne1 + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = parse(&b).unwrap_err();
    assert!(
        matches!(&e, ModelError::BadTensor { tensor, .. } if tensor == "t.q8"),
        "{e}"
    );
    // A row that is not a whole number of Q8_0 blocks.
    let mut b = good.clone();
    b[ne0..ne0 + 8].copy_from_slice(&33u64.to_le_bytes());
    assert!(matches!(parse(&b), Err(ModelError::BadTensor { .. })));
    // Too many dimensions.
    let mut b = good.clone();
    b[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(parse(&b), Err(ModelError::BadTensor { .. })));
    // Duplicate tensor names.
    let b = to_bytes(
        3,
        &[],
        &[
            TensorData::new("d", DType::F32, &[1], vec![0; 4]),
            TensorData::new("d", DType::F32, &[1], vec![0; 4]),
        ],
    );
    assert!(matches!(parse(&b), Err(ModelError::BadTensor { .. })));
}

// ---- ModelSource on a tiny crafted llama ----

const E: usize = 8; // width
const HEADS: usize = 2;
const KV: usize = 1;
const HD: usize = 4;
const FF: usize = 16;
const VOCAB: usize = 10;
const LAYERS: usize = 2;

/// Canonical tensors of the tiny llama, values distinct per tensor.
fn tiny_tensors() -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("token_embd.weight".to_owned(), vec![VOCAB, E]),
        ("output_norm.weight".to_owned(), vec![E]),
    ];
    for i in 0..LAYERS {
        for (n, s) in [
            ("attn_norm", vec![E]),
            ("attn_q", vec![HEADS * HD, E]),
            ("attn_k", vec![KV * HD, E]),
            ("attn_v", vec![KV * HD, E]),
            ("attn_output", vec![E, HEADS * HD]),
            ("ffn_norm", vec![E]),
            ("ffn_gate", vec![FF, E]),
            ("ffn_up", vec![FF, E]),
            ("ffn_down", vec![E, FF]),
        ] {
            t.push((format!("blk.{i}.{n}.weight"), s));
        }
    }
    t
}

fn fill(k: usize, n: usize) -> Vec<f32> {
    (0..n).map(|j| (k * 1000 + j) as f32).collect()
}

fn tiny_llama_gguf(bad: Option<(&str, Vec<usize>)>) -> Vec<u8> {
    tiny_llama_gguf_with(bad, &[])
}

/// [`tiny_llama_gguf`] with some metadata values replaced.
fn tiny_llama_gguf_with(bad: Option<(&str, Vec<usize>)>, over: &[(&str, Value)]) -> Vec<u8> {
    let mut meta = vec![
        kv("general.architecture", Value::String("llama".into())),
        kv("llama.embedding_length", Value::U32(E as u32)),
        kv("llama.block_count", Value::U32(LAYERS as u32)),
        kv("llama.attention.head_count", Value::U32(HEADS as u32)),
        kv("llama.attention.head_count_kv", Value::U32(KV as u32)),
        kv("llama.feed_forward_length", Value::U64(FF as u64)),
        kv("llama.rope.freq_base", Value::F32(5e5)),
        kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
        kv("tokenizer.ggml.model", Value::String("llama".into())),
    ];
    for (k, v) in over {
        let slot = meta
            .iter_mut()
            .find(|(name, _)| name == k)
            .expect("a known key");
        slot.1 = v.clone();
    }
    let tensors: Vec<TensorData> = tiny_tensors()
        .into_iter()
        .enumerate()
        .map(|(k, (name, mut shape))| {
            if let Some((b, s)) = &bad {
                if *b == name {
                    shape = s.clone();
                }
            }
            let n = shape.iter().product();
            TensorData::new(&name, DType::F32, &shape, f32_bytes(&fill(k, n)))
        })
        .collect();
    to_bytes(3, &meta, &tensors)
}

fn temp_dir(tag: &str) -> PathBuf {
    support::temp_dir("formats", tag)
}

#[test]
fn source_over_crafted_gguf_checks_shapes() {
    let dir = temp_dir("gguf");
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, tiny_llama_gguf(None)).unwrap();
    let src = ModelSource::open(&p).unwrap();
    let h = src.hparams();
    assert_eq!(
        (h.n_embd, h.n_head, h.n_head_kv, h.head_dim, h.n_vocab),
        (E, HEADS, KV, HD, VOCAB)
    );
    assert_eq!((h.rope_base, h.norm_eps, h.rope_dim), (5e5, 1e-6, None));
    assert_eq!((h.tied_embeddings, h.causal), (None, None));
    assert_eq!(Family::of(h), Some(Family::Llama));
    assert_eq!(llama::rope_layout(&src), RopeLayout::Interleaved);
    let cfg = llama::LlamaConfig::from_source(&src).unwrap();
    assert_eq!(cfg.rope_dim, HD);
    llama::build(&src, &Default::default()).unwrap();
    assert_eq!(src.tokenizer_kind().as_deref(), Some("llama"));
    let k = tiny_tensors()
        .iter()
        .position(|(n, _)| n == "blk.1.ffn_up.weight")
        .unwrap();
    assert_eq!(
        src.tensor("blk.1.ffn_up.weight").unwrap().as_f32().unwrap(),
        &fill(k, FF * E)[..]
    );
    assert!(src.try_tensor("output.weight").unwrap().is_none());

    let bad = dir.join("bad.gguf");
    std::fs::write(
        &bad,
        tiny_llama_gguf(Some(("blk.1.attn_q.weight", vec![E, E + 1]))),
    )
    .unwrap();
    // The reader opens it; the family refuses to build from it.
    let bad_src = ModelSource::open(&bad).unwrap();
    match llama::build(&bad_src, &Default::default()).unwrap_err() {
        ModelError::ShapeMismatch {
            path,
            tensor,
            expected,
            found,
        } => {
            assert_eq!(path, bad);
            assert_eq!(tensor, "blk.1.attn_q.weight");
            assert_eq!((expected, found), (vec![HEADS * HD, E], vec![E, E + 1]));
        }
        e => panic!("{e}"),
    }
    // A missing tensor the architecture needs.
    let meta_only = {
        let g = Gguf::from_bytes(&tiny_llama_gguf(None), "x").unwrap();
        let meta = g.metadata().to_vec();
        to_bytes(
            3,
            &meta,
            &[TensorData::new(
                "token_embd.weight",
                DType::F32,
                &[VOCAB, E],
                vec![0; VOCAB * E * 4],
            )],
        )
    };
    let missing = dir.join("missing.gguf");
    std::fs::write(&missing, meta_only).unwrap();
    let e = llama::build(&ModelSource::open(&missing).unwrap(), &Default::default()).unwrap_err();
    assert!(
        matches!(&e, ModelError::MissingTensor { tensor, .. } if tensor == "output_norm.weight"),
        "{e}"
    );
    // Not a model at all, and a missing file.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(matches!(
        ModelSource::open(&junk),
        Err(ModelError::BadMagic { .. })
    ));
    assert!(matches!(
        ModelSource::open(dir.join("none.gguf")),
        Err(ModelError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- safetensors ----

/// A safetensors image; `pad` spaces after the JSON shift the data offset.
fn safetensors_bytes(header: &str, data: &[u8], pad: usize) -> Vec<u8> {
    let h = format!("{header}{}", " ".repeat(pad));
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h.as_bytes());
    b.extend(data);
    b
}

#[test]
fn safetensors_views_misalignment_and_bad_headers() {
    let data = f32_bytes(&[1., 2., 3., 4., 5., 6.]);
    let header = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#;
    for pad in 0..8 {
        let b = safetensors_bytes(header, &data, pad);
        let f = SafetensorsFile::from_bytes(&b, "m.safetensors").unwrap();
        let t = f.tensor("w").unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.as_f32().unwrap(), &[1., 2., 3., 4., 5., 6.], "pad {pad}");
        assert_eq!(f.metadata()["format"], "pt");
    }
    let name = "m.safetensors";
    let err = |b: &[u8]| SafetensorsFile::from_bytes(b, name).unwrap_err();
    // Data shorter than the offsets say.
    let e = err(&safetensors_bytes(header, &data[..20], 0));
    assert!(matches!(e, ModelError::Truncated { .. }), "{e}");
    // Header length beyond the file; fewer than 8 bytes.
    let mut b = safetensors_bytes(header, &data, 0);
    b[..8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(matches!(err(&b), ModelError::Truncated { .. }));
    assert!(matches!(err(&b[..5]), ModelError::Truncated { .. }));
    // Invalid JSON.
    let e = err(&safetensors_bytes("{not json", &data, 0));
    assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");
    // Offsets disagreeing with the shape, overlapping, beyond the data.
    for h in [
        r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#,
        r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"v":{"dtype":"F32","shape":[1],"data_offsets":[20,24]}}"#,
        r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,24]}}"#,
    ] {
        let e = err(&safetensors_bytes(h, &data, 0));
        assert!(matches!(e, ModelError::Corrupt { .. }), "{h}: {e}");
        assert!(msg(&e).contains(name));
    }
    let e = err(&safetensors_bytes(
        r#"{"w":{"dtype":"F32","shape":[12],"data_offsets":[0,48]}}"#,
        &data,
        0,
    ));
    assert!(matches!(e, ModelError::Truncated { .. }), "{e}");
    // Unsupported dtype names the tensor.
    let e = err(&safetensors_bytes(
        r#"{"b":{"dtype":"U8","shape":[24],"data_offsets":[0,24]}}"#,
        &data,
        0,
    ));
    assert!(
        matches!(&e, ModelError::UnsupportedType { tensor, .. } if tensor == "b"),
        "{e}"
    );
    // F16, BF16 and I64 are accepted.
    let h = r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},"c":{"dtype":"I64","shape":[2],"data_offsets":[8,24]}}"#;
    let f = SafetensorsFile::from_bytes(&safetensors_bytes(h, &data, 0), name).unwrap();
    assert_eq!(f.tensor("a").unwrap().dtype(), DType::F16);
    assert_eq!(f.tensor("b").unwrap().dtype(), DType::BF16);
    assert_eq!(f.tensor("c").unwrap().dtype(), DType::I64);
}

/// HF names of the tiny llama's canonical tensors.
fn hf(name: &str) -> String {
    llama::hf_name(name).unwrap()
}

#[test]
fn sharded_safetensors_checkpoint_with_config() {
    let dir = temp_dir("shards");
    let all = tiny_tensors();
    let (a, b) = all.split_at(all.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (si, part) in [a, b].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", si + 1);
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, shape) in part {
            let k = all.iter().position(|(n, _)| n == name).unwrap();
            let bytes = f32_bytes(&fill(k, shape.iter().product()));
            header.insert(
                hf(name),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
            );
            data.extend(bytes);
            weight_map.insert(hf(name), file.clone().into());
        }
        let h = serde_json::Value::Object(header).to_string();
        std::fs::write(dir.join(&file), safetensors_bytes(&h, &data, 1)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": E, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV, "intermediate_size": FF,
        "vocab_size": VOCAB, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 64, "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    // Without the family's name map, canonical names are not the file's.
    let plain = ModelSource::open(&dir).unwrap();
    assert!(plain.try_tensor("token_embd.weight").unwrap().is_none());
    assert!(plain
        .try_tensor("model.embed_tokens.weight")
        .unwrap()
        .is_some());
    let e = llama::build(&plain, &Default::default()).unwrap_err();
    assert!(e.to_string().contains("name map"), "{e}");
    let src = families::open(&dir).unwrap();
    assert_eq!(src.safetensors().unwrap().0.files().len(), 2);
    assert_eq!(llama::rope_layout(&src), RopeLayout::HalfSplit);
    let h = src.hparams();
    assert_eq!(
        (h.n_embd, h.n_layer, h.n_head_kv, h.n_ctx),
        (E, LAYERS, KV, 64)
    );
    assert_eq!(h.tied_embeddings, Some(true));
    llama::build(&src, &Default::default()).unwrap();
    for (k, (name, shape)) in all.iter().enumerate() {
        let t = src.tensor(name).unwrap();
        assert_eq!(t.shape(), &shape[..], "{name}");
        assert_eq!(
            t.as_f32().unwrap(),
            &fill(k, shape.iter().product())[..],
            "{name}"
        );
    }
    // The index names a tensor its shard lacks.
    let mut wm = weight_map.clone();
    wm.insert(
        "model.extra.weight".into(),
        "model-00001-of-00002.safetensors".into(),
    );
    let index = serde_json::json!({"weight_map": wm});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = ModelSource::open(&dir).unwrap_err();
    assert!(
        matches!(&e, ModelError::MissingTensor { tensor, .. } if tensor == "model.extra.weight"),
        "{e}"
    );
    // A config lying about the width.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let mut c = config.clone();
    c["hidden_size"] = 12.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let lying = families::open(&dir).unwrap();
    assert!(matches!(
        llama::build(&lying, &Default::default()),
        Err(ModelError::ShapeMismatch { .. })
    ));
    // Config with a wrong type.
    c["hidden_size"] = "eight".into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    assert!(matches!(
        ModelSource::open(&dir),
        Err(ModelError::WrongType { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- llama2.c ----

fn llama2c_bytes(header: [i32; 7], n_floats: usize) -> Vec<u8> {
    let mut b: Vec<u8> = header.iter().flat_map(|x| x.to_le_bytes()).collect();
    b.extend(f32_bytes(
        &(0..n_floats).map(|i| i as f32).collect::<Vec<_>>(),
    ));
    b
}

#[test]
fn llama2c_layout_and_bad_files() {
    // dim 8, hidden 16, 2 layers, 2 heads, 1 kv head, vocab 10, seq 4.
    let (d, hd, l, v, kv, seq) = (8, 16, 2, 10, 4, 4);
    let head = 4;
    let n = v * d
        + l * d
        + l * d * d
        + 2 * l * kv * d
        + l * d * d
        + l * d
        + 3 * l * hd * d
        + d
        + 2 * seq * head / 2;
    let name = "tiny.bin";
    let m = Llama2c::from_bytes(&llama2c_bytes([8, 16, 2, 2, 1, 10, 4], n), name).unwrap();
    assert_eq!(m.config().kv_dim(), kv);
    assert!(m.config().shared_classifier);
    assert!(m.try_tensor("wcls").unwrap().is_none());
    // wk of layer 1 starts after embedding, rms_att, wq and layer 0's wk.
    let start = v * d + l * d + l * d * d + kv * d;
    let wk1 = m.layer_tensor("wk", 1).unwrap();
    assert_eq!(wk1.shape(), &[kv, d]);
    assert_eq!(wk1.as_f32().unwrap()[0], start as f32);
    assert_eq!(m.layer_tensor("rms_ffn_weight", 1).unwrap().shape(), &[d]);
    assert!(m.layer_tensor("wk", 2).is_err());

    // Unshared classifier: negative vocab, wcls follows the RoPE tables.
    let m = Llama2c::from_bytes(&llama2c_bytes([8, 16, 2, 2, 1, -10, 4], n + v * d), name).unwrap();
    let wcls = m.tensor("wcls").unwrap();
    assert_eq!(wcls.shape(), &[v, d]);
    assert_eq!(wcls.as_f32().unwrap()[0], n as f32);
    // ... and without its bytes, a truncation naming wcls.
    let e = Llama2c::from_bytes(&llama2c_bytes([8, 16, 2, 2, 1, -10, 4], n), name).unwrap_err();
    assert!(msg(&e).contains("wcls"), "{e}");

    for cut in [0, 10, 27, 28, 100, 4 * n] {
        let b = llama2c_bytes([8, 16, 2, 2, 1, 10, 4], n);
        let e = Llama2c::from_bytes(&b[..cut], name).unwrap_err();
        assert!(matches!(e, ModelError::Truncated { .. }), "{cut}: {e}");
    }
    for bad in [
        [0, 16, 2, 2, 1, 10, 4],
        [8, -16, 2, 2, 1, 10, 4],
        [8, 16, 2, 3, 1, 10, 4],
        [8, 16, 2, 2, 0, 10, 4],
        [8, 16, 2, 8, 1, 10, 4], // odd head size
    ] {
        let e = Llama2c::from_bytes(&llama2c_bytes(bad, n), name).unwrap_err();
        assert!(matches!(e, ModelError::Corrupt { .. }), "{bad:?}: {e}");
    }
    // Header sizes whose byte counts overflow.
    let e = Llama2c::from_bytes(
        &llama2c_bytes([1 << 30, i32::MAX, i32::MAX, 2, 1, i32::MAX, 4], 0),
        name,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Truncated { .. } | ModelError::BadTensor { .. }
        ),
        "{e}"
    );
}

#[test]
fn string_array_indexing() {
    let a: StringArray = ["a", "bc", ""].into_iter().collect();
    assert_eq!(
        (a.len(), &a[1], a.get(2), a.get(3)),
        (3, "bc", Some(""), None)
    );
    assert_eq!(a.iter().collect::<Vec<_>>(), vec!["a", "bc", ""]);
}

#[test]
fn gguf_impossible_hyper_parameters_are_rejected_at_open_naming_key_and_file() {
    let dir = temp_dir("hparams");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
            "hyper-parameter llama.attention.layer_norm_rms_epsilon: is NaN; it must be a finite number >= 0",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::INFINITY),
            "layer_norm_rms_epsilon: is inf",
        ),
        (
            "llama.rope.freq_base",
            Value::F32(f32::NAN),
            "hyper-parameter llama.rope.freq_base: is NaN",
        ),
        (
            "llama.block_count",
            Value::U32(0),
            "hyper-parameter llama.block_count: is 0; it must be at least 1",
        ),
        (
            "llama.attention.head_count",
            Value::U32(0),
            "key 'llama.attention.head_count': expected a positive head count, found 0",
        ),
    ];
    for (i, (key, value, want)) in cases.into_iter().enumerate() {
        let p = dir.join(format!("bad-{i}.gguf"));
        std::fs::write(&p, tiny_llama_gguf_with(None, &[(key, value)])).unwrap();
        let e = match ModelSource::open(&p) {
            Ok(_) => panic!("{key}: opened"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "{key}: {e}");
        assert!(
            e.contains(&p.display().to_string()),
            "{key}: no file in {e}"
        );
    }
    // The untouched file still opens.
    let p = dir.join("good.gguf");
    std::fs::write(&p, tiny_llama_gguf_with(None, &[])).unwrap();
    ModelSource::open(&p).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A GGUF file that does not parse gives its tokenizer's reader the shared
/// reader's error, naming the file once.
#[test]
fn tokenizer_of_a_corrupt_gguf_names_the_file_once() {
    let dir = temp_dir("tokenizer");
    let p = dir.join("bad-version.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&[9, 0, 0, 0]);
    bytes.extend_from_slice(&[0; 16]);
    std::fs::write(&p, &bytes).unwrap();
    let e = patchbay_models::tokenizer::Tokenizer::load(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported GGUF version 9"), "{e}");
    assert_eq!(e.matches("bad-version.gguf").count(), 1, "{e}");
}
