//! The per-layer report of a compression run and its renderings: a text table for the terminal
//! and JSON next to the output ([`table`]), pictures as HTML or SVG ([`html`]), and the number
//! formatters every human-readable output shares ([`units`]).
//!
//! A layer's kind is the runtime's [`LinearKind`]; the JSON spells it with
//! [`LinearKind::name`] (`dense`, `low_rank`, `low_rank_sparse`), the names of the file's
//! `layers` table.

pub mod html;
pub mod table;
pub mod units;

use factorvit::LinearKind;
use serde::{Serialize, Serializer};

/// What happened to one layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Layer name.
    pub name: String,
    /// Outputs `m`.
    pub out_features: usize,
    /// Inputs `n`.
    pub in_features: usize,
    /// Dense, low rank or low rank + sparse (serialised as [`LinearKind::name`]).
    #[serde(serialize_with = "serialize_kind")]
    pub kind: LinearKind,
    /// Rank (0 when dense).
    pub rank: usize,
    /// Sparse entries.
    pub nnz: usize,
    /// Parameters before (`m·n`).
    pub params_before: usize,
    /// Parameters after (`r(m+n) + nnz`).
    pub params_after: usize,
    /// Budget charged (sparse entries with their index and row-pointer cost).
    pub cost_after: f64,
    /// Relative output error on the original model's activations, fit split: `E‖Δy‖² / Var(y)`.
    pub error_fit: f64,
    /// Same on the validation split.
    pub error_val: Option<f64>,
    /// Compensation loss on the compressed model's inputs, fit split, before / after, relative to
    /// the target's variance (for `proj` / `fc2` with the residual-stream target, the target is
    /// the layer's original output plus the stream's drift, and so is its variance).
    pub compensation_fit_before: Option<f64>,
    /// After compensation.
    pub compensation_fit_after: Option<f64>,
    /// Compensation loss on the validation split, before.
    pub compensation_val_before: Option<f64>,
    /// After compensation.
    pub compensation_val_after: Option<f64>,
    /// Whether compensated weights were kept (per-layer gate and model gate).
    pub compensation_kept: Option<bool>,
    /// Chosen ridge fraction of the compensation.
    pub compensation_ridge: Option<f64>,
    /// Adam steps kept after the closed form.
    pub adam_steps: usize,
    /// Measured output sensitivity used to weight this layer's error.
    pub sensitivity: Option<f64>,
    /// Ridge fraction added to the input covariance for the decomposition.
    pub whitening_ridge: f64,
    /// Singular values `σ_k` of the weight in the layer's input metric, descending: the
    /// activation-weighted spectrum (`W·C^{1/2} = P Σ Qᵀ`; plain singular values of `W` with the
    /// plain SVD method). With the exact metric, `Σ_{k>r} σ_k²` is the layer's output error at
    /// rank `r`. Kept up to one past the largest rank cheaper than dense (the tail is never used).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spectrum: Vec<f64>,
    /// Storage dtype of the layer's weight tensors in the written file (`F32`, `F16`, `BF16`,
    /// `I8`); empty until the job stores the layer.
    pub dtype: String,
    /// With int8 weights: the relative layer-output error quantisation adds,
    /// `tr(ΔŴ·C·ΔŴᵀ) / tr(Ŵ·C·Ŵᵀ)` over the dense model's input covariance `C` (`ΔŴ`: the
    /// float weights minus the int8 ones; plain weight error `‖ΔŴ‖² / ‖Ŵ‖²` without calibration).
    pub quant_error: Option<f64>,
}

/// The kind as the file's name for it (`dense`, `low_rank`, `low_rank_sparse`).
fn serialize_kind<S: Serializer>(kind: &LinearKind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.name())
}

impl LayerReport {
    /// A dense entry for an `m × n` layer.
    pub fn new(name: &str, m: usize, n: usize) -> LayerReport {
        LayerReport {
            name: name.to_string(),
            out_features: m,
            in_features: n,
            kind: LinearKind::Dense,
            rank: 0,
            nnz: 0,
            params_before: m * n,
            params_after: m * n,
            cost_after: (m * n) as f64,
            error_fit: 0.0,
            error_val: None,
            compensation_fit_before: None,
            compensation_fit_after: None,
            compensation_val_before: None,
            compensation_val_after: None,
            compensation_kept: None,
            compensation_ridge: None,
            adam_steps: 0,
            sensitivity: None,
            whitening_ridge: 0.0,
            spectrum: Vec::new(),
            dtype: String::new(),
            quant_error: None,
        }
    }

    /// Largest rank whose factors are cheaper than the dense weight: `r·(m+n) < m·n`.
    pub fn max_useful_rank(&self) -> usize {
        (self.out_features * self.in_features).saturating_sub(1) / (self.out_features + self.in_features).max(1)
    }

    /// Whether the layer was kept dense.
    pub fn is_dense(&self) -> bool {
        self.kind == LinearKind::Dense
    }
}

/// The report of a compression run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per layer, in model order.
    pub layers: Vec<LayerReport>,
    /// Budget in block-linear parameters.
    pub budget_params: usize,
    /// Calibration images.
    pub calibration_images: usize,
    /// Of which used for fitting.
    pub fit_images: usize,
    /// Of which held out for validation.
    pub validation_images: usize,
    /// Fit images probed to measure layer sensitivities (0: not measured).
    pub sensitivity_images: usize,
    /// Output distortion of the uncompensated model on the validation images.
    pub validation_distortion_before_compensation: Option<f64>,
    /// Same after compensation.
    pub validation_distortion_after_compensation: Option<f64>,
    /// Whether the compensated model was kept (model-level gate), for at least one block.
    pub compensation_kept: Option<bool>,
    /// Blocks whose compensated layers were kept (the first `k`; the model-level gate's choice).
    pub compensated_blocks: Option<usize>,
    /// The gate's candidates: (blocks compensated, validation distortion).
    pub compensation_gate: Vec<(usize, f64)>,
    /// What the distortion measures.
    pub distortion_measure: String,
    /// Wall time of the method.
    pub seconds: f64,
    /// Wall time per phase; entries starting with `·` split the phase before them into parts.
    pub timings: Vec<(String, f64)>,
    /// The options used (debug rendering).
    pub options: String,
}

impl Report {
    /// Validation distortion of the model that was kept (compensated for the gate's chosen
    /// blocks, or not at all).
    pub fn kept_distortion(&self) -> Option<f64> {
        let k = self.compensated_blocks?;
        self.compensation_gate.iter().find(|g| g.0 == k).map(|g| g.1)
    }

    /// One line on the compensation gate: distortion without, with all of it, and what was kept.
    pub fn compensation_summary(&self) -> Option<String> {
        let (b, a, k) = (
            self.validation_distortion_before_compensation?,
            self.validation_distortion_after_compensation?,
            self.compensated_blocks?,
        );
        let depth = self.compensation_gate.last().map_or(0, |g| g.0);
        let kept = match k {
            0 => "rejected".to_string(),
            k if k == depth => "kept".to_string(),
            k => format!("kept for blocks 0-{}: {:.3e}", k - 1, self.kept_distortion().unwrap_or(f64::NAN)),
        };
        Some(format!("{b:.3e} without compensation, {a:.3e} with ({kept})"))
    }

    /// Total parameters before / after and budget charged.
    pub fn totals(&self) -> (usize, usize, f64) {
        let before = self.layers.iter().map(|l| l.params_before).sum();
        let after = self.layers.iter().map(|l| l.params_after).sum();
        let cost = self.layers.iter().map(|l| l.cost_after).sum();
        (before, after, cost)
    }
}
