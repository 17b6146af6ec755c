//! Random resized crops (torchvision `RandomResizedCrop` + `RandomHorizontalFlip`) to stretch a
//! handful of calibration photos into many distinct model inputs.

use factorvit::Preprocess;

use super::{convert_channels, crop, flip_horizontal, resize, validate_preprocess, ImageU8, ImageView};
use crate::data::{DataError, Rng};

/// Parameters of the crop augmentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropAugment {
    /// Range of the crop area as a fraction of the image area.
    pub scale: [f64; 2],
    /// Range of the crop aspect ratio (width / height), sampled log-uniformly.
    pub ratio: [f64; 2],
    /// Probability of a horizontal flip.
    pub hflip_prob: f64,
}

impl Default for CropAugment {
    /// Area in `[0.35, 1]`, aspect in `[3/4, 4/3]`, flip with probability 1/2: milder than
    /// ImageNet training (`scale = [0.08, 1]`) so calibration crops keep their subject.
    fn default() -> CropAugment {
        CropAugment { scale: [0.35, 1.0], ratio: [3.0 / 4.0, 4.0 / 3.0], hflip_prob: 0.5 }
    }
}

impl CropAugment {
    /// Checks the ranges: `0 < scale0 <= scale1 <= 1`, `0 < ratio0 <= ratio1`, probability in
    /// `[0, 1]`.
    pub fn validate(&self) -> Result<(), DataError> {
        let [s0, s1] = self.scale;
        let [r0, r1] = self.ratio;
        let ok = s0 > 0.0
            && s0 <= s1
            && s1 <= 1.0
            && r0 > 0.0
            && r0 <= r1
            && r1.is_finite()
            && (0.0..=1.0).contains(&self.hflip_prob);
        if ok {
            Ok(())
        } else {
            Err(DataError::Options(format!("invalid crop augmentation {self:?}")))
        }
    }
}

/// A crop rectangle in source pixels, always inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// Left edge.
    pub left: usize,
    /// Top edge.
    pub top: usize,
    /// Width (at least 1).
    pub width: usize,
    /// Height (at least 1).
    pub height: usize,
}

/// Samples a crop of a `width × height` image like torchvision's
/// `RandomResizedCrop.get_params`: up to ten tries of a random area fraction and log-uniform
/// aspect ratio that fit, else the largest centred crop within the aspect range.
pub fn sample_crop_box(width: usize, height: usize, aug: &CropAugment, rng: &mut Rng) -> CropBox {
    let area = width as f64 * height as f64;
    let (log_r0, log_r1) = (aug.ratio[0].ln(), aug.ratio[1].ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform(aug.scale[0], aug.scale[1]);
        let aspect = rng.uniform(log_r0, log_r1).exp();
        let w = (target_area * aspect).sqrt().round();
        let h = (target_area / aspect).sqrt().round();
        if w >= 1.0 && h >= 1.0 && w <= width as f64 && h <= height as f64 {
            let (w, h) = (w as usize, h as usize);
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return CropBox { left, top, width: w, height: h };
        }
    }
    // Fallback: central crop clamped to the aspect range.
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < aug.ratio[0] {
        (width, ((width as f64 / aug.ratio[0]).round() as usize).clamp(1, height))
    } else if in_ratio > aug.ratio[1] {
        (((height as f64 * aug.ratio[1]).round() as usize).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { left: (width - w) / 2, top: (height - h) / 2, width: w, height: h }
}

/// One augmented model input: channel conversion, a random crop, resize to the model input
/// with the model's filter (Pillow-exact), and a random horizontal flip. Returns the uint8
/// image (normalise it with [`super::normalize_into`]).
pub fn augmented_crop(
    img: ImageView<'_>,
    pre: &Preprocess,
    aug: &CropAugment,
    rng: &mut Rng,
) -> Result<ImageU8, DataError> {
    validate_preprocess(pre)?;
    aug.validate()?;
    super::check_source(img)?;
    let [c, h, w] = pre.input_size;
    let converted;
    let img = if img.channels() == c {
        img
    } else {
        converted = convert_channels(img, c)?;
        converted.view()
    };
    let b = sample_crop_box(img.width(), img.height(), aug, rng);
    // Box coordinates are below the image size, hence within isize.
    let cropped = crop(img, b.left as isize, b.top as isize, b.width, b.height)?;
    let resized = resize(cropped.view(), w, h, pre.interpolation)?;
    Ok(if rng.bernoulli(aug.hflip_prob) { flip_horizontal(&resized) } else { resized })
}
