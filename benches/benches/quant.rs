//! Decode matrix-vector products on every weight format (GGML blocks and
//! f32/f16/bf16), at every SIMD level this CPU has: weight bytes streamed per
//! second (criterion prints GB/s from `Throughput::Bytes`).
//!
//! Quick run: `cargo bench -p patchbay-benches --bench quant -- --warm-up-time 1 --measurement-time 2`

#![allow(missing_docs)] // criterion_group! generates undocumented items.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use patchbay_primitives::quant::{exact_rounds_activations, matmul_q, matvec_q};
use patchbay_primitives::{DType, MatRef, Simd, Threads};

/// Random blocks with finite, small f16 scales at the format's scale offsets;
/// small finite values for the float formats.
fn weights(dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let n = dtype.bytes_for(rows * cols).expect("whole blocks");
    let mut state = 0x1234_5678_9abc_def0u64;
    let values = (0..rows * cols).map(|i| ((i as f32) * 0.37).sin() * 0.05);
    match dtype {
        DType::F32 => return values.flat_map(f32::to_le_bytes).collect(),
        DType::F16 => {
            return values
                .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                .collect()
        }
        DType::BF16 => {
            return values
                .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                .collect()
        }
        _ => {}
    }
    let mut w: Vec<u8> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let offs: &[usize] = match dtype {
        DType::Q6_K => &[208],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        _ => &[0],
    };
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    for b in w.chunks_exact_mut(dtype.block_bytes()) {
        for &o in offs {
            b[o..o + 2].copy_from_slice(&scale);
        }
    }
    w
}

fn bench_matvec(c: &mut Criterion) {
    let formats = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];
    // SmolLM2's and Qwen2.5's FFN shapes: 256-element blocks fit both.
    let shapes = [(576, 1536), (896, 4864)];
    let mut g = c.benchmark_group("matvec_q");
    for s in Simd::available() {
        let int16: Vec<String> = formats
            .iter()
            .filter(|d| exact_rounds_activations(s, **d))
            .map(|d| d.to_string())
            .collect();
        eprintln!(
            "simd level {}, int16 activations for {}",
            s.level(),
            int16.join(", ")
        );
        for dtype in formats {
            for (rows, cols) in shapes {
                let w = weights(dtype, rows, cols);
                let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.1).sin()).collect();
                let mut y = vec![0.0f32; rows];
                g.throughput(Throughput::Bytes(w.len() as u64));
                for threads in [1, 2] {
                    let t = Threads::new(threads);
                    let id = format!("{}/{dtype}_{rows}x{cols}/t{threads}", s.level());
                    g.bench_function(BenchmarkId::from_parameter(id), |b| {
                        b.iter(|| matvec_q(s, &t, dtype, &w, rows, cols, &x, &mut y).unwrap())
                    });
                }
            }
        }
    }
    g.finish();
}

fn bench_matmul(c: &mut Criterion) {
    let (rows, cols, m) = (896, 4864, 64);
    let x: Vec<f32> = (0..m * cols).map(|i| (i as f32 * 0.1).sin()).collect();
    let mut y = vec![0.0f32; m * rows];
    let mut g = c.benchmark_group("matmul_q");
    g.throughput(Throughput::Elements((2 * m * rows * cols) as u64));
    // Every format here takes int16 activations at the AVX-512 level (with
    // VNNI) and at AVX2 (and AVX-512 without VNNI), none at scalar. Q4_1,
    // Q4_K, Q6_K, Q5_0 and (some `attn_v`) Q8_0 carry the prefill of
    // SmolLM2, Qwen2.5 and Gemma 3.
    for s in Simd::available() {
        for dtype in [
            DType::Q4_1,
            DType::Q4_K,
            DType::Q6_K,
            DType::Q5_0,
            DType::Q8_0,
        ] {
            let w = weights(dtype, rows, cols);
            for threads in [1, 2] {
                let t = Threads::new(threads);
                let id = format!(
                    "{}/{dtype}_{rows}x{cols}_m{m}/t{threads} (elements = flop)",
                    s.level()
                );
                g.bench_function(BenchmarkId::from_parameter(id), |b| {
                    b.iter(|| {
                        let xm = MatRef::new(&x, m, cols).unwrap();
                        matmul_q(s, &t, dtype, &w, rows, cols, xm, &mut y).unwrap()
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench_matvec, bench_matmul);
criterion_main!(benches);
