//! Re-wired variants of one model measured against the model as trained.
//!
//! Every variant is a [`Plan`] over the same open model (the weights are
//! shared views, never copied). The text is cut into chunks exactly as
//! [`perplexity`](crate::runners::perplexity) cuts it; for each chunk the
//! baseline runs first, then every variant on the same tokens, and each
//! variant's totals grow in `f64`, token by token in a fixed order, so the
//! results do not depend on the thread count or the prompt batch size. Only
//! the current chunk's baseline logits are kept.
//!
//! Per variant: perplexity (llama.cpp's method) and its change, mean and
//! max KL(baseline ‖ variant) over the scored tokens, top-1 agreement and
//! speed. From the baseline's residual stream, the cheap layer scores papers
//! rank layers by: ShortGPT's Block Influence `1 − cos(in_ℓ, in_ℓ+n)`
//! averaged over every token, and Gromov et al.'s angular distance
//! `arccos(cos(in_ℓ, in_ℓ+n)) / π` on the last token of each chunk.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Instant;

use patchbay_combinators::{Capacity, Ctx, Layer, Merge, Plan, PlanStep, Scratch, StackObserver};
use patchbay_primitives::{Act, Simd, Threads};

use crate::error::ModelError;
use crate::families::Model;
use crate::runners::perplexity::{chunk_count, log_sum_exp, scored_per_chunk, Perplexity, MIN_CTX};

/// The sweep kinds `--sweep` takes, for help texts and errors.
pub const SWEEP_KINDS: &str = "drop, drop-span:K, swap-adjacent, repeat, parallel-pairs, \
                               reverse-middle:A-B, prefix";

/// One re-wiring to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// A short label (`drop 3`, `swap 4-5`, `(4|5)/mean`, or the plan).
    pub name: String,
    /// The plan over the model's layers.
    pub plan: Plan,
    /// The layer the variant is plotted against (the dropped, repeated or
    /// first swapped layer; the prefix length).
    pub layer: Option<usize>,
    /// `(first, n)`: the variant removes layers `first..first + n`, so the
    /// layer scores of that span apply to it.
    pub removes: Option<(usize, usize)>,
}

impl Variant {
    fn new(
        name: String,
        plan: Plan,
        layer: Option<usize>,
        removes: Option<(usize, usize)>,
    ) -> Self {
        Variant {
            name,
            plan,
            layer,
            removes,
        }
    }
}

/// A sweep kind, parsed but not yet applied to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Each layer dropped alone.
    Drop,
    /// Every window of `k` consecutive layers dropped.
    DropSpan(usize),
    /// Each pair of adjacent layers exchanged.
    SwapAdjacent,
    /// Each layer run twice.
    Repeat,
    /// Each adjacent pair run in parallel, merged both ways.
    ParallelPairs,
    /// Layers `a..=b` run in reverse order.
    ReverseMiddle(usize, usize),
    /// The first `n` layers only, for every `n` from 1 to the layer count − 1.
    Prefix,
}

impl std::str::FromStr for Sweep {
    type Err = String;
    /// `drop`, `drop-span:K`, `swap-adjacent`, `repeat`, `parallel-pairs`,
    /// `reverse-middle:A-B`, `prefix`.
    fn from_str(s: &str) -> Result<Sweep, String> {
        let num = |t: &str, what: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{what} {t:?} in {s:?} is not a whole number"))
        };
        match s.trim() {
            "drop" => return Ok(Sweep::Drop),
            "swap-adjacent" => return Ok(Sweep::SwapAdjacent),
            "repeat" => return Ok(Sweep::Repeat),
            "parallel-pairs" => return Ok(Sweep::ParallelPairs),
            "prefix" => return Ok(Sweep::Prefix),
            _ => {}
        }
        if let Some(k) = s.trim().strip_prefix("drop-span:") {
            let k = num(k, "the span")?;
            if k == 0 {
                return Err(format!("{s:?}: the span must be at least 1"));
            }
            return Ok(Sweep::DropSpan(k));
        }
        if let Some(r) = s.trim().strip_prefix("reverse-middle:") {
            let (a, b) = r
                .split_once('-')
                .ok_or_else(|| format!("{s:?}: write the range as A-B (reverse-middle:4-9)"))?;
            let (a, b) = (num(a, "the layer")?, num(b, "the layer")?);
            if a >= b {
                return Err(format!(
                    "{s:?}: the range {a}-{b} must have A < B (at least two layers)"
                ));
            }
            return Ok(Sweep::ReverseMiddle(a, b));
        }
        Err(format!(
            "unknown sweep kind {s:?}; the kinds are {SWEEP_KINDS}"
        ))
    }
}

impl std::fmt::Display for Sweep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sweep::Drop => f.write_str("drop"),
            Sweep::DropSpan(k) => write!(f, "drop-span:{k}"),
            Sweep::SwapAdjacent => f.write_str("swap-adjacent"),
            Sweep::Repeat => f.write_str("repeat"),
            Sweep::ParallelPairs => f.write_str("parallel-pairs"),
            Sweep::ReverseMiddle(a, b) => write!(f, "reverse-middle:{a}-{b}"),
            Sweep::Prefix => f.write_str("prefix"),
        }
    }
}

impl Sweep {
    /// Whether the layer scores apply (the sweep removes layers).
    pub fn scored(self) -> bool {
        matches!(self, Sweep::Drop | Sweep::DropSpan(_))
    }

    /// The variants of this sweep on a model of `n` layers.
    ///
    /// # Errors
    ///
    /// [`ModelError::Usage`] naming `--sweep` when the sweep does not fit
    /// the model (a span or range beyond its layers, or a model too small).
    pub fn variants(self, n: usize) -> Result<Vec<Variant>, ModelError> {
        let bad = |why: String| ModelError::Usage(format!("--sweep {self}: {why}"));
        let plan =
            |r: Result<Plan, patchbay_combinators::PlanError>| r.map_err(|e| bad(e.to_string()));
        let mut out = Vec::new();
        match self {
            Sweep::Drop | Sweep::DropSpan(_) => {
                let k = match self {
                    Sweep::DropSpan(k) => k,
                    _ => 1,
                };
                if k >= n {
                    return Err(bad(format!(
                        "dropping {k} layers of a {n}-layer model leaves none; \
                         the span must be below {n}"
                    )));
                }
                for first in 0..=n - k {
                    let dropped: Vec<usize> = (first..first + k).collect();
                    let name = if k == 1 {
                        format!("drop {first}")
                    } else {
                        format!("drop {first}-{}", first + k - 1)
                    };
                    let p = plan(Plan::drop(n, &dropped))?;
                    out.push(Variant::new(name, p, Some(first), Some((first, k))));
                }
            }
            Sweep::SwapAdjacent | Sweep::ParallelPairs if n < 2 => {
                return Err(bad(format!("the model has {n} layer; it needs at least 2")));
            }
            Sweep::SwapAdjacent => {
                for a in 0..n - 1 {
                    let p = plan(Plan::swap(n, a, a + 1))?;
                    out.push(Variant::new(
                        format!("swap {a}-{}", a + 1),
                        p,
                        Some(a),
                        None,
                    ));
                }
            }
            Sweep::Repeat => {
                for l in 0..n {
                    let p = plan(Plan::repeat(n, l, 2))?;
                    out.push(Variant::new(format!("repeat {l}"), p, Some(l), None));
                }
            }
            Sweep::ParallelPairs => {
                for a in 0..n - 1 {
                    for merge in [Merge::SumUpdates, Merge::Mean] {
                        let p = plan(Plan::parallel(n, a..=a + 1, merge))?;
                        let name = format!("({a}|{})/{merge}", a + 1);
                        out.push(Variant::new(name, p, Some(a), None));
                    }
                }
            }
            Sweep::ReverseMiddle(a, b) => {
                if b >= n {
                    return Err(bad(format!(
                        "layer {b} is out of range: the model has {n} layers (0-{})",
                        n.saturating_sub(1)
                    )));
                }
                let steps = (0..a)
                    .chain((a..=b).rev())
                    .chain(b + 1..n)
                    .map(PlanStep::Layer)
                    .collect();
                let p = plan(Plan::from_steps(steps, n))?;
                out.push(Variant::new(format!("reverse {a}-{b}"), p, Some(a), None));
            }
            Sweep::Prefix => {
                if n < 2 {
                    return Err(bad(format!("the model has {n} layer; it needs at least 2")));
                }
                for k in 1..n {
                    let p = plan(Plan::from_steps((0..k).map(PlanStep::Layer).collect(), n))?;
                    out.push(Variant::new(format!("prefix {k}"), p, Some(k), None));
                }
            }
        }
        Ok(out)
    }
}

/// How to run a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewireConfig {
    /// Tokens per chunk.
    pub ctx: usize,
    /// At most this many chunks (`None` or `Some(0)`: all).
    pub chunks: Option<usize>,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Prompt rows per forward call.
    pub batch: usize,
}

/// What one network scored over the chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VariantStats {
    /// Perplexity totals over the scored tokens.
    pub ppl: Perplexity,
    /// Σ KL(baseline ‖ variant) over the scored tokens (0 for the baseline).
    pub kl_sum: f64,
    /// The largest KL of one token.
    pub kl_max: f64,
    /// Scored tokens whose most likely next token is the baseline's.
    pub agree: usize,
    /// Seconds spent in the network's forward calls.
    pub seconds: f64,
    /// Tokens run through the network (every position of every chunk).
    pub tokens: usize,
}

impl VariantStats {
    /// Mean KL(baseline ‖ variant) per scored token.
    pub fn kl_mean(&self) -> f64 {
        self.kl_sum / self.ppl.count.max(1) as f64
    }

    /// Share of scored tokens whose top-1 token is the baseline's.
    pub fn agreement(&self) -> f64 {
        self.agree as f64 / self.ppl.count.max(1) as f64
    }

    /// Tokens per second through the network.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Layer scores from the baseline's residual stream.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerScores {
    /// Layers of the model.
    pub n_layers: usize,
    /// Span lengths the Block Influence was gathered for.
    pub spans: Vec<usize>,
    /// `cos_sum[s][ℓ]`: Σ over tokens of cos(in_ℓ, in_ℓ+spans[s]).
    cos_sum: Vec<Vec<f64>>,
    /// Tokens the cosines were summed over.
    pub tokens: usize,
    /// `angular_sum[ℓ][m]` (`ℓ < m <= n`): Σ over chunks of
    /// arccos(cos(in_ℓ, in_m)) / π on each chunk's last token.
    angular_sum: Vec<Vec<f64>>,
    /// Chunks the angular distances were summed over.
    pub chunks: usize,
}

impl LayerScores {
    /// ShortGPT's Block Influence of layers `first..first + n`:
    /// `1 − cos(in_first, in_first+n)` averaged over every token (`None` when
    /// `n` was not gathered or the span is out of range).
    pub fn block_influence(&self, first: usize, n: usize) -> Option<f64> {
        let s = self.spans.iter().position(|&k| k == n)?;
        let sum = self.cos_sum.get(s)?.get(first)?;
        Some(1.0 - sum / self.tokens.max(1) as f64)
    }

    /// Gromov et al.'s angular distance between the inputs of layer `first`
    /// and layer `first + n` (the model's last layer output when
    /// `first + n` is the layer count), averaged over the chunks' last tokens.
    pub fn angular_distance(&self, first: usize, n: usize) -> Option<f64> {
        let sum = self.angular_sum.get(first)?.get(first + n)?;
        (n > 0).then(|| sum / self.chunks.max(1) as f64)
    }
}

/// Everything a comparison measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RewireReport {
    /// Chunks scored.
    pub chunks: usize,
    /// The model as trained.
    pub baseline: VariantStats,
    /// One entry per variant, in the order given.
    pub variants: Vec<VariantStats>,
    /// Layer scores from the baseline's residual stream.
    pub scores: LayerScores,
}

/// Where a comparison is, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The chunk being scored (from 0).
    pub chunk: usize,
    /// Chunks in all.
    pub chunks: usize,
    /// `None`: the baseline just ran; `Some(v)`: variant `v`.
    pub variant: Option<usize>,
}

/// Cosine of two vectors in `f64` (1 when both are zero, 0 when one is).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0),
    }
}

/// Angular distance `arccos(cos) / π` in `[0, 1]`.
pub fn angular(a: &[f32], b: &[f32]) -> f64 {
    cosine(a, b).acos() / std::f64::consts::PI
}

/// Ranks from 1, ties sharing the mean of their ranks.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]).then(a.cmp(&b)));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation of `x` and `y` (Pearson's correlation of the
/// ranks, ties at their mean rank); `None` for fewer than two pairs, unequal
/// lengths, a NaN, or a constant side.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 || x.iter().chain(y).any(|v| v.is_nan()) {
        return None;
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// KL(p ‖ q) in `f64` for the distributions of logits `p` and `q` whose
/// [`log_sum_exp`]s are `lse_p` and `lse_q`: `Σ p (log p − log q)`, summed in
/// vocabulary order.
fn kl_divergence(p: &[f32], lse_p: f64, q: &[f32], lse_q: f64) -> f64 {
    let mut kl = 0f64;
    for (&a, &b) in p.iter().zip(q) {
        let lp = a as f64 - lse_p;
        kl += lp.exp() * (lp - (b as f64 - lse_q));
    }
    kl
}

/// Index of the first largest logit.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Watches the baseline's residual stream.
#[derive(Debug)]
struct Recorder {
    n_layers: usize,
    spans: Vec<usize>,
    rec: RefCell<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    /// Inputs of each layer (and the stack output) in the current call.
    inputs: Vec<Vec<f32>>,
    cols: usize,
    cos_sum: Vec<Vec<f64>>,
    tokens: usize,
    /// The last row of each layer's input seen so far.
    last: Vec<Vec<f32>>,
}

impl StackObserver for Recorder {
    fn observe(&self, i: usize, x: &Act) {
        let mut r = self.rec.borrow_mut();
        let n = self.n_layers;
        if i > n {
            return;
        }
        r.cols = x.cols();
        r.inputs[i].clear();
        r.inputs[i].extend_from_slice(x.as_slice());
        if x.rows() > 0 {
            r.last[i].clear();
            r.last[i].extend_from_slice(x.row(x.rows() - 1));
        }
        if i < n {
            return;
        }
        let r = &mut *r;
        let cols = r.cols.max(1);
        let rows = x.rows();
        for (s, &k) in self.spans.iter().enumerate() {
            for l in 0..=n.saturating_sub(k) {
                let (a, b) = (&r.inputs[l], &r.inputs[l + k]);
                for t in 0..rows {
                    let span = t * cols..(t + 1) * cols;
                    r.cos_sum[s][l] += cosine(&a[span.clone()], &b[span]);
                }
            }
        }
        r.tokens += rows;
    }
}

/// Runs `chunk` through `net` in calls of `batch` rows; `each(first_row,
/// logits)` sees every call's output.
#[allow(clippy::too_many_arguments)]
fn run_chunk<N: Layer>(
    net: &N,
    state: &mut N::State,
    chunk: &[u32],
    batch: usize,
    ctx: Ctx<'_>,
    ids: &mut Act,
    out: &mut Act,
    seconds: &mut f64,
    mut each: impl FnMut(usize, &Act),
) -> Result<(), ModelError> {
    net.reset(state);
    for (c, part) in chunk.chunks(batch).enumerate() {
        ids.load_tokens(part);
        let t0 = Instant::now();
        net.forward(ids, out, state, &ctx.at(c * batch))?;
        *seconds += t0.elapsed().as_secs_f64();
        each(c * batch, out);
    }
    Ok(())
}

/// Compares `models[1..]` against `models[0]` (the model as trained) on
/// `tokens` cut into chunks as the perplexity runner cuts them (`bos`, when
/// the model uses one, in each chunk's first slot). `spans` are the span
/// lengths the Block Influence is gathered for; `on_progress` is called after
/// each network ran on a chunk.
///
/// # Errors
///
/// [`ModelError::Usage`] for a `ctx` below the minimum or beyond a model's
/// context, no models, or a text shorter than one chunk; any forward error.
pub fn compare<N: Layer>(
    models: &[Model<N>],
    tokens: &[u32],
    bos: Option<u32>,
    cfg: &RewireConfig,
    spans: &[usize],
    mut on_progress: impl FnMut(Progress),
) -> Result<RewireReport, ModelError> {
    let ctx_len = cfg.ctx;
    let Some(base) = models.first() else {
        return Err(ModelError::Usage("no model to compare".into()));
    };
    if ctx_len < MIN_CTX {
        return Err(ModelError::Usage(format!(
            "--ctx {ctx_len} is too small: a chunk scores only its second half ({} tokens here); \
             --ctx must be at least {MIN_CTX}",
            scored_per_chunk(ctx_len)
        )));
    }
    if ctx_len > base.info.max_context {
        return Err(ModelError::Usage(format!(
            "--ctx {ctx_len} exceeds the context this model was built for ({})",
            base.info.max_context
        )));
    }
    let n_chunks = chunk_count(tokens.len(), ctx_len, cfg.chunks);
    if n_chunks == 0 {
        return Err(ModelError::Usage(format!(
            "the text has {} tokens, fewer than one chunk of {ctx_len}",
            tokens.len()
        )));
    }
    let n = base.info.n_layers;
    let vocab = base.info.vocab;
    let batch = cfg.batch.clamp(1, ctx_len);
    let spans: Vec<usize> = spans
        .iter()
        .copied()
        .filter(|&k| k >= 1 && k <= n)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let recorder = Recorder {
        n_layers: n,
        spans: spans.clone(),
        rec: RefCell::new(Recorded {
            inputs: vec![Vec::new(); n + 1],
            cos_sum: spans.iter().map(|&k| vec![0.0; n + 1 - k]).collect(),
            last: vec![Vec::new(); n + 1],
            ..Recorded::default()
        }),
    };
    let mut angular_sum = vec![vec![0.0; n + 1]; n + 1];

    let threads = Threads::new(cfg.threads);
    let scratch = Scratch::new();
    let simd = Simd::detect();
    let plain = Ctx::new(simd, &threads, &scratch);
    let cap = Capacity::new(batch, ctx_len);
    let mut states: Vec<N::State> = models.iter().map(|m| m.net.new_state(cap)).collect();
    let (mut ids, mut out) = (Act::with_capacity(batch, 1), Act::default());

    let first = ctx_len / 2;
    let scored = scored_per_chunk(ctx_len);
    let mut base_rows = vec![0f32; scored * vocab];
    let mut base_lse = vec![0f64; scored];
    let mut base_top = vec![0usize; scored];
    let mut stats = vec![VariantStats::default(); models.len()];
    let mut chunk = vec![0u32; ctx_len];

    for c in 0..n_chunks {
        let text = &tokens[c * ctx_len..(c + 1) * ctx_len];
        chunk.copy_from_slice(text);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        // The baseline, watched: keep its scored rows.
        {
            let st = &mut stats[0];
            let ctx = plain.with_observer(&recorder);
            run_chunk(
                &base.net,
                &mut states[0],
                &chunk,
                batch,
                ctx,
                &mut ids,
                &mut out,
                &mut st.seconds,
                |start, logits| {
                    for r in 0..logits.rows() {
                        let p = start + r;
                        if p < first || p + 1 >= ctx_len {
                            continue;
                        }
                        let row = logits.row(r);
                        let j = p - first;
                        base_rows[j * vocab..(j + 1) * vocab].copy_from_slice(row);
                        let lse = log_sum_exp(row);
                        base_lse[j] = lse;
                        base_top[j] = argmax(row);
                        st.ppl.add(lse - row[text[p + 1] as usize] as f64);
                        st.agree += 1;
                    }
                },
            )?;
            st.tokens += ctx_len;
            let rec = recorder.rec.borrow();
            for (l, sums) in angular_sum.iter_mut().enumerate() {
                for (m, sum) in sums.iter_mut().enumerate().skip(l + 1) {
                    *sum += angular(&rec.last[l], &rec.last[m]);
                }
            }
        }
        on_progress(Progress {
            chunk: c,
            chunks: n_chunks,
            variant: None,
        });
        for (v, model) in models.iter().enumerate().skip(1) {
            let st = &mut stats[v];
            run_chunk(
                &model.net,
                &mut states[v],
                &chunk,
                batch,
                plain,
                &mut ids,
                &mut out,
                &mut st.seconds,
                |start, logits| {
                    for r in 0..logits.rows() {
                        let p = start + r;
                        if p < first || p + 1 >= ctx_len {
                            continue;
                        }
                        let row = logits.row(r);
                        let j = p - first;
                        let b = &base_rows[j * vocab..(j + 1) * vocab];
                        let lse = log_sum_exp(row);
                        st.ppl.add(lse - row[text[p + 1] as usize] as f64);
                        let kl = kl_divergence(b, base_lse[j], row, lse);
                        st.kl_sum += kl;
                        st.kl_max = st.kl_max.max(kl);
                        if argmax(row) == base_top[j] {
                            st.agree += 1;
                        }
                    }
                },
            )?;
            st.tokens += ctx_len;
            on_progress(Progress {
                chunk: c,
                chunks: n_chunks,
                variant: Some(v - 1),
            });
        }
    }
    let rec = recorder.rec.into_inner();
    let mut stats = stats.into_iter();
    let baseline = stats.next().unwrap_or_default();
    Ok(RewireReport {
        chunks: n_chunks,
        baseline,
        variants: stats.collect(),
        scores: LayerScores {
            n_layers: n,
            spans,
            cos_sum: rec.cos_sum,
            tokens: rec.tokens,
            angular_sum,
            chunks: n_chunks,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_kinds_parse_and_refuse() {
        assert_eq!("drop".parse::<Sweep>(), Ok(Sweep::Drop));
        assert_eq!("drop-span:8".parse::<Sweep>(), Ok(Sweep::DropSpan(8)));
        assert_eq!(
            "reverse-middle:4-9".parse::<Sweep>(),
            Ok(Sweep::ReverseMiddle(4, 9))
        );
        for bad in [
            "dorp",
            "drop-span:0",
            "drop-span:x",
            "reverse-middle:9-4",
            "reverse-middle:3",
        ] {
            assert!(bad.parse::<Sweep>().is_err(), "{bad} parsed");
        }
        assert!("dorp".parse::<Sweep>().unwrap_err().contains("drop-span:K"));
    }

    #[test]
    fn sweeps_make_the_expected_plans() {
        let v = Sweep::Drop.variants(5).unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[2].plan.to_string(), "0,1,3,4");
        assert_eq!(v[2].removes, Some((2, 1)));
        let v = Sweep::DropSpan(2).variants(5).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[3].plan.to_string(), "0-2");
        assert_eq!(Sweep::SwapAdjacent.variants(5).unwrap().len(), 4);
        assert_eq!(
            Sweep::Repeat.variants(5).unwrap()[4].plan.to_string(),
            "0-3,4x2"
        );
        let v = Sweep::ParallelPairs.variants(3).unwrap();
        let names: Vec<String> = v.iter().map(|v| v.plan.to_string()).collect();
        assert_eq!(
            names,
            ["(0|1),2", "(0|1)/mean,2", "0,(1|2)", "0,(1|2)/mean"]
        );
        let v = Sweep::ReverseMiddle(1, 3).variants(5).unwrap();
        assert_eq!(v[0].plan.to_string(), "0,3-1,4");
        assert_eq!(Sweep::Prefix.variants(4).unwrap()[0].plan.to_string(), "0");
        let e = Sweep::DropSpan(5).variants(5).unwrap_err().to_string();
        assert!(e.contains("--sweep drop-span:5"), "{e}");
        let e = Sweep::ReverseMiddle(1, 7)
            .variants(5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--sweep") && e.contains("layer 7"), "{e}");
    }

    /// Plain f64 references, written independently of the code above.
    #[test]
    fn metric_units_match_references() {
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]), 0.0);
        assert!((cosine(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-15);
        let c = cosine(&[1.0, 2.0], &[3.0, -1.0]);
        assert!((c - 1.0 / (5f64.sqrt() * 10f64.sqrt())).abs() < 1e-15);
        assert!((angular(&[1.0, 0.0], &[-1.0, 0.0]) - 1.0).abs() < 1e-15);
        assert!((angular(&[1.0, 0.0], &[1.0, 1.0]) - 0.25).abs() < 1e-15);
        assert_eq!(angular(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        // Spearman: perfect, reversed, and with ties (scipy.stats.spearmanr
        // gives 0.9486832980505138 for these).
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        let s = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((s - 0.9486832980505138).abs() < 1e-12, "{s}");
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0], &[1.0]), None);
        // KL of two distributions from logits, against the textbook sum.
        let (a, b) = ([0.0f32, 1.0, 2.0], [1.0f32, 0.5, -1.0]);
        let (la, lb) = (log_sum_exp(&a), log_sum_exp(&b));
        let kl = kl_divergence(&a, la, &b, lb);
        assert_eq!(kl_divergence(&a, la, &a, la), 0.0);
        let pa: Vec<f64> = a.iter().map(|&x| (x as f64).exp()).collect();
        let za: f64 = pa.iter().sum();
        let pb: Vec<f64> = b.iter().map(|&x| (x as f64).exp()).collect();
        let zb: f64 = pb.iter().sum();
        let reference: f64 = (0..3)
            .map(|i| pa[i] / za * ((pa[i] / za) / (pb[i] / zb)).ln())
            .sum();
        assert!((kl - reference).abs() < 1e-12);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }
}
