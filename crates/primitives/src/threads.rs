//! A persistent worker pool shared by the kernels that split work across cores.
//!
//! Work is always split by *output element*: each output is reduced entirely
//! inside one thread in a fixed order, so results are bit-identical for any
//! thread count (DESIGN.md principle 5).
//!
//! Decoding runs a few hundred small matrix-vector products per token, each
//! worth only microseconds, so the pool is built for hand-off latency: one job
//! is broadcast through a single atomic word, workers spin briefly before they
//! park, the caller works on the job too, and nothing is allocated per call.
//! A rayon pool (created on first use, with threads of its own besides the
//! workers) serves the callers that want rayon, such as the quantised prefill
//! product.
//!
//! A pool never has more than [`Threads::max_count`] threads (twice the
//! available parallelism): more only adds hand-off latency and per-thread
//! memory. [`Threads::clamp`] tells a caller in advance what a request gets.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most tasks one job can hold (`next` and `n` share the state word with the generation).
const MAX_TASKS: usize = 0xFFFF;

/// Threads a pool may have per unit of available parallelism (see [`Threads::max_count`]).
pub const MAX_THREADS_PER_CORE: usize = 2;

/// How long an idle worker polls for the next job before it parks.
const SPIN_TIME: Duration = Duration::from_micros(300);

type Job = dyn Fn(usize) + Sync;

/// State shared between the submitting thread and the workers.
struct Shared {
    /// `generation << 32 | n_tasks << 16 | next_task`: a job is published by
    /// storing a new generation; tasks are claimed by incrementing `next_task`
    /// while the generation still matches.
    state: AtomicU64,
    /// The current job; its lifetime is erased (see `Pool::run` for why reads are sound).
    job: UnsafeCell<*const Job>,
    /// Tasks of the current job finished (by anyone).
    done: AtomicUsize,
    /// A task of the current job panicked.
    panicked: AtomicBool,
    /// Workers parked (or about to park) on `cv`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    quit: AtomicBool,
    /// One job at a time; a nested or concurrent call runs on its caller instead.
    submit: Mutex<()>,
}

// SAFETY: `job` is written only by the holder of `submit` while no task of the
// previous job can still read it (all its tasks are done), and read only by a
// thread that has claimed a task of the current job, which the writer waits
// for (see `Pool::run`). Everything else is atomics and std locks.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer carries no thread affinity.
unsafe impl Send for Shared {}

#[inline]
fn gen_of(st: u64) -> u32 {
    (st >> 32) as u32
}

impl Shared {
    /// Claims and runs tasks of generation `g` until none is left.
    fn run_tasks(&self, g: u32) {
        loop {
            let mut st = self.state.load(Ordering::Acquire);
            let idx = loop {
                let (n, next) = ((st >> 16) & 0xFFFF, st & 0xFFFF);
                if gen_of(st) != g || next >= n {
                    return;
                }
                match self.state.compare_exchange_weak(
                    st,
                    st + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break next as usize,
                    Err(cur) => st = cur,
                }
            };
            // SAFETY: task `idx` of generation `g` is claimed and not yet counted
            // in `done`, so the submitter is still inside `run` and the job it
            // published (before the acquire-read generation) is alive.
            let f: &Job = unsafe { &**self.job.get() };
            if catch_unwind(AssertUnwindSafe(|| f(idx))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    fn worker(&self) {
        let mut seen = gen_of(self.state.load(Ordering::Acquire));
        loop {
            let mut start: Option<Instant> = None;
            let mut spins = 0u32;
            loop {
                let g = gen_of(self.state.load(Ordering::Acquire));
                if self.quit.load(Ordering::Relaxed) {
                    return;
                }
                if g != seen {
                    seen = g;
                    break;
                }
                spins = spins.wrapping_add(1);
                if !spins.is_multiple_of(256) {
                    std::hint::spin_loop();
                    continue;
                }
                let t0 = *start.get_or_insert_with(Instant::now);
                if t0.elapsed() < SPIN_TIME {
                    continue;
                }
                // Park. `sleepers` is raised before the generation is re-read, and
                // the submitter reads `sleepers` after publishing (both SeqCst),
                // so either we see the new job or it sees us and notifies.
                let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                while gen_of(self.state.load(Ordering::SeqCst)) == seen
                    && !self.quit.load(Ordering::SeqCst)
                {
                    guard = self.cv.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(guard);
                start = None;
            }
            self.run_tasks(seen);
        }
    }
}

/// The worker threads (`count - 1` of them; the caller is the last worker).
struct Pool {
    shared: Arc<Shared>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// Starts up to `workers` workers; fewer when the system refuses a thread
    /// (the pool then has the ones that started).
    fn new(workers: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: UnsafeCell::new(std::ptr::null::<fn(usize)>() as *const Job),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            quit: AtomicBool::new(false),
            submit: Mutex::new(()),
        });
        let mut pool = Pool {
            shared,
            handles: Vec::with_capacity(workers),
        };
        for i in 0..workers {
            let sh = pool.shared.clone();
            match std::thread::Builder::new()
                .name(format!("patchbay-w{i}"))
                .spawn(move || sh.worker())
            {
                Ok(h) => pool.handles.push(h),
                // Resource limits: keep the workers that did start.
                Err(_) => break,
            }
        }
        pool
    }

    /// Runs `f(0) .. f(n - 1)` (`n <= MAX_TASKS`) over the workers and the caller.
    fn run<'a>(&self, n: usize, f: &'a (dyn Fn(usize) + Sync + 'a)) {
        debug_assert!(n <= MAX_TASKS);
        let sh = &*self.shared;
        let Ok(_guard) = sh.submit.try_lock() else {
            // Called from inside a task, or from two threads at once.
            (0..n).for_each(f);
            return;
        };
        sh.done.store(0, Ordering::Relaxed);
        sh.panicked.store(false, Ordering::Relaxed);
        // SAFETY: the previous job's tasks are all done (we waited for them), so
        // no thread reads `job` now; readers of the new value claim a task first,
        // and we do not return (so `f` outlives them) before every task is done.
        // The lifetime is erased only for the duration of this call.
        unsafe {
            *sh.job.get() =
                std::mem::transmute::<*const (dyn Fn(usize) + Sync + 'a), *const Job>(f);
        }
        let g = gen_of(sh.state.load(Ordering::Relaxed)).wrapping_add(1);
        sh.state
            .store(((g as u64) << 32) | ((n as u64) << 16), Ordering::SeqCst);
        if sh.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.cv.notify_all();
        }
        sh.run_tasks(g);
        let mut spins = 0u32;
        while sh.done.load(Ordering::Acquire) < n {
            spins = spins.saturating_add(1);
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                // A worker holding a task was descheduled: let it run.
                std::thread::yield_now();
            }
        }
        if sh.panicked.load(Ordering::Relaxed) {
            // Unlock first: a poisoned `submit` would make every later call serial.
            drop(_guard);
            panic!("a patchbay worker task panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        {
            let _l = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.cv.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

struct Inner {
    pool: Pool,
    rayon: OnceLock<Option<rayon::ThreadPool>>,
}

/// A handle on a fixed-size pool of worker threads (cheap to clone).
#[derive(Clone)]
pub struct Threads {
    inner: Option<Arc<Inner>>,
    n: usize,
    /// The thread count asked for (after `0` was resolved), when the pool got fewer.
    capped_from: Option<usize>,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Threads({})", self.n)
    }
}

/// A raw pointer handed to tasks that touch disjoint elements.
struct SendPtr<T>(*mut T);

// SAFETY: only used by `for_each_chunk` to give tasks disjoint chunks of one
// exclusively borrowed slice of `T: Send`.
unsafe impl<T: Send> Sync for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method (not field access) so closures capture the `Sync` wrapper.
    #[inline]
    fn get(&self) -> *mut T {
        self.0
    }
}

impl Threads {
    /// A pool of `n` threads (`n = 0` means one per available core), capped at
    /// [`max_count`](Self::max_count); any `n` is accepted.
    ///
    /// With one thread no pool is created and work runs on the caller. When the
    /// system refuses to start a thread the pool keeps the ones it has.
    /// [`count`](Self::count) is the number actually used and
    /// [`capped_from`](Self::capped_from) the request when it was more.
    pub fn new(n: usize) -> Threads {
        let requested = if n == 0 { available_parallelism() } else { n };
        let (n, _) = Threads::clamp(requested);
        let mut t = if n == 1 {
            Threads::single()
        } else {
            let pool = Pool::new(n - 1);
            if pool.handles.is_empty() {
                Threads::single()
            } else {
                Threads {
                    n: pool.handles.len() + 1,
                    inner: Some(Arc::new(Inner {
                        pool,
                        rayon: OnceLock::new(),
                    })),
                    capped_from: None,
                }
            }
        };
        if t.n < requested {
            t.capped_from = Some(requested);
        }
        t
    }

    /// The thread count a request for `requested` threads gets, and whether it
    /// was capped: `0` means one per available core, and no pool has more than
    /// [`max_count`](Self::max_count) threads. (The pool may still end up
    /// smaller if the system refuses to start a thread; see
    /// [`capped_from`](Self::capped_from).)
    ///
    /// ```
    /// use patchbay_primitives::Threads;
    /// let max = Threads::max_count();
    /// assert_eq!(Threads::clamp(1), (1, false));
    /// assert_eq!(Threads::clamp(usize::MAX), (max, true));
    /// assert_eq!(Threads::new(usize::MAX).count(), max);
    /// ```
    pub fn clamp(requested: usize) -> (usize, bool) {
        let requested = if requested == 0 {
            available_parallelism()
        } else {
            requested
        };
        let max = Threads::max_count();
        (requested.min(max), requested > max)
    }

    /// The most threads a pool is given: [`MAX_THREADS_PER_CORE`] times the
    /// available parallelism (at least 2).
    pub fn max_count() -> usize {
        available_parallelism()
            .saturating_mul(MAX_THREADS_PER_CORE)
            .max(2)
    }

    /// The thread count that was asked for, when this pool has fewer threads
    /// (capped at [`max_count`](Self::max_count), or threads the system refused).
    pub fn capped_from(&self) -> Option<usize> {
        self.capped_from
    }

    /// Runs everything on the calling thread.
    pub fn single() -> Threads {
        Threads {
            inner: None,
            n: 1,
            capped_from: None,
        }
    }

    /// Number of threads work is split across.
    pub fn count(&self) -> usize {
        self.n
    }

    /// A rayon pool of [`count`](Self::count) threads (built on first use), when
    /// there is more than one thread.
    pub fn pool(&self) -> Option<&rayon::ThreadPool> {
        let inner = self.inner.as_ref()?;
        inner
            .rayon
            .get_or_init(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(self.n)
                    .thread_name(|i| format!("patchbay-{i}"))
                    .build()
                    .ok()
            })
            .as_ref()
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
        let len = out.len();
        let count = len.div_ceil(chunk_len);
        if self.inner.is_none() || count <= 1 {
            for (i, c) in out.chunks_mut(chunk_len).enumerate() {
                f(i, c);
            }
            return;
        }
        let base = SendPtr(out.as_mut_ptr());
        self.for_each_index(count, |i| {
            let start = i * chunk_len;
            let n = chunk_len.min(len - start);
            // SAFETY: chunk i is out[start .. start + n], inside `out` (i < count);
            // each index is visited once, so chunks never alias, and `out` is
            // exclusively borrowed until `for_each_index` returns.
            let c = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
            f(i, c);
        });
    }

    /// Calls `f(i)` for every `i` in `0..count`, spreading the calls over the pool.
    ///
    /// For work whose outputs are not one contiguous slice (e.g. column blocks of a
    /// row-major matrix); the caller guarantees the calls touch disjoint data.
    pub fn for_each_index<F>(&self, count: usize, f: F)
    where
        F: Fn(usize) + Sync + Send,
    {
        match &self.inner {
            Some(inner) if count > 1 => {
                if count <= MAX_TASKS {
                    inner.pool.run(count, &f);
                } else {
                    // More indices than a job holds: contiguous runs per task.
                    let per = count.div_ceil(MAX_TASKS);
                    inner.pool.run(count.div_ceil(per), &|t| {
                        (t * per..((t + 1) * per).min(count)).for_each(&f)
                    });
                }
            }
            _ => (0..count).for_each(f),
        }
    }
}

/// The machine's available parallelism (1 when unknown), read once.
fn available_parallelism() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
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
        for n in [1, 2, 3] {
            let t = Threads::new(n);
            for count in [0, 1, 7, 1000, MAX_TASKS + 3] {
                let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
                t.for_each_index(count, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn many_small_jobs_and_parked_workers() {
        let t = Threads::new(3);
        let total = AtomicUsize::new(0);
        for round in 0..2000 {
            if round == 1000 {
                // Long enough for the workers to park; the next job must wake them.
                std::thread::sleep(SPIN_TIME * 4);
            }
            t.for_each_index(5, |i| {
                total.fetch_add(i + 1, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 2000 * 15);
    }

    #[test]
    fn nested_calls_run_inline() {
        let t = Threads::new(2);
        let hits = AtomicUsize::new(0);
        t.for_each_index(4, |_| {
            t.for_each_index(3, |_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(hits.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_survives() {
        let t = Threads::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            t.for_each_index(8, |i| assert!(i != 5, "boom"));
        }));
        assert!(r.is_err());
        let hits = AtomicUsize::new(0);
        t.for_each_index(8, |_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn requests_are_capped_at_twice_the_parallelism() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max = Threads::max_count();
        assert_eq!(max, (cores * MAX_THREADS_PER_CORE).max(2));
        assert_eq!(Threads::clamp(0), (cores, false));
        assert_eq!(Threads::clamp(1), (1, false));
        assert_eq!(Threads::clamp(max), (max, false));
        assert_eq!(Threads::clamp(max + 1), (max, true));
        assert_eq!(Threads::clamp(usize::MAX), (max, true));
        let single = Threads::new(1);
        assert_eq!((single.count(), single.capped_from()), (1, None));
        for huge in [max + 1, 1000, 1_000_000_000, usize::MAX] {
            let t = Threads::new(huge);
            assert_eq!(t.count(), huge.min(max), "{huge}");
            assert_eq!(t.capped_from(), Some(huge).filter(|&h| h > max));
            // The capped pool works.
            let hits = AtomicUsize::new(0);
            t.for_each_index(100, |_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 100);
            assert_eq!(t.pool().map(|p| p.current_num_threads()), Some(t.count()));
        }
    }

    #[test]
    fn rayon_pool_is_available_with_threads() {
        assert!(Threads::single().pool().is_none());
        let t = Threads::new(2);
        assert_eq!(t.pool().map(|p| p.current_num_threads()), Some(2));
    }
}
