//! Residual streams of calibration images and the one runner that moves them through a model in
//! chunks of a batch: [`StreamRunner::embed`], [`StreamRunner::advance`] (one block, accumulating
//! the input moments if asked), [`StreamRunner::capture`] (a block's activations) and
//! [`StreamRunner::finish`] (the remaining blocks and the head). Also the seeded fit/validation
//! split of the images and the output distortion used by the sensitivity probes and the gates.

use std::ops::Range;

use factorvit::{BlockLinear, Head, Model, Observer, Session, SessionOptions};

use super::layer::{prefix_tokens, LINEARS_PER_BLOCK};
use super::pipeline::{Calibration, PipelineOptions};
use super::stats::Moments;
use super::MethodError;
use crate::data::Rng;

/// Which split an image belongs to.
#[derive(Debug, Clone)]
pub(super) struct Splits {
    /// Images the method fits on.
    pub fit: Vec<usize>,
    /// Held-out images (gates and validation errors).
    pub val: Vec<usize>,
}

impl Splits {
    /// Both splits, fit first.
    pub fn both(&self) -> [&[usize]; 2] {
        [&self.fit, &self.val]
    }
}

/// Seeded split of `n` images into fit and validation sets. Images come in groups — the photo
/// each was cut from, `photo_of[i]` when given, else `group` consecutive samples (random crops
/// of one photo); a group is never split, so the validation images are other photos than the
/// fit images. Groups are numbered in order of first appearance, so `photo_of = i / group`
/// gives the same split as `group`.
pub(super) fn make_splits(n: usize, val_fraction: f64, seed: u64, group: usize, photo_of: Option<&[u32]>) -> Splits {
    let group = group.max(1);
    // Dense group id of every image.
    let ids: Vec<usize> = match photo_of {
        Some(photos) => {
            let mut dense = std::collections::HashMap::new();
            photos
                .iter()
                .take(n)
                .map(|p| {
                    let next = dense.len();
                    *dense.entry(*p).or_insert(next)
                })
                .collect()
        }
        None => (0..n).map(|i| i / group).collect(),
    };
    let groups = ids.iter().max().map_or(0, |m| m + 1);
    let perm = Rng::scrambled(seed ^ 0x7a11_da7e).permutation(groups);
    let nval = if groups >= 4 && val_fraction > 0.0 {
        ((groups as f64 * val_fraction).round() as usize).clamp(1, groups - 2)
    } else {
        0
    };
    let expand = |gs: &[usize]| -> Vec<usize> {
        let mut chosen = vec![false; groups];
        for &g in gs {
            chosen[g] = true;
        }
        (0..n).filter(|&i| chosen[ids[i]]).collect()
    };
    Splits { fit: expand(&perm[nval..]), val: expand(&perm[..nval]) }
}

/// Outputs of a run kept for comparisons.
#[derive(Debug, Clone)]
pub(super) struct OwnedOutputs {
    logits: Option<Vec<f32>>,
    hidden: Vec<f32>,
    classes: usize,
    dim: usize,
}

/// Output distortion of `other` against `reference`: mean KL(reference ‖ other) of the class
/// distributions for classifiers, mean `1 − cos` of the output tokens for backbones.
pub(super) fn distortion(reference: &OwnedOutputs, other: &OwnedOutputs) -> f64 {
    match (&reference.logits, &other.logits) {
        (Some(a), Some(b)) => {
            let k = reference.classes;
            let n = a.len() / k;
            (0..n).map(|i| super::eval::kl_logits(&a[i * k..(i + 1) * k], &b[i * k..(i + 1) * k])).sum::<f64>()
                / n as f64
        }
        _ => {
            let d = reference.dim;
            let rows = reference.hidden.len() / d;
            (0..rows)
                .map(|r| {
                    1.0 - super::eval::cosine(&reference.hidden[r * d..(r + 1) * d], &other.hidden[r * d..(r + 1) * d])
                })
                .sum::<f64>()
                / rows as f64
        }
    }
}

/// Residual streams of a set of images at one block boundary, `[images, tokens, dim]`.
pub(super) struct Stream {
    /// All images' streams.
    pub data: Vec<f32>,
    per_image: usize,
}

impl Stream {
    fn images(&self, range: Range<usize>) -> &[f32] {
        &self.data[range.start * self.per_image..range.end * self.per_image]
    }
    fn images_mut(&mut self, range: Range<usize>) -> &mut [f32] {
        &mut self.data[range.start * self.per_image..range.end * self.per_image]
    }
}

/// Activations captured from one block: the layer inputs and, if asked, the residual stream
/// that `proj`'s or `fc2`'s output is added to.
pub(super) struct Captured {
    /// Layer inputs, indexed like [`BlockLinear::ALL`].
    pub inputs: Vec<Vec<f32>>,
    /// Residual streams, indexed by [`residual_index`].
    pub residuals: [Vec<f32>; 2],
    /// Layer inputs not to keep (indexed like `inputs`).
    skip_inputs: [bool; LINEARS_PER_BLOCK],
}

impl Captured {
    /// Keeps every layer input.
    pub fn new() -> Captured {
        Captured::skipping([false; LINEARS_PER_BLOCK])
    }

    /// Keeps the layer inputs not marked in `skip_inputs`.
    pub fn skipping(skip_inputs: [bool; LINEARS_PER_BLOCK]) -> Captured {
        Captured { inputs: vec![Vec::new(); LINEARS_PER_BLOCK], residuals: [Vec::new(), Vec::new()], skip_inputs }
    }
}

/// Index in [`Captured::residuals`] of a layer that writes into the residual stream.
pub(super) fn residual_index(which: BlockLinear) -> Option<usize> {
    match which {
        BlockLinear::Proj => Some(0),
        BlockLinear::Fc2 => Some(1),
        BlockLinear::Qkv | BlockLinear::Fc1 => None,
    }
}

/// What [`StreamRunner::capture`] runs and keeps.
#[derive(Debug, Clone, Copy)]
pub(super) enum Capture {
    /// The whole block: every layer input (but those [`Captured`] skips); the stream advances
    /// through the block.
    Block {
        /// Keep the residual stream this layer's output is added to (`proj` or `fc2`).
        residual_of: Option<BlockLinear>,
    },
    /// The block up to one layer: only that layer's input; the stream stays where it is (for
    /// the compressed model's captures during compensation this skips 60 % of the block work
    /// on average).
    UpTo {
        /// The layer.
        which: BlockLinear,
        /// As in [`Capture::Block`].
        residual_of: Option<BlockLinear>,
    },
}

struct CaptureObserver<'a> {
    which: Option<BlockLinear>,
    out: &'a mut Captured,
    residual_of: Option<BlockLinear>,
}

impl Observer for CaptureObserver<'_> {
    fn linear_input(&mut self, _block: usize, which: BlockLinear, x: &[f32], _rows: usize, _cols: usize) {
        if self.which.map_or(true, |w| w == which) && !self.out.skip_inputs[which as usize] {
            self.out.inputs[which as usize].extend_from_slice(x);
        }
    }
    fn residual_input(&mut self, _block: usize, which: BlockLinear, x: &[f32], _rows: usize, _dim: usize) {
        if self.residual_of == Some(which) {
            if let Some(i) = residual_index(which) {
                self.out.residuals[i].extend_from_slice(x);
            }
        }
    }
}

struct MomentsObserver<'a> {
    moments: &'a mut [Moments],
    /// Tokens per image and leading prefix tokens per image.
    tokens: usize,
    prefix: usize,
    /// Extra weight of the prefix tokens (`prefix_token_weight − 1`; 0 = none).
    extra: f64,
}

impl Observer for MomentsObserver<'_> {
    fn linear_input(&mut self, _block: usize, which: BlockLinear, x: &[f32], rows: usize, cols: usize) {
        self.moments[which as usize].add(x, rows);
        if self.extra > 0.0 {
            let (p, n) = prefix_rows(x, rows, cols, self.tokens, self.prefix);
            self.moments[which as usize].add_weighted(&p, n, self.extra);
        }
    }
}

/// The rows of the prefix tokens (the first `prefix` of every `tokens` rows).
pub(super) fn prefix_rows(x: &[f32], rows: usize, cols: usize, tokens: usize, prefix: usize) -> (Vec<f32>, usize) {
    let mut out = Vec::new();
    let mut n = 0;
    if tokens == 0 || prefix == 0 {
        return (out, 0);
    }
    for r in (0..rows).filter(|r| r % tokens < prefix) {
        out.extend_from_slice(&x[r * cols..(r + 1) * cols]);
        n += 1;
    }
    (out, n)
}

/// Runs models over the calibration images in chunks of one batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamRunner<'c> {
    calib: Calibration<'c>,
    batch: usize,
    threads: usize,
    /// Extra weight of the prefix tokens in the moments (`prefix_token_weight − 1`, at least 0).
    prefix_extra: f64,
}

impl<'c> StreamRunner<'c> {
    /// A runner over `calib` with the batch, threads and prefix weight of `opts`.
    pub fn new(calib: &Calibration<'c>, opts: &PipelineOptions) -> StreamRunner<'c> {
        StreamRunner {
            calib: *calib,
            batch: opts.batch,
            threads: opts.threads,
            prefix_extra: (opts.prefix_token_weight - 1.0).max(0.0),
        }
    }

    fn session<'m, 'a>(&self, model: &'m Model<'a>) -> Result<Session<'m, 'a>, MethodError> {
        Ok(model.session(SessionOptions {
            threads: self.threads,
            batch: self.batch,
            image_size: self.calib.image_size,
            ..Default::default()
        })?)
    }

    /// The chunk loop: embeds the images `ids` a batch at a time, then calls `step` with the
    /// session and the positions of the chunk's images in `ids`.
    fn for_each_chunk<'m, 'a>(
        &self,
        session: &mut Session<'m, 'a>,
        ids: &[usize],
        mut step: impl FnMut(&mut Session<'m, 'a>, Range<usize>) -> Result<(), MethodError>,
    ) -> Result<(), MethodError> {
        for (chunk_i, chunk) in ids.chunks(self.batch).enumerate() {
            let start = chunk_i * self.batch;
            session.embed(&self.calib.gather(chunk))?;
            step(session, start..start + chunk.len())?;
        }
        Ok(())
    }

    /// Embeds images (by id) into a residual stream.
    pub fn embed(&self, model: &Model<'_>, ids: &[usize]) -> Result<Stream, MethodError> {
        let mut session = self.session(model)?;
        let per_image = session.tokens() * model.config().embed_dim;
        let mut data = vec![0.0f32; ids.len() * per_image];
        self.for_each_chunk(&mut session, ids, |s, range| {
            data[range.start * per_image..range.end * per_image].copy_from_slice(s.residual());
            Ok(())
        })?;
        Ok(Stream { data, per_image })
    }

    /// Runs the blocks `from..` and the head on a stream of images (the stream is not modified).
    pub fn finish(
        &self,
        model: &Model<'_>,
        ids: &[usize],
        stream: &Stream,
        from: usize,
    ) -> Result<OwnedOutputs, MethodError> {
        let mut session = self.session(model)?;
        let c = model.config();
        let mut out = OwnedOutputs {
            logits: (c.head != Head::None).then(Vec::new),
            hidden: Vec::new(),
            classes: c.num_classes,
            dim: c.embed_dim,
        };
        self.for_each_chunk(&mut session, ids, |s, range| {
            s.residual_mut().copy_from_slice(stream.images(range));
            for b in from..c.depth {
                s.run_block(b, &mut factorvit::NoObserver);
            }
            let o = s.finish();
            if let (Some(dst), Some(src)) = (out.logits.as_mut(), o.logits) {
                dst.extend_from_slice(src);
            }
            out.hidden.extend_from_slice(o.last_hidden_state);
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs block `block` over a stream in place, accumulating the input moments if asked
    /// (indexed like [`BlockLinear::ALL`]).
    pub fn advance(
        &self,
        model: &Model<'_>,
        ids: &[usize],
        stream: &mut Stream,
        block: usize,
        mut moments: Option<&mut [Moments]>,
    ) -> Result<(), MethodError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut session = self.session(model)?;
        let prefix = prefix_tokens(model.config());
        self.for_each_chunk(&mut session, ids, |s, range| {
            s.residual_mut().copy_from_slice(stream.images(range.clone()));
            match moments.as_deref_mut() {
                Some(m) => {
                    let tokens = s.tokens();
                    let mut obs = MomentsObserver { moments: m, tokens, prefix, extra: self.prefix_extra };
                    s.run_block(block, &mut obs)
                }
                None => s.run_block(block, &mut factorvit::NoObserver),
            }
            stream.images_mut(range).copy_from_slice(s.residual());
            Ok(())
        })
    }

    /// Runs block `block` (or its start, see [`Capture`]) on a stream, capturing activations into
    /// `out`; advances the stream only for [`Capture::Block`].
    pub fn capture(
        &self,
        model: &Model<'_>,
        ids: &[usize],
        stream: &mut Stream,
        block: usize,
        what: Capture,
        out: &mut Captured,
    ) -> Result<(), MethodError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut session = self.session(model)?;
        let (which, residual_of) = match what {
            Capture::Block { residual_of } => (None, residual_of),
            Capture::UpTo { which, residual_of } => (Some(which), residual_of),
        };
        self.for_each_chunk(&mut session, ids, |s, range| {
            s.residual_mut().copy_from_slice(stream.images(range.clone()));
            let mut observer = CaptureObserver { which, out: &mut *out, residual_of };
            match which {
                Some(last) => s.run_block_until(block, last, &mut observer),
                None => {
                    s.run_block(block, &mut observer);
                    stream.images_mut(range).copy_from_slice(s.residual());
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::eval::{self, RunOptions};
    use crate::method::synthetic::{random_images, random_vit_spec, SyntheticVit};

    fn micro() -> (Model<'static>, Vec<f32>, usize) {
        let g = SyntheticVit::micro();
        let spec = random_vit_spec(&g, 3).unwrap();
        let model = Model::from_vec(crate::writer::to_bytes(&spec).unwrap()).unwrap();
        let n = 10;
        (model, random_images(&g, n, 5), n)
    }

    #[test]
    fn the_runner_moves_streams_like_a_whole_run() {
        let (model, pixels, n) = micro();
        let calib = Calibration { pixels: &pixels, count: n, image_size: [0, 0], groups: None };
        // Batch 4 over 7 images: chunks of 4 and 3.
        let opts = PipelineOptions { batch: 4, threads: 1, ..PipelineOptions::default() };
        let runner = StreamRunner::new(&calib, &opts);
        let ids: Vec<usize> = vec![0, 2, 3, 5, 6, 8, 9];
        let embedded = runner.embed(&model, &ids).unwrap();
        let (mut a, mut b, mut c) = (
            runner.embed(&model, &ids).unwrap(),
            runner.embed(&model, &ids).unwrap(),
            runner.embed(&model, &ids).unwrap(),
        );
        let cfg = model.config().clone();
        let widths = BlockLinear::ALL.map(|w| super::super::layer::input_width(&cfg, w));
        let mut moments: Vec<Moments> = widths.iter().map(|&w| Moments::new(w)).collect();
        runner.advance(&model, &ids, &mut a, 0, None).unwrap();
        runner.advance(&model, &ids, &mut b, 0, Some(&mut moments)).unwrap();
        let mut all = Captured::new();
        runner
            .capture(&model, &ids, &mut c, 0, Capture::Block { residual_of: Some(BlockLinear::Fc2) }, &mut all)
            .unwrap();
        assert_eq!(a.data, b.data);
        assert_eq!(a.data, c.data);
        assert_ne!(a.data, embedded.data);
        let rows = ids.len() * embedded.per_image / cfg.embed_dim;
        for (which, w) in BlockLinear::ALL.into_iter().zip(widths) {
            assert_eq!(all.inputs[which as usize].len(), rows * w, "{which:?}");
            assert_eq!(moments[which as usize].count, rows as f64, "{which:?}");
        }
        assert!(all.residuals[0].is_empty());
        assert_eq!(all.residuals[1].len(), rows * cfg.embed_dim);
        // Up to one layer: only its input, and the stream stays.
        let mut d = runner.embed(&model, &ids).unwrap();
        let mut one = Captured::new();
        let what = Capture::UpTo { which: BlockLinear::Proj, residual_of: Some(BlockLinear::Proj) };
        runner.capture(&model, &ids, &mut d, 0, what, &mut one).unwrap();
        assert_eq!(d.data, embedded.data);
        assert_eq!(one.inputs[BlockLinear::Proj as usize], all.inputs[BlockLinear::Proj as usize]);
        assert!(one.inputs[BlockLinear::Qkv as usize].is_empty() && one.inputs[BlockLinear::Fc2 as usize].is_empty());
        assert_eq!(one.residuals[0].len(), rows * cfg.embed_dim);
        // Finishing the advanced stream from block 1 gives the whole model's outputs.
        let finished = runner.finish(&model, &ids, &a, 1).unwrap();
        let run = RunOptions { batch: 4, threads: 1, keep_tokens: true };
        let whole = eval::run_model(&model, &calib.gather(&ids), ids.len(), [0, 0], run, |_| {}).unwrap();
        assert_eq!(finished.logits.as_deref(), Some(whole.logits.as_slice()));
        assert_eq!(finished.hidden, whole.last_hidden_state);
        assert_eq!(distortion(&finished, &finished), 0.0);
        // Empty id lists are no work.
        let mut empty = runner.embed(&model, &[]).unwrap();
        assert!(empty.data.is_empty());
        runner.advance(&model, &[], &mut empty, 0, None).unwrap();
    }

    #[test]
    fn splits_keep_groups_together_and_repeat() {
        let s = make_splits(40, 0.25, 3, 4, None);
        assert_eq!(s.fit.len() + s.val.len(), 40);
        assert_eq!(s.val.len(), 12);
        for g in 0..10 {
            let in_val = s.val.contains(&(4 * g));
            assert!((4 * g..4 * g + 4).all(|i| s.val.contains(&i) == in_val));
        }
        assert_eq!(make_splits(40, 0.25, 3, 4, None).val, s.val);
        assert!(make_splits(3, 0.5, 0, 1, None).val.is_empty());
        // Explicit photo indices: `i / 4` is the same split as groups of 4 ...
        let photos: Vec<u32> = (0..40).map(|i| i / 4).collect();
        let explicit = make_splits(40, 0.25, 3, 1, Some(&photos));
        assert_eq!((explicit.fit, explicit.val), (s.fit.clone(), s.val.clone()));
        // ... and interleaved crops (photo = i mod 10) are kept together too.
        let interleaved: Vec<u32> = (0..40).map(|i| i % 10).collect();
        let t = make_splits(40, 0.25, 3, 1, Some(&interleaved));
        assert_eq!(t.fit.len() + t.val.len(), 40);
        assert_eq!(t.val.len(), 12);
        for &i in &t.val {
            assert!((0..40).filter(|j| j % 10 == i % 10).all(|j| t.val.contains(&j)));
        }
    }
}
