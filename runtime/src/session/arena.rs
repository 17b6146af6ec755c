//! The arena plan: every buffer size of a session, computed and checked before anything is
//! allocated, and the position table for the session's patch grid.

use alloc::format;
use alloc::vec::Vec;

use super::attention::QuerySplit;
use super::{SessionOptions, MAX_THREADS};
use crate::config::{Head, PosInterpolation};
use crate::error::{Error, Result};
use crate::kernels::{Backend, Scratch};
use crate::model::{Linear, LinearRepr, Model};
use crate::parallel::Exec;
use crate::resample;

/// Every buffer size of a session (in f32 elements), computed with checked arithmetic before
/// anything is allocated, and their total in bytes checked against the memory limit.
pub(super) struct ArenaPlan {
    pub(super) threads: usize,
    pub(super) backend: Backend,
    pub(super) batch: usize,
    pub(super) image: [usize; 2],
    pub(super) grid: [usize; 2],
    pub(super) tokens: usize,
    pub(super) patches: usize,
    /// `rows × D`: residual, normalised and attention-context buffers (and `last_hidden`).
    pub(super) stream: usize,
    pub(super) qkv: usize,
    pub(super) hidden: usize,
    pub(super) low_rank: usize,
    pub(super) lin_out: usize,
    pub(super) xt: usize,
    pub(super) pooled: usize,
    pub(super) logits: usize,
    /// Per thread.
    pub(super) scores: usize,
    pub(super) bytes: usize,
}

impl ArenaPlan {
    pub(super) fn new(model: &Model<'_>, options: &SessionOptions) -> Result<ArenaPlan> {
        let c = &model.config;
        let [h, w] = if options.image_size == [0, 0] { c.image_size } else { options.image_size };
        let p = c.patch_size;
        if h < p || w < p {
            return Err(Error::Input(format!("input {h}×{w} is smaller than one {p}×{p} patch")));
        }
        if h > 8192 || w > 8192 {
            return Err(Error::Input(format!("input {h}×{w} is larger than 8192×8192")));
        }
        if options.batch == 0 || options.batch > 4096 {
            return Err(Error::Input(format!("batch {} must be in 1..=4096", options.batch)));
        }
        let ovf = |what| Error::Overflow(what);
        let mul = |a: usize, b: usize| a.checked_mul(b).ok_or(ovf("session buffer sizes"));
        let batch = options.batch;
        let grid = [h / p, w / p];
        let patches_per_image = mul(grid[0], grid[1])?;
        let tokens = patches_per_image.checked_add(c.num_prefix_tokens()).ok_or(ovf("tokens"))?;
        let rows = mul(batch, tokens)?;
        let d = c.embed_dim;
        let ext = extents(model.linears().chain(core::iter::once(&model.patch_embed)));
        let threads = Exec::resolve_threads(options.threads.min(MAX_THREADS)).clamp(1, MAX_THREADS);
        let backend = Backend::detect();
        let mut plan = ArenaPlan {
            threads,
            backend,
            batch,
            image: [h, w],
            grid,
            tokens,
            patches: mul(mul(batch, patches_per_image)?, model.patch_embed.in_features)?,
            stream: mul(rows, d)?,
            qkv: mul(rows, mul(3, d)?)?,
            hidden: mul(rows, c.mlp_hidden)?,
            low_rank: mul(rows, ext.max_rank)?,
            lin_out: if ext.max_sparse_in > 0 { mul(rows, ext.max_out)? } else { 0 },
            xt: mul(rows, ext.max_sparse_in)?,
            pooled: mul(batch, d)?,
            logits: mul(batch, c.num_classes)?,
            scores: mul(QuerySplit::new(tokens, threads).max_rows(), tokens)?,
            bytes: 0,
        };
        // The position table, and when the grid differs from the trained one, the resampling
        // temporaries (at most two more tables of the same size).
        let pos = mul(tokens, d)?;
        let pos_total = if grid == c.pos_embed_grid { pos } else { mul(pos, 3)? };
        let streams = 3 + usize::from(c.final_norm); // x, xn, ctx (+ last_hidden)
        let dist = usize::from(c.head == Head::Distilled);
        let floats = [
            pos_total,
            plan.patches,
            mul(plan.stream, streams)?,
            plan.qkv,
            plan.hidden,
            plan.low_rank,
            plan.lin_out,
            plan.xt,
            plan.pooled,
            mul(plan.logits, 1 + dist)?,
            mul(plan.scores, threads)?,
        ]
        .iter()
        .try_fold(0usize, |acc, &n| acc.checked_add(n))
        .ok_or(ovf("session arena"))?;
        plan.bytes =
            mul(floats, 4)?.checked_add(mul(Scratch::bytes_for(backend), threads)?).ok_or(ovf("session arena"))?;
        if plan.bytes > options.memory_limit {
            return Err(Error::MemoryLimit {
                what: "the session arena",
                needed: plan.bytes,
                limit: options.memory_limit,
            });
        }
        Ok(plan)
    }
}

/// Sizes of the largest linear layer operands, for buffer allocation.
struct LinearExtents {
    max_rank: usize,
    max_out: usize,
    max_sparse_in: usize,
}

fn extents<'l>(layers: impl Iterator<Item = &'l Linear>) -> LinearExtents {
    let mut e = LinearExtents { max_rank: 0, max_out: 0, max_sparse_in: 0 };
    for l in layers {
        e.max_out = e.max_out.max(l.out_features);
        if let LinearRepr::Factored { rank, sparse, .. } = &l.repr {
            e.max_rank = e.max_rank.max(*rank);
            if sparse.is_some() {
                e.max_sparse_in = e.max_sparse_in.max(l.in_features);
            }
        }
    }
    e
}

/// The position rows for a patch grid: the stored table, or its patch part resampled.
pub(super) fn session_positions(model: &Model<'_>, grid: [usize; 2]) -> Vec<f32> {
    let c = &model.config;
    let d = c.embed_dim;
    let prefix = c.pos_embed_prefix;
    if grid == c.pos_embed_grid {
        return model.pos_embed.clone();
    }
    let [gh, gw] = c.pos_embed_grid;
    let patch_rows = &model.pos_embed[prefix * d..];
    let resampled = match c.pos_interpolation {
        PosInterpolation::Bicubic => resample::bicubic(patch_rows, gh, gw, d, grid[0], grid[1]),
        PosInterpolation::BicubicAntialias => resample::bicubic_antialias(patch_rows, gh, gw, d, grid[0], grid[1]),
    };
    let mut pos = Vec::with_capacity((prefix + grid[0] * grid[1]) * d);
    pos.extend_from_slice(&model.pos_embed[..prefix * d]);
    pos.extend_from_slice(&resampled);
    pos
}
