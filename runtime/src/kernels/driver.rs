//! Blocked GEMM driver shared by the SIMD backends (GotoBLAS/BLIS loop structure).
//!
//! Loop nest, outermost first:
//!
//! ```text
//! for jc in 0..n step NC                   output column block (bounds the partial-sum block)
//!   for ic in 0..m step MC                 output row block (A block of MC × KC stays in L2)
//!     for pc in 0..k step KC               k blocks (balanced; depend only on k)
//!       for jr in 0..NC step NR            pack B[pc.., jr..] into a KC × NR panel (L1)
//!         for ir in 0..MC step MR          micro-kernel: MR × NR tile, A read in place
//! ```
//!
//! `B` is converted to f32 while packing (one 16 KiB panel at a time, never a full copy). `A`
//! is read in place: the micro-kernel broadcasts `A[i][p]` from up to `MR` rows, which stay in
//! L1/L2 while the panel is reused across all row tiles. Partial sums of a k block go to `C`
//! itself, or, when the epilogue accumulates into `C`, to the `MC × NC` `part` scratch block;
//! the epilogue (bias, GELU, scaled accumulation) runs once, after the last k block.
//!
//! Determinism: the k blocking and the per-element operation sequence of the micro-kernel
//! (one sequential FMA chain per k block, blocks added in order, the same vector epilogue for
//! full and edge tiles) depend only on `k`, never on `m`, `n` or on where a tile starts, so any
//! split of the output between threads gives bit-identical results.

// Without a SIMD backend (e.g. Cortex-M) only the constants are used.
#![cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]

use super::{BLayout, MatB, Problem, Scratch};

/// Rows of the micro-kernel tile.
pub(crate) const MR: usize = 6;
/// Columns of the micro-kernel tile (and of a packed B panel).
pub(crate) const NR: usize = 16;
/// Largest k block.
pub(crate) const KC: usize = 256;
/// Largest row block (a multiple of `MR`; 264 covers ViT-L's 257 tokens in one block).
pub(crate) const MC: usize = 264;
/// Column block.
pub(crate) const NC: usize = 256;
/// Floats of a packed B panel.
pub(crate) const PACK_FLOATS: usize = KC * NR;
/// Floats of the partial-sum block.
pub(crate) const PART_FLOATS: usize = MC * NC;

/// Where and how a micro-kernel stores its `rows × cols` tile.
///
/// `part` (stride `ldp`) holds the running sum between k blocks: it is read unless `first` and
/// written unless `last`. On the `last` block the epilogue writes `C` (stride `ldc`). `bias` and
/// `scale` point at the tile's first column (null when absent).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tile {
    pub first: bool,
    pub last: bool,
    pub cols: usize,
    pub part: *mut f32,
    pub ldp: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub bias: *const f32,
    pub scale: *const f32,
    pub gelu: bool,
    pub accumulate: bool,
}

impl Tile {
    /// The tile of columns `j..j + cols` of output row 0 of `p`, computed in one k block and
    /// stored straight to C (what the matrix-vector kernels produce).
    pub(crate) fn row_segment(p: &Problem<'_>, j: usize, cols: usize) -> Tile {
        let c = p.c.wrapping_add(j);
        Tile {
            first: true,
            last: true,
            cols,
            part: c,
            ldp: p.ldc,
            c,
            ldc: p.ldc,
            bias: p.bias.map_or(core::ptr::null(), |b| b.as_ptr().wrapping_add(j)),
            scale: p.scale.map_or(core::ptr::null(), |s| s.as_ptr().wrapping_add(j)),
            gelu: p.gelu,
            accumulate: p.accumulate,
        }
    }
}

/// An instruction set with a GEMM micro-kernel. Implemented by zero-sized tokens that can only
/// be obtained after the CPU features were detected.
pub(crate) trait Arch: Copy {
    /// Packs `B[pc..pc + kc][col..col + cols]` (logical `k × n` coordinates, `cols ≤ NR`) as f32
    /// into `dst[p * NR + j]`. Columns `cols..NR` may be left unwritten when `cols ≤ NR / 2`,
    /// else they are zero.
    ///
    /// # Safety
    /// `b` is valid for the block (as checked by `MatB::is_valid`), `dst` is valid for
    /// `kc * NR` writes (64-byte aligned for speed, not required).
    unsafe fn pack_b(self, b: &MatB<'_>, pc: usize, kc: usize, col: usize, cols: usize, dst: *mut f32);

    /// Computes the `rows × t.cols` tile `A[rows × kc] · panel` (`rows ≤ MR`, `1 ≤ t.cols ≤ NR`,
    /// `kc ≥ 1`) and stores it as `t` says.
    ///
    /// # Safety
    /// `a` is valid for reads of `rows` rows of `kc` elements at stride `lda`; `bp` is a panel
    /// written by `pack_b` for `kc` and `t.cols`; the pointers of `t` are valid for the tile
    /// (`rows × t.cols`), with exclusive access to `part` and `c`.
    unsafe fn kernel(self, rows: usize, kc: usize, a: *const f32, lda: usize, bp: *const f32, t: &Tile);

    /// Matrix-vector product for `p.m == 1` and an NK-layout `B` (no packing).
    ///
    /// # Safety
    /// The invariants of [`Problem`] hold for `p`, `p.m == 1`, `p.k ≥ 1`, `p.b.layout == NK`.
    unsafe fn gemv_nk(self, p: &Problem<'_>);
}

/// Balanced blocks: the number of blocks of at most `max` and their common size, rounded up to
/// a multiple of `align`.
fn blocks(len: usize, max: usize, align: usize) -> (usize, usize) {
    let count = len.div_ceil(max).max(1);
    let size = len.div_ceil(count).div_ceil(align) * align;
    (len.div_ceil(size.max(1)).max(1), size.max(align))
}

/// Runs `p` with the micro-kernel of `arch`.
///
/// # Safety
/// The invariants of [`Problem`] hold for `p`. `pack` has at least `PACK_FLOATS` elements and is
/// preferably 64-byte aligned; `part` has at least `PART_FLOATS`.
pub(crate) unsafe fn gemm<A: Arch>(arch: A, pack: &mut [f32], part: &mut [f32], p: &Problem<'_>) {
    assert!(pack.len() >= PACK_FLOATS && part.len() >= PART_FLOATS);
    let (m, n, k) = (p.m, p.n, p.k);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // No products: the epilogue of zeros.
        // SAFETY: forwarded contract.
        unsafe { super::scalar::gemm_problem(p) };
        return;
    }
    if p.gemv && p.b.layout == BLayout::NK && m == 1 {
        // SAFETY: forwarded contract, with the checked preconditions.
        unsafe { arch.gemv_nk(p) };
        return;
    }
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
                    // the validated B; `bp` holds PACK_FLOATS ≥ kc·NR floats.
                    unsafe { arch.pack_b(&p.b, pc, kc, p.j0 + jc + jr, cols, bp) };
                    let col = jc + jr;
                    let mut ir = 0;
                    while ir < mc {
                        let rows = MR.min(mc - ir);
                        let row = ic + ir;
                        // All offsets below stay inside the validated rectangles: `row < m`,
                        // `col + cols ≤ n`, `pc + kc ≤ k`, and `ir < mc ≤ MC`, `jr < nc ≤ NC` for
                        // the partial-sum block.
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
                        // SAFETY: `a` rows `row..row + rows`, columns `pc..pc + kc` are inside
                        // the validated A; the tile is inside the problem's exclusive output
                        // (or the exclusive `part` buffer); `bp` was just packed for `kc, cols`.
                        unsafe { arch.kernel(rows, kc, a.wrapping_add(row * p.lda + pc), p.lda, bp, &t) };
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

/// Runs `p` with the micro-kernel of `arch` and the packing buffers of `scratch`, or with the
/// scalar kernel when `scratch` is too small for the driver (it was made for another backend).
///
/// # Safety
/// The invariants of [`Problem`] hold for `p`.
pub(crate) unsafe fn run<A: Arch>(arch: A, scratch: &mut Scratch, p: &Problem<'_>) {
    match scratch.simd_buffers() {
        // SAFETY: forwarded contract; the buffers have the sizes `gemm` needs.
        Some((pack, part)) => unsafe { gemm(arch, pack, part, p) },
        // SAFETY: forwarded contract.
        None => unsafe { super::scalar::gemm_problem(p) },
    }
}

#[cfg(test)]
mod tests {
    use super::blocks;

    #[test]
    fn balanced_blocks() {
        assert_eq!(blocks(768, 256, 1), (3, 256));
        assert_eq!(blocks(3072, 256, 1), (12, 256));
        assert_eq!(blocks(300, 256, 1), (2, 150));
        assert_eq!(blocks(197, 264, 6), (1, 198));
        assert_eq!(blocks(1, 256, 1), (1, 1));
        for len in 1..600 {
            let (count, size) = blocks(len, 256, 6);
            assert!(size <= 264 && count * size >= len && (count - 1) * size < len);
        }
    }
}
