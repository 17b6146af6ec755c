//! The `factorvit` binary: help and exit codes, `convert` and `infer` end to end, and
//! one-line errors without panics.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use factorvit::safetensors::{Container, DType};
use factorvit_compress::checkpoint::{decode_f32, read_safetensors};

fn factorvit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_factorvit")).args(args).output().expect("run factorvit")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Exactly one line on stderr, starting with `error: `, and no panic.
fn assert_one_error_line(o: &Output) {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning: ")).collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    assert!(lines[0].starts_with("error: "), "stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "stderr: {err}");
}

#[test]
fn help_documents_commands_and_exit_codes() {
    let o = factorvit(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in ["convert", "infer", "Exit status", "101"] {
        assert!(out.contains(needle), "--help lacks {needle}: {out}");
    }
    for cmd in ["convert", "infer"] {
        let o = factorvit(&[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("Examples") && out.contains("Exit status"), "{cmd} --help: {out}");
    }
    assert_eq!(factorvit(&["--version"]).status.code(), Some(0));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["convert"],
        &["convert", "--model", "x", "-o", "y", "--dtype", "f8"],
        &["infer", "--model", "m", "--input", "i", "--output", "o", "--batch-size", "0"],
        &["infer", "--model", "m", "--input", "i", "--output", "o", "--threads", "lots"],
    ] {
        let o = factorvit(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn convert_writes_a_valid_file() {
    let tmp = TempDir::new("cli-convert");
    for name in MODEL_FIXTURES {
        let out = tmp.join(&format!("{name}.fvit"));
        let o = factorvit(&["convert", "--model", p(&fixture(name)), "-o", p(&out)]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("wrote"));
        let bytes = std::fs::read(&out).unwrap();
        Container::parse(&bytes).unwrap();
        factorvit::Model::from_bytes(&bytes).unwrap();
    }
    // --dtype converts every float tensor; converting the .fvit again works too.
    let f16 = tmp.join("f16.fvit");
    let o = factorvit(&["convert", "--model", p(&fixture("hf-vit-micro")), "-o", p(&f16), "--dtype", "f16", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "--quiet");
    let file = read_safetensors(&f16).unwrap();
    assert!(file.tensors.values().all(|t| t.dtype == DType::F16));
    let bf16 = tmp.join("bf16.fvit");
    let o = factorvit(&["convert", "--model", p(&f16), "-o", p(&bf16), "--dtype", "bf16"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(read_safetensors(&bf16).unwrap().tensors.values().all(|t| t.dtype == DType::BF16));
}

/// `--dtype int8`: block-linear weights int8 with F32 channel scales, every other float F16; the
/// outputs stay close to the f32 conversion's.
#[test]
fn convert_int8_quantises_the_block_linears() {
    let tmp = TempDir::new("cli-convert-int8");
    let (f32_path, i8_path) = (tmp.join("f32.fvit"), tmp.join("int8.fvit"));
    let model = fixture("hf-vit-micro");
    for (out, dtype) in [(&f32_path, "f32"), (&i8_path, "int8")] {
        let o = factorvit(&["convert", "-q", "--model", p(&model), "-o", p(out), "--dtype", dtype]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let file = read_safetensors(&i8_path).unwrap();
    for (name, t) in &file.tensors {
        let expected = if name.starts_with("blocks.") && name.ends_with(".weight") && !name.contains("norm") {
            DType::I8
        } else if name.ends_with("_scale") {
            DType::F32
        } else {
            DType::F16
        };
        assert_eq!(t.dtype, expected, "{name}");
    }
    let run = |path: &Path| {
        let m = factorvit::Model::open(path).unwrap();
        let c = m.config().clone();
        let pixels: Vec<f32> =
            (0..c.in_chans * c.image_size[0] * c.image_size[1]).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let mut s = m.session(Default::default()).unwrap();
        s.run(&pixels).unwrap().last_hidden_state.to_vec()
    };
    let (a, b) = (run(&f32_path), run(&i8_path));
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let cosine = dot / (norm(&a) * norm(&b));
    // 8-bit weights (relative weight error ~1e-5) on a 2-block micro model: well above 0.99.
    assert!(cosine > 0.99, "cosine {cosine}");
}

#[test]
fn convert_failures_are_one_line_and_leave_no_file() {
    let tmp = TempDir::new("cli-convert-bad");
    let out = tmp.join("out.fvit");
    // Not a checkpoint; a missing path; a corrupt checkpoint.
    let corrupt = copy_fixture("timm-vit-micro");
    let full = std::fs::read(corrupt.join("model.safetensors")).unwrap();
    std::fs::write(corrupt.join("model.safetensors"), &full[..full.len() / 2]).unwrap();
    let missing = tmp.join("missing");
    for model in [tmp.path(), missing.as_path(), corrupt.path()] {
        let o = factorvit(&["convert", "--model", p(model), "-o", p(&out)]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_one_error_line(&o);
        assert!(!out.exists());
    }
    let o = factorvit(&["convert", "--model", p(corrupt.path()), "-o", p(&out)]);
    assert!(stderr(&o).contains("model.safetensors"), "{}", stderr(&o));
    // Unwritable output location.
    let o = factorvit(&["convert", "--model", p(&fixture("timm-vit-micro")), "-o", p(&tmp.join("no/dir/x.fvit"))]);
    assert_eq!(o.status.code(), Some(1));
    assert_one_error_line(&o);
    assert_eq!(tmp.entries(), Vec::<String>::new());
}

fn read_f32(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    read_safetensors(path)
        .unwrap()
        .tensors
        .into_iter()
        .filter_map(|(n, t)| decode_f32(t.dtype, &t.data).map(|v| (n, (t.shape, v))))
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `infer` on a checkpoint directory and on a converted file matches the reference outputs.
#[test]
fn infer_matches_the_reference_outputs() {
    let tmp = TempDir::new("cli-infer");
    for (name, from_file, batch) in [
        ("timm-vit-micro", false, "8"),
        ("timm-deit-distilled-micro", true, "1"),
        ("timm-vit-avgpool-layerscale-micro", false, "2"),
        ("hf-vit-micro", true, "8"),
        ("hf-deit-distilled-micro", false, "8"),
        ("hf-dinov2-micro", true, "1"),
    ] {
        let dir = fixture(name);
        let model = if from_file {
            let f = tmp.join(&format!("{name}.fvit"));
            assert_eq!(factorvit(&["convert", "-q", "--model", p(&dir), "-o", p(&f)]).status.code(), Some(0));
            f
        } else {
            dir.clone()
        };
        let out = tmp.join(&format!("{name}.out.safetensors"));
        let o = factorvit(&[
            "infer",
            "--model",
            p(&model),
            "--input",
            p(&dir.join("input.safetensors")),
            "--output",
            p(&out),
            "--threads",
            "2",
            "--batch-size",
            batch,
        ]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let got = read_f32(&out);
        let want = read_f32(&dir.join("expected.safetensors"));
        let keys: Vec<&str> =
            if name.contains("dinov2") { vec!["last_hidden_state", "pooler_output"] } else { vec!["logits"] };
        assert_eq!(got.keys().map(String::as_str).collect::<Vec<_>>(), {
            let mut k = keys.clone();
            k.sort();
            k
        });
        for k in keys {
            let (gs, gv) = &got[k];
            let (ws, wv) = &want[k];
            assert_eq!(gs, ws, "{name}: {k} shape");
            let d = max_abs(gv, wv);
            assert!(d <= 1e-4, "{name}: {k} differs by {d}");
        }
    }
}

#[test]
fn infer_input_errors_exit_1() {
    let tmp = TempDir::new("cli-infer-bad");
    let model = fixture("timm-vit-micro");
    let out = tmp.join("out.safetensors");
    // No pixel_values tensor.
    let wrong_name = tmp.join("wrong.safetensors");
    let mut t = std::collections::BTreeMap::new();
    t.insert("images".to_string(), f16_tensor(&[1, 3, 32, 32], 1));
    write_tensors(&wrong_name, &t);
    // Wrong channel count.
    let wrong_c = tmp.join("wrong_c.safetensors");
    let mut t = std::collections::BTreeMap::new();
    t.insert("pixel_values".to_string(), f16_tensor(&[1, 1, 32, 32], 1));
    write_tensors(&wrong_c, &t);
    // Not 4-D.
    let wrong_rank = tmp.join("wrong_rank.safetensors");
    let mut t = std::collections::BTreeMap::new();
    t.insert("pixel_values".to_string(), f16_tensor(&[3, 32, 32], 1));
    write_tensors(&wrong_rank, &t);
    let absent = tmp.join("absent.safetensors");
    for (input, needle) in [
        (wrong_name.as_path(), "pixel_values"),
        (wrong_c.as_path(), "channels"),
        (wrong_rank.as_path(), "[B, C, H, W]"),
        (absent.as_path(), "absent.safetensors"),
    ] {
        let o = factorvit(&["infer", "--model", p(&model), "--input", p(input), "--output", p(&out)]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_one_error_line(&o);
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
        assert!(!out.exists());
    }
}

/// `eval` of a backbone against a reference reports nearest-neighbour retrieval agreement (in
/// the JSON and the table) with at least 3 images, the other-label variant with labels, and
/// keeps the fields it had before unchanged.
#[test]
fn eval_reports_knn_retrieval_agreement_for_backbones() {
    let tmp = TempDir::new("cli-eval-knn");
    let model = fixture("hf-dinov2-micro");
    let write = |name: &str, n: usize, labels: Option<&[i64]>| {
        let path = tmp.join(name);
        let mut t = std::collections::BTreeMap::new();
        t.insert("pixel_values".to_string(), f16_tensor(&[n, 3, 56, 56], 11));
        if let Some(l) = labels {
            let data = l.iter().flat_map(|v| v.to_le_bytes()).collect();
            t.insert(
                "labels".to_string(),
                factorvit_compress::checkpoint::StoredTensor { dtype: DType::I64, shape: vec![n], data },
            );
        }
        write_tensors(&path, &t);
        path
    };
    // Labels 0 (4 images, 6 candidates of the other label each: top-1 and top-5) and 1 (6 images,
    // 4 candidates: top-1 only).
    let ten = write("ten.safetensors", 10, Some(&[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]));
    let three = write("three.safetensors", 3, None);
    let two = write("two.safetensors", 2, None);
    // A perturbed copy of the model: different features, same outputs.
    let perturbed = copy_fixture("hf-dinov2-micro");
    edit_weights(perturbed.path(), |t| {
        let name = t.keys().find(|k| k.contains("layer.0") && k.contains("fc1.weight")).unwrap().clone();
        t.insert(name.clone(), f16_tensor(&t[&name].shape.clone(), 3));
    });
    let eval = |m: &Path, data: &Path, json: bool| -> String {
        let mut args = vec!["eval", "--model", p(m), "--data", p(data), "--reference", p(&model), "--threads", "1"];
        if json {
            args.push("--json");
        }
        let o = factorvit(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let keys = |s: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    };
    let old = ["n", "pooled_cosine", "token_cosine"];
    let knn = ["knn_top1_agreement", "knn_top5_overlap"];
    let other =
        ["knn_top1_agreement_other_labels", "knn_top5_overlap_other_labels", "knn_top1_label_agreement_other_labels"];
    let sorted = |parts: &[&[&str]]| {
        let mut v: Vec<String> = parts.iter().flat_map(|p| p.iter().map(|s| s.to_string())).collect();
        v.sort();
        v
    };
    // The model against itself: every neighbour agrees.
    let same: serde_json::Value = serde_json::from_str(eval(&model, &ten, true).trim()).unwrap();
    assert_eq!(keys(&same.to_string()), sorted(&[&old, &knn, &other]));
    for k in knn.iter().chain(&other) {
        assert_eq!(same[k].as_f64(), Some(1.0), "{k}: {same}");
    }
    let table = eval(&model, &ten, false);
    assert!(table.contains("kNN top-1 agreement 100.00%  kNN top-5 overlap 100.00%"), "{table}");
    assert!(table.contains("other-label kNN top-1 agreement 100.00%"), "{table}");
    // A perturbed model: fractions in [0, 1] (their values depend on the features).
    let diff: serde_json::Value = serde_json::from_str(eval(perturbed.path(), &ten, true).trim()).unwrap();
    for k in knn.iter().chain(&other) {
        assert!(diff[k].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)), "{k}: {diff}");
    }
    // 3 images: top-1 only, without labels no other-label fields; 2 images: none.
    assert_eq!(keys(&eval(&model, &three, true)), sorted(&[&old, &["knn_top1_agreement"]]));
    assert_eq!(keys(&eval(&model, &two, true)), sorted(&[&old]));
    assert!(!eval(&model, &two, false).contains("kNN"));
}
