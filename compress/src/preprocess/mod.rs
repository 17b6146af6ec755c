//! Image preprocessing: timm's eval transform reproduced bit-exactly, image decoding, and the
//! random-resized-crop augmentation used to stretch a few calibration photos.
//!
//! The eval transform of a model with `Preprocess { input_size: [C, H, W], crop_pct, .. }` is
//! timm's `transforms_imagenet_eval` on a PIL image:
//!
//! 1. convert to the model's channels (`convert('RGB')`, or `convert('L')` for `C = 1`);
//! 2. `Resize(floor(H / crop_pct))` of the shorter side, the longer side becoming
//!    `int(size * long / short)` (torchvision), with Pillow's antialiased resampling
//!    ([`resize`] is bit-exact with `PIL.Image.resize`);
//! 3. `CenterCrop(H, W)` at offsets `int(round((L - H) / 2))` (Python rounding, half to even);
//! 4. `ToTensor` (`/ 255` in f32) and `Normalize(mean, std)` (f32 subtract, then divide).
//!
//! Every step matches the Python reference to the bit, so [`preprocess_image`] reproduces
//! `transform(img)` exactly for decoded pixels that match (PNG decodes identically; JPEG
//! decoders may differ from libjpeg-turbo by ±1 on some pixels, see [`load_image`]).

mod augment;
mod resample;

use std::path::Path;

use factorvit::{Interpolation, Preprocess};
use image::RgbImage;

pub use augment::{augmented_crop, sample_crop_box, CropAugment, CropBox};

pub use crate::data::DataError;
use resample::{resize_region, Pixels, Region};

/// Largest number of pixels an intermediate (resized) image may have: 2^28, far above any
/// sensible eval resize, low enough that a hostile aspect ratio cannot exhaust memory.
pub const MAX_PIXELS: usize = 1 << 28;

/// A borrowed interleaved 8-bit image: `height` rows of `width` pixels of `channels` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageView<'a> {
    width: usize,
    height: usize,
    channels: usize,
    data: &'a [u8],
}

impl<'a> ImageView<'a> {
    /// Wraps `data`; fails unless `1 <= channels <= 4`, both sizes are non-zero and
    /// `data.len() == width * height * channels`.
    pub fn new(width: usize, height: usize, channels: usize, data: &'a [u8]) -> Result<ImageView<'a>, DataError> {
        check_layout(width, height, channels, data.len())?;
        Ok(ImageView { width, height, channels, data })
    }

    /// Views an `image` crate RGB buffer.
    pub fn from_rgb(img: &'a RgbImage) -> ImageView<'a> {
        ImageView { width: img.width() as usize, height: img.height() as usize, channels: 3, data: img.as_raw() }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Bytes per pixel.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The interleaved bytes, row-major.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The resampler's view of the same bytes.
    fn pixels(&self) -> Pixels<'a> {
        Pixels { data: self.data, width: self.width, height: self.height, channels: self.channels }
    }

    /// An owned copy.
    pub fn to_owned_image(&self) -> ImageU8 {
        ImageU8 { width: self.width, height: self.height, channels: self.channels, data: self.data.to_vec() }
    }
}

/// An owned interleaved 8-bit image (see [`ImageView`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageU8 {
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<u8>,
}

impl ImageU8 {
    /// Takes ownership of `data`; same checks as [`ImageView::new`].
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Result<ImageU8, DataError> {
        check_layout(width, height, channels, data.len())?;
        Ok(ImageU8 { width, height, channels, data })
    }

    /// Converts an `image` crate RGB buffer (no copy).
    pub fn from_rgb(img: RgbImage) -> ImageU8 {
        let (width, height) = (img.width() as usize, img.height() as usize);
        ImageU8 { width, height, channels: 3, data: img.into_raw() }
    }

    /// Borrows as a view.
    pub fn view(&self) -> ImageView<'_> {
        ImageView { width: self.width, height: self.height, channels: self.channels, data: &self.data }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Bytes per pixel.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The interleaved bytes, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The interleaved bytes, row-major, by value.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

fn check_layout(width: usize, height: usize, channels: usize, len: usize) -> Result<(), DataError> {
    if !(1..=4).contains(&channels) {
        return Err(DataError::Preprocess(format!("{channels} channels per pixel (1 to 4 supported)")));
    }
    if width == 0 || height == 0 {
        return Err(DataError::Preprocess(format!("empty image ({width}×{height})")));
    }
    let expected =
        width.checked_mul(height).and_then(|p| p.checked_mul(channels)).ok_or(DataError::overflow("image size"))?;
    if expected != len {
        return Err(DataError::Preprocess(format!(
            "a {width}×{height}×{channels} image needs {expected} bytes, got {len}"
        )));
    }
    Ok(())
}

/// PIL's `convert('L')` of one RGB pixel: ITU-R 601-2 luma in 16-bit fixed point,
/// `(R·19595 + G·38470 + B·7471 + 2^15) >> 16` (identical to Pillow for all 2^24 inputs).
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Converts to `channels` (1 or 3) like Pillow: grey → RGB replicates, RGB → grey is [`luma`],
/// an alpha channel (2 = grey+alpha, 4 = RGBA) is dropped without compositing, as
/// `convert('RGB')` / `convert('L')` do.
pub fn convert_channels(img: ImageView<'_>, channels: usize) -> Result<ImageU8, DataError> {
    if channels != 1 && channels != 3 {
        return Err(DataError::Preprocess(format!("models with {channels} input channels are not supported (1 or 3)")));
    }
    let c = img.channels;
    if c == channels {
        return Ok(img.to_owned_image());
    }
    let pixels = img.data.chunks_exact(c);
    let data: Vec<u8> = match (c, channels) {
        (1 | 2, 3) => pixels.flat_map(|p| [p[0], p[0], p[0]]).collect(),
        (2, 1) => pixels.map(|p| p[0]).collect(),
        (3 | 4, 1) => pixels.map(|p| luma(p[0], p[1], p[2])).collect(),
        (4, 3) => pixels.flat_map(|p| [p[0], p[1], p[2]]).collect(),
        _ => unreachable!("channels validated above"),
    };
    Ok(ImageU8 { width: img.width, height: img.height, channels, data })
}

/// Resizes to `width × height` bit-exactly like `PIL.Image.resize((width, height), filter)`
/// (antialiased bicubic / bilinear, or nearest neighbour).
pub fn resize(img: ImageView<'_>, width: usize, height: usize, filter: Interpolation) -> Result<ImageU8, DataError> {
    check_source(img)?;
    check_target(width, height, img.channels)?;
    let region = Region { x0: 0, y0: 0, x1: width, y1: height };
    let data = resize_region(img.pixels(), width, height, filter, region);
    Ok(ImageU8 { width, height, channels: img.channels, data })
}

/// Views built from an `image` crate buffer skip [`ImageView::new`]'s checks: reject empty
/// images before resampling them.
fn check_source(img: ImageView<'_>) -> Result<(), DataError> {
    if img.width == 0 || img.height == 0 {
        return Err(DataError::Preprocess(format!("empty image ({}×{})", img.width, img.height)));
    }
    Ok(())
}

fn check_target(width: usize, height: usize, channels: usize) -> Result<(), DataError> {
    if width == 0 || height == 0 {
        return Err(DataError::Preprocess(format!("cannot resize to {width}×{height}")));
    }
    let pixels = width.checked_mul(height).ok_or(DataError::overflow("resized image size"))?;
    if pixels > MAX_PIXELS || pixels.checked_mul(channels).is_none() {
        return Err(DataError::Preprocess(format!(
            "resized image {width}×{height} exceeds the {MAX_PIXELS}-pixel limit"
        )));
    }
    Ok(())
}

/// Crops the rectangle at (`left`, `top`) of size `width × height` like PIL's `Image.crop`:
/// the rectangle may extend past the image, where it is filled with zeros.
pub fn crop(img: ImageView<'_>, left: isize, top: isize, width: usize, height: usize) -> Result<ImageU8, DataError> {
    check_target(width, height, img.channels)?;
    let c = img.channels;
    let mut data = vec![0u8; width * height * c];
    for (dy, out_row) in data.chunks_exact_mut(width * c).enumerate() {
        let Some(y) = offset(top, dy).filter(|&y| y < img.height) else {
            continue;
        };
        for (dx, out_px) in out_row.chunks_exact_mut(c).enumerate() {
            if let Some(x) = offset(left, dx).filter(|&x| x < img.width) {
                let start = (y * img.width + x) * c;
                out_px.copy_from_slice(&img.data[start..start + c]);
            }
        }
    }
    Ok(ImageU8 { width, height, channels: c, data })
}

/// `base + delta` as an index, `None` when negative or unrepresentable.
fn offset(base: isize, delta: usize) -> Option<usize> {
    isize::try_from(delta).ok().and_then(|d| base.checked_add(d)).and_then(|v| usize::try_from(v).ok())
}

/// Mirrors left-right (`transforms.RandomHorizontalFlip` when it fires).
pub fn flip_horizontal(img: &ImageU8) -> ImageU8 {
    let c = img.channels;
    let mut data = Vec::with_capacity(img.data.len());
    for row in img.data.chunks_exact(img.width * c) {
        for px in row.chunks_exact(c).rev() {
            data.extend_from_slice(px);
        }
    }
    ImageU8 { width: img.width, height: img.height, channels: c, data }
}

/// Geometry of timm's eval transform for one source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalGeometry {
    /// Width after the resize.
    pub resized_width: usize,
    /// Height after the resize.
    pub resized_height: usize,
    /// Filter of the resize.
    pub interpolation: Interpolation,
    /// Left edge of the crop in the resized image (negative when the crop is wider than the
    /// resized image and torchvision pads it with zeros).
    pub crop_left: isize,
    /// Top edge of the crop in the resized image (negative: zero padding, as for `crop_left`).
    pub crop_top: isize,
    /// Crop width (the model input width).
    pub crop_width: usize,
    /// Crop height (the model input height).
    pub crop_height: usize,
}

/// `crop_pct` as the Python float it was written as: the metadata stores an f32, whose shortest
/// decimal form (`0.9`, `0.875`, ...) is what timm's configs contain, so `floor(224 / 0.9)` is
/// evaluated on the same double as in Python.
fn crop_pct_f64(crop_pct: f32) -> f64 {
    crop_pct.to_string().parse::<f64>().unwrap_or(f64::from(crop_pct))
}

/// Python's `round(x)` for non-negative finite `x`: nearest integer, ties to even.
fn round_half_even(x: f64) -> f64 {
    let floor = x.floor();
    let diff = x - floor;
    if diff > 0.5 || (diff == 0.5 && floor % 2.0 != 0.0) {
        floor + 1.0
    } else {
        floor
    }
}

/// Checks that `pre` describes a transform this module implements.
pub fn validate_preprocess(pre: &Preprocess) -> Result<(), DataError> {
    let [c, h, w] = pre.input_size;
    if c != 1 && c != 3 {
        return Err(DataError::Preprocess(format!("{c} input channels (1 or 3 supported)")));
    }
    if h == 0 || w == 0 || h > 8192 || w > 8192 {
        return Err(DataError::Preprocess(format!("input size {h}×{w} is out of range")));
    }
    if pre.mean.len() != c || pre.std.len() != c {
        return Err(DataError::Preprocess(format!(
            "mean and std need {c} entries, got {} and {}",
            pre.mean.len(),
            pre.std.len()
        )));
    }
    if pre.std.iter().any(|&s| !(s.is_finite() && s != 0.0)) || pre.mean.iter().any(|m| !m.is_finite()) {
        return Err(DataError::Preprocess("mean must be finite and std finite and non-zero".into()));
    }
    if !(pre.crop_pct > 0.0 && pre.crop_pct <= 1.0) {
        return Err(DataError::Preprocess(format!("crop_pct {} must be in (0, 1]", pre.crop_pct)));
    }
    Ok(())
}

/// The eval-transform geometry for a `width × height` source image (timm 1.0
/// `transforms_imagenet_eval`, `crop_mode='center'`).
///
/// * Square inputs (`H == W`): `scale = floor(H / crop_pct)`; torchvision `Resize(scale)`
///   scales the shorter side to `scale` and the longer to `int(scale * long / short)`, with the
///   model's interpolation.
/// * Non-square inputs: timm uses `ResizeKeepRatio((floor(H / crop_pct), floor(W / crop_pct)))`:
///   `ratio = min(h / sh, w / sw)`, size `round(h / ratio) × round(w / ratio)` (half to even),
///   and — as in timm, which does not pass the interpolation on — **bilinear** resampling.
///
/// The crop is torchvision's `CenterCrop((H, W))`: offsets `int(round((L - H) / 2))`, zero
/// padding (negative offsets) when the resized image is smaller than the crop.
pub fn eval_geometry(width: usize, height: usize, pre: &Preprocess) -> Result<EvalGeometry, DataError> {
    validate_preprocess(pre)?;
    if width == 0 || height == 0 {
        return Err(DataError::Preprocess(format!("empty image ({width}×{height})")));
    }
    let [_, th, tw] = pre.input_size;
    let crop_pct = crop_pct_f64(pre.crop_pct);
    let scale_h = (th as f64 / crop_pct).floor();
    let scale_w = (tw as f64 / crop_pct).floor();
    let (rw, rh, interpolation) = if scale_h == scale_w {
        let (short, long) = if width <= height { (width, height) } else { (height, width) };
        let new_short = scale_h;
        let new_long = (scale_h * long as f64 / short as f64).trunc();
        let (nw, nh) = if width <= height { (new_short, new_long) } else { (new_long, new_short) };
        (nw, nh, pre.interpolation)
    } else {
        let ratio_h = height as f64 / scale_h;
        let ratio_w = width as f64 / scale_w;
        let ratio = ratio_h.max(ratio_w) * 0.0 + ratio_h.min(ratio_w) * 1.0;
        let nh = round_half_even(height as f64 / ratio);
        let nw = round_half_even(width as f64 / ratio);
        (nw, nh, Interpolation::Bilinear)
    };
    let limit = MAX_PIXELS as f64;
    if !(rw >= 1.0 && rh >= 1.0 && rw * rh <= limit) {
        return Err(DataError::Preprocess(format!(
            "a {width}×{height} image would be resized to {rw}×{rh} (limit {MAX_PIXELS} pixels)"
        )));
    }
    let (rw, rh) = (rw as usize, rh as usize);
    Ok(EvalGeometry {
        resized_width: rw,
        resized_height: rh,
        interpolation,
        crop_left: center_offset(rw, tw),
        crop_top: center_offset(rh, th),
        crop_width: tw,
        crop_height: th,
    })
}

/// torchvision `center_crop` offset along one axis of length `len` for a crop of `crop`.
fn center_offset(len: usize, crop: usize) -> isize {
    if crop > len {
        // Padded by (crop - len) // 2 on the leading side, then cropped at 0.
        -(((crop - len) / 2) as isize)
    } else {
        round_half_even((len - crop) as f64 / 2.0) as isize
    }
}

/// Runs channel conversion, resize and center crop: the uint8 image right before `ToTensor`
/// (timm's `cropped_u8`), with the model's channel count.
pub fn eval_transform_u8(img: ImageView<'_>, pre: &Preprocess) -> Result<ImageU8, DataError> {
    let geometry = eval_geometry(img.width, img.height, pre)?;
    let converted;
    let img = if img.channels == pre.input_size[0] {
        img
    } else {
        converted = convert_channels(img, pre.input_size[0])?;
        converted.view()
    };
    let EvalGeometry { resized_width: rw, resized_height: rh, crop_left, crop_top, .. } = geometry;
    let (cw, ch) = (geometry.crop_width, geometry.crop_height);
    let inside = crop_left >= 0 && crop_top >= 0 && crop_left as usize + cw <= rw && crop_top as usize + ch <= rh;
    if inside {
        // Compute only the cropped pixels of the resized image (same bytes, less work).
        check_target(rw, rh, img.channels)?;
        let (x0, y0) = (crop_left as usize, crop_top as usize);
        let region = Region { x0, y0, x1: x0 + cw, y1: y0 + ch };
        let data = resize_region(img.pixels(), rw, rh, geometry.interpolation, region);
        Ok(ImageU8 { width: cw, height: ch, channels: img.channels, data })
    } else {
        let resized = resize(img, rw, rh, geometry.interpolation)?;
        crop(resized.view(), crop_left, crop_top, cw, ch)
    }
}

/// `ToTensor` + `Normalize`: writes `[C, H, W]` floats `((v / 255) - mean) / std` (each step
/// in f32, like torchvision) into `out`. The image must already have the model's channel count
/// and size.
pub fn normalize_into(img: ImageView<'_>, pre: &Preprocess, out: &mut [f32]) -> Result<(), DataError> {
    validate_preprocess(pre)?;
    let [c, h, w] = pre.input_size;
    if img.channels != c || img.height != h || img.width != w {
        return Err(DataError::Preprocess(format!(
            "normalising a {}×{}×{} image for a {c}×{h}×{w} input",
            img.channels, img.height, img.width
        )));
    }
    let plane = h * w;
    if out.len() != plane * c {
        return Err(DataError::Preprocess(format!("output buffer holds {} floats, need {}", out.len(), plane * c)));
    }
    for (ch, dst) in out.chunks_exact_mut(plane).enumerate() {
        // A 256-entry table per channel: every entry is computed with the exact f32 steps.
        let (mean, std) = (pre.mean[ch], pre.std[ch]);
        let table: Vec<f32> = (0..=255u8).map(|v| (f32::from(v) / 255.0 - mean) / std).collect();
        for (d, px) in dst.iter_mut().zip(img.data.chunks_exact(c)) {
            *d = table[usize::from(px[ch])];
        }
    }
    Ok(())
}

/// The full eval transform: returns the `[C, H, W]` normalised tensor of one image.
pub fn preprocess_image(img: ImageView<'_>, pre: &Preprocess) -> Result<Vec<f32>, DataError> {
    let cropped = eval_transform_u8(img, pre)?;
    let [c, h, w] = pre.input_size;
    let mut out = vec![0f32; c * h * w];
    normalize_into(cropped.view(), pre, &mut out)?;
    Ok(out)
}

/// [`preprocess_image`] for an `image` crate RGB buffer.
pub fn preprocess_rgb8(img: &RgbImage, pre: &Preprocess) -> Result<Vec<f32>, DataError> {
    preprocess_image(ImageView::from_rgb(img), pre)
}

/// Decodes a JPEG or PNG file and converts it like `PIL.Image.open(path).convert('RGB')`:
/// grey is replicated, alpha is dropped (no compositing), 16-bit samples keep their high byte
/// (as Pillow does for 16-bit RGB(A); for 16-bit grey Pillow saturates at 255 instead, which
/// is not reproduced). EXIF orientation is ignored, as by PIL and timm.
///
/// PNG decoding is lossless and therefore identical to Pillow's; baseline JPEG decoding (the
/// `image` crate's zune-jpeg) can differ from libjpeg-turbo's by ±1 on a small share of pixels.
pub fn load_image(path: &Path) -> Result<RgbImage, DataError> {
    let img = load_image_u8(path)?;
    let img = convert_channels(img.view(), 3)?;
    let (w, h) = (img.width as u32, img.height as u32);
    RgbImage::from_raw(w, h, img.data)
        .ok_or_else(|| DataError::Image { path: path.to_path_buf(), message: "inconsistent decoded buffer".into() })
}

/// Decodes a JPEG or PNG file keeping grey images single-channel (1 channel for grey and
/// grey+alpha, 3 for colour): [`convert_channels`] of the result equals converting
/// [`load_image`]'s, with a third of the memory for grey data.
pub fn load_image_u8(path: &Path) -> Result<ImageU8, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_image(&bytes, path)
}

/// [`load_image_u8`] on bytes already in memory; `path` only names the image in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<ImageU8, DataError> {
    use image::DynamicImage as D;
    let bad = |message: String| DataError::Image { path: path.to_path_buf(), message };
    let format = image::guess_format(bytes).map_err(|e| bad(e.to_string()))?;
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg) {
        return Err(bad(format!("{format:?} images are not supported (PNG or JPEG)")));
    }
    let decoded = image::load_from_memory_with_format(bytes, format).map_err(|e| bad(e.to_string()))?;
    let (w, h) = (decoded.width() as usize, decoded.height() as usize);
    let high = |v: &u16| (v >> 8) as u8;
    let (channels, data): (usize, Vec<u8>) = match decoded {
        D::ImageLuma8(b) => (1, b.into_raw()),
        D::ImageLumaA8(b) => (1, b.into_raw().chunks_exact(2).map(|p| p[0]).collect()),
        D::ImageRgb8(b) => (3, b.into_raw()),
        D::ImageRgba8(b) => (3, b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()),
        D::ImageLuma16(b) => (1, b.as_raw().iter().map(high).collect()),
        D::ImageLumaA16(b) => (1, b.as_raw().chunks_exact(2).map(|p| high(&p[0])).collect()),
        D::ImageRgb16(b) => (3, b.as_raw().iter().map(high).collect()),
        D::ImageRgba16(b) => {
            (3, b.as_raw().chunks_exact(4).flat_map(|p| [high(&p[0]), high(&p[1]), high(&p[2])]).collect())
        }
        other => (3, other.to_rgb8().into_raw()),
    };
    ImageU8::new(w, h, channels, data)
}
