//! The tokenizer of llama2.c (`tokenizer.bin` / `tok512.bin`), encoding as its `run.c`.
//!
//! File format: `i32 max_token_length`, then per token `f32 score, i32 len, len bytes`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use super::TokenizerError;

/// A llama2.c tokenizer: BOS = 1, EOS = 2, raw bytes at id `byte + 3`.
#[derive(Debug, Clone)]
pub struct Llama2cTokenizer {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    lookup: HashMap<Vec<u8>, u32>,
}

/// A pair waiting to merge: the symbol at `pos` (token `left`) and the next
/// (token `right`) would become `id`.
#[derive(Debug, Clone, Copy)]
struct Cand {
    score: f32,
    pos: usize,
    left: u32,
    right: u32,
    id: u32,
}

impl Ord for Cand {
    // BinaryHeap pops the greatest: best score first, then leftmost.
    fn cmp(&self, o: &Cand) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.pos.cmp(&self.pos))
    }
}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Cand) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Cand {
    fn eq(&self, o: &Cand) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}

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
        // Merge the best-scoring adjacent pair (first one on ties) until none merges;
        // like run.c, BOS takes part in the pairs.
        let mut toks = self.merge(self.symbols(text, bos));
        if eos {
            toks.push(LLAMA2C_EOS);
        }
        toks
    }

    /// The symbols before any merge: BOS, the dummy prefix space, then each
    /// code point as a token if the vocabulary has it, else its bytes.
    fn symbols(&self, text: &str, bos: bool) -> Vec<u32> {
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
        toks
    }

    /// The merge of a pair of tokens, if the vocabulary has it: (score, id).
    fn pair(&self, buf: &mut Vec<u8>, left: u32, right: u32) -> Option<(f32, u32)> {
        buf.clear();
        buf.extend_from_slice(self.raw(left));
        buf.extend_from_slice(self.raw(right));
        self.lookup
            .get(buf.as_slice())
            .map(|&id| (self.scores[id as usize], id))
    }

    /// run.c's merge loop, in O(n log n): the candidate pairs wait in a heap
    /// (best score first, leftmost on ties, as run.c's scan picks them) over a
    /// linked list of symbols; a pair whose symbols have changed since it was
    /// queued is skipped when it comes out.
    fn merge(&self, mut toks: Vec<u32>) -> Vec<u32> {
        const NONE: usize = usize::MAX;
        let n = toks.len();
        let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        if n > 0 {
            prev[0] = NONE;
        }
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let mut buf = Vec::new();
        let mut push = |heap: &mut BinaryHeap<Cand>, toks: &[u32], l: usize, r: usize| {
            if let Some((score, id)) = self.pair(&mut buf, toks[l], toks[r]) {
                heap.push(Cand {
                    score,
                    pos: l,
                    left: toks[l],
                    right: toks[r],
                    id,
                });
            }
        };
        for l in 0..n.saturating_sub(1) {
            push(&mut heap, &toks, l, l + 1);
        }
        while let Some(c) = heap.pop() {
            let l = c.pos;
            let r = next[l];
            if !alive[l] || r == NONE || toks[l] != c.left || toks[r] != c.right {
                continue; // stale: one of its symbols merged since
            }
            toks[l] = c.id;
            alive[r] = false;
            next[l] = next[r];
            if next[r] != NONE {
                prev[next[r]] = l;
            }
            if prev[l] != NONE {
                push(&mut heap, &toks, prev[l], l);
            }
            if next[l] != NONE {
                push(&mut heap, &toks, l, next[l]);
            }
        }
        let mut out = Vec::with_capacity(n);
        let mut at = if n > 0 { 0 } else { NONE };
        while at != NONE {
            out.push(toks[at]);
            at = next[at];
        }
        out
    }

    /// The quadratic merge loop as `run.c` writes it: the reference
    /// [`Llama2cTokenizer::merge`] is checked against.
    #[cfg(test)]
    fn merge_quadratic(&self, mut toks: Vec<u32>) -> Vec<u32> {
        let mut buf = Vec::new();
        loop {
            let mut best: Option<(f32, u32, usize)> = None;
            for k in 0..toks.len().saturating_sub(1) {
                if let Some((s, id)) = self.pair(&mut buf, toks[k], toks[k + 1]) {
                    if best.is_none_or(|(bs, _, _)| s > bs) {
                        best = Some((s, id, k));
                    }
                }
            }
            let Some((_, id, k)) = best else { break };
            toks[k] = id;
            toks.remove(k + 1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tok512() -> Llama2cTokenizer {
        let path = crate::catalog::models_dir().join("stories260K/tok512.bin");
        Llama2cTokenizer::from_file(&path).unwrap_or_else(|e| {
            panic!(
                "{e}: stories260K's tok512.bin is missing (scripts/fetch-models stories260k fetches it)"
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn heap_merge_matches_run_c_quadratic_merge(
            text in "(?s)[ a-zA-Z.,!?'\n\u{e9}\u{4e2d}\u{1f600}]{0,200}|[ eatnhsd]{0,300}",
            bos in any::<bool>(),
        ) {
            let t = tok512();
            let syms = t.symbols(&text, bos);
            prop_assert_eq!(t.merge(syms.clone()), t.merge_quadratic(syms));
        }
    }

    #[test]
    fn forty_kilobytes_encode_quickly_and_as_run_c_does() {
        let t = tok512();
        let text =
            "Once upon a time, there was a little girl named Lily. She liked to play outside. "
                .repeat(500);
        assert!(text.len() > 40_000);
        let t0 = std::time::Instant::now();
        let fast = t.merge(t.symbols(&text, true));
        let secs = t0.elapsed().as_secs_f64();
        assert!(secs < 1.0, "{secs} s for {} bytes", text.len());
        let small = &text[..4000];
        assert_eq!(
            t.merge(t.symbols(small, true)),
            t.merge_quadratic(t.symbols(small, true))
        );
        assert!(fast.len() < text.len() / 2);
    }
}
