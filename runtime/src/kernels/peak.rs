//! Empirical floating-point peak of one core, the yardstick of the GEMM benchmarks.
//!
//! A throughput loop of independent fused multiply-adds (more accumulators than
//! latency × pipes, so the FMA units never wait): on AVX2 12 ymm accumulators (8 f32 lanes,
//! 2 flops per lane per FMA), on NEON 24 q accumulators (4 lanes). The result is the
//! single-precision FLOP/s that no kernel on this core can exceed; divide by 32 (AVX2 with two
//! FMA pipes: 2 × 8 × 2 flops per cycle) to read off the clock.

use std::time::Instant;

use super::Backend;

/// Iterations of the inner loop per timed batch.
const ITERS: u64 = 1 << 22;

/// Measures the single-precision FMA peak of the calling thread's core in GFLOP/s, for the best
/// backend ([`Backend::detect`]). Takes about 0.1–0.3 s (the best of several batches).
pub fn measure_fma_peak_gflops() -> f64 {
    measure_fma_peak_gflops_for(Backend::detect())
}

/// As [`measure_fma_peak_gflops`] for a given backend (`Scalar` measures independent scalar
/// multiply-adds). An unavailable backend is measured as scalar.
pub fn measure_fma_peak_gflops_for(backend: Backend) -> f64 {
    let backend = if backend.is_available() { backend } else { Backend::Scalar };
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let flops = run(backend, ITERS);
        let secs = start.elapsed().as_secs_f64();
        if secs > 0.0 {
            best = best.max(flops as f64 / secs / 1e9);
        }
    }
    best
}

/// Runs `iters` iterations of the throughput loop; returns the flops executed.
fn run(backend: Backend, iters: u64) -> u64 {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 | Backend::Avx512 => {
            // SAFETY: `backend.is_available()` was checked by the caller, so the CPU has
            // AVX2 + FMA.
            unsafe { x86::fma_loop(iters) };
            iters * 12 * 8 * 2
        }
        #[cfg(target_arch = "aarch64")]
        Backend::Neon => {
            aarch64::fma_loop(iters);
            iters * 24 * 4 * 2
        }
        _ => {
            scalar_loop(iters);
            iters * 8 * 2
        }
    }
}

fn scalar_loop(iters: u64) {
    let mut acc = [1.0f32, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7];
    let (m, a) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = *v * m + a;
        }
    }
    std::hint::black_box(acc);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma_loop(iters: u64) {
        let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let a = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for (i, v) in acc.iter_mut().enumerate() {
            *v = _mm256_set1_ps(1.0 + i as f32 * 0.01);
        }
        for _ in 0..iters {
            // Unrolled by the compiler: 12 independent dependency chains.
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, m, a);
            }
        }
        std::hint::black_box(acc);
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    use core::arch::aarch64::*;

    pub(super) fn fma_loop(iters: u64) {
        // SAFETY: NEON is baseline on aarch64; these intrinsics only touch registers.
        unsafe {
            let m = vdupq_n_f32(std::hint::black_box(0.999_999));
            let a = vdupq_n_f32(std::hint::black_box(1e-7));
            let mut acc = [vdupq_n_f32(1.0); 24];
            for (i, v) in acc.iter_mut().enumerate() {
                *v = vdupq_n_f32(1.0 + i as f32 * 0.01);
            }
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = vfmaq_f32(a, *v, m);
                }
            }
            std::hint::black_box(acc);
        }
    }
}
