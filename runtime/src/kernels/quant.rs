//! Int8 weights ([`WeightSlice::I8`]) on the SIMD backends: the GEMM packs int8 rows times their
//! channel scale into the f32 panel the micro-kernel reads (dequantise in packing; the panel is
//! reused by every row tile, so the conversion costs one pass over the weights per GEMM).
//! Matrix-vector products and sparse terms with int8 values take the scalar kernels, which
//! apply the scale after each dot product.
//!
//! The packing is portable Rust (shared by AVX2 and NEON, no intrinsics): the element
//! `(p, j)` of the panel is `values[·] as f32 · scale(j)`, exactly what
//! [`super::MatB::at`] returns.

use super::driver::NR;
use super::types::{BLayout, MatB, QuantI8};

/// Packs `B[pc..pc + kc][col..col + cols]` of int8 `q` (layout and stride of `b`) into
/// `dst[p * NR + j]` as f32, columns `cols..NR` zero.
///
/// # Panics
/// If the block lies outside `q` or its scales, or `dst` is shorter than `kc * NR` (never for
/// the driver's calls, which stay inside the validated B).
pub(crate) fn pack(b: &MatB<'_>, q: QuantI8<'_>, pc: usize, kc: usize, col: usize, cols: usize, dst: &mut [f32]) {
    pack_panel::<NR>(b, q, pc, kc, col, cols, dst)
}

/// [`pack`] for a panel of `W` columns (`dst[p * W + j]`): the AVX-512 backend's panels are wider
/// than the driver's `NR`.
///
/// # Panics
/// As [`pack`], with `W` in place of `NR`.
pub(crate) fn pack_panel<const W: usize>(
    b: &MatB<'_>,
    q: QuantI8<'_>,
    pc: usize,
    kc: usize,
    col: usize,
    cols: usize,
    dst: &mut [f32],
) {
    let dst = &mut dst[..kc * W];
    let ld = b.ld;
    match b.layout {
        BLayout::NK => {
            for j in 0..cols {
                let s = q.scale(col + j);
                let row = &q.values[(col + j) * ld + pc..(col + j) * ld + pc + kc];
                for (p, &v) in row.iter().enumerate() {
                    dst[p * W + j] = f32::from(v) * s;
                }
            }
        }
        BLayout::KN => {
            let mut scale = [0.0f32; W];
            for (j, s) in scale.iter_mut().enumerate().take(cols) {
                *s = q.scale(col + j);
            }
            for p in 0..kc {
                let row = &q.values[(pc + p) * ld + col..(pc + p) * ld + col + cols];
                let d = &mut dst[p * W..p * W + cols];
                for ((x, &v), &s) in d.iter_mut().zip(row).zip(&scale) {
                    *x = f32::from(v) * s;
                }
            }
        }
    }
    if cols < W {
        for p in 0..kc {
            dst[p * W + cols..(p + 1) * W].fill(0.0);
        }
    }
}
