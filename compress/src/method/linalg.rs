//! Dense linear algebra in f64 on top of faer: symmetric eigendecomposition, thin SVD, symmetric
//! square roots of PSD matrices with eigenvalue clamping, ridge solves, and conversions from the
//! runtime's row-major f32 buffers.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};

use super::MethodError;

/// Dense f64 matrix (column-major, faer).
pub type Matrix = Mat<f64>;

/// Parallelism used for faer calls (faer's global setting: rayon with the configured threads).
pub fn par() -> Par {
    faer::get_global_parallelism()
}

/// `A·B` into a new matrix.
pub fn mul(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Matrix {
    let mut c = Mat::zeros(a.nrows(), b.ncols());
    matmul(c.as_mut(), Accum::Replace, a, b, 1.0, par());
    c
}

/// Row-major f32 `rows × cols` slice to an f64 matrix.
pub fn from_row_major(data: &[f32], rows: usize, cols: usize) -> Matrix {
    Mat::from_fn(rows, cols, |i, j| f64::from(data[i * cols + j]))
}

/// An f64 matrix to a row-major f32 vector.
pub fn to_row_major(m: MatRef<'_, f64>) -> Vec<f32> {
    let (r, c) = (m.nrows(), m.ncols());
    let mut out = vec![0.0f32; r * c];
    for j in 0..c {
        for i in 0..r {
            out[i * c + j] = m[(i, j)] as f32;
        }
    }
    out
}

/// Squared Frobenius norm.
pub fn frob2(m: MatRef<'_, f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            s += m[(i, j)] * m[(i, j)];
        }
    }
    s
}

/// `tr(A·C·Aᵀ)` for `A: m × n`, symmetric `C: n × n`: the energy of the rows of `A` in the metric `C`.
pub fn quad_trace(a: MatRef<'_, f64>, c: MatRef<'_, f64>) -> f64 {
    let ac = mul(a, c);
    let mut s = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += ac[(i, j)] * a[(i, j)];
        }
    }
    s
}

/// `tr(A·Bᵀ)` = Σ A∘B for equally shaped matrices.
pub fn inner(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += a[(i, j)] * b[(i, j)];
        }
    }
    s
}

/// Eigendecomposition of a symmetric matrix, eigenvalues in **descending** order.
#[derive(Debug, Clone)]
pub struct SymEigen {
    /// Eigenvalues, largest first.
    pub values: Vec<f64>,
    /// Orthonormal eigenvectors as columns, in the order of `values`.
    pub vectors: Matrix,
}

/// Symmetric eigendecomposition (the input is symmetrised first, `(A + Aᵀ)/2`).
pub fn sym_eigen(a: MatRef<'_, f64>) -> Result<SymEigen, MethodError> {
    let n = a.nrows();
    if a.ncols() != n {
        return Err(MethodError::Shape(format!("eigendecomposition of a non-square {}×{} matrix", n, a.ncols())));
    }
    let sym = Mat::from_fn(n, n, |i, j| 0.5 * (a[(i, j)] + a[(j, i)]));
    if sym.col_iter().any(|c| c.iter().any(|x| !x.is_finite())) {
        return Err(MethodError::NonFinite("matrix passed to the eigendecomposition".into()));
    }
    let evd = sym
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| MethodError::Numerical(format!("symmetric eigendecomposition failed: {e:?}")))?;
    let s = evd.S().column_vector();
    let u = evd.U();
    // faer returns ascending order; reverse.
    let values: Vec<f64> = (0..n).rev().map(|i| s[i]).collect();
    let vectors = Mat::from_fn(n, n, |i, j| u[(i, n - 1 - j)]);
    Ok(SymEigen { values, vectors })
}

/// A symmetric square root `S = E·diag(√λ')·Eᵀ` and its inverse, with `λ' = max(λ + shift, floor)`.
#[derive(Debug, Clone)]
pub struct SqrtPair {
    /// `S`, symmetric, `S·S ≈ A + shift·I`.
    pub sqrt: Matrix,
    /// `S⁻¹`.
    pub inv_sqrt: Matrix,
    /// How many eigenvalues were raised to the floor.
    pub clamped: usize,
    /// The floor used.
    pub floor: f64,
}

impl SymEigen {
    /// Largest eigenvalue (0 for an empty matrix).
    pub fn max_value(&self) -> f64 {
        self.values.first().copied().unwrap_or(0.0)
    }

    /// The clamped spectrum `max(λ + shift, floor)` with `floor = rel_floor · max(λ_max + shift, tiny)`.
    pub fn clamped_values(&self, shift: f64, rel_floor: f64) -> (Vec<f64>, f64, usize) {
        let top = (self.max_value() + shift).max(f64::MIN_POSITIVE);
        let floor = (rel_floor * top).max(f64::MIN_POSITIVE * 1e10);
        let mut clamped = 0;
        let vals = self
            .values
            .iter()
            .map(|&l| {
                let v = l + shift;
                if v < floor {
                    clamped += 1;
                    floor
                } else {
                    v
                }
            })
            .collect();
        (vals, floor, clamped)
    }

    /// `E·diag(f(λ'))·Eᵀ` for the clamped spectrum.
    pub fn function(&self, vals: &[f64], f: impl Fn(f64) -> f64) -> Matrix {
        let n = self.vectors.nrows();
        let e = self.vectors.as_ref();
        let scaled = Mat::from_fn(n, n, |i, j| e[(i, j)] * f(vals[j]));
        let mut out = Mat::zeros(n, n);
        matmul(out.as_mut(), Accum::Replace, scaled.as_ref(), e.transpose(), 1.0, par());
        // Exact symmetry.
        for j in 0..n {
            for i in 0..j {
                let v = 0.5 * (out[(i, j)] + out[(j, i)]);
                out[(i, j)] = v;
                out[(j, i)] = v;
            }
        }
        out
    }

    /// Symmetric square root and inverse square root of `A + shift·I`, eigenvalues clamped to
    /// `rel_floor · λ_max` (no Cholesky: rank-deficient and slightly indefinite inputs are fine).
    pub fn sqrt_pair(&self, shift: f64, rel_floor: f64) -> SqrtPair {
        let (vals, floor, clamped) = self.clamped_values(shift, rel_floor);
        SqrtPair {
            sqrt: self.function(&vals, f64::sqrt),
            inv_sqrt: self.function(&vals, |v| 1.0 / v.sqrt()),
            clamped,
            floor,
        }
    }
}

/// Thin SVD `A = U·diag(s)·Vᵀ`, singular values descending.
#[derive(Debug, Clone)]
pub struct ThinSvd {
    /// `m × k` left singular vectors.
    pub u: Matrix,
    /// `k` singular values, descending.
    pub s: Vec<f64>,
    /// `n × k` right singular vectors.
    pub v: Matrix,
}

/// Thin SVD of `a`.
pub fn thin_svd(a: MatRef<'_, f64>) -> Result<ThinSvd, MethodError> {
    if a.col_iter().any(|c| c.iter().any(|x| !x.is_finite())) {
        return Err(MethodError::NonFinite("matrix passed to the SVD".into()));
    }
    let svd = a.thin_svd().map_err(|e| MethodError::Numerical(format!("SVD failed: {e:?}")))?;
    let s = svd.S().column_vector();
    Ok(ThinSvd { u: svd.U().to_owned(), s: (0..s.nrows()).map(|i| s[i]).collect(), v: svd.V().to_owned() })
}

/// The `k` leading singular triplets of `a`, from the eigendecomposition of the smaller Gram
/// matrix (`a·aᵀ` or `aᵀ·a`, `min(m, n)` wide) instead of a full SVD: several times faster for
/// wide or tall matrices. Squaring the matrix costs accuracy only in singular values near
/// `√ε·σ₁`; when the `k`-th singular value is below `1e-6·σ₁` the full SVD is used instead, so the
/// returned triplets are accurate to about `ε·σ₁/σ_k ≤ 1e-10` relative.
pub fn leading_svd(a: MatRef<'_, f64>, k: usize) -> Result<ThinSvd, MethodError> {
    let (m, n) = (a.nrows(), a.ncols());
    let k = k.min(m.min(n));
    if a.col_iter().any(|c| c.iter().any(|x| !x.is_finite())) {
        return Err(MethodError::NonFinite("matrix passed to the SVD".into()));
    }
    let full = |a: MatRef<'_, f64>| -> Result<ThinSvd, MethodError> {
        let svd = thin_svd(a)?;
        Ok(ThinSvd { u: svd.u.subcols(0, k).to_owned(), s: svd.s[..k].to_vec(), v: svd.v.subcols(0, k).to_owned() })
    };
    if k == 0 {
        return full(a);
    }
    let wide = m <= n;
    let gram = if wide { mul(a, a.transpose()) } else { mul(a.transpose(), a) };
    let eig = sym_eigen(gram.as_ref())?;
    let s: Vec<f64> = eig.values[..k].iter().map(|v| v.max(0.0).sqrt()).collect();
    if s[k - 1] <= 1e-6 * s[0] {
        return full(a);
    }
    // The other side: u = a·v/σ (or v = aᵀ·u/σ).
    let side = eig.vectors.subcols(0, k);
    let other = if wide { mul(a.transpose(), side) } else { mul(a, side) };
    let other = Mat::from_fn(other.nrows(), k, |i, j| other[(i, j)] / s[j]);
    let side = side.to_owned();
    Ok(if wide { ThinSvd { u: side, s, v: other } } else { ThinSvd { u: other, s, v: side } })
}

/// Solves `X·A = B` for symmetric positive definite `A` (via its eigendecomposition with a
/// clamped spectrum: `X = B·A⁺`).
pub fn solve_right_sym(b: MatRef<'_, f64>, eig: &SymEigen, shift: f64, rel_floor: f64) -> Matrix {
    let (vals, _, _) = eig.clamped_values(shift, rel_floor);
    let e = eig.vectors.as_ref();
    let be = mul(b, e);
    let scaled = Mat::from_fn(be.nrows(), be.ncols(), |i, j| be[(i, j)] / vals[j]);
    mul(scaled.as_ref(), e.transpose())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_mat(r: usize, c: usize, seed: u64) -> Matrix {
        let mut rng = crate::data::Rng::scrambled(seed);
        Mat::from_fn(r, c, |_, _| rng.normal())
    }

    #[test]
    fn sqrt_of_rank_deficient_psd() {
        // A = B·Bᵀ with B 6×3: rank 3 in dimension 6.
        let b = rand_mat(6, 3, 1);
        let a = mul(b.as_ref(), b.transpose());
        let eig = sym_eigen(a.as_ref()).unwrap();
        assert!(eig.values[3..].iter().all(|v| v.abs() < 1e-10));
        let pair = eig.sqrt_pair(0.0, 1e-12);
        assert_eq!(pair.clamped, 3);
        let sq = mul(pair.sqrt.as_ref(), pair.sqrt.as_ref());
        let err = frob2((&sq - &a).as_ref()).sqrt() / frob2(a.as_ref()).sqrt();
        assert!(err < 1e-8, "S·S differs from A by {err}");
        // Symmetric.
        assert!(frob2((&pair.sqrt - pair.sqrt.transpose()).as_ref()) < 1e-20);
        // S⁻¹·S is the identity on the range of A.
        let proj = mul(pair.inv_sqrt.as_ref(), pair.sqrt.as_ref());
        let on_range = mul(proj.as_ref(), b.as_ref());
        assert!(frob2((&on_range - &b).as_ref()).sqrt() < 1e-6);
    }

    #[test]
    fn eigen_descending_and_reconstructs() {
        let b = rand_mat(5, 5, 2);
        let a = mul(b.as_ref(), b.transpose());
        let eig = sym_eigen(a.as_ref()).unwrap();
        assert!(eig.values.windows(2).all(|w| w[0] >= w[1]));
        let rec = eig.function(&eig.values, |v| v);
        assert!(frob2((&rec - &a).as_ref()).sqrt() < 1e-9);
    }

    #[test]
    fn svd_reconstructs() {
        let a = rand_mat(7, 4, 3);
        let svd = thin_svd(a.as_ref()).unwrap();
        let us = Mat::from_fn(7, 4, |i, j| svd.u[(i, j)] * svd.s[j]);
        let rec = mul(us.as_ref(), svd.v.transpose());
        assert!(frob2((&rec - &a).as_ref()).sqrt() < 1e-10);
        assert!(svd.s.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn ridge_solve_matches_definition() {
        let b = rand_mat(4, 6, 4);
        let g = rand_mat(6, 6, 5);
        let a = mul(g.as_ref(), g.transpose());
        let eig = sym_eigen(a.as_ref()).unwrap();
        let x = solve_right_sym(b.as_ref(), &eig, 0.5, 0.0);
        let shifted = Mat::from_fn(6, 6, |i, j| a[(i, j)] + if i == j { 0.5 } else { 0.0 });
        let back = mul(x.as_ref(), shifted.as_ref());
        assert!(frob2((&back - &b).as_ref()).sqrt() < 1e-9);
    }

    #[test]
    fn leading_svd_matches_the_full_svd() {
        // Wide and tall matrices with a decaying spectrum (σ_k = 0.8^k): the leading-k product
        // U_k Σ_k V_kᵀ must match the full SVD's to 1e-9 relative, singular values likewise.
        for (m, n, k) in [(7usize, 30usize, 5usize), (40, 9, 6), (25, 25, 10)] {
            let q1 = thin_svd(rand_mat(m, m.min(n), 1).as_ref()).unwrap().u;
            let q2 = thin_svd(rand_mat(n, m.min(n), 2).as_ref()).unwrap().u;
            let sig: Vec<f64> = (0..m.min(n)).map(|i| 0.8f64.powi(i as i32)).collect();
            let a = Mat::from_fn(m, n, |i, j| (0..m.min(n)).map(|t| q1[(i, t)] * sig[t] * q2[(j, t)]).sum::<f64>());
            let full = thin_svd(a.as_ref()).unwrap();
            let lead = leading_svd(a.as_ref(), k).unwrap();
            assert_eq!((lead.u.ncols(), lead.s.len(), lead.v.ncols()), (k, k, k));
            let product = |u: &Matrix, s: &[f64], v: &Matrix| {
                Mat::from_fn(m, n, |i, j| (0..k).map(|t| u[(i, t)] * s[t] * v[(j, t)]).sum::<f64>())
            };
            let (pf, pl) = (product(&full.u, &full.s, &full.v), product(&lead.u, &lead.s, &lead.v));
            assert!(frob2((&pf - &pl).as_ref()).sqrt() <= 1e-9 * frob2(pf.as_ref()).sqrt(), "{m}x{n} k={k}");
            for t in 0..k {
                assert!((full.s[t] - lead.s[t]).abs() <= 1e-10, "{m}x{n}: σ_{t}");
            }
        }
        // A rank-deficient request falls back to the full SVD (σ_k = 0).
        let low = mul(rand_mat(12, 2, 3).as_ref(), rand_mat(2, 15, 4).as_ref());
        let lead = leading_svd(low.as_ref(), 4).unwrap();
        assert!(lead.s[2] < 1e-12 && lead.s[0] > 0.1);
    }
}
