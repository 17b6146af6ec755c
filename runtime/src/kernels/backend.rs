//! Backend selection: which instruction set the CPU offers ([`Backend`], detected once and
//! cached) and the kernel table of each backend ([`Kernels`], the one place that maps a
//! backend to its implementation).

use core::sync::atomic::{AtomicU8, Ordering};

use super::problem::{Problem, Scratch};
use super::scalar;
use super::types::{Csr, Rows, RowsMut};

/// Instruction-set family of a kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Portable Rust, no SIMD intrinsics.
    Scalar,
    /// x86_64 AVX2 + FMA + F16C.
    Avx2,
    /// aarch64 NEON (with FP16 conversion instructions).
    Neon,
    /// x86_64 AVX-512F GEMM micro-kernel (12 × 32 tiles) on top of the [`Backend::Avx2`]
    /// kernels (which it uses for everything but the GEMM; results are bit-identical to them).
    /// Opt-in: selected by [`Backend::detect`] only when `FACTORVIT_AVX512=1` is set, the CPU
    /// has AVX-512F, the compiler supports it (Rust ≥ 1.89) and `std` is on (it was slower than
    /// AVX2 on Zen 4, whose FLOP peak is the same; see docs/PERFORMANCE.md).
    Avx512,
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
            4 => Backend::Avx512,
            _ => {
                let b = detect_uncached();
                // A race between two first callers stores the same value twice: harmless.
                DETECTED.store(b.code(), Ordering::Relaxed);
                b
            }
        }
    }

    /// Every backend usable on this CPU (for tests and benchmarks), scalar first (with
    /// AVX-512, AVX2 too).
    pub fn available() -> alloc::vec::Vec<Backend> {
        let mut v = alloc::vec![Backend::Scalar];
        let best = Backend::detect();
        if best == Backend::Avx512 {
            v.push(Backend::Avx2);
        }
        if best != Backend::Scalar {
            v.push(best);
        }
        v
    }

    /// Whether this backend can run on this CPU. Kernels called with an unavailable backend
    /// fall back to the scalar implementation.
    pub fn is_available(self) -> bool {
        let best = Backend::detect();
        self == Backend::Scalar || self == best || (self == Backend::Avx2 && best == Backend::Avx512)
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2+fma+f16c",
            Backend::Neon => "neon",
            Backend::Avx512 => "avx512f+fma+f16c",
        }
    }

    fn code(self) -> u8 {
        match self {
            Backend::Scalar => 1,
            Backend::Avx2 => 2,
            Backend::Neon => 3,
            Backend::Avx512 => 4,
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
            #[cfg(factorvit_avx512)]
            if std::is_x86_feature_detected!("avx512f")
                && std::env::var_os("FACTORVIT_AVX512").is_some_and(|v| v == "1")
            {
                return Backend::Avx512;
            }
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

impl Backend {
    /// The kernel table of this backend: the one dispatch point of the facade functions.
    ///
    /// A SIMD backend's table is handed out only when [`Backend::detect`] selected that backend
    /// (its token proves the CPU features); otherwise, and for [`Backend::Scalar`], the portable
    /// table.
    pub(crate) fn kernels(self) -> &'static dyn Kernels {
        let simd: Option<&'static dyn Kernels> = match self {
            Backend::Scalar => None,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => super::x86::Avx2::get().map(|k| k as &'static dyn Kernels),
            #[cfg(all(target_arch = "x86_64", factorvit_avx512))]
            Backend::Avx512 => super::avx512::Avx512::get().map(|k| k as &'static dyn Kernels),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => super::aarch64::Neon::get().map(|k| k as &'static dyn Kernels),
            #[allow(unreachable_patterns)]
            _ => None,
        };
        simd.unwrap_or(&scalar::Portable)
    }
}

/// The kernels of one backend, as a table (tract-style): every entry defaults to the portable
/// kernel of [`scalar`], and a SIMD backend overrides the entries it accelerates. Arguments are
/// validated by the facade functions of [`super`] before they reach a table.
pub(crate) trait Kernels: Sync {
    /// Runs a validated GEMM problem on the calling thread.
    ///
    /// # Safety
    /// The invariants of [`Problem`] hold for `p` (in particular exclusive access to its output).
    unsafe fn gemm(&self, scratch: &mut Scratch, p: &Problem<'_>) {
        let _ = scratch;
        // SAFETY: forwarded contract.
        unsafe { scalar::gemm_problem(p) }
    }
    /// See [`super::sparse_add`].
    fn sparse_add(&self, s: Csr<'_>, x: Rows<'_>, y: RowsMut<'_>, xt: &mut [f32]) {
        let _ = xt;
        scalar::sparse_add(s, x, y)
    }
    /// See [`super::layer_norm`].
    fn layer_norm(&self, x: Rows<'_>, gamma: &[f32], beta: &[f32], eps: f32, out: RowsMut<'_>) {
        scalar::layer_norm(x, gamma, beta, eps, out)
    }
    /// See [`super::softmax_rows`].
    fn softmax_rows(&self, rows: usize, cols: usize, x: &mut [f32], ld: usize, scale: f32) {
        scalar::softmax_rows(rows, cols, x, ld, scale)
    }
    /// See [`super::gelu`].
    fn gelu(&self, x: &mut [f32]) {
        scalar::gelu(x)
    }
    /// See [`super::add_scaled`].
    fn add_scaled(&self, y: &mut [f32], x: &[f32], scale: Option<&[f32]>) {
        scalar::add_scaled(y, x, scale)
    }
}
