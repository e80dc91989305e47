//! The rewire runner on trained models: the identity plan is the baseline
//! exactly, a dropped layer scores what `perplexity` scores with that plan,
//! and the results do not depend on threads or the prompt batch size.

mod support;

use patchbay_combinators::Plan;
use patchbay_models::catalog;
use patchbay_models::families::{self, llama, BuildOptions, Model};
use patchbay_models::runners::perplexity;
use patchbay_models::runners::rewire::{self, RewireConfig, RewireReport, Sweep};
use patchbay_models::runners::session::{Session, SessionOptions};
use patchbay_models::tokenizer::Tokenizer;

fn corpus(name: &str) -> String {
    let p = support::shared_dir().join("corpus").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the shared corpora live in $PATCHBAY_SHARED/corpus",
            p.display()
        )
    })
}

struct Setup {
    path: std::path::PathBuf,
    tokens: Vec<u32>,
    bos: Option<u32>,
    n_layers: usize,
}

fn setup(model: &str, text: &str) -> Setup {
    let path = catalog::resolve_model(model).unwrap_or_else(|e| panic!("{e}"));
    let tokenizer = Tokenizer::load(&path).unwrap();
    let tokens = tokenizer.encode(text, true);
    let bos = tokenizer.add_bos().then(|| tokenizer.bos()).flatten();
    let n_layers = families::open(&path).unwrap().hparams().n_layer;
    Setup {
        path,
        tokens,
        bos,
        n_layers,
    }
}

fn models(s: &Setup, plans: &[Option<Plan>], ctx: usize) -> Vec<Model<llama::LlamaNet>> {
    let source = families::open(&s.path).unwrap();
    plans
        .iter()
        .map(|p| {
            let opts = BuildOptions {
                max_context: ctx,
                plan: p.clone(),
            };
            llama::build(&source, &opts).unwrap()
        })
        .collect()
}

fn compare(s: &Setup, plans: &[Option<Plan>], cfg: &RewireConfig) -> RewireReport {
    let models = models(s, plans, cfg.ctx);
    rewire::compare(&models, &s.tokens, s.bos, cfg, &[1, 2], |_| {}).unwrap()
}

#[test]
fn identity_is_the_baseline_and_a_drop_is_perplexity_with_its_plan() {
    let s = setup("stories260k", &corpus("tinyshakespeare.txt"));
    let n = s.n_layers;
    let drops: Vec<Plan> = (0..n).map(|i| Plan::drop(n, &[i]).unwrap()).collect();
    let mut plans = vec![None, Some(Plan::identity(n))];
    plans.extend(drops.iter().cloned().map(Some));
    let cfg = RewireConfig {
        ctx: 64,
        chunks: Some(4),
        threads: 2,
        batch: 512,
    };
    let r = compare(&s, &plans, &cfg);
    let id = &r.variants[0];
    assert_eq!(id.ppl, r.baseline.ppl);
    assert_eq!((id.kl_sum, id.kl_max, id.agreement()), (0.0, 0.0, 1.0));
    assert_eq!(r.baseline.ppl.count, 4 * perplexity::scored_per_chunk(64));
    for (i, plan) in drops.iter().enumerate() {
        let mut opts = SessionOptions {
            threads: 1,
            max_context: 64,
            ..SessionOptions::default()
        };
        opts.build.plan = Some(plan.clone());
        let mut session: Session<llama::LlamaNet> = support::llama_session(&s.path, &opts);
        let p = perplexity::perplexity(&mut session, &s.tokens, 64, Some(4), |_, _, _| {}).unwrap();
        assert_eq!(r.variants[1 + i].ppl, p, "drop {i}");
        assert!(r.variants[1 + i].kl_sum > 0.0);
    }
    // The scores exist for every layer and lie in their ranges.
    for l in 0..n {
        let bi = r.scores.block_influence(l, 1).unwrap();
        let ang = r.scores.angular_distance(l, 1).unwrap();
        assert!(
            (0.0..=2.0).contains(&bi) && (0.0..=1.0).contains(&ang),
            "{bi} {ang}"
        );
    }
    assert!(r.scores.block_influence(0, 3).is_none());
    assert!(r.scores.block_influence(n - 1, 2).is_none());
}

#[test]
fn results_do_not_depend_on_threads_or_batch() {
    let s = setup("stories260k", &corpus("tinyshakespeare.txt"));
    let mut plans = vec![None];
    for sweep in [Sweep::Drop, Sweep::ParallelPairs, Sweep::Repeat] {
        plans.extend(
            sweep
                .variants(s.n_layers)
                .unwrap()
                .into_iter()
                .map(|v| Some(v.plan)),
        );
    }
    let run = |threads, batch| {
        let cfg = RewireConfig {
            ctx: 64,
            chunks: Some(3),
            threads,
            batch,
        };
        let mut r = compare(&s, &plans, &cfg);
        r.baseline.seconds = 0.0;
        r.variants.iter_mut().for_each(|v| v.seconds = 0.0);
        r
    };
    assert_eq!(run(1, 7), run(2, 512));
}

/// Several builds of one open model read the same mapped weights: building
/// ten variants of SmolLM2 must not add a copy of its weights to memory.
#[test]
fn variants_share_the_weights() {
    fn rss_anon_kb() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
    let path = catalog::resolve_model("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
    let file_kb = std::fs::metadata(&path).unwrap().len() / 1024;
    let n = families::open(&path).unwrap().hparams().n_layer;
    let plans: Vec<Option<Plan>> = (0..10)
        .map(|i| Some(Plan::drop(n, &[i]).unwrap()))
        .collect();
    let s = Setup {
        path,
        tokens: Vec::new(),
        bos: None,
        n_layers: n,
    };
    let Some(before) = rss_anon_kb() else { return };
    let one = models(&s, &plans[..1], 64);
    let after_one = rss_anon_kb().unwrap();
    let ten = models(&s, &plans, 64);
    let after_ten = rss_anon_kb().unwrap();
    // Each build may allocate its small tables (RoPE, norms as f32), never
    // the weights: all ten together stay well under one copy of the file.
    let growth = after_ten.saturating_sub(after_one);
    eprintln!(
        "one build: +{} KiB anonymous; ten more: +{growth} KiB; file {file_kb} KiB",
        after_one.saturating_sub(before)
    );
    assert!(
        growth < file_kb / 2,
        "ten builds added {growth} KiB of anonymous memory (the file is {file_kb} KiB; one build added {} KiB)",
        after_one.saturating_sub(before)
    );
    drop((one, ten));
}
