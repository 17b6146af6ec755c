//! Code shared by the SIMD backends: what is the same algorithm on AVX2 and on NEON, written
//! once over the vector primitives of [`Simd`], and the two macros that generate each ISA's
//! GEMM entry points ([`simd_arch!`]) and kernel table ([`simd_kernels!`]).
//!
//! Every generic function here is `#[inline(always)]` and is instantiated only inside an ISA
//! function (on x86 one with `#[target_feature(enable = "avx2,fma,f16c")]`), so it compiles to
//! the same instructions as the per-ISA code it replaces: the primitives map one to one onto
//! the intrinsics the ISA modules used, in the same order, hence bit-identical results.

// Every function is used by both ISAs, but only one ISA is compiled at a time.
#![allow(clippy::needless_range_loop)]

use core::ptr;

use super::driver::{Tile, MR, NR};
use super::types::fits;

/// The f32 vector primitives of one ISA, implemented by the backend's token (whose existence
/// proves the CPU supports the ISA, which is why the register-only methods are safe).
pub(crate) trait Simd: Copy {
    /// A vector of [`Simd::LANES`] f32 values.
    type V: Copy;
    /// Lanes of [`Simd::V`] (at most [`MAX_LANES`]).
    const LANES: usize;
    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// `x` in every lane.
    fn splat(self, x: f32) -> Self::V;
    /// Loads `LANES` consecutive floats (unaligned).
    ///
    /// # Safety
    /// `p` is valid for `LANES` reads.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Stores `LANES` consecutive floats (unaligned).
    ///
    /// # Safety
    /// `p` is valid for `LANES` writes.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a - b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c` with one rounding (FMA).
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Sum of the lanes (in the ISA's own reduction order).
    fn hsum(self, v: Self::V) -> f32;
    /// Exact GELU of every lane (the ISA's vector form of `scalar::gelu_one`).
    fn gelu(self, v: Self::V) -> Self::V;
    /// Transposes the `LANES × LANES` block at `src` (row stride `lds`) into `dst` (row stride
    /// `ldd`): `dst[q * ldd + r] = src[r * lds + q]`.
    ///
    /// # Safety
    /// `src` is valid for `LANES` rows of `LANES` reads at stride `lds`, `dst` for `LANES` rows
    /// of `LANES` writes at stride `ldd`, and the two do not overlap.
    unsafe fn transpose_block(self, src: *const f32, lds: usize, dst: *mut f32, ldd: usize);
}

/// Implements [`Simd`] for an ISA token from one intrinsic expression per primitive (the
/// argument names are bound by the invocation). The token proves the ISA, so each expression
/// runs in an `unsafe` block whose only obligations are the pointer contracts of the primitive.
macro_rules! impl_simd {
    ($isa:ty, $v:ty, lanes = $lanes:literal, {
        zero => $zero:expr,
        splat($sx:ident) => $splat:expr,
        load($lp:ident) => $load:expr,
        store($sp:ident, $sv:ident) => $store:expr,
        add($aa:ident, $ab:ident) => $add:expr,
        sub($sa:ident, $sb:ident) => $sub:expr,
        mul($ma:ident, $mb:ident) => $mul:expr,
        mul_add($fa:ident, $fb:ident, $fc:ident) => $mul_add:expr,
        hsum($hv:ident) => $hsum:expr,
        gelu($gv:ident) => $gelu:expr,
        transpose_block($ts:ident, $tls:ident, $td:ident, $tld:ident) => $transpose:expr $(,)?
    }) => {
        impl Simd for $isa {
            type V = $v;
            const LANES: usize = $lanes;
            #[inline(always)]
            fn zero(self) -> $v {
                // SAFETY: `self` proves the ISA; register-only.
                unsafe { $zero }
            }
            #[inline(always)]
            fn splat(self, $sx: f32) -> $v {
                // SAFETY: `self` proves the ISA; register-only.
                unsafe { $splat }
            }
            #[inline(always)]
            unsafe fn load(self, $lp: *const f32) -> $v {
                // SAFETY: `self` proves the ISA; the pointer contract is the caller's.
                unsafe { $load }
            }
            #[inline(always)]
            unsafe fn store(self, $sp: *mut f32, $sv: $v) {
                // SAFETY: `self` proves the ISA; the pointer contract is the caller's.
                unsafe { $store }
            }
            #[inline(always)]
            fn add(self, $aa: $v, $ab: $v) -> $v {
                // SAFETY: `self` proves the ISA; register-only.
                unsafe { $add }
            }
            #[inline(always)]
            fn sub(self, $sa: $v, $sb: $v) -> $v {
                // SAFETY: `self` proves the ISA; register-only.
                unsafe { $sub }
            }
            #[inline(always)]
            fn mul(self, $ma: $v, $mb: $v) -> $v {
                // SAFETY: `self` proves the ISA; register-only.
                unsafe { $mul }
            }
            #[inline(always)]
            fn mul_add(self, $fa: $v, $fb: $v, $fc: $v) -> $v {
                // SAFETY: `self` proves the ISA; register-only.
                unsafe { $mul_add }
            }
            #[inline(always)]
            fn hsum(self, $hv: $v) -> f32 {
                // SAFETY: `self` proves the ISA; register-only.
                unsafe { $hsum }
            }
            #[inline(always)]
            fn gelu(self, $gv: $v) -> $v {
                // SAFETY: `self` proves the ISA; register-only.
                unsafe { $gelu }
            }
            #[inline(always)]
            unsafe fn transpose_block(self, $ts: *const f32, $tls: usize, $td: *mut f32, $tld: usize) {
                // SAFETY: `self` proves the ISA; the pointer contract is the caller's.
                unsafe { $transpose }
            }
        }
    };
}
pub(crate) use impl_simd;

/// The widest vector of any backend, in lanes (sizes the padded tail buffers).
pub(crate) const MAX_LANES: usize = 8;

/// A lane-wise function applied by [`map`].
pub(crate) trait VecMap<S: Simd> {
    /// The function of one vector.
    fn apply(&self, s: S, v: S::V) -> S::V;
}

impl<S: Simd, F: Fn(S::V) -> S::V> VecMap<S> for F {
    #[inline(always)]
    fn apply(&self, _: S, v: S::V) -> S::V {
        self(v)
    }
}

/// Exact GELU as a [`VecMap`].
pub(crate) struct Gelu;

impl<S: Simd> VecMap<S> for Gelu {
    #[inline(always)]
    fn apply(&self, s: S, v: S::V) -> S::V {
        s.gelu(v)
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM tile epilogue.

/// Stores a full-width tile (`t.cols == LANES * V`) through the epilogue.
///
/// # Safety
/// The pointers of `t` are valid for `R` rows of `LANES * V` elements (see [`Tile`]).
#[inline(always)]
pub(crate) unsafe fn store_tile<S: Simd, const R: usize, const V: usize>(s: S, acc: &[[S::V; V]; R], t: &Tile) {
    let l = S::LANES;
    // SAFETY: every access is inside row `i < R`, columns `< LANES · V` of the tile's `part`/`c`,
    // or the first `LANES · V` entries of `bias`/`scale` (contract).
    unsafe {
        for i in 0..R {
            for v in 0..V {
                let mut x = acc[i][v];
                let pp = t.part.add(i * t.ldp + l * v);
                if !t.first {
                    x = s.add(x, s.load(pp));
                }
                if !t.last {
                    s.store(pp, x);
                    continue;
                }
                if !t.bias.is_null() {
                    x = s.add(x, s.load(t.bias.add(l * v)));
                }
                if t.gelu {
                    x = s.gelu(x);
                }
                let cp = t.c.add(i * t.ldc + l * v);
                if t.accumulate {
                    let c0 = s.load(cp);
                    x = if t.scale.is_null() { s.add(c0, x) } else { s.mul_add(s.load(t.scale.add(l * v)), x, c0) };
                }
                s.store(cp, x);
            }
        }
    }
}

/// Stores a tile of `R` rows and `t.cols ≤ LANES * V` columns: full tiles directly, edge tiles
/// through zero-padded copies so that every element sees the same vector epilogue.
///
/// # Safety
/// The pointers of `t` are valid for `R` rows of `t.cols` elements (see [`Tile`]).
#[inline(always)]
pub(crate) unsafe fn finish<S: Simd, const R: usize, const V: usize>(s: S, acc: &[[S::V; V]; R], t: &Tile) {
    if t.cols == S::LANES * V {
        // SAFETY: forwarded contract.
        unsafe { store_tile::<S, R, V>(s, acc, t) };
        return;
    }
    let cols = t.cols;
    let mut tp = [0.0f32; MR * NR];
    let mut tc = [0.0f32; MR * NR];
    let mut tb = [0.0f32; NR];
    let mut ts = [0.0f32; NR];
    // SAFETY: copies `cols` elements of each of the `R` valid rows (contract) to or from the
    // local buffers, which have `NR ≥ LANES · V` columns and `MR ≥ R` rows and never overlap them.
    unsafe {
        if !t.first {
            for i in 0..R {
                ptr::copy_nonoverlapping(t.part.add(i * t.ldp), tp.as_mut_ptr().add(i * NR), cols);
            }
        }
        if t.last && t.accumulate {
            for i in 0..R {
                ptr::copy_nonoverlapping(t.c.add(i * t.ldc), tc.as_mut_ptr().add(i * NR), cols);
            }
        }
        if !t.bias.is_null() {
            ptr::copy_nonoverlapping(t.bias, tb.as_mut_ptr(), cols);
        }
        if !t.scale.is_null() {
            ptr::copy_nonoverlapping(t.scale, ts.as_mut_ptr(), cols);
        }
        let tt = Tile {
            cols: S::LANES * V,
            part: tp.as_mut_ptr(),
            ldp: NR,
            c: tc.as_mut_ptr(),
            ldc: NR,
            bias: if t.bias.is_null() { ptr::null() } else { tb.as_ptr() },
            scale: if t.scale.is_null() { ptr::null() } else { ts.as_ptr() },
            ..*t
        };
        store_tile::<S, R, V>(s, acc, &tt);
        if !t.last {
            for i in 0..R {
                ptr::copy_nonoverlapping(tp.as_ptr().add(i * NR), t.part.add(i * t.ldp), cols);
            }
        } else {
            for i in 0..R {
                ptr::copy_nonoverlapping(tc.as_ptr().add(i * NR), t.c.add(i * t.ldc), cols);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Row kernels.

/// Sum of `x` (4 vector accumulators, then a horizontal sum, then the tail in order).
#[inline(always)]
pub(crate) fn sum<S: Simd>(s: S, x: &[f32]) -> f32 {
    let (n, p, l) = (x.len(), x.as_ptr(), S::LANES);
    let mut acc = [s.zero(); 4];
    let mut i = 0;
    // SAFETY: every load reads `x[i..i + LANES]` with `i + LANES ≤ n`.
    unsafe {
        while i + 4 * l <= n {
            for u in 0..4 {
                acc[u] = s.add(acc[u], s.load(p.add(i + l * u)));
            }
            i += 4 * l;
        }
        while i + l <= n {
            acc[0] = s.add(acc[0], s.load(p.add(i)));
            i += l;
        }
    }
    let mut total = s.hsum(s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3])));
    for &v in &x[i..] {
        total += v;
    }
    total
}

/// `Σ (x - mean)²` (accumulated like [`sum`]).
#[inline(always)]
pub(crate) fn sum_sq_dev<S: Simd>(s: S, x: &[f32], mean: f32) -> f32 {
    let (n, p, l) = (x.len(), x.as_ptr(), S::LANES);
    let m = s.splat(mean);
    let mut acc = [s.zero(); 4];
    let mut i = 0;
    // SAFETY: every load reads `x[i..i + LANES]` with `i + LANES ≤ n`.
    unsafe {
        while i + 4 * l <= n {
            for u in 0..4 {
                let d = s.sub(s.load(p.add(i + l * u)), m);
                acc[u] = s.mul_add(d, d, acc[u]);
            }
            i += 4 * l;
        }
        while i + l <= n {
            let d = s.sub(s.load(p.add(i)), m);
            acc[0] = s.mul_add(d, d, acc[0]);
            i += l;
        }
    }
    let mut total = s.hsum(s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3])));
    for &v in &x[i..] {
        total += (v - mean) * (v - mean);
    }
    total
}

/// LayerNorm of one row: `out = (x - mean) / sqrt(var + eps) * gamma + beta`.
///
/// # Panics
/// If the four slices differ in length.
#[inline(always)]
pub(crate) fn layer_norm_row<S: Simd>(s: S, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let dim = x.len();
    assert!(gamma.len() == dim && beta.len() == dim && out.len() == dim);
    let mean = sum(s, x) / dim as f32;
    let var = sum_sq_dev(s, x, mean) / dim as f32;
    let inv = 1.0 / libm::sqrtf(var + eps);
    let (vm, vi) = (s.splat(mean), s.splat(inv));
    let l = S::LANES;
    let mut i = 0;
    // SAFETY: all four slices have length `dim` (asserted) and `i + LANES ≤ dim`.
    unsafe {
        while i + l <= dim {
            let v = s.mul(s.sub(s.load(x.as_ptr().add(i)), vm), vi);
            let r = s.mul_add(v, s.load(gamma.as_ptr().add(i)), s.load(beta.as_ptr().add(i)));
            s.store(out.as_mut_ptr().add(i), r);
            i += l;
        }
    }
    for j in i..dim {
        out[j] = (x[j] - mean) * inv * gamma[j] + beta[j];
    }
}

/// Applies `f` to `x` in place, `LANES` at a time; the tail goes through `f` on a zero-padded
/// copy (so every element sees the vector function).
#[inline(always)]
pub(crate) fn map<S: Simd, F: VecMap<S>>(s: S, x: &mut [f32], f: &F) {
    let (n, p, l) = (x.len(), x.as_mut_ptr(), S::LANES);
    let mut i = 0;
    // SAFETY: every vector access is `x[i..i + LANES]` with `i + LANES ≤ n`.
    unsafe {
        while i + l <= n {
            s.store(p.add(i), f.apply(s, s.load(p.add(i))));
            i += l;
        }
    }
    if i < n {
        let rest = n - i;
        let mut buf = [0.0f32; MAX_LANES];
        buf[..rest].copy_from_slice(&x[i..]);
        // SAFETY: `buf` has `MAX_LANES ≥ LANES` elements.
        unsafe { s.store(buf.as_mut_ptr(), f.apply(s, s.load(buf.as_ptr()))) };
        x[i..].copy_from_slice(&buf[..rest]);
    }
}

/// `y += s ⊙ x` (or `y += x`) over equal-length slices.
///
/// # Panics
/// If the slices differ in length.
#[inline(always)]
pub(crate) fn axpy<S: Simd>(s: S, y: &mut [f32], x: &[f32], scale: Option<&[f32]>) {
    let n = y.len();
    assert!(x.len() == n && scale.map_or(true, |sc| sc.len() == n));
    let (yp, xp, l) = (y.as_mut_ptr(), x.as_ptr(), S::LANES);
    let mut i = 0;
    // SAFETY: all slices have length `n` (asserted) and every access is `[i..i + LANES]` with
    // `i + LANES ≤ n`.
    unsafe {
        match scale {
            Some(sc) => {
                let sp = sc.as_ptr();
                while i + l <= n {
                    let r = s.mul_add(s.load(sp.add(i)), s.load(xp.add(i)), s.load(yp.add(i)));
                    s.store(yp.add(i), r);
                    i += l;
                }
                for j in i..n {
                    y[j] += sc[j] * x[j];
                }
            }
            None => {
                while i + l <= n {
                    s.store(yp.add(i), s.add(s.load(yp.add(i)), s.load(xp.add(i))));
                    i += l;
                }
                for j in i..n {
                    y[j] += x[j];
                }
            }
        }
    }
}

/// `xt[p * tokens + t] = x[t * ldx + p]` for `t < tokens`, `p < n` (`LANES × LANES` blocks,
/// then the edges element by element).
///
/// # Panics
/// If `xt` has fewer than `n * tokens` elements or `x` is too small for `tokens × n` at `ldx`.
#[inline(always)]
pub(crate) fn transpose_into<S: Simd>(s: S, x: &[f32], ldx: usize, tokens: usize, n: usize, xt: &mut [f32]) {
    assert!(n.checked_mul(tokens).is_some_and(|need| xt.len() >= need), "sparse_add: xt too small");
    if n == 0 || tokens == 0 {
        return;
    }
    assert!(fits(tokens, ldx, n, x.len()), "sparse_add: X too small");
    let l = S::LANES;
    let (tl, nl) = (tokens / l * l, n / l * l);
    let (xp, tp) = (x.as_ptr(), xt.as_mut_ptr());
    // SAFETY: reads `x[t * ldx + p]` and writes `xt[p * tokens + t]` for `t < tokens`, `p < n`,
    // both in bounds (asserted above); the blocks are inside those ranges.
    unsafe {
        for t0 in (0..tl).step_by(l) {
            for p0 in (0..nl).step_by(l) {
                s.transpose_block(xp.add(t0 * ldx + p0), ldx, tp.add(p0 * tokens + t0), tokens);
            }
            for p in nl..n {
                for r in 0..l {
                    *tp.add(p * tokens + t0 + r) = *xp.add((t0 + r) * ldx + p);
                }
            }
        }
        for t in tl..tokens {
            for p in 0..n {
                *tp.add(p * tokens + t) = *xp.add(t * ldx + p);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generated per-ISA entry points.

/// Implements [`super::driver::Arch`] for an ISA token from the module's `pack_nk`, `pack_kn`,
/// `ukernel::<R, V>` and `gemv_nk` (the micro-kernel is instantiated with `V = $half` vectors
/// for tiles of at most 8 columns and `V = $full` for wider ones).
macro_rules! simd_arch {
    ($isa:ty, half = $half:literal, full = $full:literal) => {
        impl Arch for $isa {
            unsafe fn pack_b(self, b: &MatB<'_>, pc: usize, kc: usize, col: usize, cols: usize, dst: *mut f32) {
                let ld = b.ld;
                let off = match b.layout {
                    BLayout::NK => col * ld + pc,
                    BLayout::KN => pc * ld + col,
                };
                // SAFETY: `self` proves the CPU features; the block is inside the validated B
                // (contract), so `off` is in bounds and the pack functions' ranges are valid.
                unsafe {
                    match (b.data, b.layout) {
                        (WeightSlice::F32(w), BLayout::NK) => pack_nk(w.as_ptr().add(off), ld, kc, cols, dst),
                        (WeightSlice::F16(w), BLayout::NK) => pack_nk(w.as_ptr().add(off), ld, kc, cols, dst),
                        (WeightSlice::BF16(w), BLayout::NK) => pack_nk(w.as_ptr().add(off), ld, kc, cols, dst),
                        (WeightSlice::F32(w), BLayout::KN) => pack_kn(w.as_ptr().add(off), ld, kc, cols, dst),
                        (WeightSlice::F16(w), BLayout::KN) => pack_kn(w.as_ptr().add(off), ld, kc, cols, dst),
                        (WeightSlice::BF16(w), BLayout::KN) => pack_kn(w.as_ptr().add(off), ld, kc, cols, dst),
                        // `dst` is valid for `kc * NR` writes (contract).
                        (WeightSlice::I8(q), _) => super::quant::pack::<NR>(
                            b,
                            q,
                            pc,
                            kc,
                            col,
                            cols,
                            core::slice::from_raw_parts_mut(dst, kc * NR),
                        ),
                    }
                }
            }

            unsafe fn kernel(self, rows: usize, kc: usize, a: *const f32, lda: usize, bp: *const f32, t: &Tile) {
                // SAFETY: `self` proves the CPU features; pointer contract forwarded, `rows`
                // matches R.
                unsafe {
                    if t.cols > 8 {
                        match rows {
                            6 => ukernel::<6, $full>(kc, a, lda, bp, t),
                            5 => ukernel::<5, $full>(kc, a, lda, bp, t),
                            4 => ukernel::<4, $full>(kc, a, lda, bp, t),
                            3 => ukernel::<3, $full>(kc, a, lda, bp, t),
                            2 => ukernel::<2, $full>(kc, a, lda, bp, t),
                            _ => ukernel::<1, $full>(kc, a, lda, bp, t),
                        }
                    } else {
                        match rows {
                            6 => ukernel::<6, $half>(kc, a, lda, bp, t),
                            5 => ukernel::<5, $half>(kc, a, lda, bp, t),
                            4 => ukernel::<4, $half>(kc, a, lda, bp, t),
                            3 => ukernel::<3, $half>(kc, a, lda, bp, t),
                            2 => ukernel::<2, $half>(kc, a, lda, bp, t),
                            _ => ukernel::<1, $half>(kc, a, lda, bp, t),
                        }
                    }
                }
            }

            unsafe fn gemv_nk(self, p: &Problem<'_>) {
                // SAFETY: `self` proves the CPU features; contract forwarded.
                unsafe {
                    match p.b.data {
                        WeightSlice::F32(w) => gemv_nk(p, w.as_ptr()),
                        WeightSlice::F16(w) => gemv_nk(p, w.as_ptr()),
                        WeightSlice::BF16(w) => gemv_nk(p, w.as_ptr()),
                        // Int8 rows: the scalar kernel (one dot product per output, then its scale).
                        WeightSlice::I8(_) => super::scalar::gemm_problem(p),
                    }
                }
            }
        }
    };
}
pub(crate) use simd_arch;

/// Implements the kernel table [`super::backend::Kernels`] for an ISA token from the module's
/// row kernels `sparse_add(isa, ..)`, `layer_norm_row(isa, ..)`, `softmax_row(isa, ..)`,
/// `gelu_slice(isa, ..)` and `axpy_vec(isa, ..)`, and the shared GEMM driver.
macro_rules! simd_kernels {
    ($isa:ty) => {
        impl Kernels for $isa {
            unsafe fn gemm(&self, scratch: &mut Scratch, p: &Problem<'_>) {
                // SAFETY: forwarded contract; `self` proves the CPU features.
                unsafe { super::driver::run(*self, scratch, p) }
            }

            fn sparse_add(&self, s: Csr<'_>, x: Rows<'_>, y: RowsMut<'_>, xt: &mut [f32]) {
                if let WeightSlice::I8(_) = s.values {
                    // Int8 values with row scales: the scalar kernel.
                    return super::scalar::sparse_add(s, x, y);
                }
                sparse_add(*self, s, x, y, xt)
            }

            fn layer_norm(&self, x: Rows<'_>, gamma: &[f32], beta: &[f32], eps: f32, out: RowsMut<'_>) {
                let (gamma, beta) = (&gamma[..x.cols()], &beta[..x.cols()]);
                let mut out = out;
                for r in 0..x.rows() {
                    // SAFETY: `self` proves the CPU features.
                    unsafe { layer_norm_row(*self, x.row(r), gamma, beta, eps, out.row_mut(r)) };
                }
            }

            fn softmax_rows(&self, rows: usize, cols: usize, x: &mut [f32], ld: usize, scale: f32) {
                for r in 0..rows {
                    // SAFETY: `self` proves the CPU features.
                    unsafe { softmax_row(*self, &mut x[r * ld..r * ld + cols], scale) };
                }
            }

            fn gelu(&self, x: &mut [f32]) {
                // SAFETY: `self` proves the CPU features.
                unsafe { gelu_slice(*self, x) };
            }

            fn add_scaled(&self, y: &mut [f32], x: &[f32], scale: Option<&[f32]>) {
                match scale {
                    // SAFETY: `self` proves the CPU features.
                    None => unsafe { axpy_vec(*self, y, x, None) },
                    Some(s) => {
                        let d = s.len();
                        for (yc, xc) in y.chunks_mut(d).zip(x.chunks(d)) {
                            let l = yc.len();
                            // SAFETY: `self` proves the CPU features.
                            unsafe { axpy_vec(*self, yc, xc, Some(&s[..l])) };
                        }
                    }
                }
            }
        }
    };
}
pub(crate) use simd_kernels;

/// A CSR matrix with typed indices and values, what the ISA sparse kernels work on: rows
/// `row_ptr.len() - 1`, columns `n` (one more than the largest index).
pub(crate) struct TypedCsr<'a, I, V> {
    pub row_ptr: &'a [u32],
    pub col_idx: &'a [I],
    pub values: &'a [V],
    pub n: usize,
}

/// Evaluates `$body` with `$csr` bound to the [`TypedCsr`] of the [`super::Csr`] `$s` (every
/// index type × value type) with `n = $n` columns.
macro_rules! with_typed_csr {
    ($s:expr, $n:expr, |$csr:ident| $body:expr) => {{
        let s: Csr<'_> = $s;
        let (row_ptr, n) = (s.row_ptr, $n);
        match s.col_idx {
            SparseIndices::U16(col_idx) => {
                with_typed_values!(s.values, row_ptr, col_idx, n, |$csr| $body)
            }
            SparseIndices::U32(col_idx) => {
                with_typed_values!(s.values, row_ptr, col_idx, n, |$csr| $body)
            }
        }
    }};
}

/// The value-type half of [`with_typed_csr!`]: binds `$csr` to the [`TypedCsr`] of the given
/// row pointers, typed indices, `n` and the typed values of `$values`.
macro_rules! with_typed_values {
    ($values:expr, $row_ptr:ident, $col_idx:ident, $n:ident, |$csr:ident| $body:expr) => {
        match $values {
            WeightSlice::F32(values) => {
                let $csr = TypedCsr { row_ptr: $row_ptr, col_idx: $col_idx, values, n: $n };
                $body
            }
            WeightSlice::F16(values) => {
                let $csr = TypedCsr { row_ptr: $row_ptr, col_idx: $col_idx, values, n: $n };
                $body
            }
            WeightSlice::BF16(values) => {
                let $csr = TypedCsr { row_ptr: $row_ptr, col_idx: $col_idx, values, n: $n };
                $body
            }
            // Int8 values never get here: the kernel table sends them to the scalar kernel.
            WeightSlice::I8(_) => {}
        }
    };
}
pub(crate) use with_typed_csr;
pub(crate) use with_typed_values;
