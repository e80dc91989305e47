//! HF `tokenizer.json` through the `tokenizers` crate (e.g. MiniLM's WordPiece).

use std::path::Path;

use super::TokenizerError;

/// A tokenizer loaded from a HF `tokenizer.json`.
#[derive(Clone)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-text id: `bos_token` of `tokenizer_config.json`, else `[CLS]`.
    bos: Option<u32>,
    /// End-of-text id: `eos_token` of `tokenizer_config.json`, else `[SEP]`.
    eos: Option<u32>,
    /// Ids that end generation: `eos_token` and `config.json`'s `eos_token_id`(s).
    eog: Vec<u32>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// The first special token a `TemplateProcessing` template (also inside a
/// `Sequence` of processors) uses without defining it.
fn undefined_template_token(p: &serde_json::Value) -> Option<String> {
    match p["type"].as_str() {
        Some("Sequence") => p["processors"]
            .as_array()?
            .iter()
            .find_map(undefined_template_token),
        Some("TemplateProcessing") => {
            let defined = |id: &str| match &p["special_tokens"] {
                serde_json::Value::Array(a) => a.iter().any(|t| t["id"] == id),
                m => m.get(id).is_some(),
            };
            // In tokenizer.json a template is a list of pieces.
            let used = |t: &serde_json::Value| -> Vec<String> {
                t.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|piece| piece["SpecialToken"]["id"].as_str())
                    .map(str::to_owned)
                    .collect()
            };
            ["single", "pair"]
                .iter()
                .flat_map(|k| used(&p[*k]))
                .find(|id| !defined(id))
        }
        _ => None,
    }
}

impl HfTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        // Check the JSON syntax and nesting depth first: `tokenizers` panics
        // on either inside some sections (its decoder reader `expect`s)
        // instead of returning an error.
        let json = serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| {
            TokenizerError::Format {
                path: path.to_path_buf(),
                msg: format!("not valid JSON: {e}"),
            }
        })?;
        // `tokenizers` accepts a template naming a special token it does not
        // define, then panics when it encodes (fuzz target tokenizer_json).
        if let Some(name) = undefined_template_token(&json["post_processor"]) {
            return Err(TokenizerError::Format {
                path: path.to_path_buf(),
                msg: format!(
                    "post_processor: the template uses the special token {name:?}, \
                     which its special_tokens do not define"
                ),
            });
        }
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Format {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        // Padding is a batching concern: encode one text to its own length.
        // Truncation is the runner's: tokenizer.json's limit (128 for
        // all-MiniLM-L6-v2) is not the model's (sentence-transformers uses
        // max_seq_length, 256), so encode whole texts and let the caller cut.
        let mut inner = inner;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Format {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        let mut t = HfTokenizer {
            inner,
            bos: None,
            eos: None,
            eog: Vec::new(),
        };
        t.read_special_tokens(path.parent().unwrap_or(Path::new(".")))?;
        Ok(t)
    }

    /// Reads BOS/EOS from `tokenizer_config.json` and the end-of-generation
    /// ids from `config.json` beside the tokenizer, where they exist (a
    /// decoder's checkpoint); an encoder's fall back to `[CLS]`/`[SEP]`.
    fn read_special_tokens(&mut self, dir: &Path) -> Result<(), TokenizerError> {
        let read_json = |name: &str| -> Result<Option<serde_json::Value>, TokenizerError> {
            let p = dir.join(name);
            let Ok(bytes) = std::fs::read(&p) else {
                return Ok(None);
            };
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| TokenizerError::Format {
                    path: p,
                    msg: e.to_string(),
                })
        };
        // A special token is a string or `{"content": ...}`.
        let token = |v: Option<&serde_json::Value>| -> Option<u32> {
            let v = v?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            self.inner.token_to_id(s)
        };
        let cfg = read_json("tokenizer_config.json")?;
        self.bos = token(cfg.as_ref().and_then(|c| c.get("bos_token")))
            .or_else(|| self.inner.token_to_id("[CLS]"));
        let eos = token(cfg.as_ref().and_then(|c| c.get("eos_token")));
        self.eos = eos.or_else(|| self.inner.token_to_id("[SEP]"));
        self.eog = eos.into_iter().collect();
        if let Some(model) = read_json("config.json")? {
            let ids = match model.get("eos_token_id") {
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).collect(),
                Some(v) => v.as_u64().into_iter().collect(),
                None => Vec::new(),
            };
            for id in ids {
                let id = u32::try_from(id).map_err(|_| TokenizerError::Format {
                    path: dir.join("config.json"),
                    msg: format!("eos_token_id {id} is not a token id"),
                })?;
                if !self.eog.contains(&id) {
                    self.eog.push(id);
                }
            }
        }
        Ok(())
    }

    /// The beginning-of-text id.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-text id.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether generating `id` ends the generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Token ids of `text`; `add_special` adds the post-processor's tokens ([CLS] .. [SEP]).
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        match self.inner.encode(text, add_special) {
            Ok(e) => e.get_ids().to_vec(),
            // The tokenizers crate only fails on broken configurations; an
            // empty result is the honest answer for a text it cannot handle.
            Err(_) => Vec::new(),
        }
    }

    /// Decodes ids, skipping special tokens or not.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        self.inner.decode(ids, skip_special).unwrap_or_default()
    }

    /// The vocabulary entry of a token.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry.
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// Number of tokens including added ones.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
