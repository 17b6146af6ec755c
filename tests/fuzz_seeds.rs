//! The fuzz seed corpus (`fuzz/seeds/<target>/`): small valid inputs covering the model
//! variants and layer kinds, written by the compressor's writer (`writer::to_bytes`) so that
//! they follow the current format exactly.
//!
//! Regenerate after a format or writer change (overwrites the generated seeds, keeps the
//! others, e.g. crash reproducers):
//!
//! ```text
//! cargo test -p factorvit-e2e --test fuzz_seeds -- --ignored
//! ```
//!
//! The test that is not ignored checks that every committed `.fvit` seed loads and every
//! `.ckpt` seed imports.

use std::collections::BTreeMap;
use std::path::PathBuf;

use factorvit::json::{self, Value};
use factorvit::safetensors::{Container, DType};
use factorvit::{GlobalPool, Head, Interpolation, Model, ModelConfig, PosInterpolation, Preprocess, SessionOptions};
use factorvit_compress::checkpoint::{fixed_tensors, import_from_memory, linear_layers, ModelSpec, StoredTensor};
use factorvit_compress::writer::{self, TensorRef};
use factorvit_e2e::repo_root;

/// Targets whose input is a whole factorvit file.
const FVIT_TARGETS: [&str; 4] = ["load_model", "read_fvit", "ffi_open_memory", "safetensors_header"];
/// The target whose input is a packed checkpoint (see `fuzz/fuzz_targets/import_checkpoint.rs`).
const CHECKPOINT_TARGET: &str = "import_checkpoint";
/// libFuzzer's `-max_len` in `scripts/fuzz.sh`: seeds must fit.
const MAX_SEED_LEN: usize = 64 << 10;

fn seeds_dir(target: &str) -> PathBuf {
    repo_root().join("fuzz").join("seeds").join(target)
}

/// Representation of one linear layer.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Dense,
    LowRank(usize),
    /// Rank and index dtype (`U16` or `U32`) of `col_idx`.
    Sparse(usize, DType),
}

/// A seed model: the architecture flags and how each layer is stored.
struct Variant {
    name: &'static str,
    config: ModelConfig,
    /// Float dtype of every float tensor; `None` = mixed (per tensor, by position).
    dtype: Option<DType>,
    qkv_bias: bool,
    labels: bool,
    kind: fn(&str) -> Kind,
}

fn config(architecture: &str) -> ModelConfig {
    ModelConfig {
        architecture: architecture.to_string(),
        image_size: [8, 8],
        patch_size: 4,
        in_chans: 3,
        embed_dim: 8,
        depth: 1,
        num_heads: 2,
        mlp_hidden: 16,
        layer_norm_eps: 1e-6,
        class_token: true,
        dist_token: false,
        pos_embed_prefix: 1,
        pos_embed_grid: [2, 2],
        pos_interpolation: PosInterpolation::Bicubic,
        layer_scale: false,
        final_norm: true,
        global_pool: GlobalPool::Token,
        fc_norm: false,
        head: Head::Linear,
        num_classes: 3,
    }
}

/// Deterministic pseudo-random values in [-1, 1].
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

fn float(dtype: DType, shape: Vec<usize>, values: &[f32]) -> StoredTensor {
    StoredTensor::from_f32_as(dtype, shape, values).unwrap()
}

/// The spec of a variant, with pseudo-random weights.
fn build(v: &Variant) -> ModelSpec {
    let c = &v.config;
    let mut rng =
        Rng(v.name.bytes().fold(0x9E37_79B9_7F4A_7C15, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)) | 1);
    let mut n_tensor = 0usize;
    let mut dtype = || {
        n_tensor += 1;
        v.dtype.unwrap_or([DType::F32, DType::F16, DType::BF16][n_tensor % 3])
    };
    let mut t = BTreeMap::new();
    for (name, shape) in fixed_tensors(c) {
        let n = shape.iter().product();
        let values =
            if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name.ends_with("norm.weight") {
                rng.vec(n, 0.1, 1.0)
            } else if name.ends_with(".bias") {
                rng.vec(n, 0.02, 0.0)
            } else if name.starts_with("patch_embed") {
                rng.vec(n, 1.0 / ((n / shape[0]) as f32).sqrt(), 0.0)
            } else {
                rng.vec(n, 0.5, 0.0)
            };
        t.insert(name, float(dtype(), shape, &values));
    }
    for (layer, m, n) in linear_layers(c) {
        let scale = 1.0 / (n as f32).sqrt();
        match (v.kind)(&layer) {
            Kind::Dense => {
                t.insert(format!("{layer}.weight"), float(dtype(), vec![m, n], &rng.vec(m * n, scale, 0.0)));
            }
            Kind::LowRank(r) | Kind::Sparse(r, _) => {
                t.insert(format!("{layer}.u"), float(dtype(), vec![m, r], &rng.vec(m * r, 1.0, 0.0)));
                t.insert(format!("{layer}.v"), float(dtype(), vec![r, n], &rng.vec(r * n, scale, 0.0)));
            }
        }
        if let Kind::Sparse(_, index) = (v.kind)(&layer) {
            // Row j holds j % 3 entries (some rows are empty), at distinct increasing columns.
            let mut row_ptr = vec![0u32];
            let mut cols = Vec::new();
            for j in 0..m {
                let k = (j % 3).min(n);
                cols.extend((0..k).map(|q| (q * (n / k.max(1)) + j % (n / k.max(1))) as u32));
                row_ptr.push(cols.len() as u32);
            }
            let nnz = cols.len();
            t.insert(format!("{layer}.sparse.row_ptr"), StoredTensor::from_u32(vec![m + 1], &row_ptr).unwrap());
            let col_idx = match index {
                DType::U16 => {
                    StoredTensor::from_u16(vec![nnz], &cols.iter().map(|&c| c as u16).collect::<Vec<_>>()).unwrap()
                }
                _ => StoredTensor::from_u32(vec![nnz], &cols).unwrap(),
            };
            t.insert(format!("{layer}.sparse.col_idx"), col_idx);
            t.insert(format!("{layer}.sparse.values"), float(dtype(), vec![nnz], &rng.vec(nnz, scale, 0.0)));
        }
        if layer.ends_with("attn.qkv") && !v.qkv_bias {
            continue;
        }
        t.insert(format!("{layer}.bias"), float(dtype(), vec![m], &rng.vec(m, 0.02, 0.0)));
    }
    let classes = if c.head == Head::None { 0 } else { c.num_classes };
    let spec = ModelSpec {
        config: c.clone(),
        preprocess: Preprocess {
            input_size: [c.in_chans, c.image_size[0], c.image_size[1]],
            mean: vec![0.5; c.in_chans],
            std: vec![0.25; c.in_chans],
            interpolation: Interpolation::Bicubic,
            crop_pct: 0.875,
        },
        labels: if v.labels { (0..classes).map(|i| format!("class {i}")).collect() } else { Vec::new() },
        source: format!("fuzz seed {}", v.name),
        tensors: t,
        metadata: BTreeMap::new(),
        warnings: Vec::new(),
    };
    spec.validate().unwrap_or_else(|e| panic!("{}: {e}", v.name));
    spec
}

fn dense(_: &str) -> Kind {
    Kind::Dense
}

/// The factorvit-file seeds.
fn variants() -> Vec<Variant> {
    let mut out = Vec::new();
    // Dense, f32, class token, linear head (the plain ViT).
    out.push(Variant {
        name: "dense-f32-token-linear",
        config: config("vit_seed"),
        dtype: Some(DType::F32),
        qkv_bias: true,
        labels: true,
        kind: dense,
    });
    // DeiT distilled: class + distillation tokens, two heads; f16; no qkv bias.
    let mut c = config("deit_seed_distilled");
    c.dist_token = true;
    c.pos_embed_prefix = 2;
    c.head = Head::Distilled;
    out.push(Variant {
        name: "dense-f16-distilled",
        config: c,
        dtype: Some(DType::F16),
        qkv_bias: false,
        labels: true,
        kind: dense,
    });
    // Backbone (no head) with LayerScale, bf16, position table without prefix rows.
    let mut c = config("deit3_seed_backbone");
    c.layer_scale = true;
    c.pos_embed_prefix = 0;
    c.head = Head::None;
    c.num_classes = 0;
    c.pos_interpolation = PosInterpolation::BicubicAntialias;
    out.push(Variant {
        name: "dense-bf16-layerscale-backbone",
        config: c,
        dtype: Some(DType::BF16),
        qkv_bias: true,
        labels: false,
        kind: dense,
    });
    // No class token, average pooling + fc_norm (no final norm), low-rank layers, 1 channel,
    // non-square input, depth 2.
    let mut c = config("vit_seed_avgpool");
    c.class_token = false;
    c.pos_embed_prefix = 0;
    c.global_pool = GlobalPool::Avg;
    c.final_norm = false;
    c.fc_norm = true;
    c.in_chans = 1;
    c.image_size = [8, 12];
    c.pos_embed_grid = [2, 3];
    c.depth = 2;
    out.push(Variant {
        name: "lowrank-f32-avgpool-fcnorm",
        config: c,
        dtype: Some(DType::F32),
        qkv_bias: true,
        labels: false,
        kind: |l| if l == "head" { Kind::Dense } else { Kind::LowRank(if l.ends_with("fc1") { 3 } else { 2 }) },
    });
    // Low-rank + sparse with U16 column indices, f16, mixed with dense and low-rank layers.
    out.push(Variant {
        name: "sparse-u16-f16-mixed-kinds",
        config: config("vit_seed_sparse16"),
        dtype: Some(DType::F16),
        qkv_bias: true,
        labels: true,
        kind: |l| match l {
            l if l.ends_with("attn.qkv") => Kind::Dense,
            l if l.ends_with("attn.proj") => Kind::LowRank(2),
            _ => Kind::Sparse(2, DType::U16),
        },
    });
    // Low-rank + sparse with U32 column indices on every layer, bf16, distilled heads.
    let mut c = config("deit_seed_sparse32");
    c.dist_token = true;
    c.pos_embed_prefix = 2;
    c.head = Head::Distilled;
    c.num_classes = 4;
    out.push(Variant {
        name: "sparse-u32-bf16-distilled",
        config: c,
        dtype: Some(DType::BF16),
        qkv_bias: true,
        labels: false,
        kind: |_| Kind::Sparse(1, DType::U32),
    });
    // Every float dtype in one file (per tensor), LayerScale, avg pool with class token.
    let mut c = config("vit_seed_mixed");
    c.layer_scale = true;
    c.global_pool = GlobalPool::Avg;
    c.fc_norm = true;
    c.final_norm = false;
    out.push(Variant {
        name: "mixed-dtypes-layerscale-avgpool",
        config: c,
        dtype: None,
        qkv_bias: true,
        labels: true,
        kind: |l| {
            if l.ends_with("fc2") {
                Kind::Sparse(2, DType::U32)
            } else if l.ends_with("fc1") {
                Kind::LowRank(4)
            } else {
                Kind::Dense
            }
        },
    });
    out
}

/// `spec` as a timm hub checkpoint: `(config.json, model.safetensors)`.
fn timm_checkpoint(
    spec: &ModelSpec,
    architecture: &str,
    model_args: Vec<(&'static str, Value)>,
    top: Vec<(&'static str, Value)>,
) -> (Vec<u8>, Vec<u8>) {
    let c = &spec.config;
    let rename = |name: &str| -> String {
        if let Some(rest) = name.strip_prefix("patch_embed.") {
            format!("patch_embed.proj.{rest}")
        } else if name.ends_with(".ls1") || name.ends_with(".ls2") {
            format!("{name}.gamma")
        } else {
            name.to_string()
        }
    };
    let tensors: Vec<(String, StoredTensor)> = spec.tensors.iter().map(|(n, t)| (rename(n), t.clone())).collect();
    let mut cfg = vec![
        ("architecture", Value::from(architecture)),
        ("num_classes", Value::from(if c.head == Head::None { 0 } else { c.num_classes })),
        ("num_features", Value::from(c.embed_dim)),
    ];
    cfg.extend(top);
    let mut args = vec![
        ("img_size", Value::Array(vec![c.image_size[0].into(), c.image_size[1].into()])),
        ("patch_size", c.patch_size.into()),
        ("in_chans", c.in_chans.into()),
        ("embed_dim", c.embed_dim.into()),
        ("depth", c.depth.into()),
        ("num_heads", c.num_heads.into()),
        ("mlp_ratio", Value::from(c.mlp_hidden as f64 / c.embed_dim as f64)),
    ];
    args.extend(model_args);
    cfg.push(("model_args", json::object(args)));
    (json::object(cfg).to_json().into_bytes(), safetensors(&tensors, &[("format", "pt")]))
}

/// `spec` as a transformers `save_pretrained` checkpoint of class `class`.
fn hf_checkpoint(
    spec: &ModelSpec,
    class: &str,
    prefix: &str,
    extra: Vec<(&'static str, Value)>,
    extra_tensors: Vec<(String, StoredTensor)>,
) -> (Vec<u8>, Vec<u8>) {
    let c = &spec.config;
    let d = c.embed_dim;
    let dinov2 = class.starts_with("Dinov2");
    let teacher = c.head == Head::Distilled;
    let mut tensors = extra_tensors;
    for (name, t) in &spec.tensors {
        let emb = |s: &str| format!("{prefix}embeddings.{s}");
        let renamed = match name.as_str() {
            "patch_embed.weight" => emb("patch_embeddings.projection.weight"),
            "patch_embed.bias" => emb("patch_embeddings.projection.bias"),
            "cls_token" => emb("cls_token"),
            "dist_token" => emb("distillation_token"),
            "pos_embed" => emb("position_embeddings"),
            "norm.weight" | "norm.bias" => format!("{prefix}layernorm.{}", &name[5..]),
            n if n.starts_with("head.") => {
                format!("{}.{}", if teacher { "cls_classifier" } else { "classifier" }, &n[5..])
            }
            n if n.starts_with("head_dist.") => format!("distillation_classifier.{}", &n[10..]),
            n => {
                let rest = n.strip_prefix("blocks.").unwrap();
                let (i, part) = rest.split_once('.').unwrap();
                let layer = format!("{prefix}encoder.layer.{i}.");
                if let Some(p) = part.strip_prefix("attn.qkv.") {
                    // Split the fused rows [q; k; v].
                    let per = t.data.len() / 3;
                    for (k, what) in ["query", "key", "value"].into_iter().enumerate() {
                        let mut shape = t.shape.clone();
                        shape[0] = d;
                        let data = t.data[k * per..(k + 1) * per].to_vec();
                        tensors.push((
                            format!("{layer}attention.attention.{what}.{p}"),
                            StoredTensor::new(t.dtype, shape, data).unwrap(),
                        ));
                    }
                    continue;
                }
                let (n1, n2, fc1, fc2) = if dinov2 {
                    ("norm1", "norm2", "mlp.fc1", "mlp.fc2")
                } else {
                    ("layernorm_before", "layernorm_after", "intermediate.dense", "output.dense")
                };
                let mapped = [
                    ("norm1.", n1),
                    ("norm2.", n2),
                    ("attn.proj.", "attention.output.dense"),
                    ("mlp.fc1.", fc1),
                    ("mlp.fc2.", fc2),
                ]
                .iter()
                .find_map(|(from, to)| part.strip_prefix(from).map(|p| format!("{to}.{p}")));
                let mapped = match (mapped, part) {
                    (Some(m), _) => m,
                    (None, "ls1") => "layer_scale1.lambda1".to_string(),
                    (None, "ls2") => "layer_scale2.lambda1".to_string(),
                    (None, other) => panic!("no transformers name for {other}"),
                };
                format!("{layer}{mapped}")
            }
        };
        tensors.push((renamed, t.clone()));
    }
    let model_type = if dinov2 {
        "dinov2"
    } else if class.starts_with("DeiT") {
        "deit"
    } else {
        "vit"
    };
    let mut cfg = vec![
        ("architectures", Value::Array(vec![Value::from(class)])),
        ("model_type", Value::from(model_type)),
        ("hidden_act", Value::from("gelu")),
        ("hidden_size", d.into()),
        ("num_hidden_layers", c.depth.into()),
        ("num_attention_heads", c.num_heads.into()),
        ("num_channels", c.in_chans.into()),
        ("patch_size", c.patch_size.into()),
        ("image_size", c.image_size[0].into()),
        ("layer_norm_eps", Value::from(c.layer_norm_eps)),
        ("qkv_bias", spec.tensors.contains_key("blocks.0.attn.qkv.bias").into()),
    ];
    if dinov2 {
        cfg.push(("mlp_ratio", Value::from(c.mlp_hidden as f64 / d as f64)));
        cfg.push(("layerscale_value", Value::from(1.0)));
    } else {
        cfg.push(("intermediate_size", c.mlp_hidden.into()));
    }
    cfg.extend(extra);
    (json::object(cfg).to_json().into_bytes(), safetensors(&tensors, &[("format", "pt")]))
}

fn safetensors(tensors: &[(String, StoredTensor)], metadata: &[(&str, &str)]) -> Vec<u8> {
    let refs: Vec<TensorRef<'_>> =
        tensors.iter().map(|(name, t)| TensorRef { name, dtype: t.dtype, shape: &t.shape, data: &t.data }).collect();
    let metadata: Vec<(String, String)> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    writer::safetensors_bytes(&refs, &metadata).unwrap()
}

/// The input format of the `import_checkpoint` target.
fn pack(config: &[u8], weights: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(config.len()).expect("config.json under 64 KiB").to_le_bytes().to_vec();
    out.extend_from_slice(config);
    out.extend_from_slice(weights);
    out
}

fn unpack(data: &[u8]) -> (&[u8], &[u8]) {
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    data[2..].split_at(n)
}

fn variant(name: &str) -> ModelSpec {
    build(variants().iter().find(|v| v.name == name).unwrap())
}

/// The checkpoint seeds: `(name, config.json, model.safetensors)`.
fn checkpoints() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let labels = |k: usize| Value::Array((0..k).map(|i| Value::from(format!("class {i}"))).collect());
    let pretrained = |c: &ModelConfig| {
        json::object([
            ("input_size", Value::Array(vec![c.in_chans.into(), c.image_size[0].into(), c.image_size[1].into()])),
            ("interpolation", Value::from("bilinear")),
            ("crop_pct", Value::from(0.9)),
            ("crop_mode", Value::from("center")),
            ("mean", Value::Array(vec![Value::from(0.5); c.in_chans])),
            ("std", Value::Array(vec![Value::from(0.5); c.in_chans])),
        ])
    };
    let mut out = Vec::new();

    // timm: a registered name whose dimensions model_args overrides, class token, f32.
    let s = variant("dense-f32-token-linear");
    let (cfg, w) = timm_checkpoint(
        &s,
        "vit_tiny_patch4_8.seed",
        vec![("num_classes", 3.into()), ("qkv_bias", true.into()), ("global_pool", "token".into())],
        vec![("global_pool", "token".into()), ("pretrained_cfg", pretrained(&s.config)), ("label_names", labels(3))],
    );
    out.push(("timm-vit-f32", cfg, w));

    // timm: distilled DeiT, f16, no qkv bias.
    let s = variant("dense-f16-distilled");
    let (cfg, w) = timm_checkpoint(
        &s,
        "deit_tiny_distilled_patch4_8",
        vec![("num_classes", 3.into()), ("qkv_bias", false.into())],
        vec![("pretrained_cfg", pretrained(&s.config))],
    );
    out.push(("timm-deit-distilled-f16", cfg, w));

    // timm: deit3 backbone (LayerScale and no prefix rows from the name), bf16, no pretrained_cfg.
    let s = variant("dense-bf16-layerscale-backbone");
    let (cfg, w) = timm_checkpoint(
        &s,
        "deit3_custom",
        vec![("num_classes", 0.into()), ("init_values", Value::from(1e-5))],
        vec![],
    );
    out.push(("timm-deit3-backbone-bf16", cfg, w));

    // timm: average pooling + fc_norm with LayerScale and a class token, mixed dtypes.
    let dense_spec = build(&Variant {
        name: "timm-avgpool",
        config: variant("mixed-dtypes-layerscale-avgpool").config,
        dtype: None,
        qkv_bias: true,
        labels: true,
        kind: dense,
    });
    let (cfg, w) = timm_checkpoint(
        &dense_spec,
        "vit_custom",
        vec![
            ("num_classes", 3.into()),
            ("global_pool", "avg".into()),
            ("fc_norm", Value::Null),
            ("init_values", Value::from(0.1)),
            ("class_token", true.into()),
            ("drop_path_rate", Value::from(0.1)),
        ],
        vec![("pretrained_cfg", pretrained(&dense_spec.config))],
    );
    out.push(("timm-avgpool-fcnorm-layerscale-mixed", cfg, w));

    // timm: no class token (global average pooling), one channel, non-square input.
    let s = build(&Variant {
        name: "timm-noclass",
        config: variant("lowrank-f32-avgpool-fcnorm").config,
        dtype: Some(DType::F32),
        qkv_bias: true,
        labels: false,
        kind: dense,
    });
    let (cfg, w) = timm_checkpoint(
        &s,
        "vit_custom",
        vec![("num_classes", 3.into()), ("class_token", false.into()), ("global_pool", "avg".into())],
        vec![("pretrained_cfg", pretrained(&s.config))],
    );
    out.push(("timm-noclass-avgpool-f32", cfg, w));

    // transformers: ViTForImageClassification, f32, id2label.
    let s = variant("dense-f32-token-linear");
    let id2label = json::object([("0", "cat".into()), ("1", "dog".into()), ("2", "bird".into())]);
    let (cfg, w) = hf_checkpoint(&s, "ViTForImageClassification", "vit.", vec![("id2label", id2label)], vec![]);
    out.push(("hf-vit-classifier-f32", cfg, w));

    // transformers: ViTModel backbone with a pooler (dropped with a warning), f16, no prefix.
    let mut s = build(&Variant {
        name: "hf-vitmodel",
        config: ModelConfig { head: Head::None, num_classes: 0, ..config("ViTModel") },
        dtype: Some(DType::F16),
        qkv_bias: false,
        labels: false,
        kind: dense,
    });
    s.config.layer_norm_eps = 1e-12;
    let pooler = vec![
        ("pooler.dense.weight".to_string(), float(DType::F16, vec![8, 8], &[0.1; 64])),
        ("pooler.dense.bias".to_string(), float(DType::F16, vec![8], &[0.0; 8])),
    ];
    let (cfg, w) = hf_checkpoint(&s, "ViTModel", "", vec![], pooler);
    out.push(("hf-vitmodel-pooler-f16", cfg, w));

    // transformers: DeiT with teacher (two classifiers), bf16.
    let mut s = variant("dense-f16-distilled");
    s.cast_floats(DType::BF16).unwrap();
    let (cfg, w) = hf_checkpoint(&s, "DeiTForImageClassificationWithTeacher", "deit.", vec![], vec![]);
    out.push(("hf-deit-teacher-bf16", cfg, w));

    // transformers: Dinov2Model (LayerScale, mask token), f32.
    let s = build(&Variant {
        name: "hf-dinov2",
        config: ModelConfig { layer_scale: true, head: Head::None, num_classes: 0, ..config("Dinov2Model") },
        dtype: Some(DType::F32),
        qkv_bias: true,
        labels: false,
        kind: dense,
    });
    let mask = vec![("embeddings.mask_token".to_string(), float(DType::F32, vec![1, 8], &[0.0; 8]))];
    let (cfg, w) = hf_checkpoint(&s, "Dinov2Model", "", vec![("use_swiglu_ffn", false.into())], mask);
    out.push(("hf-dinov2-f32", cfg, w));
    out
}

/// The writer's output `bytes` re-written without the `checksums` metadata entry (the other
/// entries, tensors and their order kept); `None` when it has none.
fn without_checksums(bytes: &[u8]) -> Option<Vec<u8>> {
    let c = Container::parse(bytes).unwrap();
    c.metadata.iter().any(|(k, _)| k == "checksums").then(|| {
        let metadata: Vec<(String, String)> = c.metadata.iter().filter(|(k, _)| k != "checksums").cloned().collect();
        let mut infos: Vec<_> = c.tensors().iter().collect();
        infos.sort_by_key(|t| t.start);
        let refs: Vec<TensorRef<'_>> = infos
            .iter()
            .map(|t| TensorRef { name: &t.name, dtype: t.dtype, shape: &t.shape, data: &bytes[t.start..t.end] })
            .collect();
        writer::safetensors_bytes(&refs, &metadata).unwrap()
    })
}

/// Int8 seeds: every block linear int8 with F32 channel scales, the rest as the variant stores
/// it — low-rank factors with `U`'s column scales folded into `V` (no `u_scale`), and dense +
/// low-rank + sparse layers with row scales of `U` and of the sparse values.
fn int8_seeds() -> Vec<(&'static str, ModelSpec)> {
    use factorvit_compress::method::quantise::{quantise_blocks, QuantOptions, UScales};
    let quantised = |variant_name: &str, u_scales: UScales| {
        let mut spec = variant(variant_name);
        quantise_blocks(&mut spec, &[], &QuantOptions { u_scales, ..QuantOptions::default() }).unwrap();
        spec.validate().unwrap();
        spec
    };
    vec![
        ("int8-folded-lowrank-avgpool", quantised("lowrank-f32-avgpool-fcnorm", UScales::Column)),
        ("int8-rowscale-sparse-mixed-kinds", quantised("sparse-u16-f16-mixed-kinds", UScales::Row)),
    ]
}

#[test]
fn int8_seeds_store_int8_with_their_scales() {
    for (name, spec) in int8_seeds() {
        let i8s = spec.tensors.values().filter(|t| t.dtype == DType::I8).count();
        let scales = spec.tensors.keys().filter(|k| k.contains("_scale")).count();
        assert!(i8s > 0 && scales > 0, "{name}: {i8s} int8 tensors, {scales} scales");
        check_fvit(name, &writer::to_bytes(&spec).unwrap());
    }
}

/// Loads a factorvit file and runs it once (what the fuzz targets do with a valid input).
fn check_fvit(name: &str, bytes: &[u8]) {
    let model = Model::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let c = model.config();
    let pixels = vec![0.5f32; c.in_chans * c.image_size[0] * c.image_size[1]];
    model.session(SessionOptions::default()).unwrap().run(&pixels).unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// Imports a packed checkpoint and loads the file written from it (the target's oracle).
fn check_checkpoint(name: &str, packed: &[u8]) -> ModelSpec {
    let (config, weights) = unpack(packed);
    let spec = import_from_memory(config, weights).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_fvit(name, &writer::to_bytes(&spec).unwrap_or_else(|e| panic!("{name}: {e}")));
    spec
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    assert!(bytes.len() <= MAX_SEED_LEN, "{name} is {} bytes, more than -max_len", bytes.len());
    let dir = seeds_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
#[ignore = "writes fuzz/seeds; run after a format or writer change"]
fn write_fuzz_seeds() {
    let emit = |name: &str, spec: &ModelSpec| {
        let bytes = writer::to_bytes(spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_fvit(name, &bytes);
        for target in FVIT_TARGETS {
            write_seed(target, &format!("{name}.fvit"), &bytes);
        }
        println!("{:>6} bytes  {name}.fvit", bytes.len());
        // The same file without its checksums: the fuzzer's mutations of the metadata and the
        // tensor bytes of these reach the validation behind the checksum pass.
        if let Some(plain) = without_checksums(&bytes) {
            check_fvit(name, &plain);
            for target in FVIT_TARGETS.into_iter().filter(|&t| t != "safetensors_header") {
                write_seed(target, &format!("{name}.nocrc.fvit"), &plain);
            }
        }
    };
    for v in variants() {
        emit(v.name, &build(&v));
    }
    for (name, spec) in int8_seeds() {
        emit(name, &spec);
    }
    for (name, config, weights) in checkpoints() {
        let packed = pack(&config, &weights);
        check_checkpoint(name, &packed);
        write_seed(CHECKPOINT_TARGET, &format!("{name}.ckpt"), &packed);
        // The config alone exercises the JSON parser of the runtime.
        write_seed("safetensors_header", &format!("{name}.config.json"), &config);
        println!("{:>6} bytes  {name}.ckpt", packed.len());
    }
}

#[test]
fn committed_seeds_are_valid() {
    let files = |target: &str, ext: &str| -> Vec<(String, Vec<u8>)> {
        let Ok(dir) = std::fs::read_dir(seeds_dir(target)) else { return Vec::new() };
        let mut out: Vec<(String, Vec<u8>)> = dir
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        out.sort();
        out
    };
    let mut fvit = 0;
    for target in FVIT_TARGETS {
        for (name, bytes) in files(target, "fvit") {
            assert!(bytes.len() <= MAX_SEED_LEN, "{target}/{name}");
            check_fvit(&format!("{target}/{name}"), &bytes);
            fvit += 1;
        }
    }
    let mut ckpt = 0;
    for (name, bytes) in files(CHECKPOINT_TARGET, "ckpt") {
        assert!(bytes.len() <= MAX_SEED_LEN, "{name}");
        check_checkpoint(&name, &bytes);
        ckpt += 1;
    }
    assert!(fvit >= FVIT_TARGETS.len() && ckpt > 0, "no seeds under fuzz/seeds ({fvit} .fvit, {ckpt} .ckpt)");
}

#[test]
fn generated_checkpoints_import_as_the_intended_models() {
    // The exporters above are only useful if the importer reads back the variant intended.
    for (name, config, weights) in checkpoints() {
        let spec = check_checkpoint(name, &pack(&config, &weights));
        let c = &spec.config;
        match name {
            "timm-deit-distilled-f16" | "hf-deit-teacher-bf16" => assert_eq!(c.head, Head::Distilled, "{name}"),
            "timm-deit3-backbone-bf16" => {
                assert!(c.layer_scale && c.pos_embed_prefix == 0 && c.head == Head::None, "{name}: {c:?}")
            }
            "timm-avgpool-fcnorm-layerscale-mixed" => {
                assert!(c.fc_norm && !c.final_norm && c.layer_scale && c.class_token, "{name}: {c:?}")
            }
            "timm-noclass-avgpool-f32" => assert!(!c.class_token && c.global_pool == GlobalPool::Avg, "{name}: {c:?}"),
            "hf-vit-classifier-f32" => assert_eq!(spec.labels, ["cat", "dog", "bird"], "{name}"),
            "hf-dinov2-f32" => assert!(c.layer_scale && c.head == Head::None, "{name}: {c:?}"),
            _ => {}
        }
    }
}
