//! timm hub layout: `config.json` with `architecture`, `model_args` and `pretrained_cfg`, and
//! weights under timm's own names (`VisionTransformer`, `VisionTransformerDistilled`).
//!
//! Configuration values are resolved in increasing precedence: timm's `VisionTransformer`
//! defaults, the table of standard sizes selected by the architecture name
//! ([`TimmName::parse`]), top-level `config.json` keys, then `model_args`. Everything the tensors
//! determine (widths, depth, MLP width, biases, tokens, LayerScale, norms, classes) is read off
//! them and must agree with any value stated by the name or the config; defaults give way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use factorvit::format::schema::{
    BlockLinear, BlockTensors, LinearTensors, NormTensors, CLS_TOKEN, DIST_TOKEN, FC_NORM, FINAL_NORM, HEAD, HEAD_DIST,
    PATCH_EMBED, POS_EMBED,
};
use factorvit::{GlobalPool, Head, ModelConfig, PosInterpolation};
use serde_json::Value;

use super::cfgjson::{label_list, Obj};
use super::files::SourceTensor;
use super::inputs::timm_preprocess;
use super::mapping::{Geometry, Mapper, Origin, Setting};
use super::{CheckpointError, ModelSpec};

/// A standard ViT size: `(name, embed_dim, depth, num_heads, mlp_ratio)`.
pub type StandardSize = (&'static str, usize, usize, usize, f64);

/// The standard ViT/DeiT sizes timm registers (`vit_{size}_patch{P}_{img}`, `deit_*`, `deit3_*`).
pub const STANDARD_SIZES: [StandardSize; 6] = [
    ("tiny", 192, 12, 3, 4.0),
    ("small", 384, 12, 6, 4.0),
    ("base", 768, 12, 12, 4.0),
    ("large", 1024, 24, 16, 4.0),
    ("huge", 1280, 32, 16, 4.0),
    ("giant", 1408, 40, 16, 48.0 / 11.0),
];

/// Architecture families this importer reads.
const FAMILIES: [&str; 3] = ["vit", "deit", "deit3"];

/// What a timm architecture name says about the model.
#[derive(Debug, Clone, PartialEq)]
pub struct TimmName {
    /// `vit`, `deit` or `deit3`.
    pub family: String,
    /// The standard size, when the name has one of [`STANDARD_SIZES`].
    pub size: Option<StandardSize>,
    /// `patch{P}`.
    pub patch_size: Option<usize>,
    /// The first plain number after the patch size (the training resolution).
    pub image_size: Option<usize>,
    /// `*_distilled_*`: a `VisionTransformerDistilled`.
    pub distilled: bool,
    /// deit3 models: position table without prefix rows.
    pub no_embed_class: bool,
    /// deit3 and dinov2 models carry LayerScale.
    pub layer_scale: bool,
}

impl TimmName {
    /// Parses `family_size[_distilled]_patchP[_variant]_img[.tag]`, e.g.
    /// `deit_tiny_distilled_patch16_224`, `vit_base_patch32_384.augreg_in21k`, `vit_custom`.
    /// Fails for families other than `vit`, `deit`, `deit3` and for variants whose features
    /// the format cannot represent.
    pub fn parse(name: &str) -> Result<TimmName, String> {
        let base = name.split('.').next().unwrap_or(name);
        let tokens: Vec<&str> = base.split('_').collect();
        let family = tokens[0];
        if !FAMILIES.contains(&family) {
            return Err(format!(
                "only timm VisionTransformer / VisionTransformerDistilled models (vit_*, deit_*, deit3_*) are supported, not the `{family}` family"
            ));
        }
        let mut out = TimmName {
            family: family.to_string(),
            size: None,
            patch_size: None,
            image_size: None,
            distilled: false,
            no_embed_class: family == "deit3",
            layer_scale: family == "deit3",
        };
        for &t in &tokens[1..] {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if let Some(size) = STANDARD_SIZES.iter().find(|s| s.0 == t) {
                out.size = Some(*size);
            } else if t == "distilled" {
                out.distilled = true;
            } else if let Some(p) = t.strip_prefix("patch").filter(|p| digits(p)) {
                out.patch_size = p.parse().ok();
            } else if digits(t) {
                if out.image_size.is_none() {
                    out.image_size = t.parse().ok();
                }
            } else if t == "dinov2" {
                out.layer_scale = true;
            } else if let Some(why) = unsupported_variant(t) {
                return Err(format!("`{name}`: {why}"));
            }
        }
        Ok(out)
    }
}

/// Name tokens of timm ViT variants whose features the format does not have.
fn unsupported_variant(token: &str) -> Option<&'static str> {
    let digits_after = |prefix: &str| {
        token.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    };
    if token.starts_with("resnet") || (digits_after("r") && token.len() <= 4) {
        Some("hybrid CNN-stem models are not supported")
    } else if digits_after("reg") {
        Some("register tokens are not supported")
    } else if token.contains("quickgelu") {
        Some("QuickGELU activations are not supported")
    } else if matches!(token, "rope" | "relpos" | "srelpos" | "naflex" | "map" | "siglip" | "siglip2") {
        Some("this ViT variant (rotary/relative positions, attention pooling or SigLIP) is not supported")
    } else {
        None
    }
}

/// `model_args` keys that only affect training.
const IGNORED_ARGS: [&str; 10] = [
    "drop_rate",
    "pos_drop_rate",
    "patch_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "weight_init",
    "fix_init",
    "dynamic_img_size",
    "pretrained_strict",
];
/// `model_args` keys this importer interprets.
const HANDLED_ARGS: [&str; 16] = [
    "img_size",
    "patch_size",
    "in_chans",
    "num_classes",
    "global_pool",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "proj_bias",
    "init_values",
    "class_token",
    "no_embed_class",
    "fc_norm",
    "final_norm",
];

/// Checks the keys of `model_args` that must keep their default value for the model to be
/// representable; fails on keys the importer does not know.
fn check_model_args(args: &Obj<'_>) -> Result<(), CheckpointError> {
    for (key, value) in args.map {
        let k = key.as_str();
        if IGNORED_ARGS.contains(&k) || HANDLED_ARGS.contains(&k) {
            continue;
        }
        let ok = match k {
            "qk_norm" | "pre_norm" | "dynamic_img_pad" | "scale_attn_norm" | "scale_mlp_norm" => {
                value.is_null() || value == &Value::Bool(false)
            }
            "reg_tokens" => value.is_null() || value.as_u64() == Some(0),
            "pos_embed" => value.is_null() || value.as_str() == Some("learn"),
            "act_layer" => value.is_null() || matches!(value.as_str(), Some("gelu")),
            "norm_layer" | "embed_layer" | "block_fn" | "mlp_layer" | "attn_layer" | "embed_norm_layer" => {
                value.is_null()
            }
            _ => {
                return Err(args.error(k, format!("is not supported by the importer (value {value})")));
            }
        };
        if !ok {
            return Err(args.error(k, format!("= {value} is not supported (only the standard ViT block is)")));
        }
    }
    Ok(())
}

/// Hints for source tensors no rule consumed.
fn leftover_hint(name: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 9] = [
        ("norm_pre", "pre_norm=True (a LayerNorm before the blocks) is not supported"),
        ("reg_token", "register tokens are not supported"),
        ("q_norm", "qk_norm is not supported"),
        ("k_norm", "qk_norm is not supported"),
        ("attn_pool", "global_pool='map' (attention pooling) is not supported"),
        ("patch_embed.backbone", "hybrid CNN stems are not supported"),
        ("mlp.norm", "scale_mlp_norm is not supported"),
        ("attn.norm", "scale_attn_norm is not supported"),
        ("fc1_g", "gated MLPs (SwiGLU) are not supported"),
    ];
    if name == "dist_token" || name.starts_with("head_dist") {
        return Some(
            "distillation tokens and heads belong to VisionTransformerDistilled (`*_distilled_*` architectures)",
        );
    }
    HINTS.iter().find(|(pat, _)| name.contains(pat)).map(|(_, h)| *h)
}

/// Moves timm tensors to canonical names. timm's names are spelled here (they are timm's
/// vocabulary, even where they coincide with the format's); the canonical ones come from the
/// schema.
fn map_tensors(m: &mut Mapper) -> Result<(), CheckpointError> {
    let patch_embed = LinearTensors::of(PATCH_EMBED);
    m.require("patch_embed.proj.weight", &patch_embed.weight)?;
    m.require("patch_embed.proj.bias", &patch_embed.bias)?;
    for (src, dst) in [("cls_token", CLS_TOKEN), ("dist_token", DIST_TOKEN)] {
        m.map(src, dst)?;
    }
    m.require("pos_embed", POS_EMBED)?;
    let mut blocks = BTreeSet::new();
    for name in m.remaining() {
        if let Some(idx) = name.strip_prefix("blocks.").and_then(|r| r.split('.').next()) {
            if let Ok(i) = idx.parse::<usize>() {
                if i < 1024 {
                    blocks.insert(i);
                }
            }
        }
    }
    for i in blocks {
        let src = format!("blocks.{i}");
        let dst = BlockTensors::of(i);
        let linear = |which| LinearTensors::of(&dst.linear(which));
        let (qkv, proj) = (linear(BlockLinear::Qkv), linear(BlockLinear::Proj));
        let (fc1, fc2) = (linear(BlockLinear::Fc1), linear(BlockLinear::Fc2));
        let parts = [
            ("norm1", dst.norm1.weight_and_bias()),
            ("attn.qkv", qkv.dense()),
            ("attn.proj", proj.dense()),
            ("norm2", dst.norm2.weight_and_bias()),
            ("mlp.fc1", fc1.dense()),
            ("mlp.fc2", fc2.dense()),
        ];
        for (part, [weight, bias]) in parts {
            m.map(&format!("{src}.{part}.weight"), weight)?;
            m.map(&format!("{src}.{part}.bias"), bias)?;
        }
        m.map(&format!("{src}.ls1.gamma"), &dst.ls1)?;
        m.map(&format!("{src}.ls2.gamma"), &dst.ls2)?;
    }
    let (norm, fc_norm) = (NormTensors::of(FINAL_NORM), NormTensors::of(FC_NORM));
    let (head, head_dist) = (LinearTensors::of(HEAD), LinearTensors::of(HEAD_DIST));
    let tops = [
        ("norm", norm.weight_and_bias()),
        ("fc_norm", fc_norm.weight_and_bias()),
        ("head", head.dense()),
        ("head_dist", head_dist.dense()),
    ];
    for (part, [weight, bias]) in tops {
        m.map(&format!("{part}.weight"), weight)?;
        m.map(&format!("{part}.bias"), bias)?;
    }
    m.finish(leftover_hint)
}

/// Imports a timm hub checkpoint.
pub(crate) fn import(
    dir: &Path,
    config_path: &Path,
    config: &Value,
    weights: BTreeMap<String, SourceTensor>,
) -> Result<ModelSpec, CheckpointError> {
    let root = Obj::root(config_path, config)?;
    let arch = root.str("architecture")?.ok_or_else(|| root.error("architecture", "is missing"))?;
    let name = TimmName::parse(arch).map_err(|reason| CheckpointError::UnsupportedArchitecture {
        file: config_path.to_path_buf(),
        architecture: arch.to_string(),
        reason,
    })?;
    let args = root.object("model_args", "model_args.")?;
    if let Some(a) = &args {
        check_model_args(a)?;
    }
    let named = |what: &str| format!("the architecture name `{arch}` ({what})");
    let from_args = |key: &str| format!("config.json model_args.{key}");

    // timm VisionTransformer defaults, then the name, then top-level keys, then model_args.
    let mut embed_dim = Setting::default("embed_dim", 768usize);
    let mut depth = Setting::default("depth", 12usize);
    let mut num_heads = Setting::default("num_heads", 12usize);
    let mut mlp_ratio = Setting::default("mlp_ratio", 4.0f64);
    let mut patch_size = Setting::default("patch_size", 16usize);
    let mut img_size = Setting::default("img_size", [224usize, 224]);
    let mut in_chans = Setting::default("in_chans", 3usize);
    let mut num_classes = Setting::default("num_classes", 1000usize);
    let mut global_pool = Setting::default("global_pool", "token".to_string());
    let mut qkv_bias = Setting::default("qkv_bias", true);
    let mut layer_scale = Setting::default("init_values (LayerScale)", false);
    let mut class_token = Setting::default("class_token", true);
    let mut no_embed_class = Setting::default("no_embed_class", false);
    let mut distilled = Setting::default("distillation token", false);

    if let Some((size, d, l, h, r)) = name.size {
        let what = named(size);
        embed_dim.set(d, Origin::Name, &what);
        depth.set(l, Origin::Name, &what);
        num_heads.set(h, Origin::Name, &what);
        mlp_ratio.set(r, Origin::Name, &what);
        // A registered name fixes the class: distilled or not.
        distilled.set(name.distilled, Origin::Name, named("distilled or not"));
    } else if name.distilled {
        distilled.set(true, Origin::Name, named("distilled"));
    }
    if let Some(p) = name.patch_size {
        patch_size.set(p, Origin::Name, named("patch size"));
    }
    if let Some(s) = name.image_size {
        img_size.set([s, s], Origin::Name, named("image size"));
    }
    if name.no_embed_class {
        no_embed_class.set(true, Origin::Name, named(&name.family));
    }
    if name.layer_scale {
        layer_scale.set(true, Origin::Name, named("LayerScale"));
    }
    if let Some(k) = root.usize("num_classes")? {
        num_classes.set(k, Origin::TopLevel, "config.json num_classes");
    }
    if let Some(p) = root.str("global_pool")? {
        global_pool.set(p.to_string(), Origin::TopLevel, "config.json global_pool");
    }
    if let Some(a) = &args {
        let set_usize = |s: &mut Setting<usize>, key: &str| -> Result<(), CheckpointError> {
            if let Some(v) = a.usize(key)? {
                s.set(v, Origin::Explicit, from_args(key));
            }
            Ok(())
        };
        set_usize(&mut embed_dim, "embed_dim")?;
        set_usize(&mut depth, "depth")?;
        set_usize(&mut num_heads, "num_heads")?;
        set_usize(&mut in_chans, "in_chans")?;
        set_usize(&mut num_classes, "num_classes")?;
        if let Some(r) = a.f64("mlp_ratio")? {
            mlp_ratio.set(r, Origin::Explicit, from_args("mlp_ratio"));
        }
        if let Some([p, q]) = a.pair("patch_size")? {
            if p != q {
                return Err(a.error("patch_size", "non-square patches are not supported"));
            }
            patch_size.set(p, Origin::Explicit, from_args("patch_size"));
        }
        if let Some(s) = a.pair("img_size")? {
            img_size.set(s, Origin::Explicit, from_args("img_size"));
        }
        if let Some(p) = a.str("global_pool")? {
            global_pool.set(p.to_string(), Origin::Explicit, from_args("global_pool"));
        }
        let set_bool = |s: &mut Setting<bool>, key: &str| -> Result<(), CheckpointError> {
            if let Some(v) = a.bool(key)? {
                s.set(v, Origin::Explicit, from_args(key));
            }
            Ok(())
        };
        set_bool(&mut qkv_bias, "qkv_bias")?;
        set_bool(&mut class_token, "class_token")?;
        set_bool(&mut no_embed_class, "no_embed_class")?;
        if a.contains("init_values") {
            // `null` means no LayerScale, a number means LayerScale.
            let on = a.get("init_values").is_some();
            if on {
                a.f64("init_values")?;
            }
            layer_scale.set(on, Origin::Explicit, from_args("init_values"));
        }
    }

    let mut m = Mapper::new(dir, weights);
    map_tensors(&mut m)?;
    let g = Geometry::read(&m, &|i| format!("blocks.{i}"))?;

    let d = embed_dim.reconcile(g.embed_dim, "patch_embed.proj.weight")?;
    let c = in_chans.reconcile(g.in_chans, "patch_embed.proj.weight")?;
    let p = patch_size.reconcile(g.patch_size, "patch_embed.proj.weight")?;
    let depth = depth.reconcile(g.depth, "the blocks.* tensors")?;
    let mut mlp = Setting::default("mlp hidden width", 0usize);
    let ratio = mlp_ratio.value;
    let hidden = d as f64 * ratio;
    if !(1.0..1e9).contains(&hidden) {
        return Err(CheckpointError::Contradiction { what: format!("mlp_ratio {ratio} gives no valid MLP width") });
    }
    // timm: int(embed_dim * mlp_ratio).
    if mlp_ratio.origin != Origin::Default {
        mlp.set(hidden.floor() as usize, mlp_ratio.origin, format!("embed_dim {d} x mlp_ratio {ratio}"));
    }
    let mlp_hidden = mlp.reconcile(g.mlp_hidden, "blocks.0.mlp.fc1.weight")?;
    qkv_bias.reconcile(g.qkv_bias, "the presence of blocks.*.attn.qkv.bias")?;
    let has_ls = layer_scale.reconcile(g.layer_scale, "the presence of blocks.*.ls1.gamma")?;
    let has_cls = class_token.reconcile(g.class_token, "the presence of cls_token")?;
    let has_dist = distilled.reconcile(g.dist_token, "the presence of dist_token")?;
    if num_heads.origin == Origin::Default {
        return Err(CheckpointError::UnsupportedArchitecture {
            file: config_path.to_path_buf(),
            architecture: arch.to_string(),
            reason:
                "num_heads is not in model_args and the name has no standard size (tiny/small/base/large/huge/giant)"
                    .to_string(),
        });
    }
    let heads = num_heads.value;
    if let Some(nf) = root.usize("num_features")? {
        if nf != d {
            return Err(CheckpointError::Contradiction {
                what: format!("config.json num_features = {nf}, but patch_embed.proj.weight gives embed_dim {d}"),
            });
        }
    }

    // Position table: which prefix rows it has and which patch grid.
    let prefix = g.prefix();
    let (image, grid, nec) = if img_size.origin != Origin::Default {
        let [h, w] = img_size.value;
        let grid = [h / p, w / p];
        let cells = grid[0].checked_mul(grid[1]).ok_or_else(|| a_contradiction("img_size is too large"))?;
        let found_nec = if prefix == 0 {
            no_embed_class.value
        } else if g.pos_rows == cells + prefix {
            false
        } else if g.pos_rows == cells {
            true
        } else {
            return Err(CheckpointError::Contradiction {
                what: format!(
                    "pos_embed has {} rows, but img_size {h}x{w} with patch {p} gives a {}x{} grid and {prefix} prefix token(s)",
                    g.pos_rows, grid[0], grid[1]
                ),
            });
        };
        (img_size.value, grid, no_embed_class.reconcile(found_nec, "the pos_embed rows")?)
    } else {
        let nec = no_embed_class.value;
        let cells = g.pos_rows.saturating_sub(if nec { 0 } else { prefix });
        let side = (1..=cells).find(|s| s * s >= cells).unwrap_or(0);
        if cells == 0 || side * side != cells {
            return Err(CheckpointError::Contradiction {
                what: format!("cannot infer the image size: pos_embed has {} rows, not a square grid", g.pos_rows),
            });
        }
        ([side * p, side * p], [side, side], nec)
    };

    // Pooling and norms (timm: fc_norm defaults to global_pool == 'avg', and then `norm` is
    // Identity).
    if global_pool.origin == Origin::Default && (!has_cls || (g.fc_norm && !g.norm)) {
        global_pool.set("avg".to_string(), Origin::Default, "inferred");
    }
    let pool = match global_pool.value.as_str() {
        "token" => GlobalPool::Token,
        "avg" => GlobalPool::Avg,
        other => {
            return Err(CheckpointError::UnsupportedArchitecture {
                file: config_path.to_path_buf(),
                architecture: arch.to_string(),
                reason: format!("global_pool `{other}` is not supported (only `token` and `avg`)"),
            })
        }
    };
    if pool == GlobalPool::Token && !has_cls {
        return Err(a_contradiction("global_pool `token` needs a class token, but the checkpoint has no cls_token"));
    }
    if has_dist && pool != GlobalPool::Token {
        return Err(a_contradiction("distilled models pool with global_pool `token`"));
    }
    let fc_norm_arg = match &args {
        Some(a) => a.bool("fc_norm")?,
        None => None,
    };
    let final_norm_arg = match &args {
        Some(a) => a.bool("final_norm")?.unwrap_or(true),
        None => true,
    };
    let use_fc_norm = fc_norm_arg.unwrap_or(pool == GlobalPool::Avg);
    let want_norm = final_norm_arg && !use_fc_norm;
    if use_fc_norm != g.fc_norm || want_norm != g.norm {
        let has = |b: bool| if b { "present" } else { "absent" };
        return Err(CheckpointError::Contradiction {
            what: format!(
                "global_pool `{}`{} implies fc_norm {} and norm {}, but the weights have fc_norm {} and norm {}",
                global_pool.value,
                fc_norm_arg.map(|f| format!(" with fc_norm={f}")).unwrap_or_default(),
                has(use_fc_norm),
                has(want_norm),
                has(g.fc_norm),
                has(g.norm)
            ),
        });
    }

    let k = num_classes.reconcile(g.head_classes.unwrap_or(0), "head.weight")?;
    let head = match (k, has_dist) {
        (0, _) => Head::None,
        (_, false) => Head::Linear,
        (_, true) => Head::Distilled,
    };
    if k == 0 && has_dist {
        m.warnings.push(
            "distilled backbone without heads: pooler_output is the class token, not timm's mean of class and distillation tokens"
                .to_string(),
        );
    }
    let config = ModelConfig {
        architecture: arch.to_string(),
        image_size: image,
        patch_size: p,
        in_chans: c,
        embed_dim: d,
        depth,
        num_heads: heads,
        mlp_hidden,
        layer_norm_eps: 1e-6,
        class_token: has_cls,
        dist_token: has_dist,
        pos_embed_prefix: if nec { 0 } else { prefix },
        pos_embed_grid: grid,
        pos_interpolation: PosInterpolation::BicubicAntialias,
        layer_scale: has_ls,
        final_norm: want_norm,
        global_pool: pool,
        fc_norm: use_fc_norm,
        head,
        num_classes: k,
    };

    let pcfg = root.object("pretrained_cfg", "pretrained_cfg.")?;
    let preprocess = timm_preprocess(pcfg, c, image, &mut m.warnings)?;
    let mut labels = label_list(&root, "label_names")?;
    if labels.is_none() {
        if let Some(pc) = &pcfg {
            labels = label_list(pc, "label_names")?;
        }
    }
    let labels = match labels {
        None => Vec::new(),
        Some(l) if k == 0 => {
            if !l.is_empty() {
                m.warnings.push(format!("{} label names ignored: the model has no classifier", l.len()));
            }
            Vec::new()
        }
        Some(l) if l.len() == k => l,
        Some(l) => {
            return Err(CheckpointError::Contradiction {
                what: format!("config.json has {} label names but the head has {k} classes", l.len()),
            })
        }
    };
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let spec = ModelSpec {
        config,
        preprocess,
        labels,
        source: format!("timm checkpoint `{arch}` ({dir_name})"),
        tensors: std::mem::take(&mut m.out),
        metadata: BTreeMap::new(),
        warnings: std::mem::take(&mut m.warnings),
    };
    // Cross-check every tensor against the configuration; errors name the source tensors.
    spec.validate().map_err(|e| m.explain(e))?;
    Ok(spec)
}

fn a_contradiction(what: &str) -> CheckpointError {
    CheckpointError::Contradiction { what: what.to_string() }
}
