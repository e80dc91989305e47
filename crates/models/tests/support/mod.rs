//! Test support shared by the integration tests (`mod support;`): where the
//! shared reference data lives, the golden-reference rules, and a GGUF writer
//! for crafted files. Each test binary uses only part of it.

#![allow(dead_code)]

pub mod gguf_writer;
pub mod golden;

use std::path::{Path, PathBuf};

/// The reference data (`golden/`, `corpus/`): `$PATCHBAY_SHARED` if set, else
/// the repository's own `testdata/` (see `testdata/README.md`).
pub fn shared_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PATCHBAY_SHARED") {
        return PathBuf::from(p);
    }
    // CARGO_MANIFEST_DIR is crates/models.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// A fresh, empty directory under the system's temporary one, named after
/// `prefix`, this process and `tag`.
pub fn temp_dir(prefix: &str, tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("patchbay-{prefix}-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The golden folder (`golden/<dir>`) of a known model's short name.
pub fn golden_dir(model: &str) -> PathBuf {
    let dir = match model {
        "stories260k" => "stories260K",
        other => other,
    };
    shared_dir().join("golden").join(dir)
}

/// A session over a Llama-family model file (GGUF, safetensors or llama2.c).
pub fn llama_session(
    path: &Path,
    opts: &patchbay_models::runners::session::SessionOptions,
) -> patchbay_models::runners::session::Session<patchbay_models::families::llama::LlamaNet> {
    use patchbay_models::families::{llama, BuildOptions};
    let source = patchbay_models::formats::source::ModelSource::open(path).unwrap();
    let build = BuildOptions {
        max_context: opts.max_context,
        ..opts.build.clone()
    };
    let model = llama::build(&source, &build).unwrap();
    let tokenizer = patchbay_models::tokenizer::Tokenizer::load(path).unwrap();
    patchbay_models::runners::session::Session::new(model, tokenizer, opts).unwrap()
}
