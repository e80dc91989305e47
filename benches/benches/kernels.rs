//! f32 kernel throughput at 4096 elements (a typical hidden size / attention
//! row): the detected SIMD level and scalar for comparison.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use patchbay_primitives::kernels;
use patchbay_primitives::Simd;

const N: usize = 4096;

fn levels() -> Vec<Simd> {
    let best = Simd::detect();
    if best == Simd::scalar() {
        vec![best]
    } else {
        vec![best, Simd::scalar()]
    }
}

fn data(seed: u32) -> Vec<f32> {
    (0..N as u32)
        .map(|i| {
            ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0) * 8.0 - 4.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let x = data(1);
    let w = data(2);
    let mut g = c.benchmark_group("kernels");
    g.throughput(Throughput::Elements(N as u64));
    for s in levels() {
        let lvl = s.level().name();
        g.bench_function(BenchmarkId::new("dot", lvl), |b| {
            b.iter(|| kernels::dot(s, black_box(&x), black_box(&w)))
        });
        let mut out = vec![0.0f32; N];
        g.bench_function(BenchmarkId::new("rms_norm", lvl), |b| {
            b.iter(|| kernels::rms_norm(s, black_box(&x), black_box(&w), 1e-5, &mut out))
        });
        // Softmax of its own output is as costly as of fresh data (no
        // data-dependent branches), so run it in place.
        let mut y = x.clone();
        g.bench_function(BenchmarkId::new("softmax", lvl), |b| {
            b.iter(|| kernels::softmax(s, black_box(&mut y)))
        });
        let mut gate = x.clone();
        g.bench_function(BenchmarkId::new("silu_mul", lvl), |b| {
            b.iter(|| {
                gate.copy_from_slice(&x);
                kernels::silu_mul(s, black_box(&mut gate), black_box(&w))
            })
        });
        let mut act = x.clone();
        g.bench_function(BenchmarkId::new("gelu_erf", lvl), |b| {
            b.iter(|| {
                act.copy_from_slice(&x);
                kernels::gelu_erf(s, black_box(&mut act))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
