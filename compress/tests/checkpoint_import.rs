//! Importing timm and transformers checkpoints: configurations, preprocessing, labels and
//! tensors of every fixture (and of the large reference models when `../shared` is present),
//! architecture-name resolution, and q/k/v fusion checked against the source tensors.

mod common;

use common::*;
use factorvit::safetensors::DType;
use factorvit::{GlobalPool, Head, Interpolation, ModelConfig, PosInterpolation};
use factorvit_compress::checkpoint::inputs::{IMAGENET_MEAN, IMAGENET_STD};
use factorvit_compress::checkpoint::timm::TimmName;
use factorvit_compress::checkpoint::{load_checkpoint, ModelSpec, StoredTensor};
use serde_json::json;

/// The configuration of the micro fixtures before per-fixture changes.
fn micro(arch: &str) -> ModelConfig {
    ModelConfig {
        architecture: arch.to_string(),
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
        pos_interpolation: PosInterpolation::BicubicAntialias,
        layer_scale: false,
        final_norm: true,
        global_pool: GlobalPool::Token,
        fc_norm: false,
        head: Head::Linear,
        num_classes: 10,
    }
}

fn load(name: &str) -> ModelSpec {
    load_checkpoint(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn shape(spec: &ModelSpec, name: &str) -> Vec<usize> {
    spec.tensors.get(name).unwrap_or_else(|| panic!("no tensor {name}")).shape.clone()
}

/// Every canonical tensor equals (bytes, dtype, shape) the source tensor `source(name)`.
fn assert_same_as_source(spec: &ModelSpec, dir: &std::path::Path, source: impl Fn(&str) -> Option<String>) {
    let src = tensors_of(&dir.join("model.safetensors"));
    for (name, t) in &spec.tensors {
        let Some(s) = source(name) else { continue };
        let st = src.get(&s).unwrap_or_else(|| panic!("source has no {s} (for {name})"));
        assert_eq!(t, st, "{name} differs from source {s}");
    }
}

fn timm_source(name: &str) -> Option<String> {
    Some(match name {
        "patch_embed.weight" => "patch_embed.proj.weight".to_string(),
        "patch_embed.bias" => "patch_embed.proj.bias".to_string(),
        n if n.ends_with(".ls1") || n.ends_with(".ls2") => format!("{n}.gamma"),
        n => n.to_string(),
    })
}

#[test]
fn timm_vit_micro() {
    let spec = load("timm-vit-micro");
    assert_eq!(spec.config, micro("vit_tiny_patch16_224"));
    assert_eq!(spec.preprocess.input_size, [3, 32, 32]);
    assert_eq!(spec.preprocess.mean, vec![0.5; 3]);
    assert_eq!(spec.preprocess.std, vec![0.5; 3]);
    assert_eq!(spec.preprocess.interpolation, Interpolation::Bicubic);
    assert_eq!(spec.preprocess.crop_pct, 0.9);
    assert!(spec.labels.is_empty());
    assert_eq!(shape(&spec, "patch_embed.weight"), [64, 3, 8, 8]);
    assert_eq!(shape(&spec, "pos_embed"), [1, 17, 64]);
    assert_eq!(shape(&spec, "blocks.1.attn.qkv.weight"), [192, 64]);
    assert_eq!(shape(&spec, "blocks.1.attn.qkv.bias"), [192]);
    assert_eq!(shape(&spec, "head.weight"), [10, 64]);
    assert_eq!(spec.tensors.len(), 4 + 2 * 12 + 4);
    assert_same_as_source(&spec, &fixture("timm-vit-micro"), timm_source);
    assert!(spec.tensors.values().all(|t| t.dtype == DType::F32));
    let layers = spec.validate().unwrap();
    assert_eq!(layers.len(), 2 * 4 + 1);
}

#[test]
fn timm_deit_distilled_micro() {
    let spec = load("timm-deit-distilled-micro");
    let mut want = micro("deit_tiny_distilled_patch16_224");
    want.dist_token = true;
    want.pos_embed_prefix = 2;
    want.head = Head::Distilled;
    assert_eq!(spec.config, want);
    assert_eq!(spec.preprocess.mean, IMAGENET_MEAN.to_vec());
    assert_eq!(spec.preprocess.std, IMAGENET_STD.to_vec());
    assert_eq!(shape(&spec, "dist_token"), [1, 1, 64]);
    assert_eq!(shape(&spec, "pos_embed"), [1, 18, 64]);
    assert_eq!(shape(&spec, "head_dist.weight"), [10, 64]);
    assert_same_as_source(&spec, &fixture("timm-deit-distilled-micro"), timm_source);
    assert_eq!(spec.validate().unwrap().iter().filter(|l| l.name.starts_with("head")).count(), 2);
}

#[test]
fn timm_vit_avgpool_layerscale_micro() {
    let spec = load("timm-vit-avgpool-layerscale-micro");
    let mut want = micro("vit_tiny_patch16_224");
    want.class_token = false;
    want.pos_embed_prefix = 0;
    want.mlp_hidden = 192;
    want.layer_scale = true;
    want.final_norm = false;
    want.global_pool = GlobalPool::Avg;
    want.fc_norm = true;
    assert_eq!(spec.config, want);
    assert_eq!(shape(&spec, "pos_embed"), [1, 16, 64]);
    assert_eq!(shape(&spec, "blocks.0.ls1"), [64]);
    assert_eq!(shape(&spec, "blocks.1.ls2"), [64]);
    assert_eq!(shape(&spec, "fc_norm.weight"), [64]);
    assert!(!spec.tensors.contains_key("blocks.0.attn.qkv.bias"), "qkv_bias=False");
    assert!(!spec.tensors.contains_key("norm.weight"), "norm is Identity with fc_norm");
    assert!(!spec.tensors.contains_key("cls_token"));
    assert_same_as_source(&spec, &fixture("timm-vit-avgpool-layerscale-micro"), timm_source);
}

/// HF name of a canonical tensor (`None` for the fused qkv, checked separately).
fn hf_source(prefix: &str, dinov2: bool) -> impl Fn(&str) -> Option<String> + '_ {
    move |name: &str| {
        let p = prefix;
        if let Some(rest) = name.strip_prefix("blocks.") {
            let (i, part) = rest.split_once('.').unwrap();
            let l = format!("{p}encoder.layer.{i}.");
            let (n1, n2, fc1, fc2) = if dinov2 {
                ("norm1", "norm2", "mlp.fc1", "mlp.fc2")
            } else {
                ("layernorm_before", "layernorm_after", "intermediate.dense", "output.dense")
            };
            let mapped = match part {
                "ls1" => "layer_scale1.lambda1".to_string(),
                "ls2" => "layer_scale2.lambda1".to_string(),
                p if p.starts_with("attn.qkv") => return None,
                p => p
                    .replacen("norm1", n1, 1)
                    .replacen("norm2", n2, 1)
                    .replacen("attn.proj", "attention.output.dense", 1)
                    .replacen("mlp.fc1", fc1, 1)
                    .replacen("mlp.fc2", fc2, 1),
            };
            return Some(format!("{l}{mapped}"));
        }
        Some(match name {
            "patch_embed.weight" => format!("{p}embeddings.patch_embeddings.projection.weight"),
            "patch_embed.bias" => format!("{p}embeddings.patch_embeddings.projection.bias"),
            "cls_token" => format!("{p}embeddings.cls_token"),
            "dist_token" => format!("{p}embeddings.distillation_token"),
            "pos_embed" => format!("{p}embeddings.position_embeddings"),
            "norm.weight" => format!("{p}layernorm.weight"),
            "norm.bias" => format!("{p}layernorm.bias"),
            _ => return None, // heads: checked by the caller
        })
    }
}

/// The fused qkv weight/bias rows are query, then key, then value, byte for byte.
fn assert_qkv_fused(spec: &ModelSpec, dir: &std::path::Path, prefix: &str) {
    let src = tensors_of(&dir.join("model.safetensors"));
    let d = spec.config.embed_dim;
    for i in 0..spec.config.depth {
        for p in ["weight", "bias"] {
            let fused = &spec.tensors[&format!("blocks.{i}.attn.qkv.{p}")];
            let row_bytes = if p == "weight" { d * 4 } else { 4 };
            assert_eq!(fused.shape[0], 3 * d);
            for (j, part) in ["query", "key", "value"].iter().enumerate() {
                let s: &StoredTensor = &src[&format!("{prefix}encoder.layer.{i}.attention.attention.{part}.{p}")];
                let slice = &fused.data[j * d * row_bytes..(j + 1) * d * row_bytes];
                assert_eq!(slice, &s.data[..], "block {i} {part}.{p} is not rows {}..{} of qkv", j * d, (j + 1) * d);
            }
        }
    }
}

#[test]
fn hf_vit_micro() {
    let dir = fixture("hf-vit-micro");
    let spec = load("hf-vit-micro");
    let mut want = micro("ViTForImageClassification");
    want.layer_norm_eps = 1e-12;
    want.pos_interpolation = PosInterpolation::Bicubic;
    assert_eq!(spec.config, want);
    let labels: Vec<String> = (0..10).map(|i| format!("LABEL_{i}")).collect();
    assert_eq!(spec.labels, labels);
    // Documented transformers defaults (no preprocessor_config.json in the fixture).
    assert_eq!(spec.preprocess.input_size, [3, 32, 32]);
    assert_eq!(spec.preprocess.mean, IMAGENET_MEAN.to_vec());
    assert_eq!(spec.preprocess.std, IMAGENET_STD.to_vec());
    assert_eq!(spec.preprocess.interpolation, Interpolation::Bicubic);
    assert_eq!(spec.preprocess.crop_pct, 0.875);
    assert!(spec.warnings.iter().any(|w| w.contains("preprocessor_config.json")));
    assert_qkv_fused(&spec, &dir, "vit.");
    assert_same_as_source(&spec, &dir, hf_source("vit.", false));
    let src = tensors_of(&dir.join("model.safetensors"));
    assert_eq!(spec.tensors["head.weight"], src["classifier.weight"]);
    assert_eq!(spec.tensors["head.bias"], src["classifier.bias"]);
}

#[test]
fn hf_deit_distilled_micro() {
    let dir = fixture("hf-deit-distilled-micro");
    let spec = load("hf-deit-distilled-micro");
    let mut want = micro("DeiTForImageClassificationWithTeacher");
    want.layer_norm_eps = 1e-12;
    want.pos_interpolation = PosInterpolation::Bicubic;
    want.dist_token = true;
    want.pos_embed_prefix = 2;
    want.head = Head::Distilled;
    assert_eq!(spec.config, want);
    assert_eq!(spec.labels.len(), 10);
    assert_qkv_fused(&spec, &dir, "deit.");
    assert_same_as_source(&spec, &dir, hf_source("deit.", false));
    let src = tensors_of(&dir.join("model.safetensors"));
    assert_eq!(spec.tensors["head.weight"], src["cls_classifier.weight"]);
    assert_eq!(spec.tensors["head_dist.weight"], src["distillation_classifier.weight"]);
    assert_eq!(spec.tensors["head_dist.bias"], src["distillation_classifier.bias"]);
}

#[test]
fn hf_dinov2_micro() {
    let dir = fixture("hf-dinov2-micro");
    let spec = load("hf-dinov2-micro");
    let want = ModelConfig {
        architecture: "Dinov2Model".into(),
        image_size: [56, 56],
        patch_size: 14,
        pos_embed_grid: [4, 4],
        pos_interpolation: PosInterpolation::Bicubic,
        layer_scale: true,
        head: Head::None,
        num_classes: 0,
        ..micro("")
    };
    assert_eq!(spec.config, want);
    assert!(spec.labels.is_empty());
    assert_eq!(spec.preprocess.input_size, [3, 56, 56]);
    assert!(!spec.tensors.keys().any(|k| k.contains("mask")), "mask_token is dropped");
    assert_eq!(shape(&spec, "blocks.0.ls1"), [64]);
    assert_qkv_fused(&spec, &dir, "");
    assert_same_as_source(&spec, &dir, hf_source("", true));
}

#[test]
fn every_fixture_validates_and_reports_its_layers() {
    for name in MODEL_FIXTURES {
        let spec = load(name);
        let layers = spec.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let heads = match spec.config.head {
            Head::None => 0,
            Head::Linear => 1,
            Head::Distilled => 2,
        };
        assert_eq!(layers.len(), 4 * spec.config.depth + heads, "{name}");
        assert!(layers.iter().all(|l| l.kind == factorvit_compress::checkpoint::LayerKind::Dense));
        assert!(spec.source.contains(name), "{name}: source {}", spec.source);
    }
}

#[test]
fn timm_architecture_names() {
    let n = TimmName::parse("vit_base_patch32_384").unwrap();
    assert_eq!((n.size.unwrap().0, n.patch_size, n.image_size, n.distilled), ("base", Some(32), Some(384), false));
    let n = TimmName::parse("deit_tiny_distilled_patch16_224.fb_in1k").unwrap();
    assert_eq!((n.size.unwrap().1, n.size.unwrap().3, n.distilled), (192, 3, true));
    let n = TimmName::parse("vit_large_patch16_224.augreg_in21k_ft_in1k").unwrap();
    assert_eq!((n.size.unwrap().1, n.size.unwrap().2, n.size.unwrap().3), (1024, 24, 16));
    let n = TimmName::parse("vit_huge_patch14_224").unwrap();
    assert_eq!((n.size.unwrap().1, n.size.unwrap().2, n.size.unwrap().3, n.patch_size), (1280, 32, 16, Some(14)));
    let n = TimmName::parse("vit_small_patch16_224").unwrap();
    assert_eq!((n.size.unwrap().1, n.size.unwrap().3), (384, 6));
    let n = TimmName::parse("deit3_small_patch16_384").unwrap();
    assert!(n.no_embed_class && n.layer_scale);
    assert_eq!(n.image_size, Some(384));
    let n = TimmName::parse("vit_small_patch14_dinov2.lvd142m").unwrap();
    assert!(n.layer_scale && !n.no_embed_class);
    assert_eq!((n.patch_size, n.image_size), (Some(14), None));
    let n = TimmName::parse("vit_custom").unwrap();
    assert_eq!((n.size, n.patch_size, n.image_size), (None, None, None));
    for bad in [
        "resnet50",
        "swin_tiny_patch4_window7_224",
        "vit_base_r50_s16_384",
        "vit_base_patch16_reg4_dinov2",
        "vit_base_patch16_clip_quickgelu_224",
    ] {
        assert!(TimmName::parse(bad).is_err(), "{bad} must be rejected");
    }
}

/// `model_args` without dimensions: the architecture name's standard size fills them in.
#[test]
fn timm_dimensions_from_the_architecture_name() {
    let tmp = TempDir::new("name-table");
    let geo = SynthVit { dim: 192, depth: 12, mlp: 768, patch: 16, grid: 14, classes: 1000, ..SynthVit::micro() };
    geo.write(
        tmp.path(),
        json!({"architecture": "deit_tiny_patch16_224", "num_classes": 1000, "global_pool": "token",
               "model_args": {"in_chans": 3, "num_classes": 1000}}),
    );
    let spec = load_checkpoint(tmp.path()).unwrap();
    let c = &spec.config;
    assert_eq!((c.embed_dim, c.depth, c.num_heads, c.mlp_hidden), (192, 12, 3, 768));
    assert_eq!((c.patch_size, c.image_size, c.pos_embed_grid), (16, [224, 224], [14, 14]));
    assert_eq!(c.num_classes, 1000);
    assert!(spec.tensors.values().all(|t| t.dtype == DType::F16), "source dtype kept");
    // timm defaults when pretrained_cfg is absent.
    assert_eq!(spec.preprocess.input_size, [3, 224, 224]);
    assert_eq!(spec.preprocess.crop_pct, 0.875);
}

/// deit3 names imply LayerScale and a position table without prefix rows.
#[test]
fn timm_deit3_layout() {
    let tmp = TempDir::new("deit3");
    let geo = SynthVit { layer_scale: true, embed_class: false, ..SynthVit::micro() };
    geo.write(
        tmp.path(),
        json!({"architecture": "deit3_small_patch16_224",
               "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10}}),
    );
    let spec = load_checkpoint(tmp.path()).unwrap();
    assert!(spec.config.layer_scale);
    assert_eq!(spec.config.pos_embed_prefix, 0);
    assert_eq!(spec.config.pos_embed_grid, [4, 4]);
    assert!(spec.config.class_token);
    // The same weights without LayerScale contradict the deit3 name.
    let tmp2 = TempDir::new("deit3-no-ls");
    SynthVit { embed_class: false, ..SynthVit::micro() }.write(
        tmp2.path(),
        json!({"architecture": "deit3_small_patch16_224",
               "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10}}),
    );
    let err = load_checkpoint(tmp2.path()).unwrap_err().to_string();
    assert!(err.contains("LayerScale") && err.contains("deit3_small_patch16_224"), "{err}");
}

#[test]
fn timm_num_classes_zero_is_a_backbone() {
    let tmp = TempDir::new("backbone");
    SynthVit { classes: 0, ..SynthVit::micro() }.write(
        tmp.path(),
        json!({"architecture": "vit_custom", "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 64,
               "depth": 2, "num_heads": 4, "num_classes": 0}, "pretrained_cfg": {"label_names": ["a", "b"]}}),
    );
    let spec = load_checkpoint(tmp.path()).unwrap();
    assert_eq!((spec.config.head, spec.config.num_classes), (Head::None, 0));
    assert!(spec.labels.is_empty());
}

#[test]
fn fmnist_deit_tiny() {
    let Some(dir) = shared("models/fmnist-deit-tiny") else { return };
    let spec = load_checkpoint(&dir).unwrap();
    let c = &spec.config;
    assert_eq!(c.architecture, "vit_custom");
    assert_eq!((c.in_chans, c.patch_size, c.image_size, c.pos_embed_grid), (1, 4, [28, 28], [7, 7]));
    assert_eq!((c.embed_dim, c.depth, c.num_heads, c.mlp_hidden, c.num_classes), (192, 12, 3, 768, 10));
    assert_eq!(spec.labels[0], "T-shirt/top");
    assert_eq!(spec.labels[9], "Ankle boot");
    assert_eq!(spec.preprocess.input_size, [1, 28, 28]);
    assert_eq!((spec.preprocess.mean.clone(), spec.preprocess.std.clone()), (vec![0.286], vec![0.353]));
    assert_eq!((spec.preprocess.interpolation, spec.preprocess.crop_pct), (Interpolation::Bilinear, 1.0));
    assert!(spec.tensors.values().all(|t| t.dtype == DType::F16));
    assert_eq!(shape(&spec, "pos_embed"), [1, 50, 192]);
}

#[test]
fn fmnist_deit_small_sharded() {
    let Some(dir) = shared("models/fmnist-deit-small") else { return };
    let spec = load_checkpoint(&dir).unwrap();
    let c = &spec.config;
    assert_eq!((c.embed_dim, c.depth, c.num_heads, c.mlp_hidden, c.num_classes), (384, 12, 6, 1536, 10));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mapped = index["weight_map"].as_object().unwrap().len();
    assert_eq!(spec.tensors.len(), mapped, "every sharded tensor is imported once");
    let params: usize = spec.tensors.values().map(|t| t.numel().unwrap()).sum();
    assert_eq!(params, 21_324_298);
}

#[test]
fn dinov2_small_imgfocus() {
    let Some(dir) = shared("models/dinov2-small-imgfocus") else { return };
    let spec = load_checkpoint(&dir).unwrap();
    let c = &spec.config;
    assert_eq!((c.embed_dim, c.depth, c.num_heads, c.mlp_hidden, c.patch_size), (384, 12, 6, 1536, 14));
    assert_eq!((c.image_size, c.pos_embed_grid, c.layer_scale, c.head), ([518, 518], [37, 37], true, Head::None));
    assert_eq!(c.layer_norm_eps, 1e-6);
    assert!(spec.tensors.values().all(|t| t.dtype == DType::F16));
    let params: usize = spec.tensors.values().map(|t| t.numel().unwrap()).sum();
    assert_eq!(params, 22_056_192);
    assert_qkv_fused_f16(&spec, &dir);
}

fn assert_qkv_fused_f16(spec: &ModelSpec, dir: &std::path::Path) {
    let src = tensors_of(&dir.join("model.safetensors"));
    let d = spec.config.embed_dim;
    let fused = &spec.tensors["blocks.11.attn.qkv.weight"];
    let row = d * 2;
    for (j, part) in ["query", "key", "value"].iter().enumerate() {
        let s = &src[&format!("encoder.layer.11.attention.attention.{part}.weight")];
        assert_eq!(&fused.data[j * d * row..(j + 1) * d * row], &s.data[..], "{part}");
    }
}

#[test]
fn perf_deit_tiny_resolved_from_its_name() {
    let Some(dir) = shared("perf/deit_tiny_patch16_224") else { return };
    let spec = load_checkpoint(&dir).unwrap();
    let c = &spec.config;
    assert_eq!(c.architecture, "deit_tiny_patch16_224");
    assert_eq!((c.embed_dim, c.depth, c.num_heads, c.mlp_hidden), (192, 12, 3, 768));
    assert_eq!((c.patch_size, c.image_size, c.pos_embed_grid, c.num_classes), (16, [224, 224], [14, 14], 1000));
    assert_eq!(spec.preprocess.crop_pct, 0.9);
}

/// A transformers `preprocessor_config.json`, when present, gives mean/std, filter and crop.
#[test]
fn hf_preprocessor_config() {
    let tmp = copy_fixture("hf-vit-micro");
    let vit_style = json!({"do_normalize": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": {"height": 32, "width": 32}});
    std::fs::write(tmp.join("preprocessor_config.json"), vit_style.to_string()).unwrap();
    let spec = load_checkpoint(tmp.path()).unwrap();
    let p = &spec.preprocess;
    assert_eq!((p.mean.clone(), p.std.clone()), (vec![0.5; 3], vec![0.5; 3]));
    assert_eq!((p.interpolation, p.crop_pct, p.input_size), (Interpolation::Bilinear, 1.0, [3, 32, 32]));
    assert!(spec.warnings.iter().any(|w| w.contains("aspect ratio")));

    let dino_style = json!({"do_center_crop": true, "crop_size": {"height": 224, "width": 224},
        "size": {"shortest_edge": 256}, "resample": 3, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225]});
    std::fs::write(tmp.join("preprocessor_config.json"), dino_style.to_string()).unwrap();
    let p = load_checkpoint(tmp.path()).unwrap().preprocess;
    assert_eq!((p.interpolation, p.crop_pct, p.input_size), (Interpolation::Bicubic, 0.875, [3, 224, 224]));
    assert_eq!(p.mean, IMAGENET_MEAN.to_vec());

    std::fs::write(tmp.join("preprocessor_config.json"), "{").unwrap();
    assert!(matches!(load_checkpoint(tmp.path()), Err(factorvit_compress::checkpoint::CheckpointError::Json { .. })));
}
