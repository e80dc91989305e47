//! [`Sampler`]: logits to the next token id — greedy, temperature, top-k,
//! top-p, min-p, repetition penalty, with a seeded RNG.

use patchbay_combinators::{check_in, Capacity, Ctx, Layer, LayerError, Node};
use patchbay_primitives::{kernels, Act};

use crate::BlockError;

/// Sampling settings. The filters apply in llama.cpp's order: repetition
/// penalty, top-k, top-p, min-p, then temperature and a draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Keep the `k` most likely tokens (`0` = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `p` (`1` = all).
    pub top_p: f32,
    /// Drop tokens below `min_p` times the best one's probability (`0` = none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens (`1` = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// RNG seed: the same seed gives the same text.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x5eed,
        }
    }
}

/// The longest `repeat_last_n` [`SamplerConfig::validate`] accepts: more
/// than any model's context, so never a real limit. The window a
/// [`SamplerState`] holds is also capped at its context capacity.
pub const MAX_REPEAT_LAST_N: usize = 1 << 24;

impl SamplerConfig {
    /// Greedy decoding.
    pub fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        }
    }

    /// Checks every value, naming the first that is out of range.
    pub fn validate(&self) -> Result<(), BlockError> {
        let bad = |what: &str, v: f32, range: &str| {
            Err(BlockError::Config(format!(
                "{what} = {v} is invalid: it must be {range}"
            )))
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature, "a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min-p", self.min_p, "in [0, 1]");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("repeat-penalty", self.repeat_penalty, "a finite number > 0");
        }
        if self.repeat_last_n > MAX_REPEAT_LAST_N {
            return Err(BlockError::Config(format!(
                "repeat-last-n = {} is invalid: it must be in [0, {MAX_REPEAT_LAST_N}] \
                 (and it looks back no further than the context)",
                self.repeat_last_n
            )));
        }
        Ok(())
    }
}

/// Picks the next token from a row of logits (`vocab` features in, one token
/// id out, as a token activation: see [`Act::token`]), so that `Series<Model, Sampler>` inside a `Loop` decodes text.
///
/// ```
/// use patchbay_blocks::{Sampler, SamplerConfig};
/// use patchbay_combinators::{Capacity, Ctx, Layer};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let s = Sampler::new(4, SamplerConfig::greedy()).unwrap();
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let logits = Act::from_vec(1, 4, vec![0.1, 2.0, -1.0, 1.9]).unwrap();
/// let y = s.apply(&logits, &mut s.new_state(Capacity::new(1, 1)), &ctx).unwrap();
/// assert_eq!(y.token(0), 1);
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    vocab: usize,
    cfg: SamplerConfig,
}

/// RNG, recent-token window and candidate buffer of a [`Sampler`].
#[derive(Debug, Clone)]
pub struct SamplerState {
    rng: Xoshiro256,
    recent: Vec<u32>,
    recent_next: usize,
    /// Tokens the penalty looks back over: 0 when the penalty is off.
    window: usize,
    cand: Vec<(f32, u32)>,
}

impl SamplerState {
    /// Records a token the penalty should see (prompt tokens, forced tokens).
    pub fn observe(&mut self, token: u32) {
        if self.window == 0 {
            return;
        }
        if self.recent.len() < self.window {
            self.recent.push(token);
        } else {
            self.recent[self.recent_next] = token;
            self.recent_next = (self.recent_next + 1) % self.recent.len();
        }
    }
}

impl Sampler {
    /// A sampler over `vocab` logits; invalid settings are an error.
    pub fn new(vocab: usize, cfg: SamplerConfig) -> Result<Sampler, BlockError> {
        cfg.validate()?;
        Ok(Sampler { vocab, cfg })
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Chooses a token from `logits` (one row of `vocab`).
    pub fn sample(&self, logits: &[f32], st: &mut SamplerState, ctx: &Ctx<'_>) -> u32 {
        let c = &self.cfg;
        let penalise = c.repeat_penalty != 1.0 && !st.recent.is_empty();
        if c.temperature <= 0.0 && !penalise {
            return kernels::argmax(ctx.simd, logits) as u32;
        }
        st.cand.clear();
        st.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        if penalise {
            for (i, &t) in st.recent.iter().enumerate() {
                // Penalise each distinct token once.
                if st.recent[..i].contains(&t) {
                    continue;
                }
                if let Some(e) = st.cand.get_mut(t as usize) {
                    e.0 = if e.0 > 0.0 {
                        e.0 / c.repeat_penalty
                    } else {
                        e.0 * c.repeat_penalty
                    };
                }
            }
        }
        // Descending logit, ties by ascending id: a total, deterministic order.
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if c.temperature <= 0.0 {
            return st.cand.iter().min_by(|a, b| order(a, b)).map_or(0, |e| e.1);
        }
        if c.top_k > 0 && c.top_k < st.cand.len() {
            st.cand.select_nth_unstable_by(c.top_k - 1, order);
            st.cand.truncate(c.top_k);
        }
        st.cand.sort_unstable_by(order);
        // Probabilities before temperature, for the top-p and min-p filters.
        let max = st.cand[0].0;
        let total: f32 = st.cand.iter().map(|e| (e.0 - max).exp()).sum();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = st.cand.len();
            for (i, e) in st.cand.iter().enumerate() {
                cum += (e.0 - max).exp() / total;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
            st.cand.truncate(keep.max(1));
        }
        if c.min_p > 0.0 {
            // p_i >= min_p * p_max  <=>  l_i - max >= ln(min_p)
            let floor = c.min_p.ln();
            let keep = st.cand.iter().take_while(|e| e.0 - max >= floor).count();
            st.cand.truncate(keep.max(1));
        }
        let inv_t = 1.0 / c.temperature;
        let mut sum = 0.0f64;
        for e in st.cand.iter_mut() {
            e.0 = (((e.0 - max) * inv_t) as f64).exp() as f32;
            sum += e.0 as f64;
        }
        let mut u = st.rng.next_f64() * sum;
        for e in &st.cand {
            u -= e.0 as f64;
            if u < 0.0 {
                return e.1;
            }
        }
        st.cand.last().map_or(0, |e| e.1)
    }
}

impl Layer for Sampler {
    type State = SamplerState;

    fn in_dim(&self) -> usize {
        self.vocab
    }
    fn out_dim(&self) -> usize {
        1
    }
    fn new_state(&self, cap: Capacity) -> SamplerState {
        // Only a penalty that is on needs a window, and a sequence never holds
        // more tokens than its context: allocate no more than that.
        let window = if self.cfg.repeat_penalty != 1.0 {
            self.cfg.repeat_last_n.min(cap.max_context)
        } else {
            0
        };
        SamplerState {
            rng: Xoshiro256::seeded(self.cfg.seed),
            recent: Vec::with_capacity(window),
            recent_next: 0,
            window,
            cand: Vec::with_capacity(self.vocab),
        }
    }
    fn reset(&self, st: &mut SamplerState) {
        st.rng = Xoshiro256::seeded(self.cfg.seed);
        st.recent.clear();
        st.recent_next = 0;
    }
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut SamplerState,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        check_in("Sampler", self.vocab, x)?;
        y.reshape(x.rows(), 1);
        for r in 0..x.rows() {
            let t = self.sample(x.row(r), st, ctx);
            st.observe(t);
            y.set_token(r, t);
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        let c = &self.cfg;
        let detail = if c.temperature <= 0.0 {
            "greedy".to_string()
        } else {
            format!(
                "temp={} top_k={} top_p={} min_p={} repeat={} seed={}",
                c.temperature, c.top_k, c.top_p, c.min_p, c.repeat_penalty, c.seed
            )
        };
        Node::leaf("Sampler", self.vocab, 1, 0).with_detail(detail)
    }
}

/// xoshiro256** seeded through splitmix64: small, fast and stable across
/// versions (so a seed keeps its text).
#[derive(Debug, Clone)]
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn seeded(seed: u64) -> Xoshiro256 {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Xoshiro256 {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_primitives::{Simd, Threads};

    fn draw(cfg: SamplerConfig, logits: &[f32], n: usize) -> Vec<u32> {
        let s = Sampler::new(logits.len(), cfg).unwrap();
        let threads = Threads::single();
        let scratch = patchbay_combinators::Scratch::new();
        let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
        let mut st = s.new_state(Capacity::new(1, 1));
        (0..n).map(|_| s.sample(logits, &mut st, &ctx)).collect()
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let a = draw(cfg, &logits, 64);
        assert_eq!(a, draw(cfg, &logits, 64));
        assert_ne!(a, draw(SamplerConfig { seed: 7, ..cfg }, &logits, 64));
    }

    #[test]
    fn filters_keep_only_allowed_tokens() {
        let logits = [5.0, 4.9, 0.0, -3.0, 4.8, -10.0];
        let top2 = SamplerConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        assert!(draw(top2, &logits, 200).iter().all(|&t| t == 0 || t == 1));
        // min-p 0.5: only tokens within ln 2 of the best logit.
        let minp = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            ..SamplerConfig::default()
        };
        assert!(draw(minp, &logits, 200)
            .iter()
            .all(|&t| [0, 1, 4].contains(&t)));
        // top-p tiny: only the best token.
        let topp = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1e-6,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        assert!(draw(topp, &logits, 50).iter().all(|&t| t == 0));
        // All tokens reachable with no filters at high temperature.
        let free = SamplerConfig {
            temperature: 5.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let seen = draw(free, &logits, 2000);
        assert!((0..5).all(|t| seen.contains(&t)), "{seen:?}");
    }

    #[test]
    fn repetition_penalty_moves_greedy_choice() {
        let s = Sampler::new(
            3,
            SamplerConfig {
                temperature: 0.0,
                repeat_penalty: 2.0,
                ..SamplerConfig::default()
            },
        )
        .unwrap();
        let threads = Threads::single();
        let scratch = patchbay_combinators::Scratch::new();
        let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
        let mut st = s.new_state(Capacity::new(1, 1));
        let logits = [3.0, 2.0, -1.0];
        assert_eq!(s.sample(&logits, &mut st, &ctx), 0);
        st.observe(0);
        // 3.0 / 2 = 1.5 < 2.0
        assert_eq!(s.sample(&logits, &mut st, &ctx), 1);
    }

    #[test]
    fn penalty_window_is_allocated_only_when_used_and_within_the_context() {
        let huge = SamplerConfig {
            repeat_last_n: MAX_REPEAT_LAST_N,
            ..SamplerConfig::default()
        };
        // Penalty off: no window at all, however long repeat_last_n is.
        let s = Sampler::new(8, huge).unwrap();
        let mut st = s.new_state(Capacity::new(1, 32));
        assert_eq!((st.window, st.recent.capacity()), (0, 0));
        st.observe(3);
        assert!(st.recent.is_empty());
        // Penalty on: the window is capped at the context.
        let on = SamplerConfig {
            repeat_penalty: 1.1,
            ..huge
        };
        let s = Sampler::new(8, on).unwrap();
        let mut st = s.new_state(Capacity::new(1, 32));
        assert_eq!(st.window, 32);
        assert!(st.recent.capacity() < 1024);
        for t in 0..100 {
            st.observe(t);
        }
        assert_eq!(st.recent.len(), 32);
        assert!(st.recent.contains(&99) && !st.recent.contains(&67));
    }

    #[test]
    fn invalid_settings_are_errors() {
        for cfg in [
            SamplerConfig {
                top_p: 1.5,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                top_p: 0.0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                temperature: -1.0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                temperature: f32::NAN,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                min_p: 2.0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                repeat_penalty: 0.0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                repeat_last_n: 1_000_000_000_000,
                ..SamplerConfig::default()
            },
        ] {
            let e = Sampler::new(4, cfg).unwrap_err().to_string();
            assert!(e.contains("invalid"), "{e}");
        }
    }
}
