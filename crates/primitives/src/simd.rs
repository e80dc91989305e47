//! Run-time SIMD level selection.
//!
//! Every kernel is written once, generic over [`pulp::Simd`], and dispatched on a
//! [`Simd`] value that names the instruction set to use. [`Simd::detect`] picks the
//! best level the CPU supports, capped by the `PATCHBAY_SIMD` environment variable
//! (`scalar`, `avx2`, `avx512`) so that CI can exercise every path on one machine.
//! Tests iterate [`Simd::available`] to check each level against the scalar
//! float64 references.

use std::sync::OnceLock;

/// An instruction-set level that kernels can be dispatched to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Portable code, no explicit vector instructions.
    Scalar,
    /// x86-64-v3: AVX2 + FMA (8 f32 lanes).
    Avx2,
    /// x86-64-v4: AVX-512 F/BW/CD/DQ/VL (16 f32 lanes).
    Avx512,
}

impl Level {
    /// Parses the spelling accepted by `PATCHBAY_SIMD`.
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "portable" => Some(Level::Scalar),
            "avx2" | "v3" | "x86-64-v3" => Some(Level::Avx2),
            "avx512" | "avx-512" | "v4" | "x86-64-v4" => Some(Level::Avx512),
            _ => None,
        }
    }

    /// The level's name as `PATCHBAY_SIMD` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A SIMD level proven available on this CPU. Cheap to copy; pass it to kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Simd {
    level: Level,
}

fn cpu_supports(level: Level) -> bool {
    match level {
        Level::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => pulp::x86::V3::try_new().is_some(),
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => pulp::x86::V4::try_new().is_some(),
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

fn best_supported() -> Level {
    [Level::Avx512, Level::Avx2]
        .into_iter()
        .find(|&l| cpu_supports(l))
        .unwrap_or(Level::Scalar)
}

impl Simd {
    /// The best level this CPU supports, capped by `PATCHBAY_SIMD` when it is set.
    ///
    /// An unparsable `PATCHBAY_SIMD` is ignored with a one-time warning on stderr,
    /// rather than silently running a level the user did not ask for.
    pub fn detect() -> Simd {
        static DETECTED: OnceLock<Simd> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = best_supported();
            let level = match std::env::var("PATCHBAY_SIMD") {
                Ok(s) => match Level::parse(&s) {
                    Some(cap) => cap.min(best),
                    None => {
                        eprintln!(
                            "warning: PATCHBAY_SIMD={s:?} is not one of scalar, avx2, avx512; using {best}"
                        );
                        best
                    }
                },
                Err(_) => best,
            };
            Simd { level }
        })
    }

    /// A specific level, if this CPU supports it.
    pub fn new(level: Level) -> Option<Simd> {
        cpu_supports(level).then_some(Simd { level })
    }

    /// The portable scalar level, always available.
    pub fn scalar() -> Simd {
        Simd {
            level: Level::Scalar,
        }
    }

    /// Every level this CPU supports, lowest first (for tests and benches).
    pub fn available() -> Vec<Simd> {
        [Level::Scalar, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter_map(Simd::new)
            .collect()
    }

    /// The level this value dispatches to.
    pub fn level(self) -> Level {
        self.level
    }

    /// Runs `op` with the instruction set of this level enabled.
    #[inline(always)]
    pub fn vectorize<Op: pulp::WithSimd>(self, op: Op) -> Op::Output {
        match self.level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => match pulp::x86::V4::try_new() {
                Some(s) => pulp::Simd::vectorize(s, op),
                None => pulp::Simd::vectorize(pulp::Scalar::new(), op),
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => match pulp::x86::V3::try_new() {
                Some(s) => pulp::Simd::vectorize(s, op),
                None => pulp::Simd::vectorize(pulp::Scalar::new(), op),
            },
            _ => pulp::Simd::vectorize(pulp::Scalar::new(), op),
        }
    }
}

impl Default for Simd {
    fn default() -> Self {
        Simd::detect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("AVX2"), Some(Level::Avx2));
        assert_eq!(Level::parse("scalar"), Some(Level::Scalar));
        assert_eq!(Level::parse("avx512"), Some(Level::Avx512));
        assert_eq!(Level::parse("sse9"), None);
        assert!(Level::Scalar < Level::Avx2 && Level::Avx2 < Level::Avx512);
    }

    #[test]
    fn available_starts_with_scalar_and_contains_detected() {
        let all = Simd::available();
        assert_eq!(all[0].level(), Level::Scalar);
        assert!(all.contains(&Simd::detect()));
    }
}
