//! The malformed-input table (docs/RELIABILITY.md): every way a factorvit file or a run request
//! can be wrong, each asserting the *kind* of error the runtime returns and that nothing
//! panicked.
//!
//! The base file is written by the compressor's writer (so it carries checksums) and holds every
//! layer kind: dense f32, low-rank f16, low-rank + sparse with U16 indices (f32) and with U32
//! indices (bf16). Structural mutations are "resealed" (checksums recomputed after the change) so
//! that the structural check, not the checksum, is what must catch them: a hostile file can carry
//! valid checksums.

use std::panic::{catch_unwind, AssertUnwindSafe};

use factorvit::checksum::{self, ChecksumStatus};
use factorvit::{ChecksumPolicy, Error, LoadOptions, Model, Session, SessionOptions};
use factorvit_compress::checkpoint::{ModelSpec, StoredTensor};
use factorvit_compress::method::synthetic::{random_vit_spec, SyntheticVit};
use factorvit_e2e::RawFile;
use half::f16;

const GEOMETRY: SyntheticVit =
    SyntheticVit { image: 8, patch: 4, channels: 3, dim: 16, depth: 2, heads: 2, mlp: 32, classes: 3 };

fn seq(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0 - 0.5)
        .collect()
}

/// The base model: every layer kind and storage dtype.
fn base_spec() -> ModelSpec {
    let mut spec = random_vit_spec(&GEOMETRY, 3).unwrap();
    let (d, mlp) = (GEOMETRY.dim, GEOMETRY.mlp);
    let t = &mut spec.tensors;
    // blocks.0.mlp.fc1: low rank 4, f16 factors.
    t.remove("blocks.0.mlp.fc1.weight");
    t.insert(
        "blocks.0.mlp.fc1.u".into(),
        StoredTensor::from_f32_as(half_dtype(), vec![mlp, 4], &seq(mlp * 4, 1)).unwrap(),
    );
    t.insert("blocks.0.mlp.fc1.v".into(), StoredTensor::from_f32_as(half_dtype(), vec![4, d], &seq(4 * d, 2)).unwrap());
    // blocks.0.mlp.fc2 (16 ← 32): low rank 3 + sparse, two entries per row, U16 columns.
    t.remove("blocks.0.mlp.fc2.weight");
    t.insert("blocks.0.mlp.fc2.u".into(), StoredTensor::from_f32(vec![d, 3], &seq(d * 3, 3)).unwrap());
    t.insert("blocks.0.mlp.fc2.v".into(), StoredTensor::from_f32(vec![3, mlp], &seq(3 * mlp, 4)).unwrap());
    let rows: Vec<u32> = (0..=d as u32).map(|j| 2 * j).collect();
    let cols: Vec<u16> = (0..d as u16).flat_map(|j| [j % 32, (j * 7 + 5) % 32]).map(|c| c.min(31)).collect();
    let cols: Vec<u16> = cols.chunks(2).flat_map(|c| if c[0] < c[1] { [c[0], c[1]] } else { [c[1], c[0]] }).collect();
    t.insert("blocks.0.mlp.fc2.sparse.row_ptr".into(), StoredTensor::from_u32(vec![d + 1], &rows).unwrap());
    t.insert("blocks.0.mlp.fc2.sparse.col_idx".into(), StoredTensor::from_u16(vec![2 * d], &cols).unwrap());
    t.insert("blocks.0.mlp.fc2.sparse.values".into(), StoredTensor::from_f32(vec![2 * d], &seq(2 * d, 5)).unwrap());
    // blocks.1.attn.proj (16 ← 16): low rank 2 + sparse, one entry per row, U32 columns, bf16.
    t.remove("blocks.1.attn.proj.weight");
    let bf = factorvit::safetensors::DType::BF16;
    t.insert("blocks.1.attn.proj.u".into(), StoredTensor::from_f32_as(bf, vec![d, 2], &seq(d * 2, 6)).unwrap());
    t.insert("blocks.1.attn.proj.v".into(), StoredTensor::from_f32_as(bf, vec![2, d], &seq(2 * d, 7)).unwrap());
    let rows: Vec<u32> = (0..=d as u32).collect();
    let cols: Vec<u32> = (0..d as u32).map(|j| (j * 5) % 16).collect();
    t.insert("blocks.1.attn.proj.sparse.row_ptr".into(), StoredTensor::from_u32(vec![d + 1], &rows).unwrap());
    t.insert("blocks.1.attn.proj.sparse.col_idx".into(), StoredTensor::from_u32(vec![d], &cols).unwrap());
    t.insert("blocks.1.attn.proj.sparse.values".into(), StoredTensor::from_f32_as(bf, vec![d], &seq(d, 8)).unwrap());
    // Int8 layers (F32 channel scales): blocks.1.mlp.fc1 dense; blocks.1.mlp.fc2 low rank 2
    // with U's scales folded into V's (no `u_scale`); blocks.0.attn.proj low rank 2 with row
    // scales of U and an int8 sparse term (one entry per row, U16 columns).
    let i8t = |shape: Vec<usize>, seed: u32| {
        let n = shape.iter().product();
        let bytes = seq(n, seed).iter().map(|&x| ((x * 254.0).round() as i8) as u8).collect();
        StoredTensor::new(factorvit::safetensors::DType::I8, shape, bytes).unwrap()
    };
    let scales = |n: usize| {
        StoredTensor::from_f32(vec![n], &(0..n).map(|c| 0.004 + c as f32 * 1e-4).collect::<Vec<_>>()).unwrap()
    };
    t.remove("blocks.1.mlp.fc1.weight");
    t.insert("blocks.1.mlp.fc1.weight".into(), i8t(vec![mlp, d], 9));
    t.insert("blocks.1.mlp.fc1.weight_scale".into(), scales(mlp));
    t.remove("blocks.1.mlp.fc2.weight");
    t.insert("blocks.1.mlp.fc2.u".into(), i8t(vec![d, 2], 10));
    t.insert("blocks.1.mlp.fc2.v".into(), i8t(vec![2, mlp], 11));
    t.insert("blocks.1.mlp.fc2.v_scale".into(), scales(2));
    t.remove("blocks.0.attn.proj.weight");
    t.insert("blocks.0.attn.proj.u".into(), i8t(vec![d, 2], 12));
    t.insert("blocks.0.attn.proj.u_scale".into(), scales(d));
    t.insert("blocks.0.attn.proj.v".into(), i8t(vec![2, d], 13));
    t.insert("blocks.0.attn.proj.v_scale".into(), scales(2));
    let rows: Vec<u32> = (0..=d as u32).collect();
    let cols: Vec<u16> = (0..d as u16).map(|j| (j * 3) % 16).collect();
    t.insert("blocks.0.attn.proj.sparse.row_ptr".into(), StoredTensor::from_u32(vec![d + 1], &rows).unwrap());
    t.insert("blocks.0.attn.proj.sparse.col_idx".into(), StoredTensor::from_u16(vec![d], &cols).unwrap());
    t.insert("blocks.0.attn.proj.sparse.values".into(), i8t(vec![d], 14));
    t.insert("blocks.0.attn.proj.sparse.values_scale".into(), scales(d));
    spec
}

/// Writes `value` as channel `channel` of the F32 scale tensor `name`.
fn set_scale(f: &mut RawFile, name: &str, channel: usize, value: f32) {
    f.tensor_mut(name).3[4 * channel..4 * channel + 4].copy_from_slice(&value.to_le_bytes());
}

fn half_dtype() -> factorvit::safetensors::DType {
    factorvit::safetensors::DType::F16
}

fn base_bytes() -> Vec<u8> {
    factorvit_compress::writer::to_bytes(&base_spec()).unwrap()
}

/// Recomputes the checksums of a (mutated) file, as a hostile writer would.
fn reseal(f: &mut RawFile) {
    f.metadata.retain(|(k, _)| k != checksum::METADATA_KEY);
    let value = checksum::metadata_value(
        f.tensors.iter().map(|t| (t.0.as_str(), t.3.as_slice())),
        f.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    f.metadata.push((checksum::METADATA_KEY.to_string(), value));
}

/// Loads `bytes` with `options`, failing the test (with the case name) on a panic or success.
fn load_error(case: &str, bytes: &[u8], options: &LoadOptions) -> Error {
    match catch_unwind(AssertUnwindSafe(|| Model::from_bytes_with(bytes, options).map(|_| ()))) {
        Err(_) => panic!("case `{case}`: the loader panicked"),
        Ok(Ok(())) => panic!("case `{case}`: the malformed file was accepted"),
        Ok(Err(e)) => {
            let text = e.to_string();
            assert!(!text.is_empty() && !text.contains('\n'), "case `{case}`: message {text:?}");
            e
        }
    }
}

fn config_of(f: &RawFile) -> String {
    f.metadata.iter().find(|(k, _)| k == "config").unwrap().1.clone()
}

fn with_config(f: &mut RawFile, from: &str, to: &str) {
    let cfg = config_of(f);
    assert!(cfg.contains(from), "config {cfg} lacks {from}");
    f.set_metadata("config", &cfg.replacen(from, to, 1));
}

type Check = fn(&Error) -> bool;
type Mutation = fn(&mut RawFile);

/// Mutations of the parsed file, resealed afterwards, with the error kind each must produce.
fn structural_cases() -> Vec<(&'static str, Mutation, Check)> {
    vec![
        // Metadata.
        (
            "format is not factorvit",
            |f| f.set_metadata("format", "gguf"),
            |e| matches!(e, Error::Format(m) if m.contains("format")),
        ),
        (
            "format_version 2",
            |f| f.set_metadata("format_version", "2"),
            |e| matches!(e, Error::Format(m) if m.contains("format_version")),
        ),
        (
            "config missing",
            |f| f.metadata.retain(|(k, _)| k != "config"),
            |e| matches!(e, Error::Format(m) if m.contains("config")),
        ),
        (
            "config not JSON",
            |f| f.set_metadata("config", "{\"embed_dim\": "),
            |e| matches!(e, Error::Json { what, .. } if what.contains("config")),
        ),
        (
            "labels not an array",
            |f| f.set_metadata("labels", "{}"),
            |e| matches!(e, Error::Format(m) if m.contains("labels")),
        ),
        (
            "labels count differs from classes",
            |f| f.set_metadata("labels", "[\"a\"]"),
            |e| matches!(e, Error::Format(m) if m.contains("labels")),
        ),
        (
            "layer table lacks a layer",
            |f| {
                let layers = f.metadata.iter().find(|(k, _)| k == "layers").unwrap().1.clone();
                let v = factorvit::json::parse(layers.as_bytes()).unwrap();
                let kept: Vec<_> = v.as_object().unwrap().iter().filter(|(k, _)| k != "head").cloned().collect();
                f.set_metadata("layers", &factorvit::json::Value::Object(kept).to_json());
            },
            |e| matches!(e, Error::Format(m) if m.contains("head")),
        ),
        (
            "layer kind unknown",
            |f| {
                let layers =
                    f.metadata.iter().find(|(k, _)| k == "layers").unwrap().1.replacen("\"dense\"", "\"butterfly\"", 1);
                f.set_metadata("layers", &layers);
            },
            |e| matches!(e, Error::Format(m) if m.contains("butterfly")),
        ),
        (
            "preprocess channels differ from the model",
            |f| {
                let p = f.metadata.iter().find(|(k, _)| k == "preprocess").unwrap().1.replacen("[3,", "[4,", 1);
                f.set_metadata("preprocess", &p);
            },
            |e| matches!(e, Error::Config(m) if m.contains("preprocess")),
        ),
        // Shapes that disagree with the config.
        (
            "embed_dim differs from the tensors",
            |f| with_config(f, "\"embed_dim\":16", "\"embed_dim\":32"),
            |e| matches!(e, Error::Shape { .. }),
        ),
        (
            "mlp_hidden differs from the tensors",
            |f| with_config(f, "\"mlp_hidden\":32", "\"mlp_hidden\":48"),
            |e| matches!(e, Error::Shape { .. } | Error::Sparse { .. }),
        ),
        (
            "depth larger than the blocks stored",
            |f| with_config(f, "\"depth\":2", "\"depth\":3"),
            |e| matches!(e, Error::MissingTensor(t) if t.starts_with("blocks.2.")),
        ),
        (
            "depth smaller than the blocks stored",
            |f| with_config(f, "\"depth\":2", "\"depth\":1"),
            |e| matches!(e, Error::Format(m) if m.contains("blocks.1")),
        ),
        (
            "weight reshaped, same bytes",
            |f| f.tensor_mut("blocks.0.attn.qkv.weight").2 = vec![16, 48],
            |e| matches!(e, Error::Shape { tensor, .. } if tensor == "blocks.0.attn.qkv.weight"),
        ),
        (
            "pos_embed rows differ from the grid",
            |f| with_config(f, "\"pos_embed_grid\":[2,2]", "\"pos_embed_grid\":[3,3]"),
            |e| matches!(e, Error::Shape { tensor, .. } if tensor == "pos_embed"),
        ),
        (
            "heads do not divide embed_dim",
            |f| with_config(f, "\"num_heads\":2", "\"num_heads\":3"),
            |e| matches!(e, Error::Config(m) if m.contains("num_heads")),
        ),
        // Absurd dims: rejected by config validation before any allocation.
        (
            "embed_dim absurd",
            |f| with_config(f, "\"embed_dim\":16", "\"embed_dim\":1099511627776"),
            |e| matches!(e, Error::Config(m) if m.contains("embed_dim")),
        ),
        (
            "depth absurd",
            |f| with_config(f, "\"depth\":2", "\"depth\":1000000000"),
            |e| matches!(e, Error::Config(m) if m.contains("depth")),
        ),
        (
            "image_size absurd",
            |f| with_config(f, "\"image_size\":[8,8]", "\"image_size\":[4294967296,8]"),
            |e| matches!(e, Error::Config(_)),
        ),
        (
            "num_classes absurd",
            |f| with_config(f, "\"num_classes\":3", "\"num_classes\":18446744073709551615"),
            |e| matches!(e, Error::Config(_) | Error::Json { .. }),
        ),
        (
            "tensor shape overflows usize",
            |f| f.tensor_mut("norm.weight").2 = vec![1 << 32, 1 << 32, 16],
            |e| matches!(e, Error::Container(_) | Error::Overflow(_)),
        ),
        (
            "tensor shape larger than its bytes",
            |f| f.tensor_mut("norm.weight").2 = vec![1 << 20],
            |e| matches!(e, Error::Container(_)),
        ),
        // Ranks.
        (
            "rank larger than the dims",
            |f| {
                // fc2 is 16 × 32: rank 17 > min(m, n).
                f.tensor_mut("blocks.0.mlp.fc2.u").2 = vec![16, 17];
                f.tensor_mut("blocks.0.mlp.fc2.u").3 = vec![0; 16 * 17 * 4];
                f.tensor_mut("blocks.0.mlp.fc2.v").2 = vec![17, 32];
                f.tensor_mut("blocks.0.mlp.fc2.v").3 = vec![0; 17 * 32 * 4];
            },
            |e| matches!(e, Error::Format(m) if m.contains("exceeds")),
        ),
        (
            "rank declared differs from the factors",
            |f| {
                let layers =
                    f.metadata.iter().find(|(k, _)| k == "layers").unwrap().1.replacen("\"rank\":4", "\"rank\":5", 1);
                f.set_metadata("layers", &layers);
            },
            |e| matches!(e, Error::Format(m) if m.contains("rank")),
        ),
        (
            "rank zero",
            |f| {
                f.tensor_mut("blocks.0.mlp.fc1.u").2 = vec![32, 0];
                f.tensor_mut("blocks.0.mlp.fc1.u").3.clear();
            },
            |e| matches!(e, Error::Shape { .. }),
        ),
        (
            "V disagrees with U",
            |f| f.tensor_mut("blocks.0.mlp.fc1.v").2 = vec![8, 8],
            |e| matches!(e, Error::Shape { tensor, .. } if tensor == "blocks.0.mlp.fc1.v"),
        ),
        // CSR.
        (
            "row_ptr not monotone",
            |f| f.tensor_mut("blocks.0.mlp.fc2.sparse.row_ptr").3[4..8].copy_from_slice(&9u32.to_le_bytes()),
            |e| matches!(e, Error::Sparse { reason, .. } if reason.contains("decreases")),
        ),
        (
            "row_ptr[0] not zero",
            |f| f.tensor_mut("blocks.0.mlp.fc2.sparse.row_ptr").3[..4].copy_from_slice(&1u32.to_le_bytes()),
            |e| matches!(e, Error::Sparse { reason, .. } if reason.contains("row_ptr[0]")),
        ),
        (
            "row_ptr past nnz",
            |f| {
                let rp = &mut f.tensor_mut("blocks.0.mlp.fc2.sparse.row_ptr").3;
                let n = rp.len();
                rp[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
            },
            |e| matches!(e, Error::Sparse { reason, .. } if reason.contains("row_ptr[m]")),
        ),
        (
            "row_ptr wrong length",
            |f| {
                let t = f.tensor_mut("blocks.0.mlp.fc2.sparse.row_ptr");
                t.2 = vec![16];
                t.3.truncate(16 * 4);
            },
            |e| matches!(e, Error::Shape { tensor, .. } if tensor.ends_with("row_ptr")),
        ),
        (
            "row_ptr not U32",
            |f| f.tensor_mut("blocks.0.mlp.fc2.sparse.row_ptr").1 = "I32".into(),
            |e| matches!(e, Error::Dtype { .. }),
        ),
        (
            "U16 column index >= n",
            |f| f.tensor_mut("blocks.0.mlp.fc2.sparse.col_idx").3[..2].copy_from_slice(&32u16.to_le_bytes()),
            |e| matches!(e, Error::Sparse { reason, .. } if reason.contains("out of range")),
        ),
        (
            "U32 column index >= n",
            |f| f.tensor_mut("blocks.1.attn.proj.sparse.col_idx").3[..4].copy_from_slice(&u32::MAX.to_le_bytes()),
            |e| matches!(e, Error::Sparse { reason, .. } if reason.contains("out of range")),
        ),
        (
            "values and col_idx lengths differ",
            |f| {
                let t = f.tensor_mut("blocks.1.attn.proj.sparse.values");
                t.2 = vec![15];
                t.3.truncate(30);
            },
            |e| matches!(e, Error::Sparse { .. } | Error::Format(_)),
        ),
        (
            "nnz declared differs",
            |f| {
                let layers =
                    f.metadata.iter().find(|(k, _)| k == "layers").unwrap().1.replacen("\"nnz\":32", "\"nnz\":31", 1);
                f.set_metadata("layers", &layers);
            },
            |e| matches!(e, Error::Format(m) if m.contains("nnz")),
        ),
        // Tensors.
        (
            "tensor missing",
            |f| f.remove("blocks.1.norm2.bias"),
            |e| matches!(e, Error::MissingTensor(t) if t == "blocks.1.norm2.bias"),
        ),
        (
            "stray tensor",
            |f| f.tensors.push(("extra".into(), "F32".into(), vec![1], vec![0; 4])),
            |e| matches!(e, Error::Format(m) if m.contains("extra")),
        ),
        (
            "weight stored as I8 without its scales",
            |f| {
                let t = f.tensor_mut("head.weight");
                t.1 = "I8".into();
                t.3.truncate(3 * 16);
            },
            |e| matches!(e, Error::MissingTensor(t) if t == "head.weight_scale"),
        ),
        (
            "weight stored as U8",
            |f| {
                let t = f.tensor_mut("head.weight");
                t.1 = "U8".into();
                t.3.truncate(3 * 16);
            },
            |e| matches!(e, Error::Dtype { tensor, .. } if tensor == "head.weight"),
        ),
        // Int8 channel scales.
        (
            "int8 weight scale zero",
            |f| set_scale(f, "blocks.1.mlp.fc1.weight_scale", 0, 0.0),
            |e| matches!(e, Error::Scale { tensor, channel: 0, .. } if tensor == "blocks.1.mlp.fc1.weight_scale"),
        ),
        (
            "int8 weight scale negative",
            |f| set_scale(f, "blocks.1.mlp.fc1.weight_scale", 5, -0.01),
            |e| matches!(e, Error::Scale { channel: 5, value, .. } if *value < 0.0),
        ),
        (
            "int8 V scale NaN",
            |f| set_scale(f, "blocks.1.mlp.fc2.v_scale", 1, f32::NAN),
            // The finiteness pass over every float tensor sees it first.
            |e| matches!(e, Error::NonFinite(t) | Error::Scale { tensor: t, .. } if t == "blocks.1.mlp.fc2.v_scale"),
        ),
        (
            "int8 U scale infinite",
            |f| set_scale(f, "blocks.0.attn.proj.u_scale", 3, f32::INFINITY),
            |e| matches!(e, Error::NonFinite(t) | Error::Scale { tensor: t, .. } if t == "blocks.0.attn.proj.u_scale"),
        ),
        (
            "int8 sparse values scale negative zero",
            |f| set_scale(f, "blocks.0.attn.proj.sparse.values_scale", 15, -0.0),
            |e| matches!(e, Error::Scale { channel: 15, .. }),
        ),
        (
            "int8 weight scale of the wrong length",
            |f| {
                let t = f.tensor_mut("blocks.1.mlp.fc1.weight_scale");
                t.2 = vec![31];
                t.3.truncate(31 * 4);
            },
            |e| matches!(e, Error::Shape { tensor, .. } if tensor == "blocks.1.mlp.fc1.weight_scale"),
        ),
        (
            "int8 V scale with one entry per column",
            |f| {
                let t = f.tensor_mut("blocks.1.mlp.fc2.v_scale");
                t.2 = vec![32];
                t.3 = vec![0x3c; 32 * 4];
            },
            |e| matches!(e, Error::Shape { tensor, .. } if tensor == "blocks.1.mlp.fc2.v_scale"),
        ),
        (
            "int8 sparse values scale missing",
            |f| f.remove("blocks.0.attn.proj.sparse.values_scale"),
            |e| matches!(e, Error::MissingTensor(t) if t == "blocks.0.attn.proj.sparse.values_scale"),
        ),
        (
            "int8 scale stored as F16",
            |f| {
                let t = f.tensor_mut("blocks.0.attn.proj.v_scale");
                t.1 = "F16".into();
                t.3 = f16::from_f32(0.01).to_bits().to_le_bytes().repeat(2);
            },
            |e| matches!(e, Error::Dtype { tensor, .. } if tensor == "blocks.0.attn.proj.v_scale"),
        ),
        (
            "scale next to a float weight",
            |f| f.tensors.push(("blocks.0.mlp.fc1.u_scale".into(), "F32".into(), vec![32], vec![0x3c; 32 * 4])),
            |e| matches!(e, Error::Format(m) if m.contains("blocks.0.mlp.fc1.u_scale")),
        ),
        // Non-finite values (rejected by default; see the check_finite case below).
        (
            "NaN in a norm",
            |f| f.tensor_mut("blocks.0.norm1.weight").3[..4].copy_from_slice(&f32::NAN.to_le_bytes()),
            |e| matches!(e, Error::NonFinite(t) if t == "blocks.0.norm1.weight"),
        ),
        (
            "infinity in an f32 weight",
            |f| f.tensor_mut("blocks.0.attn.qkv.weight").3[40..44].copy_from_slice(&f32::INFINITY.to_le_bytes()),
            |e| matches!(e, Error::NonFinite(t) if t == "blocks.0.attn.qkv.weight"),
        ),
        (
            "NaN in an f16 factor",
            |f| f.tensor_mut("blocks.0.mlp.fc1.v").3[6..8].copy_from_slice(&f16::NAN.to_bits().to_le_bytes()),
            |e| matches!(e, Error::NonFinite(t) if t == "blocks.0.mlp.fc1.v"),
        ),
        (
            "infinity in bf16 sparse values",
            |f| f.tensor_mut("blocks.1.attn.proj.sparse.values").3[2..4].copy_from_slice(&0x7f80u16.to_le_bytes()),
            |e| matches!(e, Error::NonFinite(t) if t == "blocks.1.attn.proj.sparse.values"),
        ),
        // Checksum entry itself.
        (
            "checksum algorithm unknown",
            |f| {
                let c = f.metadata.iter().find(|(k, _)| k == "checksums").unwrap().1.replacen("crc32", "md5", 1);
                f.metadata.retain(|(k, _)| k != "checksums");
                f.metadata.push(("checksums".into(), c));
            },
            |e| matches!(e, Error::Format(m) if m.contains("md5")),
        ),
    ]
}

#[test]
fn every_structural_defect_is_a_typed_error() {
    let bytes = base_bytes();
    let good = RawFile::parse(&bytes);
    let model = Model::from_bytes(&bytes).expect("the base file is valid");
    assert!(matches!(model.checksum_status(), ChecksumStatus::Verified { tensors } if tensors == good.tensors.len()));
    let cases = structural_cases();
    for (name, mutate, check) in &cases {
        let mut f = good.clone();
        mutate(&mut f);
        // The last case mutates the checksum entry itself: resealing would undo it.
        if !name.starts_with("checksum") {
            reseal(&mut f);
        }
        let e = load_error(name, &f.to_bytes(), &LoadOptions::default());
        assert!(check(&e), "case `{name}`: unexpected error kind: {e:?}");
    }
    eprintln!("{} structural cases", cases.len());
}

#[test]
fn container_defects_are_typed_errors() {
    let bytes = base_bytes();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty file".into(), vec![]),
        ("header length u64::MAX".into(), [&u64::MAX.to_le_bytes()[..], &bytes[8..]].concat()),
        ("header length past the end".into(), [&((bytes.len() as u64).to_le_bytes())[..], &bytes[8..]].concat()),
        ("header length zero".into(), [&0u64.to_le_bytes()[..], &bytes[8..]].concat()),
        ("header is not JSON".into(), {
            let mut b = bytes.clone();
            b[8] = b'[';
            b
        }),
        ("header is not UTF-8".into(), {
            let mut b = bytes.clone();
            b[9] = 0xff;
            b
        }),
        ("trailing bytes after the data".into(), [&bytes[..], &[0u8; 4][..]].concat()),
    ];
    // Truncations, one per length class: inside the size prefix, inside the header, at the
    // header's end, and at the start, middle and last byte of every tensor.
    for cut in [1, 7, 8, 9, 8 + header_len / 2, 8 + header_len - 1, 8 + header_len] {
        cases.push((format!("truncated at {cut}"), bytes[..cut].to_vec()));
    }
    let c = factorvit::safetensors::Container::parse(&bytes).unwrap();
    for t in c.tensors() {
        for cut in [t.start + 1, (t.start + t.end) / 2, t.end - 1] {
            if cut < bytes.len() {
                cases.push((format!("truncated inside `{}` at {cut}", t.name), bytes[..cut].to_vec()));
            }
        }
    }
    let n = cases.len();
    for (name, b) in cases {
        let e = load_error(&name, &b, &LoadOptions::default());
        assert!(matches!(e, Error::Container(_) | Error::Json { .. }), "case `{name}`: {e:?}");
    }
    eprintln!("{n} container cases");
}

#[test]
fn a_flipped_byte_in_any_tensor_is_detected_and_named() {
    let bytes = base_bytes();
    let c = factorvit::safetensors::Container::parse(&bytes).unwrap();
    let mut checked = 0;
    for t in c.tensors() {
        for offset in [t.start, (t.start + t.end) / 2, t.end - 1] {
            for bit in [0, 7] {
                let mut b = bytes.clone();
                b[offset] ^= 1 << bit;
                let e = load_error(&t.name, &b, &LoadOptions::default());
                assert!(
                    matches!(&e, Error::Checksum { tensor, expected, found } if *tensor == t.name && expected != found),
                    "flip at {offset} in `{}`: {e:?}",
                    t.name
                );
                assert!(e.to_string().contains(&t.name));
                checked += 1;
            }
        }
    }
    // A changed metadata value (the config's eps, still valid JSON and a valid config).
    let mut f = RawFile::parse(&bytes);
    with_config(&mut f, "\"layer_norm_eps\":1e-6", "\"layer_norm_eps\":2e-6");
    let e = load_error("metadata edit", &f.to_bytes(), &LoadOptions::default());
    assert!(matches!(&e, Error::Checksum { tensor, .. } if tensor == "__metadata__"), "{e:?}");
    eprintln!("{checked} flipped bytes detected");
}

#[test]
fn checksum_policies() {
    let bytes = base_bytes();
    let c = factorvit::safetensors::Container::parse(&bytes).unwrap();
    let t = c.get("blocks.0.attn.qkv.weight").unwrap();
    let mut flipped = bytes.clone();
    flipped[t.start + 5] ^= 0x10; // a mantissa bit: still a finite number
    let skip = LoadOptions { checksums: ChecksumPolicy::Skip, ..Default::default() };
    let m = Model::from_bytes_with(&flipped, &skip).expect("Skip loads a corrupt but well-formed file");
    assert_eq!(m.checksum_status(), ChecksumStatus::Skipped);

    // A file without checksums: loads by default (reported Absent), refused under Require.
    let mut f = RawFile::parse(&bytes);
    f.metadata.retain(|(k, _)| k != checksum::METADATA_KEY);
    let unsealed = f.to_bytes();
    assert_eq!(Model::from_bytes(&unsealed).unwrap().checksum_status(), ChecksumStatus::Absent);
    let require = LoadOptions { checksums: ChecksumPolicy::Require, ..Default::default() };
    assert!(matches!(load_error("require", &unsealed, &require), Error::Format(m) if m.contains("checksums")));
    Model::from_bytes_with(&bytes, &require).expect("a sealed file passes Require");

    // Checksum entries that do not cover the file exactly.
    let mut f = RawFile::parse(&bytes);
    f.tensors.push(("extra".into(), "F32".into(), vec![1], vec![0; 4]));
    let e = load_error("uncovered tensor", &f.to_bytes(), &LoadOptions::default());
    assert!(matches!(&e, Error::Format(m) if m.contains("extra") && m.contains("no checksum")), "{e:?}");
    let mut f = RawFile::parse(&bytes);
    f.remove("norm.bias");
    let e = load_error("listed but absent", &f.to_bytes(), &LoadOptions::default());
    assert!(matches!(&e, Error::Format(m) if m.contains("norm.bias")), "{e:?}");
    let mut f = RawFile::parse(&bytes);
    let v = f.metadata.iter().find(|(k, _)| k == "checksums").unwrap().1.clone();
    let pos = v.find("\"head.bias\":\"").unwrap() + "\"head.bias\":\"".len();
    f.set_metadata("checksums", &format!("{}zz{}", &v[..pos], &v[pos + 2..]));
    let e = load_error("bad hex", &f.to_bytes(), &LoadOptions::default());
    assert!(matches!(&e, Error::Format(m) if m.contains("head.bias")), "{e:?}");
}

#[test]
fn non_finite_weights_load_only_when_the_check_is_disabled() {
    let mut f = RawFile::parse(&base_bytes());
    f.tensor_mut("head.weight").3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut f);
    let bytes = f.to_bytes();
    assert!(matches!(load_error("nan", &bytes, &LoadOptions::default()), Error::NonFinite(t) if t == "head.weight"));
    let lax = LoadOptions { check_finite: false, ..Default::default() };
    let model = Model::from_bytes_with(&bytes, &lax).expect("check_finite: false accepts NaN weights");
    // It runs (NaN propagates to the outputs; nothing crashes).
    let mut s = model.session(SessionOptions::default()).unwrap();
    let out = s.run(&vec![0.1; 3 * 8 * 8]).unwrap();
    assert!(out.logits.unwrap().iter().any(|v| v.is_nan()));
}

#[test]
fn memory_limits_are_checked_before_allocating() {
    let bytes = base_bytes();
    let model = Model::from_bytes(&bytes).unwrap();

    // Session: the exact requirement passes, one byte less is refused.
    let opts = SessionOptions { threads: 1, batch: 4, ..Default::default() };
    let need = Session::required_memory(&model, &opts).unwrap();
    assert!(need > 0);
    let s = model.session(SessionOptions { memory_limit: need, ..opts.clone() }).unwrap();
    assert!(s.memory().arena_bytes <= need, "{} > {need}", s.memory().arena_bytes);
    let e = model.session(SessionOptions { memory_limit: need - 1, ..opts.clone() }).unwrap_err();
    assert!(matches!(e, Error::MemoryLimit { needed, limit, .. } if needed == need && limit == need - 1), "{e:?}");

    // Absurd requests are refused with a typed error, never an allocation failure (abort).
    let cases: Vec<(&str, SessionOptions)> = vec![
        ("batch 0", SessionOptions { batch: 0, ..Default::default() }),
        ("batch 1e6", SessionOptions { batch: 1_000_000, ..Default::default() }),
        ("image larger than 8192", SessionOptions { image_size: [1 << 20, 8], ..Default::default() }),
        ("image smaller than a patch", SessionOptions { image_size: [2, 2], ..Default::default() }),
        // 8192² / 4² = 4.2 M tokens: attention scores alone would be terabytes.
        ("8192×8192 image", SessionOptions { image_size: [8192, 8192], ..Default::default() }),
        ("4096 × 4096² images", SessionOptions { batch: 4096, image_size: [4096, 4096], ..Default::default() }),
    ];
    for (name, o) in cases {
        match catch_unwind(AssertUnwindSafe(|| model.session(o).map(|_| ()))) {
            Err(_) => panic!("case `{name}` panicked"),
            Ok(Ok(())) => panic!("case `{name}` was accepted"),
            Ok(Err(e)) => {
                assert!(matches!(e, Error::Input(_) | Error::MemoryLimit { .. } | Error::Overflow(_)), "{name}: {e:?}")
            }
        }
    }

    // Load: a buffer offset by one byte makes every multi-byte tensor misaligned, so the loader
    // must copy them; a small limit refuses that before copying.
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let tight = LoadOptions { memory_limit: 4096, ..Default::default() };
    let e = load_error("misaligned under a cap", &shifted[1..], &tight);
    assert!(matches!(e, Error::MemoryLimit { limit: 4096, .. }), "{e:?}");
    let m = Model::from_bytes(&shifted[1..]).expect("uncapped: misaligned tensors are copied");
    assert!(m.copied_bytes() > 4096);
}

#[test]
fn wrong_inputs_to_a_run_are_typed_errors() {
    let bytes = base_bytes();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut s = model.session(SessionOptions { batch: 2, ..Default::default() }).unwrap();
    let one = 3 * 8 * 8;
    for (name, len) in [
        ("empty", 0),
        ("one pixel short", one - 1),
        ("one pixel long", one + 1),
        ("three images for batch 2", 3 * one),
        ("wrong channels (1)", 8 * 8),
        ("wrong size (16×16)", 3 * 16 * 16),
    ] {
        let px = vec![0.5f32; len];
        match catch_unwind(AssertUnwindSafe(|| s.run(&px).map(|_| ()))) {
            Err(_) => panic!("case `{name}` panicked"),
            Ok(r) => assert!(matches!(r, Err(Error::Input(_))), "case `{name}`: {r:?}"),
        }
    }
    s.run(&vec![0.5f32; 2 * one]).expect("a full batch runs");
    s.run(&vec![0.5f32; one]).expect("a partial batch runs");
}
