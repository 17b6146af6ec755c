//! The forward pass of a [`Session`], in run order: embeddings (patches, prefix tokens,
//! positions), transformer blocks, then final norm, pooling and heads (attention is in
//! `attention.rs`, linear layers in `linear.rs`).

use alloc::format;

use super::linear::LinearCtx;
use super::{Observer, Op, Outputs, Session, MAX_THREADS};
use crate::config::{GlobalPool, Head};
use crate::error::{Error, Result};
use crate::format::schema::BlockLinear;
use crate::kernels::{self, Epilogue, Gemm, MatB, Rows, RowsMut};
use crate::model::{LinearRepr, Norm};
use crate::parallel::split_range;

/// A [`LinearCtx`] over a session's model, backend, pool, scratch and temporaries. A macro
/// rather than a method so that the session's activation buffers stay free to borrow.
macro_rules! linear_ctx {
    ($session:expr) => {
        LinearCtx {
            model: $session.model,
            backend: $session.backend,
            exec: &$session.exec,
            scratch: &mut $session.scratch,
            bufs: &mut $session.linear_bufs,
        }
    };
}

impl Session<'_, '_> {
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

    /// LayerNorm of the residual stream `x` into `xn` (the input of `qkv` and `fc1`), split by
    /// rows between the threads (each row is normalised by the same kernel call sequence
    /// whatever the split: bit-identical for any thread count).
    fn normalise_residual(&mut self, norm: &Norm) {
        let (rows, d) = (self.rows(), self.dim());
        let eps = self.model.config.layer_norm_eps;
        let (backend, exec) = (self.backend, &self.exec);
        let (gamma, beta) = (&norm.weight[..], &norm.bias[..]);
        // At least 16 rows per thread, else the fork costs more than it saves.
        let parts = exec.threads().min(rows / 16).clamp(1, MAX_THREADS);
        let (x, out) = (&self.x[..rows * d], &mut self.xn[..rows * d]);
        if parts == 1 {
            kernels::layer_norm(backend, Rows::new(x, rows, d, d), gamma, beta, eps, RowsMut::new(out, rows, d, d));
            return;
        }
        let mut items: [Option<(&[f32], &mut [f32])>; MAX_THREADS] = [const { None }; MAX_THREADS];
        let mut rest = out;
        for (part, item) in items.iter_mut().take(parts).enumerate() {
            let r = split_range(rows, parts, 1, part);
            let (mine, tail) = core::mem::take(&mut rest).split_at_mut(r.len() * d);
            rest = tail;
            *item = Some((&x[r.start * d..r.end * d], mine));
        }
        exec.for_each_mut(&mut items[..parts], |_, item| {
            if let Some((x, out)) = item {
                let n = x.len() / d;
                kernels::layer_norm(backend, Rows::new(x, n, d, d), gamma, beta, eps, RowsMut::new(out, n, d, d));
            }
        });
    }

    /// Block `i`; with `last`, only up to the input of that layer (see
    /// [`Session::run_block_until`]).
    pub(super) fn run_block_inner(&mut self, i: usize, last: Option<BlockLinear>, observer: &mut dyn Observer) {
        let model = self.model;
        let block = &model.blocks[i];
        let c = &model.config;
        let (rows, d) = (self.rows(), c.embed_dim);
        let mut t = self.profiler.start();
        self.normalise_residual(&block.norm1);
        self.profiler.lap(Op::Norm, &mut t);
        observer.linear_input(i, BlockLinear::Qkv, &self.xn[..rows * d], rows, d);
        if last == Some(BlockLinear::Qkv) {
            return;
        }
        let _ = t.lap();
        linear_ctx!(self).apply(&block.qkv, Rows::new(&self.xn, rows, d, d), &mut self.qkv, Epilogue::default());
        self.profiler.lap(Op::Qkv, &mut t);
        let parts = self.attention();
        self.profiler.lap_attention(&mut t, parts);
        observer.residual_input(i, BlockLinear::Proj, &self.x[..rows * d], rows, d);
        observer.linear_input(i, BlockLinear::Proj, &self.ctx[..rows * d], rows, d);
        if last == Some(BlockLinear::Proj) {
            return;
        }
        let _ = t.lap(); // the observer's time is nobody's
        let residual = Epilogue { accumulate: true, scale: block.ls1.as_deref(), ..Epilogue::default() };
        linear_ctx!(self).apply(&block.proj, Rows::new(&self.ctx, rows, d, d), &mut self.x, residual);
        self.profiler.lap(Op::Proj, &mut t);

        self.normalise_residual(&block.norm2);
        self.profiler.lap(Op::Norm, &mut t);
        observer.linear_input(i, BlockLinear::Fc1, &self.xn[..rows * d], rows, d);
        if last == Some(BlockLinear::Fc1) {
            return;
        }
        let _ = t.lap();
        let gelu = Epilogue { gelu: true, ..Epilogue::default() };
        linear_ctx!(self).apply(&block.fc1, Rows::new(&self.xn, rows, d, d), &mut self.hidden, gelu);
        self.profiler.lap(Op::Fc1Gelu, &mut t);
        let hidden = c.mlp_hidden;
        observer.residual_input(i, BlockLinear::Fc2, &self.x[..rows * d], rows, d);
        observer.linear_input(i, BlockLinear::Fc2, &self.hidden[..rows * hidden], rows, hidden);
        if last == Some(BlockLinear::Fc2) {
            return;
        }
        let _ = t.lap();
        let residual = Epilogue { accumulate: true, scale: block.ls2.as_deref(), ..Epilogue::default() };
        linear_ctx!(self).apply(&block.fc2, Rows::new(&self.hidden, rows, hidden, hidden), &mut self.x, residual);
        self.profiler.lap(Op::Fc2, &mut t);
        observer.block_output(i, &self.x[..rows * d], rows, d);
    }

    /// Step 3 of a run: final norm, pooling and heads.
    pub fn finish(&mut self) -> Outputs<'_> {
        self.compute_outputs();
        self.outputs()
    }

    /// The outputs of the last run.
    pub(super) fn outputs(&self) -> Outputs<'_> {
        let c = &self.model.config;
        let (n, t, d, k) = (self.batch, self.tokens, c.embed_dim, c.num_classes);
        Outputs {
            logits: if c.head == Head::None { None } else { Some(&self.logits[..n * k]) },
            last_hidden_state: self.hidden_state(),
            pooler_output: &self.pooled[..n * d],
            batch: n,
            tokens: t,
            dim: d,
            num_classes: k,
        }
    }

    /// The token features after the final norm (the residual stream without one).
    fn hidden_state(&self) -> &[f32] {
        let n = self.rows() * self.dim();
        if self.model.norm.is_some() {
            &self.last_hidden[..n]
        } else {
            &self.x[..n]
        }
    }

    /// Final norm, pooling, `fc_norm` and heads into the output buffers.
    pub(super) fn compute_outputs(&mut self) {
        self.final_norm_and_pool();
        self.heads();
    }

    fn final_norm_and_pool(&mut self) {
        let model = self.model;
        let c = &model.config;
        let (n, t, d) = (self.batch, self.tokens, c.embed_dim);
        let rows = n * t;
        let backend = self.backend;
        let eps = c.layer_norm_eps;
        if let Some(Norm { weight, bias }) = &model.norm {
            kernels::layer_norm(
                backend,
                Rows::new(&self.x, rows, d, d),
                weight,
                bias,
                eps,
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
            // The LayerNorm kernel cannot work in place: normalise into `xn`, then copy back.
            kernels::layer_norm(
                backend,
                Rows::new(&self.pooled, n, d, d),
                weight,
                bias,
                eps,
                RowsMut::new(&mut self.xn, n, d, d),
            );
            self.pooled[..n * d].copy_from_slice(&self.xn[..n * d]);
        }
    }

    fn heads(&mut self) {
        let model = self.model;
        let c = &model.config;
        let (n, t, d, k) = (self.batch, self.tokens, c.embed_dim, c.num_classes);
        let rows = n * t;
        match c.head {
            Head::None => {}
            Head::Linear => {
                let head = model.head.as_ref().expect("validated: linear head present");
                let pooled = Rows::new(&self.pooled, n, d, d);
                linear_ctx!(self).apply(head, pooled, &mut self.logits, Epilogue::default());
            }
            Head::Distilled => {
                let head = model.head.as_ref().expect("validated: head present");
                let head_dist = model.head_dist.as_ref().expect("validated: head_dist present");
                let hidden: &[f32] =
                    if model.norm.is_some() { &self.last_hidden[..rows * d] } else { &self.x[..rows * d] };
                // Rows are token 0 (class) and token 1 (distillation) of each image: stride t·d.
                let class_rows = Rows::new(hidden, n, d, t * d);
                linear_ctx!(self).apply(head, class_rows, &mut self.logits, Epilogue::default());
                let dist_rows = Rows::new(&hidden[d..], n, d, t * d);
                linear_ctx!(self).apply(head_dist, dist_rows, &mut self.logits_dist, Epilogue::default());
                for (a, b) in self.logits[..n * k].iter_mut().zip(&self.logits_dist[..n * k]) {
                    *a = (*a + *b) * 0.5;
                }
            }
        }
    }
}
