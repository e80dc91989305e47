//! Helpers the end-to-end tests of the `patchbay` binary share.
// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs the binary with `args` and no stdin.
pub fn patchbay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run patchbay")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the run succeeded and returns its stdout.
pub fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed:\n{}\n{}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// The model's path; fails with the fetch hint when it is missing.
pub fn require(name: &str) -> PathBuf {
    patchbay_models::catalog::resolve_model(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The reference data: `$PATCHBAY_SHARED` when set, else the repository's
/// `testdata/` (goldens and corpus slices).
pub fn data_dir() -> PathBuf {
    std::env::var_os("PATCHBAY_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata"))
}

/// The path of corpus `name` (`tinyshakespeare.txt`, `wikitext-2-test.txt`).
pub fn corpus(name: &str) -> String {
    let p = data_dir().join("corpus").join(name);
    assert!(
        p.is_file(),
        "{} is missing: the corpora live in testdata/corpus, or in $PATCHBAY_SHARED/corpus",
        p.display()
    );
    p.display().to_string()
}
