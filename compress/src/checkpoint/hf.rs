//! Hugging Face transformers layout: `config.json` (`model_type`, `architectures`) and
//! weights under transformers' names, for `ViTModel`, `ViTForImageClassification`,
//! `DeiTModel`, `DeiTForImageClassification`, `DeiTForImageClassificationWithTeacher` and
//! `Dinov2Model`. Separate query/key/value projections are fused into one `attn.qkv` layer
//! (rows `[q; k; v]`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use factorvit::format::schema::{
    BlockLinear, BlockTensors, LinearTensors, NormTensors, CLS_TOKEN, DIST_TOKEN, FINAL_NORM, HEAD, HEAD_DIST,
    PATCH_EMBED, POS_EMBED,
};
use factorvit::{GlobalPool, Head, ModelConfig, PosInterpolation};
use serde_json::Value;

use super::cfgjson::{label_list, Obj};
use super::files::SourceTensor;
use super::inputs::hf_preprocess;
use super::mapping::{Geometry, Mapper, Origin, Setting};
use super::{CheckpointError, ModelSpec};

/// Model families of transformers this importer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Vit,
    Deit,
    Dinov2,
}

/// What a transformers model class puts on top of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// Backbone: `last_hidden_state` and a pooled output.
    None,
    /// `classifier` on the class token.
    Classifier,
    /// DeiT with teacher: `cls_classifier` and `distillation_classifier`, averaged.
    Teacher,
}

/// Supported classes: `(class name, family, top, base_model_prefix)`.
const CLASSES: [(&str, Family, Top, &str); 6] = [
    ("ViTModel", Family::Vit, Top::None, "vit."),
    ("ViTForImageClassification", Family::Vit, Top::Classifier, "vit."),
    ("DeiTModel", Family::Deit, Top::None, "deit."),
    ("DeiTForImageClassification", Family::Deit, Top::Classifier, "deit."),
    ("DeiTForImageClassificationWithTeacher", Family::Deit, Top::Teacher, "deit."),
    ("Dinov2Model", Family::Dinov2, Top::None, "dinov2."),
];

fn unsupported(config_path: &Path, arch: &str, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::UnsupportedArchitecture {
        file: config_path.to_path_buf(),
        architecture: arch.to_string(),
        reason: reason.into(),
    }
}

fn leftover_hint(name: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 5] = [
        ("weights_in", "SwiGLU feed-forward layers (use_swiglu_ffn) are not supported"),
        ("register_tokens", "register tokens are not supported"),
        ("decoder", "masked-image-modeling decoders are not supported"),
        ("classifier", "this classifier does not match the model class in config.json"),
        ("distillation_token", "a distillation token belongs to DeiT models"),
    ];
    HINTS.iter().find(|(pat, _)| name.contains(pat)).map(|(_, h)| *h)
}

/// Imports a transformers checkpoint.
pub(crate) fn import(
    dir: &Path,
    config_path: &Path,
    config: &Value,
    weights: BTreeMap<String, SourceTensor>,
) -> Result<ModelSpec, CheckpointError> {
    let root = Obj::root(config_path, config)?;
    let model_type = root.str("model_type")?;
    let arch = match root.get("architectures") {
        Some(Value::Array(a)) if !a.is_empty() => {
            a[0].as_str().ok_or_else(|| root.error("architectures", "must hold class names"))?.to_string()
        }
        Some(Value::Array(_)) | None => match model_type {
            Some("vit") => "ViTModel".to_string(),
            Some("deit") => "DeiTModel".to_string(),
            Some("dinov2") => "Dinov2Model".to_string(),
            Some(other) => return Err(unsupported(config_path, other, "unsupported model_type")),
            None => return Err(root.error("architectures", "is missing (and so is model_type)")),
        },
        Some(_) => return Err(root.error("architectures", "must be a list of class names")),
    };
    let &(_, family, top, base_prefix) = CLASSES.iter().find(|c| c.0 == arch).ok_or_else(|| {
        let reason = if arch == "Dinov2ForImageClassification" {
            "its classifier reads the class token concatenated with the mean patch token, which the format cannot express; \
             import the Dinov2Model backbone instead"
                .to_string()
        } else {
            format!("supported transformers classes: {}", CLASSES.map(|c| c.0).join(", "))
        };
        unsupported(config_path, &arch, reason)
    })?;
    let expected_type = match family {
        Family::Vit => "vit",
        Family::Deit => "deit",
        Family::Dinov2 => "dinov2",
    };
    if let Some(t) = model_type {
        if t != expected_type {
            return Err(CheckpointError::Contradiction {
                what: format!("config.json model_type `{t}` does not match architecture `{arch}`"),
            });
        }
    }
    let act = root.str("hidden_act")?.unwrap_or("gelu");
    if act != "gelu" {
        return Err(unsupported(
            config_path,
            &arch,
            format!("hidden_act `{act}` is not supported (only exact `gelu`)"),
        ));
    }
    if family == Family::Dinov2 && root.bool("use_swiglu_ffn")? == Some(true) {
        return Err(unsupported(config_path, &arch, "use_swiglu_ffn = true is not supported"));
    }

    // Settings: transformers' config defaults, overridden by config.json.
    let explicit = |key: &str| format!("config.json {key}");
    let mut hidden = Setting::default("hidden_size", 768usize);
    let mut layers = Setting::default("num_hidden_layers", 12usize);
    let mut heads = Setting::default("num_attention_heads", 12usize);
    let mut channels = Setting::default("num_channels", 3usize);
    let mut patch = Setting::default("patch_size", if family == Family::Dinov2 { 14 } else { 16 });
    let mut image = Setting::default("image_size", [224usize, 224]);
    let mut qkv_bias = Setting::default("qkv_bias", true);
    for (s, key) in [
        (&mut hidden, "hidden_size"),
        (&mut layers, "num_hidden_layers"),
        (&mut heads, "num_attention_heads"),
        (&mut channels, "num_channels"),
    ] {
        if let Some(v) = root.usize(key)? {
            s.set(v, Origin::Explicit, explicit(key));
        }
    }
    if let Some([p, q]) = root.pair("patch_size")? {
        if p != q {
            return Err(root.error("patch_size", "non-square patches are not supported"));
        }
        patch.set(p, Origin::Explicit, explicit("patch_size"));
    }
    if let Some(s) = root.pair("image_size")? {
        image.set(s, Origin::Explicit, explicit("image_size"));
    }
    if let Some(b) = root.bool("qkv_bias")? {
        qkv_bias.set(b, Origin::Explicit, explicit("qkv_bias"));
    }
    let eps_default = if family == Family::Dinov2 { 1e-6 } else { 1e-12 };
    let eps = root.f64("layer_norm_eps")?.unwrap_or(eps_default);
    if eps.is_nan() || eps < 0.0 {
        return Err(root.error("layer_norm_eps", "must be non-negative"));
    }

    // Tensors.
    let mut m = Mapper::new(dir, weights);
    let prefix = ["", base_prefix]
        .into_iter()
        .find(|p| m.has(&format!("{p}embeddings.patch_embeddings.projection.weight")))
        .unwrap_or(if top == Top::None { "" } else { base_prefix });
    let e = |s: &str| format!("{prefix}embeddings.{s}");
    let patch_embed = LinearTensors::of(PATCH_EMBED);
    m.require(&e("patch_embeddings.projection.weight"), &patch_embed.weight)?;
    m.require(&e("patch_embeddings.projection.bias"), &patch_embed.bias)?;
    m.require(&e("cls_token"), CLS_TOKEN)?;
    if family == Family::Deit {
        m.require(&e("distillation_token"), DIST_TOKEN)?;
    }
    m.require(&e("position_embeddings"), POS_EMBED)?;
    m.discard(&e("mask_token"));
    let layer_prefix = format!("{prefix}encoder.layer.");
    let mut indices = BTreeSet::new();
    for name in m.remaining() {
        if let Some(idx) = name.strip_prefix(&layer_prefix).and_then(|r| r.split('.').next()) {
            if let Ok(i) = idx.parse::<usize>() {
                if i < 1024 {
                    indices.insert(i);
                }
            }
        }
    }
    for i in indices {
        let src = |s: &str| format!("{layer_prefix}{i}.{s}");
        let dst = BlockTensors::of(i);
        let linear = |which| LinearTensors::of(&dst.linear(which));
        let (qkv, proj) = (linear(BlockLinear::Qkv), linear(BlockLinear::Proj));
        let (fc1_dst, fc2_dst) = (linear(BlockLinear::Fc1), linear(BlockLinear::Fc2));
        let (n1, n2, fc1, fc2) = match family {
            Family::Dinov2 => ("norm1", "norm2", "mlp.fc1", "mlp.fc2"),
            _ => ("layernorm_before", "layernorm_after", "intermediate.dense", "output.dense"),
        };
        for (k, p) in ["weight", "bias"].into_iter().enumerate() {
            m.map(&src(&format!("{n1}.{p}")), dst.norm1.weight_and_bias()[k])?;
            let qkv_src = ["query", "key", "value"].map(|t| src(&format!("attention.attention.{t}.{p}")));
            m.fuse_rows([&qkv_src[0], &qkv_src[1], &qkv_src[2]], qkv.dense()[k])?;
            m.map(&src(&format!("attention.output.dense.{p}")), proj.dense()[k])?;
            m.map(&src(&format!("{n2}.{p}")), dst.norm2.weight_and_bias()[k])?;
            m.map(&src(&format!("{fc1}.{p}")), fc1_dst.dense()[k])?;
            m.map(&src(&format!("{fc2}.{p}")), fc2_dst.dense()[k])?;
        }
        if family == Family::Dinov2 {
            m.map(&src("layer_scale1.lambda1"), &dst.ls1)?;
            m.map(&src("layer_scale2.lambda1"), &dst.ls2)?;
        }
    }
    let (norm, head, head_dist) = (NormTensors::of(FINAL_NORM), LinearTensors::of(HEAD), LinearTensors::of(HEAD_DIST));
    for (k, p) in ["weight", "bias"].into_iter().enumerate() {
        m.map(&format!("{prefix}layernorm.{p}"), norm.weight_and_bias()[k])?;
        match top {
            Top::None => {}
            Top::Classifier => {
                m.map(&format!("classifier.{p}"), head.dense()[k])?;
            }
            Top::Teacher => {
                m.map(&format!("cls_classifier.{p}"), head.dense()[k])?;
                m.map(&format!("distillation_classifier.{p}"), head_dist.dense()[k])?;
            }
        }
    }
    let pooler = [format!("{prefix}pooler.dense.weight"), format!("{prefix}pooler.dense.bias")];
    if pooler.iter().map(|p| m.discard(p)).fold(false, |a, b| a | b) {
        m.warnings.push(format!(
            "`{prefix}pooler.dense` dropped: factorvit's pooler_output is the class token after the final norm, \
             not transformers' tanh(dense(...)) pooler"
        ));
    }
    m.finish(leftover_hint)?;
    let g = Geometry::read(&m, &|i| format!("{layer_prefix}{i}"))?;

    let d = hidden.reconcile(g.embed_dim, "the patch embedding weight")?;
    let c = channels.reconcile(g.in_chans, "the patch embedding weight")?;
    let p = patch.reconcile(g.patch_size, "the patch embedding weight")?;
    let depth = layers.reconcile(g.depth, "the encoder.layer.* tensors")?;
    let mut mlp = Setting::default("intermediate size", 0usize);
    if family == Family::Dinov2 {
        let ratio = root.f64("mlp_ratio")?.unwrap_or(4.0);
        let width = d as f64 * ratio;
        if !(1.0..1e9).contains(&width) {
            return Err(root.error("mlp_ratio", format!("{ratio} gives no valid MLP width")));
        }
        mlp.set(width.floor() as usize, Origin::Explicit, format!("hidden_size {d} x config.json mlp_ratio {ratio}"));
    } else if let Some(v) = root.usize("intermediate_size")? {
        mlp.set(v, Origin::Explicit, explicit("intermediate_size"));
    } else {
        mlp.set(4 * d, Origin::Default, "the default");
    }
    let mlp_hidden = mlp.reconcile(g.mlp_hidden, "the first MLP weight")?;
    qkv_bias.reconcile(g.qkv_bias, "the presence of query/key/value biases")?;
    if heads.value == 0 || d % heads.value != 0 {
        return Err(root.error("num_attention_heads", format!("{} does not divide hidden_size {d}", heads.value)));
    }
    let want_ls = family == Family::Dinov2;
    if g.layer_scale != want_ls {
        return Err(CheckpointError::Contradiction {
            what: format!(
                "{arch} {} LayerScale, but the weights {}",
                if want_ls { "has" } else { "has no" },
                if g.layer_scale { "have layer_scale tensors" } else { "have none" }
            ),
        });
    }
    let prefix_tokens = g.prefix();
    let (image_size, grid) = if image.origin != Origin::Default {
        let [h, w] = image.value;
        let grid = [h / p, w / p];
        let cells = grid[0].saturating_mul(grid[1]);
        if cells.checked_add(prefix_tokens) != Some(g.pos_rows) {
            return Err(CheckpointError::Contradiction {
                what: format!(
                    "position_embeddings has {} rows, but image_size {h}x{w} with patch {p} gives a {}x{} grid and {prefix_tokens} prefix token(s)",
                    g.pos_rows, grid[0], grid[1]
                ),
            });
        }
        (image.value, grid)
    } else {
        let cells = g.pos_rows.saturating_sub(prefix_tokens);
        let side = (1..=cells).find(|s| s * s >= cells).unwrap_or(0);
        if cells == 0 || side * side != cells {
            return Err(CheckpointError::Contradiction {
                what: format!("cannot infer the image size: position_embeddings has {} rows", g.pos_rows),
            });
        }
        ([side * p, side * p], [side, side])
    };

    let k = g.head_classes.unwrap_or(0);
    let head = match (top, k) {
        (_, 0) => Head::None,
        (Top::Teacher, _) => Head::Distilled,
        _ => Head::Linear,
    };
    let labels = if k == 0 {
        Vec::new()
    } else {
        match label_list(&root, "id2label")? {
            None => Vec::new(),
            Some(l) if l.len() == k => l,
            Some(l) => {
                return Err(CheckpointError::Contradiction {
                    what: format!("config.json id2label has {} entries but the classifier has {k} outputs", l.len()),
                })
            }
        }
    };
    let config = ModelConfig {
        architecture: arch.clone(),
        image_size,
        patch_size: p,
        in_chans: c,
        embed_dim: d,
        depth,
        num_heads: heads.value,
        mlp_hidden,
        layer_norm_eps: eps as f32,
        class_token: true,
        dist_token: family == Family::Deit,
        pos_embed_prefix: prefix_tokens,
        pos_embed_grid: grid,
        pos_interpolation: PosInterpolation::Bicubic,
        layer_scale: want_ls,
        final_norm: true,
        global_pool: GlobalPool::Token,
        fc_norm: false,
        head,
        num_classes: k,
    };
    let preprocess = hf_preprocess(dir, c, image_size, &mut m.warnings)?;
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let spec = ModelSpec {
        config,
        preprocess,
        labels,
        source: format!("transformers checkpoint `{arch}` ({dir_name})"),
        tensors: std::mem::take(&mut m.out),
        metadata: BTreeMap::new(),
        warnings: std::mem::take(&mut m.warnings),
    };
    spec.validate().map_err(|e| m.explain(e))?;
    Ok(spec)
}
