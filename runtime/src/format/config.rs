//! Model configuration and preprocessing description, as stored in the file metadata
//! (`config` and `preprocess` keys, see `docs/FORMAT.md`).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::json::{self, Value};

/// How the final feature vector is pooled from the token sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalPool {
    /// The first token (class token).
    Token,
    /// Mean of the non-prefix (patch) tokens.
    Avg,
}

/// The classifier on top of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// No classifier: the model is a backbone (`last_hidden_state`, `pooler_output`).
    None,
    /// `logits = head(pooled)`.
    Linear,
    /// DeiT with distillation token: `logits = (head(h[:,0]) + head_dist(h[:,1])) / 2`.
    Distilled,
}

/// How position embeddings are resampled for an input whose patch grid differs from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosInterpolation {
    /// PyTorch bicubic (A = -0.75), `align_corners=False`, no antialiasing (transformers).
    Bicubic,
    /// Same with `antialias=True` (timm's `resample_abs_pos_embed`); differs only when shrinking.
    BicubicAntialias,
}

/// Architecture of a ViT-family model: everything needed to run it besides the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Informational name (`deit_tiny_patch16_224`, `Dinov2Model`, ...).
    pub architecture: String,
    /// Input size `[H, W]` the position table was trained for.
    pub image_size: [usize; 2],
    /// Patch size `P` (square patches, stride `P`).
    pub patch_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Embedding width `D`.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden width.
    pub mlp_hidden: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// A class token is prepended.
    pub class_token: bool,
    /// A distillation token follows the class token.
    pub dist_token: bool,
    /// Number of prefix tokens that have rows in `pos_embed`.
    pub pos_embed_prefix: usize,
    /// Patch grid `[gh, gw]` of `pos_embed`.
    pub pos_embed_grid: [usize; 2],
    /// Resampling of the position table for other input sizes.
    pub pos_interpolation: PosInterpolation,
    /// Blocks carry LayerScale vectors.
    pub layer_scale: bool,
    /// A final LayerNorm follows the blocks.
    pub final_norm: bool,
    /// Pooling of the final features.
    pub global_pool: GlobalPool,
    /// A LayerNorm is applied to the pooled feature.
    pub fc_norm: bool,
    /// Classifier kind.
    pub head: Head,
    /// Classifier outputs (0 without a head).
    pub num_classes: usize,
}

impl ModelConfig {
    /// Number of prefix tokens (class + distillation).
    pub fn num_prefix_tokens(&self) -> usize {
        usize::from(self.class_token) + usize::from(self.dist_token)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads.max(1)
    }

    /// Token count for an input of `h × w` pixels.
    pub fn tokens_for(&self, h: usize, w: usize) -> usize {
        self.num_prefix_tokens() + (h / self.patch_size) * (w / self.patch_size)
    }

    /// Checks internal consistency and bounds sizes so that later arithmetic cannot overflow.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        // Generous caps, far above any ViT, that keep every derived product well inside usize
        // even on 32-bit targets (e.g. tokens × dim × 4 bytes).
        const MAX_DIM: usize = 1 << 14;
        for (name, v) in [
            ("patch_size", self.patch_size),
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
            ("num_heads", self.num_heads),
            ("mlp_hidden", self.mlp_hidden),
        ] {
            if v == 0 || v > MAX_DIM * 4 {
                return bad(format!("{name} = {v} is out of range"));
            }
        }
        if self.depth > 1024 {
            return bad(format!("depth = {} is out of range", self.depth));
        }
        if self.embed_dim % self.num_heads != 0 {
            return bad(format!("embed_dim {} is not divisible by num_heads {}", self.embed_dim, self.num_heads));
        }
        if self.image_size.iter().any(|&s| s == 0 || s > 8192) {
            return bad(format!("image_size {:?} is out of range", self.image_size));
        }
        // A session at the model's own input size needs at least one patch.
        if self.image_size.iter().any(|&s| s < self.patch_size) {
            return bad(format!("image_size {:?} is smaller than one patch ({})", self.image_size, self.patch_size));
        }
        if self.pos_embed_grid.iter().any(|&g| g == 0 || g > 1024) {
            return bad(format!("pos_embed_grid {:?} is out of range", self.pos_embed_grid));
        }
        if self.pos_embed_prefix != 0 && self.pos_embed_prefix != self.num_prefix_tokens() {
            return bad(format!(
                "pos_embed_prefix {} must be 0 or the number of prefix tokens ({})",
                self.pos_embed_prefix,
                self.num_prefix_tokens()
            ));
        }
        if self.global_pool == GlobalPool::Token && !self.class_token {
            return bad("global_pool 'token' needs a class token".to_string());
        }
        match self.head {
            Head::None if self.num_classes != 0 => return bad("num_classes must be 0 without a head".to_string()),
            Head::Linear | Head::Distilled if self.num_classes == 0 || self.num_classes > 1 << 20 => {
                return bad(format!("num_classes {} is out of range", self.num_classes))
            }
            Head::Distilled if !(self.class_token && self.dist_token) => {
                return bad("a distilled head needs class and distillation tokens".to_string())
            }
            _ => {}
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return bad(format!("layer_norm_eps {} is invalid", self.layer_norm_eps));
        }
        Ok(())
    }

    /// Serialises to the metadata JSON object.
    pub fn to_json(&self) -> Value {
        json::object([
            ("architecture", Value::from(self.architecture.as_str())),
            ("image_size", usize_array(&self.image_size)),
            ("patch_size", self.patch_size.into()),
            ("in_chans", self.in_chans.into()),
            ("embed_dim", self.embed_dim.into()),
            ("depth", self.depth.into()),
            ("num_heads", self.num_heads.into()),
            ("mlp_hidden", self.mlp_hidden.into()),
            ("layer_norm_eps", self.layer_norm_eps.into()),
            ("class_token", self.class_token.into()),
            ("dist_token", self.dist_token.into()),
            ("pos_embed_prefix", self.pos_embed_prefix.into()),
            ("pos_embed_grid", usize_array(&self.pos_embed_grid)),
            (
                "pos_interpolation",
                Value::from(match self.pos_interpolation {
                    PosInterpolation::Bicubic => "bicubic",
                    PosInterpolation::BicubicAntialias => "bicubic_antialias",
                }),
            ),
            ("layer_scale", self.layer_scale.into()),
            ("final_norm", self.final_norm.into()),
            (
                "global_pool",
                Value::from(match self.global_pool {
                    GlobalPool::Token => "token",
                    GlobalPool::Avg => "avg",
                }),
            ),
            ("fc_norm", self.fc_norm.into()),
            (
                "head",
                Value::from(match self.head {
                    Head::None => "none",
                    Head::Linear => "linear",
                    Head::Distilled => "distilled",
                }),
            ),
            ("num_classes", self.num_classes.into()),
        ])
    }

    /// Parses the metadata JSON object (and validates it).
    pub fn from_json(v: &Value) -> Result<ModelConfig> {
        let r = Fields { v, what: "config" };
        let cfg = ModelConfig {
            architecture: r.string("architecture")?,
            image_size: r.pair("image_size")?,
            patch_size: r.usize("patch_size")?,
            in_chans: r.usize("in_chans")?,
            embed_dim: r.usize("embed_dim")?,
            depth: r.usize("depth")?,
            num_heads: r.usize("num_heads")?,
            mlp_hidden: r.usize("mlp_hidden")?,
            layer_norm_eps: r.f64("layer_norm_eps")? as f32,
            class_token: r.bool("class_token")?,
            dist_token: r.bool("dist_token")?,
            pos_embed_prefix: r.usize("pos_embed_prefix")?,
            pos_embed_grid: r.pair("pos_embed_grid")?,
            pos_interpolation: match r.string("pos_interpolation")?.as_str() {
                "bicubic" => PosInterpolation::Bicubic,
                "bicubic_antialias" => PosInterpolation::BicubicAntialias,
                other => return Err(Error::Config(format!("unknown pos_interpolation `{other}`"))),
            },
            layer_scale: r.bool("layer_scale")?,
            final_norm: r.bool("final_norm")?,
            global_pool: match r.string("global_pool")?.as_str() {
                "token" => GlobalPool::Token,
                "avg" => GlobalPool::Avg,
                other => return Err(Error::Config(format!("unknown global_pool `{other}`"))),
            },
            fc_norm: r.bool("fc_norm")?,
            head: match r.string("head")?.as_str() {
                "none" => Head::None,
                "linear" => Head::Linear,
                "distilled" => Head::Distilled,
                other => return Err(Error::Config(format!("unknown head `{other}`"))),
            },
            num_classes: r.usize("num_classes")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Image resampling filter of the preprocessing pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Bicubic (PIL, antialiased).
    Bicubic,
    /// Bilinear (PIL, antialiased).
    Bilinear,
    /// Nearest neighbour.
    Nearest,
}

/// The timm-style eval transform of a model: resize, center crop, normalise.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// `[C, H, W]` of the network input.
    pub input_size: [usize; 3],
    /// Per-channel mean (on the [0, 1] scale).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
    /// Resize filter.
    pub interpolation: Interpolation,
    /// Fraction of the resized image kept by the center crop.
    pub crop_pct: f32,
}

impl Preprocess {
    /// Serialises to the metadata JSON object.
    pub fn to_json(&self) -> Value {
        json::object([
            ("input_size", usize_array(&self.input_size)),
            ("mean", Value::Array(self.mean.iter().map(|&m| Value::from(m)).collect())),
            ("std", Value::Array(self.std.iter().map(|&m| Value::from(m)).collect())),
            (
                "interpolation",
                Value::from(match self.interpolation {
                    Interpolation::Bicubic => "bicubic",
                    Interpolation::Bilinear => "bilinear",
                    Interpolation::Nearest => "nearest",
                }),
            ),
            ("crop_pct", self.crop_pct.into()),
            ("crop_mode", Value::from("center")),
        ])
    }

    /// Parses the metadata JSON object.
    pub fn from_json(v: &Value) -> Result<Preprocess> {
        let r = Fields { v, what: "preprocess" };
        let size = r.get("input_size")?.as_array().filter(|a| a.len() == 3);
        let size = size.ok_or_else(|| Error::Config("preprocess.input_size must be [C, H, W]".to_string()))?;
        let mut input_size = [0usize; 3];
        for (dst, s) in input_size.iter_mut().zip(size) {
            *dst = s
                .as_usize()
                .filter(|&x| x > 0 && x <= 8192)
                .ok_or_else(|| Error::Config("preprocess.input_size entries must be positive integers".to_string()))?;
        }
        let floats = |key: &str| -> Result<Vec<f32>> {
            let arr =
                r.get(key)?.as_array().ok_or_else(|| Error::Config(format!("preprocess.{key} must be an array")))?;
            let v: Option<Vec<f32>> = arr.iter().map(|x| x.as_f64().map(|f| f as f32)).collect();
            let v = v.ok_or_else(|| Error::Config(format!("preprocess.{key} must hold numbers")))?;
            if v.len() != input_size[0] {
                return Err(Error::Config(format!("preprocess.{key} needs {} entries", input_size[0])));
            }
            Ok(v)
        };
        let mean = floats("mean")?;
        let std = floats("std")?;
        if std.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(Error::Config("preprocess.std entries must be positive".to_string()));
        }
        let interpolation = match r.string("interpolation")?.as_str() {
            "bicubic" => Interpolation::Bicubic,
            "bilinear" => Interpolation::Bilinear,
            "nearest" => Interpolation::Nearest,
            other => return Err(Error::Config(format!("unknown interpolation `{other}`"))),
        };
        let crop_pct = r.f64("crop_pct")? as f32;
        if !(crop_pct > 0.0 && crop_pct <= 1.0) {
            return Err(Error::Config(format!("crop_pct {crop_pct} must be in (0, 1]")));
        }
        Ok(Preprocess { input_size, mean, std, interpolation, crop_pct })
    }
}

fn usize_array(v: &[usize]) -> Value {
    Value::Array(v.iter().map(|&x| Value::from(x)).collect())
}

struct Fields<'a> {
    v: &'a Value,
    what: &'static str,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.v.get(key).ok_or_else(|| Error::Config(format!("{}.{key} is missing", self.what)))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.get(key)?
            .as_usize()
            .ok_or_else(|| Error::Config(format!("{}.{key} must be a non-negative integer", self.what)))
    }
    fn f64(&self, key: &str) -> Result<f64> {
        self.get(key)?.as_f64().ok_or_else(|| Error::Config(format!("{}.{key} must be a number", self.what)))
    }
    fn bool(&self, key: &str) -> Result<bool> {
        self.get(key)?.as_bool().ok_or_else(|| Error::Config(format!("{}.{key} must be a boolean", self.what)))
    }
    fn string(&self, key: &str) -> Result<String> {
        Ok(self
            .get(key)?
            .as_str()
            .ok_or_else(|| Error::Config(format!("{}.{key} must be a string", self.what)))?
            .to_string())
    }
    fn pair(&self, key: &str) -> Result<[usize; 2]> {
        let a = self.get(key)?.as_array().filter(|a| a.len() == 2);
        let a = a.ok_or_else(|| Error::Config(format!("{}.{key} must be a pair of integers", self.what)))?;
        match (a[0].as_usize(), a[1].as_usize()) {
            (Some(x), Some(y)) => Ok([x, y]),
            _ => Err(Error::Config(format!("{}.{key} must be a pair of integers", self.what))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny() -> ModelConfig {
        ModelConfig {
            architecture: "test".into(),
            image_size: [32, 32],
            patch_size: 8,
            in_chans: 3,
            embed_dim: 64,
            depth: 2,
            num_heads: 4,
            mlp_hidden: 256,
            layer_norm_eps: 1e-6,
            class_token: true,
            dist_token: false,
            pos_embed_prefix: 1,
            pos_embed_grid: [4, 4],
            pos_interpolation: PosInterpolation::Bicubic,
            layer_scale: false,
            final_norm: true,
            global_pool: GlobalPool::Token,
            fc_norm: false,
            head: Head::Linear,
            num_classes: 10,
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = tiny();
        let text = c.to_json().to_json();
        let back = ModelConfig::from_json(&json::parse(text.as_bytes()).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn config_rejects_inconsistency() {
        let mut c = tiny();
        c.num_heads = 5;
        assert!(c.validate().is_err());
        let mut c = tiny();
        c.head = Head::Distilled;
        assert!(c.validate().is_err());
        let mut c = tiny();
        c.class_token = false;
        assert!(c.validate().is_err());
    }

    /// Fuzzer find (ffi_open_memory): a model whose image_size is smaller than a patch loaded,
    /// but no session at its own input size could be created.
    #[test]
    fn config_rejects_an_image_smaller_than_a_patch() {
        let mut c = tiny();
        c.image_size = [c.patch_size - 1, 32];
        assert!(c.validate().is_err());
        c.image_size = [c.patch_size, c.patch_size];
        assert!(c.validate().is_ok());
    }

    #[test]
    fn preprocess_round_trips() {
        let p = Preprocess {
            input_size: [3, 224, 224],
            mean: alloc::vec![0.485, 0.456, 0.406],
            std: alloc::vec![0.229, 0.224, 0.225],
            interpolation: Interpolation::Bicubic,
            crop_pct: 0.875,
        };
        let back = Preprocess::from_json(&json::parse(p.to_json().to_json().as_bytes()).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
