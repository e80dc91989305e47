//! f32 matrix products: `matmul` (prefill, compute-bound), `matvec` (decode,
//! memory-bound) and `matmul_sequential` (encoders) beside `matmul`.
//!
//! Throughput is reported so rates read off directly: for `matmul` the element
//! count is the FLOP count `2 m n k` (criterion's "elem/s" is FLOP/s), for
//! `matvec` it is the bytes of weights streamed (`4 n k`).
//!
//! Run briefly: `cargo bench -p patchbay-benches --bench matmul -- --warm-up-time 1 --measurement-time 2`

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use patchbay_primitives::gemm::matmul_sequential;
use patchbay_primitives::matmul::{matmul, matvec};
use patchbay_primitives::{MatRef, Simd, Threads};
use std::hint::black_box;

fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn bench_matmul(c: &mut Criterion) {
    let s = Simd::detect();
    let mut g = c.benchmark_group("matmul_f32");
    for (size, nthreads) in [(64, 1), (128, 1), (256, 1), (512, 1), (1024, 1), (1024, 2)] {
        let threads = Threads::new(nthreads);
        let x = values(size * size, 1);
        let w = values(size * size, 2);
        let mut y = vec![0.0f32; size * size];
        g.throughput(Throughput::Elements(2 * (size as u64).pow(3)));
        g.bench_function(
            BenchmarkId::new(format!("{size}^3"), format!("{nthreads}t")),
            |b| {
                let xv = MatRef::new(&x, size, size).unwrap();
                let wv = MatRef::new(&w, size, size).unwrap();
                b.iter(|| matmul(s, &threads, black_box(xv), black_box(wv), &mut y).unwrap())
            },
        );
    }
    g.finish();
}

fn bench_matvec(c: &mut Criterion) {
    let s = Simd::detect();
    let mut g = c.benchmark_group("matvec_f32");
    for (n, k) in [(4096, 4096), (576, 1536)] {
        let w = values(n * k, 3);
        let x = values(k, 4);
        let mut y = vec![0.0f32; n];
        g.throughput(Throughput::Bytes((4 * n * k) as u64));
        for nthreads in [1, 2] {
            let threads = Threads::new(nthreads);
            g.bench_function(
                BenchmarkId::new(format!("{n}x{k}"), format!("{nthreads}t")),
                |b| {
                    let wv = MatRef::new(&w, n, k).unwrap();
                    b.iter(|| matvec(s, &threads, black_box(wv), black_box(&x), &mut y).unwrap())
                },
            );
        }
    }
    g.finish();
}

/// The two orders side by side on an encoder's shapes (all-MiniLM-L6-v2, a
/// group of 32 WikiText-2 lines: about 3,200 rows; q/k/v, up and down
/// projections), at every SIMD level the machine has.
fn bench_encoder_shapes(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul_encoder_f32");
    let m = 3168;
    for (k, n) in [(384, 384), (384, 1536), (1536, 384)] {
        let x = values(m * k, 5);
        let w = values(n * k, 6);
        let mut y = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        for s in Simd::available() {
            for nthreads in [1, 2] {
                let threads = Threads::new(nthreads);
                let xv = MatRef::new(&x, m, k).unwrap();
                let wv = MatRef::new(&w, n, k).unwrap();
                let id = |order: &str| {
                    BenchmarkId::new(
                        format!("{order}/{m}x{k}x{n}"),
                        format!("{}/{nthreads}t", s.level()),
                    )
                };
                g.bench_function(id("lanes"), |b| {
                    b.iter(|| matmul(s, &threads, black_box(xv), black_box(wv), &mut y).unwrap())
                });
                g.bench_function(id("sequential"), |b| {
                    b.iter(|| {
                        matmul_sequential(s, &threads, black_box(xv), black_box(wv), &mut y)
                            .unwrap()
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench_matmul, bench_matvec, bench_encoder_shapes);
criterion_main!(benches);
