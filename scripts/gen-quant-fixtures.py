#!/usr/bin/env python3
"""Generate the GGML block-format fixtures of crates/primitives/tests/quant.rs.

Needs `pip install gguf numpy`. For each format, writes into
crates/primitives/tests/fixtures/quant/:

  <name>.blocks   random blocks (raw GGML bytes; f16 scales kept finite)
  <name>.deq      their dequantisation by gguf.quants, little-endian f32
and, for the formats gguf-py can quantise (ggml's reference quantisers):
  <name>.qin      random f32 input values
  <name>.qout     gguf.quants.quantize of them (raw GGML bytes)

Deterministic (fixed seed): re-running reproduces the committed files.
"""
import os
import numpy as np
from gguf import GGMLQuantizationType as T, quants
from gguf.constants import GGML_QUANT_SIZES

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "primitives", "tests", "fixtures", "quant")

# name -> (type, byte offsets of f16 scale fields inside a block)
FORMATS = {
    "q4_0": (T.Q4_0, [0]),
    "q4_1": (T.Q4_1, [0, 2]),
    "q5_0": (T.Q5_0, [0]),
    "q5_1": (T.Q5_1, [0, 2]),
    "q8_0": (T.Q8_0, [0]),
    "q4_k": (T.Q4_K, [0, 2]),
    "q5_k": (T.Q5_K, [0, 2]),
    "q6_k": (T.Q6_K, [208]),
    "f16": (T.F16, None),
    "bf16": (T.BF16, None),
}
QUANTISABLE = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "bf16"]


def main():
    rng = np.random.default_rng(20240611)
    os.makedirs(OUT, exist_ok=True)
    for name, (qt, scale_offsets) in FORMATS.items():
        block_len, block_bytes = GGML_QUANT_SIZES[qt]
        n_blocks = 8 if block_len == 256 else (64 if block_len == 1 else 16)
        if scale_offsets is None:
            # Plain 16-bit floats: random finite values of both signs.
            vals = rng.normal(0, 3, size=n_blocks * block_len).astype(np.float32)
            if qt == T.F16:
                raw = vals.astype(np.float16).view(np.uint8)
            else:
                raw = quants.quantize(vals, qt)
        else:
            raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
            for off in scale_offsets:
                # Finite f16 scales of both signs and varied magnitudes (some zero).
                s = (rng.normal(0, 1, n_blocks) * 10.0 ** rng.integers(-4, 1, n_blocks)).astype(np.float16)
                s[0] = 0
                raw[:, off:off + 2] = s.view(np.uint8).reshape(n_blocks, 2)
        raw = np.ascontiguousarray(raw).reshape(-1)
        deq = quants.dequantize(raw, qt).astype("<f4").reshape(-1)
        assert deq.size == n_blocks * block_len and np.all(np.isfinite(deq)), name
        raw.tofile(os.path.join(OUT, f"{name}.blocks"))
        deq.tofile(os.path.join(OUT, f"{name}.deq"))
        if name in QUANTISABLE:
            x = rng.normal(0, 1, size=8 * 32).astype(np.float32)
            x[:32] = 0.0  # an all-zero block (d = 0)
            x[32:64] *= 1e-3
            x[64:96] += 2.0  # all-positive block (Q4_1 min > 0)
            q = quants.quantize(x, qt).reshape(-1)
            x.astype("<f4").tofile(os.path.join(OUT, f"{name}.qin"))
            q.tofile(os.path.join(OUT, f"{name}.qout"))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
