//! Portable kernels: the reference semantics of every kernel and the path used on targets
//! without SIMD support (Cortex-M).

use super::backend::Kernels;
use super::types::QuantI8;
use super::{BLayout, Csr, Epilogue, Gemm, MatB, Problem, Rows, RowsMut, WeightSlice};

/// The portable kernel table: every entry is the default of [`Kernels`], i.e. a kernel of this
/// module.
pub(crate) struct Portable;

impl Kernels for Portable {}

/// `e^x` for f32, Cephes-style range reduction and a degree-6 polynomial (≤ 2 ulp on the
/// range used here). Inputs are clamped to [-87.33, 88.37]; below that the result is the
/// smallest normal number rather than a denormal or zero.
#[inline]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.376_26);
    let n = libm::floorf(x * core::f32::consts::LOG2_E + 0.5);
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    y * f32::from_bits(bits)
}

/// Odd numerator of the rational `erf` ([`erf`]): `x · Σ ERF_P[i] x²ⁱ`.
pub const ERF_P: [f32; 7] =
    [-1.609_603_3e-2, -2.954_6e-3, -7.349_906_3e-4, -5.692_506_4e-5, -2.101_024_1e-6, 2.770_681_4e-8, -2.726_142_3e-10];
/// Even denominator of the rational `erf`: `Σ ERF_Q[i] x²ⁱ`.
pub const ERF_Q: [f32; 5] = [-1.426_473_9e-2, -7.373_329e-3, -1.682_827e-3, -2.133_740_6e-4, -1.456_607_2e-5];

/// `erf(x)`: the minimax rational form `x·P(x²) / Q(x²)` (degrees 13 / 8, the coefficients of
/// Eigen's and XLA's f32 `erf`) on `(-4, 4)`, and ±1 beyond (where f32 `erf` is ±1). No `exp`,
/// one division; within 5e-7 absolute and relative of `erf` over the whole f32 range (tested),
/// so exact GELU `0.5·x·(1 + erf(x/√2))` is within `1e-6·(1 + |x|)`. The SIMD backends evaluate
/// the same polynomial with FMAs.
#[inline]
pub fn erf(x: f32) -> f32 {
    if x.abs() >= 4.0 {
        return if x < 0.0 { -1.0 } else { 1.0 }; // the polynomial gives 1 - 1 ulp there
    }
    let x2 = x * x;
    let mut p = ERF_P[6];
    for &c in ERF_P[..6].iter().rev() {
        p = p * x2 + c;
    }
    let mut q = ERF_Q[4];
    for &c in ERF_Q[..4].iter().rev() {
        q = q * x2 + c;
    }
    x * p / q
}

/// Exact GELU of one value.
#[inline]
pub fn gelu_one(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * core::f32::consts::FRAC_1_SQRT_2))
}

#[inline]
fn finish(v: f32, j: usize, ep: &Epilogue<'_>, c: &mut f32) {
    let mut v = v;
    if let Some(b) = ep.bias {
        v += b[j];
    }
    if ep.gelu {
        v = gelu_one(v);
    }
    if ep.accumulate {
        match ep.scale {
            Some(s) => *c += s[j] * v,
            None => *c += v,
        }
    } else {
        *c = v;
    }
}

/// Conversion of a weight element to f32.
trait Weight: Copy {
    fn f32(self) -> f32;
}
impl Weight for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}
impl Weight for half::f16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}
impl Weight for i8 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from(self)
    }
}
impl Weight for half::bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

/// Register tile of the scalar GEMM: 4 × 4 accumulators (16 of the 32 single-precision
/// registers of a Cortex-M4F/M7, leaving room for 4 + 4 operands).
const T: usize = 4;

/// Scalar GEMM (see [`super::gemm`] for the contract).
///
/// Register-blocked (4 × 4 output tiles, every element summed in order `p = 0..k` with one
/// multiply-add chain), no packing, no scratch memory.
pub fn gemm(g: Gemm<'_, '_>) {
    let mut g = g;
    let p = Problem::new(&mut g);
    // SAFETY: `p` was built from `g`, whose exclusive borrow of C lasts for this call.
    unsafe { gemm_problem(&p) }
}

/// Scalar GEMM of a validated problem.
///
/// # Safety
/// The invariants of [`Problem`] hold for `p`.
pub(crate) unsafe fn gemm_problem(p: &Problem<'_>) {
    match p.b.data {
        WeightSlice::F32(w) => gemm_typed(p, w, None),
        WeightSlice::F16(w) => gemm_typed(p, w, None),
        WeightSlice::BF16(w) => gemm_typed(p, w, None),
        WeightSlice::I8(q) => gemm_typed(p, q.values, Some(q)),
    }
}

/// `quant`: the scales of int8 weights `w`, applied to each finished dot product (output
/// column `j` of the problem is channel `p.j0 + j`).
fn gemm_typed<W: Weight>(p: &Problem<'_>, w: &[W], quant: Option<QuantI8<'_>>) {
    let (m, n, k) = (p.m, p.n, p.k);
    let ep = Epilogue { bias: p.bias, gelu: p.gelu, accumulate: p.accumulate, scale: p.scale };
    let mut i0 = 0;
    while i0 < m {
        let r = T.min(m - i0);
        let mut j0 = 0;
        while j0 < n {
            let c = T.min(n - j0);
            let acc = if k == 0 {
                [[0.0; T]; T]
            } else if r == T && c == T {
                tile_full(p, w, i0, j0)
            } else {
                tile_edge(p, w, i0, j0, r, c)
            };
            for (i, acc_row) in acc.iter().enumerate().take(r) {
                // SAFETY: row `i0 + i < m`, columns `j0..j0 + c ≤ n`: inside the problem's output
                // rectangle, which the caller gives us exclusively; no other reference to it
                // exists while this one is alive.
                let crow = unsafe { core::slice::from_raw_parts_mut(p.c.add((i0 + i) * p.ldc + j0), c) };
                for (jj, cv) in crow.iter_mut().enumerate() {
                    let v = match quant {
                        Some(q) => acc_row[jj] * q.scale(p.j0 + j0 + jj),
                        None => acc_row[jj],
                    };
                    finish(v, j0 + jj, &ep, cv);
                }
            }
            j0 += c;
        }
        i0 += r;
    }
}

/// A full 4 × 4 tile at rows `i0..`, columns `j0..` of the problem.
#[inline(always)]
fn tile_full<W: Weight>(p: &Problem<'_>, w: &[W], i0: usize, j0: usize) -> [[f32; T]; T] {
    let k = p.k;
    let a: [&[f32]; T] = core::array::from_fn(|i| &p.a[(i0 + i) * p.lda..(i0 + i) * p.lda + k]);
    let mut acc = [[0.0f32; T]; T];
    match p.b.layout {
        BLayout::NK => {
            let ld = p.b.ld;
            let b: [&[W]; T] = core::array::from_fn(|j| &w[(p.j0 + j0 + j) * ld..(p.j0 + j0 + j) * ld + k]);
            for q in 0..k {
                let av = [a[0][q], a[1][q], a[2][q], a[3][q]];
                let bv = [b[0][q].f32(), b[1][q].f32(), b[2][q].f32(), b[3][q].f32()];
                for i in 0..T {
                    for j in 0..T {
                        acc[i][j] += av[i] * bv[j];
                    }
                }
            }
        }
        BLayout::KN => {
            let ld = p.b.ld;
            let col = p.j0 + j0;
            for q in 0..k {
                let av = [a[0][q], a[1][q], a[2][q], a[3][q]];
                let row = &w[q * ld + col..q * ld + col + T];
                let bv = [row[0].f32(), row[1].f32(), row[2].f32(), row[3].f32()];
                for i in 0..T {
                    for j in 0..T {
                        acc[i][j] += av[i] * bv[j];
                    }
                }
            }
        }
    }
    acc
}

/// An `r × c` edge tile (`r, c ≤ 4`), with the same per-element operation sequence.
fn tile_edge<W: Weight>(p: &Problem<'_>, w: &[W], i0: usize, j0: usize, r: usize, c: usize) -> [[f32; T]; T] {
    let mut acc = [[0.0f32; T]; T];
    for q in 0..p.k {
        let mut bv = [0.0f32; T];
        for (j, b) in bv.iter_mut().enumerate().take(c) {
            *b = p.b.data_at(w, q, p.j0 + j0 + j).f32();
        }
        for (i, acc_row) in acc.iter_mut().enumerate().take(r) {
            let av = p.a[(i0 + i) * p.lda + q];
            for (a, b) in acc_row.iter_mut().zip(&bv).take(c) {
                *a += av * b;
            }
        }
    }
    acc
}

impl MatB<'_> {
    /// Element `(p, j)` of the typed storage `w` (the same slice as `self.data`).
    #[inline(always)]
    fn data_at<W: Copy>(&self, w: &[W], p: usize, j: usize) -> W {
        match self.layout {
            BLayout::NK => w[j * self.ld + p],
            BLayout::KN => w[p * self.ld + j],
        }
    }
}

/// Scalar sparse add (see [`super::sparse_add`]).
pub fn sparse_add(s: Csr<'_>, x: Rows<'_>, y: RowsMut<'_>) {
    let (row_ptr, col_idx, values) = (s.row_ptr, s.col_idx, s.values);
    let (tokens, x, ldx, y, ldy) = (x.rows, x.data, x.ld, y.data, y.ld);
    let rows = row_ptr.len().saturating_sub(1);
    for t in 0..tokens {
        let xr = &x[t * ldx..];
        let yr = &mut y[t * ldy..t * ldy + rows];
        for (j, yv) in yr.iter_mut().enumerate() {
            let (s, e) = (row_ptr[j] as usize, row_ptr[j + 1] as usize);
            let mut acc = 0.0f32;
            for q in s..e {
                acc += values.get(q) * xr[col_idx.get(q)];
            }
            // Int8 values: the row's scale applies to the whole dot product.
            if let WeightSlice::I8(qv) = values {
                acc *= qv.scale(j);
            }
            *yv += acc;
        }
    }
}

/// Scalar LayerNorm (see [`super::layer_norm`]).
pub fn layer_norm(x: Rows<'_>, gamma: &[f32], beta: &[f32], eps: f32, out: RowsMut<'_>) {
    let (rows, dim) = (x.rows, x.cols);
    let mut out = out;
    for r in 0..rows {
        let xr = x.row(r);
        let mean = xr.iter().sum::<f32>() / dim as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let inv = 1.0 / libm::sqrtf(var + eps);
        let or = out.row_mut(r);
        for i in 0..dim {
            or[i] = (xr[i] - mean) * inv * gamma[i] + beta[i];
        }
    }
}

/// Scalar softmax (see [`super::softmax_rows`]).
pub fn softmax_rows(rows: usize, cols: usize, x: &mut [f32], ld: usize, scale: f32) {
    for r in 0..rows {
        let row = &mut x[r * ld..r * ld + cols];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = exp((*v - max) * scale);
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Scalar GELU (see [`super::gelu`]).
pub fn gelu(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu_one(*v));
}

/// Scalar scaled add (see [`super::add_scaled`]).
pub fn add_scaled(y: &mut [f32], x: &[f32], scale: Option<&[f32]>) {
    match scale {
        Some(s) => {
            let d = s.len();
            for (i, (yv, xv)) in y.iter_mut().zip(x).enumerate() {
                *yv += s[i % d] * xv;
            }
        }
        None => y.iter_mut().zip(x).for_each(|(yv, xv)| *yv += xv),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(((got - want) / want).abs() < 3e-7, "exp({x}) = {got}, want {want}");
            x += 0.0137;
        }
    }

    #[test]
    fn erf_is_accurate() {
        // Reference values of erf from the defining series (converges fast for |x| < 4).
        fn erf_ref(x: f64) -> f64 {
            let mut sum = 0.0f64;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
                if n > 200.0 {
                    break;
                }
            }
            sum * 2.0 / core::f64::consts::PI.sqrt()
        }
        let mut x = -3.5f32;
        while x < 3.5 {
            // The rational form is accurate to a few ulp, absolute and relative (no cancellation
            // near 0).
            let want = erf_ref(x as f64);
            let err = (erf(x) as f64 - want).abs();
            assert!(err < 6e-7 && err <= 6e-7 * want.abs().max(1e-30), "erf({x}) error {err}");
            let g_ref = 0.5 * x as f64 * (1.0 + erf_ref(x as f64 / core::f64::consts::SQRT_2));
            let g_err = (gelu_one(x) as f64 - g_ref).abs();
            assert!(g_err < 4e-7 * (1.0 + (x as f64).abs()), "gelu({x}) error {g_err}");
            x += 0.01;
        }
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }
}
