//! Multi-head self-attention over the fused `qkv` buffer, split into per-thread work items.

use alloc::vec::Vec;

use super::profile::Stamp;
use super::{Session, MAX_THREADS};
use crate::kernels::{self, Epilogue, Gemm, MatB, Scratch, WeightSlice};
use crate::parallel::split_range;

/// Splits the query rows of one image into attention work items: one item per image on one
/// thread (keys and values are packed once per head), else about two items per thread for load
/// balance. Every row's result is independent of the split (the kernels compute each output
/// row with the same operation sequence whatever the row count, except for single-row calls,
/// which take a matrix-vector path), so items never have exactly one row: results are
/// bit-identical for any thread count.
#[derive(Debug, Clone, Copy)]
pub(super) struct QuerySplit {
    tokens: usize,
    rows: usize,
    chunks: usize,
}

impl QuerySplit {
    pub(super) fn new(tokens: usize, threads: usize) -> QuerySplit {
        let rows = if threads <= 1 { tokens } else { tokens.div_ceil(2 * threads).max(2) };
        let mut chunks = tokens.div_ceil(rows).max(1);
        if chunks > 1 && tokens - (chunks - 1) * rows == 1 {
            chunks -= 1; // fold a one-row remainder into the previous item
        }
        QuerySplit { tokens, rows, chunks }
    }

    /// Query rows `start..end` (within one image) of item `c`.
    fn range(&self, c: usize) -> core::ops::Range<usize> {
        let start = c * self.rows;
        let end = if c + 1 == self.chunks { self.tokens } else { start + self.rows };
        start..end
    }

    /// Rows of the largest item.
    pub(super) fn max_rows(&self) -> usize {
        (0..self.chunks).map(|c| self.range(c).len()).max().unwrap_or(0)
    }
}

impl Session<'_, '_> {
    /// Multi-head self-attention from `qkv` into `ctx` (heads concatenated, token-major).
    /// Returns the nanoseconds the threads spent in Q·Kᵀ, softmax and P·V (summed over threads;
    /// zeros unless profiling).
    pub(super) fn attention(&mut self) -> [u64; 3] {
        let profiling = self.profiler.on;
        let c = &self.model.config;
        let (t, d, heads) = (self.tokens, c.embed_dim, c.num_heads);
        let dh = d / heads;
        let scale = 1.0 / libm::sqrtf(dh as f32);
        let split = QuerySplit::new(t, self.exec.threads());
        let chunks_per_image = split.chunks;
        let items = self.batch * chunks_per_image;
        let threads = self.exec.threads().min(items).max(1);
        let backend = self.backend;
        let qkv = &self.qkv[..];

        // Item `i` covers query rows of one image; item boundaries are monotone in memory, so
        // each thread's items form one contiguous slice of `ctx`.
        let item_rows = |i: usize| {
            let (b, ch) = (i / chunks_per_image, i % chunks_per_image);
            let r = split.range(ch);
            b * t + r.start..b * t + r.end
        };
        let mut tasks: [Option<AttnTask<'_>>; MAX_THREADS] = [const { None }; MAX_THREADS];
        let mut rest = &mut self.ctx[..self.batch * t * d];
        let mut consumed_rows = 0;
        for (th, ((task, scratch), scores)) in
            tasks.iter_mut().zip(self.scratch.iter_mut()).zip(self.scores.iter_mut()).take(threads).enumerate()
        {
            let range = split_range(items, threads, 1, th);
            let end_row = if range.is_empty() { consumed_rows } else { item_rows(range.end - 1).end };
            let (mine, tail) = core::mem::take(&mut rest).split_at_mut((end_row - consumed_rows) * d);
            rest = tail;
            *task = Some(AttnTask { items: range, first_row: consumed_rows, ctx: mine, scratch, scores, ns: [0; 3] });
            consumed_rows = end_row;
        }
        self.exec.for_each_mut(&mut tasks[..threads], |_, task| {
            let Some(task) = task else { return };
            let mut stamp = Stamp::now_if(profiling);
            for item in task.items.clone() {
                let r = item_rows(item);
                let b = item / chunks_per_image;
                let qn = r.len();
                for hd in 0..heads {
                    let q = &qkv[r.start * 3 * d + hd * dh..];
                    let k_off = b * t * 3 * d + d + hd * dh;
                    let v_off = b * t * 3 * d + 2 * d + hd * dh;
                    let kmat = &qkv[k_off..k_off + (t - 1) * 3 * d + dh];
                    let vmat = &qkv[v_off..v_off + (t - 1) * 3 * d + dh];
                    let scores = &mut task.scores[..qn * t];
                    kernels::gemm(
                        backend,
                        task.scratch,
                        Gemm {
                            m: qn,
                            a: q,
                            lda: 3 * d,
                            b: MatB {
                                data: WeightSlice::F32(kmat),
                                k: dh,
                                n: t,
                                layout: kernels::BLayout::NK,
                                ld: 3 * d,
                            },
                            c: scores,
                            ldc: t,
                            epilogue: Epilogue::default(),
                        },
                    );
                    task.ns[0] += stamp.lap();
                    kernels::softmax_rows(backend, qn, t, scores, t, scale);
                    task.ns[1] += stamp.lap();
                    let out = &mut task.ctx[(r.start - task.first_row) * d + hd * dh..];
                    kernels::gemm(
                        backend,
                        task.scratch,
                        Gemm {
                            m: qn,
                            a: scores,
                            lda: t,
                            b: MatB {
                                data: WeightSlice::F32(vmat),
                                k: t,
                                n: dh,
                                layout: kernels::BLayout::KN,
                                ld: 3 * d,
                            },
                            c: out,
                            ldc: d,
                            epilogue: Epilogue::default(),
                        },
                    );
                    task.ns[2] += stamp.lap();
                }
            }
        });
        let mut ns = [0; 3];
        for task in tasks[..threads].iter().flatten() {
            for (a, b) in ns.iter_mut().zip(task.ns) {
                *a += b;
            }
        }
        ns
    }
}

/// The work of one thread in [`Session::attention`].
struct AttnTask<'s> {
    items: core::ops::Range<usize>,
    first_row: usize,
    ctx: &'s mut [f32],
    scratch: &'s mut Scratch,
    scores: &'s mut Vec<f32>,
    /// Nanoseconds in Q·Kᵀ, softmax and P·V (when profiling).
    ns: [u64; 3],
}

#[cfg(test)]
mod tests {
    use super::QuerySplit;

    #[test]
    fn query_split_covers_rows_without_single_row_items() {
        for tokens in 1..300 {
            for threads in 1..9 {
                let s = QuerySplit::new(tokens, threads);
                let mut next = 0;
                for c in 0..s.chunks {
                    let r = s.range(c);
                    assert_eq!(r.start, next);
                    assert!(r.len() >= 2 || tokens == 1, "tokens {tokens} threads {threads}: {r:?}");
                    next = r.end;
                }
                assert_eq!(next, tokens);
                assert!(s.max_rows() * tokens > 0);
            }
        }
    }
}
