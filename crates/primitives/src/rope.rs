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
    pub fn with_freq_scale(rot_dim: usize, base: f64, max_pos: usize, freq_scale: f64) -> RopeTable {
        assert!(
            rot_dim > 0 && rot_dim % 2 == 0,
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
pub fn rope(s: Simd, table: &RopeTable, layout: RopeLayout, x: &mut [f32], head_dim: usize, pos: usize) {
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
        let half = cos.len();
        for head in x.chunks_exact_mut(head_dim) {
            let r = &mut head[..2 * half];
            match layout {
                RopeLayout::HalfSplit => rope_half_split(s, cos, sin, r),
                RopeLayout::Interleaved => rope_interleaved(s, cos, sin, r),
            }
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

#[inline(always)]
fn rope_interleaved<S: PSimd>(s: S, cos: &[f32], sin: &[f32], r: &mut [f32]) {
    // Two registers hold LANES pairs: split them into evens and odds, rotate
    // like the half-split layout, and interleave back.
    let (rh, _) = S::as_mut_simd_f32s(r);
    let (pairs, _) = rh.as_chunks_mut::<2>();
    let (ch, _) = S::as_simd_f32s(cos);
    let (sh, _) = S::as_simd_f32s(sin);
    let mut done = 0;
    for ((v, &c), &sn) in pairs.iter_mut().zip(ch).zip(sh) {
        let [e, o] = s.deinterleave_shfl_f32s(*v);
        let (e2, o2) = rotate(s, e, o, c, sn);
        *v = s.interleave_shfl_f32s([e2, o2]);
        done += 1;
    }
    // Remaining pairs (fewer than LANES): gather, rotate with the same lane
    // arithmetic as above (so both layouts give identical bits), scatter.
    let start = done * S::F32_LANES;
    let rem = cos.len() - start;
    if rem > 0 {
        let mut a = [0.0f32; 64];
        let mut b = [0.0f32; 64];
        for k in 0..rem {
            a[k] = r[2 * (start + k)];
            b[k] = r[2 * (start + k) + 1];
        }
        let (a2, b2) = rotate(
            s,
            s.partial_load_f32s(&a[..rem]),
            s.partial_load_f32s(&b[..rem]),
            s.partial_load_f32s(&cos[start..]),
            s.partial_load_f32s(&sin[start..]),
        );
        s.partial_store_f32s(&mut a[..rem], a2);
        s.partial_store_f32s(&mut b[..rem], b2);
        for k in 0..rem {
            r[2 * (start + k)] = a[k];
            r[2 * (start + k) + 1] = b[k];
        }
    }
}
