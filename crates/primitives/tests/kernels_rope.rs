//! RoPE against an f64 reference for both layouts and partial rotary, at
//! every SIMD level, plus the GGUF Q/K permutation identity.

use patchbay_primitives::rope::{rope, RopeLayout, RopeTable};
use patchbay_primitives::Simd;
use proptest::prelude::*;

/// f64 reference: angles `pos * freq_scale * base^(-2i/rot)` in f64.
fn rope_ref(
    x: &[f32],
    head_dim: usize,
    rot: usize,
    base: f64,
    freq_scale: f64,
    pos: usize,
    layout: RopeLayout,
) -> Vec<f64> {
    let half = rot / 2;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for h in out.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let theta = pos as f64 * freq_scale * base.powf(-2.0 * i as f64 / rot as f64);
            let (s, c) = theta.sin_cos();
            let (ia, ib) = match layout {
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                RopeLayout::HalfSplit => (i, i + half),
            };
            let (a, b) = (h[ia], h[ib]);
            h[ia] = a * c - b * s;
            h[ib] = a * s + b * c;
        }
    }
    out
}

/// GGUF's llama Q/K permutation restricted to the rotated dims of each head:
/// `y[2i] = x[i]`, `y[2i+1] = x[i + rot/2]` (HF half-split -> interleaved).
fn permute(x: &[f32], head_dim: usize, rot: usize) -> Vec<f32> {
    let half = rot / 2;
    let mut y = x.to_vec();
    for (hy, hx) in y.chunks_exact_mut(head_dim).zip(x.chunks_exact(head_dim)) {
        for i in 0..half {
            hy[2 * i] = hx[i];
            hy[2 * i + 1] = hx[i + half];
        }
    }
    y
}

#[derive(Debug, Clone)]
struct Case {
    head_dim: usize,
    rot: usize,
    pos: usize,
    base: f64,
    x: Vec<f32>,
}

fn case() -> impl Strategy<Value = Case> {
    // head_dim even 2..=256; rot even in 2..=head_dim, often == head_dim.
    (
        1usize..=128,
        1usize..=5,
        0usize..3000,
        prop_oneof![Just(10_000.0f64), Just(1e6), Just(500.0)],
    )
        .prop_flat_map(|(hd2, n_heads, pos, base)| {
            let head_dim = 2 * hd2;
            let rot = prop_oneof![Just(hd2), 1..=hd2].prop_map(|r2: usize| 2 * r2);
            (
                Just(head_dim),
                rot,
                Just(pos),
                Just(base),
                prop::collection::vec(-10.0f32..10.0, head_dim * n_heads),
            )
        })
        .prop_map(|(head_dim, rot, pos, base, x)| Case {
            head_dim,
            rot,
            pos,
            base,
            x,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Both layouts vs f64: per element |got - ref| <= 6e-7 * (|a| + |b|) of
    /// its pair (f32 table entries are within 6e-8 of the f64 cos/sin, plus
    /// two roundings in the rotation).
    #[test]
    fn rope_matches_f64(c in case()) {
        let table = RopeTable::new(c.rot, c.base, c.pos + 1);
        prop_assert_eq!(table.rot_dim(), c.rot);
        prop_assert_eq!(table.max_pos(), c.pos + 1);
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let want = rope_ref(&c.x, c.head_dim, c.rot, c.base, 1.0, c.pos, layout);
            for s in Simd::available() {
                let mut got = c.x.clone();
                rope(s, &table, layout, &mut got, c.head_dim, c.pos);
                for (hi, (hg, hw)) in got.chunks_exact(c.head_dim).zip(want.chunks_exact(c.head_dim)).enumerate() {
                    let hx = &c.x[hi * c.head_dim..(hi + 1) * c.head_dim];
                    for d in 0..c.head_dim {
                        if d >= c.rot {
                            // Partial rotary: the tail of each head is untouched.
                            prop_assert_eq!(hg[d], hx[d]);
                            continue;
                        }
                        let partner = match layout {
                            RopeLayout::Interleaved => d ^ 1,
                            RopeLayout::HalfSplit => if d < c.rot / 2 { d + c.rot / 2 } else { d - c.rot / 2 },
                        };
                        let tol = 6e-7 * (hx[d].abs() + hx[partner].abs()) as f64 + 1e-30;
                        prop_assert!((hg[d] as f64 - hw[d]).abs() <= tol,
                            "{:?} {} head {hi} dim {d}: got {} want {}", layout, s.level(), hg[d], hw[d]);
                    }
                }
            }
        }
    }

    /// The GGUF Q/K permutation identity: Interleaved on permuted data equals
    /// the permutation of HalfSplit on the original, bit for bit.
    #[test]
    fn interleaved_on_permuted_equals_half_split(c in case()) {
        let table = RopeTable::new(c.rot, c.base, c.pos + 1);
        for s in Simd::available() {
            let mut hs = c.x.clone();
            rope(s, &table, RopeLayout::HalfSplit, &mut hs, c.head_dim, c.pos);
            let mut il = permute(&c.x, c.head_dim, c.rot);
            rope(s, &table, RopeLayout::Interleaved, &mut il, c.head_dim, c.pos);
            prop_assert_eq!(il, permute(&hs, c.head_dim, c.rot), "{}", s.level());
        }
    }

    /// Linear scaling: freq_scale multiplies every angle.
    #[test]
    fn freq_scale_matches_f64(c in case(), fs in prop_oneof![Just(0.25f64), Just(0.125)]) {
        let table = RopeTable::with_freq_scale(c.rot, c.base, c.pos + 1, fs);
        let want = rope_ref(&c.x, c.head_dim, c.rot, c.base, fs, c.pos, RopeLayout::HalfSplit);
        for s in Simd::available() {
            let mut got = c.x.clone();
            rope(s, &table, RopeLayout::HalfSplit, &mut got, c.head_dim, c.pos);
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((*g as f64 - w).abs() <= 1.2e-5, "{}: {g} vs {w}", s.level());
            }
        }
    }
}

#[test]
fn position_zero_is_identity() {
    let table = RopeTable::new(64, 10_000.0, 4);
    let x: Vec<f32> = (0..128).map(|i| i as f32 * 0.37 - 9.0).collect();
    for s in Simd::available() {
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let mut y = x.clone();
            rope(s, &table, layout, &mut y, 64, 0);
            assert_eq!(y, x, "{:?} {}", layout, s.level());
        }
    }
}

#[test]
#[should_panic(expected = "outside the table")]
fn position_past_table_panics() {
    let table = RopeTable::new(8, 10_000.0, 4);
    let mut x = vec![0.0f32; 8];
    rope(Simd::detect(), &table, RopeLayout::HalfSplit, &mut x, 8, 4);
}
