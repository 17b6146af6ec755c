//! Activation statistics: first and second moments of layer inputs, accumulated in f64.
//!
//! Each call adds one chunk of rows (a batch of images' tokens, at most a few thousand rows).
//! The chunk product `XᵀX` is computed in f32 by faer's GEMM and then added into the f64
//! accumulator: f32 rounding is confined to sums of one chunk, while the sum over the whole
//! calibration set (hundreds of thousands of rows) is carried in f64.

use std::borrow::Cow;

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef};

use super::linalg::{self, Matrix};

fn add_chunk_product(
    acc: &mut Matrix,
    scratch: &mut Mat<f32>,
    a: &[f32],
    b: &[f32],
    rows: usize,
    ca: usize,
    cb: usize,
) {
    let am = MatRef::from_row_major_slice(a, rows, ca);
    let bm = MatRef::from_row_major_slice(b, rows, cb);
    if scratch.nrows() != ca || scratch.ncols() != cb {
        *scratch = Mat::zeros(ca, cb);
    }
    matmul(scratch.as_mut(), Accum::Replace, am.transpose(), bm, 1.0f32, linalg::par());
    for j in 0..cb {
        for i in 0..ca {
            acc[(i, j)] += f64::from(scratch[(i, j)]);
        }
    }
}

/// `acc += XᵀX` on the lower triangle only (half the flops of a general product); the upper
/// triangle of `acc` is left untouched and read by symmetry.
fn add_chunk_gram(acc: &mut Matrix, scratch: &mut Mat<f32>, x: &[f32], rows: usize, cols: usize) {
    let xm = MatRef::from_row_major_slice(x, rows, cols);
    if scratch.nrows() != cols || scratch.ncols() != cols {
        *scratch = Mat::zeros(cols, cols);
    }
    triangular::matmul(
        scratch.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        xm.transpose(),
        BlockStructure::Rectangular,
        xm,
        BlockStructure::Rectangular,
        1.0f32,
        linalg::par(),
    );
    for j in 0..cols {
        for i in j..cols {
            acc[(i, j)] += f64::from(scratch[(i, j)]);
        }
    }
}

/// `√weight · x` (borrowed as is for weight 1).
fn scaled_rows(x: &[f32], weight: f64) -> Cow<'_, [f32]> {
    if weight == 1.0 {
        Cow::Borrowed(x)
    } else {
        let root = weight.sqrt() as f32;
        Cow::Owned(x.iter().map(|v| v * root).collect())
    }
}

fn add_sums(sum: &mut [f64], x: &[f32], rows: usize, cols: usize) {
    for r in 0..rows {
        for (s, v) in sum.iter_mut().zip(&x[r * cols..(r + 1) * cols]) {
            *s += f64::from(*v);
        }
    }
}

/// `sum += weight · Σ_rows x` (the rows summed in f64 first, then weighted).
fn add_weighted_sums(sum: &mut [f64], x: &[f32], rows: usize, cols: usize, weight: f64) {
    let mut sums = vec![0.0f64; cols];
    add_sums(&mut sums, x, rows, cols);
    for (s, v) in sum.iter_mut().zip(&sums) {
        *s += weight * v;
    }
}

/// Moments of one activation stream `X` (rows = tokens): `Σx`, `XᵀX`, row count.
#[derive(Debug, Clone)]
pub struct Moments {
    /// Number of rows accumulated.
    pub count: f64,
    /// `Σ x` over rows.
    pub sum: Vec<f64>,
    /// `XᵀX`, lower triangle (the upper one is not maintained; read through [`Moments::gram`]).
    gram_lower: Matrix,
    scratch: Mat<f32>,
}

impl Moments {
    /// Empty statistics for `cols`-wide rows.
    pub fn new(cols: usize) -> Moments {
        Moments { count: 0.0, sum: vec![0.0; cols], gram_lower: Mat::zeros(cols, cols), scratch: Mat::zeros(0, 0) }
    }

    /// Count and sums only (no Gram matrix: for streams whose second moments are known from
    /// elsewhere; [`Moments::covariance`] and [`Moments::gram`] are then zero).
    pub fn mean_only(cols: usize) -> Moments {
        Moments { count: 0.0, sum: vec![0.0; cols], gram_lower: Mat::zeros(0, 0), scratch: Mat::zeros(0, 0) }
    }

    /// Whether the Gram matrix is accumulated (a [`Moments::mean_only`] one holds none).
    fn with_gram(&self) -> bool {
        self.gram_lower.nrows() == self.cols()
    }

    /// `XᵀX` entry `(i, j)`.
    #[inline]
    fn gram_at(&self, i: usize, j: usize) -> f64 {
        if !self.with_gram() {
            0.0
        } else if i >= j {
            self.gram_lower[(i, j)]
        } else {
            self.gram_lower[(j, i)]
        }
    }

    /// `XᵀX` as a full symmetric matrix.
    pub fn gram(&self) -> Matrix {
        Mat::from_fn(self.cols(), self.cols(), |i, j| self.gram_at(i, j))
    }

    /// Width of the rows.
    pub fn cols(&self) -> usize {
        self.sum.len()
    }

    /// Adds `rows` rows (row-major `rows × cols`).
    pub fn add(&mut self, x: &[f32], rows: usize) {
        let c = self.cols();
        debug_assert_eq!(x.len(), rows * c);
        if rows == 0 {
            return;
        }
        self.count += rows as f64;
        add_sums(&mut self.sum, x, rows, c);
        if self.with_gram() {
            add_chunk_gram(&mut self.gram_lower, &mut self.scratch, x, rows, c);
        }
    }

    /// Adds `rows` rows with weight `weight` each (as if each row were added `weight` times;
    /// `weight > 0`, fractional allowed).
    pub fn add_weighted(&mut self, x: &[f32], rows: usize, weight: f64) {
        let c = self.cols();
        debug_assert_eq!(x.len(), rows * c);
        if weight == 1.0 {
            return self.add(x, rows);
        }
        if rows == 0 || weight <= 0.0 {
            return;
        }
        self.count += weight * rows as f64;
        add_weighted_sums(&mut self.sum, x, rows, c, weight);
        if self.with_gram() {
            add_chunk_gram(&mut self.gram_lower, &mut self.scratch, &scaled_rows(x, weight), rows, c);
        }
    }

    /// Mean row `μ`.
    pub fn mean(&self) -> Vec<f64> {
        let n = self.count.max(1.0);
        self.sum.iter().map(|s| s / n).collect()
    }

    /// Centred covariance per row, `C = XᵀX/N − μμᵀ` (the `1/N` normalisation keeps errors in
    /// "per token" units).
    pub fn covariance(&self) -> Matrix {
        let n = self.count.max(1.0);
        let mu = self.mean();
        let c = self.cols();
        Mat::from_fn(c, c, |i, j| self.gram_at(i, j) / n - mu[i] * mu[j])
    }

    /// Uncentred second moment per row, `XᵀX/N`.
    pub fn second_moment(&self) -> Matrix {
        let n = self.count.max(1.0);
        Mat::from_fn(self.cols(), self.cols(), |i, j| self.gram_at(i, j) / n)
    }
}

/// Joint moments of two aligned streams: the compressed model's layer input `X_c` and the
/// original model's `X_o` for the same tokens (layer-wise compensation).
#[derive(Debug, Clone)]
pub struct PairMoments {
    /// Moments of `X_c`.
    pub c: Moments,
    /// Moments of `X_o`.
    pub o: Moments,
    /// `X_cᵀ X_o`.
    pub cross: Matrix,
    scratch: Mat<f32>,
}

impl PairMoments {
    /// Empty statistics.
    pub fn new(cols: usize) -> PairMoments {
        PairMoments {
            c: Moments::new(cols),
            o: Moments::new(cols),
            cross: Mat::zeros(cols, cols),
            scratch: Mat::zeros(0, 0),
        }
    }

    /// Statistics whose target stream `X_o` keeps only its count and sums (its second moment is
    /// known from the dense pass, and skipping it saves a third of the products).
    pub fn without_target_gram(cols: usize) -> PairMoments {
        PairMoments {
            c: Moments::new(cols),
            o: Moments::mean_only(cols),
            cross: Mat::zeros(cols, cols),
            scratch: Mat::zeros(0, 0),
        }
    }

    /// Adds aligned rows of both streams.
    pub fn add(&mut self, xc: &[f32], xo: &[f32], rows: usize) {
        let c = self.c.cols();
        self.c.add(xc, rows);
        self.o.add(xo, rows);
        if rows > 0 {
            add_chunk_product(&mut self.cross, &mut self.scratch, xc, xo, rows, c, c);
        }
    }

    /// Adds aligned rows of both streams with weight `weight` each (see [`Moments::add_weighted`]).
    pub fn add_weighted(&mut self, xc: &[f32], xo: &[f32], rows: usize, weight: f64) {
        let c = self.c.cols();
        if weight == 1.0 {
            return self.add(xc, xo, rows);
        }
        if rows == 0 || weight <= 0.0 {
            return;
        }
        self.c.add_weighted(xc, rows, weight);
        self.o.add_weighted(xo, rows, weight);
        let (sc, so) = (scaled_rows(xc, weight), scaled_rows(xo, weight));
        add_chunk_product(&mut self.cross, &mut self.scratch, &sc, &so, rows, c, c);
    }

    /// Centred cross-covariance per row, `X_cᵀX_o/N − μ_c μ_oᵀ`.
    pub fn cross_covariance(&self) -> Matrix {
        let n = self.c.count.max(1.0);
        let (mc, mo) = (self.c.mean(), self.o.mean());
        let k = self.c.cols();
        Mat::from_fn(k, k, |i, j| self.cross[(i, j)] / n - mc[i] * mo[j])
    }
}

/// Moments of an explicit regression target `t` (one `dim`-wide row per token) jointly with the
/// layer inputs `x_c` of the same tokens: `Σt`, `Σ‖t‖²` and `X_cᵀT`. What a residual-stream
/// target needs (see `compensate::SplitLoss::towards_target`); the inputs' own moments are a
/// separate [`Moments`].
#[derive(Debug, Clone)]
pub struct TargetMoments {
    /// Number of rows accumulated (weighted).
    pub count: f64,
    /// `Σ t`.
    pub sum: Vec<f64>,
    /// `Σ ‖t‖²`.
    pub sum_sq: f64,
    /// `X_cᵀ T` (`n × d`).
    cross: Matrix,
    scratch: Mat<f32>,
}

impl TargetMoments {
    /// Empty statistics for `cols`-wide layer inputs and a `dim`-wide target.
    pub fn new(cols: usize, dim: usize) -> TargetMoments {
        TargetMoments {
            count: 0.0,
            sum: vec![0.0; dim],
            sum_sq: 0.0,
            cross: Mat::zeros(cols, dim),
            scratch: Mat::zeros(0, 0),
        }
    }

    /// Adds aligned rows: layer inputs `xc` (`rows × cols`) and targets `t` (`rows × dim`).
    pub fn add(&mut self, xc: &[f32], t: &[f32], rows: usize) {
        self.add_weighted(xc, t, rows, 1.0);
    }

    /// Adds aligned rows with weight `weight` each (see [`Moments::add_weighted`]).
    pub fn add_weighted(&mut self, xc: &[f32], t: &[f32], rows: usize, weight: f64) {
        let (cols, dim) = (self.cross.nrows(), self.sum.len());
        debug_assert_eq!((xc.len(), t.len()), (rows * cols, rows * dim));
        if rows == 0 || weight <= 0.0 {
            return;
        }
        self.count += weight * rows as f64;
        add_weighted_sums(&mut self.sum, t, rows, dim, weight);
        self.sum_sq += weight * t.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        // Rows of weight w enter the product as √w·x and √w·t.
        let (xc, t) = (scaled_rows(xc, weight), scaled_rows(t, weight));
        add_chunk_product(&mut self.cross, &mut self.scratch, &xc, &t, rows, cols, dim);
    }

    /// Mean target `μ_t`.
    pub fn mean(&self) -> Vec<f64> {
        let n = self.count.max(1.0);
        self.sum.iter().map(|s| s / n).collect()
    }

    /// `tr Cov(t) = E‖t‖² − ‖μ_t‖²` per row.
    pub fn trace_covariance(&self) -> f64 {
        let mu = self.mean();
        (self.sum_sq / self.count.max(1.0) - mu.iter().map(|m| m * m).sum::<f64>()).max(0.0)
    }

    /// `Cov(x_c, t) = X_cᵀT/N − μ_c μ_tᵀ` (`n × d`) for the inputs' mean `mean_c`.
    pub fn cross_covariance(&self, mean_c: &[f64]) -> Matrix {
        let n = self.count.max(1.0);
        let mu = self.mean();
        Mat::from_fn(self.cross.nrows(), self.cross.ncols(), |i, j| self.cross[(i, j)] / n - mean_c[i] * mu[j])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_rows_equal_repeated_rows() {
        let mut rng = crate::data::Rng::scrambled(3);
        let (rows, cols) = (12, 4);
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32 - 0.2).collect();
        let y: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32 + 0.1).collect();
        let (head, tail) = (&x[..3 * cols], &y[..3 * cols]);
        let mut weighted = PairMoments::new(cols);
        weighted.add(&x, &y, rows);
        weighted.add_weighted(head, tail, 3, 3.0);
        let mut repeated = PairMoments::new(cols);
        repeated.add(&x, &y, rows);
        for _ in 0..3 {
            repeated.add(head, tail, 3);
        }
        assert_eq!(weighted.c.count, repeated.c.count);
        let (a, b) = (weighted.cross_covariance(), repeated.cross_covariance());
        let (ca, cb) = (weighted.o.covariance(), repeated.o.covariance());
        for i in 0..cols {
            assert!((weighted.c.mean()[i] - repeated.c.mean()[i]).abs() < 1e-6);
            for j in 0..cols {
                assert!((a[(i, j)] - b[(i, j)]).abs() < 1e-5);
                assert!((ca[(i, j)] - cb[(i, j)]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn moments_match_naive_sums() {
        let mut rng = crate::data::Rng::scrambled(9);
        let (rows, cols) = (37, 5);
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32 + 0.3).collect();
        let mut m = Moments::new(cols);
        m.add(&x[..10 * cols], 10);
        m.add(&x[10 * cols..], rows - 10);
        let cov = m.covariance();
        let mu: Vec<f64> =
            (0..cols).map(|j| (0..rows).map(|r| f64::from(x[r * cols + j])).sum::<f64>() / rows as f64).collect();
        for i in 0..cols {
            for j in 0..cols {
                let naive: f64 = (0..rows)
                    .map(|r| (f64::from(x[r * cols + i]) - mu[i]) * (f64::from(x[r * cols + j]) - mu[j]))
                    .sum::<f64>()
                    / rows as f64;
                assert!((cov[(i, j)] - naive).abs() < 1e-5, "{i},{j}: {} vs {naive}", cov[(i, j)]);
            }
        }
    }

    #[test]
    fn lower_triangle_gram_matches_naive_product_on_odd_widths() {
        // Widths around faer's register tiles, chunks of uneven length.
        let mut rng = crate::data::Rng::scrambled(21);
        for (rows, cols) in [(50usize, 1usize), (61, 13), (203, 70)] {
            let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32 - 0.1).collect();
            let mut m = Moments::new(cols);
            let mut mean_only = Moments::mean_only(cols);
            for (lo, hi) in [(0, rows / 3), (rows / 3, rows)] {
                m.add(&x[lo * cols..hi * cols], hi - lo);
                mean_only.add(&x[lo * cols..hi * cols], hi - lo);
            }
            let g = m.gram();
            for i in 0..cols {
                for j in 0..cols {
                    let naive: f64 = (0..rows).map(|r| f64::from(x[r * cols + i]) * f64::from(x[r * cols + j])).sum();
                    // f32 products of one chunk (≤ 135 terms of size ~1): relative 1e-5 is generous.
                    assert!((g[(i, j)] - naive).abs() <= 1e-5 * (1.0 + naive.abs()), "{rows}x{cols} ({i},{j})");
                    assert_eq!(g[(i, j)], g[(j, i)]);
                }
            }
            assert_eq!(mean_only.mean(), m.mean());
            assert_eq!(mean_only.count, m.count);
            assert!(mean_only.gram().col_iter().all(|c| c.iter().all(|v| *v == 0.0)));
        }
    }

    #[test]
    fn target_moments_match_naive_sums_with_weights() {
        let mut rng = crate::data::Rng::scrambled(5);
        let (rows, cols, dim) = (29usize, 6usize, 3usize);
        let xc: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32 + 0.2).collect();
        let tg: Vec<f32> = (0..rows * dim).map(|_| rng.normal() as f32 * 0.5 + 0.3).collect();
        // Rows 0..5 count 3 times (once plus weight 2), the rest once.
        let mut m = TargetMoments::new(cols, dim);
        m.add(&xc, &tg, rows);
        m.add_weighted(&xc[..5 * cols], &tg[..5 * dim], 5, 2.0);
        let w = |r: usize| if r < 5 { 3.0 } else { 1.0 };
        let total: f64 = (0..rows).map(w).sum();
        let mean =
            |x: &[f32], c: usize, j: usize| (0..rows).map(|r| w(r) * f64::from(x[r * c + j])).sum::<f64>() / total;
        let mu_c: Vec<f64> = (0..cols).map(|j| mean(&xc, cols, j)).collect();
        let mu_t: Vec<f64> = (0..dim).map(|j| mean(&tg, dim, j)).collect();
        assert!((m.count - total).abs() < 1e-12);
        for (got, want) in m.mean().iter().zip(&mu_t) {
            assert!((got - want).abs() < 1e-6);
        }
        let naive_tr: f64 = (0..rows)
            .map(|r| w(r) * (0..dim).map(|j| (f64::from(tg[r * dim + j]) - mu_t[j]).powi(2)).sum::<f64>())
            .sum::<f64>()
            / total;
        assert!((m.trace_covariance() - naive_tr).abs() < 1e-6, "{} vs {naive_tr}", m.trace_covariance());
        let got = m.cross_covariance(&mu_c);
        for i in 0..cols {
            for j in 0..dim {
                let naive: f64 = (0..rows)
                    .map(|r| w(r) * (f64::from(xc[r * cols + i]) - mu_c[i]) * (f64::from(tg[r * dim + j]) - mu_t[j]))
                    .sum::<f64>()
                    / total;
                assert!((got[(i, j)] - naive).abs() < 1e-5, "({i},{j}): {} vs {naive}", got[(i, j)]);
            }
        }
    }
}
