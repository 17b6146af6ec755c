//! Bad checkpoints: truncated or corrupt files, wrong shapes, missing or unexpected tensors,
//! contradictory or invalid configs, unsupported architectures and broken shard indices all
//! give typed errors naming the culprit, never a panic.

mod common;

use common::*;
use factorvit::safetensors::DType;
use factorvit_compress::checkpoint::{load_checkpoint, CheckpointError, StoredTensor};
use serde_json::json;

/// An edit of a parsed config.json.
type ConfigEdit = Box<dyn Fn(&mut serde_json::Value)>;
/// A one-shot edit of a parsed shard index.
type IndexEdit = Box<dyn FnOnce(&mut serde_json::Value)>;

fn import_err(dir: &std::path::Path) -> CheckpointError {
    match load_checkpoint(dir) {
        Ok(spec) => panic!("{} imported although corrupt: {:?}", dir.display(), spec.config),
        Err(e) => e,
    }
}

#[test]
fn truncated_weights_are_container_errors() {
    let full = std::fs::read(fixture("timm-vit-micro").join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let cuts =
        [0, 1, 7, 8, 9, 8 + header / 2, 8 + header - 1, 8 + header, 8 + header + 100, full.len() - 4, full.len() - 1];
    for cut in cuts {
        let tmp = copy_fixture("timm-vit-micro");
        std::fs::write(tmp.join("model.safetensors"), &full[..cut]).unwrap();
        let err = import_err(tmp.path());
        assert!(matches!(err, CheckpointError::Container { .. }), "cut at {cut}: {err:?}");
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}

#[test]
fn corrupt_headers_are_container_errors() {
    let full = std::fs::read(fixture("hf-vit-micro").join("model.safetensors")).unwrap();
    let mut huge = full.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut garbage = full.clone();
    garbage[8..16].copy_from_slice(b"\xff\xfe[[[[[[");
    for (what, bytes) in [("huge header length", huge), ("garbage header", garbage)] {
        let tmp = copy_fixture("hf-vit-micro");
        std::fs::write(tmp.join("model.safetensors"), bytes).unwrap();
        let err = import_err(tmp.path());
        assert!(matches!(err, CheckpointError::Container { .. }), "{what}: {err:?}");
    }
}

#[test]
fn wrong_shapes_name_the_source_tensor() {
    // timm: one block's MLP narrower than the others.
    let tmp = copy_fixture("timm-vit-micro");
    edit_weights(tmp.path(), |t| {
        t.insert("blocks.1.mlp.fc1.weight".into(), f16_tensor(&[255, 64], 1));
    });
    let err = import_err(tmp.path());
    match &err {
        CheckpointError::Shape { tensor, found, expected, .. } => {
            assert_eq!(tensor, "blocks.1.mlp.fc1.weight");
            assert_eq!((found.clone(), expected.clone()), (vec![255, 64], vec![256, 64]));
        }
        other => panic!("{other:?}"),
    }
    // transformers: a query projection of the wrong size.
    let tmp = copy_fixture("hf-vit-micro");
    edit_weights(tmp.path(), |t| {
        t.insert("vit.encoder.layer.0.attention.attention.key.weight".into(), f16_tensor(&[63, 64], 2));
    });
    let err = import_err(tmp.path());
    assert!(
        matches!(&err, CheckpointError::Shape { tensor, .. } if tensor.ends_with("attention.attention.key.weight")),
        "{err:?}"
    );
    // A head whose width disagrees with the embedding.
    let tmp = copy_fixture("hf-deit-distilled-micro");
    edit_weights(tmp.path(), |t| {
        t.insert("distillation_classifier.weight".into(), f16_tensor(&[10, 32], 3));
    });
    let err = import_err(tmp.path());
    assert!(
        matches!(&err, CheckpointError::Shape { tensor, .. } if tensor == "distillation_classifier.weight"),
        "{err:?}"
    );
    // A 3-D patch embedding.
    let tmp = copy_fixture("timm-vit-micro");
    edit_weights(tmp.path(), |t| {
        t.insert("patch_embed.proj.weight".into(), f16_tensor(&[64, 3, 64], 4));
    });
    let err = import_err(tmp.path());
    assert!(matches!(&err, CheckpointError::Shape { tensor, .. } if tensor == "patch_embed.proj.weight"), "{err:?}");
}

#[test]
fn missing_tensors_are_named() {
    let cases: [(&str, &str); 5] = [
        ("timm-vit-micro", "blocks.1.norm2.bias"),
        ("timm-vit-micro", "pos_embed"),
        ("timm-deit-distilled-micro", "head_dist.weight"),
        ("hf-vit-micro", "vit.encoder.layer.1.output.dense.weight"),
        ("hf-dinov2-micro", "encoder.layer.0.attention.attention.value.bias"),
    ];
    for (fixture_name, tensor) in cases {
        let tmp = copy_fixture(fixture_name);
        edit_weights(tmp.path(), |t| {
            t.remove(tensor).expect("fixture has the tensor");
        });
        let err = import_err(tmp.path());
        assert!(
            matches!(&err, CheckpointError::MissingTensor { tensor: t, .. } if t == tensor),
            "{fixture_name} without {tensor}: {err:?}"
        );
        assert!(err.to_string().contains(tensor), "{err}");
    }
    // A whole block missing in the middle.
    let tmp = copy_fixture("timm-vit-micro");
    edit_weights(tmp.path(), |t| {
        t.retain(|k, _| !k.starts_with("blocks.0."));
    });
    let err = import_err(tmp.path());
    assert!(matches!(err, CheckpointError::MissingTensor { .. }), "{err:?}");
}

#[test]
fn unexpected_tensors_are_rejected_with_a_hint() {
    let tmp = copy_fixture("timm-vit-micro");
    edit_weights(tmp.path(), |t| {
        t.insert("norm_pre.weight".into(), f16_tensor(&[64], 5));
    });
    let err = import_err(tmp.path());
    match &err {
        CheckpointError::UnexpectedTensor { tensor, hint, .. } => {
            assert_eq!(tensor, "norm_pre.weight");
            assert!(hint.as_deref().unwrap_or("").contains("pre_norm"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    // A distillation token in a model whose name says it is not distilled.
    let tmp = copy_fixture("timm-vit-micro");
    edit_weights(tmp.path(), |t| {
        t.insert("dist_token".into(), f16_tensor(&[1, 1, 64], 6));
    });
    let err = import_err(tmp.path());
    assert!(err.to_string().contains("dist"), "{err}");
}

#[test]
fn non_float_weights_are_dtype_errors() {
    let tmp = copy_fixture("timm-vit-micro");
    edit_weights(tmp.path(), |t| {
        t.insert("norm.bias".into(), StoredTensor::new(DType::I64, vec![64], vec![0; 64 * 8]).unwrap());
    });
    let err = import_err(tmp.path());
    assert!(
        matches!(&err, CheckpointError::Dtype { tensor, found: DType::I64, .. } if tensor == "norm.bias"),
        "{err:?}"
    );
}

#[test]
fn contradictory_configs() {
    let cases: Vec<(&str, ConfigEdit, &str)> = vec![
        ("timm-vit-micro", Box::new(|c| c["model_args"]["embed_dim"] = json!(128)), "embed_dim"),
        ("timm-vit-micro", Box::new(|c| c["model_args"]["depth"] = json!(3)), "depth"),
        ("timm-vit-micro", Box::new(|c| c["model_args"]["mlp_ratio"] = json!(2.0)), "mlp"),
        ("timm-vit-micro", Box::new(|c| c["model_args"]["num_classes"] = json!(11)), "num_classes"),
        ("timm-vit-micro", Box::new(|c| c["model_args"]["qkv_bias"] = json!(false)), "qkv_bias"),
        ("timm-vit-micro", Box::new(|c| c["model_args"]["img_size"] = json!(48)), "pos_embed"),
        ("timm-vit-micro", Box::new(|c| c["model_args"]["global_pool"] = json!("avg")), "fc_norm"),
        ("timm-vit-micro", Box::new(|c| c["num_features"] = json!(32)), "num_features"),
        // Without model_args dims the name's standard size (tiny: 192) applies and disagrees.
        (
            "timm-vit-micro",
            Box::new(|c| drop(c["model_args"].as_object_mut().unwrap().remove("embed_dim"))),
            "embed_dim",
        ),
        (
            "timm-vit-avgpool-layerscale-micro",
            Box::new(|c| c["model_args"]["init_values"] = json!(null)),
            "init_values",
        ),
        (
            "timm-vit-avgpool-layerscale-micro",
            Box::new(|c| c["model_args"]["class_token"] = json!(true)),
            "class_token",
        ),
        ("hf-vit-micro", Box::new(|c| c["hidden_size"] = json!(128)), "hidden_size"),
        ("hf-vit-micro", Box::new(|c| c["num_hidden_layers"] = json!(4)), "num_hidden_layers"),
        ("hf-vit-micro", Box::new(|c| c["intermediate_size"] = json!(512)), "intermediate"),
        ("hf-vit-micro", Box::new(|c| c["image_size"] = json!(64)), "position_embeddings"),
        ("hf-vit-micro", Box::new(|c| c["id2label"] = json!({"0": "a", "1": "b", "2": "c"})), "id2label"),
        ("hf-vit-micro", Box::new(|c| c["model_type"] = json!("deit")), "model_type"),
        ("hf-dinov2-micro", Box::new(|c| c["mlp_ratio"] = json!(2)), "mlp_ratio"),
    ];
    for (fixture_name, edit, needle) in cases {
        let tmp = copy_fixture(fixture_name);
        edit_config(tmp.path(), |c| edit(c));
        let err = import_err(tmp.path());
        let text = err.to_string();
        assert!(
            matches!(err, CheckpointError::Contradiction { .. } | CheckpointError::Config { .. }),
            "{fixture_name} / {needle}: {err:?}"
        );
        assert!(text.contains(needle), "{fixture_name}: `{text}` does not mention {needle}");
    }
}

#[test]
fn unsupported_architectures() {
    let cases: Vec<(&str, ConfigEdit)> = vec![
        ("timm-vit-micro", Box::new(|c| c["architecture"] = json!("resnet50"))),
        ("timm-vit-micro", Box::new(|c| c["architecture"] = json!("vit_base_patch16_reg4_dinov2"))),
        ("timm-vit-micro", Box::new(|c| c["model_args"]["global_pool"] = json!("map"))),
        ("hf-vit-micro", Box::new(|c| c["architectures"] = json!(["SwinForImageClassification"]))),
        ("hf-vit-micro", Box::new(|c| c["hidden_act"] = json!("gelu_new"))),
        ("hf-dinov2-micro", Box::new(|c| c["architectures"] = json!(["Dinov2ForImageClassification"]))),
        ("hf-dinov2-micro", Box::new(|c| c["use_swiglu_ffn"] = json!(true))),
    ];
    for (fixture_name, edit) in cases {
        let tmp = copy_fixture(fixture_name);
        edit_config(tmp.path(), |c| edit(c));
        let err = import_err(tmp.path());
        assert!(matches!(err, CheckpointError::UnsupportedArchitecture { .. }), "{fixture_name}: {err:?}");
        assert!(err.to_string().contains("config.json"), "{err}");
    }
    // Unknown timm constructor arguments are refused rather than ignored.
    let tmp = copy_fixture("timm-vit-micro");
    edit_config(tmp.path(), |c| c["model_args"]["qk_norm"] = json!(true));
    let err = import_err(tmp.path());
    assert!(matches!(&err, CheckpointError::Config { key, .. } if key == "model_args.qk_norm"), "{err:?}");
    let tmp = copy_fixture("timm-vit-micro");
    edit_config(tmp.path(), |c| c["model_args"]["some_new_option"] = json!(1));
    let err = import_err(tmp.path());
    assert!(matches!(&err, CheckpointError::Config { key, .. } if key == "model_args.some_new_option"), "{err:?}");
}

#[test]
fn config_file_problems() {
    // Not JSON.
    let tmp = copy_fixture("timm-vit-micro");
    std::fs::write(tmp.join("config.json"), "{\"architecture\": ").unwrap();
    let err = import_err(tmp.path());
    assert!(matches!(err, CheckpointError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("config.json"));
    // JSON but not an object / not a model config.
    for text in ["[1, 2]", "{\"hello\": 1}"] {
        let tmp = copy_fixture("timm-vit-micro");
        std::fs::write(tmp.join("config.json"), text).unwrap();
        let err = import_err(tmp.path());
        assert!(matches!(err, CheckpointError::Config { .. }), "{text}: {err:?}");
    }
    // Wrong value types.
    let tmp = copy_fixture("timm-vit-micro");
    edit_config(tmp.path(), |c| c["model_args"]["depth"] = json!("two"));
    let err = import_err(tmp.path());
    assert!(matches!(&err, CheckpointError::Config { key, .. } if key == "model_args.depth"), "{err:?}");
    let tmp = copy_fixture("timm-vit-micro");
    edit_config(tmp.path(), |c| c["pretrained_cfg"]["mean"] = json!([0.5, 0.5]));
    let err = import_err(tmp.path());
    assert!(matches!(&err, CheckpointError::Config { key, .. } if key == "pretrained_cfg.mean"), "{err:?}");
    let tmp = copy_fixture("timm-vit-micro");
    edit_config(tmp.path(), |c| c["pretrained_cfg"]["crop_pct"] = json!(1.5));
    let err = import_err(tmp.path());
    assert!(matches!(&err, CheckpointError::Config { key, .. } if key == "pretrained_cfg.crop_pct"), "{err:?}");
    let tmp = copy_fixture("hf-vit-micro");
    edit_config(tmp.path(), |c| c["id2label"] = json!({"0": "a", "0x": "b"}));
    assert!(matches!(import_err(tmp.path()), CheckpointError::Config { .. }));
}

#[test]
fn not_a_checkpoint() {
    let tmp = TempDir::new("empty");
    assert!(matches!(import_err(tmp.path()), CheckpointError::NotACheckpoint { .. }));
    // config.json but no weights; a PyTorch pickle is named as the reason.
    std::fs::copy(fixture("timm-vit-micro").join("config.json"), tmp.join("config.json")).unwrap();
    std::fs::write(tmp.join("pytorch_model.bin"), b"pickle").unwrap();
    let err = import_err(tmp.path());
    assert!(matches!(err, CheckpointError::NotACheckpoint { .. }), "{err:?}");
    assert!(err.to_string().contains("pytorch_model.bin"), "{err}");
    // A file, and a path that does not exist.
    assert!(matches!(
        import_err(&fixture("timm-vit-micro").join("config.json")),
        CheckpointError::NotACheckpoint { .. }
    ));
    assert!(matches!(import_err(&tmp.join("nope")), CheckpointError::Io { .. }));
}

/// Splits a fixture into two shards with an index, optionally corrupting the index.
fn sharded_copy(edit_index: impl FnOnce(&mut serde_json::Value)) -> TempDir {
    let tmp = copy_fixture("timm-vit-micro");
    let all = tensors_of(&tmp.join("model.safetensors"));
    std::fs::remove_file(tmp.join("model.safetensors")).unwrap();
    let (mut a, mut b) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in all.into_iter().enumerate() {
        let file = if i % 2 == 0 { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
        map.insert(name.clone(), json!(file));
        if i % 2 == 0 {
            a.insert(name, t)
        } else {
            b.insert(name, t)
        };
    }
    write_tensors(&tmp.join("model-00001-of-00002.safetensors"), &a);
    write_tensors(&tmp.join("model-00002-of-00002.safetensors"), &b);
    let mut index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    edit_index(&mut index);
    std::fs::write(tmp.join("model.safetensors.index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    tmp
}

#[test]
fn sharded_checkpoints() {
    let good = sharded_copy(|_| {});
    let spec = load_checkpoint(good.path()).unwrap();
    let single = load_checkpoint(&fixture("timm-vit-micro")).unwrap();
    assert_eq!(spec.tensors, single.tensors);
    assert_eq!(spec.config, single.config);

    let cases: Vec<(IndexEdit, &str)> = vec![
        (Box::new(|i| i["weight_map"]["pos_embed"] = json!("model-00003-of-00003.safetensors")), "does not exist"),
        (Box::new(|i| i["weight_map"]["ghost"] = json!("model-00001-of-00002.safetensors")), "ghost"),
        (Box::new(|i| drop(i["weight_map"].as_object_mut().unwrap().remove("pos_embed"))), "missing from `weight_map`"),
        (Box::new(|i| i["weight_map"]["cls_token"] = json!("../model-00001-of-00002.safetensors")), "relative path"),
        (Box::new(|i| i["weight_map"]["cls_token"] = json!("/etc/passwd")), "relative path"),
        (Box::new(|i| i["weight_map"] = json!([])), "weight_map"),
    ];
    for (edit, needle) in cases {
        let tmp = sharded_copy(edit);
        let err = import_err(tmp.path());
        assert!(matches!(err, CheckpointError::ShardIndex { .. }), "{needle}: {err:?}");
        assert!(err.to_string().contains(needle), "`{err}` does not mention {needle}");
    }
    // Moving a tensor to the other shard without updating the index.
    let tmp = sharded_copy(|i| {
        let m = i["weight_map"].as_object_mut().unwrap();
        let (name, file) = m.iter().next().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).unwrap();
        let other = if file.contains("00001") {
            "model-00002-of-00002.safetensors"
        } else {
            "model-00001-of-00002.safetensors"
        };
        m.insert(name, json!(other));
    });
    assert!(matches!(import_err(tmp.path()), CheckpointError::ShardIndex { .. }));
    // An index that is not JSON.
    let tmp = sharded_copy(|_| {});
    std::fs::write(tmp.join("model.safetensors.index.json"), "nope").unwrap();
    assert!(matches!(import_err(tmp.path()), CheckpointError::Json { .. }));
}

/// Random byte corruption anywhere in the weights never panics.
#[test]
fn byte_flips_never_panic() {
    let full = std::fs::read(fixture("hf-dinov2-micro").join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let tmp = copy_fixture("hf-dinov2-micro");
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut bytes = full.clone();
        let at = (x as usize) % (8 + header);
        bytes[at] ^= 1 << ((x >> 32) % 8);
        std::fs::write(tmp.join("model.safetensors"), &bytes).unwrap();
        let _ = load_checkpoint(tmp.path()); // Ok or Err, never a panic.
    }
}
