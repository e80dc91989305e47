//! A built model ready to run: network, tokenizer, KV cache and sampler, with
//! prompt processing, autoregressive generation (a [`Loop`] of the network and
//! the sampler), and per-position logits for scoring.
//!
//! A [`Session`] is generic over the network: it uses only the [`Layer`]
//! interface (token ids in, one row of logits per row out), so every family —
//! and a user's own architecture — runs through the same driver, monomorphised.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay_blocks::{Sampler, SamplerConfig, SamplerState};
use patchbay_combinators::{
    Capacity, Ctx, KvType, Layer, LayerError, Loop, LoopState, Node, RowMap, Rows, Scratch, Series,
    SeriesState, Step,
};
use patchbay_primitives::{Act, Simd, Threads};

use crate::error::ModelError;
use crate::families::{self, BuildOptions, CausalLmVisitor, Model, ModelInfo};
use crate::formats::source::ModelSource;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// The generation pipeline: the network (its logits checked) and the
/// sampler in a loop.
pub type Decoder<N> = Loop<Series<Finite<N>, Sampler>>;

/// A network whose output rows (the logits) are checked for NaN and
/// infinity after each forward pass: one pass over the rows it returns,
/// which in generation is one row per step. A bad row fails the pass with
/// [`LayerError::NonFinite`], before the sampler sees it.
pub struct Finite<N>(pub N);

impl<N: Layer> Layer for Finite<N> {
    type State = N::State;
    fn in_dim(&self) -> usize {
        self.0.in_dim()
    }
    fn out_dim(&self) -> usize {
        self.0.out_dim()
    }
    fn new_state(&self, cap: Capacity) -> Self::State {
        self.0.new_state(cap)
    }
    fn reset(&self, state: &mut Self::State) {
        self.0.reset(state)
    }
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        state: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        self.0.forward(x, y, state, ctx)?;
        if first_non_finite(y).is_some() {
            return Err(LayerError::NonFinite { layer: "logits" });
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        self.0.describe()
    }
}

/// The first row of `a` holding a NaN or an infinity, and which it is.
pub fn first_non_finite(a: &Act) -> Option<(usize, &'static str)> {
    let cols = a.cols().max(1);
    let i = a.as_slice().iter().position(|v| !v.is_finite())?;
    let what = if a.as_slice()[i].is_nan() {
        "NaN"
    } else {
        "infinite"
    };
    Some((i / cols, what))
}

/// Fails with [`ModelError::NonFinite`] if `a` (rows at positions `pos0..`)
/// holds a NaN or an infinity; `replay` gives what a diagnostic pass can
/// rerun from position 0 (empty when the sequence did not start there).
fn check_logits(a: &Act, pos0: usize, replay: impl FnOnce() -> Vec<u32>) -> Result<(), ModelError> {
    match first_non_finite(a) {
        None => Ok(()),
        Some((row, what)) => Err(ModelError::NonFinite {
            what,
            position: pos0 + row,
            replay: replay(),
            diagnosis: String::new(),
        }),
    }
}

/// Settings for opening a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Longest sequence (prompt + generated) to size the KV cache for;
    /// capped by the model's context length.
    pub max_context: usize,
    /// Most prompt tokens processed in one batch.
    pub batch: usize,
    /// How the KV cache stores keys.
    pub key_type: KvType,
    /// How the KV cache stores values.
    pub value_type: KvType,
    /// Sampling settings.
    pub sampler: SamplerConfig,
    /// Model build options.
    pub build: BuildOptions,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: 0,
            max_context: 4096,
            batch: 512,
            key_type: KvType::F32,
            value_type: KvType::F32,
            sampler: SamplerConfig::default(),
            build: BuildOptions::default(),
        }
    }
}

/// Timings of one generation, for the summary line.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenStats {
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Time to process them (up to the first sampled token).
    pub prompt_time: Duration,
    /// Tokens generated.
    pub gen_tokens: usize,
    /// Time spent generating after the first token.
    pub gen_time: Duration,
    /// Why generation stopped.
    pub stop: StopReason,
}

impl GenStats {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    /// Generated tokens per second (excluding the first, which the prompt pass yields).
    pub fn gen_tps(&self) -> f64 {
        self.gen_tokens.saturating_sub(1) as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }
    /// Time from the start of the prompt to the first sampled token, if one
    /// was sampled (the prompt is not run when no token is asked for).
    pub fn time_to_first_token(&self) -> Option<Duration> {
        (self.gen_tokens > 0 || self.stop == StopReason::EndOfSequence).then_some(self.prompt_time)
    }
}

/// Why a sequence stopped generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfSequence,
    /// The requested number of tokens was reached.
    #[default]
    MaxTokens,
    /// The context (KV cache) was full.
    ContextFull,
    /// The caller's callback asked to stop.
    Caller,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::EndOfSequence => "end of sequence",
            StopReason::MaxTokens => "token limit reached",
            StopReason::ContextFull => "context full",
            StopReason::Caller => "stopped by the caller",
        })
    }
}

/// One prompt's continuation from [`Session::generate_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The generated tokens (an end-of-generation token is not included).
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub stop: StopReason,
}

/// A network with its tokenizer and one sequence's state.
pub struct Session<N: Layer> {
    /// The tokenizer, shared: a caller that streams text while the session
    /// generates holds a second handle, not a copy (a 262k vocabulary is tens
    /// of MB).
    pub tokenizer: Arc<Tokenizer>,
    /// Facts about the model.
    pub info: ModelInfo,
    decoder: Decoder<N>,
    state: LoopState<SeriesState<N::State, SamplerState>>,
    threads: Threads,
    scratch: Scratch,
    simd: Simd,
    pos: usize,
    max_context: usize,
    batch: usize,
    ids: Act,
    logits: Act,
    /// The last sampled token, not yet fed to the network.
    pending: Option<u32>,
    /// Time it took to open the files and build the network.
    pub load_time: Duration,
}

/// A job to run on a session over a network of any family: `run` is
/// monomorphised for each network type.
pub trait SessionJob {
    /// What the job returns.
    type Output;
    /// Runs the job.
    fn run<N: Layer>(self, session: Session<N>) -> Self::Output;
}

/// Opens a model file (GGUF, safetensors directory or llama2.c `.bin`), builds
/// its family's network and runs `job` on a session over it.
pub fn with_session<J: SessionJob>(
    path: &Path,
    opts: &SessionOptions,
    job: J,
) -> Result<J::Output, ModelError> {
    struct Open<'a, 's, J> {
        job: J,
        tokenizer: std::thread::ScopedJoinHandle<'s, Result<Tokenizer, TokenizerError>>,
        source: &'a ModelSource,
        opts: &'a SessionOptions,
        t0: Instant,
    }
    impl<J: SessionJob> CausalLmVisitor for Open<'_, '_, J> {
        type Output = Result<J::Output, ModelError>;
        fn visit<N: Layer>(self, model: Model<N>) -> Self::Output {
            // While the tokenizer (the longer job) is still being built, map
            // the weights' pages: the first forward pass then runs as fast as
            // the next. (On a third thread from the file's opening, this
            // contended with building the network: loading ended 2 ms later.)
            self.source.prefault();
            let tokenizer = match self.tokenizer.join() {
                Ok(t) => t?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            let mut session = Session::new(model, tokenizer, self.opts)?;
            session.load_time = self.t0.elapsed();
            Ok(self.job.run(session))
        }
    }
    let t0 = Instant::now();
    // The tokenizer (a vocabulary of 10^5 texts to index) is built on a second
    // thread while this one builds the network: both are needed before the
    // first token, and neither needs the other. A GGUF file's tokenizer comes
    // from the one parse of the file.
    let source = families::open(path)?;
    std::thread::scope(|scope| {
        let tokenizer = std::thread::Builder::new()
            .name("tokenizer".into())
            .spawn_scoped(scope, || match source.gguf() {
                Some(gguf) => Tokenizer::from_parsed_gguf(gguf),
                None => Tokenizer::load(path),
            })
            .map_err(|e| ModelError::io(path, e))?;
        let build = BuildOptions {
            max_context: opts.max_context,
            ..opts.build.clone()
        };
        let open = Open {
            job,
            tokenizer,
            source: &source,
            opts,
            t0,
        };
        families::with_causal_lm(&source, &build, open)?
    })
}

impl<N: Layer> Session<N> {
    /// A session over a built model.
    pub fn new(
        model: Model<N>,
        tokenizer: Tokenizer,
        opts: &SessionOptions,
    ) -> Result<Session<N>, ModelError> {
        let Model { info, net } = model;
        let max_context = opts.max_context.min(info.max_context).max(1);
        let sampler = Sampler::new(info.vocab, opts.sampler)
            .map_err(|e| ModelError::Usage(format!("sampler: {e}")))?;
        // More rows per call than the context holds would only size scratch
        // for rows that can never come.
        let batch = opts.batch.clamp(1, max_context);
        let decoder = Loop::autoregressive(Series::new(Finite(net), sampler), usize::MAX);
        let state = decoder
            .new_state(Capacity::new(batch, max_context).with_kv(opts.key_type, opts.value_type));
        Ok(Session {
            tokenizer: Arc::new(tokenizer),
            info,
            decoder,
            state,
            threads: Threads::new(opts.threads),
            scratch: Scratch::new(),
            simd: Simd::detect(),
            pos: 0,
            max_context,
            batch,
            ids: Act::with_capacity(batch, 1),
            logits: Act::default(),
            pending: None,
            load_time: Duration::ZERO,
        })
    }

    /// The network.
    pub fn net(&self) -> &N {
        &self.decoder.body.first.0
    }

    /// Positions used so far in the sequence.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The KV cache length.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Worker threads in use.
    pub fn threads(&self) -> usize {
        self.threads.count()
    }

    /// Forgets the sequence (KV cache, sampler history).
    pub fn reset(&mut self) {
        self.decoder.reset(&mut self.state);
        self.pos = 0;
        self.pending = None;
    }

    fn check_room(&self, n: usize) -> Result<(), ModelError> {
        if self.pos + n > self.max_context {
            return Err(ModelError::ContextFull {
                needed: self.pos + n,
                max_context: self.max_context,
            });
        }
        Ok(())
    }

    fn load_ids(&mut self, tokens: &[u32]) {
        self.ids.load_tokens(tokens);
    }

    /// Runs `tokens` through the network at the current position and returns
    /// the logits of every position (`tokens.len() x vocab`), in batches.
    pub fn logits(&mut self, tokens: &[u32]) -> Result<&Act, ModelError> {
        self.logits_tail(tokens, tokens.len())
    }

    /// [`Session::logits`] for the last `keep` positions only (all of them if
    /// there are fewer): a `keep x vocab` result, row `i` that of position
    /// `tokens.len() - keep + i`, with the bits it has among all the rows.
    /// Every token still goes through the network (and the KV cache); only
    /// the head skips the other rows, which for a large vocabulary is most of
    /// the work and memory of scoring a text (perplexity scores the second
    /// half of each chunk, a few rows at a time: [`Session::each_logits_tail`]).
    pub fn logits_tail(&mut self, tokens: &[u32], keep: usize) -> Result<&Act, ModelError> {
        self.check_room(tokens.len())?;
        let vocab = self.info.vocab;
        let keep = keep.min(tokens.len());
        let skip = tokens.len() - keep;
        let start = self.pos;
        let mut all = std::mem::take(&mut self.logits);
        all.reshape(keep, vocab);
        // One batch: the head writes straight into the result, so the logits
        // are held once (for a large vocabulary, most of the memory).
        let single = tokens.len() <= self.batch;
        let mut part = Act::default();
        for (c, chunk) in tokens.chunks(self.batch).enumerate() {
            let c0 = c * self.batch;
            // Rows of this chunk at or after position `skip`.
            let wanted = (c0 + chunk.len()).saturating_sub(skip.max(c0));
            let out = if single { &mut all } else { &mut part };
            let from = self.forward_tail(chunk, wanted, out, (start, tokens))?;
            if single {
                // Only a head that ignored `Rows` leaves rows to drop.
                if from.start > 0 {
                    all.as_mut_slice().copy_within(from, 0);
                }
                all.reshape(wanted, vocab);
            } else if wanted > 0 {
                let at = (skip.max(c0) - skip) * vocab;
                all.as_mut_slice()[at..at + wanted * vocab].copy_from_slice(&part.as_slice()[from]);
            }
        }
        self.logits = all;
        Ok(&self.logits)
    }

    /// [`Session::logits_tail`] handed out at most `rows` positions at a
    /// time, so that no more than `rows x vocab` logits are held at once:
    /// `f(i, logits)` gets the kept positions `i..i + n` (`logits` is `n`
    /// whole rows of `vocab`, in order), with the bits [`Session::logits`]
    /// gives them. The positions before the kept ones go through in batches
    /// as usual; the kept ones in batches of at most `rows`.
    pub fn each_logits_tail(
        &mut self,
        tokens: &[u32],
        keep: usize,
        rows: usize,
        mut f: impl FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        self.check_room(tokens.len())?;
        let keep = keep.min(tokens.len());
        let (before, kept) = tokens.split_at(tokens.len() - keep);
        let start = self.pos;
        let mut part = Act::default();
        for chunk in before.chunks(self.batch) {
            self.forward_tail(chunk, 0, &mut part, (start, tokens))?;
        }
        let mut done = 0;
        for chunk in kept.chunks(rows.clamp(1, self.batch)) {
            let from = self.forward_tail(chunk, chunk.len(), &mut part, (start, tokens))?;
            f(done, &part.as_slice()[from]);
            done += chunk.len();
        }
        Ok(())
    }

    /// Runs `chunk` (at most a batch) at the current position into `out`,
    /// with the head asked for its last `wanted` rows, and moves past it:
    /// the range of `out` those rows are in. `(start, tokens)`: where the
    /// caller's tokens began, and all of them (to replay a non-finite result
    /// from the start).
    fn forward_tail(
        &mut self,
        chunk: &[u32],
        wanted: usize,
        out: &mut Act,
        (start, tokens): (usize, &[u32]),
    ) -> Result<std::ops::Range<usize>, ModelError> {
        let vocab = self.info.vocab;
        self.load_ids(chunk);
        // `Tail(chunk.len())` is every row.
        let ctx = Ctx::new(self.simd, &self.threads, &self.scratch)
            .at(self.pos)
            .with_rows(Rows::Tail(wanted));
        let net = &self.decoder.body.first.0;
        net.forward(&self.ids, out, &mut self.state.body_mut().first, &ctx)?;
        let replay = || {
            if start == 0 {
                tokens.to_vec()
            } else {
                Vec::new()
            }
        };
        // A head that ignores `Rows` returns every row: the wanted ones
        // are its last.
        let got = out.rows().min(chunk.len());
        check_logits(out, self.pos + chunk.len() - got, replay)?;
        if got < wanted {
            let e = patchbay_primitives::ShapeError::Len {
                what: "rows of logits the network returned",
                expected: wanted,
                found: got,
            };
            return Err(LayerError::Shape(e).into());
        }
        self.pos += chunk.len();
        Ok((got - wanted) * vocab..got * vocab)
    }

    /// Processes `prompt` and generates up to `max_tokens` tokens, calling
    /// `on_token` with each; stops at an end-of-generation token (not passed to
    /// `on_token`), when `on_token` returns `Step::Stop`, or when the context is
    /// full.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        on_token: impl FnMut(u32) -> Step,
    ) -> Result<GenStats, ModelError> {
        self.generate_inner(prompt, max_tokens, true, on_token)
    }

    /// Like [`Session::generate`] but end-of-generation tokens are passed to
    /// `on_token` too (generation still stops after one): what reference
    /// greedy continuations contain.
    pub fn generate_raw(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        on_token: impl FnMut(u32) -> Step,
    ) -> Result<GenStats, ModelError> {
        self.generate_inner(prompt, max_tokens, false, on_token)
    }

    fn generate_inner(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        hide_eog: bool,
        mut on_token: impl FnMut(u32) -> Step,
    ) -> Result<GenStats, ModelError> {
        // A token sampled last time but never fed goes first.
        let joined: Vec<u32>;
        let prompt = match self.pending.take() {
            Some(t) => {
                joined = std::iter::once(t).chain(prompt.iter().copied()).collect();
                &joined[..]
            }
            None => prompt,
        };
        let mut stats = GenStats {
            prompt_tokens: prompt.len(),
            ..GenStats::default()
        };
        if prompt.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        if max_tokens == 0 {
            return Ok(stats);
        }
        self.check_room(prompt.len())?;
        let start = self.pos;
        let t0 = Instant::now();
        // The sampler's repetition window sees the prompt too.
        for &t in prompt {
            self.state.body_mut().second.observe(t);
        }
        // All but the last batch go straight through the network.
        let (head, tail) = prompt.split_at(prompt.len() - ((prompt.len() - 1) % self.batch + 1));
        for chunk in head.chunks(self.batch) {
            self.load_ids(chunk);
            let ctx = Ctx::new(self.simd, &self.threads, &self.scratch)
                .at(self.pos)
                .with_rows(Rows::Last);
            let mut out = std::mem::take(&mut self.logits);
            self.decoder.body.first.0.forward(
                &self.ids,
                &mut out,
                &mut self.state.body_mut().first,
                &ctx,
            )?;
            // The last row of the chunk (the pass returns only that one).
            let replay = || {
                if start == 0 {
                    prompt.to_vec()
                } else {
                    Vec::new()
                }
            };
            check_logits(&out, self.pos + chunk.len() - 1, replay)?;
            self.logits = out;
            self.pos += chunk.len();
        }
        self.load_ids(tail);
        // Each step after the first feeds one token back; the last is never fed.
        let room = self.max_context - self.pos - tail.len() + 1;
        let steps = max_tokens.min(room);
        let mut t_first = None;
        let tokenizer = &self.tokenizer;
        let ctx = Ctx::new(self.simd, &self.threads, &self.scratch).at(self.pos);
        let ids = std::mem::take(&mut self.ids);
        let mut last = None;
        let mut sampled = 0;
        let mut stop = None;
        let res = self
            .decoder
            .run(&ids, &mut self.state, &ctx, steps, |_, row| {
                let t = row[0].to_bits();
                last = Some(t);
                sampled += 1;
                if t_first.is_none() {
                    t_first = Some(Instant::now());
                }
                let eog = tokenizer.is_eog(t);
                if eog && hide_eog {
                    stop = Some(StopReason::EndOfSequence);
                    return Step::Stop;
                }
                stats.gen_tokens += 1;
                match on_token(t) {
                    _ if eog => {
                        stop = Some(StopReason::EndOfSequence);
                        Step::Stop
                    }
                    Step::Stop => {
                        stop = Some(StopReason::Caller);
                        Step::Stop
                    }
                    step => step,
                }
            });
        stats.stop = stop.unwrap_or(if sampled >= max_tokens {
            StopReason::MaxTokens
        } else {
            StopReason::ContextFull
        });
        self.ids = ids;
        let (_, pos) = res.map_err(|e| match e {
            LayerError::NonFinite { layer: "logits" } => {
                let position = self.pos + tail.len() - 1 + sampled;
                ModelError::NonFinite {
                    what: "non-finite",
                    position,
                    replay: if start == 0 && sampled == 0 {
                        prompt.to_vec()
                    } else {
                        Vec::new()
                    },
                    diagnosis: String::new(),
                }
            }
            e => e.into(),
        })?;
        self.pos = pos;
        self.pending = last;
        let t_first = t_first.unwrap_or_else(Instant::now);
        stats.prompt_time = t_first - t0;
        stats.gen_time = t_first.elapsed();
        Ok(stats)
    }

    /// The logits of every position of each sequence (`len x vocab` each),
    /// computed for all of them together: the sequences are packed into
    /// forward passes of up to `batch` rows, each in its own KV-cache slot, so
    /// attention never crosses from one sequence to another. Every sequence
    /// starts at position 0; the session's own sequence is left untouched.
    pub fn logits_batch(&mut self, seqs: &[Vec<u32>]) -> Result<Vec<Act>, ModelError> {
        let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if longest > self.max_context {
            return Err(ModelError::ContextFull {
                needed: longest,
                max_context: self.max_context,
            });
        }
        let vocab = self.info.vocab;
        let net = &self.decoder.body.first.0;
        let cap = Capacity::new(self.batch, longest).with_seqs(seqs.len());
        let mut state = net.new_state(cap);
        let mut outs: Vec<Act> = seqs
            .iter()
            .map(|s| {
                let mut a = Act::default();
                a.reshape(s.len(), vocab);
                a
            })
            .collect();
        let rows: Vec<(usize, usize)> = seqs
            .iter()
            .enumerate()
            .flat_map(|(s, t)| (0..t.len()).map(move |p| (s, p)))
            .collect();
        let (mut map, mut out) = (RowMap::new(), Act::default());
        for chunk in rows.chunks(self.batch) {
            map.clear();
            self.ids.reshape(chunk.len(), 1);
            for (j, &(s, p)) in chunk.iter().enumerate() {
                map.push(s, p);
                self.ids.set_token(j, seqs[s][p]);
            }
            let ctx = Ctx::new(self.simd, &self.threads, &self.scratch).with_map(&map);
            net.forward(&self.ids, &mut out, &mut state, &ctx)?;
            if let Some((j, what)) = first_non_finite(&out) {
                let (s, p) = chunk[j];
                return Err(ModelError::NonFinite {
                    what,
                    position: p,
                    replay: seqs[s][..=p].to_vec(),
                    diagnosis: String::new(),
                });
            }
            for (j, &(s, p)) in chunk.iter().enumerate() {
                outs[s].row_mut(p).copy_from_slice(out.row(j));
            }
        }
        Ok(outs)
    }

    /// Generates a continuation of each prompt, all together: the prompts go
    /// through the network packed in forward passes of up to `batch` rows, then
    /// every step decodes one token for each unfinished sequence in one
    /// forward pass, each sequence in its own KV-cache slot and with its own
    /// sampler state (seeded alike, so a prompt gets the continuation it would
    /// get alone). `on_token(index, token)` sees each token as it comes;
    /// returning `Step::Stop` ends that sequence. A sequence stops at an
    /// end-of-generation token, after `max_tokens`, or when the context is
    /// full. The session's own sequence is left untouched.
    ///
    /// ```no_run
    /// use patchbay_combinators::Step;
    /// use patchbay_models::runners::session::{with_session, Session, SessionJob, SessionOptions};
    /// use patchbay_combinators::Layer;
    /// struct Job;
    /// impl SessionJob for Job {
    ///     type Output = ();
    ///     fn run<N: Layer>(self, mut s: Session<N>) {
    ///         let prompts: Vec<Vec<u32>> = ["Once upon a time", "The sun"]
    ///             .iter()
    ///             .map(|p| s.tokenizer.encode(p, true))
    ///             .collect();
    ///         let done = s.generate_batch(&prompts, 16, |_, _| Step::Continue).unwrap();
    ///         for (i, c) in done.iter().enumerate() {
    ///             println!("{i}: {} ({})", s.tokenizer.decode(&c.tokens), c.stop);
    ///         }
    ///     }
    /// }
    /// with_session("models/stories260K/stories260K.bin".as_ref(), &SessionOptions::default(), Job).unwrap();
    /// ```
    pub fn generate_batch(
        &mut self,
        prompts: &[Vec<u32>],
        max_tokens: usize,
        mut on_token: impl FnMut(usize, u32) -> Step,
    ) -> Result<Vec<Completion>, ModelError> {
        if prompts.iter().any(Vec::is_empty) {
            return Err(ModelError::EmptyPrompt);
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if longest > self.max_context {
            return Err(ModelError::ContextFull {
                needed: longest,
                max_context: self.max_context,
            });
        }
        let n = prompts.len();
        let mut done: Vec<Completion> = (0..n)
            .map(|_| Completion {
                tokens: Vec::new(),
                stop: StopReason::MaxTokens,
            })
            .collect();
        if n == 0 || max_tokens == 0 {
            return Ok(done);
        }
        let ctx_len = longest.saturating_add(max_tokens).min(self.max_context);
        let net = &self.decoder.body.first.0;
        let sampler = &self.decoder.body.second;
        let mut state = net.new_state(Capacity::new(self.batch.max(n), ctx_len).with_seqs(n));
        let mut samplers: Vec<SamplerState> = prompts
            .iter()
            .map(|p| {
                let mut st = sampler.new_state(Capacity::new(1, ctx_len));
                p.iter().for_each(|&t| st.observe(t));
                st
            })
            .collect();
        let ctx0 = Ctx::new(self.simd, &self.threads, &self.scratch);
        let sample = |s: usize, row: &[f32], samplers: &mut [SamplerState]| {
            let t = sampler.sample(row, &mut samplers[s], &ctx0);
            samplers[s].observe(t);
            t
        };
        // The prompts, packed; each sequence's last row yields its first token.
        let rows: Vec<(usize, usize)> = prompts
            .iter()
            .enumerate()
            .flat_map(|(s, t)| (0..t.len()).map(move |p| (s, p)))
            .collect();
        let (mut map, mut out) = (RowMap::new(), Act::default());
        let mut pending: Vec<Option<u32>> = vec![None; n];
        for chunk in rows.chunks(self.batch) {
            map.clear();
            self.ids.reshape(chunk.len(), 1);
            for (j, &(s, p)) in chunk.iter().enumerate() {
                map.push(s, p);
                self.ids.set_token(j, prompts[s][p]);
            }
            let ctx = ctx0.with_map(&map).with_rows(Rows::Last);
            net.forward(&self.ids, &mut out, &mut state, &ctx)?;
            if let Some((o, what)) = first_non_finite(&out) {
                let j = (0..chunk.len())
                    .filter(|&j| map.is_last_of_sequence(j))
                    .nth(o)
                    .unwrap_or(0);
                let (s, p) = chunk[j];
                return Err(ModelError::NonFinite {
                    what,
                    position: p,
                    replay: prompts[s][..=p].to_vec(),
                    diagnosis: String::new(),
                });
            }
            let lasts = (0..chunk.len()).filter(|&j| map.is_last_of_sequence(j));
            for (o, j) in lasts.enumerate() {
                let (s, p) = chunk[j];
                if p + 1 == prompts[s].len() {
                    pending[s] = Some(sample(s, out.row(o), &mut samplers));
                }
            }
        }
        // Then one row per unfinished sequence per step.
        let mut lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let mut active = Vec::with_capacity(n);
        loop {
            active.clear();
            for s in 0..n {
                let Some(t) = pending[s].take() else { continue };
                let c = &mut done[s];
                if self.tokenizer.is_eog(t) {
                    c.stop = StopReason::EndOfSequence;
                    continue;
                }
                c.tokens.push(t);
                if on_token(s, t) == Step::Stop {
                    c.stop = StopReason::Caller;
                } else if c.tokens.len() >= max_tokens {
                    c.stop = StopReason::MaxTokens;
                } else if lens[s] >= ctx_len {
                    c.stop = StopReason::ContextFull;
                } else {
                    active.push((s, t));
                }
            }
            if active.is_empty() {
                break;
            }
            map.clear();
            self.ids.reshape(active.len(), 1);
            for (j, &(s, t)) in active.iter().enumerate() {
                map.push(s, lens[s]);
                self.ids.set_token(j, t);
            }
            let ctx = ctx0.with_map(&map).with_rows(Rows::Last);
            net.forward(&self.ids, &mut out, &mut state, &ctx)?;
            if let Some((j, what)) = first_non_finite(&out) {
                let (s, _) = active[j];
                return Err(ModelError::NonFinite {
                    what,
                    position: lens[s],
                    replay: Vec::new(),
                    diagnosis: String::new(),
                });
            }
            for (j, &(s, _)) in active.iter().enumerate() {
                lens[s] += 1;
                pending[s] = Some(sample(s, out.row(j), &mut samplers));
            }
        }
        Ok(done)
    }
}
