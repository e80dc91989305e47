//! HF `tokenizer.json` through the `tokenizers` crate (e.g. MiniLM's WordPiece).

use std::path::Path;

use super::TokenizerError;

/// A tokenizer loaded from a HF `tokenizer.json`.
#[derive(Clone)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl HfTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Format {
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
        Ok(HfTokenizer { inner })
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
