//! Inference sessions: every activation buffer preallocated once, then any number of runs
//! without heap allocation.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use crate::config::{GlobalPool, Head, PosInterpolation};
use crate::error::{Error, Result};
use crate::kernels::{self, Backend, Csr, Epilogue, Gemm, MatB, Rows, RowsMut, Scratch, WeightSlice};
use crate::model::{BlockLinear, Linear, LinearRepr, Model, Norm};
use crate::parallel::{split_range, Exec};
use crate::resample;

/// Upper bound on threads per session (work descriptors live on the stack).
pub const MAX_THREADS: usize = 64;

/// Splits the query rows of one image into attention work items: one item per image on one
/// thread (keys and values are packed once per head), else about two items per thread for load
/// balance. Every row's result is independent of the split (the kernels compute each output
/// row with the same operation sequence whatever the row count, except for single-row calls,
/// which take a matrix-vector path), so items never have exactly one row: results are
/// bit-identical for any thread count.
#[derive(Debug, Clone, Copy)]
struct QuerySplit {
    tokens: usize,
    rows: usize,
    chunks: usize,
}

impl QuerySplit {
    fn new(tokens: usize, threads: usize) -> QuerySplit {
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
    fn max_rows(&self) -> usize {
        (0..self.chunks).map(|c| self.range(c).len()).max().unwrap_or(0)
    }
}

/// Default [`SessionOptions::memory_limit`]: 4 GiB on 64-bit targets (2 GiB on 32-bit ones).
pub const DEFAULT_SESSION_MEMORY_LIMIT: usize =
    if usize::BITS > 32 { usize::MAX >> (usize::BITS - 32) } else { usize::MAX / 2 };

/// How to build a [`Session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Worker threads (1 = run on the calling thread; 0 = one per core). Ignored without `std`.
    pub threads: usize,
    /// Largest batch a run accepts.
    pub batch: usize,
    /// Input `[H, W]`; `[0, 0]` means the model's trained size.
    pub image_size: [usize; 2],
    /// Largest arena (activation buffers, attention scores, packing scratch, resampled
    /// position table) the session may allocate, in bytes. Computed with checked arithmetic
    /// before anything is allocated; exceeding it is [`Error::MemoryLimit`]. Default
    /// [`DEFAULT_SESSION_MEMORY_LIMIT`]; firmware sets its heap size.
    pub memory_limit: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { threads: 1, batch: 1, image_size: [0, 0], memory_limit: DEFAULT_SESSION_MEMORY_LIMIT }
    }
}

/// Hooks called during a forward pass with intermediate activations (row-major, one row per
/// token, `batch × tokens` rows). Used for fixture checks and by the compressor to collect
/// layer-input statistics. All methods default to doing nothing.
pub trait Observer {
    /// After the embeddings (patches + prefix tokens + positions), before block 0.
    fn embeddings(&mut self, x: &[f32], rows: usize, dim: usize) {
        let _ = (x, rows, dim);
    }
    /// The input of a block linear layer, just before it is applied.
    fn linear_input(&mut self, block: usize, which: BlockLinear, x: &[f32], rows: usize, cols: usize) {
        let _ = (block, which, x, rows, cols);
    }
    /// The residual stream that the output of `which` ([`BlockLinear::Proj`] or
    /// [`BlockLinear::Fc2`]) is about to be added to (`rows × dim`), called just before that
    /// layer's [`Observer::linear_input`]: the block input for `Proj`, the stream after the
    /// attention branch for `Fc2`.
    fn residual_input(&mut self, block: usize, which: BlockLinear, x: &[f32], rows: usize, dim: usize) {
        let _ = (block, which, x, rows, dim);
    }
    /// The residual stream after a block.
    fn block_output(&mut self, block: usize, x: &[f32], rows: usize, dim: usize) {
        let _ = (block, x, rows, dim);
    }
}

/// An observer that does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;
impl Observer for NoObserver {}

/// The results of a run, borrowed from the session's buffers.
#[derive(Debug)]
pub struct Outputs<'s> {
    /// `[batch, num_classes]` for classifiers.
    pub logits: Option<&'s [f32]>,
    /// `[batch, tokens, dim]`: the token features after the final norm.
    pub last_hidden_state: &'s [f32],
    /// `[batch, dim]`: the pooled feature (class token or mean of patch tokens, then `fc_norm`).
    pub pooler_output: &'s [f32],
    /// Images in this run.
    pub batch: usize,
    /// Tokens per image.
    pub tokens: usize,
    /// Embedding width.
    pub dim: usize,
    /// Classifier outputs (0 for backbones).
    pub num_classes: usize,
}

/// Memory figures of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// Bytes of weights the model holds (file-backed or copied); all of them are read once per
    /// inference.
    pub weight_bytes: usize,
    /// Bytes of weights copied into RAM at load (misaligned tensors, in-memory edits).
    pub copied_weight_bytes: usize,
    /// Bytes of the session's preallocated activation and scratch buffers.
    pub arena_bytes: usize,
}

/// A reusable inference context for one model, input size, batch limit and thread count.
pub struct Session<'m, 'a> {
    model: &'m Model<'a>,
    exec: Exec,
    backend: Backend,
    max_batch: usize,
    batch: usize,
    image: [usize; 2],
    grid: [usize; 2],
    tokens: usize,
    /// Position rows for this grid: `pos_embed_prefix + gh·gw` rows of `dim`.
    pos: Vec<f32>,
    patches: Vec<f32>,
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    hidden: Vec<f32>,
    low_rank: Vec<f32>,
    lin_out: Vec<f32>,
    xt: Vec<f32>,
    last_hidden: Vec<f32>,
    pooled: Vec<f32>,
    logits: Vec<f32>,
    logits_dist: Vec<f32>,
    scratch: Vec<Scratch>,
    scores: Vec<Vec<f32>>,
}

impl core::fmt::Debug for Session<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("threads", &self.exec.threads())
            .field("backend", &self.backend)
            .field("max_batch", &self.max_batch)
            .field("image", &self.image)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl<'a> Model<'a> {
    /// Creates a session (allocates every buffer a run needs).
    ///
    /// ```
    /// let model = factorvit::Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.fvit")).unwrap();
    /// let session = model.session(factorvit::SessionOptions { threads: 2, batch: 4, image_size: [0, 0], ..Default::default() }).unwrap();
    /// assert_eq!(session.image_size(), [8, 8]);
    /// assert!(session.memory().arena_bytes > 0);
    /// ```
    pub fn session(&self, options: SessionOptions) -> Result<Session<'_, 'a>> {
        Session::new(self, options)
    }
}

/// Every buffer size of a session (in f32 elements), computed with checked arithmetic before
/// anything is allocated, and their total in bytes checked against the memory limit.
struct ArenaPlan {
    threads: usize,
    backend: Backend,
    batch: usize,
    image: [usize; 2],
    grid: [usize; 2],
    tokens: usize,
    patches: usize,
    /// `rows × D`: residual, normalised and attention-context buffers (and `last_hidden`).
    stream: usize,
    qkv: usize,
    hidden: usize,
    low_rank: usize,
    lin_out: usize,
    xt: usize,
    pooled: usize,
    logits: usize,
    /// Per thread.
    scores: usize,
    bytes: usize,
}

impl ArenaPlan {
    fn new(model: &Model<'_>, options: &SessionOptions) -> Result<ArenaPlan> {
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

impl<'m, 'a> Session<'m, 'a> {
    /// See [`Model::session`].
    pub fn new(model: &'m Model<'a>, options: SessionOptions) -> Result<Session<'m, 'a>> {
        let plan = ArenaPlan::new(model, &options)?;
        let c = &model.config;
        let pos = session_positions(model, plan.grid);
        let exec = Exec::new(plan.threads);
        let backend = plan.backend;
        let threads = exec.threads();
        let scratch = (0..threads).map(|_| Scratch::new(backend)).collect();
        let scores = (0..threads).map(|_| vec![0.0f32; plan.scores]).collect();
        let buf = |len: usize| vec![0.0f32; len];
        Ok(Session {
            model,
            backend,
            max_batch: plan.batch,
            batch: plan.batch,
            image: plan.image,
            grid: plan.grid,
            tokens: plan.tokens,
            pos,
            patches: buf(plan.patches),
            x: buf(plan.stream),
            xn: buf(plan.stream),
            qkv: buf(plan.qkv),
            ctx: buf(plan.stream),
            hidden: buf(plan.hidden),
            low_rank: buf(plan.low_rank),
            lin_out: buf(plan.lin_out),
            xt: buf(plan.xt),
            last_hidden: buf(if c.final_norm { plan.stream } else { 0 }),
            pooled: buf(plan.pooled),
            logits: buf(plan.logits),
            logits_dist: buf(if c.head == Head::Distilled { plan.logits } else { 0 }),
            scratch,
            scores,
            exec,
        })
    }

    /// Bytes of the arena a session with `options` would allocate (what
    /// [`MemoryReport::arena_bytes`] reports once it exists, plus the temporary used to
    /// resample the position table), without allocating it: firmware can size its heap.
    pub fn required_memory(model: &Model<'_>, options: &SessionOptions) -> Result<usize> {
        let options = SessionOptions { memory_limit: usize::MAX, ..options.clone() };
        Ok(ArenaPlan::new(model, &options)?.bytes)
    }

    /// Threads this session uses.
    pub fn threads(&self) -> usize {
        self.exec.threads()
    }

    /// Kernel family in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Forces a kernel backend (tests and benchmarks compare backends end to end). Returns an
    /// error if the CPU does not support it.
    pub fn set_backend(&mut self, backend: Backend) -> Result<()> {
        if !Backend::available().contains(&backend) {
            return Err(Error::Input(format!("backend {} is not available on this CPU", backend.name())));
        }
        self.backend = backend;
        self.scratch.iter_mut().for_each(|s| *s = Scratch::new(backend));
        Ok(())
    }

    /// Tokens per image.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Input `[H, W]` this session takes.
    pub fn image_size(&self) -> [usize; 2] {
        self.image
    }

    /// Largest batch a run accepts.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The model.
    pub fn model(&self) -> &'m Model<'a> {
        self.model
    }

    /// Memory figures.
    pub fn memory(&self) -> MemoryReport {
        let f32s = [
            &self.pos,
            &self.patches,
            &self.x,
            &self.xn,
            &self.qkv,
            &self.ctx,
            &self.hidden,
            &self.low_rank,
            &self.lin_out,
            &self.xt,
            &self.last_hidden,
            &self.pooled,
            &self.logits,
            &self.logits_dist,
        ]
        .iter()
        .map(|v| v.capacity())
        .sum::<usize>()
            + self.scores.iter().map(Vec::capacity).sum::<usize>();
        MemoryReport {
            weight_bytes: self.model.weight_bytes(),
            copied_weight_bytes: self.model.copied_bytes(),
            arena_bytes: f32s * 4 + self.scratch.iter().map(Scratch::bytes).sum::<usize>(),
        }
    }

    /// Multiply-adds of one inference of one image (linears, patch embedding, attention).
    pub fn macs_per_image(&self) -> usize {
        let t = self.tokens;
        let m = self.model;
        let c = &m.config;
        let patches = self.grid[0] * self.grid[1];
        let mut macs = patches * m.patch_embed.in_features * c.embed_dim;
        for b in &m.blocks {
            macs += t * [&b.qkv, &b.proj, &b.fc1, &b.fc2].iter().map(|l| l.info().macs_per_row).sum::<usize>();
            macs += 2 * t * t * c.embed_dim; // Q·Kᵀ and P·V over all heads
        }
        let heads = m.head.iter().chain(m.head_dist.iter()).map(|l| l.info().macs_per_row).sum::<usize>();
        macs + heads
    }

    /// Runs the model on `pixel_values` (`[n, C, H, W]`, normalised, `1 ≤ n ≤ max_batch`).
    ///
    /// ```
    /// let model = factorvit::Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.fvit")).unwrap();
    /// let mut session = model.session(factorvit::SessionOptions { threads: 1, batch: 2, image_size: [0, 0], ..Default::default() }).unwrap();
    /// let image = vec![0.25f32; 3 * 8 * 8];
    /// let two: Vec<f32> = image.iter().chain(&image).copied().collect();
    /// let out = session.run(&two).unwrap();
    /// assert_eq!((out.batch, out.num_classes), (2, 3));
    /// let logits = out.logits.unwrap();
    /// assert_eq!(logits[..3], logits[3..]); // same image, same logits
    /// // A buffer of the wrong size is an error.
    /// assert!(session.run(&image[1..]).is_err());
    /// ```
    pub fn run(&mut self, pixel_values: &[f32]) -> Result<Outputs<'_>> {
        self.run_observed(pixel_values, &mut NoObserver)
    }

    /// [`Session::run`] with hooks receiving intermediate activations.
    pub fn run_observed(&mut self, pixel_values: &[f32], observer: &mut (dyn Observer + Send)) -> Result<Outputs<'_>> {
        // The whole pass runs on a pool thread (see `Exec::install`); the handle is cloned so
        // the closure can borrow the session mutably (an `Arc` clone, no allocation).
        let exec = self.exec.clone();
        exec.install(|| -> Result<()> {
            self.embed(pixel_values)?;
            observer.embeddings(&self.x[..self.rows() * self.dim()], self.rows(), self.dim());
            for i in 0..self.model.blocks.len() {
                self.run_block(i, observer);
            }
            self.compute_outputs();
            Ok(())
        })?;
        Ok(self.outputs())
    }

    fn rows(&self) -> usize {
        self.batch * self.tokens
    }

    fn dim(&self) -> usize {
        self.model.config.embed_dim
    }

    /// The residual stream `[batch·tokens, dim]` of the current run.
    pub fn residual(&self) -> &[f32] {
        &self.x[..self.rows() * self.dim()]
    }

    /// Mutable residual stream (the compressor feeds blocks inputs from another model).
    pub fn residual_mut(&mut self) -> &mut [f32] {
        let n = self.rows() * self.dim();
        &mut self.x[..n]
    }

    /// Step 1 of a run: patch embedding, prefix tokens and positions into the residual stream.
    pub fn embed(&mut self, pixel_values: &[f32]) -> Result<()> {
        let c = &self.model.config;
        let [h, w] = self.image;
        let per_image = c.in_chans * h * w;
        if pixel_values.is_empty() || pixel_values.len() % per_image != 0 {
            return Err(Error::Input(format!(
                "pixel_values has {} values, not a multiple of C·H·W = {}·{}·{} = {per_image}",
                pixel_values.len(),
                c.in_chans,
                h,
                w
            )));
        }
        let n = pixel_values.len() / per_image;
        if n > self.max_batch {
            return Err(Error::Input(format!("batch {n} exceeds the session's maximum {}", self.max_batch)));
        }
        self.batch = n;
        let (p, d, t) = (c.patch_size, c.embed_dim, self.tokens);
        let [gh, gw] = self.grid;
        let np = gh * gw;
        let k = c.in_chans * p * p;
        // im2col: one row per patch, columns in (channel, ky, kx) order like the conv weight.
        for b in 0..n {
            let img = &pixel_values[b * per_image..(b + 1) * per_image];
            for py in 0..gh {
                for px in 0..gw {
                    let row = &mut self.patches[((b * np) + py * gw + px) * k..][..k];
                    for ch in 0..c.in_chans {
                        for ky in 0..p {
                            let src = &img[ch * h * w + (py * p + ky) * w + px * p..][..p];
                            row[(ch * p + ky) * p..][..p].copy_from_slice(src);
                        }
                    }
                }
            }
        }
        let prefix = c.num_prefix_tokens();
        let pe = &self.model.patch_embed;
        let weight = match &pe.repr {
            LinearRepr::Dense(wt) => self.model.store.weights(wt),
            LinearRepr::Factored { .. } => unreachable!("patch embedding is always dense"),
        };
        for b in 0..n {
            kernels::gemm_parallel(
                self.backend,
                &self.exec,
                &mut self.scratch,
                Gemm {
                    m: np,
                    a: &self.patches[b * np * k..(b + 1) * np * k],
                    lda: k,
                    b: MatB::weight(weight, d, k),
                    c: &mut self.x[(b * t + prefix) * d..(b + 1) * t * d],
                    ldc: d,
                    epilogue: Epilogue { bias: pe.bias.as_deref(), ..Epilogue::default() },
                },
            );
            let xb = &mut self.x[b * t * d..(b + 1) * t * d];
            if let Some(cls) = &self.model.cls_token {
                xb[..d].copy_from_slice(cls);
            }
            if let Some(dist) = &self.model.dist_token {
                xb[d..2 * d].copy_from_slice(dist);
            }
            // Position rows cover the prefix tokens too unless pos_embed_prefix is 0.
            let skip = prefix - c.pos_embed_prefix;
            kernels::add_scaled(self.backend, &mut xb[skip * d..], &self.pos, None);
        }
        Ok(())
    }

    /// Step 2 of a run: block `i` on the residual stream.
    pub fn run_block(&mut self, i: usize, observer: &mut dyn Observer) {
        self.run_block_inner(i, None, observer);
    }

    /// Block `i` up to the input of its layer `last`: runs everything `last`'s input depends
    /// on, shows it to `observer` (with the inputs of the layers before it) and returns without
    /// applying `last` or anything after it. For calibration tools that need one layer's input
    /// and not the block's output: the residual stream is left part-way through the block
    /// (after the attention residual when `last` is `Fc1` or `Fc2`), so reload it before the
    /// next [`Session::run_block`].
    pub fn run_block_until(&mut self, i: usize, last: BlockLinear, observer: &mut dyn Observer) {
        self.run_block_inner(i, Some(last), observer);
    }

    fn run_block_inner(&mut self, i: usize, last: Option<BlockLinear>, observer: &mut dyn Observer) {
        let model = self.model;
        let block = &model.blocks[i];
        let c = &model.config;
        let (rows, d) = (self.rows(), c.embed_dim);
        let backend = self.backend;

        kernels::layer_norm(
            backend,
            Rows::new(&self.x, rows, d, d),
            &block.norm1.weight,
            &block.norm1.bias,
            c.layer_norm_eps,
            RowsMut::new(&mut self.xn, rows, d, d),
        );
        observer.linear_input(i, BlockLinear::Qkv, &self.xn[..rows * d], rows, d);
        if last == Some(BlockLinear::Qkv) {
            return;
        }
        let mut bufs = LinearBuffers { low_rank: &mut self.low_rank, lin_out: &mut self.lin_out, xt: &mut self.xt };
        apply_linear(
            model,
            backend,
            &self.exec,
            &mut self.scratch,
            &block.qkv,
            rows,
            &self.xn,
            &mut self.qkv,
            Epilogue::default(),
            &mut bufs,
        );
        self.attention();
        observer.residual_input(i, BlockLinear::Proj, &self.x[..rows * d], rows, d);
        observer.linear_input(i, BlockLinear::Proj, &self.ctx[..rows * d], rows, d);
        if last == Some(BlockLinear::Proj) {
            return;
        }
        let residual = Epilogue { accumulate: true, scale: block.ls1.as_deref(), ..Epilogue::default() };
        let mut bufs = LinearBuffers { low_rank: &mut self.low_rank, lin_out: &mut self.lin_out, xt: &mut self.xt };
        apply_linear(
            model,
            backend,
            &self.exec,
            &mut self.scratch,
            &block.proj,
            rows,
            &self.ctx,
            &mut self.x,
            residual,
            &mut bufs,
        );

        kernels::layer_norm(
            backend,
            Rows::new(&self.x, rows, d, d),
            &block.norm2.weight,
            &block.norm2.bias,
            c.layer_norm_eps,
            RowsMut::new(&mut self.xn, rows, d, d),
        );
        observer.linear_input(i, BlockLinear::Fc1, &self.xn[..rows * d], rows, d);
        if last == Some(BlockLinear::Fc1) {
            return;
        }
        let gelu = Epilogue { gelu: true, ..Epilogue::default() };
        apply_linear(
            model,
            backend,
            &self.exec,
            &mut self.scratch,
            &block.fc1,
            rows,
            &self.xn,
            &mut self.hidden,
            gelu,
            &mut bufs,
        );
        observer.residual_input(i, BlockLinear::Fc2, &self.x[..rows * d], rows, d);
        observer.linear_input(i, BlockLinear::Fc2, &self.hidden[..rows * c.mlp_hidden], rows, c.mlp_hidden);
        if last == Some(BlockLinear::Fc2) {
            return;
        }
        let residual = Epilogue { accumulate: true, scale: block.ls2.as_deref(), ..Epilogue::default() };
        apply_linear(
            model,
            backend,
            &self.exec,
            &mut self.scratch,
            &block.fc2,
            rows,
            &self.hidden,
            &mut self.x,
            residual,
            &mut bufs,
        );
        observer.block_output(i, &self.x[..rows * d], rows, d);
    }

    /// Multi-head self-attention from `qkv` into `ctx` (heads concatenated, token-major).
    fn attention(&mut self) {
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
            *task = Some(AttnTask { items: range, first_row: consumed_rows, ctx: mine, scratch, scores });
            consumed_rows = end_row;
        }
        self.exec.for_each_mut(&mut tasks[..threads], |_, task| {
            let Some(task) = task else { return };
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
                    kernels::softmax_rows(backend, qn, t, scores, t, scale);
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
                }
            }
        });
    }

    /// Step 3 of a run: final norm, pooling and heads.
    pub fn finish(&mut self) -> Outputs<'_> {
        self.compute_outputs();
        self.outputs()
    }

    /// The outputs of the last run.
    fn outputs(&self) -> Outputs<'_> {
        let c = &self.model.config;
        let (n, t, d, k) = (self.batch, self.tokens, c.embed_dim, c.num_classes);
        let rows = n * t;
        let hidden: &[f32] =
            if self.model.norm.is_some() { &self.last_hidden[..rows * d] } else { &self.x[..rows * d] };
        Outputs {
            logits: if c.head == Head::None { None } else { Some(&self.logits[..n * k]) },
            last_hidden_state: hidden,
            pooler_output: &self.pooled[..n * d],
            batch: n,
            tokens: t,
            dim: d,
            num_classes: k,
        }
    }

    fn compute_outputs(&mut self) {
        let model = self.model;
        let c = &model.config;
        let (n, t, d, k) = (self.batch, self.tokens, c.embed_dim, c.num_classes);
        let rows = n * t;
        let backend = self.backend;
        if let Some(norm) = &model.norm {
            kernels::layer_norm(
                backend,
                Rows::new(&self.x, rows, d, d),
                &norm.weight,
                &norm.bias,
                c.layer_norm_eps,
                RowsMut::new(&mut self.last_hidden, rows, d, d),
            );
        }
        let hidden: &[f32] = if model.norm.is_some() { &self.last_hidden[..rows * d] } else { &self.x[..rows * d] };
        let prefix = c.num_prefix_tokens();
        for b in 0..n {
            let pooled = &mut self.pooled[b * d..(b + 1) * d];
            match c.global_pool {
                GlobalPool::Token => pooled.copy_from_slice(&hidden[b * t * d..b * t * d + d]),
                GlobalPool::Avg => {
                    pooled.iter_mut().for_each(|v| *v = 0.0);
                    for tok in prefix..t {
                        kernels::add_scaled(backend, pooled, &hidden[(b * t + tok) * d..(b * t + tok + 1) * d], None);
                    }
                    let inv = 1.0 / (t - prefix).max(1) as f32;
                    pooled.iter_mut().for_each(|v| *v *= inv);
                }
            }
        }
        if let Some(Norm { weight, bias }) = &model.fc_norm {
            // In place through a copy-free trick: normalise row by row into `xn` then copy back.
            kernels::layer_norm(
                backend,
                Rows::new(&self.pooled, n, d, d),
                weight,
                bias,
                c.layer_norm_eps,
                RowsMut::new(&mut self.xn, n, d, d),
            );
            self.pooled[..n * d].copy_from_slice(&self.xn[..n * d]);
        }
        let mut bufs = LinearBuffers { low_rank: &mut self.low_rank, lin_out: &mut self.lin_out, xt: &mut self.xt };
        match c.head {
            Head::None => {}
            Head::Linear => {
                let head = model.head.as_ref().expect("validated: linear head present");
                apply_linear_strided(
                    model,
                    backend,
                    &self.exec,
                    &mut self.scratch,
                    head,
                    n,
                    &self.pooled,
                    d,
                    &mut self.logits,
                    Epilogue::default(),
                    &mut bufs,
                );
            }
            Head::Distilled => {
                let head = model.head.as_ref().expect("validated: head present");
                let head_dist = model.head_dist.as_ref().expect("validated: head_dist present");
                // Rows are token 0 (class) and token 1 (distillation) of each image: stride t·d.
                apply_linear_strided(
                    model,
                    backend,
                    &self.exec,
                    &mut self.scratch,
                    head,
                    n,
                    hidden,
                    t * d,
                    &mut self.logits,
                    Epilogue::default(),
                    &mut bufs,
                );
                apply_linear_strided(
                    model,
                    backend,
                    &self.exec,
                    &mut self.scratch,
                    head_dist,
                    n,
                    &hidden[d..],
                    t * d,
                    &mut self.logits_dist,
                    Epilogue::default(),
                    &mut bufs,
                );
                for (a, b) in self.logits[..n * k].iter_mut().zip(&self.logits_dist[..n * k]) {
                    *a = (*a + *b) * 0.5;
                }
            }
        }
    }
}

/// The work of one thread in [`Session::attention`].
struct AttnTask<'s> {
    items: core::ops::Range<usize>,
    first_row: usize,
    ctx: &'s mut [f32],
    scratch: &'s mut Scratch,
    scores: &'s mut Vec<f32>,
}

/// Temporary buffers a factored or sparse linear layer needs.
struct LinearBuffers<'b> {
    low_rank: &'b mut [f32],
    lin_out: &'b mut [f32],
    xt: &'b mut [f32],
}

#[allow(clippy::too_many_arguments)]
fn apply_linear(
    model: &Model<'_>,
    backend: Backend,
    exec: &Exec,
    scratch: &mut [Scratch],
    layer: &Linear,
    rows: usize,
    input: &[f32],
    out: &mut [f32],
    epilogue: Epilogue<'_>,
    bufs: &mut LinearBuffers<'_>,
) {
    apply_linear_strided(model, backend, exec, scratch, layer, rows, input, layer.in_features, out, epilogue, bufs);
}

/// `out (ld m) ⊕= epilogue(input (ld lda) · Ŵᵀ + b)` for any representation of `Ŵ`.
#[allow(clippy::too_many_arguments)]
fn apply_linear_strided(
    model: &Model<'_>,
    backend: Backend,
    exec: &Exec,
    scratch: &mut [Scratch],
    layer: &Linear,
    rows: usize,
    input: &[f32],
    lda: usize,
    out: &mut [f32],
    epilogue: Epilogue<'_>,
    bufs: &mut LinearBuffers<'_>,
) {
    let (m, n) = (layer.out_features, layer.in_features);
    let bias = layer.bias.as_deref();
    match &layer.repr {
        LinearRepr::Dense(w) => {
            let ep = Epilogue { bias, ..epilogue };
            let b = MatB::weight(model.store.weights(w), m, n);
            kernels::gemm_parallel(
                backend,
                exec,
                scratch,
                Gemm { m: rows, a: input, lda, b, c: out, ldc: m, epilogue: ep },
            );
        }
        LinearRepr::Factored { u, v, rank, sparse } => {
            let r = *rank;
            let tmp = &mut bufs.low_rank[..rows * r];
            let vb = MatB::weight(model.store.weights(v), r, n);
            kernels::gemm_parallel(
                backend,
                exec,
                scratch,
                Gemm { m: rows, a: input, lda, b: vb, c: tmp, ldc: r, epilogue: Epilogue::default() },
            );
            let ub = MatB::weight(model.store.weights(u), m, r);
            match sparse {
                None => {
                    let ep = Epilogue { bias, ..epilogue };
                    kernels::gemm_parallel(
                        backend,
                        exec,
                        scratch,
                        Gemm { m: rows, a: tmp, lda: r, b: ub, c: out, ldc: m, epilogue: ep },
                    );
                }
                Some(s) => {
                    // y = (x·Vᵀ)·Uᵀ + b, then y += x·Sᵀ, then the activation / residual add.
                    let plain = !epilogue.gelu && !epilogue.accumulate;
                    let (row_ptr, col_idx, values) =
                        (model.store.u32s(&s.row_ptr), model.store.indices(&s.col_idx), model.store.weights(&s.values));
                    let y: &mut [f32] = if plain { out } else { &mut bufs.lin_out[..rows * m] };
                    let ep = Epilogue { bias, ..Epilogue::default() };
                    kernels::gemm_parallel(
                        backend,
                        exec,
                        scratch,
                        Gemm { m: rows, a: tmp, lda: r, b: ub, c: y, ldc: m, epilogue: ep },
                    );
                    let s = Csr { row_ptr, col_idx, values };
                    kernels::sparse_add(
                        backend,
                        s,
                        Rows::new(input, rows, n, lda),
                        RowsMut::new(y, rows, m, m),
                        bufs.xt,
                    );
                    if !plain {
                        let y = &mut bufs.lin_out[..rows * m];
                        if epilogue.gelu {
                            kernels::gelu(backend, y);
                        }
                        if epilogue.accumulate {
                            kernels::add_scaled(backend, &mut out[..rows * m], y, epilogue.scale);
                        } else {
                            out[..rows * m].copy_from_slice(y);
                        }
                    }
                }
            }
        }
    }
}

/// The position rows for a patch grid: the stored table, or its patch part resampled.
fn session_positions(model: &Model<'_>, grid: [usize; 2]) -> Vec<f32> {
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
