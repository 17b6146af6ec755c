//! AVX-512F GEMM (x86_64): a 12 × 32 micro-kernel (24 zmm accumulators of the 32 registers,
//! two panel loads and twelve broadcasts per k step) over 32-column packed panels of `B`.
//!
//! Everything except the GEMM is the [`Avx2`] kernel table, and the GEMM computes every output
//! element with the same operation sequence as the AVX2 driver (same k blocks of at most
//! `KC`, one FMA chain per element in order, the same epilogue formulas lane for lane,
//! including the GELU polynomial), so the results are **bit-identical** to the AVX2 backend
//! (`tests/kernels.rs` checks it) and to any thread count.
//!
//! **Opt-in** (`FACTORVIT_AVX512=1`): on the project's AMD EPYC (Zen 4, which runs a zmm FMA
//! as two 256-bit halves, so the FLOP peak is the AVX2 one) it measured 10–15 % *slower* end to
//! end than the AVX2 kernels (docs/PERFORMANCE.md), so detection does not pick it by default.
//! It is kept, tested bit-identical, for cores with full-width 512-bit FMA units. Notes from
//! tuning: unrolling the k loop makes the compiler hoist the broadcasts of later steps and
//! spill accumulators (24 of the 32 registers are accumulators), hence one step per iteration;
//! a k block of 128 (a 16 KiB panel) instead of 256 did not help.
//!
//! # Safety contract
//! Every `unsafe fn` with `#[target_feature(enable = "avx512f,avx2,fma,f16c")]` requires that the
//! CPU has those features; callers discharge that by holding an [`Avx512`] token, which exists
//! only after [`Backend::detect`] selected [`Backend::Avx512`]. Pointer requirements are in each
//! function's `# Safety` section.

// The module is compiled only with Rust ≥ 1.89 (`cfg(factorvit_avx512)`, set by build.rs), where
// the AVX-512 intrinsics are stable: the crate's older MSRV does not apply to it.
#![allow(clippy::needless_range_loop, clippy::incompatible_msrv, unused_unsafe)]

use core::arch::x86_64::*;

use half::{bf16, f16};

use super::backend::Kernels;
use super::driver::{Tile, KC, MC, NC, PACK_FLOATS, PART_FLOATS};
use super::x86::{Avx2, Elem};
use super::{BLayout, Backend, Csr, MatB, Problem, Rows, RowsMut, Scratch, WeightSlice};

/// Rows of the micro-kernel tile.
pub(crate) const MR: usize = 12;
/// Columns of the micro-kernel tile and of a packed panel (two zmm).
pub(crate) const NR: usize = 32;
/// Floats of a packed panel.
const PANEL_FLOATS: usize = KC * NR;
const _: () = assert!(PANEL_FLOATS == 2 * PACK_FLOATS && MC % MR == 0 && NC % NR == 0);

/// Proof that the CPU supports AVX-512F (and AVX2, FMA, F16C), only constructed after detection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512 {
    _detected: (),
}

impl Avx512 {
    /// The token, if [`Backend::detect`] selected AVX-512.
    pub(crate) fn get() -> Option<&'static Avx512> {
        (Backend::detect() == Backend::Avx512).then_some(&Avx512 { _detected: () })
    }

    /// The AVX2 token (AVX-512 detection requires AVX2, FMA and F16C too).
    fn avx2(self) -> &'static Avx2 {
        Avx2::get().expect("AVX-512 is only detected on CPUs with AVX2, FMA and F16C")
    }
}

// ---------------------------------------------------------------------------------------------
// Vector math: `x86::gelu8`'s formula, lane for lane (each operation is correctly rounded, so
// the 16-lane form gives the same bits as the 8-lane one).

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn exp16(x: __m512) -> __m512 {
    // SAFETY: register-only intrinsics; the CPU features are the module contract.
    unsafe {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.336_54)), _mm512_set1_ps(88.376_26));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_add_ps(
            _mm512_mul_ps(x, _mm512_set1_ps(core::f32::consts::LOG2_E)),
            _mm512_set1_ps(0.5),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
        let y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0));
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(e))
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn erf16(x: __m512) -> __m512 {
    // SAFETY: register-only intrinsics; the CPU features are the module contract.
    unsafe {
        let sign = _mm512_set1_epi32(i32::MIN);
        let xi = _mm512_castps_si512(x);
        let ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
        let one = _mm512_set1_ps(1.0);
        let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.327_591_1), ax, one));
        let mut p = _mm512_set1_ps(1.061_405_4);
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453_152_1));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421_413_8));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284_496_74));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254_829_6));
        p = _mm512_mul_ps(p, t);
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(ax, ax)));
        let y = _mm512_fnmadd_ps(p, e, one);
        _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), _mm512_and_si512(xi, sign)))
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn gelu16(x: __m512) -> __m512 {
    // SAFETY: register-only intrinsics; the CPU features are the module contract.
    unsafe {
        let e = erf16(_mm512_mul_ps(x, _mm512_set1_ps(core::f32::consts::FRAC_1_SQRT_2)));
        _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5), x), _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }
}

/// Mask of the first `n` (≤ 16) lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

// ---------------------------------------------------------------------------------------------
// Packing.

/// Packs `kc × cols` (`cols ≤ 32`) of an NK-layout B starting at `src` (element `(pc, col)`)
/// into `dst[p * NR + j]` (8 × 8 transposes of the AVX2 backend). Columns `cols..32` are zero,
/// except that columns `16..32` are left unwritten when `cols ≤ 16` (the one-vector kernel
/// does not read them).
///
/// # Safety
/// Rows `0..cols` of `src` (stride `ld`) are valid for `kc` reads; `dst` for `kc * NR` writes.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn pack_nk<T: Elem>(src: *const T, ld: usize, kc: usize, cols: usize, dst: *mut f32) {
    // SAFETY: reads stay in rows `< cols` and columns `< kc` of `src`, writes in
    // `dst[p * NR + j]` for `p < kc`, `j < NR` (contract); the CPU features are the module's.
    unsafe {
        let groups = if cols > 16 { NR / 8 } else { NR / 16 };
        for g in 0..groups {
            let gdst = dst.add(g * 8);
            let gcols = cols.saturating_sub(g * 8).min(8);
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
                    let t = super::x86::transpose8(&v);
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
                        *gdst.add(p * NR + r) = if r < gcols { (*src.add((g * 8 + r) * ld + p)).to_f32() } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// Packs `kc × cols` (`cols ≤ 32`) of a KN-layout B starting at `src` into `dst[p * NR + j]`,
/// columns `cols..32` zero (`16..32` unwritten when `cols ≤ 16`, as [`pack_nk`]).
///
/// # Safety
/// Rows `0..kc` of `src` (stride `ld`) are valid for `cols` reads; `dst` for `kc * NR` writes.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn pack_kn<T: Elem>(src: *const T, ld: usize, kc: usize, cols: usize, dst: *mut f32) {
    // SAFETY: reads `src[p * ld + j]` for `p < kc`, `j < cols`; writes `dst[p * NR + j]` for
    // `j < NR` (contract); the CPU features are the module's.
    unsafe {
        let full = cols / 8;
        for p in 0..kc {
            let s = src.add(p * ld);
            let d = dst.add(p * NR);
            for g in 0..full {
                _mm256_storeu_ps(d.add(8 * g), T::load8(s.add(8 * g)));
            }
            let width = if cols > 16 { NR } else { NR / 2 };
            for j in 8 * full..width {
                *d.add(j) = if j < cols { (*s.add(j)).to_f32() } else { 0.0 };
            }
        }
    }
}

/// Packs `B[pc..pc + kc][col..col + cols]` (logical `k × n` coordinates) into `dst`.
///
/// # Safety
/// The block is inside the validated `b`; `dst` is valid for `kc * NR` writes.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn pack_b(b: &MatB<'_>, pc: usize, kc: usize, col: usize, cols: usize, dst: *mut f32) {
    let ld = b.ld;
    let off = match b.layout {
        BLayout::NK => col * ld + pc,
        BLayout::KN => pc * ld + col,
    };
    // SAFETY: the block is inside the validated B (contract), so `off` is in bounds.
    unsafe {
        match (b.data, b.layout) {
            (WeightSlice::F32(w), BLayout::NK) => pack_nk(w.as_ptr().add(off), ld, kc, cols, dst),
            (WeightSlice::F16(w), BLayout::NK) => pack_nk::<f16>(w.as_ptr().add(off), ld, kc, cols, dst),
            (WeightSlice::BF16(w), BLayout::NK) => pack_nk::<bf16>(w.as_ptr().add(off), ld, kc, cols, dst),
            (WeightSlice::F32(w), BLayout::KN) => pack_kn(w.as_ptr().add(off), ld, kc, cols, dst),
            (WeightSlice::F16(w), BLayout::KN) => pack_kn::<f16>(w.as_ptr().add(off), ld, kc, cols, dst),
            (WeightSlice::BF16(w), BLayout::KN) => pack_kn::<bf16>(w.as_ptr().add(off), ld, kc, cols, dst),
            // `dst` is valid for `kc * NR` writes (contract).
            (WeightSlice::I8(q), _) => {
                super::quant::pack_panel::<NR>(b, q, pc, kc, col, cols, core::slice::from_raw_parts_mut(dst, kc * NR))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Micro-kernel and epilogue.

/// Stores the `R × t.cols` tile `acc` as `t` says: the operation sequence of
/// `simd::store_tile` per element (partial sum, bias, GELU, scaled accumulation), with masked
/// loads and stores for the columns past `t.cols`.
///
/// # Safety
/// The pointers of `t` are valid for `R` rows of `t.cols` elements (see [`Tile`]).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn store_tile<const R: usize, const V: usize>(acc: &[[__m512; V]; R], t: &Tile) {
    // SAFETY: every access is masked to columns `< t.cols` of row `i < R` of the tile, or of the
    // first `t.cols` entries of `bias`/`scale` (contract); masked-off lanes are not accessed.
    unsafe {
        let masks: [__mmask16; V] = core::array::from_fn(|v| lanes(t.cols.saturating_sub(16 * v)));
        let mut bias = [_mm512_setzero_ps(); V];
        let mut scale = [_mm512_setzero_ps(); V];
        if t.last {
            for v in 0..V {
                if !t.bias.is_null() {
                    bias[v] = _mm512_maskz_loadu_ps(masks[v], t.bias.add(16 * v));
                }
                if !t.scale.is_null() {
                    scale[v] = _mm512_maskz_loadu_ps(masks[v], t.scale.add(16 * v));
                }
            }
        }
        for i in 0..R {
            for v in 0..V {
                let m = masks[v];
                let mut x = acc[i][v];
                let pp = t.part.add(i * t.ldp + 16 * v);
                if !t.first {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, pp));
                }
                if !t.last {
                    _mm512_mask_storeu_ps(pp, m, x);
                    continue;
                }
                if !t.bias.is_null() {
                    x = _mm512_add_ps(x, bias[v]);
                }
                if t.gelu {
                    x = gelu16(x);
                }
                let cp = t.c.add(i * t.ldc + 16 * v);
                if t.accumulate {
                    let c0 = _mm512_maskz_loadu_ps(m, cp);
                    x = if t.scale.is_null() { _mm512_add_ps(c0, x) } else { _mm512_fmadd_ps(scale[v], x, c0) };
                }
                _mm512_mask_storeu_ps(cp, m, x);
            }
        }
    }
}

/// The `R × 16V` micro-kernel: `acc[i][j] = Σ_p a[i * lda + p] · b[p * NR + j]`, one FMA chain
/// per element in order `p = 0..kc`, then the epilogue.
///
/// # Safety
/// `a` is valid for `R` rows of `kc` reads at stride `lda`; `b` is a panel packed for `kc`;
/// the pointers of `t` are valid for the `R × t.cols` tile (`t.cols ≤ 16 V`), with exclusive
/// access to `part` and `c`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn ukernel<const R: usize, const V: usize>(kc: usize, a: *const f32, lda: usize, b: *const f32, t: &Tile) {
    // SAFETY: reads `a[i * lda + p]` (`i < R`, `p < kc`) and `b[p * NR + j]` (`j < 16 V ≤ NR`),
    // in the ranges of the contract; the store is `store_tile`'s contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let mut rows = [a; R];
        for i in 0..R {
            rows[i] = a.add(i * lda);
        }
        let mut bp = b;
        macro_rules! step {
            ($off:expr) => {
                let mut bv = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    bv[v] = _mm512_loadu_ps(bp.add($off * NR + 16 * v));
                }
                for i in 0..R {
                    let ai = _mm512_set1_ps(*rows[i].add($off));
                    for v in 0..V {
                        acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
                    }
                }
            };
        }
        // One k step per iteration: unrolled, the compiler hoists the broadcasts of later steps
        // and spills accumulators (24 of the 32 registers are accumulators).
        for _ in 0..kc {
            step!(0);
            for i in 0..R {
                rows[i] = rows[i].add(1);
            }
            bp = bp.add(NR);
        }
        store_tile::<R, V>(&acc, t);
    }
}

/// Dispatches a tile of `rows ≤ MR` rows and `t.cols ≤ NR` columns to its micro-kernel.
///
/// # Safety
/// As [`ukernel`].
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn kernel(rows: usize, kc: usize, a: *const f32, lda: usize, bp: *const f32, t: &Tile) {
    macro_rules! by_rows {
        ($v:literal) => {
            match rows {
                12 => ukernel::<12, $v>(kc, a, lda, bp, t),
                11 => ukernel::<11, $v>(kc, a, lda, bp, t),
                10 => ukernel::<10, $v>(kc, a, lda, bp, t),
                9 => ukernel::<9, $v>(kc, a, lda, bp, t),
                8 => ukernel::<8, $v>(kc, a, lda, bp, t),
                7 => ukernel::<7, $v>(kc, a, lda, bp, t),
                6 => ukernel::<6, $v>(kc, a, lda, bp, t),
                5 => ukernel::<5, $v>(kc, a, lda, bp, t),
                4 => ukernel::<4, $v>(kc, a, lda, bp, t),
                3 => ukernel::<3, $v>(kc, a, lda, bp, t),
                2 => ukernel::<2, $v>(kc, a, lda, bp, t),
                _ => ukernel::<1, $v>(kc, a, lda, bp, t),
            }
        };
    }
    // SAFETY: forwarded contract.
    unsafe {
        if t.cols > 16 {
            by_rows!(2)
        } else {
            by_rows!(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver: the loop nest of `driver::gemm` with 12 × 32 tiles.

/// Balanced blocks (as `driver::blocks`): the number of blocks of at most `max` and their
/// common size, rounded up to a multiple of `align`.
fn blocks(len: usize, max: usize, align: usize) -> (usize, usize) {
    let count = len.div_ceil(max).max(1);
    let size = len.div_ceil(count).div_ceil(align) * align;
    (len.div_ceil(size.max(1)).max(1), size.max(align))
}

/// Runs `p`: the k blocking is `driver::gemm`'s (it depends only on `k`), so every element gets
/// the AVX2 driver's operation sequence.
///
/// # Safety
/// The invariants of [`Problem`] hold for `p`; `pack` has `PANEL_FLOATS` floats, `part`
/// `PART_FLOATS`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn gemm(pack: &mut [f32], part: &mut [f32], p: &Problem<'_>) {
    assert!(pack.len() >= PANEL_FLOATS && part.len() >= PART_FLOATS);
    let (m, n, k) = (p.m, p.n, p.k);
    let (kb, kcb) = blocks(k, KC, 1);
    let (_, mcb) = blocks(m, MC, MR);
    let use_part = p.accumulate && kb > 1;
    let bp = pack.as_mut_ptr();
    let partp = part.as_mut_ptr();
    let a = p.a.as_ptr();
    let bias = p.bias.map_or(core::ptr::null(), |b| b.as_ptr());
    let scale = p.scale.map_or(core::ptr::null(), |s| s.as_ptr());
    let mut jc = 0;
    while jc < n {
        let nc = NC.min(n - jc);
        let mut ic = 0;
        while ic < m {
            let mc = mcb.min(m - ic);
            for kbi in 0..kb {
                let pc = kbi * kcb;
                let kc = kcb.min(k - pc);
                let mut jr = 0;
                while jr < nc {
                    let cols = NR.min(nc - jr);
                    // SAFETY: columns `p.j0 + jc + jr ..+cols` and rows `pc..pc + kc` are inside
                    // the validated B; `bp` holds PANEL_FLOATS ≥ kc·NR floats.
                    unsafe { pack_b(&p.b, pc, kc, p.j0 + jc + jr, cols, bp) };
                    let col = jc + jr;
                    let mut ir = 0;
                    while ir < mc {
                        let rows = MR.min(mc - ir);
                        let row = ic + ir;
                        // All offsets stay inside the validated rectangles (`row < m`,
                        // `col + cols ≤ n`, `pc + kc ≤ k`; `ir < mc ≤ MC`, `jr < nc ≤ NC` for
                        // the partial-sum block).
                        let cptr = p.c.wrapping_add(row * p.ldc + col);
                        let (tpart, ldp) =
                            if use_part { (partp.wrapping_add(ir * NC + jr), NC) } else { (cptr, p.ldc) };
                        let t = Tile {
                            first: kbi == 0,
                            last: kbi + 1 == kb,
                            cols,
                            part: tpart,
                            ldp,
                            c: cptr,
                            ldc: p.ldc,
                            bias: if bias.is_null() { bias } else { bias.wrapping_add(col) },
                            scale: if scale.is_null() { scale } else { scale.wrapping_add(col) },
                            gelu: p.gelu,
                            accumulate: p.accumulate,
                        };
                        // SAFETY: A rows `row..row + rows`, columns `pc..pc + kc` are inside the
                        // validated A; the tile is inside the exclusive output (or `part`); `bp`
                        // was just packed for `kc, cols`.
                        unsafe { kernel(rows, kc, a.wrapping_add(row * p.lda + pc), p.lda, bp, &t) };
                        ir += MR;
                    }
                    jr += NR;
                }
            }
            ic += mc;
        }
        jc += nc;
    }
}

impl Kernels for Avx512 {
    unsafe fn gemm(&self, scratch: &mut Scratch, p: &Problem<'_>) {
        let avx2 = self.avx2();
        // The AVX2 driver's special cases (empty, k = 0, matrix-vector) are shared: same code,
        // same results.
        if p.m == 0 || p.n == 0 || p.k == 0 || (p.gemv && p.b.layout == BLayout::NK && p.m == 1) {
            // SAFETY: forwarded contract.
            return unsafe { avx2.gemm(scratch, p) };
        }
        match scratch.simd_buffers_of(PANEL_FLOATS) {
            // SAFETY: `self` proves the CPU features; forwarded contract; buffer sizes checked.
            Some((pack, part)) => unsafe { gemm(pack, part, p) },
            // A scratch made for another backend: the AVX2 driver checks it in turn.
            // SAFETY: forwarded contract.
            None => unsafe { avx2.gemm(scratch, p) },
        }
    }

    fn sparse_add(&self, s: Csr<'_>, x: Rows<'_>, y: RowsMut<'_>, xt: &mut [f32]) {
        self.avx2().sparse_add(s, x, y, xt)
    }

    fn layer_norm(&self, x: Rows<'_>, gamma: &[f32], beta: &[f32], eps: f32, out: RowsMut<'_>) {
        self.avx2().layer_norm(x, gamma, beta, eps, out)
    }

    fn softmax_rows(&self, rows: usize, cols: usize, x: &mut [f32], ld: usize, scale: f32) {
        self.avx2().softmax_rows(rows, cols, x, ld, scale)
    }

    fn gelu(&self, x: &mut [f32]) {
        self.avx2().gelu(x)
    }

    fn add_scaled(&self, y: &mut [f32], x: &[f32], scale: Option<&[f32]>) {
        self.avx2().add_scaled(y, x, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::{blocks, lanes};

    #[test]
    fn blocks_match_the_avx2_driver() {
        for len in 1..700 {
            assert_eq!(blocks(len, 256, 1), blocks(len, super::KC, 1));
            let (count, size) = blocks(len, 264, 12);
            assert!(size % 12 == 0 && count * size >= len && (count - 1) * size < len);
        }
        assert_eq!(lanes(0), 0);
        assert_eq!(lanes(5), 0b11111);
        assert_eq!(lanes(16), 0xFFFF);
        assert_eq!(lanes(40), 0xFFFF);
    }
}
