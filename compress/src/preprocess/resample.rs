//! Bit-exact reimplementation of Pillow's `Image.resize` for 8-bit images.
//!
//! This follows the algorithm of Pillow's `libImaging/Resample.c` (`ImagingResample`) and, for
//! nearest neighbour, `libImaging/Geometry.c` (`ImagingScaleAffine`), so that the uint8 output
//! is identical to `PIL.Image.resize(size, filter)` with the default box and no
//! `reducing_gap`:
//!
//! * per output pixel, the filter is centred at `(x + 0.5) * scale` in source coordinates; when
//!   shrinking, its support is widened by the scale factor (antialiasing);
//! * the taps are evaluated in double precision, normalised to sum to one, and converted to
//!   fixed point with `PRECISION_BITS = 32 - 8 - 2` fractional bits, rounding half away from
//!   zero;
//! * the horizontal pass runs first (only on the source rows the vertical pass reads), its
//!   result is rounded and clamped to uint8, then the vertical pass runs on it;
//! * accumulation starts at one half (`1 << (PRECISION_BITS - 1)`) and the result is the
//!   arithmetic right shift clamped to `[0, 255]`.
//!
//! The code below is an independent implementation of that specification (the same
//! arithmetic, in the same order, is what makes the result bit-exact).

use factorvit::Interpolation;

/// Fractional bits of the fixed-point taps (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Rounding offset added to every accumulator.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Separable convolution kernels of Pillow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Triangle filter, support 1.
    Bilinear,
    /// Keys cubic with `a = -0.5`, support 2.
    Bicubic,
}

impl Kernel {
    fn support(self) -> f64 {
        match self {
            Kernel::Bilinear => 1.0,
            Kernel::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = if x < 0.0 { -x } else { x };
        match self {
            Kernel::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Kernel::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point taps of one resampling direction.
#[derive(Debug, Clone)]
struct Taps {
    /// Maximum number of taps per output pixel (row stride of `weights`).
    stride: usize,
    /// Per output pixel: first source index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `out_size × stride` fixed-point weights.
    weights: Vec<i32>,
}

impl Taps {
    /// Pillow's `precompute_coeffs` (box `[0, in_size]`) followed by `normalize_coeffs_8bpc`.
    fn new(in_size: usize, out_size: usize, kernel: Kernel) -> Taps {
        // Pillow passes the box as C floats; for in-range sizes the conversion is exact.
        let in0 = 0.0f32;
        let in1 = in_size as f32;
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = kernel.support() * filterscale;
        let stride = (support.ceil() as usize) * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * stride];
        let mut taps = vec![0f64; stride];
        let inv = 1.0 / filterscale;
        for (xx, row) in weights.chunks_exact_mut(stride).enumerate() {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            // C `(int)` casts truncate toward zero; `as i64` does the same.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            // At least one tap, at most `stride` (both hold for any valid sizes).
            let count = (xmax - xmin).clamp(0, stride as i64) as usize;
            let xmin = xmin as usize;
            let mut total = 0.0f64;
            for (x, t) in taps.iter_mut().enumerate().take(count) {
                let w = kernel.weight(((x + xmin) as f64 - center + 0.5) * inv);
                *t = w;
                total += w;
            }
            for (dst, &t) in row.iter_mut().zip(&taps[..count]) {
                let t = if total != 0.0 { t / total } else { t };
                let scaled = t * f64::from(1u32 << PRECISION_BITS);
                *dst = if t < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
            }
            bounds.push((xmin, count));
        }
        Taps { stride, bounds, weights }
    }

    fn taps(&self, out_index: usize) -> (usize, &[i32]) {
        let (first, count) = self.bounds[out_index];
        (first, &self.weights[out_index * self.stride..][..count])
    }
}

/// Rounds the fixed-point accumulator to uint8 like Pillow's `clip8`.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A rectangle of the *output* image to compute: `x0..x1`, `y0..y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

/// An interleaved 8-bit source image: `width × height × channels` bytes, row-major.
#[derive(Clone, Copy)]
pub(crate) struct Pixels<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub channels: usize,
}

/// Resizes `src` (`width × height × channels`, interleaved) to `out_w × out_h` exactly like
/// `PIL.Image.resize((out_w, out_h), filter)` and returns only the pixels of `region` of that
/// output (row-major, interleaved). Computing a sub-rectangle gives the same bytes as cropping
/// the full result: the taps of an output pixel do not depend on which pixels are computed.
///
/// The caller guarantees non-zero sizes, `src.len() == width * height * channels`, and a
/// region inside `out_w × out_h`.
pub(crate) fn resize_region(
    source: Pixels<'_>,
    out_w: usize,
    out_h: usize,
    filter: Interpolation,
    region: Region,
) -> Vec<u8> {
    let Pixels { data: src, width, height, channels } = source;
    debug_assert_eq!(src.len(), width * height * channels);
    debug_assert!(region.x1 <= out_w && region.y1 <= out_h);
    debug_assert!(region.x0 <= region.x1 && region.y0 <= region.y1);
    if out_w == width && out_h == height {
        return copy_region(src, width, channels, region);
    }
    match filter {
        Interpolation::Nearest => nearest(source, out_w, out_h, region),
        Interpolation::Bilinear => convolve(source, out_w, out_h, Kernel::Bilinear, region),
        Interpolation::Bicubic => convolve(source, out_w, out_h, Kernel::Bicubic, region),
    }
}

fn copy_region(src: &[u8], width: usize, channels: usize, region: Region) -> Vec<u8> {
    let row_len = (region.x1 - region.x0) * channels;
    let mut out = Vec::with_capacity(row_len * (region.y1 - region.y0));
    for y in region.y0..region.y1 {
        let start = (y * width + region.x0) * channels;
        out.extend_from_slice(&src[start..start + row_len]);
    }
    out
}

fn convolve(source: Pixels<'_>, out_w: usize, out_h: usize, kernel: Kernel, region: Region) -> Vec<u8> {
    let Pixels { data: src, width, height, channels } = source;
    let need_horizontal = out_w != width;
    let need_vertical = out_h != height;
    let region_w = region.x1 - region.x0;
    let region_h = region.y1 - region.y0;
    if region_w == 0 || region_h == 0 {
        return Vec::new();
    }

    // Source rows the vertical pass reads (all of the region's rows when there is none).
    let vertical = need_vertical.then(|| Taps::new(height, out_h, kernel));
    let (row0, row1) = match &vertical {
        Some(taps) => {
            let (first, _) = taps.bounds[region.y0];
            let (last, count) = taps.bounds[region.y1 - 1];
            (first, last + count)
        }
        None => (region.y0, region.y1),
    };

    // Horizontal pass over rows `row0..row1`, only the region's columns.
    let row_len = region_w * channels;
    let horizontal: Vec<u8> = if need_horizontal {
        let taps = Taps::new(width, out_w, kernel);
        let mut out = vec![0u8; (row1 - row0) * row_len];
        for (y, out_row) in (row0..row1).zip(out.chunks_exact_mut(row_len)) {
            let in_row = &src[y * width * channels..(y + 1) * width * channels];
            horizontal_row(in_row, out_row, &taps, region.x0, channels);
        }
        out
    } else {
        let mut out = Vec::with_capacity((row1 - row0) * row_len);
        for y in row0..row1 {
            let start = (y * width + region.x0) * channels;
            out.extend_from_slice(&src[start..start + row_len]);
        }
        out
    };

    let Some(taps) = vertical else {
        return horizontal;
    };
    // Vertical pass: each output row is a weighted sum of rows of `horizontal`.
    let mut out = vec![0u8; region_h * row_len];
    let mut acc = vec![0i32; row_len];
    for (yy, out_row) in (region.y0..region.y1).zip(out.chunks_exact_mut(row_len)) {
        let (first, weights) = taps.taps(yy);
        acc.fill(HALF);
        for (i, &k) in weights.iter().enumerate() {
            let y = first + i - row0;
            let in_row = &horizontal[y * row_len..(y + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * k;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// One output row of the horizontal pass, columns `x0 .. x0 + out_row.len() / channels`.
fn horizontal_row(in_row: &[u8], out_row: &mut [u8], taps: &Taps, x0: usize, channels: usize) {
    match channels {
        1 => {
            for (xx, o) in out_row.iter_mut().enumerate() {
                let (first, weights) = taps.taps(x0 + xx);
                let mut acc = HALF;
                for (&p, &k) in in_row[first..first + weights.len()].iter().zip(weights) {
                    acc += i32::from(p) * k;
                }
                *o = clip8(acc);
            }
        }
        3 => {
            for (xx, o) in out_row.chunks_exact_mut(3).enumerate() {
                let (first, weights) = taps.taps(x0 + xx);
                let (mut r, mut g, mut b) = (HALF, HALF, HALF);
                let px = &in_row[first * 3..(first + weights.len()) * 3];
                for (p, &k) in px.chunks_exact(3).zip(weights) {
                    r += i32::from(p[0]) * k;
                    g += i32::from(p[1]) * k;
                    b += i32::from(p[2]) * k;
                }
                o[0] = clip8(r);
                o[1] = clip8(g);
                o[2] = clip8(b);
            }
        }
        c => {
            for (xx, o) in out_row.chunks_exact_mut(c).enumerate() {
                let (first, weights) = taps.taps(x0 + xx);
                let px = &in_row[first * c..(first + weights.len()) * c];
                for (ch, o) in o.iter_mut().enumerate() {
                    let mut acc = HALF;
                    for (p, &k) in px.chunks_exact(c).zip(weights) {
                        acc += i32::from(p[ch]) * k;
                    }
                    *o = clip8(acc);
                }
            }
        }
    }
}

/// Source index of every output index for nearest-neighbour scaling, as Pillow's
/// `ImagingScaleAffine` computes it: the position starts at half a step and is *accumulated*
/// in double precision (the accumulated rounding is part of the exact result).
fn nearest_table(in_size: usize, out_size: usize) -> Vec<usize> {
    let step = f64::from(in_size as f32) / out_size as f64;
    let mut pos = 0.0 + step * 0.5;
    let mut table = Vec::with_capacity(out_size);
    for _ in 0..out_size {
        // Pillow's COORD: negative → -1 (out of range), else truncate. Positions are never
        // negative here and never reach `in_size` in practice; clamp defensively.
        let index = if pos < 0.0 { 0 } else { (pos as usize).min(in_size - 1) };
        table.push(index);
        pos += step;
    }
    table
}

fn nearest(source: Pixels<'_>, out_w: usize, out_h: usize, region: Region) -> Vec<u8> {
    let Pixels { data: src, width, height, channels } = source;
    let xs = nearest_table(width, out_w);
    let ys = nearest_table(height, out_h);
    let mut out = Vec::with_capacity((region.x1 - region.x0) * (region.y1 - region.y0) * channels);
    for &y in &ys[region.y0..region.y1] {
        let row = &src[y * width * channels..(y + 1) * width * channels];
        for &x in &xs[region.x0..region.x1] {
            out.extend_from_slice(&row[x * channels..(x + 1) * channels]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for &(i, o) in &[(451usize, 372usize), (300, 248), (28, 224), (7, 3), (3, 7), (1, 5)] {
            for kernel in [Kernel::Bilinear, Kernel::Bicubic] {
                let taps = Taps::new(i, o, kernel);
                for xx in 0..o {
                    let (first, w) = taps.taps(xx);
                    assert!(!w.is_empty() && first + w.len() <= i);
                    let sum: i64 = w.iter().map(|&k| i64::from(k)).sum();
                    // Each tap rounds by at most 1/2 ulp.
                    assert!((sum - (1 << PRECISION_BITS)).unsigned_abs() <= w.len() as u64);
                }
            }
        }
    }

    #[test]
    fn nearest_table_matches_pillow_examples() {
        // Values checked against Pillow 13 (`Image.resize(..., NEAREST)` on an index ramp).
        assert_eq!(nearest_table(5, 3), [0, 2, 4]);
        assert_eq!(nearest_table(3, 7), [0, 0, 1, 1, 1, 2, 2]);
        assert_eq!(nearest_table(4, 2), [1, 3]);
    }
}
