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
//!
//! Implementation: the SIMD backends share one blocked GEMM driver (GotoBLAS loop nest: B
//! converted and packed one `256 × 16` panel at a time into the per-thread [`Scratch`], A read
//! in place, 6 × 16 register tiles, bias/GELU/scaled accumulation fused after the last k block;
//! see `driver.rs`); the ISA modules provide the micro-kernels, the packing and the row
//! kernels. No kernel allocates: all buffers live in [`Scratch`] (made once per thread) or on
//! the stack. [`gemm_parallel`] splits disjoint output blocks between threads and never splits
//! `k`, and every output element goes through the same operation sequence wherever its tile
//! lies, so results are bit-identical for any thread count.

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod driver;
#[cfg(feature = "std")]
pub mod peak;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use core::sync::atomic::{AtomicU8, Ordering};

use half::{bf16, f16};

use crate::parallel::{split_range, Exec};

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
            && (rows - 1)
                .checked_mul(self.ld)
                .and_then(|x| x.checked_add(cols))
                .is_some_and(|need| need <= self.data.len())
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

/// Cached result of [`Backend::detect`]: 0 = not yet detected, otherwise `code(backend)`.
static DETECTED: AtomicU8 = AtomicU8::new(0);

impl Backend {
    /// The best backend available on this CPU (detected once, cached).
    ///
    /// On x86_64 with the `std` feature the CPU is queried at run time; without `std` the AVX2
    /// backend is used only when the build statically enables `avx2`, `fma` and `f16c`. NEON is
    /// baseline on aarch64.
    pub fn detect() -> Backend {
        match DETECTED.load(Ordering::Relaxed) {
            1 => Backend::Scalar,
            2 => Backend::Avx2,
            3 => Backend::Neon,
            _ => {
                let b = detect_uncached();
                // A race between two first callers stores the same value twice: harmless.
                DETECTED.store(b.code(), Ordering::Relaxed);
                b
            }
        }
    }

    /// Every backend usable on this CPU (for tests and benchmarks), scalar first.
    pub fn available() -> alloc::vec::Vec<Backend> {
        let mut v = alloc::vec![Backend::Scalar];
        let best = Backend::detect();
        if best != Backend::Scalar {
            v.push(best);
        }
        v
    }

    /// Whether this backend can run on this CPU. Kernels called with an unavailable backend
    /// fall back to the scalar implementation.
    pub fn is_available(self) -> bool {
        self == Backend::Scalar || self == Backend::detect()
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2+fma+f16c",
            Backend::Neon => "neon",
        }
    }

    fn code(self) -> u8 {
        match self {
            Backend::Scalar => 1,
            Backend::Avx2 => 2,
            Backend::Neon => 3,
        }
    }
}

#[allow(unreachable_code)]
fn detect_uncached() -> Backend {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return Backend::Avx2;
        }
    }
    #[cfg(all(
        target_arch = "x86_64",
        not(feature = "std"),
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        return Backend::Avx2;
    }
    #[cfg(target_arch = "aarch64")]
    {
        return Backend::Neon;
    }
    Backend::Scalar
}

/// The SIMD implementation selected for `backend`, if that backend is available here.
#[derive(Clone, Copy)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx2(x86::Avx2),
    #[cfg(target_arch = "aarch64")]
    Neon(aarch64::Neon),
}

fn simd(backend: Backend) -> Option<Simd> {
    match backend {
        Backend::Scalar => None,
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => x86::Avx2::get().map(Simd::Avx2),
        #[cfg(target_arch = "aarch64")]
        Backend::Neon => aarch64::Neon::get().map(Simd::Neon),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Per-thread scratch memory of the kernels (packing buffers). Allocated once per session.
///
/// For the SIMD backends it holds one packed `KC × NR` panel of `B` (16 KiB) and a partial-sum
/// block (`MC × NC` floats, about 270 KiB, used only by accumulating GEMMs with `k > KC`). The
/// scalar backend needs no packing: its scratch is empty (the Cortex-M budget is 64 KiB).
#[derive(Debug)]
pub struct Scratch {
    backend: Backend,
    /// Packed B panel (with slack to align it to 64 bytes).
    pack: alloc::vec::Vec<f32>,
    /// Partial sums of one `MC × NC` output block.
    part: alloc::vec::Vec<f32>,
}

impl Scratch {
    /// Scratch sized for `backend`.
    pub fn new(backend: Backend) -> Scratch {
        let (pack, part) = Scratch::floats(backend);
        Scratch { backend, pack: alloc::vec![0.0; pack], part: alloc::vec![0.0; part] }
    }
    /// Bytes a scratch for `backend` holds (known before allocating it).
    pub fn bytes_for(backend: Backend) -> usize {
        let (pack, part) = Scratch::floats(backend);
        (pack + part) * 4
    }
    fn floats(backend: Backend) -> (usize, usize) {
        match backend {
            Backend::Scalar => (0, 0),
            Backend::Avx2 | Backend::Neon => (driver::PACK_FLOATS + 16, driver::PART_FLOATS),
        }
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.pack.capacity() + self.part.capacity()) * 4
    }
    /// The backend this scratch was sized for.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// The packing buffers, if this scratch is large enough for the SIMD GEMM driver.
    fn simd_buffers(&mut self) -> Option<(&mut [f32], &mut [f32])> {
        if self.pack.len() < driver::PACK_FLOATS + 16 || self.part.len() < driver::PART_FLOATS {
            return None;
        }
        // Align the packed panel to 64 bytes (a cache line) so that each 16-float row of the
        // panel is one line.
        let off = self.pack.as_ptr().align_offset(64).min(16);
        Some((&mut self.pack[off..off + driver::PACK_FLOATS], &mut self.part[..]))
    }
}

/// Whether a row-major block of `rows × cols` at stride `ld` fits in `len` elements (with
/// overflow-checked arithmetic: a wrapped product must never pass a bounds check that unsafe
/// code relies on).
pub(crate) fn fits(rows: usize, ld: usize, cols: usize, len: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    ld >= cols && (rows - 1).checked_mul(ld).and_then(|x| x.checked_add(cols)).is_some_and(|need| need <= len)
}

fn check_gemm(g: &Gemm<'_, '_>) {
    let k = g.b.k;
    let n = g.b.n;
    assert!(g.b.is_valid(), "B operand too small for its shape");
    if g.m > 0 && k > 0 {
        assert!(fits(g.m, g.lda, k, g.a.len()), "A operand too small");
    }
    if g.m > 0 && n > 0 {
        assert!(fits(g.m, g.ldc, n, g.c.len()), "C operand too small");
    }
    if let Some(b) = g.epilogue.bias {
        assert!(b.len() >= n, "bias too short");
    }
    if let Some(s) = g.epilogue.scale {
        assert!(s.len() >= n, "scale too short");
    }
}

/// A validated GEMM on raw output memory: the whole of a [`Gemm`] or a block of rows or
/// columns of one (what one thread computes).
///
/// Invariants (established by [`Problem::new`] and kept by the unsafe sub-block methods):
/// `a` holds rows `0..m` of `k` elements at stride `lda`; `b` holds logical columns
/// `j0..j0 + n`; `bias`/`scale` are sliced to exactly the problem's `n` columns; `c` is valid
/// for reads and writes of the `m × n` rectangle at stride `ldc`, and nothing else accesses that
/// rectangle while the problem is alive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Problem<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: &'a [f32],
    pub lda: usize,
    pub b: MatB<'a>,
    /// First logical column of `b` that this problem computes.
    pub j0: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub bias: Option<&'a [f32]>,
    pub scale: Option<&'a [f32]>,
    pub gelu: bool,
    pub accumulate: bool,
    /// Use the matrix-vector path (chosen from the shape of the whole GEMM, so that every
    /// thread of a split computes its outputs with the same operation sequence).
    #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
    pub gemv: bool,
}

// SAFETY: a `Problem` is only shared between threads by `gemm_parallel`, which gives each thread
// a disjoint block of the output rectangle (see `Problem::cols` / `Problem::rows`); everything
// else it holds is shared immutable data.
unsafe impl Send for Problem<'_> {}
// SAFETY: as above; `&Problem` only exposes the raw pointer, writes through it are governed by
// the disjointness contract of the sub-block methods.
unsafe impl Sync for Problem<'_> {}

impl<'a> Problem<'a> {
    /// Validates `g` (panicking on a caller bug) and takes its output rectangle.
    pub(crate) fn new(g: &'a mut Gemm<'_, '_>) -> Problem<'a> {
        check_gemm(g);
        let n = g.b.n;
        Problem {
            m: g.m,
            n,
            k: g.b.k,
            a: g.a,
            lda: g.lda,
            b: g.b,
            j0: 0,
            c: g.c.as_mut_ptr(),
            ldc: g.ldc,
            bias: g.epilogue.bias.map(|b| &b[..n]),
            scale: g.epilogue.scale.map(|s| &s[..n]),
            gelu: g.epilogue.gelu,
            accumulate: g.epilogue.accumulate,
            gemv: g.m == 1 && g.b.layout == BLayout::NK,
        }
    }

    /// The sub-problem computing columns `r` (relative to this problem).
    ///
    /// # Safety
    /// Sub-problems used at the same time must have disjoint column ranges, and `self` must not
    /// be used to access C while they are alive.
    unsafe fn cols(&self, r: core::ops::Range<usize>) -> Problem<'a> {
        assert!(r.start <= r.end && r.end <= self.n);
        Problem {
            n: r.len(),
            j0: self.j0 + r.start,
            c: self.c.wrapping_add(r.start),
            bias: self.bias.map(|b| &b[r.clone()]),
            scale: self.scale.map(|s| &s[r.clone()]),
            ..*self
        }
    }

    /// The sub-problem computing rows `r` (relative to this problem).
    ///
    /// # Safety
    /// As for [`Problem::cols`], with rows.
    unsafe fn rows(&self, r: core::ops::Range<usize>) -> Problem<'a> {
        assert!(r.start <= r.end && r.end <= self.m);
        let a = if r.is_empty() || self.k == 0 { &self.a[..0] } else { &self.a[r.start * self.lda..] };
        Problem { m: r.len(), a, c: self.c.wrapping_add(r.start * self.ldc), ..*self }
    }
}

/// Runs a validated problem on one thread.
///
/// # Safety
/// The invariants of [`Problem`] hold for `p` (in particular exclusive access to its output).
unsafe fn run_problem(backend: Backend, scratch: &mut Scratch, p: &Problem<'_>) {
    match (simd(backend), scratch.simd_buffers()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded contract of this function.
        (Some(Simd::Avx2(isa)), Some((pack, part))) => unsafe { driver::gemm(isa, pack, part, p) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: forwarded contract of this function.
        (Some(Simd::Neon(isa)), Some((pack, part))) => unsafe { driver::gemm(isa, pack, part, p) },
        // SAFETY: forwarded contract of this function.
        _ => unsafe { scalar::gemm_problem(p) },
    }
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
/// `tokens` rows of X (stride `ldx`) and Y (stride `ldy`). `xt` is scratch of at least
/// `n * tokens` floats that the kernel may use for a transposed copy of X.
///
/// `m = row_ptr.len() - 1`; `n` is taken as one more than the largest column index. Inputs are
/// expected to be validated by the caller; inconsistent slices panic (never undefined behaviour).
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
    match simd(backend) {
        #[cfg(target_arch = "x86_64")]
        Some(Simd::Avx2(isa)) => isa.sparse_add(tokens, row_ptr, col_idx, values, x, ldx, y, ldy, xt),
        #[cfg(target_arch = "aarch64")]
        Some(Simd::Neon(isa)) => isa.sparse_add(tokens, row_ptr, col_idx, values, x, ldx, y, ldy, xt),
        None => {
            let _ = xt;
            scalar::sparse_add(tokens, row_ptr, col_idx, values, x, ldx, y, ldy)
        }
    }
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
    /// One more than the largest index (0 when empty): the smallest `n` the indices fit.
    pub fn min_cols(&self) -> usize {
        match self {
            SparseIndices::U16(s) => s.iter().copied().max().map_or(0, |v| v as usize + 1),
            SparseIndices::U32(s) => s.iter().copied().max().map_or(0, |v| v as usize + 1),
        }
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
    match simd(backend) {
        #[cfg(target_arch = "x86_64")]
        Some(Simd::Avx2(isa)) => isa.layer_norm(rows, dim, x, ldx, gamma, beta, eps, out, ldo),
        #[cfg(target_arch = "aarch64")]
        Some(Simd::Neon(isa)) => isa.layer_norm(rows, dim, x, ldx, gamma, beta, eps, out, ldo),
        None => scalar::layer_norm(rows, dim, x, ldx, gamma, beta, eps, out, ldo),
    }
}

/// Row-wise softmax of `scale * x` in place, for `rows` rows of length `cols` with stride `ld`.
pub fn softmax_rows(backend: Backend, rows: usize, cols: usize, x: &mut [f32], ld: usize, scale: f32) {
    match simd(backend) {
        #[cfg(target_arch = "x86_64")]
        Some(Simd::Avx2(isa)) => isa.softmax_rows(rows, cols, x, ld, scale),
        #[cfg(target_arch = "aarch64")]
        Some(Simd::Neon(isa)) => isa.softmax_rows(rows, cols, x, ld, scale),
        None => scalar::softmax_rows(rows, cols, x, ld, scale),
    }
}

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`, in place.
pub fn gelu(backend: Backend, x: &mut [f32]) {
    match simd(backend) {
        #[cfg(target_arch = "x86_64")]
        Some(Simd::Avx2(isa)) => isa.gelu(x),
        #[cfg(target_arch = "aarch64")]
        Some(Simd::Neon(isa)) => isa.gelu(x),
        None => scalar::gelu(x),
    }
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
    match simd(backend) {
        #[cfg(target_arch = "x86_64")]
        Some(Simd::Avx2(isa)) => isa.add_scaled(y, x, scale),
        #[cfg(target_arch = "aarch64")]
        Some(Simd::Neon(isa)) => isa.add_scaled(y, x, scale),
        None => scalar::add_scaled(y, x, scale),
    }
}
