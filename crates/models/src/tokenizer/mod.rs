//! Tokenizers: GGUF-embedded byte-level BPE (`gpt2`) and SentencePiece-style
//! BPE (`llama`), llama2.c's `tokenizer.bin`, and HF `tokenizer.json`; decoding
//! (whole or streamed token by token) and chat templates.
//!
//! The GGUF tokenizers reproduce llama.cpp's token ids exactly, including its
//! handling of special tokens in the text (`tokenizer_st_partition`).

mod bpe;
pub mod chat;
mod fasthash;
pub mod gguf_vocab;
mod hf;
mod llama2c;
mod spm;
mod table;
mod unicode;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::formats::gguf::StringArray;

pub use bpe::PreTokenizer;
pub use chat::{render_chat, ChatMessage};
pub use hf::HfTokenizer;
pub use llama2c::{Llama2cTokenizer, LLAMA2C_BOS, LLAMA2C_EOS};

/// Errors from loading a tokenizer or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The model file holding the tokenizer could not be read (it names
    /// the file).
    #[error(transparent)]
    File(Box<crate::error::ModelError>),
    /// The file is not in the expected format.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A required metadata key is missing.
    #[error("{path}: missing metadata key {key}")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// The vocabulary is inconsistent.
    #[error("bad vocabulary: {0}")]
    BadVocab(String),
    /// A tokenizer model or pre-tokenizer patchbay does not implement.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
}

/// A tokenizer vocabulary as plain data (the `tokenizer.*` keys of a GGUF file).
#[derive(Debug, Clone, Default)]
pub struct Vocab {
    /// Token texts, indexed by id (`tokenizer.ggml.tokens`), packed in one
    /// buffer (a vocabulary holds 10^5 of them).
    pub tokens: StringArray,
    /// Scores (`tokenizer.ggml.scores`; SentencePiece merge priorities), may be empty.
    pub scores: Vec<f32>,
    /// Token types (`tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte), may be empty (all normal).
    pub token_types: Vec<i32>,
    /// BPE merges `"a b"` in rank order (`tokenizer.ggml.merges`), packed.
    pub merges: StringArray,
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the BPE pre-tokenizer (`"smollm"`, `"qwen2"`, ...).
    pub pre: Option<String>,
    /// BOS token id.
    pub bos: Option<u32>,
    /// EOS token id.
    pub eos: Option<u32>,
    /// Unknown token id.
    pub unk: Option<u32>,
    /// End-of-turn token id.
    pub eot: Option<u32>,
    /// Whether encoding with `add_special` prepends BOS.
    pub add_bos: bool,
    /// Whether encoding with `add_special` appends EOS.
    pub add_eos: bool,
    /// SentencePiece: prefix the text with a space (`tokenizer.ggml.add_space_prefix`).
    pub add_space_prefix: bool,
    /// The Jinja chat template (`tokenizer.chat_template`).
    pub chat_template: Option<String>,
}

// llama.cpp's token attributes.
const ATTR_NORMAL: u8 = 1;
const ATTR_UNKNOWN: u8 = 2;
const ATTR_CONTROL: u8 = 4;
const ATTR_USER_DEFINED: u8 = 8;
const ATTR_UNUSED: u8 = 16;
const ATTR_BYTE: u8 = 32;

/// Texts llama.cpp treats as end of generation (and therefore control tokens).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    // FIM pad / repo / file separator also end generation in llama.cpp.
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// FIM texts llama.cpp promotes to control tokens.
const FIM_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<PRE>",
    "▁<PRE>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<SUF>",
    "▁<SUF>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<MID>",
    "▁<MID>",
];

/// The vocabulary state shared by the GGUF tokenizers.
#[derive(Debug, Clone)]
pub(crate) struct Core {
    /// Token texts by id, and ids by text.
    pub(crate) tokens: table::TokenTable,
    pub(crate) scores: Vec<f32>,
    attrs: Vec<u8>,
    /// Control, user-defined and unknown tokens, longest text first.
    special_cache: Vec<u32>,
    eog: HashSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

/// A piece of the input: plain text (a byte range) or an already-matched special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frag {
    Text(usize, usize),
    Tok(u32),
}

impl Core {
    fn new(v: &Vocab) -> Result<Self, TokenizerError> {
        let n = v.tokens.len();
        if n == 0 {
            return Err(TokenizerError::BadVocab("no tokens".into()));
        }
        if n > u32::MAX as usize / 2 {
            return Err(TokenizerError::BadVocab(format!("{n} tokens")));
        }
        // An empty text cannot be matched; llama.cpp names it instead.
        let texts = v
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match t.is_empty() {
                true => Cow::Owned(format!("[EMPTY_{i}]")),
                false => Cow::Borrowed(t),
            });
        let tokens = table::TokenTable::new(texts).map_err(|(prev, i)| {
            TokenizerError::BadVocab(format!(
                "duplicate token {:?} has ids {prev} and {i}",
                &v.tokens[i as usize]
            ))
        })?;
        let mut attrs: Vec<u8> = (0..n)
            .map(|i| match v.token_types.get(i).copied().unwrap_or(1) {
                1 => ATTR_NORMAL,
                2 => ATTR_UNKNOWN,
                3 => ATTR_CONTROL,
                4 => ATTR_USER_DEFINED,
                5 => ATTR_UNUSED,
                6 => ATTR_BYTE,
                _ => 0,
            })
            .collect();
        let check = |id: Option<u32>, what: &str| -> Result<Option<u32>, TokenizerError> {
            match id {
                Some(i) if i as usize >= n => Err(TokenizerError::BadVocab(format!(
                    "{what} token id {i} out of range (vocab size {n})"
                ))),
                x => Ok(x),
            }
        };
        let bos = check(v.bos, "BOS")?;
        let eos = check(v.eos, "EOS")?;
        let unk = check(v.unk, "UNK")?;
        let eot = check(v.eot, "EOT")?;
        if v.add_bos && bos.is_none() {
            return Err(TokenizerError::BadVocab(
                "add_bos is set but there is no BOS id".into(),
            ));
        }
        if v.add_eos && eos.is_none() {
            return Err(TokenizerError::BadVocab(
                "add_eos is set but there is no EOS id".into(),
            ));
        }
        let mut eog: HashSet<u32> = eos.into_iter().chain(eot).collect();
        for t in EOG_TEXTS {
            if let Some(id) = tokens.id(t) {
                eog.insert(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
        for t in FIM_TEXTS {
            if let Some(id) = tokens.id(t) {
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
        let mut special_cache: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        special_cache.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        Ok(Core {
            scores: v.scores.clone(),
            tokens,
            attrs,
            special_cache,
            eog,
            bos,
            eos,
            unk,
            add_bos: v.add_bos,
            add_eos: v.add_eos,
        })
    }

    /// Splits out the special tokens, as llama.cpp's `tokenizer_st_partition`:
    /// longest special first, every occurrence in every remaining text piece.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Frag> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Frag::Text(0, text.len()));
        let mut next = Vec::new();
        for &id in &self.special_cache {
            let attr = self.attrs[id as usize];
            // Control and unknown tokens only when parsing specials; user-defined always.
            if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let s = &self.tokens[id as usize];
            if !text.contains(s) {
                continue;
            }
            next.clear();
            for &f in &frags {
                let Frag::Text(a, b) = f else {
                    next.push(f);
                    continue;
                };
                let mut p = a;
                while let Some(m) = text[p..b].find(s) {
                    let m = p + m;
                    if m > p {
                        next.push(Frag::Text(p, m));
                    }
                    next.push(Frag::Tok(id));
                    p = m + s.len();
                }
                if p < b {
                    next.push(Frag::Text(p, b));
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }

    /// The `<0xXX>` token of a byte (else the byte as a one-char token, else UNK).
    pub(crate) fn byte_token(&self, b: u8) -> Option<u32> {
        let hex = format!("<0x{b:02X}>");
        if let Some(id) = self.tokens.id(&hex) {
            return Some(id);
        }
        if b < 0x80 {
            let mut buf = [0u8; 4];
            if let Some(id) = self.tokens.id((b as char).encode_utf8(&mut buf)) {
                return Some(id);
            }
        }
        self.unk
    }

    fn byte_of(&self, id: u32) -> Option<u8> {
        let t = self.tokens.get(id as usize)?;
        let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
        u8::from_str_radix(hex, 16).ok()
    }
}

/// A tokenizer read from a GGUF vocabulary.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    core: Core,
    kind: GgufKind,
    add_space_prefix: bool,
    chat_template: Option<String>,
}

#[derive(Debug, Clone)]
enum GgufKind {
    Bpe(Box<bpe::Bpe>),
    Spm,
}

impl GgufTokenizer {
    /// Builds the tokenizer of a vocabulary.
    pub fn new(v: Vocab) -> Result<Self, TokenizerError> {
        let core = Core::new(&v)?;
        let kind = match v.model.as_str() {
            "gpt2" => {
                let pre = PreTokenizer::from_name(v.pre.as_deref())?;
                GgufKind::Bpe(Box::new(bpe::Bpe::new(v.merges, pre)))
            }
            "llama" => GgufKind::Spm,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "tokenizer model '{other}' (supported: gpt2, llama)"
                )))
            }
        };
        Ok(GgufTokenizer {
            core,
            kind,
            add_space_prefix: v.add_space_prefix,
            chat_template: v.chat_template,
        })
    }

    /// Encodes; `add_bos_eos` applies the model's BOS/EOS rule, `parse_special`
    /// turns special-token texts in `text` into their ids.
    pub fn encode_with(&self, text: &str, add_bos_eos: bool, parse_special: bool) -> Vec<u32> {
        let c = &self.core;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos_eos && c.add_bos {
            out.extend(c.bos);
        }
        let frags = c.partition(text, parse_special);
        match &self.kind {
            GgufKind::Bpe(bpe) => {
                for f in frags {
                    match f {
                        Frag::Text(a, b) => bpe.encode_text(c, &text[a..b], &mut out),
                        Frag::Tok(id) => out.push(id),
                    }
                }
            }
            GgufKind::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Frag::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('▁');
                            }
                            for ch in text[a..b].chars() {
                                buf.push(if ch == ' ' { '▁' } else { ch });
                            }
                            spm::encode_text(c, &buf, &mut out);
                            prev_special = false;
                        }
                        Frag::Tok(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        if add_bos_eos && c.add_eos {
            out.extend(c.eos);
        }
        out
    }

    /// The bytes of a token; control/unknown tokens render only if `special`.
    pub fn piece(&self, id: u32, special: bool) -> Cow<'_, [u8]> {
        let c = &self.core;
        let Some(text) = c.tokens.get(id as usize) else {
            return Cow::Borrowed(&[]);
        };
        let attr = c.attrs[id as usize];
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL) != 0 && !special {
            return Cow::Borrowed(&[]);
        }
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
            return Cow::Borrowed(text.as_bytes());
        }
        if attr & ATTR_NORMAL != 0 {
            return match &self.kind {
                GgufKind::Bpe(_) => {
                    let mut v = Vec::with_capacity(text.len());
                    for ch in text.chars() {
                        match unicode::char_to_byte(ch) {
                            Some(b) => v.push(b),
                            // Not a byte-level symbol: keep the character itself.
                            None => v.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                    Cow::Owned(v)
                }
                GgufKind::Spm => Cow::Owned(text.replace('▁', " ").into_bytes()),
            };
        }
        if attr & ATTR_BYTE != 0 {
            if let Some(b) = c.byte_of(id) {
                return Cow::Owned(vec![b]);
            }
        }
        Cow::Borrowed(&[])
    }

    /// The chat template stored with the vocabulary.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// Any tokenizer patchbay can load.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// A GGUF vocabulary (`gpt2` byte-level BPE or `llama` SentencePiece).
    Gguf(Box<GgufTokenizer>),
    /// llama2.c's `tokenizer.bin`.
    Llama2c(Llama2cTokenizer),
    /// A HF `tokenizer.json`.
    HfJson(Box<HfTokenizer>),
}

impl Tokenizer {
    /// Builds a GGUF tokenizer from plain vocabulary data.
    pub fn from_vocab(v: Vocab) -> Result<Self, TokenizerError> {
        Ok(Tokenizer::Gguf(Box::new(GgufTokenizer::new(v)?)))
    }

    /// Reads the tokenizer of a GGUF file.
    pub fn from_gguf(path: &Path) -> Result<Self, TokenizerError> {
        Self::from_vocab(gguf_vocab::read_vocab(path)?)
    }

    /// The tokenizer of a GGUF file already parsed (for its network).
    pub fn from_parsed_gguf(gguf: &crate::formats::gguf::Gguf) -> Result<Self, TokenizerError> {
        Self::from_vocab(gguf_vocab::vocab_of(gguf)?)
    }

    /// Reads a llama2.c `tokenizer.bin`.
    pub fn from_llama2c(path: &Path) -> Result<Self, TokenizerError> {
        Ok(Tokenizer::Llama2c(Llama2cTokenizer::from_file(path)?))
    }

    /// Reads a HF `tokenizer.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self, TokenizerError> {
        Ok(Tokenizer::HfJson(Box::new(HfTokenizer::from_file(path)?)))
    }

    /// Reads GPT-2's `encoder.json` (token -> id) and `vocab.bpe` (merges).
    pub fn from_gpt2_files(encoder_json: &Path, vocab_bpe: &Path) -> Result<Self, TokenizerError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TokenizerError::Io {
                path: p.to_path_buf(),
                source: e,
            })
        };
        let enc: HashMap<String, u32> =
            serde_json::from_slice(&read(encoder_json)?).map_err(|e| TokenizerError::Format {
                path: encoder_json.to_path_buf(),
                msg: e.to_string(),
            })?;
        let n = enc.values().max().map_or(0, |&m| m as usize + 1);
        if n != enc.len() {
            return Err(TokenizerError::Format {
                path: encoder_json.to_path_buf(),
                msg: format!("ids are not 0..{} ({} entries)", n, enc.len()),
            });
        }
        let mut tokens = vec![String::new(); n];
        let mut token_types = vec![1; n];
        for (t, id) in enc {
            if t == "<|endoftext|>" {
                token_types[id as usize] = 3;
            }
            tokens[id as usize] = t;
        }
        let bpe = String::from_utf8(read(vocab_bpe)?).map_err(|e| TokenizerError::Format {
            path: vocab_bpe.to_path_buf(),
            msg: e.to_string(),
        })?;
        let merges = bpe
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .collect();
        let eot = tokens
            .iter()
            .position(|t| t == "<|endoftext|>")
            .map(|i| i as u32);
        Self::from_vocab(Vocab {
            tokens: tokens.into_iter().collect(),
            token_types,
            merges,
            model: "gpt2".into(),
            pre: Some("gpt2".into()),
            bos: eot,
            eos: eot,
            ..Vocab::default()
        })
    }

    /// Loads the tokenizer belonging to a model path: a `.gguf` file, a
    /// directory with `tokenizer.json`, a `tokenizer.json` itself, or a
    /// llama2.c checkpoint with `tokenizer.bin`/`tok*.bin` beside it (or the
    /// tokenizer file itself).
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let unsupported = || {
            TokenizerError::Unsupported(format!(
                "{}: no tokenizer found (expected a .gguf file, a directory with tokenizer.json (or GPT-2's encoder.json + vocab.bpe), or a llama2.c .bin with tokenizer.bin/tok*.bin beside it)",
                path.display()
            ))
        };
        if path.is_dir() {
            let j = path.join("tokenizer.json");
            let (e, b) = (path.join("encoder.json"), path.join("vocab.bpe"));
            return if j.is_file() {
                Self::from_hf_json(&j)
            } else if e.is_file() && b.is_file() {
                Self::from_gpt2_files(&e, &b)
            } else {
                Err(unsupported())
            };
        }
        let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("");
        if name.ends_with(".json") {
            return Self::from_hf_json(path);
        }
        let mut magic = [0u8; 4];
        if let Ok(mut f) = std::fs::File::open(path) {
            use std::io::Read;
            let _ = f.read_exact(&mut magic);
        }
        if &magic == b"GGUF" {
            return Self::from_gguf(path);
        }
        if name == "tokenizer.bin" || (name.starts_with("tok") && name.ends_with(".bin")) {
            return Self::from_llama2c(path);
        }
        // A llama2.c checkpoint: look for its tokenizer beside it.
        let dir = path.parent().unwrap_or(Path::new("."));
        let beside = dir.join("tokenizer.bin");
        if beside.is_file() {
            return Self::from_llama2c(&beside);
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut cands: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().and_then(|s| s.to_str()).unwrap_or("");
                    n.starts_with("tok") && n.ends_with(".bin")
                })
                .collect();
            cands.sort();
            if let Some(p) = cands.first() {
                return Self::from_llama2c(p);
            }
        }
        Err(unsupported())
    }

    /// Encodes `text`. `add_special` applies the model's BOS/EOS rule *and*
    /// parses special-token texts (such as `<|im_start|>`) as specials.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.encode_with(text, add_special, add_special)
    }

    /// Encodes with the BOS/EOS rule and special-token parsing chosen separately.
    pub fn encode_with(&self, text: &str, add_bos_eos: bool, parse_special: bool) -> Vec<u32> {
        match self {
            Tokenizer::Gguf(t) => t.encode_with(text, add_bos_eos, parse_special),
            Tokenizer::Llama2c(t) => t.encode(text, add_bos_eos, false),
            Tokenizer::HfJson(t) => t.encode(text, add_bos_eos),
        }
    }

    /// Decodes ids to text, leaving out control tokens (BOS, EOS, ...);
    /// invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, false)
    }

    /// Decodes ids to text, rendering control tokens as their text.
    pub fn decode_special(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, true)
    }

    fn decode_impl(&self, ids: &[u32], special: bool) -> String {
        match self {
            Tokenizer::HfJson(t) => t.decode(ids, !special),
            _ => {
                let mut bytes = Vec::new();
                let mut prev = None;
                for &id in ids {
                    bytes.extend_from_slice(&self.piece_after(prev, id, special));
                    prev = Some(id);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    /// The bytes of token `id` following token `prev` (llama2.c drops the space after BOS).
    fn piece_after(&self, prev: Option<u32>, id: u32, special: bool) -> Cow<'_, [u8]> {
        match self {
            Tokenizer::Gguf(t) => t.piece(id, special),
            Tokenizer::Llama2c(t) => {
                if !special && (id == LLAMA2C_BOS || id == LLAMA2C_EOS) {
                    return Cow::Borrowed(&[]);
                }
                Cow::Owned(t.piece_bytes(prev, id))
            }
            Tokenizer::HfJson(t) => Cow::Owned(t.decode(&[id], !special).into_bytes()),
        }
    }

    /// The bytes token `id` stands for (special tokens rendered as their text).
    /// A byte-fallback token is one byte, possibly part of a UTF-8 character.
    pub fn token_piece(&self, id: u32) -> Vec<u8> {
        self.piece_after(None, id, true).into_owned()
    }

    /// The raw vocabulary entry of a token (`Ġthe`, `▁the`, `<0x0A>`, `##ing`).
    pub fn token_text(&self, id: u32) -> Option<String> {
        match self {
            Tokenizer::Gguf(t) => t.core.tokens.get(id as usize).map(str::to_owned),
            Tokenizer::Llama2c(t) => t
                .raw_piece(id)
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            Tokenizer::HfJson(t) => t.id_to_token(id),
        }
    }

    /// The id of a vocabulary entry.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match self {
            Tokenizer::Gguf(t) => t.core.tokens.id(text),
            Tokenizer::Llama2c(t) => {
                (0..t.vocab_size() as u32).find(|&i| t.raw_piece(i) == Some(text.as_bytes()))
            }
            Tokenizer::HfJson(t) => t.token_to_id(text),
        }
    }

    /// The BOS id.
    pub fn bos(&self) -> Option<u32> {
        match self {
            Tokenizer::Gguf(t) => t.core.bos,
            Tokenizer::Llama2c(_) => Some(LLAMA2C_BOS),
            Tokenizer::HfJson(t) => t.bos(),
        }
    }

    /// The EOS id.
    pub fn eos(&self) -> Option<u32> {
        match self {
            Tokenizer::Gguf(t) => t.core.eos,
            Tokenizer::Llama2c(_) => Some(LLAMA2C_EOS),
            Tokenizer::HfJson(t) => t.eos(),
        }
    }

    /// Whether encoding with `add_special` prepends BOS.
    pub fn add_bos(&self) -> bool {
        match self {
            Tokenizer::Gguf(t) => t.core.add_bos,
            Tokenizer::Llama2c(_) | Tokenizer::HfJson(_) => true,
        }
    }

    /// Whether generating `id` ends the generation (EOS, end of turn, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        match self {
            Tokenizer::Gguf(t) => t.core.eog.contains(&id),
            // run.c stops at BOS, which delimits stories; EOS also ends them.
            Tokenizer::Llama2c(_) => id == LLAMA2C_BOS || id == LLAMA2C_EOS,
            Tokenizer::HfJson(t) => t.is_eog(id),
        }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Gguf(t) => t.core.tokens.len(),
            Tokenizer::Llama2c(t) => t.vocab_size(),
            Tokenizer::HfJson(t) => t.vocab_size(),
        }
    }

    /// The chat template of the model: the one stored with the vocabulary, else
    /// a built-in one recognised from the vocabulary (Gemma's turn markers).
    pub fn chat_template(&self) -> Option<&str> {
        match self {
            Tokenizer::Gguf(t) => t.chat_template().or_else(|| {
                let has = |s: &str| t.core.tokens.id(s).is_some();
                (has("<start_of_turn>") && has("<end_of_turn>")).then_some(chat::GEMMA_TEMPLATE)
            }),
            _ => None,
        }
    }

    /// A decoder that turns ids into text one at a time.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            pending: Vec::new(),
            prev: None,
            ids: Vec::new(),
            emitted: 0,
            special: false,
        }
    }
}

/// Decodes a stream of ids into text, holding back the bytes of a UTF-8
/// character split across tokens until it is complete.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    prev: Option<u32>,
    /// HF tokenizers decode whole sequences: ids so far and bytes emitted.
    ids: Vec<u32>,
    emitted: usize,
    special: bool,
}

impl StreamDecoder<'_> {
    /// Render control tokens as their text (off by default).
    pub fn with_special(mut self, special: bool) -> Self {
        self.special = special;
        self
    }

    /// Feeds one id; returns the text completed by it (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        if let Tokenizer::HfJson(t) = self.tok {
            self.ids.push(id);
            let all = t.decode(&self.ids, !self.special);
            // Hold back a trailing replacement char: it may be an incomplete character.
            let stable = all.strip_suffix('\u{FFFD}').unwrap_or(&all);
            if stable.len() > self.emitted && stable.is_char_boundary(self.emitted) {
                let out = stable[self.emitted..].to_string();
                self.emitted = stable.len();
                return out;
            }
            return String::new();
        }
        let piece = self.tok.piece_after(self.prev, id, self.special);
        self.prev = Some(id);
        self.pending.extend_from_slice(&piece);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + good]).unwrap_or(""),
                    );
                    match e.error_len() {
                        // Invalid bytes (not just incomplete): replace and go on.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            start += good + n;
                        }
                        None => {
                            start += good;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Ends the stream: any held-back incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
