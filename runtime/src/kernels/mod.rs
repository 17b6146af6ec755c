//! Numeric kernels: GEMM with f32/f16/bf16/int8 weights, sparse CSR add, LayerNorm, softmax, GELU.
//!
//! One dispatch point (the kernel table of a [`Backend`], see `backend.rs`) selects per-ISA
//! implementations: `x86` (AVX2 + FMA + F16C, detected at run time and cached), `avx512` (an
//! opt-in AVX-512F GEMM over the AVX2 kernels, `FACTORVIT_AVX512=1`, bit-identical to AVX2),
//! `aarch64` (NEON) and `scalar` (portable, always available, used on `no_std` targets). Every SIMD kernel is tested against the scalar one and against a
//! naive reference.
//!
//! Conventions: matrices are row-major with an explicit leading dimension (row stride, in
//! elements). The activation operand `A` is always f32. The `B` operand is either a PyTorch
//! `Linear` weight stored `[n, k]` ([`BLayout::NK`], so `C = A·Bᵀ`) or a plain `[k, n]` matrix
//! ([`BLayout::KN`]); its elements may be f32, f16 or bf16 and are converted to f32 inside the
//! kernel (never into a full-size f32 copy). Accumulation is in f32.
//!
//! Implementation: the SIMD backends share one blocked GEMM driver (GotoBLAS loop nest: B
//! converted and packed one `256 × 16` panel at a time into the per-thread [`Scratch`], A read
//! in place, 6 × 16 register tiles, bias/GELU/scaled accumulation fused after the last k block;
//! see `driver.rs`); the ISA modules provide the micro-kernels, the packing and the row
//! kernels, and the code that is the same algorithm on both ISAs (tile epilogue, row
//! reductions, LayerNorm, GELU, scaled add) is written once over a few vector primitives in
//! `simd.rs`.
//!
//! Layout: `mod.rs` the facade (the functions below, which validate and forward to the table);
//! `types.rs` the operands; `backend.rs` detection and the table; `problem.rs` the validated GEMM
//! and [`Scratch`]; `driver.rs` the blocked GEMM loop; `scalar.rs` the portable kernels (the
//! table's defaults); `simd.rs` the shared SIMD code; `x86.rs` / `aarch64.rs` the ISA kernels.
//!
//! No kernel allocates: all buffers live in [`Scratch`] (made once per thread) or on the stack.
//! [`gemm_parallel`] splits disjoint output blocks between threads and never splits `k`, and
//! every output element goes through the same operation sequence wherever its tile lies, so
//! results are bit-identical for any thread count.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(all(target_arch = "x86_64", factorvit_avx512))]
mod avx512;
mod backend;
mod driver;
#[cfg(feature = "std")]
pub mod peak;
mod problem;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod quant;
pub mod scalar;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod simd;
mod types;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use backend::Backend;
pub use problem::Scratch;
pub use types::{BLayout, Csr, Epilogue, Gemm, MatB, QuantI8, Rows, RowsMut, SparseIndices, WeightSlice};

pub(crate) use problem::Problem;

use crate::parallel::{split_range, Exec};

/// Runs a validated problem on one thread.
///
/// # Safety
/// The invariants of [`Problem`] hold for `p` (in particular exclusive access to its output).
unsafe fn run_problem(backend: Backend, scratch: &mut Scratch, p: &Problem<'_>) {
    // SAFETY: forwarded contract of this function.
    unsafe { backend.kernels().gemm(scratch, p) }
}

/// Runs one GEMM on the calling thread.
///
/// `scratch` should have been made for `backend` (a scratch too small for the SIMD driver, or
/// an unavailable backend, makes the call use the scalar kernel). Performs no heap allocation.
///
/// # Panics
/// If an operand is smaller than its declared shape and stride (a caller bug, not bad input:
/// the session validates shapes when it is built).
pub fn gemm(backend: Backend, scratch: &mut Scratch, g: Gemm<'_, '_>) {
    let mut g = g;
    let p = Problem::new(&mut g);
    // SAFETY: `p` was built from `g`, whose exclusive borrow of C lives until the end of this
    // function, so nothing else accesses the output.
    unsafe { run_problem(backend, scratch, &p) }
}

/// Runs one GEMM split across the executor's threads (by disjoint output ranges, so the result
/// is bit-identical to [`gemm`]). `scratch` holds one entry per thread, all made for `backend`
/// (the split uses at most `scratch.len()` threads).
///
/// Wide outputs are split by columns (each thread packs only its own part of `B`), narrow ones
/// by rows; `k` is never split. Every output element is computed by the same sequence of
/// operations whatever the thread count.
///
/// # Panics
/// As [`gemm`], and if `scratch` is empty.
pub fn gemm_parallel(backend: Backend, exec: &Exec, scratch: &mut [Scratch], g: Gemm<'_, '_>) {
    assert!(!scratch.is_empty(), "gemm_parallel needs one scratch per thread");
    let mut g = g;
    let p = Problem::new(&mut g);
    let threads = exec.threads().min(scratch.len());
    let (m, n) = (p.m, p.n);
    // Column split when each thread gets at least 64 columns (4 micro-panels), else rows when
    // each gets at least two 6-row tiles.
    let by_cols = n >= 64 * threads;
    let parts = if by_cols { threads } else { threads.min(m / 12).max(1) };
    if parts <= 1 || m == 0 || n == 0 {
        // SAFETY: `p` owns the output of `g` for the rest of this function.
        unsafe { run_problem(backend, &mut scratch[0], &p) };
        return;
    }
    let p = &p;
    exec.for_each_mut(&mut scratch[..parts], |t, s| {
        // Column ranges are aligned to the 16-wide micro-panels and row ranges to the 6-row
        // tiles, so the split changes only which thread computes a tile, never how.
        // SAFETY: `split_range` gives the parts disjoint ranges; each part uses only its own
        // sub-problem, and `p` itself is not used to touch C until `for_each_mut` returns.
        let sub = unsafe {
            if by_cols {
                p.cols(split_range(n, parts, 16, t))
            } else {
                p.rows(split_range(m, parts, 6, t))
            }
        };
        // SAFETY: `sub` is an exclusive block of the output (see above).
        unsafe { run_problem(backend, s, &sub) };
    });
}

/// `Y[t][j] += Σ_p S[j][p] · X[t][p]` for a CSR matrix `S` (`m × n`, rows = outputs), over
/// the `tokens = x.rows()` rows of X and Y. `y` has `m = s.rows()` columns; the rows of `x` hold
/// at least `n` values (one more than the largest column index). `xt` is scratch of at least
/// `n * tokens` floats that the kernel may use for a transposed copy of X.
///
/// Inputs are expected to be validated by the caller; inconsistent slices panic (never
/// undefined behaviour).
///
/// # Panics
/// If `x` and `y` differ in rows, if `y.cols() != s.rows()`, and on inconsistent CSR slices.
pub fn sparse_add(backend: Backend, s: Csr<'_>, x: Rows<'_>, y: RowsMut<'_>, xt: &mut [f32]) {
    assert_eq!(x.rows(), y.rows(), "sparse_add: X and Y differ in rows");
    assert_eq!(y.cols(), s.rows(), "sparse_add: Y columns differ from the rows of S");
    assert!(s.values.covers_channels(s.rows()), "sparse_add: fewer int8 scales than rows of S");
    backend.kernels().sparse_add(s, x, y, xt)
}

/// LayerNorm of each row of `x` into the same row of `out`:
/// `out = (x - mean) / sqrt(var + eps) * gamma + beta` (biased variance, as PyTorch).
///
/// # Panics
/// If `x` and `out` differ in shape or `gamma`/`beta` are shorter than a row.
pub fn layer_norm(backend: Backend, x: Rows<'_>, gamma: &[f32], beta: &[f32], eps: f32, out: RowsMut<'_>) {
    assert!(x.rows() == out.rows() && x.cols() == out.cols(), "layer_norm: x and out differ in shape");
    backend.kernels().layer_norm(x, gamma, beta, eps, out)
}

/// Row-wise softmax of `scale * x` in place, for `rows` rows of length `cols` with stride `ld`.
pub fn softmax_rows(backend: Backend, rows: usize, cols: usize, x: &mut [f32], ld: usize, scale: f32) {
    backend.kernels().softmax_rows(rows, cols, x, ld, scale)
}

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`, in place.
pub fn gelu(backend: Backend, x: &mut [f32]) {
    backend.kernels().gelu(x)
}

/// `y[i] += scale[i % scale.len()] * x[i]` (or `y += x` without a scale) over `y.len()` values,
/// where `x.len() == y.len()`.
///
/// # Panics
/// If `x.len() != y.len()` or `scale` is empty.
pub fn add_scaled(backend: Backend, y: &mut [f32], x: &[f32], scale: Option<&[f32]>) {
    assert_eq!(x.len(), y.len(), "add_scaled: x and y differ in length");
    if let Some(s) = scale {
        assert!(!s.is_empty() || y.is_empty(), "add_scaled: empty scale");
    }
    backend.kernels().add_scaled(y, x, scale)
}
