//! Phase 1 of the method: the dense model's statistics, block by block. The fit and validation
//! streams are advanced through each block while the moments of the layer inputs accumulate;
//! then the block's layers are decomposed ([`LayerState::decompose`]) and, if asked, probed for
//! their sensitivity ([`Probes`]). Memory stays bounded by one block.

use std::time::Instant;

use factorvit::BlockLinear;
use rayon::prelude::*;

use super::layer::{input_width, layer_index, LayerState, LINEARS_PER_BLOCK};
use super::pipeline::Run;
use super::progress::Phase;
use super::sensitivity::{self, Probes};
use super::stats::Moments;
use super::MethodError;

/// Output of [`measure_layers`].
pub(super) struct Measured {
    /// Every block linear, in model order.
    pub layers: Vec<LayerState>,
    /// Images probed for sensitivities (0 when none were measured).
    pub sensitivity_images: usize,
    /// Seconds in dense forward passes with moment accumulation.
    pub forward_seconds: f64,
    /// Seconds in eigendecompositions and SVDs.
    pub decomposition_seconds: f64,
    /// Seconds in sensitivity probes.
    pub probe_seconds: f64,
}

/// Dense statistics, decomposition and sensitivity of every block linear.
pub(super) fn measure_layers(run: &Run<'_, '_>) -> Result<Measured, MethodError> {
    let (model, runner, opts, cfg) = (run.model, &run.runner, run.opts, &run.cfg);
    let need_sensitivity = sensitivity::wanted(opts);
    let probe_ids = sensitivity::probe_ids(opts, &run.splits, run.calib.count, cfg.depth);
    let sensitivity_images = if need_sensitivity { probe_ids.len() } else { 0 };
    let mut fit_stream = runner.embed(model, &run.splits.fit)?;
    let mut val_stream = runner.embed(model, &run.splits.val)?;
    let mut probes = if need_sensitivity { Some(Probes::new(runner, model, probe_ids)?) } else { None };
    let mut out = Measured {
        layers: Vec::with_capacity(cfg.depth * LINEARS_PER_BLOCK),
        sensitivity_images,
        forward_seconds: 0.0,
        decomposition_seconds: 0.0,
        probe_seconds: 0.0,
    };
    run.opts.progress.report(Phase::Statistics, 0, cfg.depth);
    for block in 0..cfg.depth {
        let t = Instant::now();
        let mut fit_m: Vec<Moments> = BlockLinear::ALL.iter().map(|&w| Moments::new(input_width(cfg, w))).collect();
        let mut val_m: Vec<Moments> = fit_m.clone();
        runner.advance(model, &run.splits.fit, &mut fit_stream, block, Some(&mut fit_m))?;
        runner.advance(model, &run.splits.val, &mut val_stream, block, Some(&mut val_m))?;
        out.forward_seconds += t.elapsed().as_secs_f64();
        let t = Instant::now();
        // The four layers are independent; the eigendecomposition of the widest input (fc2)
        // is mostly level-2 work that leaves a core idle, so they run side by side.
        let states: Vec<LayerState> = BlockLinear::ALL
            .par_iter()
            .map(|&which| {
                let wi = which as usize;
                LayerState::decompose(model, (block, which), &fit_m[wi], &val_m[wi], opts)
            })
            .collect::<Result<_, _>>()?;
        out.layers.extend(states);
        out.decomposition_seconds += t.elapsed().as_secs_f64();
        let t = Instant::now();
        if let Some(p) = probes.as_mut() {
            let first = layer_index(block, BlockLinear::ALL[0]);
            let block_layers = &mut out.layers[first..first + LINEARS_PER_BLOCK];
            p.measure((runner, model), block, block_layers, &run.scales[first..first + LINEARS_PER_BLOCK], opts)?;
            p.advance(runner, model, block)?;
        }
        out.probe_seconds += t.elapsed().as_secs_f64();
        run.opts.progress.report(Phase::Statistics, block + 1, cfg.depth);
    }
    Ok(out)
}
