//! Sentence embeddings from a BERT encoder: texts in, one L2-normalised vector
//! per text out (what sentence-transformers' `encode` returns for
//! all-MiniLM-L6-v2), and the [`cosine`] similarity of two of them.
//!
//! ```no_run
//! use patchbay_models::runners::embed::{cosine, Embedder, EmbedderOptions};
//! let mut e = Embedder::open("models/all-MiniLM-L6-v2", &EmbedderOptions::default()).unwrap();
//! let v = e.embed(&["A man is eating food.", "A man is eating a piece of bread."]).unwrap();
//! println!("{:.4}", cosine(&v[0], &v[1])); // 0.7553
//! ```

use std::path::Path;

use patchbay_combinators::{Capacity, Ctx, Layer, RowMap, Scratch};
use patchbay_primitives::{Act, Simd, Threads};

use crate::error::ModelError;
use crate::families::bert::{self, BertNet};
use crate::families::{self, BuildOptions, Kind, Model, ModelInfo};
use crate::tokenizer::Tokenizer;

/// Settings for opening an [`Embedder`].
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Texts per forward group ([`Embedder::embed`] hands the network this
    /// many token sequences at a time); at least 1.
    pub batch: usize,
    /// Model build options (`max_context` caps the tokens per text).
    pub build: BuildOptions,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            threads: 0,
            batch: 32,
            build: BuildOptions::default(),
        }
    }
}

/// A BERT sentence encoder ready to run: network, tokenizer, state and
/// buffers.
///
/// Texts are tokenized with the model's `tokenizer.json` (`[CLS]` and `[SEP]`
/// added) and cut to [`Embedder::max_tokens`]: sentence-transformers'
/// `max_seq_length` from `sentence_bert_config.json`, else the size of the
/// position table, keeping the final `[SEP]` as HF's truncation does.
pub struct Embedder {
    model: Model<BertNet>,
    tokenizer: Tokenizer,
    state: <BertNet as Layer>::State,
    /// Sequence slots and positions per slot `state` holds.
    state_size: (usize, usize),
    /// Where each row of the packed input belongs.
    map: RowMap,
    threads: Threads,
    scratch: Scratch,
    simd: Simd,
    batch: usize,
    input: Act,
    output: Act,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("info", &self.model.info)
            .field("threads", &self.threads.count())
            .field("batch", &self.batch)
            .finish()
    }
}

impl Embedder {
    /// Opens the encoder at `path` (a sentence-transformers directory, or
    /// anything [`families::open`] reads) with its tokenizer. A causal
    /// language model is a [`ModelError::Usage`] error saying to use the
    /// generating commands instead.
    pub fn open(path: impl AsRef<Path>, opts: &EmbedderOptions) -> Result<Embedder, ModelError> {
        let path = path.as_ref();
        let source = families::open(path)?;
        let family = families::family_of(&source)?;
        if family.kind() != Kind::Encoder {
            return Err(ModelError::Usage(format!(
                "{}: a '{}' model is a causal language model, not a sentence encoder; use generate, chat, logits or perplexity with it",
                path.display(),
                family.name()
            )));
        }
        let model = bert::build(&source, &opts.build)?;
        let tokenizer = Tokenizer::load(path)?;
        Embedder::new(model, tokenizer, opts)
    }

    /// An embedder over a built encoder and its tokenizer.
    pub fn new(
        model: Model<BertNet>,
        tokenizer: Tokenizer,
        opts: &EmbedderOptions,
    ) -> Result<Embedder, ModelError> {
        if opts.batch == 0 {
            return Err(ModelError::Usage(
                "the batch must hold at least one text".into(),
            ));
        }
        let max = model.info.max_context;
        let state = model.net.new_state(Capacity::new(max, 1));
        Ok(Embedder {
            state,
            state_size: (1, 1),
            map: RowMap::new(),
            tokenizer,
            threads: Threads::new(opts.threads),
            scratch: Scratch::new(),
            simd: Simd::detect(),
            batch: opts.batch,
            input: Act::with_capacity(max, 1),
            output: Act::default(),
            model,
        })
    }

    /// Facts about the model (`vocab` is the embedding width).
    pub fn info(&self) -> &ModelInfo {
        &self.model.info
    }

    /// Width of an embedding.
    pub fn dim(&self) -> usize {
        self.model.info.dim
    }

    /// Most tokens of a text the model sees (`[CLS]` and `[SEP]` included).
    pub fn max_tokens(&self) -> usize {
        self.model.info.max_context
    }

    /// Worker threads in use.
    pub fn threads(&self) -> usize {
        self.threads.count()
    }

    /// The network.
    pub fn net(&self) -> &BertNet {
        &self.model.net
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The token ids the model sees for `text`: `[CLS]` text `[SEP]`, cut to
    /// [`Embedder::max_tokens`] with the final `[SEP]` kept.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        tokenize_cut(&self.tokenizer, self.max_tokens(), text)
    }

    /// One L2-normalised embedding per text, in order; the texts go through
    /// the network in groups of the options' `batch`.
    pub fn embed<S: AsRef<str>>(&mut self, texts: &[S]) -> Result<Vec<Vec<f32>>, ModelError> {
        // Tokenized on every thread (texts are independent): serially, the
        // other threads would wait through it.
        let texts: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); texts.len()];
        let (tokenizer, max) = (&self.tokenizer, self.max_tokens());
        let per_task = texts.len().div_ceil(self.threads.count() * 4).max(1);
        self.threads.for_each_chunk(&mut seqs, per_task, |c, out| {
            for (ids, text) in out.iter_mut().zip(&texts[c * per_task..]) {
                *ids = tokenize_cut(tokenizer, max, text);
            }
        });
        let mut out = Vec::with_capacity(seqs.len());
        for group in seqs.chunks(self.batch) {
            out.extend(self.embed_tokens(group)?);
        }
        Ok(out)
    }

    /// The forward pass of a group of token sequences: one embedding per
    /// sequence. The sequences are packed one after another into one forward
    /// pass, each in its own attention slot (so no padding is computed and
    /// none can leak into the mean), and pooled per sequence.
    fn embed_tokens(&mut self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let max = self.max_tokens();
        for ids in seqs {
            if ids.is_empty() {
                return Err(ModelError::Usage(
                    "an empty token sequence has no embedding".into(),
                ));
            }
            if ids.len() > max {
                return Err(ModelError::ContextFull {
                    needed: ids.len(),
                    max_context: max,
                });
            }
        }
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        // Attention slots sized for the largest group so far.
        let longest = seqs.iter().map(Vec::len).max().unwrap_or(1);
        let (slots, context) = self.state_size;
        if seqs.len() > slots || longest > context {
            let size = (slots.max(seqs.len()), context.max(longest));
            let cap = Capacity::new(longest, size.1).with_seqs(size.0);
            self.state = self.model.net.new_state(cap);
            self.state_size = size;
        }
        // Bidirectional attention keeps nothing between calls; the reset
        // forgets the last group's lengths all the same.
        self.model.net.reset(&mut self.state);
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        self.map = RowMap::packed(&lens);
        self.input.reshape(self.map.len(), 1);
        for (x, &id) in self
            .input
            .as_mut_slice()
            .iter_mut()
            .zip(seqs.iter().flatten())
        {
            *x = f32::from_bits(id); // a token lane: the id's bits (Act::from_tokens)
        }
        let ctx = Ctx::new(self.simd, &self.threads, &self.scratch).with_map(&self.map);
        self.model
            .net
            .forward(&self.input, &mut self.output, &mut self.state, &ctx)?;
        debug_assert_eq!(self.output.rows(), seqs.len());
        Ok((0..seqs.len())
            .map(|i| self.output.row(i).to_vec())
            .collect())
    }
}

/// `text`'s ids, `[CLS]` text `[SEP]`, cut to `max` with the final `[SEP]` kept.
fn tokenize_cut(tokenizer: &Tokenizer, max: usize, text: &str) -> Vec<u32> {
    let mut ids = tokenizer.encode(text, true);
    if ids.len() > max {
        let last = ids[ids.len() - 1];
        ids.truncate(max);
        if max > 1 {
            ids[max - 1] = last;
        }
    }
    ids
}

/// Cosine similarity of two vectors (accumulated in f64; 0 when either is
/// zero). For the unit vectors [`Embedder::embed`] returns it is their dot
/// product.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (ab / (aa.sqrt() * bb.sqrt())) as f32
}

/// The cosine of every pair of `vectors`: row `i`, column `j` is
/// `cosine(vectors[i], vectors[j])`.
pub fn cosine_matrix(vectors: &[Vec<f32>]) -> Vec<Vec<f32>> {
    vectors
        .iter()
        .map(|a| vectors.iter().map(|b| cosine(a, b)).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!(cosine(&[1.0, 0.0], &[0.0, 2.0]).abs() < 1e-7);
        assert!((cosine(&[1.0, 1.0], &[-2.0, -2.0]) + 1.0).abs() < 1e-7);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        let m = cosine_matrix(&[vec![1.0, 0.0], vec![0.6, 0.8]]);
        assert!((m[0][1] - 0.6).abs() < 1e-7 && (m[1][0] - 0.6).abs() < 1e-7);
    }
}
