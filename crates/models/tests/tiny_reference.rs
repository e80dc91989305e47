//! GPT-2 and Phi (parallel blocks) against an independent float64 reference.
//!
//! No trained weights of either are available here, so `scripts/tiny-reference.py`
//! (plain Python, its own forward passes written from HF's `modeling_gpt2.py`
//! and `modeling_phi.py`, its own byte-level BPE) writes a tiny random HF
//! checkpoint with GPT-2's real tokenizer and vocabulary, and the float64
//! logits of every prompt position plus a greedy continuation. patchbay opens
//! the directory like any model: logits must agree within 1e-4 and the greedy
//! tokens must be identical.

use std::path::{Path, PathBuf};
use std::process::Command;

use patchbay_blocks::SamplerConfig;
use patchbay_combinators::{Layer, Step};
use patchbay_models::catalog;
use patchbay_models::runners::session::{self, Session, SessionJob, SessionOptions};

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
