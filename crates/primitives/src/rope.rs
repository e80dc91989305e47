//! Rotary position embeddings: precomputed tables, interleaved and half-split layouts.
//!
//! The angle of frequency `i` at position `p` is `p * freq_i` with the inverse
//! frequency `freq_i = base^(-2i / rot_dim)`, optionally rescaled for longer
//! contexts ([`RopeScaling`]: linear position interpolation, Llama 3's
//! per-frequency scaling, or arbitrary per-frequency divisors such as
//! llama.cpp's `rope_freqs` tensor via [`RopeTable::from_inv_freqs`]).
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

/// How a model stretches RoPE beyond its training context (HF `rope_scaling`,
/// llama.cpp `rope.scaling.*`). Every variant keeps the table's layout and
/// only changes the inverse frequencies `base^(-2i / rot_dim)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RopeScaling {
    /// Plain RoPE.
    #[default]
    None,
    /// Linear position interpolation: positions are divided by `factor`, i.e.
    /// every inverse frequency is divided by `factor`.
    Linear {
        /// The divisor (> 0).
        factor: f64,
    },
    /// Llama 3.1's per-frequency scaling (HF `_compute_llama3_parameters`):
    /// frequencies whose wavelength is shorter than
    /// `original_max_position / high_freq_factor` are kept, those longer than
    /// `original_max_position / low_freq_factor` are divided by `factor`, and
    /// those in between are interpolated smoothly,
    /// `(1 - s) * f / factor + s * f` with
    /// `s = (original_max_position / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)`.
    Llama3 {
        /// Divisor of the low frequencies (> 0).
        factor: f64,
        /// Wavelengths above `original_max_position / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was first trained with.
        original_max_position: f64,
    },
}

/// The unscaled inverse frequencies `base^(-2i / rot_dim)`, `i < rot_dim / 2`.
pub fn inv_freqs(rot_dim: usize, base: f64) -> Vec<f64> {
    (0..rot_dim / 2)
        .map(|i| base.powf(-2.0 * i as f64 / rot_dim as f64))
        .collect()
}

impl RopeScaling {
    /// Applies the scaling to unscaled inverse frequencies.
    pub fn apply(&self, freqs: &mut [f64]) {
        match *self {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => freqs.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let low_wavelen = original_max_position / low_freq_factor;
                let high_wavelen = original_max_position / high_freq_factor;
                for f in freqs {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen < high_wavelen {
                        // High frequency: unchanged.
                    } else if wavelen > low_wavelen {
                        *f /= factor;
                    } else {
                        let s = (original_max_position / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - s) * *f / factor + s * *f;
                    }
                }
            }
        }
    }
}

/// Positions between exact `sin_cos` anchors of a [`RopeTable`] (the ones
/// between are rotated on from the last).
const ROPE_ANCHOR: usize = 16;

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
        RopeTable::from_inv_freqs(rot_dim, &freqs, max_pos)
    }

    /// A table whose inverse frequencies are `base^(-2i / rot_dim)` rescaled
    /// by `scaling`. `RopeScaling::None` gives exactly [`RopeTable::new`].
    ///
    /// # Panics
    /// If `rot_dim` is zero or odd.
    pub fn scaled(rot_dim: usize, base: f64, max_pos: usize, scaling: &RopeScaling) -> RopeTable {
        if *scaling == RopeScaling::None {
            return RopeTable::new(rot_dim, base, max_pos);
        }
        let mut freqs = inv_freqs(rot_dim, base);
        scaling.apply(&mut freqs);
        RopeTable::from_inv_freqs(rot_dim, &freqs, max_pos)
    }

    /// A table from explicit inverse frequencies, one per rotated pair
    /// (`freqs.len() == rot_dim / 2`): the angle of pair `i` at position `p`
    /// is `p * freqs[i]`.
    ///
    /// # Panics
    /// If `rot_dim` is zero or odd, or `freqs` has the wrong length.
    pub fn from_inv_freqs(rot_dim: usize, freqs: &[f64], max_pos: usize) -> RopeTable {
        assert!(
            rot_dim > 0 && rot_dim.is_multiple_of(2),
            "RopeTable: rot_dim must be even and > 0, got {rot_dim}"
        );
        let half = rot_dim / 2;
        assert_eq!(
            freqs.len(),
            half,
            "RopeTable: {} frequencies for rot_dim {rot_dim}",
            freqs.len()
        );
        let mut cos = vec![0.0f32; max_pos * half];
        let mut sin = vec![0.0f32; max_pos * half];
        // A rotation by one position's angle carries each pair from one
        // position to the next in f64; an exact `sin_cos` every
        // `ROPE_ANCHOR` positions keeps the drift near 1e-15, far below an
        // f32 step. It is some ten times faster than `sin_cos` everywhere:
        // Gemma 3's two tables of 4096 x 128 pairs took 20 ms of each load.
        for (i, &f) in freqs.iter().enumerate() {
            let (s1, c1) = f.sin_cos();
            let (mut s, mut c) = (0.0f64, 1.0f64);
            for p in 0..max_pos {
                (s, c) = if p % ROPE_ANCHOR == 0 {
                    (p as f64 * f).sin_cos()
                } else {
                    (s * c1 + c * s1, c * c1 - s * s1)
                };
                cos[p * half + i] = c as f32;
                sin[p * half + i] = s as f32;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Largest difference between the `(cos, sin)` rows of two tables.
    fn row_diff(a: &RopeTable, pa: usize, b: &RopeTable, pb: usize) -> f32 {
        let ((ca, sa), (cb, sb)) = (a.row(pa), b.row(pb));
        ca.iter()
            .zip(cb)
            .chain(sa.iter().zip(sb))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn unscaled_tables_are_bit_identical_to_new() {
        for (rot, base) in [(8, 10_000.0), (64, 500_000.0), (128, 1e6)] {
            let a = RopeTable::new(rot, base, 300);
            let b = RopeTable::scaled(rot, base, 300, &RopeScaling::None);
            let c = RopeTable::from_inv_freqs(rot, &inv_freqs(rot, base), 300);
            for t in [&b, &c] {
                assert!(a
                    .cos
                    .iter()
                    .zip(&t.cos)
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
                assert!(a
                    .sin
                    .iter()
                    .zip(&t.sin)
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Linear factor `f` at position `f * q` is the unscaled table at `q`.
        #[test]
        fn linear_scaling_divides_positions(
            half in 1usize..65,
            base in prop::sample::select(vec![10_000.0f64, 500_000.0, 1e6]),
            f in 1usize..9,
            q in 0usize..500,
        ) {
            let rot = 2 * half;
            let plain = RopeTable::new(rot, base, q + 1);
            let lin = RopeTable::scaled(
                rot,
                base,
                f * q + 1,
                &RopeScaling::Linear { factor: f as f64 },
            );
            let d = row_diff(&lin, f * q, &plain, q);
            prop_assert!(d <= 1e-6, "rot {rot} f {f} q {q}: {d}");
        }

        /// Any factor: position `p` gives the angles of position `p / f`.
        #[test]
        fn linear_scaling_matches_fractional_positions(
            half in 1usize..65,
            f in 1.0f64..16.0,
            p in 0usize..2000,
        ) {
            let rot = 2 * half;
            let lin = RopeTable::scaled(rot, 10_000.0, p + 1, &RopeScaling::Linear { factor: f });
            let (c, s) = lin.row(p);
            for i in 0..half {
                let angle = (p as f64 / f) * 10_000f64.powf(-2.0 * i as f64 / rot as f64);
                prop_assert!((c[i] as f64 - angle.cos()).abs() <= 1e-6);
                prop_assert!((s[i] as f64 - angle.sin()).abs() <= 1e-6);
            }
        }
    }

    /// Every entry of a long table (Gemma 3's head size and both of its
    /// bases, and a frequency of 1) is within one f32 step of the rounded
    /// exact `sin_cos`: the rotations between anchors do not drift.
    #[test]
    fn table_stays_within_an_f32_step_of_exact() {
        for (rot, base) in [(256usize, 10_000.0f64), (256, 1_000_000.0), (2, 1.0)] {
            let freqs = if rot == 2 {
                vec![1.0]
            } else {
                inv_freqs(rot, base)
            };
            let table = RopeTable::from_inv_freqs(rot, &freqs, 4096);
            let mut differ = 0usize;
            for p in 0..4096 {
                let (c, s) = table.row(p);
                for (i, &f) in freqs.iter().enumerate() {
                    let (ws, wc) = (p as f64 * f).sin_cos();
                    for (got, want) in [(c[i], wc as f32), (s[i], ws as f32)] {
                        let step = (want.abs().max(f32::MIN_POSITIVE) * f32::EPSILON) as f64;
                        assert!(
                            (got as f64 - want as f64).abs() <= step,
                            "rot {rot} base {base} p {p} i {i}: {got} vs {want}"
                        );
                        differ += usize::from(got != want);
                    }
                }
            }
            // Rounding can land on the other side only when the exact value
            // is within ~1e-15 of a midpoint: a handful of entries at most.
            assert!(
                differ <= 64,
                "rot {rot} base {base}: {differ} entries differ"
            );
        }
    }

    /// HF's `_compute_llama3_parameters`, written out in f64.
    fn llama3_reference(
        rot: usize,
        base: f64,
        factor: f64,
        low: f64,
        high: f64,
        orig: f64,
    ) -> Vec<f64> {
        let low_wavelen = orig / low;
        let high_wavelen = orig / high;
        (0..rot / 2)
            .map(|i| {
                let inv = 1.0 / base.powf((2 * i) as f64 / rot as f64);
                let wavelen = 2.0 * std::f64::consts::PI / inv;
                let scaled = if wavelen > low_wavelen {
                    inv / factor
                } else {
                    inv
                };
                let smooth = (orig / wavelen - low) / (high - low);
                let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                if medium {
                    smoothed
                } else {
                    scaled
                }
            })
            .collect()
    }

    #[test]
    fn llama3_scaling_matches_the_reference() {
        // Llama 3.1's settings, and a narrower band that puts more
        // frequencies in the smooth region.
        let settings = [
            (500_000.0, 8.0, 1.0, 4.0, 8192.0),
            (10_000.0, 4.0, 2.0, 32.0, 1024.0),
        ];
        for (base, factor, low, high, orig) in settings {
            for rot in [8usize, 64, 128] {
                let scaling = RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position: orig,
                };
                let want = llama3_reference(rot, base, factor, low, high, orig);
                let mut got = inv_freqs(rot, base);
                scaling.apply(&mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-12 * w.abs(),
                        "rot {rot} i {i}: {g} vs {w}"
                    );
                }
                // The three bands all occur (head dim 8 included).
                let plain = inv_freqs(rot, base);
                let kept = got.iter().zip(&plain).filter(|(g, p)| g == p).count();
                let divided = got
                    .iter()
                    .zip(&plain)
                    .filter(|(g, p)| (**g - **p / factor).abs() <= 1e-15 * **p)
                    .count();
                assert!(
                    kept > 0 && divided > 0,
                    "rot {rot}: kept {kept} divided {divided}"
                );
                if rot >= 64 {
                    assert!(kept + divided < rot / 2, "rot {rot}: no smooth frequency");
                }
                let table = RopeTable::scaled(rot, base, 5001, &scaling);
                for p in [0usize, 1, 7, 100, 1000, 5000] {
                    let (c, s) = table.row(p);
                    for (i, &w) in want.iter().enumerate() {
                        let a = p as f64 * w;
                        assert!(
                            (c[i] as f64 - a.cos()).abs() <= 1e-6,
                            "rot {rot} p {p} i {i}"
                        );
                        assert!(
                            (s[i] as f64 - a.sin()).abs() <= 1e-6,
                            "rot {rot} p {p} i {i}"
                        );
                    }
                }
            }
        }
    }
}
