//! all-MiniLM-L6-v2 against its golden reference
//! (`golden/minilm-l6-v2/sentences.json`: HF `tokenizers` token ids, a float64
//! BERT forward pass, mean pooling, L2 normalisation): identical token ids,
//! every embedding component and every cosine within 1e-4. Run with
//! `--nocapture` to see the worst deviations.

mod support;

use patchbay_models::catalog;
use patchbay_models::runners::embed::{cosine, Embedder, EmbedderOptions};

const TOL: f64 = 1e-4;

struct Sentence {
    text: String,
    tokens: Vec<u32>,
    embedding: Vec<f64>,
}

fn golden() -> (Vec<Sentence>, Vec<Vec<f64>>) {
    let path = support::golden_dir("minilm-l6-v2").join("sentences.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set PATCHBAY_SHARED to the shared directory)",
            path.display()
        )
    });
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let nums = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    };
    let sentences = j["sentences"]
        .as_array()
        .expect("sentences")
        .iter()
        .map(|s| Sentence {
            text: s["text"].as_str().expect("text").to_string(),
            tokens: nums(&s["tokens"]).into_iter().map(|t| t as u32).collect(),
            embedding: nums(&s["embedding"]),
        })
        .collect();
    let cos = j["cosine"]
        .as_array()
        .expect("cosine")
        .iter()
        .map(nums)
        .collect();
    (sentences, cos)
}

fn embedder() -> Embedder {
    let m = catalog::known("minilm-l6-v2").unwrap();
    let p = catalog::models_dir().join(m.file);
    assert!(p.exists(), "{}", catalog::fetch_hint("minilm-l6-v2"));
    Embedder::open(&p, &EmbedderOptions::default())
        .unwrap_or_else(|e| panic!("opening {}: {e}", p.display()))
}

#[test]
fn minilm_matches_the_golden_tokens_embeddings_and_cosines() {
    let (sentences, cos) = golden();
    assert!(!sentences.is_empty());
    let mut e = embedder();
    for s in &sentences {
        assert_eq!(e.tokenize(&s.text), s.tokens, "token ids of {:?}", s.text);
    }
    let texts: Vec<&str> = sentences.iter().map(|s| s.text.as_str()).collect();
    let got = e.embed(&texts).unwrap();
    assert_eq!(got.len(), sentences.len());
    let mut worst = (0.0f64, 0, 0);
    for (i, (s, v)) in sentences.iter().zip(&got).enumerate() {
        assert_eq!(v.len(), s.embedding.len(), "{:?}", s.text);
        for (k, (&a, &b)) in v.iter().zip(&s.embedding).enumerate() {
            let d = (f64::from(a) - b).abs();
            if d > worst.0 {
                worst = (d, i, k);
            }
        }
    }
    let mut worst_cos = (0.0f64, 0, 0);
    for (i, row) in cos.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            let d = (f64::from(cosine(&got[i], &got[j])) - c).abs();
            if d > worst_cos.0 {
                worst_cos = (d, i, j);
            }
        }
    }
    println!(
        "minilm-l6-v2: {} sentences; worst embedding deviation {:.2e} (sentence {}, component {}); worst cosine deviation {:.2e} (pair {}, {})",
        sentences.len(),
        worst.0,
        worst.1,
        worst.2,
        worst_cos.0,
        worst_cos.1,
        worst_cos.2
    );
    assert!(
        worst.0 <= TOL,
        "embedding deviation {:.3e} > {TOL}",
        worst.0
    );
    assert!(
        worst_cos.0 <= TOL,
        "cosine deviation {:.3e} > {TOL}",
        worst_cos.0
    );
    // The first pair of the sentence-transformers documentation.
    assert!((f64::from(cosine(&got[0], &got[1])) - 0.7553).abs() < 1e-3);
}

#[test]
fn long_texts_are_cut_to_max_seq_length_keeping_sep() {
    let mut e = embedder();
    assert_eq!(e.max_tokens(), 256, "sentence_bert_config.json says 256");
    let text = "word ".repeat(600);
    let ids = e.tokenize(&text);
    assert_eq!(ids.len(), 256);
    assert_eq!(ids[0], 101, "[CLS] first");
    assert_eq!(ids[255], 102, "[SEP] kept last");
    // Longer than tokenizer.json's own truncation (128): that limit is not applied.
    let v = e.embed(&[text.as_str()]).unwrap();
    let norm: f64 = v[0].iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
}

#[test]
fn a_pooling_mode_patchbay_does_not_implement_is_a_clear_error() {
    let m = catalog::known("minilm-l6-v2").unwrap();
    let src = catalog::models_dir().join(m.file);
    assert!(src.exists(), "{}", catalog::fetch_hint("minilm-l6-v2"));
    let dir = std::env::temp_dir().join(format!("patchbay-minilm-cls-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        let to = dir.join(f);
        let _ = std::fs::remove_file(&to);
        std::os::unix::fs::symlink(std::fs::canonicalize(src.join(f)).unwrap(), &to).unwrap();
    }
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true,
            "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let e = Embedder::open(&dir, &EmbedderOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("pooling_mode_cls_token") && msg.contains("mean pooling"),
        "{msg}"
    );
    // Without the module configs: mean pooling over the position table's 512.
    std::fs::remove_dir_all(dir.join("1_Pooling")).unwrap();
    let e = Embedder::open(&dir, &EmbedderOptions::default()).unwrap();
    assert_eq!(e.max_tokens(), 512);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn packed_batches_on_any_thread_count_give_the_bits_of_one_text_at_a_time() {
    let p = catalog::resolve_model("minilm-l6-v2").unwrap_or_else(|e| panic!("{e}"));
    let (sentences, _) = golden();
    let mut texts: Vec<String> = sentences.iter().map(|s| s.text.clone()).collect();
    texts.push("word".into());
    texts.push("A much longer text, which runs on for a while, so that the packed batch holds sequences of very different lengths side by side.".into());
    let embed = |batch: usize, threads: usize| {
        let opts = EmbedderOptions {
            batch,
            threads,
            ..EmbedderOptions::default()
        };
        Embedder::open(&p, &opts).unwrap().embed(&texts).unwrap()
    };
    // Every kernel of the encoder gives each output one order of operations
    // whatever rows it is computed with and whatever the thread count, so
    // the embeddings are bit-identical, not merely close.
    let (alone, packed) = (embed(1, 1), embed(texts.len(), 2));
    for (i, (a, b)) in alone.iter().zip(&packed).enumerate() {
        let (a, b): (Vec<u32>, Vec<u32>) = (
            a.iter().map(|v| v.to_bits()).collect(),
            b.iter().map(|v| v.to_bits()).collect(),
        );
        assert!(
            a == b,
            "text {i}: packed with the others on 2 threads, its embedding differs from embedding it alone on 1"
        );
    }
}
