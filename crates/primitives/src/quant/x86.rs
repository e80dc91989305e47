//! What the x86-64 kernels share: the CPU features each family needs, and
//! how far ahead the weight streams prefetch.

/// Whether the CPU has the AVX-512 features (F, BW, VL, VNNI) and F16C/FMA
/// that the AVX-512 int16 kernels are compiled for.
pub fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("f16c")
        && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the CPU has AVX2, FMA and F16C, which the AVX2 kernels are compiled for.
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// How far ahead the kernels that read consecutive rows `tile_bytes` at a
/// time prefetch, with `left_bytes` of their rows after this tile: a whole
/// number of tiles, so that each row's stream asks for the same offset of a
/// row not yet read (a plain distance lands inside the tile being read), at
/// least [`TILE_PREFETCH`] bytes but never past the rows left, which other
/// threads may be reading (0 when none are left: the block being read).
/// Streaming Q8_0 matrices too large for the caches (4864 x 640 and
/// 4864 x 1024, one thread, AVX-512 on AMD Zen 5) went from 7-8 to 15-18
/// GB/s for the exact kernel (and from 11-13 to 18-25 for an int8 one since
/// removed).
pub(super) fn tile_ahead(tile_bytes: usize, left_bytes: usize) -> usize {
    tile_ahead_by(TILE_PREFETCH, tile_bytes, left_bytes)
}

/// [`tile_ahead`] with a least distance of `least` bytes.
pub(super) fn tile_ahead_by(least: usize, tile_bytes: usize, left_bytes: usize) -> usize {
    let tile = tile_bytes.max(1);
    (least.div_ceil(tile) * tile).min(left_bytes / tile * tile)
}

/// The least distance of [`tile_ahead`]: about the bytes in flight that hide
/// the memory latency at full read bandwidth.
const TILE_PREFETCH: usize = 8192;
