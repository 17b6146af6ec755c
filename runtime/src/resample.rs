//! Resampling of position-embedding grids, matching PyTorch's `F.interpolate`.
//!
//! * [`bicubic`]: `mode="bicubic", align_corners=False, antialias=False` (what transformers'
//!   DINOv2 and ViT use): cubic convolution with A = −0.75, source coordinate
//!   `(dst + 0.5)·in/out − 0.5`, neighbours clamped to the border.
//! * [`bicubic_antialias`]: `antialias=True` (what timm's `resample_abs_pos_embed` uses):
//!   separable, A = −0.5 (as PIL), support widened by the scale when shrinking, weights
//!   normalised to sum to 1 over the in-range taps.

use alloc::vec;
use alloc::vec::Vec;

fn cubic_inner(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

fn cubic_outer(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// The four taps (clamped indices and weights) of PyTorch's non-antialiased bicubic.
fn torch_cubic_taps(dst: usize, in_size: usize, out_size: usize) -> ([usize; 4], [f32; 4]) {
    const A: f32 = -0.75;
    let scale = in_size as f32 / out_size as f32;
    let real = scale * (dst as f32 + 0.5) - 0.5;
    let base = libm::floorf(real);
    let t = real - base;
    let w = [cubic_outer(t + 1.0, A), cubic_inner(t, A), cubic_inner(1.0 - t, A), cubic_outer(2.0 - t, A)];
    let mut idx = [0usize; 4];
    for (k, slot) in idx.iter_mut().enumerate() {
        let i = base as i64 - 1 + k as i64;
        *slot = i.clamp(0, in_size as i64 - 1) as usize;
    }
    (idx, w)
}

/// Resamples a `[in_h, in_w, dim]` grid (channels last) to `[out_h, out_w, dim]` with
/// PyTorch's non-antialiased bicubic interpolation.
pub fn bicubic(src: &[f32], in_h: usize, in_w: usize, dim: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; out_h * out_w * dim];
    let xtaps: Vec<_> = (0..out_w).map(|x| torch_cubic_taps(x, in_w, out_w)).collect();
    let mut row_acc = [vec![0.0f32; dim], vec![0.0f32; dim], vec![0.0f32; dim], vec![0.0f32; dim]];
    for oy in 0..out_h {
        let (yi, yw) = torch_cubic_taps(oy, in_h, out_h);
        for (ox, (xi, xw)) in xtaps.iter().enumerate() {
            // As PyTorch: interpolate along x on each of the four source rows, then along y.
            for (r, acc) in row_acc.iter_mut().enumerate() {
                let row = &src[yi[r] * in_w * dim..];
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = row[xi[0] * dim + c] * xw[0]
                        + row[xi[1] * dim + c] * xw[1]
                        + row[xi[2] * dim + c] * xw[2]
                        + row[xi[3] * dim + c] * xw[3];
                }
            }
            let o = &mut out[(oy * out_w + ox) * dim..(oy * out_w + ox + 1) * dim];
            for (c, v) in o.iter_mut().enumerate() {
                *v = row_acc[0][c] * yw[0] + row_acc[1][c] * yw[1] + row_acc[2][c] * yw[2] + row_acc[3][c] * yw[3];
            }
        }
    }
    out
}

/// Taps of PyTorch's antialiased bicubic for one output index: first input index and weights.
fn aa_taps(dst: usize, in_size: usize, out_size: usize) -> (usize, Vec<f32>) {
    const A: f32 = -0.5;
    let filter = |x: f32| {
        let x = x.abs();
        if x < 1.0 {
            cubic_inner(x, A)
        } else if x < 2.0 {
            cubic_outer(x, A)
        } else {
            0.0
        }
    };
    let scale = in_size as f32 / out_size as f32;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let center = scale * (dst as f32 + 0.5);
    let xmin = ((center - support + 0.5) as i64).max(0) as usize;
    let xmax = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
    let mut w: Vec<f32> = (xmin..xmax.max(xmin)).map(|j| filter((j as f32 - center + 0.5) * invscale)).collect();
    let total: f32 = w.iter().sum();
    if total != 0.0 {
        w.iter_mut().for_each(|v| *v /= total);
    }
    (xmin, w)
}

/// Resamples a `[in_h, in_w, dim]` grid to `[out_h, out_w, dim]` with PyTorch's antialiased
/// bicubic interpolation (width pass, then height pass).
pub fn bicubic_antialias(src: &[f32], in_h: usize, in_w: usize, dim: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let mut tmp = vec![0.0f32; in_h * out_w * dim];
    for ox in 0..out_w {
        let (x0, w) = aa_taps(ox, in_w, out_w);
        for y in 0..in_h {
            let o = &mut tmp[(y * out_w + ox) * dim..(y * out_w + ox + 1) * dim];
            for (k, &wk) in w.iter().enumerate() {
                let s = &src[(y * in_w + x0 + k) * dim..(y * in_w + x0 + k + 1) * dim];
                o.iter_mut().zip(s).for_each(|(a, b)| *a += wk * b);
            }
        }
    }
    let mut out = vec![0.0f32; out_h * out_w * dim];
    for oy in 0..out_h {
        let (y0, w) = aa_taps(oy, in_h, out_h);
        let o = &mut out[oy * out_w * dim..(oy + 1) * out_w * dim];
        for (k, &wk) in w.iter().enumerate() {
            let s = &tmp[(y0 + k) * out_w * dim..(y0 + k + 1) * out_w * dim];
            o.iter_mut().zip(s).for_each(|(a, b)| *a += wk * b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let src: Vec<f32> = (0..4 * 5 * 3).map(|i| i as f32 * 0.37 - 2.0).collect();
        let a = bicubic(&src, 4, 5, 3, 4, 5);
        let b = bicubic_antialias(&src, 4, 5, 3, 4, 5);
        for ((x, y), z) in src.iter().zip(&a).zip(&b) {
            assert!((x - y).abs() < 1e-5 && (x - z).abs() < 1e-5);
        }
    }

    #[test]
    fn constant_stays_constant() {
        let src = vec![1.5f32; 7 * 7 * 2];
        for (h, w) in [(3, 3), (4, 9), (12, 12)] {
            for v in bicubic(&src, 7, 7, 2, h, w).into_iter().chain(bicubic_antialias(&src, 7, 7, 2, h, w)) {
                assert!((v - 1.5).abs() < 1e-5, "{v}");
            }
        }
    }
}
