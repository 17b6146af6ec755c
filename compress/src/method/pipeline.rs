//! The whole method over a model and calibration images.
//!
//! [`compress_model`] runs the phases below in order; each lives in its own module
//! (`measure`, `allocate`, `factors`, `compensation`, over the `streams` runner and the `layer`
//! view of a block linear).
//!
//! 1. **Statistics, block by block.** The calibration images are embedded once; the residual
//!    stream of all images is kept at one block boundary, and each block is run on it in
//!    batches while an observer accumulates the moments of the four linear inputs (separately
//!    for a fit split and a held-out validation split). Memory stays bounded by one block.
//! 2. **Decomposition.** Each layer's weight is factorised in its input metric (whitened SVD,
//!    [`super::decompose`]); the discarded squared singular values give its error at every rank.
//! 3. **Sensitivity** (optional). Each layer alone is compressed hard and the distortion of the
//!    model output is measured (KL of the class distribution, or `1 − cos` of the tokens for
//!    backbones), starting from the cached residual stream at that layer's block.
//! 4. **Allocation.** One global budget, greedy on (sensitivity-weighted, normalised) error per
//!    parameter ([`super::allocate`]).
//! 5. **Sparse term** (optional) in selected layers, charged to the same budget, kept only where
//!    it lowers the validation error at equal cost.
//! 6. **Compensation** (optional): blocks in order, each layer refit on the compressed model's
//!    inputs against the original outputs ([`super::compensate`]), gated per layer on the
//!    validation split, and the whole model gated on the validation images' final outputs.

use std::time::Instant;

use factorvit::{Head, Model};

use super::allocate::{self, AllocationRequest, LayerCurve};
use super::compensate::{Candidate, CompensationOptions};
use super::compensation::{self, Gate, GateSummary, TargetVariance};
use super::factors::{self, Factored};
use super::layer::{self, LayerState};
use super::linalg::Matrix;
use super::measure::{self, Measured};
use super::report::{LayerReport, Report};
use super::streams::{make_splits, Splits, StreamRunner};
use super::MethodError;

pub use super::compensation::{choose_compensated_blocks, COMPENSATION_GATE_TIE};
pub use super::layer::to_linear_weights;
pub use super::progress::{Phase, Progress, ProgressEvent};
pub use super::sensitivity::{
    sensitivity_image_count, DEFAULT_SENSITIVITY_IMAGES, DEFAULT_SENSITIVITY_WORK_CAP, MIN_SENSITIVITY_IMAGES,
};

/// How a layer's factors are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorMethod {
    /// Plain truncated SVD of `W` (no data; bias unchanged).
    Svd,
    /// SVD in the input metric with bias correction.
    Whitened,
}

/// How ranks are distributed across layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankPolicy {
    /// The same fraction of parameters in every layer.
    Uniform,
    /// Greedy on normalised error per parameter.
    Greedy,
    /// Greedy on sensitivity-weighted normalised error per parameter.
    GreedySensitivity,
}

/// Which layers may carry a sparse term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseLayers {
    /// Only `mlp.fc2` (where the reference found it pays).
    Fc2,
    /// Every block linear.
    All,
}

/// Options of the whole method.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Budget: block-linear parameters (sparse entries counted with their index cost).
    pub budget_params: usize,
    /// Factorisation.
    pub method: FactorMethod,
    /// Rank distribution.
    pub ranks: RankPolicy,
    /// Fraction of an eligible layer's low-rank parameters converted to sparse entries (0 = off).
    pub sparse_fraction: f64,
    /// Layers eligible for a sparse term.
    pub sparse_layers: SparseLayers,
    /// Parameters charged per sparse entry (value + index, in units of one weight value).
    pub sparse_entry_cost: f64,
    /// Parameters charged per sparse row pointer (4 bytes in units of one weight value).
    pub sparse_row_cost: f64,
    /// Extra ranks per factored layer reserved for a low-rank residual (merged into `U·V`).
    pub residual_rank: usize,
    /// Layer-wise compensation.
    pub compensation: bool,
    /// Measure the errors of layers followed by a LayerScale `γ` (`attn.proj`, `mlp.fc2`) in
    /// residual-stream units, i.e. on `γ ⊙ (W x + b)` (decomposition, allocation, sparse term and
    /// compensation). No effect on models without LayerScale.
    pub layer_scale_aware: bool,
    /// Weight of the prefix tokens (class / distillation token) in every statistic (1 = every
    /// token counts the same). The class token is what the head or pooler reads, and in deep
    /// blocks patch tokens attend to it heavily, so it is worth more than one of ~200 tokens.
    pub prefix_token_weight: f64,
    /// Compensation targets of `attn.proj` and `mlp.fc2` (the layers whose output is added to
    /// the residual stream) include the stream's drift `h_o − h_c` at that point, so those
    /// layers also cancel what they can of the upstream error (block-output reconstruction;
    /// see `compensate::SplitLoss::towards_target`). Off: every layer targets only its own output
    /// (the earlier behaviour, kept for ablations).
    pub residual_target: bool,
    /// Options of the compensation.
    pub compensation_options: CompensationOptions,
    /// Ridge added to the input covariance for the decomposition (fraction of its mean
    /// eigenvalue; 0 = exact metric). Candidates are compared on the validation split.
    pub whitening_ridge: Vec<f64>,
    /// Fraction of calibration images held out for validation.
    pub validation_fraction: f64,
    /// Allocate ranks on the validation split's error curves instead of the fit split's.
    pub allocate_on_validation: bool,
    /// Images used to measure layer sensitivities (at most; see `sensitivity_work_cap`).
    pub sensitivity_images: usize,
    /// Cap on the probes' forward work, in dense passes over the calibration set (`None`: use
    /// `sensitivity_images` as given). Probing one image costs about `2·(depth + 1)` block
    /// passes against `depth` for a dense pass, so deep models with few calibration images
    /// probe fewer images (never fewer than [`MIN_SENSITIVITY_IMAGES`]).
    pub sensitivity_work_cap: Option<f64>,
    /// Fraction of a layer's dense-equivalent rank used for the sensitivity probe.
    pub sensitivity_probe_keep: f64,
    /// Consecutive calibration samples that come from one photo (crops); splits keep them
    /// together. Ignored when the calibration carries [`Calibration::groups`].
    pub group_size: usize,
    /// Images per batch.
    pub batch: usize,
    /// Threads of the runtime sessions.
    pub threads: usize,
    /// Seed (validation split and every other random choice).
    pub seed: u64,
    /// Keep each block linear's dense-input covariance and mean in [`Compressed::input_moments`]
    /// (for activation-aware int8 quantisation; memory: one `n × n` f64 matrix per layer).
    pub keep_input_moments: bool,
    /// Progress callback (default: none). The method draws nothing itself.
    pub progress: Progress,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            budget_params: 0,
            method: FactorMethod::Whitened,
            ranks: RankPolicy::GreedySensitivity,
            sparse_fraction: 0.0,
            sparse_layers: SparseLayers::Fc2,
            sparse_entry_cost: 2.0,
            sparse_row_cost: 2.0,
            residual_rank: 0,
            compensation: true,
            layer_scale_aware: true,
            prefix_token_weight: 1.0,
            residual_target: true,
            compensation_options: CompensationOptions::default(),
            whitening_ridge: vec![0.0],
            validation_fraction: 0.2,
            allocate_on_validation: false,
            sensitivity_images: DEFAULT_SENSITIVITY_IMAGES,
            sensitivity_work_cap: Some(DEFAULT_SENSITIVITY_WORK_CAP),
            sensitivity_probe_keep: 0.1,
            group_size: 1,
            batch: 16,
            threads: 0,
            seed: 0,
            keep_input_moments: false,
            progress: Progress::none(),
        }
    }
}

impl PipelineOptions {
    /// Checks the numeric options: fractions in `[0, 1)`, finite non-negative ridges, a finite
    /// prefix weight of at least 1, positive costs. [`compress_model`] calls it first.
    pub fn validate(&self) -> Result<(), MethodError> {
        let bad = |what: &str, v: f64, range: &str| {
            Err(MethodError::Input(format!("{what} {v} is out of range: must be a finite number in {range}")))
        };
        let fraction = |v: f64| v.is_finite() && (0.0..1.0).contains(&v);
        if !fraction(self.sparse_fraction) {
            return bad("sparse fraction", self.sparse_fraction, "[0, 1)");
        }
        if !fraction(self.validation_fraction) {
            return bad("validation fraction", self.validation_fraction, "[0, 1)");
        }
        if !(self.prefix_token_weight.is_finite() && self.prefix_token_weight >= 1.0) {
            return bad("prefix token weight", self.prefix_token_weight, "[1, inf)");
        }
        if !(self.sensitivity_probe_keep.is_finite()
            && self.sensitivity_probe_keep > 0.0
            && self.sensitivity_probe_keep <= 1.0)
        {
            return bad("sensitivity probe keep", self.sensitivity_probe_keep, "(0, 1]");
        }
        for (what, v) in [("sparse entry cost", self.sparse_entry_cost), ("sparse row cost", self.sparse_row_cost)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(what, v, "(0, inf)");
            }
        }
        if self.whitening_ridge.is_empty() {
            return Err(MethodError::Input("the whitening ridge grid is empty".into()));
        }
        for &r in &self.whitening_ridge {
            if !(r.is_finite() && r >= 0.0) {
                return bad("whitening ridge", r, "[0, inf)");
            }
        }
        for &r in &self.compensation_options.ridge_grid {
            if !(r.is_finite() && r >= 0.0) {
                return bad("compensation ridge", r, "[0, inf)");
            }
        }
        Ok(())
    }
}

/// The new weights of one layer.
#[derive(Debug, Clone)]
pub struct LayerResult {
    /// Layer name.
    pub name: String,
    /// In the model's units; `None`: the layer stays as it is (dense).
    pub replacement: Option<Candidate>,
}

/// Output of [`compress_model`].
#[derive(Debug, Clone)]
pub struct Compressed {
    /// One entry per block linear, in model order.
    pub layers: Vec<LayerResult>,
    /// The per-layer report and summary.
    pub report: Report,
    /// With [`PipelineOptions::keep_input_moments`]: per block linear (model order), the
    /// covariance and mean of its inputs in the dense model; empty otherwise.
    pub input_moments: Vec<InputMoments>,
}

/// The first two moments of a layer's inputs (fit split, dense model).
#[derive(Debug, Clone)]
pub struct InputMoments {
    /// `n × n` covariance.
    pub cov: Matrix,
    /// Mean, length `n`.
    pub mean: Vec<f64>,
}

impl Compressed {
    /// Applies the replacements to a model (for evaluation without writing a file).
    pub fn apply(&self, model: &mut Model<'_>) -> Result<(), MethodError> {
        for l in &self.layers {
            if let Some(c) = &l.replacement {
                let (weights, bias) = to_linear_weights(&c.approx, &c.bias);
                model.set_linear(&l.name, weights, Some(bias))?;
            }
        }
        Ok(())
    }
}

/// Calibration images and their geometry.
#[derive(Debug, Clone, Copy)]
pub struct Calibration<'p> {
    /// `[n, C, H, W]` normalised pixels.
    pub pixels: &'p [f32],
    /// Number of images.
    pub count: usize,
    /// `[H, W]`.
    pub image_size: [usize; 2],
    /// Per image, the photo it was cut from (crops, augmented copies): images with the same
    /// value always land on the same side of the validation split, so the gates are measured
    /// on photos the fit never saw. `None`: groups of [`PipelineOptions::group_size`]
    /// consecutive images.
    pub groups: Option<&'p [u32]>,
}

impl<'p> Calibration<'p> {
    /// The images of a loaded dataset, with its photo indices.
    pub fn from_dataset(data: &'p crate::data::Dataset) -> Calibration<'p> {
        Calibration {
            pixels: &data.pixel_values,
            count: data.n,
            image_size: [data.h, data.w],
            groups: data.groups.as_deref(),
        }
    }

    fn image(&self, i: usize) -> &[f32] {
        let len = self.pixels.len() / self.count.max(1);
        &self.pixels[i * len..(i + 1) * len]
    }

    /// The images `ids`, one after the other.
    pub(super) fn gather(&self, ids: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(ids.len() * self.pixels.len() / self.count.max(1));
        for &i in ids {
            out.extend_from_slice(self.image(i));
        }
        out
    }

    /// Checks that the pixels are exactly `count` finite images of the stated size for `model`.
    fn check(&self, model: &Model<'_>) -> Result<(), MethodError> {
        let cfg = model.config();
        if self.count == 0 {
            return Err(MethodError::Input("no calibration images".into()));
        }
        // The pixels must be exactly `count` images of the stated size: a mismatch would otherwise
        // surface as a wrong batch or an out-of-range slice deep inside the pipeline.
        let [h, w] = if self.image_size == [0, 0] { cfg.image_size } else { self.image_size };
        let expected = self.count.checked_mul(cfg.in_chans).and_then(|n| n.checked_mul(h)?.checked_mul(w));
        if expected != Some(self.pixels.len()) {
            return Err(MethodError::Input(format!(
                "{} calibration values are not {} images of {}×{h}×{w}",
                self.pixels.len(),
                self.count,
                cfg.in_chans
            )));
        }
        if let Some(groups) = self.groups {
            if groups.len() != self.count {
                return Err(MethodError::Input(format!(
                    "{} photo indices for {} calibration images",
                    groups.len(),
                    self.count
                )));
            }
        }
        Ok(())
    }

    fn check_finite(&self) -> Result<(), MethodError> {
        if let Some(i) = self.pixels.iter().position(|v| !v.is_finite()) {
            let per = self.pixels.len() / self.count;
            return Err(MethodError::NonFinite(format!("calibration image {}", i / per.max(1))));
        }
        Ok(())
    }
}

/// What every phase of one [`compress_model`] call shares.
pub(super) struct Run<'a, 'm> {
    /// The dense model.
    pub model: &'a Model<'m>,
    /// Its configuration.
    pub cfg: factorvit::ModelConfig,
    /// The calibration images.
    pub calib: Calibration<'a>,
    /// Runs models over the calibration images.
    pub runner: StreamRunner<'a>,
    /// Fit and validation images.
    pub splits: Splits,
    /// Output weighting of every layer (model order; see `layer::output_scale`).
    pub scales: Vec<Option<Vec<f64>>>,
    /// The options.
    pub opts: &'a PipelineOptions,
}

/// Seconds per phase, for the report.
struct Timings {
    entries: Vec<(String, f64)>,
    lap: Instant,
}

impl Timings {
    fn start() -> Timings {
        Timings { entries: Vec::new(), lap: Instant::now() }
    }

    /// Records the time since the last lap under `what`; returns it.
    fn lap(&mut self, what: &str) -> f64 {
        let secs = self.lap.elapsed().as_secs_f64();
        self.entries.push((what.to_string(), secs));
        self.lap = Instant::now();
        secs
    }

    /// Records a part of the last lap.
    fn part(&mut self, what: &str, secs: f64) {
        self.entries.push((what.to_string(), secs));
    }
}

impl<'a, 'm> Run<'a, 'm> {
    /// Checks the inputs and options, then splits the images.
    fn new(model: &'a Model<'m>, calib: &Calibration<'a>, opts: &'a PipelineOptions) -> Result<Self, MethodError> {
        calib.check(model)?;
        if opts.batch == 0 {
            return Err(MethodError::Input("batch must be at least 1".into()));
        }
        opts.validate()?;
        calib.check_finite()?;
        Ok(Run {
            model,
            cfg: model.config().clone(),
            calib: *calib,
            runner: StreamRunner::new(calib, opts),
            splits: make_splits(calib.count, opts.validation_fraction, opts.seed, opts.group_size, calib.groups),
            scales: layer::output_scales(model, opts),
            opts,
        })
    }
}

/// Compresses every block linear of `model` with the calibration images.
pub fn compress_model(
    model: &Model<'_>,
    calib: &Calibration<'_>,
    opts: &PipelineOptions,
) -> Result<Compressed, MethodError> {
    let started = Instant::now();
    let run = Run::new(model, calib, opts)?;
    let mut timings = Timings::start();

    // ---- 1. Dense statistics, block by block (+ sensitivity probes). ----
    let Measured { layers, sensitivity_images, forward_seconds, decomposition_seconds, probe_seconds } =
        measure::measure_layers(&run)?;
    timings.lap("statistics, decomposition and sensitivity");
    timings.part("· dense forward passes + moments", forward_seconds);
    timings.part("· eigendecompositions + SVDs", decomposition_seconds);
    timings.part("· sensitivity probes", probe_seconds);

    // ---- 2. Allocation. ----
    let curves: Vec<LayerCurve> = layers.iter().map(|l| l.curve(opts)).collect();
    let request = AllocationRequest {
        budget: opts.budget_params,
        uniform: opts.ranks == RankPolicy::Uniform,
        residual_rank: opts.residual_rank,
    };
    let alloc = allocate::allocate_with_residual_ranks(&curves, request)?;
    timings.lap("allocation");

    // ---- 3. Uncompensated replacements (+ sparse term). ----
    let Factored { starts, mut reports } = factors::factor_layers(&run, &layers, &alloc)?;
    // Output variances of the dense layers on both splits: compensation's targets are the same
    // dense activations, so their second moments need not be accumulated twice.
    let target_variances: Vec<TargetVariance> =
        layers.iter().map(|l| TargetVariance { fit: l.fit_variance, val: l.val_variance }).collect();
    let input_moments: Vec<InputMoments> = if opts.keep_input_moments {
        layers
            .into_iter()
            .map(|l| InputMoments { cov: l.fit_cov.unwrap_or_else(|| Matrix::zeros(0, 0)), mean: l.fit_mean })
            .collect()
    } else {
        drop::<Vec<LayerState>>(layers);
        Vec::new()
    };
    timings.lap("factors");

    // ---- 4. Compensation. ----
    let gate = compensate(&run, &starts, &target_variances, &mut reports, &mut timings)?;
    let (final_layers, gate) = match gate {
        Some(Gate { layers, summary }) => (layers, Some(summary)),
        None => (starts, None),
    };
    let layers = results(&run, &reports, final_layers);
    let report = Report {
        layers: reports,
        sensitivity_images,
        seconds: started.elapsed().as_secs_f64(),
        timings: timings.entries,
        ..summary(&run, gate)
    };
    Ok(Compressed { layers, report, input_moments })
}

/// The report's summary fields (no layers, timings or seconds yet).
fn summary(run: &Run<'_, '_>, gate: Option<GateSummary>) -> Report {
    Report {
        layers: Vec::new(),
        budget_params: run.opts.budget_params,
        calibration_images: run.calib.count,
        fit_images: run.splits.fit.len(),
        validation_images: run.splits.val.len(),
        sensitivity_images: 0,
        validation_distortion_before_compensation: gate.as_ref().map(|g| g.before),
        validation_distortion_after_compensation: gate.as_ref().map(|g| g.after),
        compensation_kept: gate.as_ref().map(|g| g.blocks > 0),
        compensated_blocks: gate.as_ref().map(|g| g.blocks),
        compensation_gate: gate.map(|g| g.scores).unwrap_or_default(),
        distortion_measure: if run.cfg.head == Head::None {
            "mean 1 - cos of output tokens".into()
        } else {
            "mean KL(dense || compressed)".into()
        },
        seconds: 0.0,
        timings: Vec::new(),
        options: format!("{:?}", run.opts),
    }
}

/// Phase 4 (when the options ask for it and there is a validation split): compensation and the
/// model-level gate.
fn compensate(
    run: &Run<'_, '_>,
    starts: &[Option<Candidate>],
    target_variances: &[TargetVariance],
    reports: &mut [LayerReport],
    timings: &mut Timings,
) -> Result<Option<Gate>, MethodError> {
    let opts = run.opts;
    if !(opts.compensation && opts.method == FactorMethod::Whitened && !run.splits.val.is_empty()) {
        return Ok(None);
    }
    let compensated = compensation::compensate_blocks(run, starts, target_variances, reports)?;
    let gate = compensation::gate_compensation(run, starts, &compensated.layers, reports)?;
    let total = timings.lap("compensation");
    timings.part("· captures (forward passes)", compensated.forward_seconds);
    timings.part("· closed form + gates per layer", compensated.solve_seconds);
    timings.part("· model gate", (total - compensated.forward_seconds - compensated.solve_seconds).max(0.0));
    Ok(Some(gate))
}

/// The final replacements in the model's units, named after the report rows.
fn results(run: &Run<'_, '_>, reports: &[LayerReport], layers: Vec<Option<Candidate>>) -> Vec<LayerResult> {
    reports
        .iter()
        .zip(layers)
        .zip(&run.scales)
        .map(|((r, c), d)| LayerResult {
            name: r.name.clone(),
            replacement: c.map(|c| layer::to_model_units(&c, d.as_deref())),
        })
        .collect()
}
