//! Reference cases from `../shared/golden` and the five agreement rules of its
//! README, measured against the `exact` answers.

use std::path::Path;

use serde::Deserialize;

/// One position's reference: `logsumexp` of all logits and the 10 best `[id, logit]`.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenPosition {
    /// log Σ exp(logit) over the vocabulary.
    pub logsumexp: f64,
    /// The highest logits, best first, as `(token id, logit)`.
    pub top: Vec<(u32, f64)>,
}

/// The `exact` section: float64 forward pass on the same weights.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenExact {
    /// Per prompt position.
    pub positions: Vec<GoldenPosition>,
    /// Greedy continuation.
    pub greedy: Vec<u32>,
    /// Top-1 minus top-2 logit at each greedy step.
    pub greedy_margins: Vec<f64>,
}

/// How far llama.cpp is from `exact` on this case.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LlamaCppDistance {
    /// Mean KL(exact || llama.cpp) over exact's top-10.
    pub mean_kl: f64,
    /// Worst log-prob difference over tokens with exact probability >= 1%.
    pub max_abs_logprob_p1: f64,
}

/// A golden case file.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenCase {
    /// The prompt text.
    pub prompt: String,
    /// Whether BOS and special-token parsing applied.
    pub add_special: bool,
    /// Token ids of the prompt.
    pub tokens: Vec<u32>,
    /// The exact reference.
    pub exact: GoldenExact,
    /// llama.cpp's own distance (absent for stories260K).
    #[serde(default)]
    pub llamacpp_vs_exact: Option<LlamaCppDistance>,
}

impl GoldenCase {
    /// Reads a case file.
    pub fn load(path: &Path) -> Result<GoldenCase, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// What the rules measured on one case.
#[derive(Debug, Clone, Default)]
pub struct GoldenReport {
    /// Mean over positions of KL(exact || ours) over exact's top-10.
    pub mean_kl: f64,
    /// The KL bound applied (rule 3).
    pub kl_bound: f64,
    /// Worst |log-prob difference| over tokens with exact probability >= 1%.
    pub max_abs_logprob: f64,
    /// The log-prob bound applied (rule 4).
    pub logprob_bound: f64,
    /// Greedy steps compared (up to the first low-margin step).
    pub greedy_checked: usize,
    /// Prompt positions scored (the weight of this case's mean KL in a
    /// mean over several cases).
    pub positions: usize,
    /// llama.cpp's distance from `exact` on this case, when the case has it.
    pub llamacpp: Option<LlamaCppDistance>,
    /// Every rule violation, in words; empty when the case agrees.
    pub failures: Vec<String>,
}

impl GoldenReport {
    /// True when all five rules hold.
    pub fn agrees(&self) -> bool {
        self.failures.is_empty()
    }
}

fn log_sum_exp(x: &[f32]) -> f64 {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// Applies the README's five rules. `tokens` are our prompt ids, `logits[i]`
/// our full logit row at prompt position `i`, `greedy` our greedy continuation.
pub fn check(
    case: &GoldenCase,
    tokens: &[u32],
    logits: &[Vec<f32>],
    greedy: &[u32],
) -> GoldenReport {
    const TOP: usize = 40;
    let mut r = GoldenReport::default();
    let ll = case.llamacpp_vs_exact;
    r.llamacpp = ll;
    r.kl_bound = (2.0 * ll.map_or(0.0, |d| d.mean_kl)).max(1e-4);
    r.logprob_bound = (1.5 * ll.map_or(0.0, |d| d.max_abs_logprob_p1)).max(0.05);

    // 1. token ids identical.
    if tokens != case.tokens.as_slice() {
        r.failures.push(format!(
            "token ids differ: ours {tokens:?}, golden {:?}",
            case.tokens
        ));
    }
    if logits.len() != case.exact.positions.len() {
        r.failures.push(format!(
            "{} positions of logits, golden has {}",
            logits.len(),
            case.exact.positions.len()
        ));
    }
    let mut kl_sum = 0.0;
    for (i, (ours, ex)) in logits.iter().zip(&case.exact.positions).enumerate() {
        let lse = log_sum_exp(ours);
        // Our top-40 ids.
        let mut idx: Vec<u32> = (0..ours.len() as u32).collect();
        let k = TOP.min(idx.len());
        idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
            ours[b as usize].total_cmp(&ours[a as usize])
        });
        idx.truncate(k);
        idx.sort_by(|&a, &b| {
            ours[b as usize]
                .total_cmp(&ours[a as usize])
                .then(a.cmp(&b))
        });
        // 2. argmax where the exact margin is at least 0.5.
        if ex.top.len() >= 2 {
            let margin = ex.top[0].1 - ex.top[1].1;
            if margin >= 0.5 && idx.first() != Some(&ex.top[0].0) {
                r.failures.push(format!(
                    "position {i}: argmax {:?} differs from exact {} (margin {margin:.3})",
                    idx.first(),
                    ex.top[0].0
                ));
            }
        }
        // 3. KL over exact's top-10, 4. log-probs of tokens with p >= 1%.
        let mut kl = 0.0;
        for &(id, logit) in &ex.top {
            let lp_exact = logit - ex.logsumexp;
            let Some(&ol) = ours.get(id as usize) else {
                r.failures
                    .push(format!("position {i}: token {id} outside our vocabulary"));
                continue;
            };
            let lp_ours = ol as f64 - lse;
            let p = lp_exact.exp();
            kl += p * (lp_exact - lp_ours);
            if p >= 0.01 {
                let d = (lp_exact - lp_ours).abs();
                r.max_abs_logprob = r.max_abs_logprob.max(d);
                if !idx.contains(&id) {
                    r.failures.push(format!(
                        "position {i}: token {id} (p={p:.3}) missing from our top {TOP}"
                    ));
                }
                if d > r.logprob_bound {
                    r.failures.push(format!(
                        "position {i}: token {id} log-prob differs by {d:.4} > {:.4}",
                        r.logprob_bound
                    ));
                }
            }
        }
        kl_sum += kl;
    }
    r.mean_kl = kl_sum / logits.len().max(1) as f64;
    r.positions = logits.len();
    if r.mean_kl > r.kl_bound {
        r.failures
            .push(format!("mean KL {:.3e} > {:.3e}", r.mean_kl, r.kl_bound));
    }
    // 5. greedy identical up to the first step whose margin is under 0.5.
    let stop = case
        .exact
        .greedy_margins
        .iter()
        .position(|&m| m < 0.5)
        .unwrap_or(case.exact.greedy.len());
    r.greedy_checked = stop;
    for s in 0..stop {
        if greedy.get(s) != case.exact.greedy.get(s) {
            r.failures.push(format!(
                "greedy step {s}: ours {:?}, exact {:?} (ours {:?})",
                greedy.get(s),
                case.exact.greedy.get(s),
                &greedy[..greedy.len().min(stop)]
            ));
            break;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case() -> GoldenCase {
        GoldenCase {
            prompt: "x".into(),
            add_special: true,
            tokens: vec![1, 2],
            exact: GoldenExact {
                positions: vec![GoldenPosition {
                    logsumexp: log_sum_exp(&[3.0, 1.0, 0.0]),
                    top: vec![(0, 3.0), (1, 1.0), (2, 0.0)],
                }],
                greedy: vec![0, 1],
                greedy_margins: vec![2.0, 0.1],
            },
            llamacpp_vs_exact: None,
        }
    }

    #[test]
    fn identical_logits_agree_and_perturbed_ones_do_not() {
        let c = case();
        let r = check(&c, &[1, 2], &[vec![3.0, 1.0, 0.0]], &[0, 7]);
        assert!(r.agrees(), "{:?}", r.failures);
        assert!(r.mean_kl.abs() < 1e-12);
        // A shifted logit breaks rules 2-4; a wrong greedy token breaks rule 5.
        let r = check(&c, &[1, 2], &[vec![1.0, 3.0, 0.0]], &[1, 1]);
        assert!(r.failures.iter().any(|f| f.contains("argmax")));
        assert!(r.failures.iter().any(|f| f.contains("KL")));
        assert!(r.failures.iter().any(|f| f.contains("greedy")));
        let r = check(&c, &[1, 3], &[vec![3.0, 1.0, 0.0]], &[0]);
        assert!(r.failures.iter().any(|f| f.contains("token ids")));
    }
}
