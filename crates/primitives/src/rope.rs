//! Rotary position embeddings: precomputed tables, interleaved and half-split layouts.
//!
//! The angle of frequency `i` at position `p` is `p * freq_scale * base^(-2i / rot_dim)`.
//! Tables hold `cos` and `sin` of every angle for positions `0..max_pos`,
//! computed in f64 and stored as f32 (so long contexts do not accumulate the
//! error of an f32 `p * freq`).

use pulp::{Simd as PSimd, WithSimd};

use crate::simd::Simd;

/// How the rotated pairs are laid out inside a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// Pairs `(2i, 2i + 1)`: GGUF llama-family Q/K (llama.cpp `rope` mode 0).
    Interleaved,
    /// Pairs `(i, i + rot_dim / 2)`: NeoX, HF transformers, qwen2, gemma3
    /// (llama.cpp `rope` mode NEOX).
    HalfSplit,
}

/// Precomputed `cos`/`sin` for every position and frequency.
#[derive(Debug, Clone)]
pub struct RopeTable {
    rot_dim: usize,
    max_pos: usize,
    /// `cos[pos * rot_dim / 2 + i]`.
    cos: Vec<f32>,
    /// `sin[pos * rot_dim / 2 + i]`.
    sin: Vec<f32>,
}

impl RopeTable {
    /// A table for `rot_dim` rotated dimensions (even, > 0), frequencies
    /// `base^(-2i / rot_dim)`, positions `0..max_pos`.
    ///
    /// # Panics
    /// If `rot_dim` is zero or odd (a configuration error the caller validates).
    pub fn new(rot_dim: usize, base: f64, max_pos: usize) -> RopeTable {
        RopeTable::with_freq_scale(rot_dim, base, max_pos, 1.0)
    }

    /// Like [`RopeTable::new`] with linear position scaling: every angle is
    /// multiplied by `freq_scale` (llama.cpp's `rope_freq_scale`, i.e. the
    /// reciprocal of HF's linear `rope_scaling.factor`).
    ///
    /// # Panics
    /// If `rot_dim` is zero or odd.
    pub fn with_freq_scale(
        rot_dim: usize,
        base: f64,
        max_pos: usize,
        freq_scale: f64,
    ) -> RopeTable {
        assert!(
            rot_dim > 0 && rot_dim.is_multiple_of(2),
            "RopeTable: rot_dim must be even and > 0, got {rot_dim}"
        );
        let half = rot_dim / 2;
        let freqs: Vec<f64> = (0..half)
            .map(|i| freq_scale * base.powf(-2.0 * i as f64 / rot_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for &f in &freqs {
                let (s, c) = (p as f64 * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        RopeTable {
            rot_dim,
            max_pos,
            cos,
            sin,
        }
    }

    /// Number of rotated dimensions per head.
    pub fn rot_dim(&self) -> usize {
        self.rot_dim
    }

    /// Number of positions in the table (valid positions are `0..max_pos`).
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    /// `(cos, sin)` rows for `pos`, each `rot_dim / 2` long.
    fn row(&self, pos: usize) -> (&[f32], &[f32]) {
        let half = self.rot_dim / 2;
        let r = pos * half..(pos + 1) * half;
        (&self.cos[r.clone()], &self.sin[r])
    }
}

/// Rotates the first `rot_dim` dimensions of every head of one token in place.
///
/// `x` holds `n_heads * head_dim` values (head after head); each head's first
/// `table.rot_dim()` values are rotated by the angles of position `pos`, the
/// rest (partial rotary) are left alone.
///
/// # Panics
/// `pos >= table.max_pos()`, `head_dim < table.rot_dim()` or `x.len()` not a
/// multiple of `head_dim` are programmer errors: the caller sizes the table
/// from the context length and checks positions before calling.
pub fn rope(
    s: Simd,
    table: &RopeTable,
    layout: RopeLayout,
    x: &mut [f32],
    head_dim: usize,
    pos: usize,
) {
    assert!(
        pos < table.max_pos,
        "rope: position {pos} outside the table (max_pos {})",
        table.max_pos
    );
    assert!(
        head_dim >= table.rot_dim,
        "rope: head_dim {head_dim} < rot_dim {}",
        table.rot_dim
    );
    assert_eq!(
        x.len() % head_dim,
        0,
        "rope: x.len() {} not a multiple of head_dim {head_dim}",
        x.len()
    );
    let (cos, sin) = table.row(pos);
    s.vectorize(RopeOp {
        cos,
        sin,
        layout,
        x,
        head_dim,
    })
}

struct RopeOp<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    layout: RopeLayout,
    x: &'a mut [f32],
    head_dim: usize,
}

impl WithSimd for RopeOp<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: PSimd>(self, s: S) {
        let RopeOp {
            cos,
            sin,
            layout,
            x,
            head_dim,
        } = self;
        match layout {
            RopeLayout::HalfSplit => {
                let half = cos.len();
                for head in x.chunks_exact_mut(head_dim) {
                    rope_half_split(s, cos, sin, &mut head[..2 * half]);
                }
            }
            RopeLayout::Interleaved => rope_interleaved(s, cos, sin, x, head_dim),
        }
    }
}

/// `(a, b) -> (a cos - b sin, a sin + b cos)` lane-wise.
#[inline(always)]
fn rotate<S: PSimd>(s: S, a: S::f32s, b: S::f32s, c: S::f32s, sn: S::f32s) -> (S::f32s, S::f32s) {
    let a2 = s.mul_add_e_f32s(a, c, s.neg_f32s(s.mul_f32s(b, sn)));
    let b2 = s.mul_add_e_f32s(a, sn, s.mul_f32s(b, c));
    (a2, b2)
}

#[inline(always)]
fn rope_half_split<S: PSimd>(s: S, cos: &[f32], sin: &[f32], r: &mut [f32]) {
    let (a, b) = r.split_at_mut(cos.len());
    let (ah, at) = S::as_mut_simd_f32s(a);
    let (bh, bt) = S::as_mut_simd_f32s(b);
    let (ch, ct) = S::as_simd_f32s(cos);
    let (sh, st) = S::as_simd_f32s(sin);
    for (((av, bv), &c), &sn) in ah.iter_mut().zip(bh.iter_mut()).zip(ch).zip(sh) {
        (*av, *bv) = rotate(s, *av, *bv, c, sn);
    }
    if !at.is_empty() {
        let (a2, b2) = rotate(
            s,
            s.partial_load_f32s(at),
            s.partial_load_f32s(bt),
            s.partial_load_f32s(ct),
            s.partial_load_f32s(st),
        );
        s.partial_store_f32s(at, a2);
        s.partial_store_f32s(bt, b2);
    }
}

/// Frequencies per chunk of the interleaved path's permuted cos/sin buffers
/// (a multiple of every register width).
const CHUNK: usize = 128;

#[inline(always)]
fn rope_interleaved<S: PSimd>(s: S, cos: &[f32], sin: &[f32], x: &mut [f32], head_dim: usize) {
    let lanes = S::F32_LANES;
    let half = cos.len();
    // Two registers hold `lanes` pairs. pulp's deinterleave splits them into
    // evens and odds, but in a level-specific lane order: lane k of the
    // output holds pair `perm[k]`. Find `perm` by deinterleaving indices, and
    // lay cos/sin out in that order once per call (shared by all heads).
    let mut idx = [0.0f32; 64];
    for (i, v) in idx.iter_mut().enumerate() {
        *v = i as f32;
    }
    let (iv, _) = S::as_simd_f32s(&idx[..2 * lanes]);
    let [pe, _] = s.deinterleave_shfl_f32s([iv[0], iv[1]]);
    let mut perm = [0.0f32; 64];
    s.partial_store_f32s(&mut perm[..lanes], pe);
    let full = half / lanes * lanes;
    let mut pc = [0.0f32; CHUNK];
    let mut ps = [0.0f32; CHUNK];
    for c0 in (0..full).step_by(CHUNK) {
        let n = CHUNK.min(full - c0);
        for r in (0..n).step_by(lanes) {
            for k in 0..lanes {
                let j = c0 + r + perm[k] as usize / 2;
                pc[r + k] = cos[j];
                ps[r + k] = sin[j];
            }
        }
        let (ch, _) = S::as_simd_f32s(&pc[..n]);
        let (sh, _) = S::as_simd_f32s(&ps[..n]);
        for head in x.chunks_exact_mut(head_dim) {
            let (rh, _) = S::as_mut_simd_f32s(&mut head[2 * c0..2 * (c0 + n)]);
            let (pairs, _) = rh.as_chunks_mut::<2>();
            for ((v, &c), &sn) in pairs.iter_mut().zip(ch).zip(sh) {
                let [e, o] = s.deinterleave_shfl_f32s(*v);
                let (e2, o2) = rotate(s, e, o, c, sn);
                *v = s.interleave_shfl_f32s([e2, o2]);
            }
        }
    }
    // Remaining pairs (fewer than `lanes`): gather, rotate with the same lane
    // arithmetic as the half-split tail (so both layouts give identical
    // bits), scatter.
    let rem = half - full;
    if rem == 0 {
        return;
    }
    for head in x.chunks_exact_mut(head_dim) {
        let mut a = [0.0f32; 64];
        let mut b = [0.0f32; 64];
        for k in 0..rem {
            a[k] = head[2 * (full + k)];
            b[k] = head[2 * (full + k) + 1];
        }
        let (a2, b2) = rotate(
            s,
            s.partial_load_f32s(&a[..rem]),
            s.partial_load_f32s(&b[..rem]),
            s.partial_load_f32s(&cos[full..]),
            s.partial_load_f32s(&sin[full..]),
        );
        s.partial_store_f32s(&mut a[..rem], a2);
        s.partial_store_f32s(&mut b[..rem], b2);
        for k in 0..rem {
            head[2 * (full + k)] = a[k];
            head[2 * (full + k) + 1] = b[k];
        }
    }
}
