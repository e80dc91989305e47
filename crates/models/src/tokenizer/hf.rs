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

/// What in a post-processor would make `tokenizers` panic when it encodes,
/// if anything. `p` is the processor as `tokenizers` serialises it back, so
/// its `type` tags are canonical whatever keys the file spelled: the crate
/// deserialises processors untagged, and a mangled `type` still loads as a
/// template (fuzz target `tokenizer_json`). Deserialising does not run the
/// builder's checks, so they are repeated here.
fn post_processor_problem(p: &serde_json::Value) -> Option<String> {
    match p["type"].as_str() {
        Some("Sequence") => p["processors"]
            .as_array()?
            .iter()
            .find_map(post_processor_problem),
        Some("TemplateProcessing") => {
            let tokens = &p["special_tokens"];
            for (name, token) in tokens.as_object().into_iter().flatten() {
                let (ids, strs) = (&token["ids"], &token["tokens"]);
                if ids.as_array().map(Vec::len) != strs.as_array().map(Vec::len) {
                    return Some(format!(
                        "the special token {name:?} has {} ids but {} tokens",
                        ids.as_array().map_or(0, Vec::len),
                        strs.as_array().map_or(0, Vec::len)
                    ));
                }
            }
            for key in ["single", "pair"] {
                for piece in p[key].as_array().into_iter().flatten() {
                    if let Some(id) = piece["SpecialToken"]["id"].as_str() {
                        if tokens.get(id).is_none() {
                            return Some(format!(
                                "the template uses the special token {id:?}, \
                                 which its special_tokens do not define"
                            ));
                        }
                    }
                    // One text gives one sequence: `single` may only use A.
                    if key == "single" && piece["Sequence"]["id"] == "B" {
                        return Some(
                            "the template for one text (`single`) uses the second sequence B"
                                .to_owned(),
                        );
                    }
                }
            }
            None
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
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| {
            TokenizerError::Format {
                path: path.to_path_buf(),
                msg: format!("not valid JSON: {e}"),
            }
        })?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Format {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        // `tokenizers` accepts templates that it then panics on when it
        // encodes: check the processor it actually built.
        let built = serde_json::to_value(inner.get_post_processor()).unwrap_or_default();
        if let Some(problem) = post_processor_problem(&built) {
            return Err(TokenizerError::Format {
                path: path.to_path_buf(),
                msg: format!("post_processor: {problem}"),
            });
        }
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

    /// Token ids of `text`; `add_special` adds the post-processor's tokens (`[CLS]` .. `[SEP]`).
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
