//! AVX2 + FMA + F16C kernels (x86_64).
//!
//! Every function with `#[target_feature]` is reached only through the [`Avx2`] token, which
//! exists only after [`Backend::detect`] found the three features. The GEMM micro-kernel is
//! 6 × 16 (12 ymm accumulators, two FMA pipes of latency 4 need at least 8 independent chains).
//!
//! # Safety contract
//! Every `unsafe fn` here that carries `#[target_feature(enable = "avx2,fma,f16c")]` requires
//! that the CPU supports those features; callers discharge that by holding an [`Avx2`] token.
//! Further (pointer) requirements are listed in each function's own `# Safety` section.
//!
//! The bodies of those functions are wrapped in one `unsafe` block so that the code also builds
//! with compilers (the crate's MSRV) on which every intrinsic is an `unsafe fn`; newer compilers
//! consider some of these blocks unnecessary, hence `allow(unused_unsafe)`.

#![allow(clippy::needless_range_loop, unused_unsafe)]

use core::arch::x86_64::*;

use half::{bf16, f16};

use super::backend::Kernels;
use super::driver::{Arch, Tile, NR};
use super::simd::{self, impl_simd, simd_arch, simd_kernels, with_typed_csr, with_typed_values, Gelu, Simd, TypedCsr};
use super::types::fits;
use super::{BLayout, Backend, Csr, MatB, Problem, Rows, RowsMut, Scratch, SparseIndices, WeightSlice};

/// Proof that the CPU supports AVX2, FMA and F16C (only constructed after detection).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2 {
    _detected: (),
}

impl Avx2 {
    /// The token, if [`Backend::detect`] selected AVX2 (or AVX-512, which implies it).
    pub(crate) fn get() -> Option<&'static Avx2> {
        matches!(Backend::detect(), Backend::Avx2 | Backend::Avx512).then_some(&Avx2 { _detected: () })
    }

    /// The token, inside a function whose own contract is that the CPU has the features.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[inline(always)]
    pub(super) unsafe fn assume() -> Avx2 {
        Avx2 { _detected: () }
    }
}

impl_simd!(Avx2, __m256, lanes = 8, {
    zero => _mm256_setzero_ps(),
    splat(x) => _mm256_set1_ps(x),
    load(p) => _mm256_loadu_ps(p),
    store(p, v) => _mm256_storeu_ps(p, v),
    add(a, b) => _mm256_add_ps(a, b),
    sub(a, b) => _mm256_sub_ps(a, b),
    mul(a, b) => _mm256_mul_ps(a, b),
    mul_add(a, b, c) => _mm256_fmadd_ps(a, b, c),
    hsum(v) => hsum(v),
    gelu(v) => gelu8(v),
    transpose_block(src, lds, dst, ldd) => {
        let mut v = [_mm256_setzero_ps(); 8];
        for r in 0..8 {
            v[r] = _mm256_loadu_ps(src.add(r * lds));
        }
        let t = transpose8(&v);
        for q in 0..8 {
            _mm256_storeu_ps(dst.add(q * ldd), t[q]);
        }
    },
});

/// A weight element type that can be loaded as f32.
pub(super) trait Elem: Copy {
    /// Loads 8 consecutive elements as f32.
    ///
    /// # Safety
    /// `p` is valid for 8 reads; the CPU supports AVX2 + FMA + F16C.
    unsafe fn load8(p: *const Self) -> __m256;
    /// One element as f32.
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are
        // justified where they occur.
        unsafe {
            // SAFETY: `p` is valid for 8 reads (contract).
            unsafe { _mm256_loadu_ps(p) }
        }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are
        // justified where they occur.
        unsafe {
            // SAFETY: `p` is valid for 8 × 2 bytes (contract); unaligned load.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
        }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Elem for bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are
        // justified where they occur.
        unsafe {
            // SAFETY: `p` is valid for 8 × 2 bytes (contract); unaligned load.
            let h = unsafe { _mm_loadu_si128(p.cast()) };
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Vector math (same formulas as `scalar::exp` / `scalar::erf`).

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.336_54)), _mm256_set1_ps(88.376_26));
        let n = _mm256_floor_ps(_mm256_add_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(core::f32::consts::LOG2_E)),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }
}

/// `erf` of every lane: the odd/even rational minimax form of `scalar::erf` on `x` clamped to
/// `[-4, 4]` (13 FMA/mul and one division, no `exp`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn erf8(x: __m256) -> __m256 {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); register-only.
    unsafe {
        use super::scalar::{ERF_P, ERF_Q};
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.0)), _mm256_set1_ps(4.0));
        let x2 = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(ERF_P[6]);
        for &c in ERF_P[..6].iter().rev() {
            p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(c));
        }
        let mut q = _mm256_set1_ps(ERF_Q[4]);
        for &c in ERF_Q[..4].iter().rev() {
            q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(c));
        }
        let r = _mm256_div_ps(_mm256_mul_ps(x, p), q);
        // |x| ≥ 4: exactly ±1 (the polynomial gives 1 - 1 ulp there).
        let sign = _mm256_set1_ps(-0.0);
        let sat = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_andnot_ps(sign, x), _mm256_set1_ps(4.0));
        let one = _mm256_or_ps(_mm256_set1_ps(1.0), _mm256_and_ps(x, sign));
        _mm256_blendv_ps(r, one, sat)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gelu8(x: __m256) -> __m256 {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let e = erf8(_mm256_mul_ps(x, _mm256_set1_ps(core::f32::consts::FRAC_1_SQRT_2)));
        _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), x), _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Lane `i` of the result is the sum of the lanes of `v[i]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum8x8(v: &[__m256; 8]) -> __m256 {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let t0 = _mm256_hadd_ps(v[0], v[1]);
        let t1 = _mm256_hadd_ps(v[2], v[3]);
        let t2 = _mm256_hadd_ps(v[4], v[5]);
        let t3 = _mm256_hadd_ps(v[6], v[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(u0, u1), _mm256_permute2f128_ps::<0x31>(u0, u1))
    }
}

/// Transposes the 8 × 8 block held in `r` (row `i` in `r[i]`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn transpose8(r: &[__m256; 8]) -> [__m256; 8] {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }
}

/// Mask selecting the first `n` (≤ 8) lanes, for `maskload`/`maskstore`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lane_mask(n: usize) -> __m256i {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx)
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM: packing, micro-kernel, epilogue.

/// Packs `kc × cols` of an NK-layout B starting at `src` (element `(pc, col)`) into `dst`.
///
/// # Safety
/// Rows `0..cols` of `src` (stride `ld`) are valid for `kc` reads; `dst` for `kc * NR` writes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_nk<T: Elem>(src: *const T, ld: usize, kc: usize, cols: usize, dst: *mut f32) {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let groups = if cols > 8 { 2 } else { 1 };
        for g in 0..groups {
            let gcols = (cols - g * 8).min(8);
            // SAFETY (whole block): reads stay in rows `g*8 .. g*8 + gcols` and columns `0..kc` of
            // `src`; writes in `dst[p * NR + g*8 .. +8]` for `p < kc`.
            unsafe {
                let gdst = dst.add(g * 8);
                if gcols == 8 {
                    let mut rows = [src; 8];
                    for r in 0..8 {
                        rows[r] = src.add((g * 8 + r) * ld);
                    }
                    let mut p = 0;
                    while p + 8 <= kc {
                        let mut v = [_mm256_setzero_ps(); 8];
                        for r in 0..8 {
                            v[r] = T::load8(rows[r].add(p));
                        }
                        let t = transpose8(&v);
                        for q in 0..8 {
                            _mm256_storeu_ps(gdst.add((p + q) * NR), t[q]);
                        }
                        p += 8;
                    }
                    while p < kc {
                        for r in 0..8 {
                            *gdst.add(p * NR + r) = (*rows[r].add(p)).to_f32();
                        }
                        p += 1;
                    }
                } else {
                    for p in 0..kc {
                        for r in 0..8 {
                            *gdst.add(p * NR + r) =
                                if r < gcols { (*src.add((g * 8 + r) * ld + p)).to_f32() } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

/// Packs `kc × cols` of a KN-layout B starting at `src` (element `(pc, col)`) into `dst`.
///
/// # Safety
/// Rows `0..kc` of `src` (stride `ld`) are valid for `cols` reads; `dst` for `kc * NR` writes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_kn<T: Elem>(src: *const T, ld: usize, kc: usize, cols: usize, dst: *mut f32) {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        // SAFETY (whole function): reads `src[p * ld + j]` for `p < kc`, `j < cols`; writes
        // `dst[p * NR + j]` for `j < NR`.
        unsafe {
            if cols == NR {
                for p in 0..kc {
                    let s = src.add(p * ld);
                    let d = dst.add(p * NR);
                    _mm256_storeu_ps(d, T::load8(s));
                    _mm256_storeu_ps(d.add(8), T::load8(s.add(8)));
                }
            } else {
                let full = if cols >= 8 { 8 } else { 0 };
                let width = if cols > 8 { NR } else { 8 };
                for p in 0..kc {
                    let s = src.add(p * ld);
                    let d = dst.add(p * NR);
                    if full == 8 {
                        _mm256_storeu_ps(d, T::load8(s));
                    }
                    for j in full..width {
                        *d.add(j) = if j < cols { (*s.add(j)).to_f32() } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// The `R × 8V` micro-kernel: `acc[i][j] = Σ_p a[i * lda + p] · b[p * NR + j]`, one FMA chain per
/// element in order `p = 0..kc`.
///
/// # Safety
/// As [`Arch::kernel`], with `rows == R` and `t.cols ≤ 8 * V`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ukernel<const R: usize, const V: usize>(kc: usize, a: *const f32, lda: usize, b: *const f32, t: &Tile) {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        let mut ap = a;
        let mut bp = b;
        // One k step: V panel loads, R broadcasts, R·V FMAs.
        macro_rules! step {
            ($off:expr) => {
                let mut bv = [_mm256_setzero_ps(); V];
                for v in 0..V {
                    bv[v] = _mm256_loadu_ps(bp.add($off * NR + 8 * v));
                }
                for i in 0..R {
                    let ai = _mm256_set1_ps(*ap.add(i * lda + $off));
                    for v in 0..V {
                        acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
                    }
                }
            };
        }
        // SAFETY: reads `a[i * lda + p]` (`i < R`, `p < kc`) and `b[p * NR + j]` (`j < 8 V`),
        // all in the ranges the contract guarantees (unaligned loads: alignment of the panel
        // only matters for speed).
        unsafe {
            for _ in 0..kc / 4 {
                step!(0);
                step!(1);
                step!(2);
                step!(3);
                ap = ap.add(4);
                bp = bp.add(4 * NR);
            }
            for _ in 0..kc % 4 {
                step!(0);
                ap = ap.add(1);
                bp = bp.add(NR);
            }
            simd::finish::<Avx2, R, V>(Avx2::assume(), &acc, t);
        }
    }
}

/// Matrix-vector product (`m == 1`, NK layout): 8 output columns at a time, each a dot product
/// of the A row with one B row (8 lanes over k, then a horizontal sum).
///
/// # Safety
/// As [`Arch::gemv_nk`]; `w` is the start of `p.b`'s storage.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_nk<T: Elem>(p: &Problem<'_>, w: *const T) {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let k = p.k;
        let ld = p.b.ld;
        let a = p.a.as_ptr();
        let k8 = k / 8 * 8;
        let mut j = 0;
        while j < p.n {
            let cols = (p.n - j).min(8);
            // SAFETY: rows `p.j0 + j + r` (r < cols; the clamp repeats the last valid row) hold `k`
            // valid elements; `a` holds `k`; the output tile is row 0, columns `j..j + cols`.
            unsafe {
                let mut rows = [w; 8];
                for r in 0..8 {
                    rows[r] = w.add((p.j0 + j + r.min(cols - 1)) * ld);
                }
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut q = 0;
                while q < k8 {
                    let av = _mm256_loadu_ps(a.add(q));
                    for r in 0..8 {
                        acc[r] = _mm256_fmadd_ps(av, T::load8(rows[r].add(q)), acc[r]);
                    }
                    q += 8;
                }
                let mut s = hsum8x8(&acc);
                if k8 < k {
                    let mut tail = [0.0f32; 8];
                    for r in 0..8 {
                        let mut x = 0.0f32;
                        for q in k8..k {
                            x += *a.add(q) * (*rows[r].add(q)).to_f32();
                        }
                        tail[r] = x;
                    }
                    s = _mm256_add_ps(s, _mm256_loadu_ps(tail.as_ptr()));
                }
                let t = Tile::row_segment(p, j, cols);
                simd::finish::<Avx2, 1, 1>(Avx2::assume(), &[[s]], &t);
            }
            j += 8;
        }
    }
}

simd_arch!(Avx2, half = 1, full = 2);

// ---------------------------------------------------------------------------------------------
// Element-wise and row kernels.

/// LayerNorm of one row (see [`simd::layer_norm_row`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn layer_norm_row(isa: Avx2, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    simd::layer_norm_row(isa, x, gamma, beta, eps, out)
}

/// Softmax of `scale * row` in place.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_row(_: Avx2, row: &mut [f32], scale: f32) {
    // SAFETY: the CPU has AVX2, FMA and F16C (module contract); pointer accesses are justified
    // where they occur.
    unsafe {
        let n = row.len();
        if n == 0 {
            return;
        }
        let p = row.as_mut_ptr();
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        // SAFETY: every vector access is `row[i..i + 8]` with `i + 8 ≤ n`.
        unsafe {
            while i + 8 <= n {
                vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(p.add(i)));
                i += 8;
            }
        }
        let mut max = hmax(vmax);
        for &v in &row[i..] {
            max = max.max(v);
        }
        let (vm, vs) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
        let mut vsum = _mm256_setzero_ps();
        i = 0;
        // SAFETY: as above.
        unsafe {
            while i + 8 <= n {
                let e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm), vs));
                _mm256_storeu_ps(p.add(i), e);
                vsum = _mm256_add_ps(vsum, e);
                i += 8;
            }
        }
        let mut total = hsum(vsum);
        if i < n {
            // The tail goes through the same vector exp, on a padded copy.
            let rest = n - i;
            let mut buf = [0.0f32; 8];
            buf[..rest].copy_from_slice(&row[i..]);
            // SAFETY: `buf` has 8 elements.
            unsafe {
                let e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), vm), vs));
                _mm256_storeu_ps(buf.as_mut_ptr(), e);
            }
            for (d, &s) in row[i..].iter_mut().zip(&buf[..rest]) {
                *d = s;
                total += s;
            }
        }
        let inv = _mm256_set1_ps(1.0 / total);
        i = 0;
        // SAFETY: as above.
        unsafe {
            while i + 8 <= n {
                _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
                i += 8;
            }
        }
        let inv = 1.0 / total;
        for v in &mut row[i..] {
            *v *= inv;
        }
    }
}

/// GELU in place (see [`simd::map`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gelu_slice(isa: Avx2, x: &mut [f32]) {
    simd::map(isa, x, &Gelu)
}

/// `y += s ⊙ x` (or `y += x`) over equal-length slices.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_vec(isa: Avx2, y: &mut [f32], x: &[f32], s: Option<&[f32]>) {
    simd::axpy(isa, y, x, s)
}

/// Column index types of the CSR kernels.
trait Index: Copy {
    fn idx(self) -> usize;
    /// Loads 8 indices as i32 lanes.
    ///
    /// # Safety
    /// `p` is valid for 8 reads; the CPU has AVX2; every index is below 2³¹.
    unsafe fn load8(p: *const Self) -> __m256i;
}
impl Index for u16 {
    #[inline(always)]
    fn idx(self) -> usize {
        self as usize
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u16) -> __m256i {
        // SAFETY: `p` is valid for 8 × 2 bytes (contract); AVX2 available (contract).
        unsafe { _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())) }
    }
}
impl Index for u32 {
    #[inline(always)]
    fn idx(self) -> usize {
        self as usize
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u32) -> __m256i {
        // SAFETY: `p` is valid for 8 × 4 bytes (contract); AVX2 available (contract).
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
}

/// Rows of Y computed together by the transposed sparse kernel (the results are written to Y
/// as `ROWS`-wide row segments, so that each cache line of Y is touched once per group rather
/// than once per output column: with a row stride that is a multiple of 4 KiB, touching a
/// column of Y would hit a single cache set).
const ROWS: usize = 16;
/// Tokens per block of the transposed sparse kernel (8 ymm accumulators).
const TOKENS: usize = 64;

/// One CSR row over a block of `8 (U - 1) + last` tokens starting at `t0` (`1 ≤ last ≤ 8`):
/// `out[t] = Σ_q vals[q] · xt[cols[q] * tokens + t0 + t]`.
///
/// # Safety
/// The CPU has AVX2/FMA/F16C; every `cols[q] < n` where `xt` holds `n * tokens` floats, and
/// `t0 + 8 (U - 1) + last ≤ tokens`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sparse_row_block<I: Index, V: Elem, const U: usize>(
    cols: &[I],
    vals: &[V],
    xt: *const f32,
    tokens: usize,
    t0: usize,
    last: usize,
    out: &mut [f32; TOKENS],
) {
    // SAFETY: see the module contract and the per-access comments.
    unsafe {
        let mask = lane_mask(last);
        let mut acc = [_mm256_setzero_ps(); U];
        for (c, v) in cols.iter().zip(vals) {
            let w = _mm256_set1_ps(v.to_f32());
            // SAFETY: `c < n` (contract), so the block `[c * tokens + t0, .. + 8(U-1) + last)`
            // is inside `xt`; the last vector is a masked load of its `last` valid lanes.
            let base = xt.add(c.idx() * tokens + t0);
            for u in 0..U - 1 {
                acc[u] = _mm256_fmadd_ps(w, _mm256_loadu_ps(base.add(8 * u)), acc[u]);
            }
            let xl = _mm256_maskload_ps(base.add(8 * (U - 1)), mask);
            acc[U - 1] = _mm256_fmadd_ps(w, xl, acc[U - 1]);
        }
        for u in 0..U {
            // SAFETY: `out` has TOKENS = 64 ≥ 8 U floats.
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * u), acc[u]);
        }
    }
}

/// `Σ_q vals[q] · x[cols[q]]` with 8-lane gathers.
///
/// # Safety
/// The CPU has AVX2/FMA/F16C; `x` is valid for reads of `n` floats, every `cols[q] < n` and
/// `n ≤ 2³¹`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sparse_dot<I: Index, V: Elem>(cols: &[I], vals: &[V], x: *const f32) -> f32 {
    // SAFETY: see the module contract and the per-access comments.
    unsafe {
        let len = cols.len().min(vals.len());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut q = 0;
        // SAFETY (loop): `q + 8 ≤ len` for both slices; gathered indices are `< n` (contract).
        while q + 16 <= len {
            let i0 = I::load8(cols.as_ptr().add(q));
            let i1 = I::load8(cols.as_ptr().add(q + 8));
            acc0 = _mm256_fmadd_ps(V::load8(vals.as_ptr().add(q)), _mm256_i32gather_ps::<4>(x, i0), acc0);
            acc1 = _mm256_fmadd_ps(V::load8(vals.as_ptr().add(q + 8)), _mm256_i32gather_ps::<4>(x, i1), acc1);
            q += 16;
        }
        while q + 8 <= len {
            let i0 = I::load8(cols.as_ptr().add(q));
            acc0 = _mm256_fmadd_ps(V::load8(vals.as_ptr().add(q)), _mm256_i32gather_ps::<4>(x, i0), acc0);
            q += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        while q < len {
            // SAFETY: `cols[q] < n` (contract).
            s += vals[q].to_f32() * *x.add(cols[q].idx());
            q += 1;
        }
        s
    }
}

/// `Y += X · Sᵀ` for a typed CSR matrix (see [`super::sparse_add`]).
///
/// # Safety
/// The CPU has AVX2/FMA/F16C; `s.row_ptr.len() ≥ 2` and `s.n` is one more than the largest
/// column index.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sparse_add_typed<I: Index, V: Elem>(s: TypedCsr<'_, I, V>, x: Rows<'_>, y: RowsMut<'_>, xt: &mut [f32]) {
    let TypedCsr { row_ptr, col_idx, values, n } = s;
    let (tokens, x, ldx) = (x.rows, x.data, x.ld);
    let (y, ldy) = (y.data, y.ld);
    // SAFETY: see the module contract and the per-access comments.
    unsafe {
        let rows = row_ptr.len() - 1;
        assert!(fits(tokens, ldy, rows, y.len()), "sparse_add: Y too small");
        if tokens < 8 {
            // Few tokens: gather straight from X, one dot product per output.
            assert!(n <= i32::MAX as usize, "sparse_add: too many columns for 32-bit gathers");
            assert!(fits(tokens, ldx, n, x.len()), "sparse_add: X too small");
            for t in 0..tokens {
                let xr = x.as_ptr().add(t * ldx);
                for j in 0..rows {
                    let (s, e) = (row_ptr[j] as usize, row_ptr[j + 1] as usize);
                    // SAFETY: every index is `< n` (n is one more than the largest) and row `t`
                    // of X holds `n` floats (asserted).
                    y[t * ldy + j] += sparse_dot(&col_idx[s..e], &values[s..e], xr);
                }
            }
            return;
        }
        simd::transpose_into(Avx2::assume(), x, ldx, tokens, n, xt);
        let xt = &xt[..n * tokens];
        let mut out = [[0.0f32; TOKENS]; ROWS];
        let mut j0 = 0;
        while j0 < rows {
            let rg = (rows - j0).min(ROWS);
            let mut t0 = 0;
            while t0 < tokens {
                let tb = (tokens - t0).min(TOKENS);
                let nv = tb.div_ceil(8);
                let last = tb - 8 * (nv - 1);
                for jj in 0..rg {
                    let j = j0 + jj;
                    let (s, e) = (row_ptr[j] as usize, row_ptr[j + 1] as usize);
                    let (cols, vals) = (&col_idx[s..e], &values[s..e]);
                    let o = &mut out[jj];
                    let xp = xt.as_ptr();
                    // SAFETY: every column index is `< n` (`n` is one more than the largest
                    // index), the token block ends at `t0 + tb ≤ tokens`, and `xt` holds
                    // `n * tokens` floats.
                    match nv {
                        8 => sparse_row_block::<I, V, 8>(cols, vals, xp, tokens, t0, last, o),
                        7 => sparse_row_block::<I, V, 7>(cols, vals, xp, tokens, t0, last, o),
                        6 => sparse_row_block::<I, V, 6>(cols, vals, xp, tokens, t0, last, o),
                        5 => sparse_row_block::<I, V, 5>(cols, vals, xp, tokens, t0, last, o),
                        4 => sparse_row_block::<I, V, 4>(cols, vals, xp, tokens, t0, last, o),
                        3 => sparse_row_block::<I, V, 3>(cols, vals, xp, tokens, t0, last, o),
                        2 => sparse_row_block::<I, V, 2>(cols, vals, xp, tokens, t0, last, o),
                        _ => sparse_row_block::<I, V, 1>(cols, vals, xp, tokens, t0, last, o),
                    }
                }
                // Y[t0 + t][j0 .. j0 + rg] += out[..rg][t]: 8 × 8 transposes for full blocks.
                let (t8, r8) = (tb / 8 * 8, rg / 8 * 8);
                for tt in (0..t8).step_by(8) {
                    for jj in (0..r8).step_by(8) {
                        let mut v = [_mm256_setzero_ps(); 8];
                        for r in 0..8 {
                            v[r] = _mm256_loadu_ps(out[jj + r].as_ptr().add(tt));
                        }
                        let tr = transpose8(&v);
                        for q in 0..8 {
                            let yr = &mut y[(t0 + tt + q) * ldy + j0 + jj..][..8];
                            // SAFETY: `yr` has 8 elements.
                            let sum = _mm256_add_ps(_mm256_loadu_ps(yr.as_ptr()), tr[q]);
                            _mm256_storeu_ps(yr.as_mut_ptr(), sum);
                        }
                    }
                }
                for t in 0..tb {
                    let yr = &mut y[(t0 + t) * ldy + j0..][..rg];
                    let first = if t < t8 { r8 } else { 0 };
                    for jj in first..rg {
                        yr[jj] += out[jj][t];
                    }
                }
                t0 += tb;
            }
            j0 += rg;
        }
    }
}

/// Sparse add of a CSR matrix (see [`super::sparse_add`]).
fn sparse_add(isa: Avx2, s: Csr<'_>, x: Rows<'_>, y: RowsMut<'_>, xt: &mut [f32]) {
    let _ = isa;
    if s.row_ptr.len() < 2 || x.rows() == 0 {
        return;
    }
    if s.col_idx.is_empty() {
        return;
    }
    let n = s.col_idx.min_cols();
    // SAFETY: `isa` proves the CPU features; `row_ptr` has two entries or more (checked) and `n`
    // is one more than the largest index.
    with_typed_csr!(s, n, |csr| unsafe { sparse_add_typed(csr, x, y, xt) })
}

simd_kernels!(Avx2);
