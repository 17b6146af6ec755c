//! The writer: files round-trip through the runtime's container parser, the runtime loads
//! them, Python's `safetensors` reads every tensor and the metadata, every tensor is aligned
//! and the data region contiguous, validation refuses anything the runtime would reject,
//! writes are atomic, and dtype casts round exactly.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use factorvit::safetensors::{Container, DType};
use factorvit::{ModelConfig, Preprocess};
use factorvit_compress::checkpoint::{load_checkpoint, read_fvit, LayerKind, ModelSpec, SpecError, StoredTensor};
use factorvit_compress::writer::{
    self, safetensors_bytes, to_bytes, write_atomic, write_atomic_with, TensorRef, WriteError,
};
use half::{bf16, f16};
use proptest::prelude::*;

fn spec(name: &str) -> ModelSpec {
    load_checkpoint(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Checks the layout invariants of a safetensors file and returns its container.
fn check_layout(bytes: &[u8]) -> Container {
    let c = Container::parse(bytes).expect("valid container");
    assert_eq!(c.data_start % 8, 0, "header padded to a multiple of 8");
    let mut ts: Vec<_> = c.tensors().to_vec();
    // Empty tensors occupy no bytes: order them first at their offset.
    ts.sort_by_key(|t| (t.start, t.end));
    let mut at = c.data_start;
    let mut last_size = usize::MAX;
    for t in &ts {
        assert_eq!(t.start, at, "`{}` leaves a gap or overlaps", t.name);
        assert_eq!(t.start % t.dtype.size(), 0, "`{}` is misaligned", t.name);
        if t.end > t.start {
            assert!(t.dtype.size() <= last_size, "`{}`: larger elements must come first", t.name);
            last_size = t.dtype.size();
        }
        at = t.end;
    }
    assert_eq!(at, bytes.len(), "tensors cover the data region");
    c
}

#[test]
fn fixtures_round_trip_through_the_container_and_the_runtime() {
    for name in MODEL_FIXTURES {
        let s = spec(name);
        let bytes = to_bytes(&s).unwrap();
        let c = check_layout(&bytes);
        assert_eq!(c.metadata("format"), Some("factorvit"));
        assert_eq!(c.metadata("format_version"), Some("1"));
        assert_eq!(c.metadata("producer"), Some(writer::PRODUCER));
        assert_eq!(c.metadata("source"), Some(s.source.as_str()));
        let cfg = factorvit::json::parse(c.metadata("config").unwrap().as_bytes()).unwrap();
        assert_eq!(ModelConfig::from_json(&cfg).unwrap(), s.config, "{name}");
        let pre = factorvit::json::parse(c.metadata("preprocess").unwrap().as_bytes()).unwrap();
        assert_eq!(Preprocess::from_json(&pre).unwrap(), s.preprocess, "{name}");
        let layers = factorvit::json::parse(c.metadata("layers").unwrap().as_bytes()).unwrap();
        for l in s.validate().unwrap() {
            assert_eq!(layers.get(&l.name), Some(&l.to_json()), "{name}: {}", l.name);
        }
        for (tname, t) in &s.tensors {
            let info = c.get(tname).unwrap_or_else(|| panic!("{name}: {tname} not written"));
            assert_eq!((info.dtype, &info.shape), (t.dtype, &t.shape));
            assert_eq!(&bytes[info.start..info.end], &t.data[..], "{name}: {tname} bytes");
        }
        assert_eq!(c.tensors().len(), s.tensors.len());
        let model = factorvit::Model::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: runtime rejects: {e}"));
        assert_eq!(model.config(), &s.config);
        assert_eq!(model.labels(), &s.labels[..]);
        assert_eq!(model.copied_bytes(), 0, "{name}: every tensor is read in place");
    }
}

#[test]
fn fvit_files_read_back_into_the_same_spec() {
    let tmp = TempDir::new("readback");
    for name in MODEL_FIXTURES {
        let mut s = spec(name);
        s.metadata.insert("compression".into(), r#"{"method":"none"}"#.into());
        let path = tmp.join(&format!("{name}.fvit"));
        writer::write_model(&s, &path).unwrap();
        let back = read_fvit(&path).unwrap();
        s.warnings.clear();
        assert_eq!(back, s, "{name}");
    }
}

#[test]
fn written_files_carry_checksums_that_the_readers_verify() {
    let tmp = TempDir::new("checksums");
    let s = spec(MODEL_FIXTURES[0]);
    let path = tmp.join("m.fvit");
    writer::write_model(&s, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let model = factorvit::Model::from_bytes(&bytes).unwrap();
    let n = Container::parse(&bytes).unwrap().tensors().len();
    assert_eq!(model.checksum_status(), factorvit::ChecksumStatus::Verified { tensors: n });
    // One flipped bit in the last tensor: both the runtime and the compressor's reader refuse
    // the file and name the tensor.
    let c = Container::parse(&bytes).unwrap();
    let last = c.tensors().iter().max_by_key(|t| t.start).unwrap();
    let mut bad = bytes.clone();
    bad[last.end - 1] ^= 0x01;
    let e = factorvit::Model::from_bytes(&bad).unwrap_err();
    assert!(matches!(&e, factorvit::Error::Checksum { tensor, .. } if *tensor == last.name), "{e:?}");
    std::fs::write(&path, &bad).unwrap();
    let e = read_fvit(&path).unwrap_err().to_string();
    assert!(e.contains("checksum") && e.contains(&last.name), "{e}");
}

#[test]
fn mixed_dtypes_stay_aligned_and_load() {
    let mut s = spec("timm-deit-distilled-micro");
    for (i, t) in s.tensors.values_mut().enumerate() {
        let d = [DType::F32, DType::F16, DType::BF16][i % 3];
        *t = t.cast(d).unwrap();
    }
    let bytes = to_bytes(&s).unwrap();
    check_layout(&bytes);
    let model = factorvit::Model::from_bytes(&bytes).unwrap();
    assert_eq!(model.copied_bytes(), 0);
}

/// Replaces `layer`'s dense weight by a rank-`r` factorisation (values irrelevant here) and,
/// with `sparse`, a CSR term with one entry per row.
fn factorise(s: &mut ModelSpec, layer: &str, r: usize, sparse: Option<DType>) {
    let w = s.tensors.remove(&format!("{layer}.weight")).unwrap();
    let (m, n) = (w.shape[0], w.shape[1]);
    s.tensors.insert(format!("{layer}.u"), f16_tensor(&[m, r], 7));
    s.tensors.insert(format!("{layer}.v"), f16_tensor(&[r, n], 8).cast(DType::F32).unwrap());
    if let Some(idx) = sparse {
        let row_ptr: Vec<u32> = (0..=m as u32).collect();
        let cols: Vec<u32> = (0..m as u32).map(|j| (j * 7) % n as u32).collect();
        s.tensors.insert(format!("{layer}.sparse.row_ptr"), StoredTensor::from_u32(vec![m + 1], &row_ptr).unwrap());
        let col_idx = match idx {
            DType::U16 => StoredTensor::from_u16(vec![m], &cols.iter().map(|&c| c as u16).collect::<Vec<_>>()).unwrap(),
            _ => StoredTensor::from_u32(vec![m], &cols).unwrap(),
        };
        s.tensors.insert(format!("{layer}.sparse.col_idx"), col_idx);
        s.tensors.insert(format!("{layer}.sparse.values"), f16_tensor(&[m], 9));
    }
}

#[test]
fn low_rank_and_sparse_layers() {
    let mut s = spec("timm-vit-micro");
    factorise(&mut s, "blocks.0.mlp.fc1", 8, None);
    factorise(&mut s, "blocks.1.mlp.fc2", 16, Some(DType::U16));
    factorise(&mut s, "blocks.1.attn.qkv", 4, Some(DType::U32));
    let layers = s.validate().unwrap();
    let kind = |n: &str| layers.iter().find(|l| l.name == n).unwrap().kind;
    assert_eq!(kind("blocks.0.mlp.fc1"), LayerKind::LowRank { rank: 8 });
    assert_eq!(kind("blocks.1.mlp.fc2"), LayerKind::LowRankSparse { rank: 16, nnz: 64 });
    assert_eq!(kind("blocks.1.attn.qkv"), LayerKind::LowRankSparse { rank: 4, nnz: 192 });
    assert_eq!(kind("head"), LayerKind::Dense);
    let bytes = to_bytes(&s).unwrap();
    let c = check_layout(&bytes);
    let table = factorvit::json::parse(c.metadata("layers").unwrap().as_bytes()).unwrap();
    assert_eq!(table.get("blocks.1.mlp.fc2").unwrap().to_json(), r#"{"kind":"low_rank_sparse","rank":16,"nnz":64}"#);
    assert_eq!(table.get("blocks.0.mlp.fc1").unwrap().to_json(), r#"{"kind":"low_rank","rank":8}"#);
    let model = factorvit::Model::from_bytes(&bytes).unwrap();
    let info = model.linear("blocks.1.mlp.fc2").unwrap().info();
    assert_eq!((info.kind, info.rank, info.nnz), (factorvit::LinearKind::LowRankSparse, 16, 64));
    // And it reads back.
    let tmp = TempDir::new("lowrank");
    writer::write_model(&s, &tmp.join("m.fvit")).unwrap();
    assert_eq!(read_fvit(&tmp.join("m.fvit")).unwrap().tensors, s.tensors);
}

fn invalid(s: &ModelSpec) -> SpecError {
    match to_bytes(s) {
        Err(WriteError::Invalid(e)) => e,
        Err(other) => panic!("expected a validation error, got {other:?}"),
        Ok(_) => panic!("an invalid spec was serialised"),
    }
}

#[test]
fn validation_refuses_what_the_runtime_would_reject() {
    let base = spec("timm-vit-micro");
    let mut s = base.clone();
    s.tensors.get_mut("blocks.0.attn.proj.weight").unwrap().shape = vec![32, 128];
    assert!(matches!(invalid(&s), SpecError::Shape { tensor, .. } if tensor == "blocks.0.attn.proj.weight"));
    let mut s = base.clone();
    s.tensors.get_mut("norm.bias").unwrap().data.pop();
    assert!(matches!(invalid(&s), SpecError::Data { tensor, .. } if tensor == "norm.bias"));
    let mut s = base.clone();
    s.tensors.remove("cls_token");
    assert!(matches!(invalid(&s), SpecError::MissingTensor(t) if t == "cls_token"));
    let mut s = base.clone();
    s.tensors.insert("extra".into(), f16_tensor(&[3], 1));
    assert!(matches!(invalid(&s), SpecError::UnexpectedTensor(t) if t == "extra"));
    let mut s = base.clone();
    s.tensors.insert("blocks.0.mlp.fc1.u".into(), f16_tensor(&[256, 4], 1));
    s.tensors.insert("blocks.0.mlp.fc1.v".into(), f16_tensor(&[4, 64], 1));
    assert!(matches!(invalid(&s), SpecError::Layer { .. }), "dense and low-rank at once");
    let mut s = base.clone();
    factorise(&mut s, "blocks.0.mlp.fc1", 4, None);
    s.tensors.remove("blocks.0.mlp.fc1.v");
    assert!(matches!(invalid(&s), SpecError::MissingTensor(t) if t == "blocks.0.mlp.fc1.v"));
    let mut s = base.clone();
    s.labels = vec!["one".into()];
    assert!(matches!(invalid(&s), SpecError::Labels { found: 1, expected: 10 }));
    let mut s = base.clone();
    s.config.num_heads = 5;
    assert!(matches!(invalid(&s), SpecError::Config(_)));
    let mut s = base.clone();
    s.preprocess.mean = vec![0.5];
    assert!(matches!(invalid(&s), SpecError::Preprocess(_)));
    let mut s = base.clone();
    s.metadata.insert("config".into(), "{}".into());
    assert!(matches!(invalid(&s), SpecError::Metadata { .. }));
    let mut s = base.clone();
    s.metadata.insert("compression".into(), "not json".into());
    assert!(matches!(invalid(&s), SpecError::Metadata { .. }));
    let mut s = base.clone();
    let nan = StoredTensor::from_f32(vec![64], &[f32::NAN; 64]).unwrap();
    s.tensors.insert("blocks.1.norm1.bias".into(), nan);
    assert!(matches!(invalid(&s), SpecError::Data { tensor, .. } if tensor == "blocks.1.norm1.bias"));
    let mut s = base.clone();
    let int = StoredTensor::from_u32(vec![64], &[0; 64]).unwrap();
    s.tensors.insert("norm.weight".into(), int);
    assert!(matches!(invalid(&s), SpecError::Dtype { .. }));
}

#[test]
fn csr_invariants_are_checked() {
    let sparse_spec = |edit: &dyn Fn(&mut Vec<u32>, &mut Vec<u32>)| {
        let mut s = spec("timm-vit-micro");
        factorise(&mut s, "blocks.0.mlp.fc2", 4, Some(DType::U32));
        let mut rp = s.tensors["blocks.0.mlp.fc2.sparse.row_ptr"].to_u32().unwrap();
        let mut ci = s.tensors["blocks.0.mlp.fc2.sparse.col_idx"].to_u32().unwrap();
        edit(&mut rp, &mut ci);
        s.tensors
            .insert("blocks.0.mlp.fc2.sparse.row_ptr".into(), StoredTensor::from_u32(vec![rp.len()], &rp).unwrap());
        s.tensors
            .insert("blocks.0.mlp.fc2.sparse.col_idx".into(), StoredTensor::from_u32(vec![ci.len()], &ci).unwrap());
        s
    };
    assert!(sparse_spec(&|_, _| {}).validate().is_ok());
    type CsrEdit<'a> = &'a dyn Fn(&mut Vec<u32>, &mut Vec<u32>);
    let bad: [(&str, CsrEdit); 4] = [
        ("row_ptr[0] != 0", &|rp, _| rp[0] = 1),
        ("decreasing", &|rp, _| rp.swap(3, 4)),
        ("column out of range", &|_, ci| ci[5] = 256),
        ("row_ptr[m] != nnz", &|rp, _| *rp.last_mut().unwrap() = 63),
    ];
    for (what, edit) in bad {
        assert!(matches!(invalid(&sparse_spec(edit)), SpecError::Sparse { .. } | SpecError::Shape { .. }), "{what}");
    }
    // Row pointers must be U32.
    let mut s = sparse_spec(&|_, _| {});
    let rp = s.tensors["blocks.0.mlp.fc2.sparse.row_ptr"].to_u32().unwrap();
    let rp16: Vec<u16> = rp.iter().map(|&x| x as u16).collect();
    s.tensors.insert("blocks.0.mlp.fc2.sparse.row_ptr".into(), StoredTensor::from_u16(vec![rp.len()], &rp16).unwrap());
    assert!(matches!(invalid(&s), SpecError::Dtype { .. }));
    // A partial sparse term.
    let mut s = sparse_spec(&|_, _| {});
    s.tensors.remove("blocks.0.mlp.fc2.sparse.values");
    assert!(matches!(invalid(&s), SpecError::Layer { .. }));
}

/// Python's reference `safetensors` reads every tensor and the metadata of our files.
#[test]
fn python_safetensors_reads_our_files() {
    let probe = Command::new("python3").args(["-c", "import safetensors, numpy"]).output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        eprintln!("notice: python3 with numpy and safetensors is not available; skipping the Python check");
        return;
    }
    let tmp = TempDir::new("python");
    let mut expected = BTreeMap::new();
    for name in MODEL_FIXTURES {
        let mut s = spec(name);
        if name.starts_with("hf-") {
            s.cast_floats(DType::F16).unwrap(); // some F16 files too (numpy has no bfloat16)
        }
        if name == "timm-vit-micro" {
            factorise(&mut s, "blocks.1.mlp.fc2", 16, Some(DType::U16));
        }
        let path = tmp.join(&format!("{name}.fvit"));
        writer::write_model(&s, &path).unwrap();
        let mut sums = BTreeMap::new();
        for (t, st) in &s.tensors {
            let vals: Vec<f64> = match st.to_u32() {
                Some(v) => v.iter().map(|&x| x as f64).collect(),
                None => st.to_f32().unwrap().iter().map(|&x| x as f64).collect(),
            };
            sums.insert(t.clone(), (st.dtype.name(), st.shape.clone(), vals.iter().sum::<f64>()));
        }
        expected.insert(path, (s.config.clone(), sums));
    }
    let script = r#"
import json, sys
from safetensors import safe_open
out = {}
for path in sys.argv[1:]:
    with safe_open(path, "numpy") as f:
        meta = f.metadata()
        tensors = {}
        for k in f.keys():
            t = f.get_tensor(k)
            tensors[k] = [str(t.dtype), list(t.shape), float(t.astype("float64").sum())]
        out[path] = {"meta": meta, "tensors": tensors}
print(json.dumps(out))
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    for p in expected.keys() {
        cmd.arg(p);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (path, (config, sums)) in &expected {
        let g = &got[path.to_str().unwrap()];
        let meta = &g["meta"];
        assert_eq!(meta["format"], "factorvit");
        assert_eq!(meta["format_version"], "1");
        for key in ["config", "preprocess", "labels", "layers"] {
            let text = meta[key].as_str().unwrap_or_else(|| panic!("{key} missing"));
            serde_json::from_str::<serde_json::Value>(text).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        let cfg: serde_json::Value = serde_json::from_str(meta["config"].as_str().unwrap()).unwrap();
        assert_eq!(cfg["embed_dim"], config.embed_dim);
        assert_eq!(cfg["architecture"], config.architecture.as_str());
        let tensors = g["tensors"].as_object().unwrap();
        assert_eq!(tensors.len(), sums.len());
        for (name, (dtype, shape, sum)) in sums {
            let t = &tensors[name];
            let np = match *dtype {
                "F32" => "float32",
                "F16" => "float16",
                "U16" => "uint16",
                "U32" => "uint32",
                other => panic!("{other}"),
            };
            assert_eq!(t[0], np, "{name}");
            assert_eq!(
                t[1].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect::<Vec<_>>(),
                *shape
            );
            let py = t[2].as_f64().unwrap();
            assert!((py - sum).abs() <= 1e-9 * sum.abs().max(1.0), "{name}: python sum {py} vs {sum}");
        }
    }
}

fn arb_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F16),
        Just(DType::BF16),
        Just(DType::U16),
        Just(DType::U32),
        Just(DType::U8),
        Just(DType::F64),
        Just(DType::I64),
    ]
}

proptest! {
    /// Any set of tensors: header padded to 8, every tensor aligned to its element size,
    /// contiguous data, and the bytes and metadata read back unchanged.
    #[test]
    fn safetensors_layout_property(
        specs in proptest::collection::vec((arb_dtype(), proptest::collection::vec(0usize..5, 0..4)), 0..12),
        meta in proptest::collection::vec(("[a-z]{1,6}", "[ -~]{0,12}"), 0..3),
    ) {
        let tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)> = specs
            .iter()
            .enumerate()
            .map(|(i, (d, shape))| {
                let n: usize = shape.iter().product::<usize>() * d.size();
                (format!("t{i}"), *d, shape.clone(), (0..n).map(|b| (b * 31 + i) as u8).collect())
            })
            .collect();
        let refs: Vec<TensorRef<'_>> = tensors
            .iter()
            .map(|(n, d, s, b)| TensorRef { name: n, dtype: *d, shape: s, data: b })
            .collect();
        let mut metadata: Vec<(String, String)> = Vec::new();
        for (k, v) in meta {
            if !metadata.iter().any(|(x, _)| *x == k) {
                metadata.push((k, v));
            }
        }
        let bytes = safetensors_bytes(&refs, &metadata).unwrap();
        let c = check_layout(&bytes);
        for (n, d, s, b) in &tensors {
            let info = c.get(n).unwrap();
            prop_assert_eq!((info.dtype, &info.shape), (*d, s));
            prop_assert_eq!(&bytes[info.start..info.end], &b[..]);
        }
        for (k, v) in &metadata {
            prop_assert_eq!(c.metadata(k), Some(v.as_str()));
        }
    }
}

#[test]
fn safetensors_writer_rejects_inconsistent_tensors() {
    let data = [0u8; 8];
    let bad_len = [TensorRef { name: "a", dtype: DType::F32, shape: &[3], data: &data }];
    assert!(matches!(safetensors_bytes(&bad_len, &[]), Err(WriteError::Tensor { .. })));
    let dup = [
        TensorRef { name: "a", dtype: DType::F32, shape: &[2], data: &data },
        TensorRef { name: "a", dtype: DType::F32, shape: &[2], data: &data },
    ];
    assert!(matches!(safetensors_bytes(&dup, &[]), Err(WriteError::Tensor { .. })));
    let reserved = [TensorRef { name: "__metadata__", dtype: DType::F32, shape: &[2], data: &data }];
    assert!(matches!(safetensors_bytes(&reserved, &[]), Err(WriteError::Tensor { .. })));
}

#[test]
fn atomic_write_replaces_or_leaves_untouched() {
    let tmp = TempDir::new("atomic");
    let target = tmp.join("model.fvit");
    write_atomic(&target, b"first").unwrap();
    write_atomic(&target, b"second").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"second");
    assert_eq!(tmp.entries(), ["model.fvit"], "no temporary file left behind");

    // A writer that fails half-way: the old content survives, no temporary file remains.
    let err = write_atomic_with(&target, |f| {
        use std::io::Write;
        f.write_all(b"partial")?;
        Err(std::io::Error::other("disk on fire"))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "disk on fire");
    assert_eq!(std::fs::read(&target).unwrap(), b"second");
    assert_eq!(tmp.entries(), ["model.fvit"]);

    // Same for a new file: nothing appears.
    let fresh = tmp.join("fresh.fvit");
    assert!(write_atomic_with(&fresh, |_| Err(std::io::Error::other("no"))).is_err());
    assert!(!fresh.exists());
    assert_eq!(tmp.entries(), ["model.fvit"]);

    // A panicking writer leaves nothing behind either.
    let panicked = std::panic::catch_unwind(|| write_atomic_with(&fresh, |_| panic!("writer bug")));
    assert!(panicked.is_err());
    assert_eq!(tmp.entries(), ["model.fvit"]);

    // The target is a directory: the rename fails, the temporary file is cleaned up.
    std::fs::create_dir(tmp.join("dir.fvit")).unwrap();
    assert!(write_atomic(&tmp.join("dir.fvit"), b"data").is_err());
    assert_eq!(tmp.entries(), ["dir.fvit", "model.fvit"]);

    // Missing parent directory, and a path without a file name.
    assert!(write_atomic(&tmp.join("no/such/dir/m.fvit"), b"x").is_err());
    assert!(write_atomic(std::path::Path::new("/"), b"x").is_err());
}

#[cfg(unix)]
#[test]
fn atomic_write_into_a_read_only_directory_fails_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("readonly");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let target = tmp.join("model.fvit");
    // Privileged users (root) bypass directory permissions; detect that and say so.
    if std::fs::write(tmp.join("probe"), b"").is_ok() {
        let _ = std::fs::remove_file(tmp.join("probe"));
        eprintln!("notice: running with privileges that ignore directory permissions; read-only case not testable");
        return;
    }
    let err = writer::write_model(&spec("timm-vit-micro"), &target).unwrap_err();
    assert!(matches!(err, WriteError::Io { .. }), "{err:?}");
    assert!(tmp.entries().is_empty(), "left {:?}", tmp.entries());
}

#[test]
fn f16_and_bf16_survive_a_round_trip_through_f32_exactly() {
    // Every non-NaN bit pattern.
    let f16_bits: Vec<u16> = (0..=u16::MAX).filter(|&b| !f16::from_bits(b).is_nan()).collect();
    let t =
        StoredTensor::new(DType::F16, vec![f16_bits.len()], f16_bits.iter().flat_map(|b| b.to_le_bytes()).collect())
            .unwrap();
    let back = t.cast(DType::F32).unwrap().cast(DType::F16).unwrap();
    assert_eq!(back, t);
    let bf16_bits: Vec<u16> = (0..=u16::MAX).filter(|&b| !bf16::from_bits(b).is_nan()).collect();
    let t =
        StoredTensor::new(DType::BF16, vec![bf16_bits.len()], bf16_bits.iter().flat_map(|b| b.to_le_bytes()).collect())
            .unwrap();
    assert_eq!(t.cast(DType::F32).unwrap().cast(DType::BF16).unwrap(), t);
    // NaN stays NaN.
    let nan = StoredTensor::from_f32_as(DType::F16, vec![1], &[f32::NAN]).unwrap();
    assert!(nan.cast(DType::F32).unwrap().to_f32().unwrap()[0].is_nan());
}

#[test]
fn f32_to_f16_rounds_to_nearest_even_and_refuses_overflow() {
    let ulp = 2f32.powi(-10); // f16 spacing in [1, 2)
    let values = [1.0 + ulp / 2.0, 1.0 + 1.5 * ulp, 1.0 + 0.75 * ulp, 65504.0, -0.0, 1e-8];
    let t = StoredTensor::from_f32(vec![values.len()], &values).unwrap().cast(DType::F16).unwrap();
    let got = t.to_f32().unwrap();
    assert_eq!(got[0], 1.0, "tie rounds to even (down)");
    assert_eq!(got[1], 1.0 + 2.0 * ulp, "tie rounds to even (up)");
    assert_eq!(got[2], 1.0 + ulp, "above the tie rounds up");
    assert_eq!(got[3], 65504.0);
    assert!(got[4] == 0.0 && got[4].is_sign_negative());
    assert_eq!(got[5], f16::from_f32(1e-8).to_f32());
    let bf = StoredTensor::from_f32(vec![1], &[1.0 + 2f32.powi(-8)]).unwrap().cast(DType::BF16).unwrap();
    assert_eq!(bf.to_f32().unwrap()[0], 1.0, "bf16 tie rounds to even");

    let too_big = StoredTensor::from_f32(vec![2], &[1.0, 70000.0]).unwrap();
    assert!(matches!(too_big.cast(DType::F16), Err(SpecError::Data { .. })));
    // cast_floats is all-or-nothing.
    let mut s = spec("timm-vit-micro");
    let before = s.clone();
    s.tensors.insert("blocks.0.mlp.fc2.bias".into(), StoredTensor::from_f32(vec![64], &[1e6; 64]).unwrap());
    let with_big = s.clone();
    let err = s.cast_floats(DType::F16).unwrap_err();
    assert!(err.to_string().contains("blocks.0.mlp.fc2.bias"), "{err}");
    assert_eq!(s, with_big, "nothing changed");
    // A successful cast converts every float tensor and the result still loads.
    let mut s = before;
    s.cast_floats(DType::BF16).unwrap();
    assert!(s.tensors.values().all(|t| t.dtype == DType::BF16));
    factorvit::Model::from_vec(to_bytes(&s).unwrap()).unwrap();
    assert!(matches!(s.cast_floats(DType::U8), Err(SpecError::Dtype { .. })));
}
