//! `Weights::fused_linear`, which stacks several projections of one input
//! into one matrix (custom architectures and BERT's q/k/v use it): it fuses
//! rows of one format and width in order, with or without biases, and
//! refuses every mismatch with an error naming the tensor and the file.

mod support;

use patchbay_models::error::ModelError;
use patchbay_models::families::Weights;
use patchbay_models::formats::gguf::Value;
use patchbay_models::formats::source::ModelSource;
use patchbay_primitives::DType;
use support::gguf_writer::{to_bytes, TensorData};

fn f32_tensor(name: &str, shape: &[usize], seed: f32) -> TensorData {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| seed + i as f32 * 0.25).collect();
    TensorData::f32(name, shape, &values)
}

/// A GGUF file of loose projections, removed when dropped.
struct Fixture {
    path: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let f16 = TensorData::new("half.weight", DType::F16, &[2, 8], vec![0; 2 * 8 * 2]);
        let tensors = vec![
            f32_tensor("p.weight", &[4, 8], 1.0),
            f32_tensor("q.weight", &[2, 8], -3.0),
            f32_tensor("wide.weight", &[3, 6], 0.5),
            f16,
            f32_tensor("biased.weight", &[2, 8], 2.0),
            f32_tensor("biased.bias", &[2], 7.0),
            f32_tensor("short.weight", &[2, 8], 2.0),
            f32_tensor("short.bias", &[3], 7.0),
        ];
        let path =
            std::env::temp_dir().join(format!("patchbay-fused-linear-{}.gguf", std::process::id()));
        // The hyper-parameters the loader reads from any model file.
        let meta: Vec<(String, Value)> = [
            ("general.architecture", Value::String("custom".into())),
            ("custom.embedding_length", Value::U32(8)),
            ("custom.block_count", Value::U32(1)),
            ("custom.attention.head_count", Value::U32(2)),
            ("custom.attention.head_count_kv", Value::U32(2)),
            ("custom.feed_forward_length", Value::U32(16)),
            ("custom.context_length", Value::U32(32)),
            ("custom.vocab_size", Value::U32(16)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        std::fs::write(&path, to_bytes(3, &meta, &tensors)).unwrap();
        Fixture { path }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn fused_projections_stack_rows_in_order_and_mismatches_are_refused() {
    let fixture = Fixture::new();
    let source = ModelSource::open(&fixture.path).unwrap();
    let w = Weights::new(&source);
    let file = fixture.path.display().to_string();

    // Rows of p then q, no bias.
    let pq = w.fused_linear("pq", &["p", "q"]).unwrap();
    assert_eq!(pq.weight().shape(), &[6, 8]);
    assert!(pq.bias().is_none());
    let (p, q) = (w.tensor("p.weight").unwrap(), w.tensor("q.weight").unwrap());
    let stacked: Vec<u8> = [p.bytes(), q.bytes()].concat();
    assert_eq!(pq.weight().bytes(), &stacked[..]);

    // One projection with its bias keeps it.
    let biased = w.fused_linear("b", &["biased"]).unwrap();
    assert_eq!(biased.bias(), Some(&[7.0, 7.25][..]));

    let refused = |stems: &[&str]| -> (ModelError, String) {
        let e = w.fused_linear("fused", stems).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&file),
            "{stems:?}: {text} does not name the file"
        );
        (e, text)
    };

    let (e, text) = refused(&["p", "wide"]);
    assert!(
        matches!(&e, ModelError::ShapeMismatch { tensor, .. } if tensor == "wide.weight"),
        "{text}"
    );
    let (e, text) = refused(&["p", "half"]);
    assert!(matches!(e, ModelError::Unsupported { .. }), "{text}");
    assert!(
        text.contains("half.weight") && text.contains("p.weight"),
        "{text}"
    );
    let (e, text) = refused(&["p", "biased"]);
    assert!(matches!(e, ModelError::Unsupported { .. }), "{text}");
    assert!(text.contains("bias"), "{text}");
    let (e, text) = refused(&["short"]);
    assert!(
        matches!(&e, ModelError::ShapeMismatch { tensor, .. } if tensor == "short.bias"),
        "{text}"
    );
    let (_, text) = refused(&[]);
    assert!(text.contains("no weights"), "{text}");
    let (_, text) = refused(&["p", "absent"]);
    assert!(text.contains("absent.weight"), "{text}");
}
