//! Helpers shared by the fuzz targets.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use patchbay_models::formats::source::ModelSource;

/// A scratch directory private to this process (readers that only take a
/// path get each input written there).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("PATCHBAY_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                if Path::new("/dev/shm").is_dir() {
                    PathBuf::from("/dev/shm")
                } else {
                    std::env::temp_dir()
                }
            });
        let dir = base.join(format!("patchbay-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        dir
    })
}

/// Writes `bytes` to `name` in the scratch directory and returns its path.
pub fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("write a fuzz input to the scratch directory");
    p
}

/// The models directory: `PATCHBAY_MODELS`, else `models/` at the repository root.
pub fn models_dir() -> PathBuf {
    std::env::var_os("PATCHBAY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// Touches every tensor a source declares: the view must be in bounds and
/// readable to its last byte.
pub fn touch_tensors(src: &ModelSource) {
    let _ = src.parameter_count();
    let _ = src.tokenizer_kind();
    let _ = format!("{:?}", src.hparams());
    for e in src.tensor_entries() {
        if let Ok(t) = src.tensor(&e.name) {
            touch(&t);
        }
    }
}

/// Reads a tensor view end to end.
pub fn touch(t: &patchbay_primitives::Tensor) {
    let b = t.bytes();
    let mut acc = 0u8;
    for &x in b.iter().step_by(61) {
        acc ^= x;
    }
    if let Some(&last) = b.last() {
        acc ^= last;
    }
    std::hint::black_box(acc);
    if let Some(f) = t.as_f32() {
        std::hint::black_box(f.iter().step_by(97).fold(0f32, |a, &x| a + x));
    }
    let _ = t.shape();
    let _ = t.numel();
    let _ = t.rows(0, 1);
}
