//! Inference sessions: every activation buffer preallocated once, then any number of runs
//! without heap allocation.
//!
//! Rooms: this file holds [`Session`], its options, [`Session::run`] and [`Outputs`];
//! `arena.rs` plans every buffer before allocating; `observer.rs` has the [`Observer`] hooks;
//! `forward.rs` is the pass itself (embeddings, blocks, final norm, pooling, heads), with
//! `attention.rs` and `linear.rs` (one [`LinearCtx`](linear) applies any linear layer);
//! `calibration.rs` is the compressor's API (residual stream access, partial blocks).

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use crate::config::Head;
use crate::error::{Error, Result};
use crate::kernels::{Backend, Scratch};
use crate::model::Model;
use crate::parallel::Exec;

mod arena;
mod attention;
mod calibration;
mod forward;
mod linear;
mod observer;
mod profile;

pub use observer::{NoObserver, Observer};
pub use profile::{Op, Profile};

use arena::{session_positions, ArenaPlan};
use linear::LinearBuffers;
use profile::Profiler;

/// Upper bound on threads per session (work descriptors live on the stack).
pub const MAX_THREADS: usize = 64;

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
    /// Temporaries of factored and sparse linear layers.
    linear_bufs: LinearBuffers,
    last_hidden: Vec<f32>,
    pooled: Vec<f32>,
    logits: Vec<f32>,
    logits_dist: Vec<f32>,
    scratch: Vec<Scratch>,
    scores: Vec<Vec<f32>>,
    profiler: Profiler,
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
            linear_bufs: LinearBuffers { low_rank: buf(plan.low_rank), lin_out: buf(plan.lin_out), xt: buf(plan.xt) },
            last_hidden: buf(if c.final_norm { plan.stream } else { 0 }),
            pooled: buf(plan.pooled),
            logits: buf(plan.logits),
            logits_dist: buf(if c.head == Head::Distilled { plan.logits } else { 0 }),
            scratch,
            scores,
            profiler: Profiler::default(),
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
            &self.linear_bufs.low_rank,
            &self.linear_bufs.lin_out,
            &self.linear_bufs.xt,
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
            macs += t * b.linears().iter().map(|l| l.info().macs_per_row).sum::<usize>();
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
            let mut run = self.profiler.start();
            let mut t = self.profiler.start();
            self.embed(pixel_values)?;
            self.profiler.lap(Op::PatchEmbed, &mut t);
            observer.embeddings(&self.x[..self.rows() * self.dim()], self.rows(), self.dim());
            for i in 0..self.model.blocks.len() {
                self.run_block(i, observer);
            }
            let mut t = self.profiler.start();
            self.compute_outputs();
            self.profiler.lap(Op::Head, &mut t);
            self.profiler.end_run(&mut run);
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
}
