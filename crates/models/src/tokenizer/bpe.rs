//! Byte-level BPE as llama.cpp's `llm_tokenizer_bpe` (GGUF `tokenizer.ggml.model = gpt2`).
//!
//! Text is split by the pre-tokenizer of `tokenizer.ggml.pre` (hand-written
//! matchers equivalent to llama.cpp's regexes), each word is mapped byte by
//! byte to GPT-2's printable code points, then merged pair by pair in rank
//! order.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::unicode::{byte_to_char_table, class, Class};
use super::{Core, TokenizerError};

/// The pre-tokenizers patchbay knows (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
    Gpt2,
    /// SmolLM / StarCoder: every digit alone, then the GPT-2 regex.
    Smollm,
    /// Qwen2: `(?i:'s|..)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Qwen2,
    /// Llama 3: as Qwen2 but digits in groups of up to three, and whole words
    /// that are tokens skip the merges.
    Llama3,
}

impl PreTokenizer {
    /// Maps a `tokenizer.ggml.pre` value to a pre-tokenizer.
    pub fn from_name(name: Option<&str>) -> Result<Self, TokenizerError> {
        Ok(match name.unwrap_or("") {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => PreTokenizer::Smollm,
            "qwen2" | "stablelm2" | "megrez" | "hunyuan" => PreTokenizer::Qwen2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => {
                PreTokenizer::Llama3
            }
            "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" => PreTokenizer::Gpt2,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "BPE pre-tokenizer '{other}' (supported: smollm, qwen2, llama3, gpt2 and their aliases)"
                )))
            }
        })
    }
}

/// A BPE merge candidate in the work queue.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    left_id: u32,
    right_id: u32,
    result: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    // BinaryHeap pops the greatest: lowest rank first, then leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        o.rank.cmp(&self.rank).then(o.left.cmp(&self.left))
    }
}

#[derive(Debug, Clone, Copy)]
struct Sym {
    /// Interned id of the symbol's text (vocab id if < n_vocab), or NONE.
    id: u32,
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

const NONE: u32 = u32::MAX;

/// The byte-level BPE model.
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    pub(crate) pre: PreTokenizer,
    /// (left, right) interned ids -> (rank, interned id of the merged text).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Interned strings that are not vocab tokens (ids from n_vocab up).
    extra: HashMap<Box<str>, u32>,
    byte_chars: [char; 256],
}

impl Bpe {
    pub(crate) fn new(core: &Core, merges: &[String], pre: PreTokenizer) -> Self {
        let n_vocab = core.tokens.len() as u32;
        let mut extra: HashMap<Box<str>, u32> = HashMap::new();
        let intern = |s: &str, extra: &mut HashMap<Box<str>, u32>| -> u32 {
            if let Some(id) = core.tokens.id(s) {
                return id;
            }
            let next = n_vocab + extra.len() as u32;
            *extra.entry(s.into()).or_insert(next)
        };
        let mut map = HashMap::with_capacity(merges.len());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // As llama.cpp: split at the first space after the first byte.
            let Some(pos) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            let ia = intern(a, &mut extra);
            let ib = intern(b, &mut extra);
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let iab = intern(&joined, &mut extra);
            map.entry((ia, ib)).or_insert((rank as u32, iab));
        }
        Bpe {
            pre,
            merges: map,
            extra,
            byte_chars: byte_to_char_table(),
        }
    }

    fn lookup(&self, core: &Core, s: &str) -> u32 {
        if let Some(id) = core.tokens.id(s) {
            return id;
        }
        self.extra.get(s).copied().unwrap_or(NONE)
    }

    /// Tokenizes one fragment of plain text (no special tokens in it).
    pub(crate) fn encode_text(&self, core: &Core, text: &str, out: &mut Vec<u32>) {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut words: Vec<(usize, usize)> = Vec::new();
        split_words(self.pre, &chars, &mut words);
        let mut word = String::new();
        let mut syms: Vec<Sym> = Vec::new();
        let mut heap: BinaryHeap<Bigram> = BinaryHeap::new();
        for &(a, b) in &words {
            let start = chars[a].0;
            let end = chars.get(b).map_or(text.len(), |c| c.0);
            word.clear();
            for &byte in &text.as_bytes()[start..end] {
                word.push(self.byte_chars[byte as usize]);
            }
            if self.pre == PreTokenizer::Llama3 {
                if let Some(id) = core.tokens.id(&word) {
                    out.push(id);
                    continue;
                }
            }
            self.merge_word(core, &word, &mut syms, &mut heap, out);
        }
    }

    fn merge_word(
        &self,
        core: &Core,
        word: &str,
        syms: &mut Vec<Sym>,
        heap: &mut BinaryHeap<Bigram>,
        out: &mut Vec<u32>,
    ) {
        syms.clear();
        heap.clear();
        let mut it = word.char_indices().peekable();
        while let Some((i, c)) = it.next() {
            let len = c.len_utf8();
            let idx = syms.len();
            syms.push(Sym {
                id: self.lookup(core, &word[i..i + len]),
                start: i,
                len,
                prev: idx.checked_sub(1),
                next: it.peek().map(|_| idx + 1),
            });
        }
        if syms.is_empty() {
            return;
        }
        for i in 1..syms.len() {
            self.add_bigram(syms, heap, i - 1, i);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            if l.len == 0 || r.len == 0 || l.id != bg.left_id || r.id != bg.right_id {
                continue; // outdated
            }
            syms[bg.left].id = bg.result;
            syms[bg.left].len += r.len;
            syms[bg.right].len = 0;
            syms[bg.left].next = r.next;
            if let Some(n) = r.next {
                syms[n].prev = Some(bg.left);
            }
            if let Some(p) = syms[bg.left].prev {
                self.add_bigram(syms, heap, p, bg.left);
            }
            if let Some(n) = syms[bg.left].next {
                self.add_bigram(syms, heap, bg.left, n);
            }
        }
        let n_vocab = core.tokens.len() as u32;
        let mut i = Some(0);
        while let Some(k) = i {
            let s = syms[k];
            i = s.next;
            if s.len == 0 {
                continue;
            }
            if s.id < n_vocab {
                out.push(s.id);
            } else {
                // Not a token: llama.cpp falls back to the single bytes of the
                // encoded text that are tokens by themselves.
                for &b in &word.as_bytes()[s.start..s.start + s.len] {
                    if b < 0x80 {
                        let mut buf = [0u8; 4];
                        if let Some(id) = core.tokens.id((b as char).encode_utf8(&mut buf)) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }

    fn add_bigram(&self, syms: &[Sym], heap: &mut BinaryHeap<Bigram>, left: usize, right: usize) {
        let (a, b) = (syms[left].id, syms[right].id);
        if a == NONE || b == NONE {
            return;
        }
        if let Some(&(rank, result)) = self.merges.get(&(a, b)) {
            heap.push(Bigram {
                rank,
                left,
                right,
                left_id: a,
                right_id: b,
                result,
            });
        }
    }
}

/// Splits `chars` into words (ranges of char indices) with the pre-tokenizer.
pub(crate) fn split_words(
    pre: PreTokenizer,
    chars: &[(usize, char)],
    out: &mut Vec<(usize, usize)>,
) {
    let n = chars.len();
    match pre {
        PreTokenizer::Gpt2 => split_gpt2(chars, 0, n, out),
        PreTokenizer::Smollm => {
            // First regex `\p{N}`: every number code point is its own segment.
            let mut seg = 0;
            for i in 0..n {
                if class(chars[i].1) == Class::Number {
                    if seg < i {
                        split_gpt2(chars, seg, i, out);
                    }
                    out.push((i, i + 1));
                    seg = i + 1;
                }
            }
            if seg < n {
                split_gpt2(chars, seg, n, out);
            }
        }
        PreTokenizer::Qwen2 => split_qwen2(chars, 1, out),
        PreTokenizer::Llama3 => split_qwen2(chars, 3, out),
    }
}

/// llama.cpp's `unicode_regex_split_custom_gpt2` on the segment `[a, b)`.
fn split_gpt2(chars: &[(usize, char)], a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
    let cls = |p: usize| (p >= a && p < b).then(|| class(chars[p].1));
    let ch = |p: usize| (p < b).then(|| chars[p].1);
    let mut pos = a;
    while pos < b {
        let start = pos;
        let c = chars[pos].1;
        if c == '\'' && pos + 1 < b {
            let n1 = chars[pos + 1].1;
            if matches!(n1, 's' | 't' | 'm' | 'd') {
                out.push((start, pos + 2));
                pos += 2;
                continue;
            }
            if pos + 2 < b {
                let n2 = chars[pos + 2].1;
                if matches!((n1, n2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    out.push((start, pos + 3));
                    pos += 3;
                    continue;
                }
            }
        }
        let f2 = if c == ' ' { cls(pos + 1) } else { cls(pos) };
        if let Some(k @ (Class::Letter | Class::Number | Class::Other)) = f2 {
            pos += (c == ' ') as usize;
            while cls(pos) == Some(k) {
                pos += 1;
            }
            out.push((start, pos));
            continue;
        }
        let mut nws = 0;
        while cls(pos + nws) == Some(Class::Space) {
            nws += 1;
        }
        if nws > 1 && ch(pos + nws).is_some() {
            pos += nws - 1;
        } else if nws > 0 {
            pos += nws;
        } else {
            pos += 1;
        }
        out.push((start, pos));
    }
}

/// The Qwen2 / Llama 3 regex, alternative by alternative with the regex's
/// leftmost-alternative semantics; `digits` is the longest run of digits per word.
fn split_qwen2(chars: &[(usize, char)], digits: usize, out: &mut Vec<(usize, usize)>) {
    let n = chars.len();
    let cls = |p: usize| (p < n).then(|| class(chars[p].1));
    let is_rn = |c: char| c == '\r' || c == '\n';
    let mut pos = 0;
    while pos < n {
        let start = pos;
        let c = chars[pos].1;
        let k = class(c);
        // (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])
        if c == '\'' && pos + 1 < n {
            let n1 = chars[pos + 1].1.to_ascii_lowercase();
            if matches!(n1, 's' | 't' | 'm' | 'd') {
                out.push((start, pos + 2));
                pos += 2;
                continue;
            }
            if pos + 2 < n {
                let n2 = chars[pos + 2].1.to_ascii_lowercase();
                if matches!((n1, n2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    out.push((start, pos + 3));
                    pos += 3;
                    continue;
                }
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        let lead = !is_rn(c) && k != Class::Letter && k != Class::Number;
        if k == Class::Letter || (lead && cls(pos + 1) == Some(Class::Letter)) {
            pos += 1;
            while cls(pos) == Some(Class::Letter) {
                pos += 1;
            }
            out.push((start, pos));
            continue;
        }
        // \p{N}{1,digits}
        if k == Class::Number {
            while pos - start < digits && cls(pos) == Some(Class::Number) {
                pos += 1;
            }
            out.push((start, pos));
            continue;
        }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        let other_from = if c == ' ' && cls(pos + 1) == Some(Class::Other) {
            Some(pos + 1)
        } else if k == Class::Other {
            Some(pos)
        } else {
            None
        };
        if let Some(p) = other_from {
            pos = p;
            while cls(pos) == Some(Class::Other) {
                pos += 1;
            }
            while pos < n && is_rn(chars[pos].1) {
                pos += 1;
            }
            out.push((start, pos));
            continue;
        }
        // Whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
        let mut nws = 0;
        let mut last_rn = None;
        while cls(pos + nws) == Some(Class::Space) {
            if is_rn(chars[pos + nws].1) {
                last_rn = Some(pos + nws + 1);
            }
            nws += 1;
        }
        pos = if let Some(e) = last_rn {
            e
        } else if nws > 1 && pos + nws < n {
            pos + nws - 1
        } else {
            pos + nws.max(1)
        };
        out.push((start, pos));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, s: &str) -> Vec<String> {
        let chars: Vec<(usize, char)> = s.char_indices().collect();
        let mut out = Vec::new();
        split_words(pre, &chars, &mut out);
        out.iter()
            .map(|&(a, b)| chars[a..b].iter().map(|c| c.1).collect())
            .collect()
    }

    #[test]
    fn gpt2_split_matches_the_regex() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello world's  end!!\n\n x"),
            ["Hello", " world", "'s", " ", " end", "!!", "\n\n", " x"]
        );
        assert_eq!(
            words(PreTokenizer::Smollm, "in 2001 "),
            ["in", " ", "2", "0", "0", "1", " "]
        );
    }

    #[test]
    fn qwen2_split_matches_the_regex() {
        assert_eq!(
            words(PreTokenizer::Qwen2, "I'M fine,\n\n  (ok) 123\tx  "),
            ["I", "'M", " fine", ",\n\n", " ", " (", "ok", ")", " ", "1", "2", "3", "\tx", "  "]
        );
        assert_eq!(words(PreTokenizer::Llama3, "12345"), ["123", "45"]);
        assert_eq!(words(PreTokenizer::Qwen2, "a \n b"), ["a", " \n", " b"]);
    }
}
