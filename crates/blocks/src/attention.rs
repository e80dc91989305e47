//! [`Attention`]: multi-head / grouped-query causal self-attention with RoPE
//! and a KV cache.

use std::sync::Arc;

use patchbay_combinators::{check_in, Capacity, Ctx, Layer, LayerError, Node};
use patchbay_primitives::rope::{self, RopeLayout, RopeTable};
use patchbay_primitives::{kernels, Act};

use crate::linear::LinearState;
use crate::{BlockError, Linear, RmsNorm};

/// Shape and position settings of an [`Attention`] layer.
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (`n_heads` for multi-head, fewer for grouped-query).
    pub n_kv_heads: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Rotary table (shared between layers with the same base); `None` for no RoPE.
    pub rope: Option<Arc<RopeTable>>,
    /// How q/k pairs are laid out for RoPE.
    pub rope_layout: RopeLayout,
    /// Score scale; `1/sqrt(head_dim)` unless the model says otherwise.
    pub scale: f32,
    /// Attend only to the last `window` positions (sliding-window layers).
    pub window: Option<usize>,
    /// Causal masking (decoders). Encoders set it false.
    pub causal: bool,
}

impl AttentionConfig {
    /// A causal config with RoPE, the usual `1/sqrt(head_dim)` scale and no window.
    pub fn new(
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        rope: Option<Arc<RopeTable>>,
        rope_layout: RopeLayout,
    ) -> AttentionConfig {
        AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            rope,
            rope_layout,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: None,
            causal: true,
        }
    }
}

/// Self-attention: `x -> Wo · softmax(q kᵀ · scale + mask) v` with `q, k, v`
/// projected from `x`, RoPE applied at each row's absolute position, and the
/// keys and values of every position kept in a cache sized once from the
/// context length. Optional per-head RMS norms on q and k (Gemma 3).
///
/// Input rows are consecutive positions starting at `ctx.pos`; the cache holds
/// everything before. Positions past the cache are an error, not a panic.
///
/// ```
/// use std::sync::Arc;
/// use patchbay_blocks::{Attention, AttentionConfig, Linear};
/// use patchbay_combinators::{Capacity, Ctx, Layer};
/// use patchbay_primitives::rope::{RopeLayout, RopeTable};
/// use patchbay_primitives::{Act, Simd, Tensor, Threads};
/// let eye = |n: usize| {
///     let mut v = vec![0.0; n * n];
///     (0..n).for_each(|i| v[i * n + i] = 1.0);
///     Linear::new(Tensor::from_f32(&v, vec![n, n]).unwrap(), None).unwrap()
/// };
/// let rope = Arc::new(RopeTable::new(2, 10000.0, 8));
/// let cfg = AttentionConfig::new(2, 1, 2, Some(rope), RopeLayout::HalfSplit);
/// let attn = Attention::new(cfg, eye(4), Linear::new(Tensor::from_f32(&[1., 0., 0., 0., 0., 1., 0., 0.], vec![2, 4]).unwrap(), None).unwrap(),
///                           Linear::new(Tensor::from_f32(&[0., 0., 1., 0., 0., 0., 0., 1.], vec![2, 4]).unwrap(), None).unwrap(), eye(4)).unwrap();
/// let threads = Threads::single();
/// let ctx = Ctx::new(Simd::detect(), &threads);
/// let mut st = attn.new_state(Capacity::new(4, 8));
/// let x = Act::from_vec(1, 4, vec![1.0, 0.0, 5.0, 6.0]).unwrap();
/// // A single position attends only to itself: the output is its value.
/// let y = attn.apply(&x, &mut st, &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[5.0, 6.0, 5.0, 6.0]);
/// // Past the cache: an error.
/// assert!(attn.apply(&x, &mut st, &ctx.at(8)).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Attention {
    cfg: AttentionConfig,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    dim: usize,
}

/// The KV cache and scratch of one [`Attention`] layer.
#[derive(Debug)]
pub struct AttentionState {
    /// Keys, `[kv_head][position][head_dim]`.
    k_cache: Vec<f32>,
    /// Values, same layout.
    v_cache: Vec<f32>,
    max_context: usize,
    /// Positions filled so far (for diagnostics; the caller's `pos` rules).
    len: usize,
    q: Act,
    k: Act,
    v: Act,
    normed: Act,
    out: Act,
    scores: Vec<f32>,
    lin: [LinearState; 4],
}

impl AttentionState {
    /// Positions currently held in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Attention {
    /// Attention from its four projections (`wq: heads*hd x d`, `wk`, `wv:
    /// kv*hd x d`, `wo: d x heads*hd`).
    pub fn new(
        cfg: AttentionConfig,
        wq: Linear,
        wk: Linear,
        wv: Linear,
        wo: Linear,
    ) -> Result<Attention, BlockError> {
        let (h, kv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        if h == 0 || kv == 0 || h % kv != 0 {
            return Err(BlockError::Config(format!(
                "attention heads {h} must be a positive multiple of kv heads {kv}"
            )));
        }
        let dim = wq.in_dim();
        let checks = [
            ("attn_q", wq.out_dim(), h * hd, wq.in_dim(), dim),
            ("attn_k", wk.out_dim(), kv * hd, wk.in_dim(), dim),
            ("attn_v", wv.out_dim(), kv * hd, wv.in_dim(), dim),
            ("attn_output", wo.in_dim(), h * hd, wo.out_dim(), dim),
        ];
        for (what, a, ea, b, eb) in checks {
            if a != ea || b != eb {
                return Err(BlockError::Config(format!(
                    "{what}: shape does not fit {h} heads x {hd} (kv {kv}) on width {dim}"
                )));
            }
        }
        if let Some(t) = &cfg.rope {
            if t.rot_dim() > hd || t.rot_dim() % 2 != 0 {
                return Err(BlockError::Config(format!(
                    "rope dimension {} does not fit head size {hd}",
                    t.rot_dim()
                )));
            }
        }
        Ok(Attention {
            cfg,
            wq: wq.named("attn_q"),
            wk: wk.named("attn_k"),
            wv: wv.named("attn_v"),
            wo: wo.named("attn_output"),
            q_norm: None,
            k_norm: None,
            dim,
        })
    }

    /// Adds per-head RMS norms on queries and keys (weights of `head_dim`).
    pub fn with_qk_norm(mut self, q: RmsNorm, k: RmsNorm) -> Result<Attention, BlockError> {
        let hd = self.cfg.head_dim;
        if q.in_dim() != hd || k.in_dim() != hd {
            return Err(BlockError::Config(format!(
                "q/k norm widths {} / {} differ from head size {hd}",
                q.in_dim(),
                k.in_dim()
            )));
        }
        self.q_norm = Some(q);
        self.k_norm = Some(k);
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &AttentionConfig {
        &self.cfg
    }
}

impl Layer for Attention {
    type State = AttentionState;

    fn in_dim(&self) -> usize {
        self.dim
    }
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn new_state(&self, cap: Capacity) -> AttentionState {
        let (h, kv, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let ctx_len = match self.cfg.rope.as_ref() {
            Some(t) => cap.max_context.min(t.max_pos()),
            None => cap.max_context,
        };
        let rows = cap.max_rows;
        AttentionState {
            k_cache: vec![0.0; kv * ctx_len * hd],
            v_cache: vec![0.0; kv * ctx_len * hd],
            max_context: ctx_len,
            len: 0,
            q: Act::with_capacity(rows, h * hd),
            k: Act::with_capacity(rows, kv * hd),
            v: Act::with_capacity(rows, kv * hd),
            normed: Act::with_capacity(rows, h * hd),
            out: Act::with_capacity(rows, h * hd),
            scores: vec![0.0; ctx_len],
            lin: Default::default(),
        }
    }
    fn reset(&self, st: &mut AttentionState) {
        st.len = 0;
    }
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut AttentionState,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        check_in("Attention", self.dim, x)?;
        let m = x.rows();
        let (h, kv, hd) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        let pos = ctx.pos;
        let end = pos.saturating_add(m);
        if end > st.max_context {
            return Err(LayerError::ContextFull {
                layer: "Attention",
                pos: end,
                max_context: st.max_context,
            });
        }
        let [lq, lk, lv, lo] = &mut st.lin;
        self.wq.forward(x, &mut st.q, lq, ctx)?;
        self.wk.forward(x, &mut st.k, lk, ctx)?;
        self.wv.forward(x, &mut st.v, lv, ctx)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            for r in 0..m {
                st.normed.reshape(1, h * hd);
                qn.apply_row(ctx.simd, st.q.row(r), st.normed.as_mut_slice());
                st.q.row_mut(r).copy_from_slice(st.normed.as_slice());
                st.normed.reshape(1, kv * hd);
                kn.apply_row(ctx.simd, st.k.row(r), st.normed.as_mut_slice());
                st.k.row_mut(r).copy_from_slice(st.normed.as_slice());
            }
        }
        if let Some(table) = &self.cfg.rope {
            for r in 0..m {
                rope::rope(
                    ctx.simd,
                    table,
                    self.cfg.rope_layout,
                    st.q.row_mut(r),
                    hd,
                    pos + r,
                );
                rope::rope(
                    ctx.simd,
                    table,
                    self.cfg.rope_layout,
                    st.k.row_mut(r),
                    hd,
                    pos + r,
                );
            }
        }
        // Append this batch's keys and values to the cache.
        let cap = st.max_context;
        for r in 0..m {
            let t = pos + r;
            for g in 0..kv {
                let dst = (g * cap + t) * hd;
                st.k_cache[dst..dst + hd].copy_from_slice(&st.k.row(r)[g * hd..(g + 1) * hd]);
                st.v_cache[dst..dst + hd].copy_from_slice(&st.v.row(r)[g * hd..(g + 1) * hd]);
            }
        }
        st.len = end;
        // Scores, softmax and the weighted sum of values, per row and head.
        let group = h / kv;
        st.out.reshape(m, h * hd);
        st.out.as_mut_slice().fill(0.0);
        for r in 0..m {
            let t_end = if self.cfg.causal { pos + r + 1 } else { end };
            let t_start = match self.cfg.window {
                Some(w) => t_end.saturating_sub(w),
                None => 0,
            };
            let n = t_end - t_start;
            for head in 0..h {
                let g = head / group;
                let q = &st.q.row(r)[head * hd..(head + 1) * hd];
                let scores = &mut st.scores[..n];
                let base = g * cap;
                for (i, s) in scores.iter_mut().enumerate() {
                    let k0 = (base + t_start + i) * hd;
                    *s = kernels::dot(ctx.simd, q, &st.k_cache[k0..k0 + hd]) * self.cfg.scale;
                }
                kernels::softmax(ctx.simd, scores);
                let out = &mut st.out.row_mut(r)[head * hd..(head + 1) * hd];
                for (i, &wgt) in scores.iter().enumerate() {
                    let v0 = (base + t_start + i) * hd;
                    kernels::axpy(ctx.simd, wgt, &st.v_cache[v0..v0 + hd], out);
                }
            }
        }
        self.wo.forward(&st.out, y, lo, ctx)
    }
    fn describe(&self) -> Node {
        let c = &self.cfg;
        let mut detail = format!(
            "heads={} kv={} head_dim={}",
            c.n_heads, c.n_kv_heads, c.head_dim
        );
        if let Some(t) = &c.rope {
            detail.push_str(&format!(" rope={:?}/{}", c.rope_layout, t.rot_dim()));
        }
        if let Some(w) = c.window {
            detail.push_str(&format!(" window={w}"));
        }
        let mut children = vec![self.wq.describe(), self.wk.describe(), self.wv.describe()];
        if let (Some(q), Some(k)) = (&self.q_norm, &self.k_norm) {
            children.push(q.describe());
            children.push(k.describe());
        }
        children.push(self.wo.describe());
        Node::wiring("Attention", self.dim, self.dim, children).with_detail(detail)
    }
}
