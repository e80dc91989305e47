//! The readers on the five real models (fetched by `scripts/fetch-models`).

use patchbay_models::catalog::{fetch_hint, known, models_dir};
use patchbay_models::families::{self, gemma3, Family};
use patchbay_models::formats::source::{Format, ModelSource};
use patchbay_primitives::rope::RopeLayout;
use patchbay_primitives::DType;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The model's path; fails (never skips) with the fetch hint when missing.
fn model_path(name: &str) -> PathBuf {
    let m = known(name).expect("a known model");
    let p = models_dir().join(m.file);
    assert!(p.exists(), "{}", fetch_hint(name));
    p
}

/// The rotation the model's family says its stored Q/K need.
fn rope_layout(src: &ModelSource) -> Option<RopeLayout> {
    Family::of(src.hparams())
        .expect("a known family")
        .rope_layout(src)
}

/// Whether the model's family runs it with causal attention.
fn causal(src: &ModelSource) -> bool {
    Family::of(src.hparams())
        .expect("a known family")
        .causal(src.hparams())
}

/// Opens a model with its family's name map, checking it loads as a header parse (well under a second
/// even for the 490 MB Qwen file on a loaded machine).
fn open(name: &str) -> ModelSource {
    let t = Instant::now();
    let src = families::open(model_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let dt = t.elapsed();
    assert!(dt < Duration::from_secs(2), "{name}: opening took {dt:?}");
    src
}

/// The tensor's bytes are a view into the file's map at the recorded offset.
fn assert_zero_copy(src: &ModelSource, name: &str) {
    let g = src.gguf().unwrap();
    let info = g.tensor_info(name).unwrap();
    let t = src.tensor(name).unwrap();
    assert!(matches!(
        **g.storage(),
        patchbay_primitives::Storage::Mmap(_)
    ));
    assert_eq!(
        t.bytes().as_ptr(),
        g.storage().bytes()[info.offset..].as_ptr(),
        "{name} is not a view into the map"
    );
    assert_eq!(t.bytes().len(), info.bytes);
}

#[test]
fn smollm2_header_and_tensors() {
    let src = open("smollm2-135m");
    assert_eq!(src.format(), Format::Gguf);
    assert_eq!(src.arch(), "llama");
    let h = src.hparams();
    assert_eq!(
        (
            h.n_embd,
            h.n_layer,
            h.n_head,
            h.n_head_kv,
            h.n_vocab,
            h.n_ff
        ),
        (576, 30, 9, 3, 49152, 1536)
    );
    assert_eq!((h.head_dim, h.rope_dim, h.n_ctx), (64, Some(64), 8192));
    assert_eq!(h.rope_base, 1e5);
    assert_eq!(h.norm_eps, 1e-5);
    assert_eq!((h.tied_embeddings, h.causal), (None, None));
    assert!(causal(&src));
    assert_eq!(rope_layout(&src), Some(RopeLayout::Interleaved));
    let g = src.gguf().unwrap();
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.version(), 3);
    let e = src.tensor("token_embd.weight").unwrap();
    assert_eq!((e.dtype(), e.shape()), (DType::Q8_0, &[49152, 576][..]));
    let q = src.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.dtype(), q.shape()), (DType::Q4_1, &[576, 576][..]));
    let k = src.tensor("blk.29.attn_k.weight").unwrap();
    assert_eq!(k.shape(), &[192, 576]);
    assert_eq!(
        src.tensor("blk.0.attn_norm.weight").unwrap().dtype(),
        DType::F32
    );
    assert!(src.try_tensor("output.weight").unwrap().is_none());
    assert!(src.tensor("blk.30.attn_q.weight").is_err());
    assert_zero_copy(&src, "blk.7.ffn_down.weight");
    // The tokenizer's metadata.
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(&tokens[1], "<|im_start|>");
    assert_eq!(
        g.get_str_array("tokenizer.ggml.merges").unwrap().len(),
        48900
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        49152
    );
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);
    assert!(!g.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert!(g
        .get_str("tokenizer.chat_template")
        .unwrap()
        .contains("im_start"));
    assert_eq!(src.tokenizer_kind().unwrap(), "gpt2 (pre smollm)");
    let p = src.parameter_count();
    assert!((134_000_000..136_000_000).contains(&p), "{p}");
}

#[test]
fn gemma3_header_and_tensors() {
    let src = open("gemma3-270m");
    assert_eq!(src.arch(), "gemma3");
    let h = src.hparams();
    assert_eq!(
        (
            h.n_embd,
            h.n_layer,
            h.n_head,
            h.n_head_kv,
            h.n_ff,
            h.n_vocab
        ),
        (640, 18, 4, 1, 2048, 262144)
    );
    assert_eq!((h.head_dim, h.head_dim_v), (256, 256));
    assert_eq!(h.sliding_window, Some(512));
    // The file states neither the pattern nor the local base: the family's
    // defaults (llama.cpp's) apply.
    assert_eq!((h.sliding_window_pattern, h.rope_base_local), (None, None));
    assert_eq!(gemma3::sliding_window_pattern(h), 6);
    assert_eq!((h.rope_base, gemma3::rope_base_local(h)), (1e6, 1e4));
    assert_eq!(gemma3::norm_weight_offset(src.format()), 0.0);
    assert_eq!(h.norm_eps, 1e-6);
    assert!(src.try_tensor("output.weight").unwrap().is_none());
    assert!(causal(&src));
    assert_eq!(rope_layout(&src), Some(RopeLayout::HalfSplit));
    let g = src.gguf().unwrap();
    assert_eq!(g.tensors().len(), 236);
    assert_eq!(
        src.tensor("blk.0.attn_q.weight").unwrap().shape(),
        &[1024, 640]
    );
    assert_eq!(
        src.tensor("blk.0.attn_output.weight").unwrap().shape(),
        &[640, 1024]
    );
    assert_eq!(
        src.tensor("blk.3.attn_q_norm.weight").unwrap().shape(),
        &[256]
    );
    assert!(src
        .try_tensor("blk.17.post_ffw_norm.weight")
        .unwrap()
        .is_some());
    assert_zero_copy(&src, "token_embd.weight");
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        262144
    );
    assert_eq!(
        g.get_f32_array("tokenizer.ggml.scores").unwrap().len(),
        262144
    );
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 2);
    assert!(g.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(src.tokenizer_kind().unwrap(), "llama (pre default)");
}

#[test]
fn qwen2_header_and_tensors() {
    let src = open("qwen2.5-0.5b");
    assert_eq!(src.arch(), "qwen2");
    let h = src.hparams();
    assert_eq!(
        (
            h.n_embd,
            h.n_layer,
            h.n_head,
            h.n_head_kv,
            h.n_ff,
            h.n_vocab
        ),
        (896, 24, 14, 2, 4864, 151936)
    );
    assert_eq!(h.rope_base, 1e6);
    assert!(src.try_tensor("output.weight").unwrap().is_some());
    assert_eq!(rope_layout(&src), Some(RopeLayout::HalfSplit));
    assert_eq!(src.gguf().unwrap().tensors().len(), 291);
    let b = src.tensor("blk.5.attn_k.bias").unwrap();
    assert_eq!((b.dtype(), b.shape()), (DType::F32, &[128][..]));
    assert_eq!(b.as_f32().unwrap().len(), 128);
    let o = src.tensor("output.weight").unwrap();
    assert_eq!(o.shape(), &[151936, 896]);
    let dtypes: std::collections::HashSet<DType> =
        src.tensor_entries().iter().map(|t| t.dtype).collect();
    for d in [
        DType::Q5_0,
        DType::Q8_0,
        DType::Q6_K,
        DType::Q4_K,
        DType::F32,
    ] {
        assert!(dtypes.contains(&d), "{d} missing from {dtypes:?}");
    }
    assert_zero_copy(&src, "blk.23.ffn_down.weight");
}

#[test]
fn minilm_safetensors_and_config() {
    let src = open("minilm-l6-v2");
    assert_eq!(src.format(), Format::Safetensors);
    assert_eq!(src.arch(), "bert");
    let h = src.hparams();
    assert_eq!(
        (h.n_embd, h.n_layer, h.n_head, h.n_ff, h.n_vocab, h.n_ctx),
        (384, 6, 12, 1536, 30522, 512)
    );
    assert_eq!(h.norm_eps, 1e-12);
    assert_eq!(h.model_class.as_deref(), Some("BertModel"));
    assert_eq!(Family::of(h), Some(Family::Bert));
    assert!(!causal(&src));
    assert_eq!(rope_layout(&src), None);
    families::bert::check_shapes(&src).unwrap();
    let e = src.tensor("token_embd.weight").unwrap();
    assert_eq!((e.dtype(), e.shape()), (DType::F32, &[30522, 384][..]));
    let q = src.tensor("blk.5.attn_q.weight").unwrap();
    assert_eq!(q.shape(), &[384, 384]);
    assert_eq!(q.as_f32().unwrap().len(), 384 * 384);
    assert_eq!(
        src.tensor("blk.0.layer_output_norm.bias").unwrap().shape(),
        &[384]
    );
    assert_eq!(
        src.tensor("position_embd.weight").unwrap().shape(),
        &[512, 384]
    );
    let (ckpt, config) = src.safetensors().unwrap();
    assert_eq!(config.get_str("hidden_act").unwrap(), "gelu");
    let pos = ckpt.tensor("embeddings.position_ids").unwrap();
    assert_eq!((pos.dtype(), pos.shape()), (DType::I64, &[1, 512][..]));
    let ids: &[i64] = bytemuck::try_cast_slice(pos.bytes()).unwrap();
    assert_eq!(&ids[..4], &[0, 1, 2, 3]);
    assert_eq!(src.tokenizer_kind().unwrap(), "WordPiece");
    let p = src.parameter_count();
    assert!((22_500_000..23_000_000).contains(&p), "{p}");
}

#[test]
fn stories260k_llama2c() {
    let path = model_path("stories260k");
    let src = open("stories260k");
    assert_eq!(src.format(), Format::Llama2c);
    assert_eq!(src.arch(), "llama");
    let h = src.hparams();
    assert_eq!(
        (
            h.n_embd,
            h.n_layer,
            h.n_head,
            h.n_head_kv,
            h.n_vocab,
            h.n_ff,
            h.n_ctx
        ),
        (64, 5, 8, 4, 512, 172, 512)
    );
    assert_eq!(h.tied_embeddings, Some(true));
    assert_eq!(rope_layout(&src), Some(RopeLayout::Interleaved));
    assert!(src.try_tensor("output.weight").unwrap().is_none());
    // Layer 2's wk read independently from the file: header, embedding,
    // rms_att, wq, then wk stacked [layers, kv_dim, dim].
    let raw = std::fs::read(&path).unwrap();
    let (dim, kv, layers, vocab) = (64usize, 32usize, 5usize, 512usize);
    let off = 28 + 4 * (vocab * dim + layers * dim + layers * dim * dim + 2 * kv * dim);
    let want: Vec<f32> = raw[off..off + 4 * kv * dim]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let wk = src.tensor("blk.2.attn_k.weight").unwrap();
    assert_eq!(wk.shape(), &[32, 64]);
    assert_eq!(wk.as_f32().unwrap(), &want[..]);
    assert_eq!(src.tensor("blk.4.ffn_norm.weight").unwrap().shape(), &[64]);
    assert_eq!(
        src.tensor("blk.4.ffn_down.weight").unwrap().shape(),
        &[64, 172]
    );
    assert!(src.tensor("blk.5.attn_q.weight").is_err());
    let p = src.parameter_count();
    assert!((250_000..270_000).contains(&p), "{p}");
    assert!(src.tokenizer_kind().unwrap().contains("tok512.bin"));
}
