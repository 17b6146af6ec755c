//! Layer sensitivities: each layer alone is compressed hard (to a fraction of its dense-equivalent
//! rank) and the distortion of the model output is measured on a few fit images, starting from
//! the cached residual stream at that layer's block.

use factorvit::Model;

use super::compensate::Candidate;
use super::decompose::{self, Approximation};
use super::layer::{scaled_layer_weight, set_replacement, DenseLayer, LayerState};
use super::pipeline::{FactorMethod, PipelineOptions, RankPolicy};
use super::streams::{distortion, OwnedOutputs, Splits, Stream, StreamRunner};
use super::MethodError;

/// Default (maximum) number of sensitivity images.
pub const DEFAULT_SENSITIVITY_IMAGES: usize = 32;
/// Default cap on the sensitivity probes' work, in dense passes over the calibration set.
pub const DEFAULT_SENSITIVITY_WORK_CAP: f64 = 4.0;
/// Fewest sensitivity images the work cap leaves.
pub const MIN_SENSITIVITY_IMAGES: usize = 8;

/// Images probed for sensitivities: `sensitivity_images`, lowered (not below
/// [`MIN_SENSITIVITY_IMAGES`]) so that the probes cost at most `sensitivity_work_cap` dense passes
/// over `calibration_images` images of a `depth`-block model.
pub fn sensitivity_image_count(opts: &PipelineOptions, calibration_images: usize, depth: usize) -> usize {
    let wanted = opts.sensitivity_images.max(1);
    match opts.sensitivity_work_cap {
        Some(cap) => {
            let affordable = (cap * calibration_images as f64 / (2.0 * (depth as f64 + 1.0))).floor() as usize;
            wanted.min(affordable.max(MIN_SENSITIVITY_IMAGES))
        }
        None => wanted,
    }
}

/// Whether the options ask for measured sensitivities.
pub(super) fn wanted(opts: &PipelineOptions) -> bool {
    opts.ranks == RankPolicy::GreedySensitivity && opts.method == FactorMethod::Whitened
}

/// The images probed for sensitivities (every `step`-th fit image), whether or not probes run.
pub(super) fn probe_ids(
    opts: &PipelineOptions,
    splits: &Splits,
    calibration_images: usize,
    depth: usize,
) -> Vec<usize> {
    let count = sensitivity_image_count(opts, calibration_images, depth);
    let step = (splits.fit.len() / count).max(1);
    splits.fit.iter().copied().step_by(step).take(count).collect()
}

/// The probe images' residual stream (kept at the block being measured) and their dense outputs.
pub(super) struct Probes {
    ids: Vec<usize>,
    stream: Stream,
    reference: OwnedOutputs,
}

impl Probes {
    /// Embeds the probe images and runs the dense model on them once.
    pub fn new(runner: &StreamRunner<'_>, model: &Model<'_>, ids: Vec<usize>) -> Result<Probes, MethodError> {
        let stream = runner.embed(model, &ids)?;
        let reference = runner.finish(model, &ids, &stream, 0)?;
        Ok(Probes { ids, stream, reference })
    }

    /// Measures the sensitivity of `layers` (one block's, all in block `block`, the stream being
    /// at that block) and stores it in each.
    pub fn measure(
        &self,
        (runner, model): (&StreamRunner<'_>, &Model<'_>),
        block: usize,
        layers: &mut [LayerState],
        scales: &[Option<Vec<f64>>],
        opts: &PipelineOptions,
    ) -> Result<(), MethodError> {
        for (st, scale) in layers.iter_mut().zip(scales) {
            let probe = ((opts.sensitivity_probe_keep * (st.m * st.n) as f64 / (st.m + st.n) as f64).round() as usize)
                .clamp(1, st.svd.max_rank());
            let (u, v) = st.svd.factors(probe);
            let approx = Approximation { u, v, sparse: None };
            let DenseLayer { weight: w, bias } = scaled_layer_weight(model, block, st.which, opts)?;
            let b = decompose::corrected_bias(&w, &approx.dense(), bias.as_deref(), &st.fit_mean);
            let mut probe_model = model.view();
            set_replacement(&mut probe_model, &st.name, &Candidate { approx, bias: b }, scale.as_deref())?;
            let out = runner.finish(&probe_model, &self.ids, &self.stream, block)?;
            let dist = distortion(&self.reference, &out);
            let norm_err = st.fit_tail[probe] / st.fit_tail[0].max(f64::MIN_POSITIVE);
            st.sensitivity = Some(dist / norm_err.max(1e-12));
        }
        Ok(())
    }

    /// Moves the probe images' stream through block `block`.
    pub fn advance(&mut self, runner: &StreamRunner<'_>, model: &Model<'_>, block: usize) -> Result<(), MethodError> {
        runner.advance(model, &self.ids, &mut self.stream, block, None)
    }
}
