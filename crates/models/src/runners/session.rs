//! A built model ready to run: network, tokenizer, KV cache and sampler, with
//! prompt processing, autoregressive generation (a [`Loop`] of the network and
//! the sampler), and per-position logits for scoring.
//!
//! A [`Session`] is generic over the network: it uses only the [`Layer`]
//! interface (token ids in, one row of logits per row out), so every family —
//! and a user's own architecture — runs through the same driver, monomorphised.

use std::path::Path;
use std::time::{Duration, Instant};

use patchbay_blocks::{Sampler, SamplerConfig, SamplerState};
use patchbay_combinators::{
    Capacity, Ctx, Layer, Loop, LoopState, Rows, Scratch, Series, SeriesState, Step,
};
use patchbay_primitives::{Act, Simd, Threads};

use crate::error::ModelError;
use crate::families::{self, BuildOptions, CausalLmVisitor, Model, ModelInfo};
use crate::tokenizer::Tokenizer;

/// The generation pipeline: the network and the sampler in a loop.
pub type Decoder<N> = Loop<Series<N, Sampler>>;

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
}

/// A network with its tokenizer and one sequence's state.
pub struct Session<N: Layer> {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
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
    struct Open<'a, J> {
        job: J,
        tokenizer: Tokenizer,
        opts: &'a SessionOptions,
        t0: Instant,
    }
    impl<J: SessionJob> CausalLmVisitor for Open<'_, J> {
        type Output = Result<J::Output, ModelError>;
        fn visit<N: Layer>(self, model: Model<N>) -> Self::Output {
            let mut session = Session::new(model, self.tokenizer, self.opts)?;
            session.load_time = self.t0.elapsed();
            Ok(self.job.run(session))
        }
    }
    let t0 = Instant::now();
    let source = families::open(path)?;
    let tokenizer = Tokenizer::load(path)?;
    let build = BuildOptions {
        max_context: opts.max_context,
        ..opts.build.clone()
    };
    let open = Open {
        job,
        tokenizer,
        opts,
        t0,
    };
    families::with_causal_lm(&source, &build, open)?
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
        let batch = opts.batch.max(1);
        let decoder = Loop::autoregressive(Series::new(net, sampler), usize::MAX);
        let state = decoder.new_state(Capacity::new(batch, max_context));
        Ok(Session {
            tokenizer,
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
        &self.decoder.body.first
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
        self.ids.reshape(tokens.len(), 1);
        for (d, &t) in self.ids.as_mut_slice().iter_mut().zip(tokens) {
            *d = t as f32;
        }
    }

    /// Runs `tokens` through the network at the current position and returns
    /// the logits of every position (`tokens.len() x vocab`), in batches.
    pub fn logits(&mut self, tokens: &[u32]) -> Result<&Act, ModelError> {
        self.check_room(tokens.len())?;
        let vocab = self.info.vocab;
        let mut all = std::mem::take(&mut self.logits);
        all.reshape(tokens.len(), vocab);
        let mut out = Act::default();
        for (c, chunk) in tokens.chunks(self.batch).enumerate() {
            self.load_ids(chunk);
            let ctx = Ctx::new(self.simd, &self.threads, &self.scratch).at(self.pos);
            let net = &self.decoder.body.first;
            net.forward(&self.ids, &mut out, &mut self.state.body_mut().first, &ctx)?;
            let start = c * self.batch * vocab;
            all.as_mut_slice()[start..start + chunk.len() * vocab].copy_from_slice(out.as_slice());
            self.pos += chunk.len();
        }
        self.logits = all;
        Ok(&self.logits)
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
            self.decoder.body.first.forward(
                &self.ids,
                &mut out,
                &mut self.state.body_mut().first,
                &ctx,
            )?;
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
        let res = self
            .decoder
            .run(&ids, &mut self.state, &ctx, steps, |_, row| {
                let t = row[0] as u32;
                last = Some(t);
                if t_first.is_none() {
                    t_first = Some(Instant::now());
                }
                let eog = tokenizer.is_eog(t);
                if eog && hide_eog {
                    return Step::Stop;
                }
                stats.gen_tokens += 1;
                match on_token(t) {
                    _ if eog => Step::Stop,
                    step => step,
                }
            });
        self.ids = ids;
        let (_, pos) = res?;
        self.pos = pos;
        self.pending = last;
        let t_first = t_first.unwrap_or_else(Instant::now);
        stats.prompt_time = t_first - t0;
        stats.gen_time = t_first.elapsed();
        Ok(stats)
    }
}
