//! f16 / bf16 <-> f32 conversion at every SIMD level: exhaustive over the 16-bit
//! formats, and `half`'s round-to-nearest-even as the reference for f32 input.

use half::{bf16, f16};
use patchbay_primitives::convert::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use patchbay_primitives::Simd;
use proptest::prelude::*;

fn all_f16() -> Vec<f16> {
    (0..=u16::MAX).map(f16::from_bits).collect()
}

fn all_bf16() -> Vec<bf16> {
    (0..=u16::MAX).map(bf16::from_bits).collect()
}

/// Widening is exact for all 65536 patterns, and narrowing the result gives
/// the same bits back (NaN stays NaN).
#[test]
fn f16_exhaustive_round_trip() {
    let src = all_f16();
    for s in Simd::available() {
        // Odd offsets so the SIMD body and the scalar tail both see every value.
        for off in [0usize, 3] {
            let src = &src[off..];
            let mut wide = vec![0.0f32; src.len()];
            f16_to_f32(s, src, &mut wide);
            for (h, &w) in src.iter().zip(&wide) {
                if h.is_nan() {
                    assert!(w.is_nan(), "{}", s.level());
                } else {
                    assert_eq!(
                        w.to_bits(),
                        h.to_f32().to_bits(),
                        "{} {:#06x}",
                        s.level(),
                        h.to_bits()
                    );
                }
            }
            let mut back = vec![f16::ZERO; src.len()];
            f32_to_f16(s, &wide, &mut back);
            for (h, b) in src.iter().zip(&back) {
                if h.is_nan() {
                    assert!(b.is_nan(), "{}", s.level());
                } else {
                    assert_eq!(b.to_bits(), h.to_bits(), "{}", s.level());
                }
            }
        }
    }
}

#[test]
fn bf16_exhaustive_round_trip() {
    let src = all_bf16();
    for s in Simd::available() {
        for off in [0usize, 5] {
            let src = &src[off..];
            let mut wide = vec![0.0f32; src.len()];
            bf16_to_f32(s, src, &mut wide);
            for (h, &w) in src.iter().zip(&wide) {
                assert_eq!(w.to_bits(), (h.to_bits() as u32) << 16, "{}", s.level());
            }
            let mut back = vec![bf16::ZERO; src.len()];
            f32_to_bf16(s, &wide, &mut back);
            for (h, b) in src.iter().zip(&back) {
                if h.is_nan() {
                    assert!(b.is_nan(), "{}", s.level());
                } else {
                    assert_eq!(b.to_bits(), h.to_bits(), "{}", s.level());
                }
            }
        }
    }
}

/// Halfway cases between two f16 / bf16 values must round to even.
#[test]
fn ties_round_to_even() {
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10 (f16): rounds to 1.
    // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9: rounds up.
    let xs = [
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        65520.0,
        -65520.0,
    ];
    let want = [1.0, 1.0 + 2f32.powi(-9), f32::INFINITY, f32::NEG_INFINITY];
    let xb = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)];
    let wb = [1.0, 1.0 + 2f32.powi(-6)];
    for s in Simd::available() {
        // Repeat to exceed a register so the vector path is exercised too.
        let src: Vec<f32> = xs.iter().copied().cycle().take(40).collect();
        let mut out = vec![f16::ZERO; 40];
        f32_to_f16(s, &src, &mut out);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o.to_f32(), want[i % 4], "{} {}", s.level(), src[i]);
        }
        let src: Vec<f32> = xb.iter().copied().cycle().take(40).collect();
        let mut out = vec![bf16::ZERO; 40];
        f32_to_bf16(s, &src, &mut out);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o.to_f32(), wb[i % 2], "{} {}", s.level(), src[i]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary f32 bit patterns (all classes: subnormal, huge, inf, NaN)
    /// narrow exactly as `half` does; NaN stays NaN.
    #[test]
    fn narrowing_matches_half(bits in prop::collection::vec(any::<u32>(), 1..3000)) {
        let src: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
        for s in Simd::available() {
            let mut h = vec![f16::ZERO; src.len()];
            f32_to_f16(s, &src, &mut h);
            let mut b = vec![bf16::ZERO; src.len()];
            f32_to_bf16(s, &src, &mut b);
            for i in 0..src.len() {
                let (wh, wb) = (f16::from_f32(src[i]), bf16::from_f32(src[i]));
                if src[i].is_nan() {
                    prop_assert!(h[i].is_nan() && b[i].is_nan());
                } else {
                    prop_assert_eq!(h[i].to_bits(), wh.to_bits(), "f16 {} {:e}", s.level(), src[i]);
                    prop_assert_eq!(b[i].to_bits(), wb.to_bits(), "bf16 {} {:e}", s.level(), src[i]);
                }
            }
        }
    }

    /// Ordinary magnitudes, where most values are not representable.
    #[test]
    fn narrowing_matches_half_in_range(src in prop::collection::vec(-70000.0f32..70000.0, 1..3000)) {
        for s in Simd::available() {
            let mut h = vec![f16::ZERO; src.len()];
            f32_to_f16(s, &src, &mut h);
            let mut b = vec![bf16::ZERO; src.len()];
            f32_to_bf16(s, &src, &mut b);
            for i in 0..src.len() {
                prop_assert_eq!(h[i].to_bits(), f16::from_f32(src[i]).to_bits());
                prop_assert_eq!(b[i].to_bits(), bf16::from_f32(src[i]).to_bits());
            }
        }
    }
}
