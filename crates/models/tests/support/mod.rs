//! Test support shared by the integration tests (`mod support;`): where the
//! shared reference data lives, the golden-reference rules, and a GGUF writer
//! for crafted files. Each test binary uses only part of it.

#![allow(dead_code)]

pub mod gguf_writer;
pub mod golden;

use std::path::{Path, PathBuf};

/// The shared reference data (`golden/`, `corpus/`): `$PATCHBAY_SHARED`, else
/// `../shared` beside the workspace root.
pub fn shared_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PATCHBAY_SHARED") {
        return PathBuf::from(p);
    }
    // CARGO_MANIFEST_DIR is crates/models.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The golden folder (`golden/<dir>`) of a known model's short name.
pub fn golden_dir(model: &str) -> PathBuf {
    let dir = match model {
        "stories260k" => "stories260K",
        other => other,
    };
    shared_dir().join("golden").join(dir)
}
