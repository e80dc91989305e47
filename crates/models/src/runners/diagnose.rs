//! Naming the first decoder layer whose output goes non-finite, after the
//! once-per-step check of the logits ([`ModelError::NonFinite`]) has fired.
//!
//! The check itself stays off the hot path: only when the logits are bad does
//! this diagnostic pass run. It rebuilds the network truncated after layer
//! `k` (a `--layers 0-k` plan, so the final norm and the LM head read layer
//! `k`'s output) for `k = 0, 1, ...` and replays the tokens: NaN and infinity
//! pass through the norm and the head, so the first truncation whose logits
//! are non-finite names the first bad layer.

use std::path::Path;

use patchbay_combinators::{Capacity, Ctx, Layer, Plan, Scratch};
use patchbay_primitives::{Act, Simd, Threads};

use crate::error::ModelError;
use crate::families::{self, BuildOptions, CausalLmVisitor, Model};
use crate::runners::session::first_non_finite;

/// Replays `tokens` from position 0 through the model at `path` truncated
/// after each decoder layer in turn, and says which layer first produced a
/// NaN or an infinity, and at which position (`"layer 2 is the first to
/// produce NaN (at position 0)"`). `opts` are the options the model was built
/// with (its own `--layers` plan is ignored: layers are numbered as in the
/// file).
pub fn first_bad_layer(
    path: &Path,
    opts: &BuildOptions,
    tokens: &[u32],
) -> Result<String, ModelError> {
    if tokens.is_empty() {
        return Ok("no tokens to replay".into());
    }
    let source = families::open(path)?;
    let n = source.hparams().n_layer;
    for k in 0..n {
        let text = if k == 0 {
            "0".to_string()
        } else {
            format!("0-{k}")
        };
        let plan = Plan::parse(&text, n).map_err(|e| ModelError::Usage(e.to_string()))?;
        // Every other option (none today) as the model was built with.
        #[allow(clippy::needless_update)]
        let build = BuildOptions {
            plan: Some(plan),
            max_context: tokens.len(),
            ..opts.clone()
        };
        if let Some((pos, what)) = families::with_causal_lm(&source, &build, Replay { tokens })?? {
            let feeding = if k == 0 {
                " (or the token embedding feeding it)"
            } else {
                ""
            };
            return Ok(format!(
                "layer {k}{feeding} is the first to produce {what} (at position {pos})"
            ));
        }
    }
    Ok(format!(
        "the outputs of all {n} decoder layers are finite: the final norm or the LM head produced it"
    ))
}

/// Runs the tokens through a built network; the first non-finite row.
struct Replay<'a> {
    tokens: &'a [u32],
}

impl CausalLmVisitor for Replay<'_> {
    type Output = Result<Option<(usize, &'static str)>, ModelError>;
    fn visit<N: Layer>(self, model: Model<N>) -> Self::Output {
        let net = model.net;
        let n = self.tokens.len();
        let ids = Act::from_tokens(self.tokens);
        let mut state = net.new_state(Capacity::new(n, n));
        let threads = Threads::new(0);
        let scratch = Scratch::new();
        let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
        let mut out = Act::default();
        net.forward(&ids, &mut out, &mut state, &ctx)?;
        Ok(first_non_finite(&out))
    }
}
