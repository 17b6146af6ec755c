//! Layer-wise error compensation.
//!
//! Walking the blocks in order, each compressed layer sees the activations `x_c` of the
//! *already-compressed* model and should reproduce the original layer on the original
//! activations `x_o`: minimise, per token,
//!
//! `L(Ŵ, b̂) = E‖Ŵ x_c + b̂ − W x_o − b‖²`
//! `        = tr(Ŵ C_cc Ŵᵀ) − 2⟨Ŵ, W C_oc⟩ + tr(W C_oo Wᵀ) + ‖Ŵ μ_c + b̂ − W μ_o − b‖²`
//!
//! with centred (co)variances `C_cc = Cov(x_c)`, `C_oc = Cov(x_o, x_c)`. The bias term vanishes
//! for `b̂ = W μ_o + b − Ŵ μ_c`; the rest is a reduced-rank regression whose exact minimiser over
//! rank `r` (with ridge `λ`) is the truncated SVD of `W* = W C_oc (C_cc + λI)⁻¹` in the metric
//! `C_cc + λI`, because `L = const + tr((Ŵ − W*)(C_cc + λI)(Ŵ − W*)ᵀ) − λ‖Ŵ‖²`-free terms.
//! Everything works on Gram matrices; no activations are stored.
//!
//! Overfitting control: `λ` is chosen on a held-out validation split among a grid, and the
//! result is kept only if it lowers the validation loss *and* does not raise the fit loss
//! relative to the uncompensated weights (the gate). Adam can refine the factors afterwards
//! (useful for the joint low-rank + sparse case, where the closed form alternates), with early
//! stopping on the validation loss and the same gate.

use faer::Mat;
use rayon::prelude::*;

use super::decompose::{fit_low_rank_sparse, Approximation, Metric, WhitenedSvd};
use super::linalg::{self, Matrix};
use super::stats::{Moments, PairMoments, TargetMoments};
use super::MethodError;

/// The loss `L` of a split, precomputed from its moments.
#[derive(Debug, Clone)]
pub struct SplitLoss {
    cov_c: Matrix,
    /// `Cov(t, x_c)` for the target `t` (`m × n`): `W·C_oc` for the layer's own output.
    cross: Matrix,
    /// `tr Cov(t)`: the variance of the target (normalises reports); `tr(W C_oo Wᵀ)` for the
    /// layer's own output.
    pub target_variance: f64,
    mean_c: Vec<f64>,
    /// `μ_t`: `W μ_o + b` for the layer's own output.
    target_mean: Vec<f64>,
    /// The original layer's weights (`m × n`, the units of `cross`): what the ridge pulls the
    /// compensated weights towards when [`CompensationOptions::ridge_towards_original`] is set.
    prior: Option<Matrix>,
}

impl SplitLoss {
    /// Precomputes the loss of a split for the original layer `(W, b)`.
    pub fn new(w: &Matrix, bias: Option<&[f64]>, moments: &PairMoments) -> SplitLoss {
        let target_variance = linalg::quad_trace(w.as_ref(), moments.o.covariance().as_ref());
        SplitLoss::with_target_variance(w, bias, moments, target_variance)
    }

    /// Same with `tr(W C_oo Wᵀ)` known from the dense pass (the moments then need no Gram
    /// matrix of `X_o`: see [`PairMoments::without_target_gram`]).
    pub fn with_target_variance(
        w: &Matrix,
        bias: Option<&[f64]>,
        moments: &PairMoments,
        target_variance: f64,
    ) -> SplitLoss {
        let cov_c = moments.c.covariance();
        let cross_co = moments.cross_covariance(); // C_co = Cov(x_c, x_o), n × n
        let cross = linalg::mul(w.as_ref(), cross_co.transpose());
        let mean_o = moments.o.mean();
        let target_mean = (0..w.nrows())
            .map(|i| (0..w.ncols()).map(|j| w[(i, j)] * mean_o[j]).sum::<f64>() + bias.map_or(0.0, |b| b[i]))
            .collect();
        SplitLoss { cov_c, cross, target_variance, mean_c: moments.c.mean(), target_mean, prior: None }
    }

    /// The loss towards an explicit per-token target `t`: `L = E‖Ŵ x_c + b̂ − t‖²`
    /// `= tr(Ŵ C_cc Ŵᵀ) − 2⟨Ŵ, C_tc⟩ + tr C_tt + ‖Ŵ μ_c + b̂ − μ_t‖²`.
    ///
    /// The residual-stream target: a layer whose output is added to a residual stream that
    /// already differs from the original model's by `δ = h_o − h_c` reproduces the block output
    /// when `Ŵ x_c + b̂ = W x_o + b + δ = h_o' − h_c`, with `h_o'` the original stream after the
    /// addition. Fitting that also cancels the part of the upstream error that `x_c` can
    /// predict, and needs no product with `X_o` at all. `inputs` are the moments of `x_c`
    /// (with a Gram matrix), `target` those of `t` over the same rows.
    pub fn towards_target(inputs: &Moments, target: &TargetMoments) -> SplitLoss {
        let mean_c = inputs.mean();
        let cross = target.cross_covariance(&mean_c).transpose().to_owned();
        SplitLoss {
            cov_c: inputs.covariance(),
            cross,
            target_variance: target.trace_covariance(),
            mean_c,
            target_mean: target.mean(),
            prior: None,
        }
    }

    /// The same loss with the original weights `w` as the ridge's prior (see
    /// [`CompensationOptions::ridge_towards_original`]).
    pub fn with_prior(mut self, w: &Matrix) -> SplitLoss {
        self.prior = Some(w.clone());
        self
    }

    /// The regression target of ridge `shift`: `Cov(t, x_c) + shift·W₀` with the prior `W₀`,
    /// else `Cov(t, x_c)`. Minimising `L(Ŵ) + shift‖Ŵ − W₀‖²` over rank `r` is the truncated SVD
    /// of `(Cov(t, x_c) + shift·W₀)(C_cc + shift·I)⁻¹` in the metric `C_cc + shift·I`.
    fn ridge_target(&self, shift: f64, towards_original: bool) -> std::borrow::Cow<'_, Matrix> {
        match (&self.prior, towards_original) {
            (Some(w), true) if shift > 0.0 => {
                std::borrow::Cow::Owned(Mat::from_fn(self.cross.nrows(), self.cross.ncols(), |i, j| {
                    self.cross[(i, j)] + shift * w[(i, j)]
                }))
            }
            _ => std::borrow::Cow::Borrowed(&self.cross),
        }
    }

    /// `L(Ŵ, b̂)` per token.
    pub fn loss(&self, w_hat: &Matrix, bias_hat: &[f64]) -> f64 {
        let quad = linalg::quad_trace(w_hat.as_ref(), self.cov_c.as_ref());
        let lin = linalg::inner(w_hat.as_ref(), self.cross.as_ref());
        let mean = mean_error(&mat_vec(w_hat, &self.mean_c), bias_hat, &self.target_mean);
        (quad - 2.0 * lin + self.target_variance).max(0.0) + mean
    }

    /// `L(Ŵ, b̂)` of an approximation, in factored form when that is cheaper: with `Ŵ = U·V`,
    /// `tr(Ŵ C Ŵᵀ) = ⟨UᵀU, V C Vᵀ⟩` and `⟨Ŵ, X⟩ = ⟨Uᵀ X, V⟩` cost `r·n² + r·m·n` instead of
    /// `m·n²` (a sparse term needs the dense `Ŵ`).
    pub fn loss_of(&self, approx: &Approximation, bias_hat: &[f64]) -> f64 {
        let (u, v) = (&approx.u, &approx.v);
        let (m, n, r) = (u.nrows(), v.ncols(), u.ncols());
        if approx.sparse.is_some() || r * (m + n) >= m * n {
            return self.loss(&approx.dense(), bias_hat);
        }
        let vc = linalg::mul(v.as_ref(), self.cov_c.as_ref());
        let vcv = linalg::mul(vc.as_ref(), v.transpose());
        let utu = linalg::mul(u.transpose(), u.as_ref());
        let quad = linalg::inner(utu.as_ref(), vcv.as_ref());
        let utx = linalg::mul(u.transpose(), self.cross.as_ref());
        let lin = linalg::inner(utx.as_ref(), v.as_ref());
        let mean = mean_error(&approx_mat_vec(approx, &self.mean_c), bias_hat, &self.target_mean);
        (quad - 2.0 * lin + self.target_variance).max(0.0) + mean
    }

    /// The bias minimising `L` for `Ŵ`: `b̂ = W μ_o + b − Ŵ μ_c`.
    pub fn optimal_bias(&self, w_hat: &Matrix) -> Vec<f64> {
        let wm = mat_vec(w_hat, &self.mean_c);
        self.target_mean.iter().zip(&wm).map(|(t, x)| t - x).collect()
    }

    /// [`SplitLoss::optimal_bias`] of an approximation (factored: `U·(V μ_c)`).
    pub fn optimal_bias_of(&self, approx: &Approximation) -> Vec<f64> {
        let wm = approx_mat_vec(approx, &self.mean_c);
        self.target_mean.iter().zip(&wm).map(|(t, x)| t - x).collect()
    }
}

/// `A·x`.
fn mat_vec(a: &Matrix, x: &[f64]) -> Vec<f64> {
    (0..a.nrows()).map(|i| (0..a.ncols()).map(|j| a[(i, j)] * x[j]).sum()).collect()
}

/// `(U·V + S)·x` without forming `U·V`.
fn approx_mat_vec(approx: &Approximation, x: &[f64]) -> Vec<f64> {
    let vx = mat_vec(&approx.v, x);
    let mut y = mat_vec(&approx.u, &vx);
    if let Some(s) = &approx.sparse {
        for (i, yi) in y.iter_mut().enumerate() {
            for q in s.row_ptr[i] as usize..s.row_ptr[i + 1] as usize {
                *yi += s.values[q] * x[s.col_idx[q] as usize];
            }
        }
    }
    y
}

/// `‖a + b − t‖²`: the mean-output part of the loss.
fn mean_error(w_mu: &[f64], bias: &[f64], target: &[f64]) -> f64 {
    w_mu.iter().zip(bias).zip(target).map(|((a, b), t)| (a + b - t) * (a + b - t)).sum()
}

/// Options of the compensation of one layer.
#[derive(Debug, Clone)]
pub struct CompensationOptions {
    /// Ridge values `λ` as fractions of the mean eigenvalue of `C_cc` (the grid searched on the
    /// validation split).
    pub ridge_grid: Vec<f64>,
    /// Eigenvalue floor relative to the largest.
    pub rel_floor: f64,
    /// Alternations of the low-rank + sparse fit.
    pub sparse_iterations: usize,
    /// Adam steps after the closed form (0 = none).
    pub adam_steps: usize,
    /// Adam learning rate, relative to the RMS of the factors.
    pub adam_lr: f64,
    /// The ridge pulls the compensated weights towards the original layer's (`‖Ŵ − W‖²`)
    /// instead of towards zero (`‖Ŵ‖²`), where the fit loss carries the original weights
    /// ([`SplitLoss::with_prior`]): input directions the calibration images hardly excite keep
    /// the original layer's response instead of losing it.
    pub ridge_towards_original: bool,
}

impl Default for CompensationOptions {
    fn default() -> Self {
        CompensationOptions {
            ridge_grid: vec![1e-4, 1e-3, 1e-2, 1e-1],
            rel_floor: super::decompose::DEFAULT_REL_FLOOR,
            sparse_iterations: 4,
            adam_steps: 0,
            adam_lr: 1e-3,
            ridge_towards_original: true,
        }
    }
}

/// A candidate replacement of a layer.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// `U·V (+ S)`.
    pub approx: Approximation,
    /// `b̂`.
    pub bias: Vec<f64>,
}

/// What compensation did to one layer.
#[derive(Debug, Clone)]
pub struct CompensationOutcome {
    /// The weights to use (compensated, or the start when the gate rejected every candidate).
    pub result: Candidate,
    /// Whether the compensated weights were kept.
    pub accepted: bool,
    /// The ridge fraction of the kept closed form (if any).
    pub ridge: Option<f64>,
    /// Adam steps that improved the validation loss and were kept.
    pub adam_steps_kept: usize,
    /// Fit-split loss before / after.
    pub fit_before: f64,
    /// Fit-split loss after.
    pub fit_after: f64,
    /// Validation loss before (if there is a validation split).
    pub val_before: Option<f64>,
    /// Validation loss after.
    pub val_after: Option<f64>,
    /// Output variance of the original layer on the fit split (for relative errors).
    pub fit_target_variance: f64,
    /// Same on the validation split.
    pub val_target_variance: Option<f64>,
}

/// Compensates one layer. `start` is the uncompensated replacement (from the whitened
/// decomposition on the original activations); its rank and sparse size are kept.
pub fn compensate_layer(
    w: &Matrix,
    bias: Option<&[f64]>,
    start: &Candidate,
    fit: &PairMoments,
    val: Option<&PairMoments>,
    opts: &CompensationOptions,
) -> Result<CompensationOutcome, MethodError> {
    let fit_loss = SplitLoss::new(w, bias, fit);
    let val_loss = val.map(|v| SplitLoss::new(w, bias, v));
    compensate_layer_with(start, &fit_loss, val_loss.as_ref(), opts)
}

/// [`compensate_layer`] from precomputed split losses.
pub fn compensate_layer_with(
    start: &Candidate,
    fit_loss: &SplitLoss,
    val_loss: Option<&SplitLoss>,
    opts: &CompensationOptions,
) -> Result<CompensationOutcome, MethodError> {
    let (rank, nnz) = (start.approx.rank(), start.approx.nnz());
    let n = fit_loss.cov_c.nrows();
    let fit_before = fit_loss.loss_of(&start.approx, &start.bias);
    let val_before = val_loss.map(|v| v.loss_of(&start.approx, &start.bias));

    // Closed form for every ridge value: through a Cholesky factor of C_cc + λI when there is no
    // sparse term (level-3 work), else (or if the factorisation fails) from one clamped
    // eigendecomposition of C_cc shared by all ridge values.
    let mean_eig = (0..n).map(|i| fit_loss.cov_c[(i, i)].max(0.0)).sum::<f64>() / n.max(1) as f64;
    // The ridge values are independent: their Cholesky solves run in parallel (each is a few
    // level-3 calls, better spread over the cores this way than split inside faer).
    let by_cholesky: Vec<Option<Approximation>> = opts
        .ridge_grid
        .par_iter()
        .map(|&ridge| -> Result<Option<Approximation>, MethodError> {
            if nnz > 0 {
                return Ok(None);
            }
            let shift = ridge * mean_eig;
            let target = fit_loss.ridge_target(shift, opts.ridge_towards_original);
            let svd = WhitenedSvd::compute_cholesky(&target, &fit_loss.cov_c, shift, rank)?;
            Ok(svd.map(|svd| {
                let (u, v) = svd.factors(rank);
                Approximation { u, v, sparse: None }
            }))
        })
        .collect::<Result<_, _>>()?;
    let mut eigen: Option<(linalg::SymEigen, Matrix, Option<Matrix>)> = None; // (eig of C_cc, cross·E, W₀·E)
    let mut best: Option<(Candidate, f64, f64, f64)> = None; // (candidate, ridge, fit, val)
    for (&ridge, closed) in opts.ridge_grid.iter().zip(by_cholesky) {
        let approx = match closed {
            Some(approx) => approx,
            None => {
                if eigen.is_none() {
                    let eig = linalg::sym_eigen(fit_loss.cov_c.as_ref())?;
                    let cross_rot = linalg::mul(fit_loss.cross.as_ref(), eig.vectors.as_ref());
                    let prior_rot = (opts.ridge_towards_original)
                        .then_some(fit_loss.prior.as_ref())
                        .flatten()
                        .map(|w| linalg::mul(w.as_ref(), eig.vectors.as_ref()));
                    eigen = Some((eig, cross_rot, prior_rot));
                }
                let (eig, cross_rot, prior_rot) = eigen.as_ref().expect("computed above");
                let shift = ridge * mean_eig;
                let metric = Metric::from_eigen(eig, shift, opts.rel_floor);
                let target_rot = Mat::from_fn(cross_rot.nrows(), cross_rot.ncols(), |i, j| match prior_rot {
                    Some(p) => (cross_rot[(i, j)] + shift * p[(i, j)]) / metric.values[j],
                    None => cross_rot[(i, j)] / metric.values[j],
                });
                if nnz == 0 {
                    let svd = WhitenedSvd::compute_rotated(&target_rot, &metric)?;
                    let (u, v) = svd.factors(rank);
                    Approximation { u, v, sparse: None }
                } else {
                    let target = metric.unrotate(&target_rot);
                    fit_low_rank_sparse(&target, &metric, rank, nnz, opts.sparse_iterations)?.0
                }
            }
        };
        let b = fit_loss.optimal_bias_of(&approx);
        let f = fit_loss.loss_of(&approx, &b);
        if f > fit_before {
            continue;
        }
        let v = val_loss.map_or(f, |vl| vl.loss_of(&approx, &b));
        if best.as_ref().map_or(true, |(_, _, _, bv)| v < *bv) {
            best = Some((Candidate { approx, bias: b }, ridge, f, v));
        }
    }
    let reference_val = val_before.unwrap_or(fit_before);
    let (mut result, mut ridge, mut fit_after, mut val_after, mut accepted) = match best {
        Some((cand, r, f, v)) if v < reference_val => (cand, Some(r), f, v, true),
        _ => (start.clone(), None, fit_before, reference_val, false),
    };
    let mut adam_steps_kept = 0;
    if opts.adam_steps > 0 {
        let refined = adam_refine(&result, fit_loss, val_loss, opts.adam_steps, opts.adam_lr)?;
        let f = fit_loss.loss_of(&refined.0.approx, &refined.0.bias);
        let v = val_loss.map_or(f, |vl| vl.loss_of(&refined.0.approx, &refined.0.bias));
        if refined.1 > 0 && v < val_after && f <= fit_before {
            result = refined.0;
            adam_steps_kept = refined.1;
            fit_after = f;
            val_after = v;
            accepted = true;
            ridge = ridge.or(Some(0.0));
        }
    }
    Ok(CompensationOutcome {
        result,
        accepted,
        ridge,
        adam_steps_kept,
        fit_before,
        fit_after,
        val_before,
        val_after: val_loss.map(|_| val_after),
        fit_target_variance: fit_loss.target_variance,
        val_target_variance: val_loss.map(|v| v.target_variance),
    })
}

/// Adam on `(U, V, S values)` minimising the fit loss (with the optimal bias eliminated), with
/// early stopping on the validation loss (evaluated every few steps; stops after three
/// evaluations without improvement). Returns the best iterate by validation loss and the step
/// at which it was reached (0 = the start was best).
pub fn adam_refine(
    start: &Candidate,
    fit: &SplitLoss,
    val: Option<&SplitLoss>,
    steps: usize,
    lr_rel: f64,
) -> Result<(Candidate, usize), MethodError> {
    let mut u = start.approx.u.clone();
    let mut v = start.approx.v.clone();
    let mut sp = start.approx.sparse.clone();
    let (m, r, n) = (u.nrows(), u.ncols(), v.ncols());
    let rms = |a: &Matrix| (linalg::frob2(a.as_ref()) / (a.nrows() * a.ncols()).max(1) as f64).sqrt();
    let (lr_u, lr_v) = (lr_rel * rms(&u).max(1e-12), lr_rel * rms(&v).max(1e-12));
    let lr_s = sp.as_ref().map_or(0.0, |s| {
        lr_rel * (s.values.iter().map(|x| x * x).sum::<f64>() / s.values.len().max(1) as f64).sqrt().max(1e-12)
    });
    let (b1, b2, eps) = (0.9, 0.999, 1e-12);
    let mut mu = Mat::<f64>::zeros(m, r);
    let mut vu = Mat::<f64>::zeros(m, r);
    let mut mv = Mat::<f64>::zeros(r, n);
    let mut vv = Mat::<f64>::zeros(r, n);
    let nnz = sp.as_ref().map_or(0, |s| s.values.len());
    let (mut ms, mut vs) = (vec![0.0; nnz], vec![0.0; nnz]);
    let evaluate = |c: &Candidate| {
        let d = c.approx.dense();
        val.unwrap_or(fit).loss(&d, &c.bias)
    };
    let mut best = (start.clone(), evaluate(start), 0usize);
    let mut stale = 0;
    let eval_every = 10;
    for t in 1..=steps {
        let approx = Approximation { u: u.clone(), v: v.clone(), sparse: sp.clone() };
        let w_hat = approx.dense();
        // dL/dŴ = 2(Ŵ C_cc − W C_oc) (bias eliminated: centred loss).
        let g = linalg::mul(w_hat.as_ref(), fit.cov_c.as_ref()) - &fit.cross;
        let g = &g * faer::Scale(2.0);
        let gu = linalg::mul(g.as_ref(), v.transpose());
        let gv = linalg::mul(u.transpose(), g.as_ref());
        let (c1, c2) = (1.0 - f64::powi(b1, t as i32), 1.0 - f64::powi(b2, t as i32));
        let step = |p: &mut Matrix, mo: &mut Matrix, ve: &mut Matrix, gr: &Matrix, lr: f64| {
            for j in 0..p.ncols() {
                for i in 0..p.nrows() {
                    let gij = gr[(i, j)];
                    mo[(i, j)] = b1 * mo[(i, j)] + (1.0 - b1) * gij;
                    ve[(i, j)] = b2 * ve[(i, j)] + (1.0 - b2) * gij * gij;
                    p[(i, j)] -= lr * (mo[(i, j)] / c1) / ((ve[(i, j)] / c2).sqrt() + eps);
                }
            }
        };
        step(&mut u, &mut mu, &mut vu, &gu, lr_u);
        step(&mut v, &mut mv, &mut vv, &gv, lr_v);
        if let Some(s) = sp.as_mut() {
            for i in 0..m {
                for q in s.row_ptr[i] as usize..s.row_ptr[i + 1] as usize {
                    let gq = g[(i, s.col_idx[q] as usize)];
                    ms[q] = b1 * ms[q] + (1.0 - b1) * gq;
                    vs[q] = b2 * vs[q] + (1.0 - b2) * gq * gq;
                    s.values[q] -= lr_s * (ms[q] / c1) / ((vs[q] / c2).sqrt() + eps);
                }
            }
        }
        if t % eval_every == 0 || t == steps {
            let approx = Approximation { u: u.clone(), v: v.clone(), sparse: sp.clone() };
            let bias = fit.optimal_bias(&approx.dense());
            let cand = Candidate { approx, bias };
            let loss = evaluate(&cand);
            if loss < best.1 {
                best = (cand, loss, t);
                stale = 0;
            } else {
                stale += 1;
                if stale >= 3 {
                    break;
                }
            }
        }
    }
    Ok((best.0, best.2))
}

#[cfg(test)]
mod tests {
    use super::super::decompose::{corrected_bias, DEFAULT_REL_FLOOR};
    use super::*;
    use crate::data::Rng;

    /// Aligned streams: x_o, and x_c = x_o·A + noise (a perturbed upstream).
    fn streams(rows: usize, n: usize, seed: u64, noise: f64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Rng::scrambled(seed);
        let mix = Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 } + 0.3 * rng.normal() / (n as f64).sqrt());
        let mut xo = vec![0.0f32; rows * n];
        let mut xc = vec![0.0f32; rows * n];
        for r in 0..rows {
            let z: Vec<f64> = (0..n).map(|j| rng.normal() * 0.8f64.powi(j as i32) + 0.2).collect();
            for i in 0..n {
                xo[r * n + i] = z[i] as f32;
                let c: f64 = (0..n).map(|j| z[j] * mix[(j, i)]).sum::<f64>() + noise * rng.normal();
                xc[r * n + i] = c as f32;
            }
        }
        (xc, xo)
    }

    fn moments(xc: &[f32], xo: &[f32], n: usize) -> PairMoments {
        let mut p = PairMoments::new(n);
        p.add(xc, xo, xc.len() / n);
        p
    }

    fn start_candidate(w: &Matrix, bias: &[f64], pm: &PairMoments, rank: usize) -> Candidate {
        let eig = linalg::sym_eigen(pm.o.covariance().as_ref()).unwrap();
        let metric = Metric::from_eigen(&eig, 0.0, DEFAULT_REL_FLOOR);
        let svd = WhitenedSvd::compute(w, &metric).unwrap();
        let (u, v) = svd.factors(rank);
        let approx = Approximation { u, v, sparse: None };
        let b = corrected_bias(w, &approx.dense(), Some(bias), &pm.o.mean());
        Candidate { approx, bias: b }
    }

    #[test]
    fn ridge_towards_the_original_keeps_unexcited_directions() {
        // Inputs that never excite the last two dimensions: plain ridge regression zeroes the
        // weights there, the ridge towards the original layer keeps them (exactly, at full rank:
        // W* = (C_tc + λW)(C + λI)⁻¹ is W on a direction where C and C_tc vanish).
        let (m, n) = (4, 6);
        let (mut xc, mut xo) = streams(400, n, 5, 0.05);
        for r in 0..400 {
            for i in 4..n {
                xc[r * n + i] = 0.0;
                xo[r * n + i] = 0.0;
            }
        }
        let pm = moments(&xc, &xo, n);
        let mut rng = Rng::scrambled(8);
        let w = Mat::from_fn(m, n, |_, _| rng.normal());
        let bias: Vec<f64> = (0..m).map(|_| rng.normal()).collect();
        let start = start_candidate(&w, &bias, &pm, m);
        for towards_original in [false, true] {
            let opts = CompensationOptions {
                ridge_grid: vec![1e-2],
                ridge_towards_original: towards_original,
                ..CompensationOptions::default()
            };
            let loss = SplitLoss::new(&w, Some(&bias), &pm).with_prior(&w);
            let out = compensate_layer_with(&start, &loss, None, &opts).unwrap();
            assert!(out.accepted, "towards original {towards_original}");
            let dense = out.result.approx.dense();
            for i in 0..m {
                for j in 4..n {
                    let want = if towards_original { w[(i, j)] } else { 0.0 };
                    assert!((dense[(i, j)] - want).abs() < 1e-9, "{towards_original}: Ŵ[{i}][{j}] = {}", dense[(i, j)]);
                }
            }
        }
    }

    #[test]
    fn closed_form_beats_brute_force_alternating_least_squares() {
        // Reduced-rank regression: the closed form must be at least as good as any rank-r
        // solution found by alternating least squares from random starts.
        let (m, n, rank) = (5, 6, 2);
        let (xc, xo) = streams(500, n, 11, 0.1);
        let pm = moments(&xc, &xo, n);
        let mut rng = Rng::scrambled(12);
        let w = Mat::from_fn(m, n, |_, _| rng.normal());
        let bias: Vec<f64> = (0..m).map(|_| rng.normal()).collect();
        let loss = SplitLoss::new(&w, Some(&bias), &pm);
        let start = start_candidate(&w, &bias, &pm, rank);
        let opts = CompensationOptions { ridge_grid: vec![0.0], ..CompensationOptions::default() };
        let out = compensate_layer(&w, Some(&bias), &start, &pm, None, &opts).unwrap();
        assert!(out.accepted);
        let closed = out.fit_after;
        // ALS: alternate exact least squares for U (given V) and V (given U).
        let c = &loss.cov_c;
        for seed in 0..20 {
            let mut r2 = Rng::scrambled(100 + seed);
            let mut v = Mat::from_fn(rank, n, |_, _| r2.normal());
            let mut u = Mat::<f64>::zeros(m, rank);
            for _ in 0..300 {
                // U = (W C_oc Vᵀ)(V C Vᵀ)⁻¹
                let vcv = linalg::mul(linalg::mul(v.as_ref(), c.as_ref()).as_ref(), v.transpose());
                let rhs = linalg::mul(loss.cross.as_ref(), v.transpose());
                let eig = linalg::sym_eigen(vcv.as_ref()).unwrap();
                u = linalg::solve_right_sym(rhs.as_ref(), &eig, 0.0, 1e-14);
                // V = (UᵀU)⁻¹ Uᵀ W C_oc C⁻¹
                let utu = linalg::mul(u.transpose(), u.as_ref());
                let eig_u = linalg::sym_eigen(utu.as_ref()).unwrap();
                let eig_c = linalg::sym_eigen(c.as_ref()).unwrap();
                let a = linalg::solve_right_sym(loss.cross.as_ref(), &eig_c, 0.0, 1e-14);
                let uta = linalg::mul(u.transpose(), a.as_ref());
                let inv = linalg::solve_right_sym(Mat::<f64>::identity(rank, rank).as_ref(), &eig_u, 0.0, 1e-14);
                v = linalg::mul(inv.as_ref(), uta.as_ref());
            }
            let dense = linalg::mul(u.as_ref(), v.as_ref());
            let b = loss.optimal_bias(&dense);
            let als = loss.loss(&dense, &b);
            assert!(closed <= als * (1.0 + 1e-6) + 1e-12, "seed {seed}: closed form {closed} > ALS {als}");
        }
        assert!(out.fit_after <= out.fit_before);
    }

    #[test]
    fn gate_never_increases_fit_or_validation_loss() {
        let (m, n) = (6, 8);
        for (seed, rows_fit) in [(1u64, 12usize), (2, 40), (3, 400)] {
            let (xc, xo) = streams(rows_fit, n, seed, 0.3);
            let (vxc, vxo) = streams(300, n, seed + 50, 0.3);
            let fit = moments(&xc, &xo, n);
            let val = moments(&vxc, &vxo, n);
            let mut rng = Rng::scrambled(seed + 7);
            let w = Mat::from_fn(m, n, |_, _| rng.normal());
            let bias: Vec<f64> = (0..m).map(|_| rng.normal()).collect();
            for rank in 1..4 {
                let start = start_candidate(&w, &bias, &fit, rank);
                let opts = CompensationOptions { adam_steps: 50, ..CompensationOptions::default() };
                let out = compensate_layer(&w, Some(&bias), &start, &fit, Some(&val), &opts).unwrap();
                assert!(out.fit_after <= out.fit_before * (1.0 + 1e-12), "fit loss increased");
                let (vb, va) = (out.val_before.unwrap(), out.val_after.unwrap());
                assert!(va <= vb, "validation loss increased: {vb} -> {va}");
            }
        }
    }

    #[test]
    fn residual_stream_target_equals_the_brute_force_loss() {
        // Rows of (x_c, x_o, δ) with δ partly predictable from x_c: the loss towards the target
        // t = W x_o + b + δ (from moments of x_c and t alone) must equal the per-row mean of
        // ‖Ŵ x_c + b̂ − W x_o − b − δ‖², and compensation on it must lower it.
        let (m, n, rows) = (4, 5, 300);
        let (xc, xo) = streams(rows, n, 31, 0.2);
        let mut rng = Rng::scrambled(32);
        let mix = Mat::from_fn(m, n, |_, _| 0.3 * rng.normal());
        let delta: Vec<f32> = (0..rows * m)
            .map(|k| {
                let (r, i) = (k / m, k % m);
                let pred: f64 = (0..n).map(|j| mix[(i, j)] * f64::from(xc[r * n + j])).sum();
                (pred + 0.1 * rng.normal() + 0.05) as f32
            })
            .collect();
        let pm = moments(&xc, &xo, n);
        let w = Mat::from_fn(m, n, |_, _| rng.normal());
        let bias: Vec<f64> = (0..m).map(|_| rng.normal()).collect();
        // The target t = W x_o + b + δ, as the pipeline gets it from the two streams.
        let target: Vec<f32> = (0..rows * m)
            .map(|k| {
                let (r, i) = (k / m, k % m);
                let wx: f64 = (0..n).map(|j| w[(i, j)] * f64::from(xo[r * n + j])).sum();
                (wx + bias[i] + f64::from(delta[r * m + i])) as f32
            })
            .collect();
        let mut tm = TargetMoments::new(n, m);
        tm.add(&xc, &target, rows);
        let loss = SplitLoss::towards_target(&pm.c, &tm);
        let brute = |w_hat: &Matrix, b_hat: &[f64]| -> f64 {
            (0..rows)
                .map(|r| {
                    (0..m)
                        .map(|i| {
                            let y: f64 =
                                (0..n).map(|j| w_hat[(i, j)] * f64::from(xc[r * n + j])).sum::<f64>() + b_hat[i];
                            let t: f64 = (0..n).map(|j| w[(i, j)] * f64::from(xo[r * n + j])).sum::<f64>()
                                + bias[i]
                                + f64::from(delta[r * m + i]);
                            (y - t) * (y - t)
                        })
                        .sum::<f64>()
                })
                .sum::<f64>()
                / rows as f64
        };
        let start = start_candidate(&w, &bias, &pm, 2);
        let dense = start.approx.dense();
        let (got, want) = (loss.loss(&dense, &start.bias), brute(&dense, &start.bias));
        // f32 chunk products against f64 row sums: 1e-5 relative.
        assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
        let opts = CompensationOptions { ridge_grid: vec![0.0], ..CompensationOptions::default() };
        let out = compensate_layer_with(&start, &loss, None, &opts).unwrap();
        assert!(out.accepted);
        let after = brute(&out.result.approx.dense(), &out.result.bias);
        assert!((out.fit_after - after).abs() <= 1e-5 * after.max(1e-9));
        assert!(after < 0.9 * want, "compensation should absorb the predictable drift: {want} -> {after}");
    }
}
