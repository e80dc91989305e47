//! Runs the fused-pair architecture on SmolLM2-135M-Instruct (Q4_1): what it
//! binds, how its graph reads, that it generates, and — with the second MLP of
//! every pair replaced by a zero branch — that it computes exactly the trained
//! Llama without the pairs' odd layers, so every tensor sits where it belongs.

use std::path::PathBuf;
use std::process::Command;

use custom_architecture::{build, mlp, Block, TwinMlp, TwinNet, FUSED};
use patchbay_blocks::{swiglu, SamplerConfig, SwiGlu};
use patchbay_combinators::graph::{self, GraphFormat};
use patchbay_combinators::{Layer, Node, Plan, Stack, Step};
use patchbay_models::catalog::resolve_model;
use patchbay_models::families::{llama, BuildOptions, Model, Weights};
use patchbay_models::formats::source::ModelSource;
use patchbay_models::runners::perplexity::perplexity;
use patchbay_models::runners::session::{Session, SessionOptions};
use patchbay_models::tokenizer::Tokenizer;
use patchbay_models::ModelError;
use patchbay_primitives::Tensor;

fn model_path() -> PathBuf {
    resolve_model("smollm2-135m").unwrap_or_else(|e| panic!("{e}"))
}

fn options() -> SessionOptions {
    SessionOptions {
        sampler: SamplerConfig::greedy(),
        max_context: 64,
        build: BuildOptions {
            max_context: 64,
            ..BuildOptions::default()
        },
        ..SessionOptions::default()
    }
}

/// The logits of every position of a short prompt.
fn logits<N: Layer>(model: Model<N>) -> Vec<f32> {
    let path = model_path();
    let tokenizer = Tokenizer::load(&path).unwrap();
    let prompt = tokenizer.encode("The capital of France is", true);
    assert!(prompt.len() >= 4, "{prompt:?}");
    let mut session = Session::new(model, tokenizer, &options()).unwrap();
    session.logits(&prompt).unwrap().as_slice().to_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Layer `i`'s gate and up projections with a down projection of zeros: a
/// SwiGLU-shaped branch whose output is exactly 0.
fn zero_mlp(w: &Weights<'_>, i: usize) -> Result<SwiGlu, ModelError> {
    let trained = mlp(w, i)?;
    let (rows, cols) = (trained.second.out_dim(), trained.second.in_dim());
    let zeros = Tensor::from_f32(&vec![0.0; rows * cols], vec![rows, cols]).unwrap();
    let gate = trained.first.gate.first;
    let up = trained.first.value;
    Ok(swiglu(gate, up, w.linear_from("zero_down", zeros)?))
}

/// The odd layers of the fused pairs: the ones whose attention is dropped.
fn odd_layers() -> Vec<usize> {
    FUSED.skip(1).step_by(2).collect()
}

#[test]
fn with_a_zero_second_mlp_it_is_the_llama_without_the_odd_layers() {
    let source = ModelSource::open(model_path()).unwrap();
    let opts = options().build;
    let n = source.hparams().n_layer;
    let zeroed = logits(build(&source, &opts, FUSED, zero_mlp).unwrap());
    let dropped = BuildOptions {
        plan: Some(Plan::drop(n, &odd_layers()).unwrap()),
        ..opts.clone()
    };
    let reference = logits(llama::build(&source, &dropped).unwrap());
    let worst = max_abs_diff(&zeroed, &reference);
    eprintln!(
        "zero branch vs Llama without layers {:?}: {worst:.3e}",
        odd_layers()
    );
    assert!(worst <= 1e-5, "worst |logit difference| {worst}");

    // The second MLPs do something: the fused model is neither of the above.
    let fused = logits(build(&source, &opts, FUSED, mlp).unwrap());
    let moved = max_abs_diff(&fused, &zeroed);
    eprintln!("fused vs zero branch: {moved:.3}");
    assert!(
        moved > 0.1,
        "the second MLPs change the logits by only {moved}"
    );
}

fn twin_stack(model: &Model<TwinNet>) -> &Stack<Block<TwinMlp>> {
    &model.net.first.first.first.second
}

#[test]
fn each_pair_reads_both_layers_mlp_weights_in_place() {
    let source = ModelSource::open(model_path()).unwrap();
    let model = build(&source, &options().build, FUSED, mlp).unwrap();
    let twins = twin_stack(&model);
    assert_eq!(twins.layers.len(), FUSED.len() / 2);
    let same = |t: &Tensor, name: &str| {
        let want = source.tensor(name).unwrap();
        assert_eq!(
            t.bytes().as_ptr(),
            want.bytes().as_ptr(),
            "{name} is not the mapped tensor"
        );
        assert_eq!(t.bytes().len(), want.bytes().len(), "{name}");
    };
    for (k, block) in twins.layers.iter().enumerate() {
        let i = FUSED.start + 2 * k;
        let pair = &block.second.right.second;
        for (branch, layer) in [(&pair.left, i), (&pair.right, i + 1)] {
            same(
                branch.first.gate.first.weight(),
                &format!("blk.{layer}.ffn_gate.weight"),
            );
            same(
                branch.first.value.weight(),
                &format!("blk.{layer}.ffn_up.weight"),
            );
            same(
                branch.second.weight(),
                &format!("blk.{layer}.ffn_down.weight"),
            );
        }
    }
}

#[test]
fn parameters_are_exactly_the_tensors_it_binds() {
    let source = ModelSource::open(model_path()).unwrap();
    let model = build(&source, &options().build, FUSED, mlp).unwrap();
    let n = source.hparams().n_layer;
    let numel = |name: &str| source.tensor(name).unwrap().numel() as u64;
    let attention = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
    ];
    let ffn = ["ffn_gate", "ffn_up", "ffn_down"];
    let mut expected = numel("token_embd.weight") + numel("output_norm.weight");
    expected += match source.try_tensor("output.weight").unwrap() {
        Some(t) => t.numel() as u64,
        None => numel("token_embd.weight"), // tied head
    };
    for i in 0..n {
        let parts: &[&str] = if odd_layers().contains(&i) {
            &ffn
        } else {
            &[&attention[..], &ffn[..]].concat()
        };
        for p in parts {
            expected += numel(&format!("blk.{i}.{p}.weight"));
            assert!(source
                .try_tensor(&format!("blk.{i}.{p}.bias"))
                .unwrap()
                .is_none());
        }
    }
    assert_eq!(model.net.describe().params(), expected);
    assert_eq!(model.info.n_layers, n - FUSED.len() / 2);
}

fn count(node: &Node, name: &str) -> usize {
    usize::from(node.name == name) + node.children.iter().map(|c| count(c, name)).sum::<usize>()
}

#[test]
fn its_graph_shows_a_sum_of_two_swiglu_gates_per_pair() {
    let source = ModelSource::open(model_path()).unwrap();
    let model = build(&source, &options().build, FUSED, mlp).unwrap();
    let (n, dim) = (source.hparams().n_layer, source.hparams().n_embd);
    let pairs = FUSED.len() / 2;
    let tree = model.net.describe();
    assert_eq!(count(&tree, "Sum"), pairs, "{}", tree.tree());
    assert_eq!(count(&tree, "Gate"), n);
    assert_eq!(count(&tree, "Attend"), n - pairs);
    for block in &twin_stack(&model).layers {
        let sum = block.second.right.second.describe();
        assert_eq!(sum.name, "Sum");
        assert_eq!(sum.children.len(), 2, "{}", sum.tree());
        for branch in &sum.children {
            for part in ["Gate", "Silu", "ffn_gate", "ffn_up", "ffn_down"] {
                assert_eq!(count(branch, part), 1, "{part} in {}", branch.tree());
            }
        }
    }

    let text = graph::render(&tree, GraphFormat::Text);
    for line in [
        format!("Stack ×{} {dim}→{dim}", FUSED.start),
        format!("Stack ×{pairs} {dim}→{dim}"),
        format!("Stack ×{} {dim}→{dim}", n - FUSED.end),
        format!("Sum {dim}→{dim}"),
    ] {
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
}

#[test]
fn generates_the_tokens_it_is_asked_for() {
    let path = model_path();
    let source = ModelSource::open(&path).unwrap();
    let opts = options();
    let model = build(&source, &opts.build, FUSED, mlp).unwrap();
    let tokenizer = Tokenizer::load(&path).unwrap();
    let mut session = Session::new(model, tokenizer.clone(), &opts).unwrap();
    let prompt = tokenizer.encode("Once upon a time", true);
    let mut out = Vec::new();
    let stats = session
        .generate(&prompt, 8, |t| {
            out.push(t);
            Step::Continue
        })
        .unwrap();
    assert_eq!(out.len(), 8, "{out:?}");
    assert_eq!(stats.gen_tokens, 8);
    let text = tokenizer.decode(&out);
    eprintln!("Once upon a time|{text}");
    assert!(out
        .iter()
        .all(|&t| (t as usize) < tokenizer.vocab_size() && !tokenizer.is_eog(t)));
    assert!(
        text.chars().filter(|c| c.is_alphabetic()).count() >= 8,
        "{text:?}"
    );
    assert!(!text.contains('\u{fffd}'), "{text:?}");
}

#[test]
fn a_bad_range_is_an_error() {
    let source = ModelSource::open(model_path()).unwrap();
    let n = source.hparams().n_layer;
    #[allow(clippy::reversed_empty_ranges)]
    let bad_ranges = [14..17, 0..2, n - 2..n, 16..16, 18..14, n..n + 2];
    for bad in bad_ranges {
        match build(&source, &options().build, bad.clone(), mlp) {
            Err(ModelError::Usage(e)) => assert!(e.contains("even count"), "{e}"),
            Err(e) => panic!("{bad:?}: unexpected error {e}"),
            Ok(_) => panic!("{bad:?} was accepted"),
        }
    }
}

#[test]
fn the_binary_explains_a_missing_model_and_bad_arguments() {
    let exe = env!("CARGO_BIN_EXE_custom-architecture");
    let empty =
        std::env::temp_dir().join(format!("custom-architecture-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let run = |args: &[&str]| {
        Command::new(exe)
            .args(args)
            .env("PATCHBAY_MODELS", &empty)
            .output()
            .unwrap()
    };

    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("scripts/fetch-models smollm2-135m"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = run(&["-n", "many"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("usage: custom-architecture"), "{err}");
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn a_trained_block_is_the_llama_block() {
    // Compiles only if the two types are the same.
    fn same(block: llama::LlamaBlock) -> Block<SwiGlu> {
        block
    }
    let _ = same;
}

/// Perplexity over the first 8 windows of 512 tokens.
fn wikitext_ppl<N: Layer>(model: Model<N>, tokenizer: &Tokenizer, tokens: &[u32]) -> f64 {
    let opts = SessionOptions {
        max_context: 512,
        ..SessionOptions::default()
    };
    let mut session = Session::new(model, tokenizer.clone(), &opts).unwrap();
    let result = perplexity(&mut session, tokens, 512, Some(8), |_, _, _| {}).unwrap();
    result.ppl()
}

/// The perplexity table of the crate docs: fused pairs, the odd layers
/// dropped (the zero branch), and the pairs run as whole parallel layers.
/// Slow (about ten minutes on two cores):
/// `cargo test -p custom-architecture -- --ignored --nocapture`
#[test]
#[ignore = "slow: about ten minutes"]
fn wikitext_table() {
    let shared = std::env::var_os("PATCHBAY_SHARED").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata"),
        PathBuf::from,
    );
    let corpus = shared.join("corpus/wikitext-2-test.txt");
    let text = std::fs::read_to_string(&corpus)
        .unwrap_or_else(|e| panic!("{}: {e} (set PATCHBAY_SHARED)", corpus.display()));
    let path = model_path();
    let source = ModelSource::open(&path).unwrap();
    let tokenizer = Tokenizer::load(&path).unwrap();
    let tokens = tokenizer.encode(&text, true);
    let build_opts = BuildOptions::default();
    let n = source.hparams().n_layer;
    let trained = wikitext_ppl(
        llama::build(&source, &build_opts).unwrap(),
        &tokenizer,
        &tokens,
    );
    eprintln!("trained: {trained:.1}");
    eprintln!("| layers | fused pairs | odd layers dropped | parallel layers |");
    for range in [14..18, 12..20, 10..20, 6..24, 2..28] {
        let fused = wikitext_ppl(
            build(&source, &build_opts, range.clone(), mlp).unwrap(),
            &tokenizer,
            &tokens,
        );
        let dropped = wikitext_ppl(
            build(&source, &build_opts, range.clone(), zero_mlp).unwrap(),
            &tokenizer,
            &tokens,
        );
        let pairs: Vec<String> = range
            .clone()
            .step_by(2)
            .map(|i| format!("({i}|{})", i + 1))
            .collect();
        let plan = format!(
            "0-{},{},{}-{}",
            range.start - 1,
            pairs.join(","),
            range.end,
            n - 1
        );
        let parallel = BuildOptions {
            plan: Some(Plan::parse(&plan, n).unwrap()),
            ..build_opts.clone()
        };
        let parallel = wikitext_ppl(
            llama::build(&source, &parallel).unwrap(),
            &tokenizer,
            &tokens,
        );
        eprintln!("| {range:?} | {fused:.1} | {dropped:.1} | {parallel:.1} |");
        // What the docs conclude.
        assert!(parallel < fused, "{range:?}");
        if range.len() >= 8 {
            assert!(fused < dropped, "{range:?}");
        }
    }
}
