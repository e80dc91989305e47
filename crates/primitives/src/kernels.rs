//! f32 vector kernels, each written once generic over [`pulp::Simd`] and
//! dispatched on a [`Simd`] level.
//!
//! Conventions shared by every kernel here:
//! - Slices that must have equal lengths are checked with `assert_eq!`: a
//!   mismatch is a programmer error, not a data error.
//! - Nothing allocates.
//! - Reductions (`dot`, `sum`, the statistics of the norms) accumulate in f32
//!   vector registers over blocks of 64 registers (1024 elements at AVX-512,
//!   64 at scalar) with four independent accumulators, so each f32 lane sums
//!   only 16 terms, and add the block totals in f64. This keeps the error
//!   within ~25 ulp of the sum of |terms| at any length, at the cost of one
//!   horizontal add per block.
//!   The summation order depends on the level (lane count) but never on
//!   anything else, so each level is deterministic.
//! - Transcendentals (`exp`, and the sigmoid/erf built on it) use one Cephes-style
//!   polynomial for every level, so levels differ only by FMA contraction
//!   (the scalar level uses unfused multiply-add where the vector levels fuse).

use pulp::{Simd as PSimd, WithSimd};

use crate::simd::Simd;
use crate::tensor::MatRef;

/// Registers per block of a blocked reduction (see the module docs).
const BLOCK_REGS: usize = 64;

/// Declares a `WithSimd` operation struct whose `with_simd` forwards its fields
/// to a generic `#[inline(always)]` implementation function.
macro_rules! simd_op {
    ($name:ident { $($f:ident : $t:ty),* $(,)? } -> $out:ty => $imp:ident) => {
        struct $name<'a> {
            $($f: $t,)*
            _life: std::marker::PhantomData<&'a ()>,
        }
        impl WithSimd for $name<'_> {
            type Output = $out;
            #[inline(always)]
            fn with_simd<S: PSimd>(self, simd: S) -> $out {
                let $name { $($f,)* _life } = self;
                let _ = _life;
                $imp(simd, $($f),*)
            }
        }
    };
}

/// Runs `$imp(simd, args...)` at level `$s` through the op struct `$name`.
macro_rules! run {
    ($s:expr, $name:ident { $($f:ident $(: $v:expr)?),* $(,)? }) => {
        $s.vectorize($name { $($f $(: $v)?,)* _life: std::marker::PhantomData })
    };
}

// ---------------------------------------------------------------------------
// Small generic building blocks.
// ---------------------------------------------------------------------------

// Lane-wise functions are passed to the loop helpers below as small structs
// implementing these traits, not as closures: a closure is a separate function
// without the level's target features, and LLVM does not always inline a large
// one (one with an `exp` inside) into the vectorised caller, which then calls
// every intrinsic out of line.

/// A lane-wise function of one register.
trait F1: Copy {
    fn call<S: PSimd>(self, s: S, x: S::f32s) -> S::f32s;
}
/// A lane-wise function of two registers.
trait F2: Copy {
    fn call<S: PSimd>(self, s: S, a: S::f32s, b: S::f32s) -> S::f32s;
}
/// A lane-wise function of three registers.
trait F3: Copy {
    fn call<S: PSimd>(self, s: S, a: S::f32s, b: S::f32s, c: S::f32s) -> S::f32s;
}

/// Defines a `Copy` struct with f32 parameters implementing `F1`/`F2`/`F3`.
macro_rules! lane_fn {
    ($tr:ident $name:ident { $($p:ident),* } |$s:ident, $($a:ident),+| $body:expr) => {
        #[derive(Clone, Copy)]
        struct $name {
            $($p: f32,)*
        }
        impl $tr for $name {
            #[inline(always)]
            fn call<S: PSimd>(self, $s: S, $($a: S::f32s),+) -> S::f32s {
                let $name { $($p,)* } = self;
                $body
            }
        }
    };
}

lane_fn!(F2 AddF {} |s, a, b| s.add_f32s(a, b));
lane_fn!(F2 MulF {} |s, a, b| s.mul_f32s(a, b));
lane_fn!(F1 ScaleF { alpha } |s, x| s.mul_f32s(x, s.splat_f32s(alpha)));
lane_fn!(F2 AxpyF { alpha } |s, y, x| s.mul_add_e_f32s(s.splat_f32s(alpha), x, y));
lane_fn!(F3 FmaF {} |s, a, b, acc| s.mul_add_e_f32s(a, b, acc));
lane_fn!(F2 SqAccF {} |s, v, acc| s.mul_add_e_f32s(v, v, acc));
lane_fn!(F2 DevSqAccF { mean } |s, v, acc| {
    let d = s.sub_f32s(v, s.splat_f32s(mean));
    s.mul_add_e_f32s(d, d, acc)
});
lane_fn!(F2 ExpAccF { m } |s, v, acc| s.add_f32s(acc, exp_fast_v(s, s.sub_f32s(v, s.splat_f32s(m)))));
lane_fn!(F2 MaxF {} |s, v, acc| {
    // `select(v > acc, v, acc)` rather than `max_f32s`: its NaN behaviour is
    // the same at every level (a NaN compares false and is skipped).
    s.select_f32s(s.greater_than_f32s(v, acc), v, acc)
});
lane_fn!(F2 RmsF { inv } |s, x, w| s.mul_f32s(s.mul_f32s(x, s.splat_f32s(inv)), w));
lane_fn!(F2 LnF { mean, inv } |s, x, w| {
    s.mul_f32s(s.mul_f32s(s.sub_f32s(x, s.splat_f32s(mean)), s.splat_f32s(inv)), w)
});
lane_fn!(F1 SiluF {} |s, x| silu_v(s, x));
lane_fn!(F2 SiluMulF {} |s, g, u| s.mul_f32s(silu_v(s, g), u));
lane_fn!(F1 GeluTanhF {} |s, x| gelu_tanh_v(s, x));
lane_fn!(F2 GeluTanhMulF {} |s, g, u| s.mul_f32s(gelu_tanh_v(s, g), u));
lane_fn!(F1 GeluErfF {} |s, x| gelu_erf_v(s, x));

/// Loads a tail shorter than one register, padding the missing lanes with `fill`.
#[inline(always)]
fn load_tail_fill<S: PSimd>(s: S, tail: &[f32], fill: f32) -> S::f32s {
    // 64 covers any register width pulp supports; copying a few floats is
    // cheaper than a masked select and works for every level.
    let mut buf = [fill; 64];
    buf[..tail.len()].copy_from_slice(tail);
    s.partial_load_f32s(&buf[..S::F32_LANES])
}

/// Applies `f` lane-wise to `y` in place.
#[inline(always)]
fn map1<S: PSimd>(s: S, y: &mut [f32], f: impl F1) {
    let (yh, yt) = S::as_mut_simd_f32s(y);
    for v in yh {
        *v = f.call(s, *v);
    }
    if !yt.is_empty() {
        let v = f.call(s, s.partial_load_f32s(yt));
        s.partial_store_f32s(yt, v);
    }
}

/// `y = f.call(s, y, x)` lane-wise.
#[inline(always)]
fn map2<S: PSimd>(s: S, y: &mut [f32], x: &[f32], f: impl F2) {
    let (yh, yt) = S::as_mut_simd_f32s(y);
    let (xh, xt) = S::as_simd_f32s(x);
    for (v, &w) in yh.iter_mut().zip(xh) {
        *v = f.call(s, *v, w);
    }
    if !yt.is_empty() {
        let v = f.call(s, s.partial_load_f32s(yt), s.partial_load_f32s(xt));
        s.partial_store_f32s(yt, v);
    }
}

/// `out = f.call(s, a, b)` lane-wise.
#[inline(always)]
fn map2_out<S: PSimd>(s: S, a: &[f32], b: &[f32], out: &mut [f32], f: impl F2) {
    let (oh, ot) = S::as_mut_simd_f32s(out);
    let (ah, at) = S::as_simd_f32s(a);
    let (bh, bt) = S::as_simd_f32s(b);
    for ((o, &x), &y) in oh.iter_mut().zip(ah).zip(bh) {
        *o = f.call(s, x, y);
    }
    if !ot.is_empty() {
        let v = f.call(s, s.partial_load_f32s(at), s.partial_load_f32s(bt));
        s.partial_store_f32s(ot, v);
    }
}

/// Blocked reduction of `sum_i f.call(s, a_i, b_i)` (see the module docs), with zero
/// padding of the tail (so `f.call(s, 0, 0)` must be 0).
#[inline(always)]
fn reduce2<S: PSimd>(s: S, a: &[f32], b: &[f32], f: impl F3) -> f64 {
    let mut total = 0.0f64;
    let zero = s.splat_f32s(0.0);
    let block = BLOCK_REGS * S::F32_LANES;
    for (ab, bb) in a.chunks(block).zip(b.chunks(block)) {
        let (ah, at) = S::as_simd_f32s(ab);
        let (bh, bt) = S::as_simd_f32s(bb);
        let (a4, a1) = ah.as_chunks::<4>();
        let (b4, b1) = bh.as_chunks::<4>();
        let mut acc = [zero; 4];
        for (x, y) in a4.iter().zip(b4) {
            acc[0] = f.call(s, x[0], y[0], acc[0]);
            acc[1] = f.call(s, x[1], y[1], acc[1]);
            acc[2] = f.call(s, x[2], y[2], acc[2]);
            acc[3] = f.call(s, x[3], y[3], acc[3]);
        }
        for (i, (&x, &y)) in a1.iter().zip(b1).enumerate() {
            acc[i] = f.call(s, x, y, acc[i]);
        }
        if !at.is_empty() {
            acc[3] = f.call(s, s.partial_load_f32s(at), s.partial_load_f32s(bt), acc[3]);
        }
        let v = s.add_f32s(s.add_f32s(acc[0], acc[1]), s.add_f32s(acc[2], acc[3]));
        total += s.reduce_sum_f32s(v) as f64;
    }
    total
}

/// Blocked reduction of `sum_i f.call(s, x_i)`; the tail is padded with `fill`, so
/// `f.call(s, fill, acc)` must return `acc` (up to rounding).
#[inline(always)]
fn reduce1<S: PSimd>(s: S, x: &[f32], fill: f32, f: impl F2) -> f64 {
    let mut total = 0.0f64;
    let zero = s.splat_f32s(0.0);
    for xb in x.chunks(BLOCK_REGS * S::F32_LANES) {
        let (xh, xt) = S::as_simd_f32s(xb);
        let (x4, x1) = xh.as_chunks::<4>();
        let mut acc = [zero; 4];
        for v in x4 {
            acc[0] = f.call(s, v[0], acc[0]);
            acc[1] = f.call(s, v[1], acc[1]);
            acc[2] = f.call(s, v[2], acc[2]);
            acc[3] = f.call(s, v[3], acc[3]);
        }
        for (i, &v) in x1.iter().enumerate() {
            acc[i] = f.call(s, v, acc[i]);
        }
        if !xt.is_empty() {
            let v = if fill == 0.0 {
                s.partial_load_f32s(xt)
            } else {
                load_tail_fill(s, xt, fill)
            };
            acc[3] = f.call(s, v, acc[3]);
        }
        let v = s.add_f32s(s.add_f32s(acc[0], acc[1]), s.add_f32s(acc[2], acc[3]));
        total += s.reduce_sum_f32s(v) as f64;
    }
    total
}

/// Largest element, ignoring NaN; `-inf` for an empty or all-NaN slice.
#[inline(always)]
fn max_impl<S: PSimd>(s: S, x: &[f32]) -> f32 {
    let ninf = s.splat_f32s(f32::NEG_INFINITY);
    let (xh, xt) = S::as_simd_f32s(x);
    let (x4, x1) = xh.as_chunks::<4>();
    let mut acc = [ninf; 4];
    for v in x4 {
        acc[0] = MaxF {}.call(s, v[0], acc[0]);
        acc[1] = MaxF {}.call(s, v[1], acc[1]);
        acc[2] = MaxF {}.call(s, v[2], acc[2]);
        acc[3] = MaxF {}.call(s, v[3], acc[3]);
    }
    for (i, &v) in x1.iter().enumerate() {
        acc[i] = MaxF {}.call(s, v, acc[i]);
    }
    if !xt.is_empty() {
        acc[3] = MaxF {}.call(s, load_tail_fill(s, xt, f32::NEG_INFINITY), acc[3]);
    }
    let v = MaxF {}.call(
        s,
        MaxF {}.call(s, acc[0], acc[1]),
        MaxF {}.call(s, acc[2], acc[3]),
    );
    s.reduce_max_f32s(v)
}

// ---------------------------------------------------------------------------
// Transcendentals.
// ---------------------------------------------------------------------------

/// Above this `exp` overflows f32 (largest f32 below ln(f32::MAX)).
const EXP_HI: f32 = 88.72283;
/// Below this `exp` rounds to 0 even as a subnormal (ln 2^-150).
const EXP_LO: f32 = -103.97208;
/// Adding 1.5 * 2^23 rounds a float of magnitude < 2^22 to an integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `2^k` for integer-valued `k` in [-126, 127], built from the exponent bits.
#[inline(always)]
fn pow2i<S: PSimd>(s: S, k: S::f32s) -> S::f32s {
    // The low mantissa bits of `k + 1.5*2^23 + 127` hold `k + 127`; shifting
    // them into the exponent field gives 2^k.
    let t = s.add_f32s(k, s.splat_f32s(ROUND_MAGIC + 127.0));
    let bits = s.wrapping_dyn_shl_u32s(s.transmute_u32s_f32s(t), s.splat_u32s(23));
    s.transmute_f32s_u32s(bits)
}

/// The reduction and polynomial every vector `exp` shares: `t` (holding
/// `n = round(x / ln 2)` in its low mantissa bits), `n` and
/// `p = exp(x - n ln 2)`, so that `exp(x) = p 2^n`.
#[inline(always)]
fn exp_reduce<S: PSimd>(s: S, x: S::f32s) -> (S::f32s, S::f32s, S::f32s) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * C1 is exact for |n| < 2^15.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let magic = s.splat_f32s(ROUND_MAGIC);
    // n = round(x / ln 2) by the magic-number trick (exact for |n| < 2^22).
    let t = s.mul_add_e_f32s(x, s.splat_f32s(LOG2E), magic);
    let n = s.sub_f32s(t, magic);
    let r = s.mul_add_e_f32s(n, s.splat_f32s(-C1), x);
    let r = s.mul_add_e_f32s(n, s.splat_f32s(-C2), r);
    let mut p = s.splat_f32s(1.987_569_1e-4);
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(1.398_199_9e-3));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(8.333_452e-3));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(4.166_579_6e-2));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(1.666_666_5e-1));
    p = s.mul_add_e_f32s(p, r, s.splat_f32s(0.5));
    let r2 = s.mul_f32s(r, r);
    p = s.add_f32s(s.mul_add_e_f32s(p, r2, r), s.splat_f32s(1.0));
    (t, n, p)
}

/// `p 2^n` over the whole range of `exp`: subnormal and overflowing results,
/// and `x = +-inf` (the input the reduction came from).
#[inline(always)]
fn exp_scale_full<S: PSimd>(s: S, x: S::f32s, n: S::f32s, p: S::f32s) -> S::f32s {
    // Scale by 2^n in two steps so that n in [-150, 128] (subnormal and
    // near-overflow results) never needs an out-of-range exponent field.
    let n1 = s.min_f32s(s.max_f32s(n, s.splat_f32s(-126.0)), s.splat_f32s(127.0));
    let n2 = s.sub_f32s(n, n1);
    let y = s.mul_f32s(s.mul_f32s(p, pow2i(s, n1)), pow2i(s, n2));
    // Out-of-range inputs (including +-inf) produced garbage above: fix them.
    // NaN compares false on both and keeps the NaN computed from it.
    let y = s.select_f32s(
        s.less_than_f32s(x, s.splat_f32s(EXP_LO)),
        s.splat_f32s(0.0),
        y,
    );
    s.select_f32s(
        s.greater_than_f32s(x, s.splat_f32s(EXP_HI)),
        s.splat_f32s(f32::INFINITY),
        y,
    )
}

/// Vectorised `exp` by the reduction and the full-range scaling alone: the
/// reference the fast path is tested against (about 1-2 ulp over the whole
/// range, subnormal results included; `exp(-inf) = 0`, `exp(+inf) = inf`,
/// NaN propagates).
#[cfg(test)]
#[inline(always)]
fn exp_v<S: PSimd>(s: S, x: S::f32s) -> S::f32s {
    let (_, n, p) = exp_reduce(s, x);
    exp_scale_full(s, x, n, p)
}

/// Within `[-EXP_FAST, EXP_FAST]` `exp` is a normal float (from about
/// 1.6e-38 to 6e37), which [`exp_fast_v`] builds by adding to the exponent
/// field.
const EXP_FAST: f32 = 87.0;

/// Vectorised `exp`, Cephes `expf` polynomial (about 1-2 ulp over the whole
/// range): exactly the bits of the full-range scaling for every input, at about
/// half its work where it matters: the same reduction and polynomial, scaled
/// by `2^n` by adding `n` to the exponent field, which is exact while the
/// result is normal. A vector with a lane outside `[-87, 87]` (rare: softmax
/// terms under 2^-125 of the largest, saturated activations) takes the
/// full-range scaling, which handles subnormal, overflowing and infinite
/// results. NaN propagates.
#[inline(always)]
fn exp_fast_v<S: PSimd>(s: S, x: S::f32s) -> S::f32s {
    let (t, n, p) = exp_reduce(s, x);
    let outside = s.greater_than_f32s(s.abs_f32s(x), s.splat_f32s(EXP_FAST));
    if s.first_true_m32s(outside) < S::F32_LANES {
        return exp_scale_full(s, x, n, p);
    }
    // The low mantissa bits of `t` hold n (two's complement); shifted into
    // the exponent field they add n to p's exponent. For |x| <= 87,
    // -126 <= n <= 126 and the sum stays a normal exponent (p < 1 with
    // n = -126 only when x < -126 ln 2).
    let n_bits = s.wrapping_dyn_shl_u32s(s.transmute_u32s_f32s(t), s.splat_u32s(23));
    s.transmute_f32s_u32s(s.add_u32s(s.transmute_u32s_f32s(p), n_bits))
}

/// `x * sigmoid(x) = x / (1 + exp(-x))`: exp overflow gives `x / inf = -0`,
/// never NaN.
#[inline(always)]
fn silu_v<S: PSimd>(s: S, x: S::f32s) -> S::f32s {
    let e = exp_fast_v(s, s.neg_f32s(x));
    s.div_f32s(x, s.add_f32s(s.splat_f32s(1.0), e))
}

/// GELU, tanh approximation: `0.5 x (1 + tanh(u)) = x * sigmoid(2u)` with
/// `u = sqrt(2/pi) (x + 0.044715 x^3)`; the sigmoid form avoids the
/// cancellation of `1 + tanh(u)` for negative `u` and cannot produce NaN.
#[inline(always)]
fn gelu_tanh_v<S: PSimd>(s: S, x: S::f32s) -> S::f32s {
    // -2u = x * (A + B x^2)
    const A: f32 = -2.0 * 0.797_884_6;
    const B: f32 = A * 0.044_715;
    let x2 = s.mul_f32s(x, x);
    let z = s.mul_f32s(x, s.mul_add_e_f32s(s.splat_f32s(B), x2, s.splat_f32s(A)));
    let e = exp_fast_v(s, z);
    s.div_f32s(x, s.add_f32s(s.splat_f32s(1.0), e))
}

/// `erfc(a)` for `a >= 0`, relative error under 1e-6: `erfc(a) =
/// erfcx(a) exp(-a^2)`, with the scaled `erfcx(a) = t Q(t)`, `t = 1 / (1 +
/// a / 2)`, a degree-8 polynomial fitted (relative least squares, refined
/// towards minimax) on `a` in `[0, 10]`: smooth and slowly varying there, so
/// one `exp` does the work (Numerical Recipes' `erfcc` needs a second one for
/// its exponent polynomial). `exp(-a^2)` is taken as `exp(-hi) (1 - lo)` with
/// `a^2 = hi + lo` exactly, so that the rounding of `a^2` costs no accuracy
/// (`lo^2 < 1e-10` is dropped).
#[inline(always)]
fn erfc_pos_v<S: PSimd>(s: S, a: S::f32s) -> S::f32s {
    let one = s.splat_f32s(1.0);
    let t = s.div_f32s(one, s.mul_add_e_f32s(s.splat_f32s(0.5), a, one));
    const Q: [f32; 9] = [
        -0.059_069_473,
        0.284_577_4,
        -0.487_204_8,
        0.278_072_57,
        -0.026_629_226,
        0.202_688_29,
        0.243_103_43,
        0.282_375_37,
        0.282_086_4,
    ];
    let mut q = s.splat_f32s(Q[0]);
    for &c in &Q[1..] {
        q = s.mul_add_e_f32s(q, t, s.splat_f32s(c));
    }
    // a^2 = hi + lo exactly.
    let hi = s.mul_f32s(a, a);
    let lo = if S::IS_SCALAR {
        // No hardware FMA assumed: Dekker's exact product.
        let split = s.mul_f32s(a, s.splat_f32s(4097.0));
        let ah = s.sub_f32s(split, s.sub_f32s(split, a));
        let al = s.sub_f32s(a, ah);
        let e = s.sub_f32s(s.mul_f32s(ah, ah), hi);
        let e = s.add_f32s(e, s.mul_f32s(s.add_f32s(ah, ah), al));
        s.add_f32s(e, s.mul_f32s(al, al))
    } else {
        s.mul_add_f32s(a, a, s.neg_f32s(hi))
    };
    let e = exp_fast_v(s, s.neg_f32s(hi));
    let e = s.mul_add_e_f32s(s.neg_f32s(e), lo, e);
    s.mul_f32s(s.mul_f32s(t, q), e)
}

/// Exact GELU: `0.5 x erfc(-x / sqrt 2)`.
#[inline(always)]
fn gelu_erf_v<S: PSimd>(s: S, x: S::f32s) -> S::f32s {
    let z = s.mul_f32s(x, s.splat_f32s(-std::f32::consts::FRAC_1_SQRT_2));
    let a = s.abs_f32s(z);
    // erfc(a) < 2e-45 for a > 10: flush there, which also keeps a^2 = inf
    // (huge |x|) from turning into 0 * inf = NaN.
    let c = s.select_f32s(
        s.greater_than_f32s(a, s.splat_f32s(10.0)),
        s.splat_f32s(0.0),
        erfc_pos_v(s, a),
    );
    // erfc(z) = 2 - erfc(-z) for z < 0; there erfc(z) is in [1, 2], so the
    // subtraction loses nothing that matters.
    let e = s.select_f32s(
        s.less_than_f32s(z, s.splat_f32s(0.0)),
        s.sub_f32s(s.splat_f32s(2.0), c),
        c,
    );
    s.mul_f32s(s.mul_f32s(s.splat_f32s(0.5), x), e)
}

// ---------------------------------------------------------------------------
// Generic implementations.
// ---------------------------------------------------------------------------

#[inline(always)]
fn dot_impl<S: PSimd>(s: S, a: &[f32], b: &[f32]) -> f32 {
    reduce2(s, a, b, FmaF {}) as f32
}

#[inline(always)]
fn dot_rows_impl<S: PSimd>(s: S, q: &[f32], rows: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
        *o = dot_impl(s, q, row);
    }
}

#[inline(always)]
fn axpy_rows_impl<S: PSimd>(s: S, weights: &[f32], rows: &[f32], y: &mut [f32]) {
    let d = y.len();
    for (&w, row) in weights.iter().zip(rows.chunks_exact(d)) {
        axpy_impl(s, w, row, y);
    }
}

#[inline(always)]
fn sum_impl<S: PSimd>(s: S, x: &[f32]) -> f32 {
    reduce1(s, x, 0.0, AddF {}) as f32
}

#[inline(always)]
fn axpy_impl<S: PSimd>(s: S, alpha: f32, x: &[f32], y: &mut [f32]) {
    map2(s, y, x, AxpyF { alpha });
}

#[inline(always)]
fn add_impl<S: PSimd>(s: S, a: &[f32], b: &[f32], out: &mut [f32]) {
    map2_out(s, a, b, out, AddF {});
}

#[inline(always)]
fn add_assign_impl<S: PSimd>(s: S, y: &mut [f32], x: &[f32]) {
    map2(s, y, x, AddF {});
}

#[inline(always)]
fn mul_assign_impl<S: PSimd>(s: S, y: &mut [f32], x: &[f32]) {
    map2(s, y, x, MulF {});
}

#[inline(always)]
fn scale_impl<S: PSimd>(s: S, y: &mut [f32], alpha: f32) {
    map1(s, y, ScaleF { alpha });
}

#[inline(always)]
fn argmax_impl<S: PSimd>(s: S, x: &[f32]) -> usize {
    // One vectorised pass over chunks, remembering the first chunk whose
    // maximum is strictly larger than all before it; then a short scalar scan
    // of that chunk. NaN never compares greater or equal, so it is skipped.
    const CHUNK: usize = 256;
    let mut best = f32::NEG_INFINITY;
    let mut best_chunk = 0;
    for (c, xc) in x.chunks(CHUNK).enumerate() {
        let m = max_impl(s, xc);
        if m > best {
            best = m;
            best_chunk = c;
        }
    }
    let start = best_chunk * CHUNK;
    let end = (start + CHUNK).min(x.len());
    match x[start..end].iter().position(|&v| v == best) {
        Some(p) => start + p,
        // Only when no element exceeds -inf: the first -inf, else 0 (empty or
        // all NaN).
        None => x.iter().position(|&v| v == best).unwrap_or(0),
    }
}

#[inline(always)]
fn softmax_impl<S: PSimd>(s: S, x: &mut [f32]) {
    softmax_scaled_impl(s, x, 1.0)
}

/// Softmax of `scale * x` (`scale > 0`), with the bits of scaling in place
/// first: rounding is monotonic, so the largest scaled value is the scaled
/// largest, and each term is rounded the same way in a register.
#[inline(always)]
fn softmax_scaled_impl<S: PSimd>(s: S, x: &mut [f32], scale: f32) {
    let m = max_impl(s, x) * scale;
    if m == f32::NEG_INFINITY {
        // Empty, all -inf (a fully masked row) or all NaN: no mass anywhere.
        // Zeros rather than NaN so that a masked row contributes nothing.
        x.fill(0.0);
        return;
    }
    let (mv, sv) = (s.splat_f32s(m), s.splat_f32s(scale));
    // exp in place, summing as we go (blocked like `reduce1`).
    let mut total = 0.0f64;
    for xb in x.chunks_mut(BLOCK_REGS * S::F32_LANES) {
        let (xh, xt) = S::as_mut_simd_f32s(xb);
        let mut acc0 = s.splat_f32s(0.0);
        let mut acc1 = acc0;
        let (x2, x1) = xh.as_chunks_mut::<2>();
        for v in x2 {
            v[0] = exp_fast_v(s, s.sub_f32s(s.mul_f32s(v[0], sv), mv));
            v[1] = exp_fast_v(s, s.sub_f32s(s.mul_f32s(v[1], sv), mv));
            acc0 = s.add_f32s(acc0, v[0]);
            acc1 = s.add_f32s(acc1, v[1]);
        }
        for v in x1 {
            *v = exp_fast_v(s, s.sub_f32s(s.mul_f32s(*v, sv), mv));
            acc0 = s.add_f32s(acc0, *v);
        }
        if !xt.is_empty() {
            // Padding -inf gives exp = 0, so the padded lanes add nothing.
            let tail = s.mul_f32s(load_tail_fill(s, xt, f32::NEG_INFINITY), sv);
            let e = exp_fast_v(s, s.sub_f32s(tail, mv));
            s.partial_store_f32s(xt, e);
            acc1 = s.add_f32s(acc1, e);
        }
        total += s.reduce_sum_f32s(s.add_f32s(acc0, acc1)) as f64;
    }
    // total >= 1 (the maximum contributes exp(0) = 1), unless m = +inf or a
    // NaN slipped through, in which case NaN is the honest answer.
    let inv = (1.0 / total) as f32;
    scale_impl(s, x, inv);
}

#[inline(always)]
fn log_sum_exp_impl<S: PSimd>(s: S, x: &[f32]) -> f32 {
    let m = max_impl(s, x);
    if m.is_infinite() {
        // -inf: empty or all -inf (log 0). +inf: the sum is infinite.
        return m;
    }
    // Tail padded with -inf: exp(-inf - m) = 0 adds nothing.
    let total = reduce1(s, x, f32::NEG_INFINITY, ExpAccF { m });
    (m as f64 + total.ln()) as f32
}

#[inline(always)]
fn rms_norm_impl<S: PSimd>(s: S, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ss = reduce1(s, x, 0.0, SqAccF {});
    let n = x.len().max(1) as f64;
    let inv = (1.0 / (ss / n + eps as f64).sqrt()) as f32;
    map2_out(s, x, weight, out, RmsF { inv });
}

#[inline(always)]
fn layer_norm_impl<S: PSimd>(
    s: S,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) {
    let n = x.len().max(1) as f64;
    let mean = reduce1(s, x, 0.0, AddF {}) / n;
    let mf = mean as f32;
    // Two-pass variance: no cancellation between E[x^2] and E[x]^2. The tail
    // is padded with the mean itself, so padded lanes add exactly 0.
    let var_sum = reduce1(s, x, mf, DevSqAccF { mean: mf });
    let var = var_sum / n;
    let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
    map2_out(s, x, weight, out, LnF { mean: mf, inv });
    if let Some(b) = bias {
        add_assign_impl(s, out, b);
    }
}

// ---------------------------------------------------------------------------
// WithSimd plumbing.
// ---------------------------------------------------------------------------

simd_op!(DotOp { a: &'a [f32], b: &'a [f32] } -> f32 => dot_impl);
simd_op!(SumOp { x: &'a [f32] } -> f32 => sum_impl);
simd_op!(DotRowsOp { q: &'a [f32], rows: &'a [f32], out: &'a mut [f32] } -> () => dot_rows_impl);
simd_op!(AxpyRowsOp { weights: &'a [f32], rows: &'a [f32], y: &'a mut [f32] } -> () => axpy_rows_impl);
simd_op!(MaxOp { x: &'a [f32] } -> f32 => max_impl);
simd_op!(ArgmaxOp { x: &'a [f32] } -> usize => argmax_impl);
simd_op!(AxpyOp { alpha: f32, x: &'a [f32], y: &'a mut [f32] } -> () => axpy_impl);
simd_op!(AddOp { a: &'a [f32], b: &'a [f32], out: &'a mut [f32] } -> () => add_impl);
simd_op!(AddAssignOp { y: &'a mut [f32], x: &'a [f32] } -> () => add_assign_impl);
simd_op!(MulAssignOp { y: &'a mut [f32], x: &'a [f32] } -> () => mul_assign_impl);
simd_op!(ScaleOp { y: &'a mut [f32], alpha: f32 } -> () => scale_impl);
simd_op!(SoftmaxOp { x: &'a mut [f32] } -> () => softmax_impl);
simd_op!(SoftmaxScaledOp { x: &'a mut [f32], scale: f32 } -> () => softmax_scaled_impl);
simd_op!(LseOp { x: &'a [f32] } -> f32 => log_sum_exp_impl);
simd_op!(RmsNormOp { x: &'a [f32], weight: &'a [f32], eps: f32, out: &'a mut [f32] } -> () => rms_norm_impl);
simd_op!(LayerNormOp {
    x: &'a [f32],
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    eps: f32,
    out: &'a mut [f32],
} -> () => layer_norm_impl);

#[inline(always)]
fn silu_impl<S: PSimd>(s: S, x: &mut [f32]) {
    map1(s, x, SiluF {});
}
#[inline(always)]
fn silu_mul_impl<S: PSimd>(s: S, gate: &mut [f32], up: &[f32]) {
    map2(s, gate, up, SiluMulF {});
}
#[inline(always)]
fn gelu_tanh_impl<S: PSimd>(s: S, x: &mut [f32]) {
    map1(s, x, GeluTanhF {});
}
#[inline(always)]
fn gelu_tanh_mul_impl<S: PSimd>(s: S, gate: &mut [f32], up: &[f32]) {
    map2(s, gate, up, GeluTanhMulF {});
}
#[inline(always)]
fn gelu_erf_impl<S: PSimd>(s: S, x: &mut [f32]) {
    map1(s, x, GeluErfF {});
}

simd_op!(SiluOp { x: &'a mut [f32] } -> () => silu_impl);
simd_op!(SiluMulOp { gate: &'a mut [f32], up: &'a [f32] } -> () => silu_mul_impl);
simd_op!(GeluTanhOp { x: &'a mut [f32] } -> () => gelu_tanh_impl);
simd_op!(GeluTanhMulOp { gate: &'a mut [f32], up: &'a [f32] } -> () => gelu_tanh_mul_impl);
simd_op!(GeluErfOp { x: &'a mut [f32] } -> () => gelu_erf_impl);

// ---------------------------------------------------------------------------
// Public API.
// ---------------------------------------------------------------------------

/// `sum_i a[i] * b[i]`. Lengths must match.
pub fn dot(s: Simd, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    run!(s, DotOp { a, b })
}

/// `out[j] = dot(q, rows[j])` for each `q.len()`-wide row of `rows` (e.g.
/// one query against a block of cached keys): bit for bit what [`dot`] gives
/// on each pair, dispatched once instead of once per row.
pub fn dot_rows(s: Simd, q: &[f32], rows: &[f32], out: &mut [f32]) {
    assert_eq!(
        rows.len(),
        q.len() * out.len(),
        "dot_rows: rows must hold out.len() rows of q.len()"
    );
    if q.is_empty() {
        out.fill(0.0);
        return;
    }
    run!(s, DotRowsOp { q, rows, out })
}

/// `y += weights[j] * rows[j]` for each `y.len()`-wide row of `rows`, in
/// order of `j` (e.g. attention weights times cached values): bit for bit
/// what [`axpy`] gives row after row, dispatched once.
pub fn axpy_rows(s: Simd, weights: &[f32], rows: &[f32], y: &mut [f32]) {
    assert_eq!(
        rows.len(),
        y.len() * weights.len(),
        "axpy_rows: rows must hold weights.len() rows of y.len()"
    );
    if y.is_empty() {
        return;
    }
    run!(s, AxpyRowsOp { weights, rows, y })
}

/// [`axpy_rows`] for `nr` outputs at once: for `r < nr`,
/// `y_r += Σ_j weights[r * w_ld + j] · values.row(j)`, where `y_r` is
/// `y[r * y_ld..r * y_ld + d]` and `values` is `n x d` (e.g. the attention
/// weights of several queries times the same values, cached or strided rows
/// of a projection). Each `y_r` gets bit for bit what [`axpy_rows`] gives it
/// alone (the same multiply-adds in the same order of `j`), but tiles of
/// outputs share the loads of `values` and keep their sums in registers.
pub fn axpy_rows_many(
    s: Simd,
    weights: &[f32],
    w_ld: usize,
    nr: usize,
    values: MatRef<'_>,
    y: &mut [f32],
    y_ld: usize,
) {
    let (n, d) = (values.rows(), values.cols());
    if nr == 0 || d == 0 {
        return;
    }
    assert!(
        weights.len() >= (nr - 1) * w_ld + n && (nr == 1 || w_ld >= n),
        "axpy_rows_many: weights must hold nr rows of values.rows(), w_ld apart"
    );
    assert!(
        y.len() >= (nr - 1) * y_ld + d && (nr == 1 || y_ld >= d),
        "axpy_rows_many: y must hold nr rows of d, y_ld apart"
    );
    run!(
        s,
        AxpyRowsManyOp {
            weights,
            w_ld,
            nr,
            rows: values.as_slice(),
            rows_ld: values.stride(),
            n,
            y,
            y_ld,
            d
        }
    )
}

simd_op!(AxpyRowsManyOp {
    weights: &'a [f32],
    w_ld: usize,
    nr: usize,
    rows: &'a [f32],
    rows_ld: usize,
    n: usize,
    y: &'a mut [f32],
    y_ld: usize,
    d: usize,
} -> () => axpy_rows_many_impl);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn axpy_rows_many_impl<S: PSimd>(
    s: S,
    weights: &[f32],
    w_ld: usize,
    nr: usize,
    rows: &[f32],
    rows_ld: usize,
    n: usize,
    y: &mut [f32],
    y_ld: usize,
    d: usize,
) {
    let mut r0 = 0;
    while r0 < nr {
        // At most six rows: 6 x 2 accumulators, two vectors of `rows` and a
        // broadcast fill the 16 registers of AVX2. Tiles of equal size, so
        // that seven rows are not six and a lone one (whose two chains wait
        // on the multiply-add's latency).
        let left = nr - r0;
        let rt = left.div_ceil(left.div_ceil(6));
        let w = |r: usize| &weights[(r0 + r) * w_ld..(r0 + r) * w_ld + n];
        let y = &mut y[r0 * y_ld..];
        // The first tile reads many rows from memory (the others find them
        // in cache): it fetches ahead.
        let ahead = r0 == 0 && n * rows_ld * 4 >= crate::matmul::STREAM_FROM_BYTES;
        match rt {
            6 => axpy_tile::<S, 6>(s, core::array::from_fn(w), rows, rows_ld, d, y, y_ld, ahead),
            5 => axpy_tile::<S, 5>(s, core::array::from_fn(w), rows, rows_ld, d, y, y_ld, ahead),
            4 => axpy_tile::<S, 4>(s, core::array::from_fn(w), rows, rows_ld, d, y, y_ld, ahead),
            3 => axpy_tile::<S, 3>(s, core::array::from_fn(w), rows, rows_ld, d, y, y_ld, ahead),
            2 => axpy_tile::<S, 2>(s, core::array::from_fn(w), rows, rows_ld, d, y, y_ld, ahead),
            _ => axpy_tile::<S, 1>(s, core::array::from_fn(w), rows, rows_ld, d, y, y_ld, ahead),
        }
        r0 += rt;
    }
}

/// `RT` outputs of [`axpy_rows_many_impl`], two vectors of columns at a time,
/// then one, then the zero-padded tail (what `map2` does for each).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn axpy_tile<S: PSimd, const RT: usize>(
    s: S,
    w: [&[f32]; RT],
    rows: &[f32],
    rows_ld: usize,
    d: usize,
    y: &mut [f32],
    y_ld: usize,
    ahead: bool,
) {
    let lanes = S::F32_LANES;
    let nv = d / lanes;
    let mut c = 0;
    // Few rows (one query's heads, or one row): four vectors of columns at
    // a time, so that enough independent chains hide the multiply-add's
    // latency. Registers: RT x 4 accumulators, four vectors of `rows` and a
    // broadcast; 16 on AVX2 allow two rows, 32 on AVX-512 five.
    let wide = if lanes >= 16 { 5 } else { 2 };
    if RT <= wide {
        while c + 4 <= nv {
            axpy_cols::<S, RT, 4>(s, w, rows, rows_ld, y, y_ld, c * lanes, lanes, ahead);
            c += 4;
        }
    }
    while c + 2 <= nv {
        axpy_cols::<S, RT, 2>(s, w, rows, rows_ld, y, y_ld, c * lanes, lanes, ahead);
        c += 2;
    }
    if c < nv {
        axpy_cols::<S, RT, 1>(s, w, rows, rows_ld, y, y_ld, c * lanes, lanes, ahead);
    }
    if !d.is_multiple_of(lanes) {
        axpy_cols::<S, RT, 1>(s, w, rows, rows_ld, y, y_ld, nv * lanes, d % lanes, ahead);
    }
}

/// Columns `c0..c0 + CV * width` of an [`axpy_tile`]; `width < L` (one
/// partial vector, `CV == 1`) loads and stores only `width` lanes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn axpy_cols<S: PSimd, const RT: usize, const CV: usize>(
    s: S,
    w: [&[f32]; RT],
    rows: &[f32],
    rows_ld: usize,
    y: &mut [f32],
    y_ld: usize,
    c0: usize,
    width: usize,
    ahead: bool,
) {
    let zero = s.splat_f32s(0.0);
    let mut acc = [[zero; CV]; RT];
    for (r, a) in acc.iter_mut().enumerate() {
        for (v, av) in a.iter_mut().enumerate() {
            let at = r * y_ld + c0 + v * width;
            *av = load_part(s, &y[at..at + width]);
        }
    }
    let n = if RT > 0 { w[0].len() } else { 0 };
    for t in 0..n {
        let src = &rows[t * rows_ld + c0..t * rows_ld + c0 + CV * width];
        if ahead {
            crate::matmul::prefetch_ahead(src);
        }
        let mut xv = [zero; CV];
        for (v, x) in xv.iter_mut().enumerate() {
            *x = load_part(s, &src[v * width..(v + 1) * width]);
        }
        for r in 0..RT {
            let b = s.splat_f32s(w[r][t]);
            for v in 0..CV {
                acc[r][v] = s.mul_add_e_f32s(b, xv[v], acc[r][v]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (v, av) in a.iter().enumerate() {
            let at = r * y_ld + c0 + v * width;
            let dst = &mut y[at..at + width];
            match S::as_mut_simd_f32s(dst) {
                ([whole], []) => *whole = *av,
                _ => s.partial_store_f32s(dst, *av),
            }
        }
    }
}

/// A vector of `x` (at most `L` values): a plain load when it is whole, else
/// zero-padded.
#[inline(always)]
fn load_part<S: PSimd>(s: S, x: &[f32]) -> S::f32s {
    match S::as_simd_f32s(x) {
        ([whole], []) => *whole,
        _ => s.partial_load_f32s(x),
    }
}

/// `y[i] += alpha * x[i]`. Lengths must match.
pub fn axpy(s: Simd, alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    run!(s, AxpyOp { alpha, x, y })
}

/// `out[i] = a[i] + b[i]`. Lengths must match.
pub fn add(s: Simd, a: &[f32], b: &[f32], out: &mut [f32]) {
    assert_eq!(a.len(), b.len(), "add: length mismatch");
    assert_eq!(a.len(), out.len(), "add: output length mismatch");
    run!(s, AddOp { a, b, out })
}

/// `y[i] += x[i]`. Lengths must match.
pub fn add_assign(s: Simd, y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "add_assign: length mismatch");
    run!(s, AddAssignOp { y, x })
}

/// `y[i] *= x[i]`. Lengths must match.
pub fn mul_assign(s: Simd, y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "mul_assign: length mismatch");
    run!(s, MulAssignOp { y, x })
}

/// `y[i] *= alpha`.
pub fn scale(s: Simd, y: &mut [f32], alpha: f32) {
    run!(s, ScaleOp { y, alpha })
}

/// `sum_i x[i]` (blocked, f64 across blocks; 0 for empty).
pub fn sum(s: Simd, x: &[f32]) -> f32 {
    run!(s, SumOp { x })
}

/// The largest element, ignoring NaN; `-inf` for an empty (or all-NaN) slice.
pub fn max(s: Simd, x: &[f32]) -> f32 {
    run!(s, MaxOp { x })
}

/// Index of the first occurrence of the largest element, ignoring NaN; 0 for
/// an empty or all-NaN slice.
pub fn argmax(s: Simd, x: &[f32]) -> usize {
    run!(s, ArgmaxOp { x })
}

/// In-place softmax, `exp(x - max) / sum`. `-inf` entries become exactly 0;
/// a row that is entirely `-inf` (fully masked) becomes all zeros, not NaN.
pub fn softmax(s: Simd, x: &mut [f32]) {
    run!(s, SoftmaxOp { x })
}

/// In-place softmax of `scale * x` (attention scores and their scale) in
/// one pass fewer: the bits of multiplying every element by `scale`, then
/// [`softmax`]. A `scale` that is not positive (or NaN) takes exactly that
/// route, since only a positive factor keeps the maximum where it was.
///
/// ```
/// use patchbay_primitives::{kernels, Simd};
/// let s = Simd::detect();
/// let mut a = [1.0f32, 2.0, -3.0];
/// let mut b = a.map(|v| v * 0.5);
/// kernels::softmax_scaled(s, &mut a, 0.5);
/// kernels::softmax(s, &mut b);
/// assert_eq!(a, b);
/// ```
pub fn softmax_scaled(s: Simd, x: &mut [f32], scale: f32) {
    if scale > 0.0 {
        run!(s, SoftmaxScaledOp { x, scale })
    } else {
        self::scale(s, x, scale);
        run!(s, SoftmaxOp { x })
    }
}

/// `ln(sum_i exp(x[i]))`, computed stably around the maximum; `-inf` for an
/// empty or all `-inf` slice.
pub fn log_sum_exp(s: Simd, x: &[f32]) -> f32 {
    run!(s, LseOp { x })
}

/// RMSNorm: `out = x / sqrt(mean(x^2) + eps) * weight`. The sum of squares is
/// accumulated blockwise with an f64 total (see the module docs); elements of
/// magnitude above ~1e19 overflow the f32 squares. Lengths must match.
pub fn rms_norm(s: Simd, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), weight.len(), "rms_norm: weight length mismatch");
    assert_eq!(x.len(), out.len(), "rms_norm: output length mismatch");
    run!(
        s,
        RmsNormOp {
            x,
            weight,
            eps,
            out
        }
    )
}

/// LayerNorm: `out = (x - mean) / sqrt(var + eps) * weight (+ bias)`, with the
/// biased (population) variance computed in two passes. Lengths must match.
pub fn layer_norm(
    s: Simd,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) {
    assert_eq!(x.len(), weight.len(), "layer_norm: weight length mismatch");
    assert_eq!(x.len(), out.len(), "layer_norm: output length mismatch");
    if let Some(b) = bias {
        assert_eq!(x.len(), b.len(), "layer_norm: bias length mismatch");
    }
    run!(
        s,
        LayerNormOp {
            x,
            weight,
            bias,
            eps,
            out
        }
    )
}

/// In-place SiLU, `x * sigmoid(x)`; finite for every finite input.
pub fn silu(s: Simd, x: &mut [f32]) {
    run!(s, SiluOp { x })
}

/// Fused SwiGLU: `gate[i] = silu(gate[i]) * up[i]`. Lengths must match.
pub fn silu_mul(s: Simd, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: length mismatch");
    run!(s, SiluMulOp { gate, up })
}

/// In-place GELU, tanh approximation (`gelu_pytorch_tanh`, llama.cpp's `gelu`):
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_tanh(s: Simd, x: &mut [f32]) {
    run!(s, GeluTanhOp { x })
}

/// In-place exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, relative error about 1e-6.
pub fn gelu_erf(s: Simd, x: &mut [f32]) {
    run!(s, GeluErfOp { x })
}

/// Fused GeGLU: `gate[i] = gelu_tanh(gate[i]) * up[i]`. Lengths must match.
pub fn gelu_tanh_mul(s: Simd, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gelu_tanh_mul: length mismatch");
    run!(s, GeluTanhMulOp { gate, up })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Simd;

    /// Every `x` in `[-88, 88]` at a fine spacing, and the far range: the
    /// fast `exp` must give the bits of the full-range one at every level,
    /// whether or not a vector mixes normal with subnormal or infinite
    /// results.
    struct Compare;

    impl pulp::WithSimd for Compare {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: PSimd>(self, s: S) {
            let lanes = S::F32_LANES;
            let mut xs: Vec<f32> = (-880_000..=880_000).map(|i| i as f32 * 1e-4).collect();
            xs.extend([-0.0, -87.0, -87.0001, -87.3, -90.0, -103.9, -104.0, -1e30]);
            xs.extend([87.0, 87.0001, 88.7, 88.8, 1e30, f32::INFINITY]);
            xs.extend([f32::NEG_INFINITY, f32::NAN]);
            for chunk in xs.chunks(lanes) {
                let mut buf = vec![0.0f32; lanes];
                buf[..chunk.len()].copy_from_slice(chunk);
                let x = S::as_simd_f32s(&buf).0[0];
                let (mut fast, mut full) = (vec![0.0f32; lanes], vec![0.0f32; lanes]);
                S::as_mut_simd_f32s(&mut fast).0[0] = exp_fast_v(s, x);
                S::as_mut_simd_f32s(&mut full).0[0] = exp_v(s, x);
                for i in 0..chunk.len() {
                    let (x, a, b) = (chunk[i], fast[i], full[i]);
                    if x.is_nan() {
                        assert!(a.is_nan(), "exp({x}) = {a}");
                    } else {
                        assert_eq!(a.to_bits(), b.to_bits(), "exp({x}): {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn fast_exp_has_the_bits_of_exp_everywhere() {
        for s in Simd::available() {
            s.vectorize(Compare);
        }
    }
}
