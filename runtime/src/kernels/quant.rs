//! Int8 weights ([`WeightSlice::I8`]) on the SIMD backends: the GEMM packs int8 rows times their
//! channel scale into the f32 panel the micro-kernel reads (dequantise in packing; the panel is
//! reused by every row tile, so the conversion costs one pass over the weights per GEMM).
//! Matrix-vector products and sparse terms with int8 values take the scalar kernels, which
//! apply the scale after each dot product.
//!
//! The packing is portable Rust (shared by AVX2 and NEON, no intrinsics): the element
//! `(p, j)` of the panel is `values[·] as f32 · scale(j)`, exactly what
//! [`super::MatB::at`] returns.

use super::types::{BLayout, MatB, QuantI8};

/// Packs `B[pc..pc + kc][col..col + cols]` of int8 `q` (layout and stride of `b`) into
/// `dst[p * NR + j]` as f32, columns `cols..NR` zero (`NR`: the panel width of the calling
/// backend's micro-kernel).
///
/// # Panics
/// If the block lies outside `q` or its scales, or `dst` is shorter than `kc * NR` (never for
/// the driver's calls, which stay inside the validated B).
pub(crate) fn pack<const NR: usize>(
    b: &MatB<'_>,
    q: QuantI8<'_>,
    pc: usize,
    kc: usize,
    col: usize,
    cols: usize,
    dst: &mut [f32],
) {
    let dst = &mut dst[..kc * NR];
    let ld = b.ld;
    match b.layout {
        BLayout::NK => {
            for j in 0..cols {
                let s = q.scale(col + j);
                let row = &q.values[(col + j) * ld + pc..(col + j) * ld + pc + kc];
                for (p, &v) in row.iter().enumerate() {
                    dst[p * NR + j] = f32::from(v) * s;
                }
            }
        }
        BLayout::KN => {
            let mut scale = [0.0f32; NR];
            for (j, s) in scale.iter_mut().enumerate().take(cols) {
                *s = q.scale(col + j);
            }
            for p in 0..kc {
                let row = &q.values[(pc + p) * ld + col..(pc + p) * ld + col + cols];
                let d = &mut dst[p * NR..p * NR + cols];
                for ((x, &v), &s) in d.iter_mut().zip(row).zip(&scale) {
                    *x = f32::from(v) * s;
                }
            }
        }
    }
    if cols < NR {
        for p in 0..kc {
            dst[p * NR + cols..(p + 1) * NR].fill(0.0);
        }
    }
}
