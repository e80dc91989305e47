//! SentencePiece-style BPE as llama.cpp's `llm_tokenizer_spm` (GGUF
//! `tokenizer.ggml.model = llama`, e.g. Gemma 3): spaces become `▁`, the
//! text starts as single code points and the adjacent pair whose
//! concatenation is the best-scoring token is merged until none is left;
//! what is not a token falls back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Core;

#[derive(Debug, Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
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
    // Highest score first, then leftmost (llama.cpp's comparator).
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

#[derive(Debug, Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Tokenizes one fragment; `text` already has its spaces escaped as `▁`.
pub(crate) fn encode_text(core: &Core, text: &str, out: &mut Vec<u32>) {
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let idx = syms.len();
        syms.push(Sym {
            start: i,
            len: c.len_utf8(),
            prev: idx.checked_sub(1),
            next: it.peek().map(|_| idx + 1),
        });
    }
    let mut heap = BinaryHeap::new();
    let try_add = |syms: &[Sym], heap: &mut BinaryHeap<Bigram>, l: usize, r: usize| {
        let (a, b) = (syms[l], syms[r]);
        let s = &text[a.start..a.start + a.len + b.len];
        if let Some(id) = core.tokens.id(s) {
            heap.push(Bigram {
                score: core.scores.get(id as usize).copied().unwrap_or(0.0),
                left: l,
                right: r,
                size: s.len(),
            });
        }
    };
    for i in 1..syms.len() {
        try_add(&syms, &mut heap, i - 1, i);
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (syms[bg.left], syms[bg.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
            continue;
        }
        syms[bg.left].len += r.len;
        syms[bg.right].len = 0;
        syms[bg.left].next = r.next;
        if let Some(n) = r.next {
            syms[n].prev = Some(bg.left);
        }
        if let Some(p) = syms[bg.left].prev {
            try_add(&syms, &mut heap, p, bg.left);
        }
        if let Some(n) = syms[bg.left].next {
            try_add(&syms, &mut heap, bg.left, n);
        }
    }
    let mut i = if syms.is_empty() { None } else { Some(0) };
    while let Some(k) = i {
        let s = syms[k];
        i = s.next;
        let piece = &text[s.start..s.start + s.len];
        if let Some(id) = core.tokens.id(piece) {
            out.push(id);
            continue;
        }
        for &b in piece.as_bytes() {
            if let Some(id) = core.byte_token(b) {
                out.push(id);
            }
        }
    }
}
