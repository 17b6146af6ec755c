//! Activation-aware low-rank (+ sparse) approximation of one linear layer.
//!
//! For inputs `x` with mean `μ` and centred covariance `C`, the output error of replacing
//! `(W, b)` by `(Ŵ, b̂)` is, per token,
//!
//! `E‖(W − Ŵ)x + b − b̂‖² = tr((W − Ŵ) C (W − Ŵ)ᵀ) + ‖(W − Ŵ)μ + b − b̂‖²`.
//!
//! The bias correction `b̂ = b + (W − Ŵ)μ` zeroes the second term for any `Ŵ`, so only the centred
//! term is minimised: with a symmetric square root `S = C^{1/2}` (eigendecomposition, clamped
//! spectrum) and the SVD `W·S = P Σ Qᵀ`, the best rank-`r` `Ŵ` is `P_r Σ_r Q_rᵀ S⁻¹` and its
//! error is exactly `Σ_{k>r} σ_k²` (Eckart–Young in the whitened space; SVD-LLM).

use faer::linalg::triangular_solve;
use faer::Mat;
use rayon::prelude::*;

use super::linalg::{self, Matrix, SymEigen};
use super::MethodError;

/// A (regularised) input metric `C' = E·diag(λ')·Eᵀ` with `λ' = max(λ + shift, floor)`, held in
/// its eigenbasis. Its symmetric square root is `S = E·diag(√λ')·Eᵀ`; since `T·S·E = (T·E)·diag(√λ')`
/// has the same singular values and left singular vectors as `T·S`, whitened SVDs are computed in
/// the eigenbasis, which saves two `n³` products per SVD (the truncated `Ŵ` is identical).
#[derive(Debug, Clone)]
pub struct Metric<'e> {
    /// Eigenbasis `E` (`None`: the identity metric of plain SVD).
    pub eig: Option<&'e SymEigen>,
    /// `λ'`, in the order of the eigenvectors.
    pub values: Vec<f64>,
    /// Eigenvalues raised to the floor.
    pub clamped: usize,
}

impl<'e> Metric<'e> {
    /// The identity metric (plain, data-free SVD).
    pub fn identity(n: usize) -> Metric<'static> {
        Metric { eig: None, values: vec![1.0; n], clamped: 0 }
    }

    /// `C + shift·I` from an eigendecomposition of `C`; `rel_floor` clamps eigenvalues below
    /// `rel_floor·λ_max`.
    pub fn from_eigen(eig: &'e SymEigen, shift: f64, rel_floor: f64) -> Metric<'e> {
        let (values, _, clamped) = eig.clamped_values(shift, rel_floor);
        Metric { eig: Some(eig), values, clamped }
    }

    /// Dimension `n`.
    pub fn dim(&self) -> usize {
        self.values.len()
    }

    /// `T·E` (the target in the eigenbasis).
    pub fn rotate(&self, t: &Matrix) -> Matrix {
        match self.eig {
            Some(e) => linalg::mul(t.as_ref(), e.vectors.as_ref()),
            None => t.clone(),
        }
    }

    /// `R·Eᵀ` (back from the eigenbasis).
    pub fn unrotate(&self, r: &Matrix) -> Matrix {
        match self.eig {
            Some(e) => linalg::mul(r.as_ref(), e.vectors.transpose()),
            None => r.clone(),
        }
    }

    /// `C'` as a dense matrix.
    pub fn cov(&self) -> Matrix {
        match self.eig {
            Some(e) => e.function(&self.values, |v| v),
            None => Mat::from_fn(self.dim(), self.dim(), |i, j| if i == j { 1.0 } else { 0.0 }),
        }
    }
}

/// Default relative eigenvalue floor (eigenvalues below `1e-10·λ_max` are treated as `1e-10·λ_max`).
pub const DEFAULT_REL_FLOOR: f64 = 1e-10;

/// The SVD of a target in a metric: `T·S = P Σ Qᵀ`, kept as `P`, `σ`, `Q̃ᵀ = Qᵀ S⁻¹`.
#[derive(Debug, Clone)]
pub struct WhitenedSvd {
    /// `m × k`.
    pub p: Matrix,
    /// `k` singular values, descending.
    pub sigma: Vec<f64>,
    /// `k × n`: `Qᵀ S⁻¹`.
    pub qt_inv: Matrix,
}

impl WhitenedSvd {
    /// SVD of `target` (`m × n`) in `metric`.
    pub fn compute(target: &Matrix, metric: &Metric<'_>) -> Result<WhitenedSvd, MethodError> {
        WhitenedSvd::compute_rotated(&metric.rotate(target), metric)
    }

    /// Same from `T·E` (callers that already hold the target in the eigenbasis).
    pub fn compute_rotated(target_rot: &Matrix, metric: &Metric<'_>) -> Result<WhitenedSvd, MethodError> {
        let roots: Vec<f64> = metric.values.iter().map(|v| v.sqrt()).collect();
        let a = Mat::from_fn(target_rot.nrows(), target_rot.ncols(), |i, j| target_rot[(i, j)] * roots[j]);
        let svd = linalg::thin_svd(a.as_ref())?;
        let k = svd.s.len();
        let qt_scaled = Mat::from_fn(k, a.ncols(), |i, j| svd.v[(j, i)] / roots[j]);
        Ok(WhitenedSvd { p: svd.u, sigma: svd.s, qt_inv: metric.unrotate(&qt_scaled) })
    }

    /// The whitened SVD of the reduced-rank regression target `W* = X·A⁻¹` in the metric
    /// `A = cov + shift·I`, through the Cholesky factor `A = L·Lᵀ` instead of an
    /// eigendecomposition: `W*·L = X·L⁻ᵀ = P Σ Qᵀ` and `Q̃ᵀ = Qᵀ L⁻¹`. Any square root of `A`
    /// gives the same truncations (`‖D·L‖_F = ‖D·A^{1/2}‖_F` whenever `L·Lᵀ = A`), so the result
    /// equals [`WhitenedSvd::compute`] of `W*` in `A`; a Cholesky factorisation and two
    /// triangular solves are level-3 work, several times faster than the tridiagonalisation of
    /// an eigendecomposition on wide layers. Only the first `keep` singular triplets are kept.
    ///
    /// Returns `None` when `A` is not numerically positive definite (`shift = 0` on
    /// rank-deficient data): callers then use the eigendecomposition, which clamps.
    pub fn compute_cholesky(
        x: &Matrix,
        cov: &Matrix,
        shift: f64,
        keep: usize,
    ) -> Result<Option<WhitenedSvd>, MethodError> {
        let n = cov.nrows();
        if cov.ncols() != n || x.ncols() != n {
            return Err(MethodError::Shape(format!(
                "regression target {}×{} against a {}×{} metric",
                x.nrows(),
                x.ncols(),
                n,
                cov.ncols()
            )));
        }
        let a = Mat::from_fn(n, n, |i, j| 0.5 * (cov[(i, j)] + cov[(j, i)]) + if i == j { shift } else { 0.0 });
        if a.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) {
            return Err(MethodError::NonFinite("metric passed to the Cholesky factorisation".into()));
        }
        let Ok(llt) = a.llt(faer::Side::Lower) else { return Ok(None) };
        let l = llt.L();
        // Tᵀ = L⁻¹ Xᵀ (T = X·L⁻ᵀ).
        let mut tt = x.transpose().to_owned();
        triangular_solve::solve_lower_triangular_in_place(l, tt.as_mut(), linalg::par());
        let svd = linalg::leading_svd(tt.transpose(), keep)?;
        let keep = keep.min(svd.s.len());
        // Q̃ = L⁻ᵀ Q: solve Lᵀ Q̃ = Q.
        let mut q = svd.v.subcols(0, keep).to_owned();
        triangular_solve::solve_upper_triangular_in_place(l.transpose(), q.as_mut(), linalg::par());
        Ok(Some(WhitenedSvd {
            p: svd.u.subcols(0, keep).to_owned(),
            sigma: svd.s[..keep].to_vec(),
            qt_inv: q.transpose().to_owned(),
        }))
    }

    /// Largest rank available.
    pub fn max_rank(&self) -> usize {
        self.sigma.len()
    }

    /// `err[r] = Σ_{k≥r} σ_k²` for `r = 0..=k`: the metric error of the rank-`r` truncation.
    pub fn tail_energy(&self) -> Vec<f64> {
        let k = self.sigma.len();
        let mut tail = vec![0.0; k + 1];
        for r in (0..k).rev() {
            tail[r] = tail[r + 1] + self.sigma[r] * self.sigma[r];
        }
        tail
    }

    /// Balanced factors `U = P_r Σ_r^{1/2}` (`m × r`), `V = Σ_r^{1/2} Q̃_rᵀ` (`r × n`).
    pub fn factors(&self, r: usize) -> (Matrix, Matrix) {
        let r = r.min(self.max_rank());
        let u = Mat::from_fn(self.p.nrows(), r, |i, j| self.p[(i, j)] * self.sigma[j].sqrt());
        let v = Mat::from_fn(r, self.qt_inv.ncols(), |i, j| self.qt_inv[(i, j)] * self.sigma[i].sqrt());
        (u, v)
    }

    /// Per-rank error on another input distribution (validation data): with `C_v`, `μ_v` and the
    /// bias corrected on `μ_f`, `err_v[r] = Σ_{k≥r} σ_k² (q̃_kᵀ C_v q̃_k + (q̃_kᵀ(μ_v − μ_f))²)`
    /// (exact, because the columns of `P` are orthonormal).
    pub fn tail_energy_on(&self, cov_v: &Matrix, mean_shift: &[f64]) -> Vec<f64> {
        let k = self.sigma.len();
        let qc = linalg::mul(self.qt_inv.as_ref(), cov_v.as_ref());
        let diag: Vec<f64> = (0..k)
            .map(|i| {
                let quad: f64 = (0..qc.ncols()).map(|j| qc[(i, j)] * self.qt_inv[(i, j)]).sum();
                let shift: f64 = (0..qc.ncols()).map(|j| self.qt_inv[(i, j)] * mean_shift[j]).sum();
                quad + shift * shift
            })
            .collect();
        let mut tail = vec![0.0; k + 1];
        for r in (0..k).rev() {
            tail[r] = tail[r + 1] + self.sigma[r] * self.sigma[r] * diag[r];
        }
        tail
    }
}

/// A sparse matrix in CSR form (rows = outputs), f64 values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseTerm {
    /// `m + 1` row pointers.
    pub row_ptr: Vec<u32>,
    /// Column of each entry.
    pub col_idx: Vec<u32>,
    /// Value of each entry.
    pub values: Vec<f64>,
}

impl SparseTerm {
    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Adds the entries into a dense `m × n` matrix.
    pub fn add_to(&self, w: &mut Matrix) {
        for i in 0..self.row_ptr.len().saturating_sub(1) {
            for q in self.row_ptr[i] as usize..self.row_ptr[i + 1] as usize {
                w[(i, self.col_idx[q] as usize)] += self.values[q];
            }
        }
    }
}

/// `Ŵ = U·V (+ S)`.
#[derive(Debug, Clone)]
pub struct Approximation {
    /// `m × r`.
    pub u: Matrix,
    /// `r × n`.
    pub v: Matrix,
    /// Optional sparse term.
    pub sparse: Option<SparseTerm>,
}

impl Approximation {
    /// Rank of the low-rank term.
    pub fn rank(&self) -> usize {
        self.u.ncols()
    }

    /// Non-zeros of the sparse term.
    pub fn nnz(&self) -> usize {
        self.sparse.as_ref().map_or(0, SparseTerm::nnz)
    }

    /// The effective dense weight.
    pub fn dense(&self) -> Matrix {
        let mut w = linalg::mul(self.u.as_ref(), self.v.as_ref());
        if let Some(s) = &self.sparse {
            s.add_to(&mut w);
        }
        w
    }
}

/// `b̂ = b + (W − Ŵ)μ`: the bias that keeps the mean output unchanged.
pub fn corrected_bias(w: &Matrix, w_hat: &Matrix, bias: Option<&[f64]>, mean: &[f64]) -> Vec<f64> {
    let m = w.nrows();
    (0..m)
        .map(|i| {
            let d: f64 = (0..w.ncols()).map(|j| (w[(i, j)] - w_hat[(i, j)]) * mean[j]).sum();
            bias.map_or(0.0, |b| b[i]) + d
        })
        .collect()
}

/// Per-token squared output error `tr(ΔCΔᵀ) + ‖Δμ + b − b̂‖²` of `(Ŵ, b̂)` against `(W, b)` for
/// inputs with centred covariance `cov` and mean `mean`.
pub fn output_error(
    w: &Matrix,
    bias: Option<&[f64]>,
    w_hat: &Matrix,
    bias_hat: Option<&[f64]>,
    cov: &Matrix,
    mean: &[f64],
) -> f64 {
    let delta = w - w_hat;
    let centred = linalg::quad_trace(delta.as_ref(), cov.as_ref());
    let m = w.nrows();
    let mean_part: f64 = (0..m)
        .map(|i| {
            let d: f64 = (0..w.ncols()).map(|j| delta[(i, j)] * mean[j]).sum::<f64>() + bias.map_or(0.0, |b| b[i])
                - bias_hat.map_or(0.0, |b| b[i]);
            d * d
        })
        .sum();
    centred + mean_part
}

/// Joint low-rank + sparse fit `min ‖(T − UV − S)·C'^{1/2}‖²` with `rank(UV) ≤ r`, `nnz(S) ≤ k`
/// (alternating minimisation in the spirit of OATS, but in the full activation metric):
///
/// * low-rank step: the exact whitened truncated SVD of `T − S`;
/// * support step: each entry is scored by the decrease of the objective if it alone were
///   re-optimised, `(G_ij + S_ij C'_jj)² / C'_jj` with `G = (T − UV − S)·C'`, and the top `k` kept;
/// * value step: the exact least-squares values on that support, row by row
///   (`C'_JJ s_J = ((T − UV)·C')_J`).
///
/// Returns the best iterate seen (the objective is tracked exactly) and its objective.
pub fn fit_low_rank_sparse(
    target: &Matrix,
    metric: &Metric<'_>,
    rank: usize,
    nnz: usize,
    iterations: usize,
) -> Result<(Approximation, f64), MethodError> {
    let (m, n) = (target.nrows(), target.ncols());
    let c = &metric.cov();
    let objective = |resid: &Matrix| linalg::quad_trace(resid.as_ref(), c.as_ref());
    let mut s_dense = Mat::<f64>::zeros(m, n);
    let mut best: Option<(Approximation, f64)> = None;
    let mut sparse: Option<SparseTerm> = None;
    for _ in 0..iterations.max(1) {
        let svd = WhitenedSvd::compute(&(target - &s_dense), metric)?;
        let (u, v) = svd.factors(rank);
        let low = linalg::mul(u.as_ref(), v.as_ref());
        let resid = target - &low;
        // Objective of the current pair (low rank refit, old sparse).
        let f = objective(&(&resid - &s_dense));
        if best.as_ref().map_or(true, |(_, bf)| f < *bf) {
            best = Some((Approximation { u: u.clone(), v: v.clone(), sparse: sparse.clone() }, f));
        }
        if nnz == 0 {
            break;
        }
        // Support: score every entry.
        let rc = linalg::mul(resid.as_ref(), c.as_ref());
        let g = &rc - &linalg::mul(s_dense.as_ref(), c.as_ref());
        let mut scored: Vec<(f64, u32, u32)> = Vec::with_capacity(m * n);
        for j in 0..n {
            let cjj = c[(j, j)].max(f64::MIN_POSITIVE);
            for i in 0..m {
                let t = g[(i, j)] + s_dense[(i, j)] * cjj;
                scored.push((t * t / cjj, i as u32, j as u32));
            }
        }
        let k = nnz.min(m * n);
        scored.select_nth_unstable_by(k.saturating_sub(1), |a, b| {
            b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
        });
        scored.truncate(k);
        scored.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)));
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); m];
        for &(_, i, j) in &scored {
            rows[i as usize].push(j);
        }
        // Values: exact least squares per row.
        let values: Vec<Vec<f64>> = rows
            .par_iter()
            .enumerate()
            .map(|(i, cols)| {
                if cols.is_empty() {
                    return Vec::new();
                }
                let kk = cols.len();
                let a = Mat::from_fn(kk, kk, |p, q| c[(cols[p] as usize, cols[q] as usize)]);
                let rhs = Mat::from_fn(1, kk, |_, q| rc[(i, cols[q] as usize)]);
                match linalg::sym_eigen(a.as_ref()) {
                    Ok(eig) => {
                        let x = linalg::solve_right_sym(rhs.as_ref(), &eig, 0.0, 1e-12);
                        (0..kk).map(|q| x[(0, q)]).collect()
                    }
                    Err(_) => cols
                        .iter()
                        .map(|&j| rc[(i, j as usize)] / c[(j as usize, j as usize)].max(f64::MIN_POSITIVE))
                        .collect(),
                }
            })
            .collect();
        let mut term =
            SparseTerm { row_ptr: vec![0; m + 1], col_idx: Vec::with_capacity(k), values: Vec::with_capacity(k) };
        s_dense = Mat::zeros(m, n);
        for i in 0..m {
            for (q, &j) in rows[i].iter().enumerate() {
                term.col_idx.push(j);
                term.values.push(values[i][q]);
                s_dense[(i, j as usize)] = values[i][q];
            }
            term.row_ptr[i + 1] = term.col_idx.len() as u32;
        }
        let f = objective(&(&resid - &s_dense));
        if best.as_ref().map_or(true, |(_, bf)| f < *bf) {
            best = Some((Approximation { u, v, sparse: Some(term.clone()) }, f));
        }
        sparse = Some(term);
    }
    best.ok_or_else(|| MethodError::Numerical("low-rank + sparse fit produced no iterate".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Rng;

    fn data(rows: usize, n: usize, seed: u64) -> Vec<f32> {
        // Correlated, anisotropic inputs with a non-zero mean.
        let mut rng = Rng::scrambled(seed);
        let mix = Mat::from_fn(n, n, |_, _| rng.normal());
        let scales: Vec<f64> = (0..n).map(|j| 2f64.powf(-(j as f64) / 3.0)).collect();
        let mut x = vec![0.0f32; rows * n];
        for r in 0..rows {
            let z: Vec<f64> = (0..n).map(|j| rng.normal() * scales[j]).collect();
            for i in 0..n {
                x[r * n + i] = ((0..n).map(|j| mix[(i, j)] * z[j]).sum::<f64>() + 0.5) as f32;
            }
        }
        x
    }

    fn measured_error(x: &[f32], n: usize, w: &Matrix, b: &[f64], w_hat: &Matrix, b_hat: &[f64]) -> f64 {
        let rows = x.len() / n;
        let mut total = 0.0;
        for r in 0..rows {
            for i in 0..w.nrows() {
                let mut d = b[i] - b_hat[i];
                for j in 0..n {
                    d += (w[(i, j)] - w_hat[(i, j)]) * f64::from(x[r * n + j]);
                }
                total += d * d;
            }
        }
        total / rows as f64
    }

    #[test]
    fn discarded_sigma2_equals_measured_error_and_beats_plain_svd() {
        let (m, n, rows) = (12, 10, 400);
        let x = data(rows, n, 1);
        let mut stats = super::super::stats::Moments::new(n);
        stats.add(&x, rows);
        let mut rng = Rng::scrambled(2);
        let w = Mat::from_fn(m, n, |_, _| rng.normal());
        let b: Vec<f64> = (0..m).map(|_| rng.normal()).collect();
        let cov = stats.covariance();
        let mean = stats.mean();
        let eig = linalg::sym_eigen(cov.as_ref()).unwrap();
        let metric = Metric::from_eigen(&eig, 0.0, DEFAULT_REL_FLOOR);
        let svd = WhitenedSvd::compute(&w, &metric).unwrap();
        let tail = svd.tail_energy();
        let plain = WhitenedSvd::compute(&w, &Metric::identity(n)).unwrap();
        for (r, &tail_r) in tail.iter().enumerate().take(n).skip(1) {
            let (u, v) = svd.factors(r);
            let w_hat = linalg::mul(u.as_ref(), v.as_ref());
            let b_hat = corrected_bias(&w, &w_hat, Some(&b), &mean);
            let measured = measured_error(&x, n, &w, &b, &w_hat, &b_hat);
            // Tolerance: the Gram is accumulated from f32 chunk products (relative rounding ~1e-6).
            assert!((measured - tail_r).abs() <= 2e-5 * (1.0 + tail_r), "rank {r}: {measured} vs {tail_r}");
            let formula = output_error(&w, Some(&b), &w_hat, Some(&b_hat), &cov, &mean);
            assert!((formula - measured).abs() <= 2e-5 * (1.0 + measured));
            // Plain SVD, bias unchanged.
            let (pu, pv) = plain.factors(r);
            let p_hat = linalg::mul(pu.as_ref(), pv.as_ref());
            let plain_err = measured_error(&x, n, &w, &b, &p_hat, &b);
            assert!(measured <= plain_err * (1.0 + 1e-9), "rank {r}: whitened {measured} > plain {plain_err}");
        }
    }

    #[test]
    fn sparse_term_never_hurts_and_reaches_exact_with_enough_entries() {
        let (m, n, rows) = (8, 9, 300);
        let x = data(rows, n, 3);
        let mut stats = super::super::stats::Moments::new(n);
        stats.add(&x, rows);
        let mut rng = Rng::scrambled(4);
        let w = Mat::from_fn(m, n, |_, _| rng.normal());
        let eig = linalg::sym_eigen(stats.covariance().as_ref()).unwrap();
        let metric = Metric::from_eigen(&eig, 0.0, DEFAULT_REL_FLOOR);
        let svd = WhitenedSvd::compute(&w, &metric).unwrap();
        let tail = svd.tail_energy();
        let (_, f) = fit_low_rank_sparse(&w, &metric, 2, 10, 6).unwrap();
        assert!(f <= tail[2] * (1.0 + 1e-9), "{f} vs {}", tail[2]);
        assert!(f < tail[2] * 0.95);
        let (approx, f_all) = fit_low_rank_sparse(&w, &metric, 2, m * n, 3).unwrap();
        assert!(f_all < 1e-9 * tail[0], "{f_all}");
        assert_eq!(approx.nnz(), m * n);
    }

    #[test]
    fn cholesky_regression_equals_the_eigen_path() {
        // W* = X·(C + λI)⁻¹ truncated in the metric C + λI, once through the eigendecomposition
        // (symmetric square root) and once through the Cholesky factor: same Ŵ for every rank.
        let n = 23;
        let x = data(400, n, 5);
        let mut mo = super::super::stats::Moments::new(n);
        mo.add(&x, 400);
        let cov = mo.covariance();
        let mut rng = Rng::scrambled(6);
        let target = Mat::from_fn(9, n, |_, _| rng.normal());
        let eig = linalg::sym_eigen(cov.as_ref()).unwrap();
        let shift = 1e-3 * (0..n).map(|i| cov[(i, i)]).sum::<f64>() / n as f64;
        let metric = Metric::from_eigen(&eig, shift, DEFAULT_REL_FLOOR);
        assert_eq!(metric.clamped, 0);
        let w_star = linalg::solve_right_sym(target.as_ref(), &eig, shift, DEFAULT_REL_FLOOR);
        let by_eig = WhitenedSvd::compute(&w_star, &metric).unwrap();
        let by_chol = WhitenedSvd::compute_cholesky(&target, &cov, shift, 6).unwrap().unwrap();
        assert_eq!(by_chol.max_rank(), 6);
        for r in 1..=6 {
            let (ue, ve) = by_eig.factors(r);
            let (uc, vc) = by_chol.factors(r);
            let (a, b) = (linalg::mul(ue.as_ref(), ve.as_ref()), linalg::mul(uc.as_ref(), vc.as_ref()));
            let scale = linalg::frob2(a.as_ref()).sqrt();
            let diff = linalg::frob2((&a - &b).as_ref()).sqrt();
            // Both are backward-stable factorisations of a matrix with condition ~1e4: 1e-8 relative.
            assert!(diff <= 1e-8 * scale, "rank {r}: {diff} vs {scale}");
            assert!((by_eig.sigma[r - 1] - by_chol.sigma[r - 1]).abs() <= 1e-9 * by_eig.sigma[0]);
        }
        // Not positive definite: None (the caller falls back to the clamped eigen path).
        let singular = Mat::from_fn(n, n, |i, j| if i == j && i > 0 { 1.0 } else { 0.0 });
        assert!(WhitenedSvd::compute_cholesky(&target, &singular, 0.0, 3).unwrap().is_none());
    }
}
