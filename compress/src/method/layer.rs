//! One block linear layer as the method sees it: its weight in the units of the loss (scaled by
//! a LayerScale `γ` when errors are measured in residual-stream units), the mapping of a result
//! back to the model's units, and its decomposition from dense-input moments ([`LayerState`]).

use factorvit::{BlockLinear, LinearWeights, Model, ModelConfig};
use faer::Mat;

use super::allocate::LayerCurve;
use super::compensate::Candidate;
use super::decompose::{self, Approximation, Metric, WhitenedSvd};
use super::linalg::{self, Matrix};
use super::pipeline::{FactorMethod, PipelineOptions, RankPolicy, SparseLayers};
use super::stats::Moments;
use super::MethodError;

/// Linear layers per transformer block (`qkv`, `proj`, `fc1`, `fc2`).
pub const LINEARS_PER_BLOCK: usize = BlockLinear::ALL.len();

/// Index of a layer in model order (`block`-major, [`BlockLinear::ALL`] order inside a block).
pub(super) fn layer_index(block: usize, which: BlockLinear) -> usize {
    block * LINEARS_PER_BLOCK + which as usize
}

/// The layer at a model-order index (inverse of [`layer_index`]).
pub(super) fn layer_at(k: usize) -> (usize, BlockLinear) {
    (k / LINEARS_PER_BLOCK, BlockLinear::ALL[k % LINEARS_PER_BLOCK])
}

/// Width of a layer's input.
pub(super) fn input_width(cfg: &ModelConfig, which: BlockLinear) -> usize {
    match which {
        BlockLinear::Fc2 => cfg.mlp_hidden,
        _ => cfg.embed_dim,
    }
}

/// Leading prefix tokens (class / distillation) per image.
pub(super) fn prefix_tokens(cfg: &ModelConfig) -> usize {
    usize::from(cfg.class_token) + usize::from(cfg.dist_token)
}

/// A layer's dense weight and bias in f64.
pub(super) struct DenseLayer {
    /// `[out, in]`.
    pub weight: Matrix,
    /// `[out]`, if the layer has one.
    pub bias: Option<Vec<f64>>,
}

fn layer_weight(model: &Model<'_>, block: usize, which: BlockLinear) -> Result<DenseLayer, MethodError> {
    let layer = model
        .block_linear(block, which)
        .ok_or_else(|| MethodError::Input(format!("model has no layer {}", which.name(block))))?;
    let (m, n) = (layer.info().out_features, layer.info().in_features);
    let w = model.effective_weight(layer);
    if w.iter().any(|x| !x.is_finite()) {
        return Err(MethodError::NonFinite(format!("weights of {}", which.name(block))));
    }
    let bias = layer.bias().map(|b| b.iter().map(|&x| f64::from(x)).collect());
    Ok(DenseLayer { weight: linalg::from_row_major(&w, m, n), bias })
}

/// The output weighting `d` of a layer (its LayerScale `γ`), when errors are measured in
/// residual-stream units.
pub(super) fn output_scale(
    model: &Model<'_>,
    block: usize,
    which: BlockLinear,
    opts: &PipelineOptions,
) -> Option<Vec<f64>> {
    if !opts.layer_scale_aware {
        return None;
    }
    clamped_layer_scale(model, block, which)
}

/// The output weightings of every block linear, in model order.
pub(super) fn output_scales(model: &Model<'_>, opts: &PipelineOptions) -> Vec<Option<Vec<f64>>> {
    (0..model.config().depth)
        .flat_map(|b| BlockLinear::ALL.map(|w| (b, w)))
        .map(|(b, w)| output_scale(model, b, w, opts))
        .collect()
}

/// A layer's LayerScale `γ` with entries below `1e-6·max|γ|` raised to that floor: a zero `γ`
/// would make dividing by it singular; such channels carry no output anyway.
pub(super) fn clamped_layer_scale(model: &Model<'_>, block: usize, which: BlockLinear) -> Option<Vec<f64>> {
    let g = model.layer_scale(block, which)?;
    let floor = g.iter().map(|v| v.abs()).fold(0.0f32, f32::max) as f64 * 1e-6;
    Some(g.iter().map(|&v| if (v as f64).abs() < floor { floor.max(f64::MIN_POSITIVE) } else { v as f64 }).collect())
}

/// The layer as the method sees it: `(diag(d)·W, d ⊙ b)` with the output weighting `d` of
/// [`output_scale`] (`(W, b)` without one). Everything computed from it (factors, biases,
/// errors, compensation) is in these units; [`to_model_units`] maps a result back.
pub(super) fn scaled_layer_weight(
    model: &Model<'_>,
    block: usize,
    which: BlockLinear,
    opts: &PipelineOptions,
) -> Result<DenseLayer, MethodError> {
    let DenseLayer { weight: w, bias } = layer_weight(model, block, which)?;
    match output_scale(model, block, which, opts) {
        None => Ok(DenseLayer { weight: w, bias }),
        Some(d) => Ok(DenseLayer {
            weight: Mat::from_fn(w.nrows(), w.ncols(), |i, j| d[i] * w[(i, j)]),
            bias: bias.map(|b| b.iter().zip(&d).map(|(x, s)| x * s).collect()),
        }),
    }
}

/// Maps a replacement computed in the weighted units of [`scaled_layer_weight`] back to the
/// model's units (rows of `U`, of the sparse term and the bias divided by `d`).
pub(super) fn to_model_units(c: &Candidate, d: Option<&[f64]>) -> Candidate {
    let Some(d) = d else { return c.clone() };
    let u = Mat::from_fn(c.approx.u.nrows(), c.approx.u.ncols(), |i, j| c.approx.u[(i, j)] / d[i]);
    let sparse = c.approx.sparse.as_ref().map(|s| {
        let mut s = s.clone();
        for (i, di) in d.iter().enumerate().take(s.row_ptr.len().saturating_sub(1)) {
            for q in s.row_ptr[i] as usize..s.row_ptr[i + 1] as usize {
                s.values[q] /= di;
            }
        }
        s
    });
    Candidate {
        approx: Approximation { u, v: c.approx.v.clone(), sparse },
        bias: c.bias.iter().zip(d).map(|(b, s)| b / s).collect(),
    }
}

/// Runtime tensors of a replacement.
pub fn to_linear_weights(approx: &Approximation, bias: &[f64]) -> (LinearWeights, Vec<f32>) {
    let sparse = approx.sparse.as_ref().map(|s| factorvit::CsrMatrix {
        row_ptr: s.row_ptr.clone(),
        col_idx: s.col_idx.clone(),
        values: s.values.iter().map(|&v| v as f32).collect(),
    });
    (
        LinearWeights::Factored {
            u: linalg::to_row_major(approx.u.as_ref()),
            v: linalg::to_row_major(approx.v.as_ref()),
            rank: approx.rank(),
            sparse,
        },
        bias.iter().map(|&b| b as f32).collect(),
    )
}

/// Sets layer `name` of `model` to a replacement given in the loss units of the output
/// weighting `d` (see [`to_model_units`]).
pub(super) fn set_replacement(
    model: &mut Model<'_>,
    name: &str,
    c: &Candidate,
    d: Option<&[f64]>,
) -> Result<(), MethodError> {
    let c = to_model_units(c, d);
    let (w, b) = to_linear_weights(&c.approx, &c.bias);
    model.set_linear(name, w, Some(b))?;
    Ok(())
}

/// Sets every layer that has a replacement (in loss units, model order; `scales` as from
/// [`output_scales`]).
pub(super) fn apply_candidates(
    m: &mut Model<'_>,
    cfg: &ModelConfig,
    layers: &[Option<Candidate>],
    scales: &[Option<Vec<f64>>],
) -> Result<(), MethodError> {
    for (k, c) in layers.iter().enumerate() {
        if let Some(c) = c {
            let (block, which) = layer_at(k);
            debug_assert!(block < cfg.depth);
            set_replacement(m, &which.name(block), c, scales[k].as_deref())?;
        }
    }
    Ok(())
}

/// Held-out statistics of a layer's inputs.
pub(super) struct ValidationStats {
    /// Input covariance.
    pub cov: Matrix,
    /// Input mean.
    pub mean: Vec<f64>,
}

/// One block linear layer during compression.
pub(super) struct LayerState {
    pub name: String,
    pub block: usize,
    pub which: BlockLinear,
    pub m: usize,
    pub n: usize,
    pub bias: Option<Vec<f64>>,
    pub svd: WhitenedSvd,
    /// Metric error at each rank on the fit split (dense inputs).
    pub fit_tail: Vec<f64>,
    /// Same on the validation split.
    pub val_tail: Option<Vec<f64>>,
    /// Output variance of the layer on the fit split (normaliser).
    pub fit_variance: f64,
    pub val_variance: Option<f64>,
    pub fit_mean: Vec<f64>,
    /// Measured sensitivity (output distortion per unit of normalised error).
    pub sensitivity: Option<f64>,
    /// Fit / validation covariances, kept for sparse fitting.
    pub fit_cov: Option<Matrix>,
    pub val_stats: Option<ValidationStats>,
    pub ridge: f64,
}

/// A factorisation with its error curves.
struct Factorisation {
    svd: WhitenedSvd,
    fit_tail: Vec<f64>,
    val_tail: Option<Vec<f64>>,
    ridge: f64,
}

/// A layer's dense-input moments on both splits, with the quantities derived from them.
struct InputStats {
    fit_cov: Matrix,
    fit_mean: Vec<f64>,
    val_cov: Option<Matrix>,
    val_mean: Vec<f64>,
}

impl LayerState {
    /// Whether the layer may carry a sparse term.
    pub fn sparse_eligible(&self, opts: &PipelineOptions) -> bool {
        sparse_eligible(self.which, opts)
    }

    /// The layer's error curve for the allocation: sensitivity-weighted (if the policy says so)
    /// and normalised by the error at rank 0.
    pub fn curve(&self, opts: &PipelineOptions) -> LayerCurve {
        let weight = match opts.ranks {
            RankPolicy::GreedySensitivity => self.sensitivity.unwrap_or(1.0),
            _ => 1.0,
        };
        // Errors on held-out images when asked (they reveal which layers' low-rank fits do
        // not generalise); both curves are sums of non-negative terms, so non-increasing.
        let tail = match (&self.val_tail, opts.allocate_on_validation) {
            (Some(v), true) => v,
            _ => &self.fit_tail,
        };
        let norm = tail[0].max(f64::MIN_POSITIVE);
        LayerCurve {
            out_features: self.m,
            in_features: self.n,
            error: tail.iter().map(|e| weight * e / norm).collect(),
        }
    }

    /// Decomposition of one layer from its dense-input moments.
    pub fn decompose(
        model: &Model<'_>,
        (block, which): (usize, BlockLinear),
        fit: &Moments,
        val: &Moments,
        opts: &PipelineOptions,
    ) -> Result<LayerState, MethodError> {
        let DenseLayer { weight: w, bias } = scaled_layer_weight(model, block, which, opts)?;
        let (m, n) = (w.nrows(), w.ncols());
        let name = which.name(block);
        let stats = InputStats {
            fit_cov: fit.covariance(),
            fit_mean: fit.mean(),
            val_cov: (val.count > 0.0).then(|| val.covariance()),
            val_mean: val.mean(),
        };
        let fit_variance = linalg::quad_trace(w.as_ref(), stats.fit_cov.as_ref());
        let val_variance = stats.val_cov.as_ref().map(|c| linalg::quad_trace(w.as_ref(), c.as_ref()));
        let max_rank = (m * n).saturating_sub(1) / (m + n);
        let Factorisation { mut svd, fit_tail, val_tail, ridge } = match opts.method {
            FactorMethod::Svd => {
                let svd = WhitenedSvd::compute(&w, &Metric::identity(n))?;
                // Errors of the plain SVD measured in the input metric (bias unchanged).
                let fit_tail = tail_in_metric(&svd, &stats.fit_cov, &stats.fit_mean);
                let val_tail = stats.val_cov.as_ref().map(|c| tail_in_metric(&svd, c, &stats.val_mean));
                Factorisation { svd, fit_tail, val_tail, ridge: 0.0 }
            }
            FactorMethod::Whitened => best_whitened(model, &w, &stats, max_rank, opts)?,
        };
        // Keep only the ranks that can ever be used (cheaper than dense), plus residual ranks.
        let keep_rank = (max_rank + opts.residual_rank + 1).min(svd.max_rank());
        if keep_rank < svd.max_rank() {
            svd = WhitenedSvd {
                p: svd.p.subcols(0, keep_rank).to_owned(),
                sigma: svd.sigma[..keep_rank].to_vec(),
                qt_inv: svd.qt_inv.subrows(0, keep_rank).to_owned(),
            };
        }
        let fit_tail = fit_tail[..=keep_rank].to_vec();
        let val_tail = val_tail.map(|t| t[..=keep_rank].to_vec());
        let keep_cov = sparse_eligible(which, opts) || opts.method == FactorMethod::Svd || opts.keep_input_moments;
        let InputStats { fit_cov, fit_mean, val_cov, val_mean } = stats;
        Ok(LayerState {
            name,
            block,
            which,
            m,
            n,
            bias,
            svd,
            fit_tail,
            val_tail,
            fit_variance,
            val_variance,
            fit_mean,
            sensitivity: None,
            fit_cov: keep_cov.then_some(fit_cov),
            val_stats: val_cov.map(|cov| ValidationStats { cov, mean: val_mean }),
            ridge,
        })
    }
}

fn sparse_eligible(which: BlockLinear, opts: &PipelineOptions) -> bool {
    opts.sparse_fraction > 0.0 && (opts.sparse_layers == SparseLayers::All || which == BlockLinear::Fc2)
}

/// The whitened SVD over the ridge grid that scores best on the validation split (fit split
/// without one) at a reference rank.
fn best_whitened(
    model: &Model<'_>,
    w: &Matrix,
    stats: &InputStats,
    max_rank: usize,
    opts: &PipelineOptions,
) -> Result<Factorisation, MethodError> {
    let (m, n) = (w.nrows(), w.ncols());
    let shift: Vec<f64> = stats.val_mean.iter().zip(&stats.fit_mean).map(|(a, b)| a - b).collect();
    let eig = linalg::sym_eigen(stats.fit_cov.as_ref())?;
    let mean_eig = eig.values.iter().map(|v| v.max(0.0)).sum::<f64>() / n as f64;
    let mut best: Option<(Factorisation, f64)> = None;
    // Reference rank for comparing ridge values: a uniform share of the budget.
    let total_dense = model.block_linear_params().max(1);
    let keep = opts.budget_params as f64 / total_dense as f64;
    let r_ref = ((keep * (m * n) as f64 / (m + n) as f64) as usize).clamp(1, max_rank.max(1));
    for &ridge in &opts.whitening_ridge {
        let metric = Metric::from_eigen(&eig, ridge * mean_eig, decompose::DEFAULT_REL_FLOOR);
        let svd = WhitenedSvd::compute(w, &metric)?;
        // Errors in the exact (unregularised) metric: tail_in_metric is exact for any
        // factorisation whose P is orthonormal.
        let fit_tail = if ridge == 0.0 { svd.tail_energy() } else { svd.tail_energy_on(&stats.fit_cov, &vec![0.0; n]) };
        let val_tail = stats.val_cov.as_ref().map(|c| svd.tail_energy_on(c, &shift));
        let score = val_tail.as_ref().map_or(fit_tail[r_ref.min(fit_tail.len() - 1)], |t| t[r_ref.min(t.len() - 1)]);
        if best.as_ref().map_or(true, |b| score < b.1) {
            best = Some((Factorisation { svd, fit_tail, val_tail, ridge }, score));
        }
    }
    best.map(|b| b.0).ok_or_else(|| MethodError::Input("whitening ridge grid is empty".into()))
}

/// Error of every truncation of a factorisation `W = Σ p_k σ_k q̃_k` with orthonormal `P`,
/// measured in a metric (covariance, mean shift zero: bias corrected or mean zero).
fn tail_in_metric(svd: &WhitenedSvd, cov: &Matrix, mean: &[f64]) -> Vec<f64> {
    // Plain SVD keeps the bias, so the mean term is Σ σ_k² (q̃_k·μ)².
    svd.tail_energy_on(cov, mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_indices_round_trip() {
        for k in 0..3 * LINEARS_PER_BLOCK {
            let (block, which) = layer_at(k);
            assert_eq!(layer_index(block, which), k);
        }
        assert_eq!(layer_index(2, BlockLinear::Fc2), 11);
    }

    #[test]
    fn model_units_undo_the_output_weighting() {
        // A layer fitted in weighted units diag(d)·(Ŵ x + b̂) maps back to Ŵ x + b̂.
        let (m, r, n) = (5, 2, 3);
        let d: Vec<f64> = (0..m).map(|i| 0.01 + i as f64).collect();
        let u = Mat::from_fn(m, r, |i, j| (i * 3 + j) as f64 * 0.1 - 0.4);
        let v = Mat::from_fn(r, n, |i, j| (i + 2 * j) as f64 * 0.3 - 0.5);
        let sparse = decompose::SparseTerm {
            row_ptr: vec![0, 1, 1, 2, 2, 3],
            col_idx: vec![2, 0, 1],
            values: vec![0.5, -1.0, 2.0],
        };
        let c =
            Candidate { approx: Approximation { u, v, sparse: Some(sparse) }, bias: vec![1.0, -2.0, 0.5, 3.0, 0.0] };
        let back = to_model_units(&c, Some(&d));
        let (weighted, model) = (c.approx.dense(), back.approx.dense());
        for i in 0..m {
            assert!((back.bias[i] * d[i] - c.bias[i]).abs() < 1e-12);
            for j in 0..n {
                assert!((model[(i, j)] * d[i] - weighted[(i, j)]).abs() < 1e-12);
            }
        }
        assert_eq!(to_model_units(&c, None).bias, c.bias);
    }
}
