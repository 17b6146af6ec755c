//! Execution context: how many threads a session uses and how work is split among them.
//!
//! Work is always split into *disjoint output ranges* that each thread computes completely
//! (never a split reduction), so every output element is produced by the same sequence of
//! floating-point operations whatever the thread count: results are bit-identical for 1 or N
//! threads. Without the `std` feature everything runs on the calling thread.

/// A per-session executor. Cloning shares the thread pool.
#[derive(Clone)]
pub struct Exec {
    threads: usize,
    #[cfg(feature = "std")]
    pool: Option<std::sync::Arc<rayon::ThreadPool>>,
}

impl core::fmt::Debug for Exec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Exec").field("threads", &self.threads).finish()
    }
}

impl Exec {
    /// An executor that runs everything on the calling thread.
    pub fn serial() -> Exec {
        Exec {
            threads: 1,
            #[cfg(feature = "std")]
            pool: None,
        }
    }

    /// An executor with `threads` worker threads (0 = one per available core). Without the
    /// `std` feature the count is ignored and execution is serial.
    pub fn new(threads: usize) -> Exec {
        #[cfg(feature = "std")]
        {
            let threads = Exec::resolve_threads(threads);
            if threads <= 1 {
                return Exec::serial();
            }
            match rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| std::format!("factorvit-{i}"))
                .build()
            {
                Ok(pool) => Exec { threads, pool: Some(std::sync::Arc::new(pool)) },
                Err(_) => Exec::serial(),
            }
        }
        #[cfg(not(feature = "std"))]
        {
            let _ = threads;
            Exec::serial()
        }
    }

    /// The thread count [`Exec::new`] uses for a requested count (0 = one per core; always 1
    /// without `std`). The pool may still fall back to serial if threads cannot be spawned.
    pub fn resolve_threads(threads: usize) -> usize {
        #[cfg(feature = "std")]
        {
            if threads == 0 {
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
            } else {
                threads
            }
        }
        #[cfg(not(feature = "std"))]
        {
            let _ = threads;
            1
        }
    }

    /// Number of threads work is split across.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on one of the pool's threads (directly when there is no pool). Parallel sections
    /// inside `f` then start without waking a sleeping thread or blocking the caller's thread
    /// per section: a whole forward pass runs inside one `install`, so the workers stay warm
    /// between the many short parallel sections of a ViT.
    pub fn install<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        #[cfg(feature = "std")]
        if let Some(pool) = &self.pool {
            return pool.install(f);
        }
        f()
    }

    /// Runs `f(i, &mut items[i])` for every item, in parallel when the executor has threads.
    /// Items are the unit of work distribution (for example one per thread, each holding that
    /// thread's scratch buffer and output range).
    pub fn for_each_mut<T: Send, F: Fn(usize, &mut T) + Sync>(&self, items: &mut [T], f: F) {
        #[cfg(feature = "std")]
        if let Some(pool) = &self.pool {
            if items.len() > 1 {
                use rayon::prelude::*;
                pool.install(|| items.par_iter_mut().enumerate().for_each(|(i, t)| f(i, t)));
                return;
            }
        }
        for (i, t) in items.iter_mut().enumerate() {
            f(i, t);
        }
    }

    /// Runs `f(i)` for `i in 0..n`, in parallel when the executor has threads.
    pub fn for_each_index<F: Fn(usize) + Sync>(&self, n: usize, f: F) {
        #[cfg(feature = "std")]
        if let Some(pool) = &self.pool {
            if n > 1 {
                use rayon::prelude::*;
                pool.install(|| (0..n).into_par_iter().for_each(&f));
                return;
            }
        }
        for i in 0..n {
            f(i);
        }
    }
}

/// Splits `0..len` into `parts` contiguous ranges whose boundaries are multiples of `align`
/// (except the final end). Empty ranges are possible when `len` is small.
pub fn split_range(len: usize, parts: usize, align: usize, part: usize) -> core::ops::Range<usize> {
    let parts = parts.max(1);
    let align = align.max(1);
    let blocks = len.div_ceil(align);
    let start_block = blocks * part / parts;
    let end_block = blocks * (part + 1) / parts;
    let start = (start_block * align).min(len);
    let end = (end_block * align).min(len);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_range_exactly() {
        for len in [0usize, 1, 7, 16, 197, 3072] {
            for parts in 1..5 {
                for align in [1usize, 6, 16] {
                    let mut next = 0;
                    for p in 0..parts {
                        let r = split_range(len, parts, align, p);
                        assert_eq!(r.start, next);
                        assert!(r.start <= r.end);
                        if r.end != len {
                            assert_eq!(r.end % align, 0);
                        }
                        next = r.end;
                    }
                    assert_eq!(next, len);
                }
            }
        }
    }
}
