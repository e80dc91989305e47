//! A persistent worker pool shared by the kernels that split work across cores.
//!
//! Work is always split by *output element*: each output is reduced entirely
//! inside one thread in a fixed order, so results are bit-identical for any
//! thread count (DESIGN.md principle 5).

use std::sync::Arc;

/// A handle on a fixed-size pool of worker threads (cheap to clone).
#[derive(Clone)]
pub struct Threads {
    pool: Option<Arc<rayon::ThreadPool>>,
    n: usize,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Threads({})", self.n)
    }
}

impl Threads {
    /// A pool of `n` threads (`n = 0` means one per available core).
    ///
    /// With one thread no pool is created and work runs on the caller.
    pub fn new(n: usize) -> Threads {
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            n
        };
        if n == 1 {
            return Threads::single();
        }
        match rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("patchbay-{i}"))
            .build()
        {
            Ok(pool) => Threads {
                pool: Some(Arc::new(pool)),
                n,
            },
            // Could not spawn workers (resource limits): degrade to the caller's thread.
            Err(_) => Threads::single(),
        }
    }

    /// Runs everything on the calling thread.
    pub fn single() -> Threads {
        Threads { pool: None, n: 1 }
    }

    /// Number of threads work is split across.
    pub fn count(&self) -> usize {
        self.n
    }

    /// The rayon pool, when there is more than one thread.
    pub fn pool(&self) -> Option<&rayon::ThreadPool> {
        self.pool.as_deref()
    }

    /// Calls `f(chunk_index, chunk)` on `out` cut into chunks of `chunk_len`
    /// elements (the last may be shorter), spreading chunks over the pool.
    ///
    /// Which thread handles a chunk never changes what it computes.
    pub fn for_each_chunk<T, F>(&self, out: &mut [T], chunk_len: usize, f: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync + Send,
    {
        let chunk_len = chunk_len.max(1);
        match &self.pool {
            // One chunk: waking the pool would cost more than the work saves.
            Some(_) if out.len() <= chunk_len => {
                if !out.is_empty() {
                    f(0, out);
                }
            }
            None => {
                for (i, c) in out.chunks_mut(chunk_len).enumerate() {
                    f(i, c);
                }
            }
            Some(pool) => {
                use rayon::prelude::*;
                pool.install(|| {
                    out.par_chunks_mut(chunk_len)
                        .enumerate()
                        .for_each(|(i, c)| f(i, c))
                });
            }
        }
    }
}

impl Threads {
    /// Calls `f(i)` for every `i` in `0..count`, spreading the calls over the pool.
    ///
    /// For work whose outputs are not one contiguous slice (e.g. column blocks of a
    /// row-major matrix); the caller guarantees the calls touch disjoint data.
    pub fn for_each_index<F>(&self, count: usize, f: F)
    where
        F: Fn(usize) + Sync + Send,
    {
        match &self.pool {
            Some(pool) if count > 1 => {
                use rayon::prelude::*;
                pool.install(|| (0..count).into_par_iter().for_each(&f));
            }
            _ => (0..count).for_each(f),
        }
    }
}

impl Default for Threads {
    fn default() -> Self {
        Threads::single()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_output_once() {
        for n in [1, 2, 3] {
            let t = Threads::new(n);
            let mut out = vec![0usize; 103];
            t.for_each_chunk(&mut out, 10, |ci, c| {
                for (j, v) in c.iter_mut().enumerate() {
                    *v = ci * 10 + j + 1;
                }
            });
            assert!(out.iter().enumerate().all(|(i, &v)| v == i + 1));
        }
    }

    #[test]
    fn indices_visited_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for n in [1, 2, 3] {
            let t = Threads::new(n);
            for count in [0, 1, 7] {
                let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
                t.for_each_index(count, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }
}
