//! The models patchbay knows by short name, and where they live.
//!
//! The models directory is `$PATCHBAY_MODELS`, else `models/` at the workspace
//! root (when run from a checkout), else `./models`. `scripts/fetch-models`
//! fills it.

use std::path::{Path, PathBuf};

/// A model patchbay knows how to fetch, by short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The short name used on the command line (`smollm2-135m`).
    pub name: &'static str,
    /// Path of the model file (or directory) relative to the models directory.
    pub file: &'static str,
}

/// Every model `scripts/fetch-models` provides.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    KnownModel {
        name: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
    },
    KnownModel {
        name: "qwen2.5-0.5b",
        file: "qwen2.5-coder-0.5b-instruct-awq.q4_k_m.gguf",
    },
    KnownModel {
        name: "minilm-l6-v2",
        file: "all-MiniLM-L6-v2",
    },
    KnownModel {
        name: "stories260k",
        file: "stories260K/stories260K.bin",
    },
];

/// The default model of `patchbay generate`.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The workspace root when running from a checkout (tests, `cargo run`).
fn workspace_root() -> Option<PathBuf> {
    // CARGO_MANIFEST_DIR is crates/models at compile time.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.parent()?.parent()?;
    root.join("Cargo.toml")
        .is_file()
        .then(|| root.to_path_buf())
}

/// The models directory (see the module docs).
pub fn models_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PATCHBAY_MODELS") {
        return PathBuf::from(p);
    }
    match workspace_root() {
        Some(root) => root.join("models"),
        None => PathBuf::from("models"),
    }
}

/// Looks a short name up (case-insensitive).
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
}

/// The message telling a user how to get a missing model.
pub fn fetch_hint(name: &str) -> String {
    format!(
        "model '{name}' is not in {dir}; run `scripts/fetch-models` (or set PATCHBAY_MODELS to the directory that holds it, or pass a path to the file)",
        dir = models_dir().display()
    )
}

/// Resolves a model argument: an existing path, or a known short name whose file
/// is present in the models directory. The error says how to fetch it.
pub fn resolve_model(arg: &str) -> Result<PathBuf, String> {
    let p = Path::new(arg);
    if let Ok(meta) = std::fs::metadata(p) {
        // A FIFO or a device would block the reader forever, or never end.
        if !meta.is_file() && !meta.is_dir() {
            return Err(format!(
                "{arg} is not a regular file or a directory: a model must be one"
            ));
        }
        return Ok(p.to_path_buf());
    }
    match known(arg) {
        Some(m) => {
            let path = models_dir().join(m.file);
            if path.exists() {
                Ok(path)
            } else {
                Err(fetch_hint(m.name))
            }
        }
        None => {
            let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
            Err(format!(
                "'{arg}' is neither an existing file nor a known model ({})",
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_missing_files_explain_themselves() {
        let e = resolve_model("no-such-model-xyz").unwrap_err();
        assert!(e.contains("smollm2-135m"), "{e}");
        assert!(known("SmolLM2-135M").is_some());
        assert!(fetch_hint("x").contains("scripts/fetch-models"));
    }
}
