//! Perplexity by llama.cpp's method, so numbers compare with `llama-perplexity`.
//!
//! Tokenize the whole text (BOS first when the model adds one), cut it into
//! chunks of `ctx` tokens, put BOS in each chunk's first slot when the model
//! uses one, score only the second half of each chunk (each prediction has at
//! least `ctx/2` tokens of context), and report `exp(mean NLL)` with the
//! standard error propagated as llama.cpp does.

use crate::error::ModelError;
use patchbay_combinators::Layer;

use crate::runners::session::Session;

/// `log Σ exp(row)` in f64, shifted by the maximum: the log-partition of a
/// row of logits.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// Running perplexity totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Perplexity {
    /// Tokens scored so far.
    pub count: usize,
    /// Σ NLL.
    pub nll: f64,
    /// Σ NLL².
    pub nll2: f64,
}

impl Perplexity {
    /// Counts one scored token's negative log-likelihood.
    pub fn add(&mut self, nll: f64) {
        self.count += 1;
        self.nll += nll;
        self.nll2 += nll * nll;
    }

    /// `exp(mean NLL)`.
    pub fn ppl(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }

    /// Standard error of the perplexity (llama.cpp's formula).
    pub fn std_error(&self) -> f64 {
        if self.count < 2 {
            return f64::NAN;
        }
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = (self.nll2 / n - mean * mean).max(0.0);
        self.ppl() * (var / (n - 1.0)).sqrt()
    }
}

/// Chunks of `ctx` tokens llama.cpp would score from `n_tokens`, at most
/// `max_chunks` of them (`Some(0)` means all, as `None`).
pub fn chunk_count(n_tokens: usize, ctx: usize, max_chunks: Option<usize>) -> usize {
    let n = n_tokens / ctx.max(1);
    max_chunks.filter(|&m| m > 0).map_or(n, |m| n.min(m))
}

/// Tokens scored in each chunk of `ctx`: the second half, less the last
/// position (which has no next token to predict).
pub fn scored_per_chunk(ctx: usize) -> usize {
    ctx.saturating_sub(1 + ctx / 2)
}

/// Positions whose logits perplexity holds at once (each forward call of
/// the scored half takes at most this many rows): `SCORED_ROWS x vocab`
/// floats (64 MiB for Gemma 3's 262144 tokens) instead of half a chunk's
/// (256 MiB at `--ctx 512`). Peak RSS of `perplexity --ctx 512` fell from
/// 596 to 384 MB on Gemma 3, 723 to 584 on Qwen2.5 and 209 to 161 on
/// SmolLM2, for 3-5% of its tokens per second (more forward calls, each
/// streaming the weights once). Results do not depend on it: the logits of
/// a position have the same bits in any batch.
pub const SCORED_ROWS: usize = 64;

/// The smallest chunk that scores at least two tokens, so that the
/// perplexity has an error bar.
pub const MIN_CTX: usize = 5;

/// Scores `tokens` in chunks of `ctx`; `on_chunk(i, n, running)` reports progress.
pub fn perplexity<N: Layer>(
    session: &mut Session<N>,
    tokens: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, usize, &Perplexity),
) -> Result<Perplexity, ModelError> {
    if ctx < MIN_CTX {
        return Err(ModelError::Usage(format!(
            "--ctx {ctx} is too small: a chunk scores only its second half ({} tokens here); \
             --ctx must be at least {MIN_CTX}",
            scored_per_chunk(ctx)
        )));
    }
    if ctx > session.max_context() {
        return Err(ModelError::Usage(format!(
            "--ctx {ctx} exceeds the context this session holds ({})",
            session.max_context()
        )));
    }
    let n_chunks = chunk_count(tokens.len(), ctx, max_chunks);
    if n_chunks == 0 {
        return Err(ModelError::Usage(format!(
            "the text has {} tokens, fewer than one chunk of {ctx}",
            tokens.len()
        )));
    }
    let bos = session
        .tokenizer
        .add_bos()
        .then(|| session.tokenizer.bos())
        .flatten();
    let first = ctx / 2;
    let mut acc = Perplexity::default();
    let mut chunk = vec![0u32; ctx];
    for c in 0..n_chunks {
        chunk.copy_from_slice(&tokens[c * ctx..(c + 1) * ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        session.reset();
        let vocab = session.info.vocab;
        // Logits of the scored half only, a few rows at a time (kept row
        // `k` is position `first + k`; the last position has no next token).
        let next = &tokens[c * ctx + first + 1..(c + 1) * ctx];
        session.each_logits_tail(&chunk, ctx - first, SCORED_ROWS, |k0, rows| {
            for (row, &target) in rows.chunks_exact(vocab).zip(&next[k0.min(next.len())..]) {
                acc.add(log_sum_exp(row) - row[target as usize] as f64);
            }
        })?;
        on_chunk(c, n_chunks, &acc);
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_follow_the_formulas() {
        let p = Perplexity {
            count: 4,
            nll: 4.0 * 2.0,
            nll2: 4.0 * 4.0 + 0.0,
        };
        assert!((p.ppl() - 2f64.exp()).abs() < 1e-12);
        assert_eq!(p.std_error(), 0.0);
        assert_eq!(chunk_count(1000, 512, None), 1);
        assert_eq!(chunk_count(100_000, 512, Some(40)), 40);
        assert_eq!(chunk_count(100_000, 512, Some(0)), 195);
        assert_eq!(scored_per_chunk(512), 255);
        assert_eq!(scored_per_chunk(2), 0);
        assert_eq!(scored_per_chunk(MIN_CTX), 2);
        assert_eq!(scored_per_chunk(MIN_CTX - 1), 1);
    }
}
