//! The input pipeline ([`Preprocess`]) of an imported model: from timm's `pretrained_cfg`, from
//! a transformers `preprocessor_config.json`, or documented defaults.
//!
//! Defaults (timm's `resolve_data_config` defaults, also used for transformers checkpoints):
//! ImageNet mean `[0.485, 0.456, 0.406]` and std `[0.229, 0.224, 0.225]` (for a model with
//! other than 3 input channels: the channel average 0.449 / 0.226 on every channel), bicubic
//! resize, `crop_pct` 0.875 (= 224/256), center crop, input size = the model's image size.

use std::path::Path;

use factorvit::{Interpolation, Preprocess};
use serde_json::Value;

use super::cfgjson::Obj;
use super::files::read_json;
use super::CheckpointError;

/// ImageNet channel means (timm `IMAGENET_DEFAULT_MEAN`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (timm `IMAGENET_DEFAULT_STD`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// timm's `DEFAULT_CROP_PCT` (224/256).
pub const DEFAULT_CROP_PCT: f32 = 0.875;
/// Name of the transformers image-processor configuration.
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// Default mean and std for `channels` input channels.
pub fn default_mean_std(channels: usize) -> (Vec<f32>, Vec<f32>) {
    if channels == 3 {
        (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
    } else {
        (vec![0.449; channels], vec![0.226; channels])
    }
}

/// The default pipeline for a model taking `channels × image[0] × image[1]` inputs.
pub fn default_preprocess(channels: usize, image: [usize; 2]) -> Preprocess {
    let (mean, std) = default_mean_std(channels);
    Preprocess {
        input_size: [channels, image[0], image[1]],
        mean,
        std,
        interpolation: Interpolation::Bicubic,
        crop_pct: DEFAULT_CROP_PCT,
    }
}

/// Per-channel values from a config list: `channels` entries, or one entry repeated.
fn per_channel(obj: &Obj<'_>, key: &str, channels: usize) -> Result<Option<Vec<f32>>, CheckpointError> {
    let v = match obj.floats(key)? {
        None => return Ok(None),
        Some(v) => v,
    };
    let v: Vec<f32> = match v.len() {
        n if n == channels => v.iter().map(|&x| x as f32).collect(),
        1 => vec![v[0] as f32; channels],
        n => return Err(obj.error(key, format!("has {n} entries but the model takes {channels} channels"))),
    };
    Ok(Some(v))
}

fn check_crop_pct(obj: &Obj<'_>, key: &str, crop_pct: f64) -> Result<f32, CheckpointError> {
    if crop_pct > 0.0 && crop_pct <= 1.0 {
        Ok(crop_pct as f32)
    } else {
        Err(obj.error(key, format!("{crop_pct} is not in (0, 1]")))
    }
}

/// The pipeline from timm's `pretrained_cfg` (defaults for whatever it lacks).
pub(crate) fn timm_preprocess(
    pcfg: Option<Obj<'_>>,
    channels: usize,
    image: [usize; 2],
    warnings: &mut Vec<String>,
) -> Result<Preprocess, CheckpointError> {
    let mut p = default_preprocess(channels, image);
    let Some(cfg) = pcfg else {
        warnings.push("config.json has no pretrained_cfg: using timm's default preprocessing".to_string());
        return Ok(p);
    };
    if let Some(v) = cfg.get("input_size") {
        let dims: Option<Vec<usize>> = v
            .as_array()
            .map(|a| a.iter().map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok())).collect())
            .unwrap_or(None);
        match dims.as_deref() {
            Some(&[c, h, w]) if c == channels && h > 0 && w > 0 => p.input_size = [c, h, w],
            Some(&[c, _, _]) if c != channels => {
                return Err(cfg.error("input_size", format!("has {c} channels but the model takes {channels}")))
            }
            _ => return Err(cfg.error("input_size", format!("must be [C, H, W] of positive integers, found {v}"))),
        }
    }
    if let Some(mean) = per_channel(&cfg, "mean", channels)? {
        p.mean = mean;
    }
    if let Some(std) = per_channel(&cfg, "std", channels)? {
        if std.iter().any(|&s| s.is_nan() || s <= 0.0) {
            return Err(cfg.error("std", "entries must be positive"));
        }
        p.std = std;
    }
    match cfg.str("interpolation")? {
        None | Some("") | Some("bicubic") => p.interpolation = Interpolation::Bicubic,
        Some("bilinear") => p.interpolation = Interpolation::Bilinear,
        Some("nearest") => p.interpolation = Interpolation::Nearest,
        Some(other) => warnings.push(format!(
            "{}: interpolation `{other}` is not supported by factorvit's pipeline; using bicubic",
            cfg.key("interpolation")
        )),
    }
    if let Some(c) = cfg.f64("crop_pct")? {
        p.crop_pct = check_crop_pct(&cfg, "crop_pct", c)?;
    }
    match cfg.str("crop_mode")? {
        None | Some("center") => {}
        Some(other) => warnings.push(format!(
            "{}: crop mode `{other}` is not supported by factorvit's pipeline; using center",
            cfg.key("crop_mode")
        )),
    }
    Ok(p)
}

/// The pipeline of a transformers checkpoint: `preprocessor_config.json` if the directory has
/// one, otherwise the defaults.
pub(crate) fn hf_preprocess(
    dir: &Path,
    channels: usize,
    image: [usize; 2],
    warnings: &mut Vec<String>,
) -> Result<Preprocess, CheckpointError> {
    let mut p = default_preprocess(channels, image);
    let path = dir.join(PREPROCESSOR_FILE);
    if !path.is_file() {
        warnings.push(format!(
            "no {PREPROCESSOR_FILE}: assuming ImageNet mean/std, bicubic resize, crop_pct 0.875, input {}x{}",
            image[0], image[1]
        ));
        return Ok(p);
    }
    let value = read_json(&path)?;
    let cfg = Obj::root(&path, &value)?;
    if cfg.bool("do_normalize")? == Some(false) {
        p.mean = vec![0.0; channels];
        p.std = vec![1.0; channels];
    } else {
        if let Some(mean) = per_channel(&cfg, "image_mean", channels)? {
            p.mean = mean;
        }
        if let Some(std) = per_channel(&cfg, "image_std", channels)? {
            if std.iter().any(|&s| s.is_nan() || s <= 0.0) {
                return Err(cfg.error("image_std", "entries must be positive"));
            }
            p.std = std;
        }
    }
    // PIL resampling codes.
    match cfg.usize("resample")? {
        None | Some(3) => p.interpolation = Interpolation::Bicubic,
        Some(2) => p.interpolation = Interpolation::Bilinear,
        Some(0) => p.interpolation = Interpolation::Nearest,
        Some(other) => warnings.push(format!("{PREPROCESSOR_FILE}: resample {other} is not supported; using bicubic")),
    }
    // Resize target: `{"shortest_edge": s}`, `{"height": h, "width": w}` or a bare integer.
    let size = cfg.get("size");
    let edge = |v: Option<&Value>, key: &str| v.and_then(|s| s.get(key)).and_then(Value::as_u64).map(|x| x as usize);
    let shortest = size.and_then(Value::as_u64).map(|x| x as usize).or_else(|| edge(size, "shortest_edge"));
    let (resize_h, resize_w) = (edge(size, "height"), edge(size, "width"));
    let crop = cfg.get("crop_size");
    let crop_hw = edge(crop, "height")
        .zip(edge(crop, "width"))
        .or_else(|| crop.and_then(Value::as_u64).map(|x| (x as usize, x as usize)));
    let do_crop = cfg.bool("do_center_crop")?.unwrap_or(false);
    match (do_crop, crop_hw) {
        (true, Some((ch, cw))) if ch > 0 && cw > 0 => {
            let base = shortest.or(resize_h.zip(resize_w).map(|(h, w)| h.min(w)));
            match base {
                Some(b) if b >= ch.min(cw) && b > 0 => {
                    p.crop_pct = check_crop_pct(&cfg, "crop_size", ch.min(cw) as f64 / b as f64)?;
                }
                _ => return Err(cfg.error("crop_size", "is larger than the resize target")),
            }
            if shortest.is_none() {
                warnings.push(format!(
                    "{PREPROCESSOR_FILE}: resizes to a fixed size without keeping the aspect ratio; approximated by a shorter-side resize"
                ));
            }
            p.input_size = [channels, ch, cw];
        }
        _ => match (resize_h, resize_w, shortest) {
            (Some(h), Some(w), _) if h > 0 && w > 0 => {
                p.crop_pct = 1.0;
                p.input_size = [channels, h, w];
                warnings.push(format!(
                    "{PREPROCESSOR_FILE}: resizes to {h}x{w} without keeping the aspect ratio; approximated by a shorter-side resize with crop_pct 1.0"
                ));
            }
            (_, _, Some(s)) if s > 0 => {
                p.crop_pct = 1.0;
                p.input_size = [channels, s, s];
            }
            _ => {}
        },
    }
    Ok(p)
}
