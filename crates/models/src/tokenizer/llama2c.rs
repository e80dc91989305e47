//! The tokenizer of llama2.c (`tokenizer.bin` / `tok512.bin`), encoding as its `run.c`.
//!
//! File format: `i32 max_token_length`, then per token `f32 score, i32 len, len bytes`.

use std::collections::HashMap;
use std::path::Path;

use super::TokenizerError;

/// A llama2.c tokenizer: BOS = 1, EOS = 2, raw bytes at id `byte + 3`.
#[derive(Debug, Clone)]
pub struct Llama2cTokenizer {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    lookup: HashMap<Vec<u8>, u32>,
}

/// llama2.c's BOS id.
pub const LLAMA2C_BOS: u32 = 1;
/// llama2.c's EOS id.
pub const LLAMA2C_EOS: u32 = 2;

impl Llama2cTokenizer {
    /// Reads a `tokenizer.bin`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let data = std::fs::read(path).map_err(|e| TokenizerError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_bytes(&data).map_err(|msg| TokenizerError::Format {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// Parses the bytes of a `tokenizer.bin`.
    pub fn from_bytes(data: &[u8]) -> Result<Self, String> {
        let rd4 = |at: usize| -> Result<[u8; 4], String> {
            data.get(at..at + 4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| format!("truncated at byte {at}"))
        };
        let max_len = i32::from_le_bytes(rd4(0)?);
        if !(1..=1 << 16).contains(&max_len) {
            return Err(format!("implausible max_token_length {max_len}"));
        }
        let mut at = 4;
        let (mut pieces, mut scores) = (Vec::new(), Vec::new());
        while at < data.len() {
            let score = f32::from_le_bytes(rd4(at)?);
            let len = i32::from_le_bytes(rd4(at + 4)?);
            at += 8;
            let len =
                usize::try_from(len).map_err(|_| format!("negative token length at byte {at}"))?;
            let bytes = data
                .get(at..at + len)
                .ok_or_else(|| format!("token {} runs past the end", pieces.len()))?;
            at += len;
            pieces.push(bytes.to_vec());
            scores.push(score);
        }
        if pieces.len() < 3 {
            return Err("fewer than 3 tokens".into());
        }
        let mut lookup = HashMap::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            lookup.entry(p.clone()).or_insert(i as u32);
        }
        Ok(Llama2cTokenizer {
            pieces,
            scores,
            lookup,
        })
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The raw vocabulary entry of a token.
    pub fn raw_piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(|p| p.as_slice())
    }

    /// The merge score of a token (higher merges first), as stored in the file.
    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// Encodes as `run.c`'s `encode(text, bos, eos)`; the dummy prefix space is
    /// added to non-empty text.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        let mut toks: Vec<u32> = Vec::with_capacity(text.len() + 3);
        if bos {
            toks.push(LLAMA2C_BOS);
        }
        if !text.is_empty() {
            if let Some(&id) = self.lookup.get(b" ".as_slice()) {
                toks.push(id);
            }
        }
        // Each UTF-8 code point is a token if it is in the vocabulary, else its bytes + 3.
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let mut j = i + 1;
            while j < bytes.len() && (bytes[j] & 0xC0) == 0x80 && j - i < 4 {
                j += 1;
            }
            match self.lookup.get(&bytes[i..j]) {
                Some(&id) => toks.push(id),
                None => toks.extend(bytes[i..j].iter().map(|&b| b as u32 + 3)),
            }
            i = j;
        }
        // Merge the best-scoring adjacent pair (first one on ties) until none merges;
        // like run.c, BOS takes part in the pairs.
        let mut buf = Vec::new();
        loop {
            let mut best: Option<(f32, u32, usize)> = None;
            for k in 0..toks.len().saturating_sub(1) {
                buf.clear();
                buf.extend_from_slice(self.raw(toks[k]));
                buf.extend_from_slice(self.raw(toks[k + 1]));
                if let Some(&id) = self.lookup.get(&buf) {
                    let s = self.scores[id as usize];
                    if best.is_none_or(|(bs, _, _)| s > bs) {
                        best = Some((s, id, k));
                    }
                }
            }
            let Some((_, id, k)) = best else { break };
            toks[k] = id;
            toks.remove(k + 1);
        }
        if eos {
            toks.push(LLAMA2C_EOS);
        }
        toks
    }

    fn raw(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    /// The bytes a token decodes to after `prev` (as `run.c`'s `decode`:
    /// the space after BOS is dropped, `<0xXX>` pieces are raw bytes).
    pub fn piece_bytes(&self, prev: Option<u32>, id: u32) -> Vec<u8> {
        let mut p = self.raw(id);
        if prev == Some(LLAMA2C_BOS) && p.first() == Some(&b' ') {
            p = &p[1..];
        }
        if p.len() == 6 && p.starts_with(b"<0x") && p[5] == b'>' {
            if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&p[3..5]).unwrap_or("zz"), 16) {
                return vec![b];
            }
        }
        p.to_vec()
    }
}
