//! Decoding a token performs no heap allocation in steady state
//! (DESIGN.md principle 3), proven with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use patchbay_blocks::{Sampler, SamplerConfig};
use patchbay_combinators::{Capacity, Ctx, Layer, Loop, Series, Step};
use patchbay_models::catalog;
use patchbay_models::families::llama;
use patchbay_models::families::BuildOptions;
use patchbay_models::formats::source::ModelSource;
use patchbay_primitives::{Act, Simd, Threads};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decoding_steps_do_not_allocate() {
    let path = catalog::resolve_model("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
    let source = ModelSource::open(path).unwrap();
    let model = llama::build(
        &source,
        &BuildOptions {
            max_context: 128,
            plan: None,
        },
    )
    .unwrap();
    let cfg = SamplerConfig {
        temperature: 0.8,
        repeat_penalty: 1.1,
        ..SamplerConfig::default()
    };
    let sampler = Sampler::new(model.info.vocab, cfg).unwrap();
    let decoder = Loop::autoregressive(Series::new(&model.net, sampler), 64);
    for threads in [1, 2] {
        let threads = Threads::new(threads);
        let scratch = patchbay_combinators::Scratch::new();
        let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
        let mut st = decoder.new_state(Capacity::new(8, 128));
        let prompt = Act::from_tokens(&[504, 3575, 282, 4649, 314]);
        let mut counts = Vec::with_capacity(64);
        decoder
            .run(&prompt, &mut st, &ctx, 40, |step, _| {
                counts.push(ALLOCATIONS.load(Ordering::Relaxed));
                let _ = step;
                Step::Continue
            })
            .unwrap();
        // Steps 0-3 may size lazily-grown scratch; from then on, nothing.
        let steady = counts[39] - counts[4];
        assert_eq!(
            steady,
            0,
            "{} threads: {steady} allocations in 35 decode steps",
            threads.count()
        );
    }
}
