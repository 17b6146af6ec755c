//! NEON kernels (aarch64, where Advanced SIMD is baseline).
//!
//! The GEMM micro-kernel is 6 × 16: 24 q-register accumulators, 4 for the B row and one
//! scalar A operand (`fmla v.4s, v.4s, v.s[0]`), 29 of the 32 vector registers. f16 weights are
//! widened with `fcvtl`/`fcvtl2` through `asm!` (the `vcvt_f32_f16` intrinsic needs the unstable
//! `f16` type); bf16 is a 16-bit left shift.
//!
//! # Safety contract
//! NEON is part of the aarch64 baseline, so the intrinsics are always available; the
//! `unsafe fn`s here have only the pointer requirements listed in their `# Safety` sections.
//! Function bodies are wrapped in one `unsafe` block so that the code builds with compilers on
//! which every intrinsic is an `unsafe fn`; newer compilers consider some of these blocks
//! unnecessary, hence `allow(unused_unsafe)`.

#![allow(clippy::needless_range_loop, unused_unsafe)]

use core::arch::aarch64::*;
use core::arch::asm;

use half::{bf16, f16};

use super::backend::Kernels;
use super::driver::{Arch, Tile, NR};
use super::simd::{self, impl_simd, simd_arch, simd_kernels, with_typed_csr, with_typed_values, Gelu, Simd, TypedCsr};
use super::types::fits;
use super::{scalar, BLayout, Backend, Csr, MatB, Problem, Rows, RowsMut, Scratch, SparseIndices, WeightSlice};

/// Token for the NEON backend (only constructed when [`Backend::detect`] selected it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon {
    _detected: (),
}

impl Neon {
    /// The token, if [`Backend::detect`] selected NEON.
    pub(crate) fn get() -> Option<&'static Neon> {
        (Backend::detect() == Backend::Neon).then_some(&Neon { _detected: () })
    }

    /// The token inside the module's kernels (NEON is baseline on aarch64).
    #[inline(always)]
    fn baseline() -> Neon {
        Neon { _detected: () }
    }
}

impl_simd!(Neon, float32x4_t, lanes = 4, {
    zero => vdupq_n_f32(0.0),
    splat(x) => vdupq_n_f32(x),
    load(p) => vld1q_f32(p),
    store(p, v) => vst1q_f32(p, v),
    add(a, b) => vaddq_f32(a, b),
    sub(a, b) => vsubq_f32(a, b),
    mul(a, b) => vmulq_f32(a, b),
    mul_add(a, b, c) => vfmaq_f32(c, a, b),
    hsum(v) => vaddvq_f32(v),
    gelu(v) => gelu4(v),
    transpose_block(src, lds, dst, ldd) => {
        let v = [vld1q_f32(src), vld1q_f32(src.add(lds)), vld1q_f32(src.add(2 * lds)), vld1q_f32(src.add(3 * lds))];
        let t = transpose4(&v);
        for q in 0..4 {
            vst1q_f32(dst.add(q * ldd), t[q]);
        }
    },
});

/// A weight element type that can be loaded as f32.
trait Elem: Copy {
    /// Loads 4 consecutive elements as f32.
    ///
    /// # Safety
    /// `p` is valid for 4 reads.
    unsafe fn load4(p: *const Self) -> float32x4_t;
    /// Loads 8 consecutive elements as f32.
    ///
    /// # Safety
    /// `p` is valid for 8 reads.
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> (float32x4_t, float32x4_t) {
        // SAFETY: forwarded contract (8 = 4 + 4 reads).
        unsafe { (Self::load4(p), Self::load4(p.add(4))) }
    }
    /// One element as f32.
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        // SAFETY: `p` is valid for 4 reads (contract).
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// Widens 4 IEEE halves to f32 (`fcvtl`, exact).
#[inline(always)]
fn cvt_lo(h: uint16x8_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: a register-only instruction of baseline aarch64 (FCVTL, half to single precision).
    unsafe {
        asm!("fcvtl {o:v}.4s, {i:v}.4h", i = in(vreg) h, o = lateout(vreg) out,
             options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// Widens the upper 4 of 8 IEEE halves to f32 (`fcvtl2`, exact).
#[inline(always)]
fn cvt_hi(h: uint16x8_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: a register-only instruction of baseline aarch64 (FCVTL2, half to single precision).
    unsafe {
        asm!("fcvtl2 {o:v}.4s, {i:v}.8h", i = in(vreg) h, o = lateout(vreg) out,
             options(pure, nomem, nostack, preserves_flags));
    }
    out
}

impl Elem for f16 {
    #[inline(always)]
    unsafe fn load4(p: *const f16) -> float32x4_t {
        // SAFETY: `p` is valid for 4 × 2 bytes (contract); only the low half of the register
        // is loaded and converted.
        unsafe { cvt_lo(vcombine_u16(vld1_u16(p.cast()), vdup_n_u16(0))) }
    }
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> (float32x4_t, float32x4_t) {
        // SAFETY: `p` is valid for 8 × 2 bytes (contract).
        let h = unsafe { vld1q_u16(p.cast()) };
        (cvt_lo(h), cvt_hi(h))
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Elem for bf16 {
    #[inline(always)]
    unsafe fn load4(p: *const bf16) -> float32x4_t {
        // SAFETY: `p` is valid for 4 × 2 bytes (contract).
        unsafe { vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p.cast()))) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Vector math (same formulas as `scalar::exp` / `scalar::erf`).

#[inline(always)]
fn exp4(x: float32x4_t) -> float32x4_t {
    // SAFETY: register-only NEON arithmetic (baseline).
    unsafe {
        let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.336_54)), vdupq_n_f32(88.376_26));
        let n = vrndmq_f32(vaddq_f32(vmulq_n_f32(x, core::f32::consts::LOG2_E), vdupq_n_f32(0.5)));
        let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
        let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
        let mut p = vdupq_n_f32(1.987_569_1e-4);
        p = vfmaq_f32(vdupq_n_f32(1.398_199_9e-3), p, r);
        p = vfmaq_f32(vdupq_n_f32(8.333_452e-3), p, r);
        p = vfmaq_f32(vdupq_n_f32(4.166_579_6e-2), p, r);
        p = vfmaq_f32(vdupq_n_f32(1.666_666_5e-1), p, r);
        p = vfmaq_f32(vdupq_n_f32(0.5), p, r);
        let y = vaddq_f32(vfmaq_f32(r, vmulq_f32(p, r), r), vdupq_n_f32(1.0));
        let e = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
        vmulq_f32(y, vreinterpretq_f32_s32(e))
    }
}

#[inline(always)]
fn erf4(x: float32x4_t) -> float32x4_t {
    // SAFETY: register-only NEON arithmetic (baseline).
    unsafe {
        let ax = vabsq_f32(x);
        let one = vdupq_n_f32(1.0);
        let t = vdivq_f32(one, vfmaq_f32(one, vdupq_n_f32(0.327_591_1), ax));
        let mut p = vdupq_n_f32(1.061_405_4);
        p = vfmaq_f32(vdupq_n_f32(-1.453_152_1), p, t);
        p = vfmaq_f32(vdupq_n_f32(1.421_413_8), p, t);
        p = vfmaq_f32(vdupq_n_f32(-0.284_496_74), p, t);
        p = vfmaq_f32(vdupq_n_f32(0.254_829_6), p, t);
        p = vmulq_f32(p, t);
        let e = exp4(vnegq_f32(vmulq_f32(ax, ax)));
        let y = vfmsq_f32(one, p, e);
        let sign = vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(0x8000_0000));
        vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(y), sign))
    }
}

#[inline(always)]
fn gelu4(x: float32x4_t) -> float32x4_t {
    // SAFETY: register-only NEON arithmetic (baseline).
    unsafe {
        let e = erf4(vmulq_n_f32(x, core::f32::consts::FRAC_1_SQRT_2));
        vmulq_f32(vmulq_n_f32(x, 0.5), vaddq_f32(vdupq_n_f32(1.0), e))
    }
}

/// Transposes the 4 × 4 block held in `r` (row `i` in `r[i]`).
#[inline(always)]
fn transpose4(r: &[float32x4_t; 4]) -> [float32x4_t; 4] {
    // SAFETY: register-only NEON permutes (baseline).
    unsafe {
        let t0 = vreinterpretq_f64_f32(vtrn1q_f32(r[0], r[1]));
        let t1 = vreinterpretq_f64_f32(vtrn2q_f32(r[0], r[1]));
        let t2 = vreinterpretq_f64_f32(vtrn1q_f32(r[2], r[3]));
        let t3 = vreinterpretq_f64_f32(vtrn2q_f32(r[2], r[3]));
        [
            vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)),
            vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)),
            vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)),
            vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM: packing, micro-kernel, epilogue.

/// Packs `kc × cols` of an NK-layout B starting at `src` (element `(pc, col)`) into `dst`.
///
/// # Safety
/// Rows `0..cols` of `src` (stride `ld`) are valid for `kc` reads; `dst` for `kc * NR` writes.
unsafe fn pack_nk<T: Elem>(src: *const T, ld: usize, kc: usize, cols: usize, dst: *mut f32) {
    let width = if cols > NR / 2 { NR } else { NR / 2 };
    // SAFETY: reads stay in rows `< cols` and columns `< kc` of `src`; writes in
    // `dst[p * NR + j]`, `p < kc`, `j < width ≤ NR`.
    unsafe {
        let mut g = 0;
        while g < width {
            let gcols = cols.saturating_sub(g).min(4);
            let gdst = dst.add(g);
            if gcols == 4 {
                let rows = [src.add(g * ld), src.add((g + 1) * ld), src.add((g + 2) * ld), src.add((g + 3) * ld)];
                let mut p = 0;
                while p + 4 <= kc {
                    let v = [
                        T::load4(rows[0].add(p)),
                        T::load4(rows[1].add(p)),
                        T::load4(rows[2].add(p)),
                        T::load4(rows[3].add(p)),
                    ];
                    let t = transpose4(&v);
                    for q in 0..4 {
                        vst1q_f32(gdst.add((p + q) * NR), t[q]);
                    }
                    p += 4;
                }
                while p < kc {
                    for r in 0..4 {
                        *gdst.add(p * NR + r) = (*rows[r].add(p)).to_f32();
                    }
                    p += 1;
                }
            } else {
                for p in 0..kc {
                    for r in 0..4 {
                        *gdst.add(p * NR + r) = if r < gcols { (*src.add((g + r) * ld + p)).to_f32() } else { 0.0 };
                    }
                }
            }
            g += 4;
        }
    }
}

/// Packs `kc × cols` of a KN-layout B starting at `src` (element `(pc, col)`) into `dst`.
///
/// # Safety
/// Rows `0..kc` of `src` (stride `ld`) are valid for `cols` reads; `dst` for `kc * NR` writes.
unsafe fn pack_kn<T: Elem>(src: *const T, ld: usize, kc: usize, cols: usize, dst: *mut f32) {
    // SAFETY: reads `src[p * ld + j]` for `p < kc`, `j < cols`; writes `dst[p * NR + j]`, `j < NR`.
    unsafe {
        if cols == NR {
            for p in 0..kc {
                let s = src.add(p * ld);
                let d = dst.add(p * NR);
                let (a0, a1) = T::load8(s);
                let (a2, a3) = T::load8(s.add(8));
                vst1q_f32(d, a0);
                vst1q_f32(d.add(4), a1);
                vst1q_f32(d.add(8), a2);
                vst1q_f32(d.add(12), a3);
            }
        } else {
            let full = cols / 4 * 4;
            let width = if cols > NR / 2 { NR } else { NR / 2 };
            for p in 0..kc {
                let s = src.add(p * ld);
                let d = dst.add(p * NR);
                let mut j = 0;
                while j < full {
                    vst1q_f32(d.add(j), T::load4(s.add(j)));
                    j += 4;
                }
                for j in full..width {
                    *d.add(j) = if j < cols { (*s.add(j)).to_f32() } else { 0.0 };
                }
            }
        }
    }
}

/// The `R × 4V` micro-kernel: one FMA chain per element in order `p = 0..kc`.
///
/// # Safety
/// As [`Arch::kernel`], with `rows == R` and `t.cols ≤ 4 * V`.
#[inline(never)]
unsafe fn ukernel<const R: usize, const V: usize>(kc: usize, a: *const f32, lda: usize, b: *const f32, t: &Tile) {
    // SAFETY: reads `a[i * lda + p]` (`i < R`, `p < kc`) and `b[p * NR + j]` (`j < 4 V`), all in
    // the ranges the contract guarantees.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); V]; R];
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            let mut bv = [vdupq_n_f32(0.0); V];
            for v in 0..V {
                bv[v] = vld1q_f32(bp.add(4 * v));
            }
            for i in 0..R {
                let ai = *ap.add(i * lda);
                for v in 0..V {
                    acc[i][v] = vfmaq_n_f32(acc[i][v], bv[v], ai);
                }
            }
            ap = ap.add(1);
            bp = bp.add(NR);
        }
        simd::finish::<Neon, R, V>(Neon::baseline(), &acc, t);
    }
}

/// Matrix-vector product (`m == 1`, NK layout): 8 output columns at a time, each a dot product
/// of the A row with one B row (4 lanes over k, then a horizontal sum).
///
/// # Safety
/// As [`Arch::gemv_nk`]; `w` is the start of `p.b`'s storage.
unsafe fn gemv_nk<T: Elem>(p: &Problem<'_>, w: *const T) {
    let k = p.k;
    let ld = p.b.ld;
    let a = p.a.as_ptr();
    let k4 = k / 4 * 4;
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
            let mut acc = [vdupq_n_f32(0.0); 8];
            let mut q = 0;
            while q < k4 {
                let av = vld1q_f32(a.add(q));
                for r in 0..8 {
                    acc[r] = vfmaq_f32(acc[r], av, T::load4(rows[r].add(q)));
                }
                q += 4;
            }
            let mut sums = [0.0f32; 8];
            for r in 0..8 {
                let mut x = 0.0f32;
                for q in k4..k {
                    x += *a.add(q) * (*rows[r].add(q)).to_f32();
                }
                sums[r] = vaddvq_f32(acc[r]) + x;
            }
            let s = [[vld1q_f32(sums.as_ptr()), vld1q_f32(sums.as_ptr().add(4))]];
            let t = Tile::row_segment(p, j, cols);
            simd::finish::<Neon, 1, 2>(Neon::baseline(), &s, &t);
        }
        j += 8;
    }
}

simd_arch!(Neon, half = 2, full = 4);

// ---------------------------------------------------------------------------------------------
// Element-wise and row kernels.

/// LayerNorm of one row (see [`simd::layer_norm_row`]).
fn layer_norm_row(isa: Neon, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    simd::layer_norm_row(isa, x, gamma, beta, eps, out)
}

/// Softmax of `scale * row` in place.
fn softmax_row(isa: Neon, row: &mut [f32], scale: f32) {
    let n = row.len();
    if n == 0 {
        return;
    }
    let p = row.as_ptr();
    let mut i = 0;
    // SAFETY: every vector access is `row[i..i + 4]` with `i + 4 ≤ n`.
    let mut max = unsafe {
        let mut vmax = vdupq_n_f32(f32::NEG_INFINITY);
        while i + 4 <= n {
            vmax = vmaxq_f32(vmax, vld1q_f32(p.add(i)));
            i += 4;
        }
        vmaxvq_f32(vmax)
    };
    for &v in &row[i..] {
        max = max.max(v);
    }
    // SAFETY: register-only NEON arithmetic.
    let (vm, vs) = unsafe { (vdupq_n_f32(max), vdupq_n_f32(scale)) };
    // SAFETY: register-only NEON arithmetic.
    simd::map(isa, row, &|v| unsafe { exp4(vmulq_f32(vsubq_f32(v, vm), vs)) });
    let inv = 1.0 / simd::sum(isa, row);
    // SAFETY: register-only NEON arithmetic.
    simd::map(isa, row, &|v| unsafe { vmulq_n_f32(v, inv) });
}

/// GELU in place (see [`simd::map`]).
fn gelu_slice(isa: Neon, x: &mut [f32]) {
    simd::map(isa, x, &Gelu)
}

/// `y += s ⊙ x` (or `y += x`) over equal-length slices.
fn axpy_vec(isa: Neon, y: &mut [f32], x: &[f32], s: Option<&[f32]>) {
    simd::axpy(isa, y, x, s)
}

/// Column index types of the CSR kernels.
trait Index: Copy {
    fn idx(self) -> usize;
}
impl Index for u16 {
    #[inline(always)]
    fn idx(self) -> usize {
        self as usize
    }
}
impl Index for u32 {
    #[inline(always)]
    fn idx(self) -> usize {
        self as usize
    }
}

/// Rows of Y computed together by the transposed sparse kernel (results are written to Y as
/// `ROWS`-wide row segments, so each cache line of Y is touched once per group rather than once
/// per output column: with a row stride that is a multiple of 4 KiB, a column of Y would hit a
/// single cache set).
const ROWS: usize = 16;
/// Tokens per block of the transposed sparse kernel (8 q-register accumulators).
const TOKENS: usize = 32;

/// One CSR row over the `4 U` tokens starting at `t0`:
/// `out[t] = Σ_q vals[q] · xt[cols[q] * tokens + t0 + t]`.
///
/// # Safety
/// Every `cols[q] < n` where `xt` holds `n * tokens` floats, and `t0 + 4 U ≤ tokens`.
#[inline(always)]
unsafe fn sparse_row_block<I: Index, V: Elem, const U: usize>(
    cols: &[I],
    vals: &[V],
    xt: *const f32,
    tokens: usize,
    t0: usize,
    out: &mut [f32; TOKENS],
) {
    // SAFETY: `c < n` (contract), so `[c * tokens + t0, .. + 4 U)` is inside `xt`; `out` has
    // 32 ≥ 4 U floats.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); U];
        for (c, v) in cols.iter().zip(vals) {
            let w = v.to_f32();
            let base = xt.add(c.idx() * tokens + t0);
            for u in 0..U {
                acc[u] = vfmaq_n_f32(acc[u], vld1q_f32(base.add(4 * u)), w);
            }
        }
        for u in 0..U {
            vst1q_f32(out.as_mut_ptr().add(4 * u), acc[u]);
        }
    }
}

/// `Y += X · Sᵀ` for a typed CSR matrix (see [`super::sparse_add`]); `s.row_ptr.len() ≥ 2`.
fn sparse_add_typed<I: Index, V: Elem>(s: TypedCsr<'_, I, V>, x: Rows<'_>, y: RowsMut<'_>, xt: &mut [f32]) {
    let TypedCsr { row_ptr, col_idx, values, n } = s;
    let (tokens, x, ldx) = (x.rows, x.data, x.ld);
    let (y, ldy) = (y.data, y.ld);
    let rows = row_ptr.len() - 1;
    assert!(fits(tokens, ldy, rows, y.len()), "sparse_add: Y too small");
    simd::transpose_into(Neon::baseline(), x, ldx, tokens, n, xt);
    let xt = &xt[..n * tokens];
    let t4 = tokens / 4 * 4;
    let mut out = [[0.0f32; TOKENS]; ROWS];
    let mut j0 = 0;
    while j0 < rows {
        let rg = (rows - j0).min(ROWS);
        let mut t0 = 0;
        while t0 < t4 {
            let tb = (t4 - t0).min(TOKENS);
            for jj in 0..rg {
                let j = j0 + jj;
                let (s, e) = (row_ptr[j] as usize, row_ptr[j + 1] as usize);
                let (cols, vals) = (&col_idx[s..e], &values[s..e]);
                let (o, xp) = (&mut out[jj], xt.as_ptr());
                // SAFETY: every column index is `< n` (`n` is one more than the largest index),
                // the token block ends at `t0 + tb ≤ tokens`, and `xt` holds `n * tokens` floats.
                unsafe {
                    match tb / 4 {
                        8 => sparse_row_block::<I, V, 8>(cols, vals, xp, tokens, t0, o),
                        7 => sparse_row_block::<I, V, 7>(cols, vals, xp, tokens, t0, o),
                        6 => sparse_row_block::<I, V, 6>(cols, vals, xp, tokens, t0, o),
                        5 => sparse_row_block::<I, V, 5>(cols, vals, xp, tokens, t0, o),
                        4 => sparse_row_block::<I, V, 4>(cols, vals, xp, tokens, t0, o),
                        3 => sparse_row_block::<I, V, 3>(cols, vals, xp, tokens, t0, o),
                        2 => sparse_row_block::<I, V, 2>(cols, vals, xp, tokens, t0, o),
                        _ => sparse_row_block::<I, V, 1>(cols, vals, xp, tokens, t0, o),
                    }
                }
            }
            // Y[t0 + t][j0 .. j0 + rg] += out[..rg][t]: 4 × 4 transposes for full blocks.
            let r4 = rg / 4 * 4;
            for tt in (0..tb).step_by(4) {
                for jj in (0..r4).step_by(4) {
                    // SAFETY: `out` rows `jj..jj + 4` hold `tb ≥ tt + 4` floats; `yr` has 4.
                    unsafe {
                        let v = [
                            vld1q_f32(out[jj].as_ptr().add(tt)),
                            vld1q_f32(out[jj + 1].as_ptr().add(tt)),
                            vld1q_f32(out[jj + 2].as_ptr().add(tt)),
                            vld1q_f32(out[jj + 3].as_ptr().add(tt)),
                        ];
                        let tr = transpose4(&v);
                        for q in 0..4 {
                            let yr = &mut y[(t0 + tt + q) * ldy + j0 + jj..][..4];
                            vst1q_f32(yr.as_mut_ptr(), vaddq_f32(vld1q_f32(yr.as_ptr()), tr[q]));
                        }
                    }
                }
                for q in 0..4 {
                    let yr = &mut y[(t0 + tt + q) * ldy + j0..][..rg];
                    for jj in r4..rg {
                        yr[jj] += out[jj][tt + q];
                    }
                }
            }
            t0 += tb;
        }
        // Remaining tokens (fewer than 4): direct dot products.
        for t in t4..tokens {
            for j in j0..j0 + rg {
                let (s, e) = (row_ptr[j] as usize, row_ptr[j + 1] as usize);
                let mut acc = 0.0f32;
                for (c, v) in col_idx[s..e].iter().zip(&values[s..e]) {
                    acc += v.to_f32() * xt[c.idx() * tokens + t];
                }
                y[t * ldy + j] += acc;
            }
        }
        j0 += rg;
    }
}

/// Sparse add of a CSR matrix (see [`super::sparse_add`]).
fn sparse_add(isa: Neon, s: Csr<'_>, x: Rows<'_>, y: RowsMut<'_>, xt: &mut [f32]) {
    let _ = isa;
    if s.row_ptr.len() < 2 || x.rows() == 0 {
        return;
    }
    // With few tokens the transposition does not pay: the scalar kernel gathers directly.
    if x.rows() < 8 || s.col_idx.is_empty() {
        scalar::sparse_add(s, x, y);
        return;
    }
    let n = s.col_idx.min_cols();
    with_typed_csr!(s, n, |csr| sparse_add_typed(csr, x, y, xt))
}

simd_kernels!(Neon);
