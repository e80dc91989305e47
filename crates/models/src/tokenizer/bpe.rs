//! Byte-level BPE as llama.cpp's `llm_tokenizer_bpe` (GGUF `tokenizer.ggml.model = gpt2`).
//!
//! Text is split by the pre-tokenizer of `tokenizer.ggml.pre` (hand-written
//! matchers equivalent to llama.cpp's regexes), each word is mapped byte by
//! byte to GPT-2's printable code points, then merged pair by pair in rank
//! order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::fasthash::FastState;
use crate::formats::gguf::StringArray;

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

/// A BPE merge candidate in the work queue: the symbols at `left` and
/// `right` as they were when it was queued (a symbol's start never moves, so
/// its length names its text).
#[derive(Debug, Clone, Copy)]
struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    left_len: usize,
    right_len: usize,
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

/// A symbol of a word being merged: `word[start..start + len]`, in a linked list.
#[derive(Debug, Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Where merge text `m` (`"a b"`) splits: as llama.cpp, at the first space
/// after the first byte.
fn split_point(m: &str) -> Option<usize> {
    m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1)
}

/// The byte-level BPE model.
///
/// Merges are looked up by text, not by token id: the table is built by
/// hashing each merge's text once, where interning both halves and the result
/// as ids took three vocabulary lookups per merge (half a million for a
/// 151k-merge vocabulary, and most of a model's start-up time).
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    pub(crate) pre: PreTokenizer,
    /// Every merge text `"a b"`, indexed by rank.
    merges: StringArray,
    /// Ranks of the merges that split, keyed by their text's hash (the first
    /// rank of a repeated text only).
    ranks: hashbrown::HashTable<u32>,
    hasher: FastState,
    byte_chars: [char; 256],
}

impl Bpe {
    pub(crate) fn new(merges: StringArray, pre: PreTokenizer) -> Self {
        let hasher = FastState::default();
        let mut ranks = hashbrown::HashTable::with_capacity(merges.len());
        let at = |r: u32| &merges[r as usize];
        for (rank, m) in merges.iter().enumerate() {
            if split_point(m).is_none() {
                continue;
            }
            let h = hasher.hash_str(m);
            if ranks.find(h, |&r| at(r) == m).is_none() {
                ranks.insert_unique(h, rank as u32, |&r| hasher.hash_str(at(r)));
            }
        }
        Bpe {
            pre,
            merges,
            ranks,
            hasher,
            byte_chars: byte_to_char_table(),
        }
    }

    /// The rank of the merge of `left` with `right`, if there is one; `buf`
    /// is scratch for the merge text.
    fn rank(&self, left: &str, right: &str, buf: &mut String) -> Option<u32> {
        buf.clear();
        buf.push_str(left);
        buf.push(' ');
        buf.push_str(right);
        let h = self.hasher.hash_str(buf);
        let r = *self.ranks.find(h, |&r| &self.merges[r as usize] == buf)?;
        // "a b c" merges "a" with "b c", never "a b" with "c".
        (split_point(buf) == Some(left.len())).then_some(r)
    }

    /// Tokenizes one fragment of plain text (no special tokens in it).
    pub(crate) fn encode_text(&self, core: &Core, text: &str, out: &mut Vec<u32>) {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut words: Vec<(usize, usize)> = Vec::new();
        split_words(self.pre, &chars, &mut words);
        let mut word = String::new();
        let mut work = Work::default();
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
            self.merge_word(core, &word, &mut work, out);
        }
    }

    fn merge_word(&self, core: &Core, word: &str, work: &mut Work, out: &mut Vec<u32>) {
        let syms = &mut work.syms;
        syms.clear();
        work.heap.clear();
        let mut it = word.char_indices().peekable();
        while let Some((i, c)) = it.next() {
            let idx = syms.len();
            syms.push(Sym {
                start: i,
                len: c.len_utf8(),
                prev: idx.checked_sub(1),
                next: it.peek().map(|_| idx + 1),
            });
        }
        if syms.is_empty() {
            return;
        }
        for i in 1..syms.len() {
            self.add_bigram(word, work, i - 1, i);
        }
        while let Some(bg) = work.heap.pop() {
            let syms = &mut work.syms;
            let (l, r) = (syms[bg.left], syms[bg.right]);
            if l.len != bg.left_len || r.len != bg.right_len {
                continue; // outdated: one side has merged since
            }
            syms[bg.left].len += r.len;
            syms[bg.right].len = 0;
            syms[bg.left].next = r.next;
            if let Some(n) = r.next {
                syms[n].prev = Some(bg.left);
            }
            let (prev, next) = (syms[bg.left].prev, syms[bg.left].next);
            if let Some(p) = prev {
                self.add_bigram(word, work, p, bg.left);
            }
            if let Some(n) = next {
                self.add_bigram(word, work, bg.left, n);
            }
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let s = work.syms[k];
            i = s.next;
            if s.len == 0 {
                continue;
            }
            let text = &word[s.start..s.start + s.len];
            if let Some(id) = core.tokens.id(text) {
                out.push(id);
            } else {
                // Not a token: llama.cpp falls back to the single bytes of the
                // encoded text that are tokens by themselves.
                for &b in text.as_bytes() {
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

    fn add_bigram(&self, word: &str, work: &mut Work, left: usize, right: usize) {
        let (l, r) = (work.syms[left], work.syms[right]);
        let (a, b) = (
            &word[l.start..l.start + l.len],
            &word[r.start..r.start + r.len],
        );
        if let Some(rank) = self.rank(a, b, &mut work.buf) {
            work.heap.push(Bigram {
                rank,
                left,
                right,
                left_len: l.len,
                right_len: r.len,
            });
        }
    }
}

/// The buffers one word's merging works in (kept across the words of a text).
#[derive(Default)]
struct Work {
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
    buf: String,
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

    /// Merges are found by their halves' texts, with the rank of their place
    /// in the list (unsplittable entries keep their place), the first of a
    /// repeated merge winning, and the split at the first space after the
    /// first byte as llama.cpp does.
    #[test]
    fn merge_ranks_follow_the_list() {
        let merges: StringArray = ["nospace", "a b", "x yz", "a b", " c d", "p q r"]
            .into_iter()
            .collect();
        let bpe = Bpe::new(merges, PreTokenizer::Gpt2);
        let mut buf = String::new();
        assert_eq!(bpe.rank("a", "b", &mut buf), Some(1));
        assert_eq!(bpe.rank("x", "yz", &mut buf), Some(2));
        assert_eq!(bpe.rank(" c", "d", &mut buf), Some(4));
        assert_eq!(bpe.rank("p", "q r", &mut buf), Some(5));
        assert_eq!(bpe.rank("p q", "r", &mut buf), None);
        assert_eq!(bpe.rank("x y", "z", &mut buf), None);
        assert_eq!(bpe.rank("b", "a", &mut buf), None);
        assert_eq!(bpe.rank("nospace", "", &mut buf), None);
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
