//! `factorvit demo` and `factorvit run` end to end on the bundled model and data.

mod common;

use std::process::{Command, Output};

use common::*;

fn factorvit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_factorvit")).args(args).current_dir(repo_root()).output().expect("run factorvit")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_command_has_help_with_examples() {
    for cmd in ["demo", "run", "convert", "infer", "compress", "eval", "inspect", "bench"] {
        let o = factorvit(&[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{cmd} --help");
        let out = text(&o.stdout);
        assert!(out.contains("Examples:") && out.contains("factorvit"), "{cmd} --help: {out}");
    }
}

/// The bundled example images are named `fmnist-test-NNNN-<label>.png`; the dense model must
/// give each its label as top class, with probabilities that are a distribution.
#[test]
fn run_prints_the_top_classes_of_image_files() {
    let dir = repo_root().join("examples/images");
    let mut images: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    images.sort();
    assert!(images.len() >= 3, "bundled images: {images:?}");
    let mut args = vec!["run", "--model", "models/fmnist-deit-tiny", "--json", "--threads", "1"];
    args.extend(images.iter().map(String::as_str));
    let o = factorvit(&args);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let lines: Vec<serde_json::Value> =
        text(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(lines.len(), images.len());
    for (line, image) in lines.iter().zip(&images) {
        assert_eq!(line["image"].as_str().unwrap(), image);
        let top = line["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        let probs: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "not sorted: {probs:?}");
        assert!(probs.iter().all(|&p| (0.0..=1.0).contains(&p)) && probs.iter().sum::<f64>() <= 1.0 + 1e-9);
        let slug = top[0]["label"].as_str().unwrap().to_lowercase().replace(['/', ' '], "-");
        assert!(image.ends_with(&format!("-{slug}.png")), "{image} classified as {slug}");
    }
    // Text output: the file name, then one line per class.
    let o = factorvit(&["run", "--model", "models/fmnist-deit-tiny", "--top", "3", &images[0]]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.lines().skip(1).all(|l| l.contains('%')), "{out}");
}

#[test]
fn run_rejects_bad_inputs_with_one_line() {
    for args in [
        &["run", "--model", "models/fmnist-deit-tiny", "README.md"][..],
        &["run", "--model", "models/fmnist-deit-tiny", "no-such-image.png"],
        &["run", "--model", "no-such-model.fvit", "examples/images/fmnist-test-0000-ankle-boot.png"],
        &["run", "--model", "models/fmnist-deit-tiny", "--top", "0", "examples/images/fmnist-test-0000-ankle-boot.png"],
    ] {
        let o = factorvit(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = text(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: ") && !err.contains("panicked"), "{args:?}: {err}");
    }
}

/// A small demo (one budget, few calibration images, no timing) prints the table with the
/// dense and the compressed rows and writes its outputs.
#[test]
fn demo_compresses_evaluates_and_prints_one_table() {
    let out = TempDir::new("demo");
    let o = factorvit(&[
        "demo",
        "--keep",
        "0.3",
        "--calib-count",
        "24",
        "--data",
        "data/fmnist-test.safetensors",
        "--no-bench",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", text(&o.stderr));
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| :-")).collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(rows[0].contains("params") && rows[0].contains("agreement"));
    assert!(rows[1].starts_with("| dense ") && rows[2].starts_with("| keep 0.3 "), "{stdout}");
    assert!(stdout.contains("evaluated on 1000 images"), "{stdout}");
    let cells = |row: &str| -> Vec<String> { row.split('|').map(|c| c.trim().to_string()).collect() };
    let dense = cells(rows[1]);
    let small = cells(rows[2]);
    let number = |s: &str| s.trim_end_matches(" %").replace(',', "").parse::<f64>().unwrap();
    // Parameters: the compressed model is smaller; accuracy and agreement are sensible.
    assert!(number(&small[2]) < 0.5 * number(&dense[2]), "{stdout}");
    assert!(number(&dense[6]) > 85.0, "dense top-1: {stdout}");
    assert!(number(&small[7]) > 80.0, "agreement: {stdout}");
    let mut files = out.entries();
    files.sort();
    assert_eq!(
        files,
        ["demo-results.md", "dense.fvit", "keep-0.3.fvit", "keep-0.3.fvit.report.json", "keep-0.3.report.html"]
    );
}

#[test]
fn demo_rejects_bad_budgets() {
    let o = factorvit(&["demo", "--keep", "1.5", "--no-bench"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).starts_with("error: "));
}

/// `bench --profile`: every op kind (then `other`) in each report of `--json`, shares that add
/// up to at most 1, and the table in text mode. No time is asserted.
#[test]
fn bench_profile_lists_every_op_kind() {
    let model = "runtime/tests/data/tiny.fvit";
    let args = ["bench", "--model", model, "--threads", "1,2", "--runs", "2", "--min-time", "0", "--profile"];
    let o = factorvit(&[&args[..], &["--json"]].concat());
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    let reports = v["models"][0].as_array().unwrap();
    assert_eq!(reports.len(), 2);
    let ops =
        ["patch_embed", "norm", "qkv", "attn_scores", "softmax", "attn_v", "proj", "fc1_gelu", "fc2", "head", "other"];
    for r in reports {
        let rows = r["profile"].as_array().expect("profile rows");
        let names: Vec<&str> = rows.iter().map(|row| row["op"].as_str().unwrap()).collect();
        assert_eq!(names, ops);
        let shares: f64 = rows.iter().map(|row| row["share"].as_f64().unwrap()).sum();
        assert!(shares <= 1.0 + 1e-9 && shares > 0.0, "shares {shares}");
        assert!(rows.iter().all(|row| row["ms"].as_f64().unwrap() >= 0.0));
    }
    // Without --profile there is no profile key.
    let o = factorvit(&["bench", "--model", model, "--threads", "1", "--runs", "1", "--min-time", "0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert!(v["models"][0][0].get("profile").is_none());
    let o = factorvit(&args);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert!(out.contains("profile with 2 thread(s), per run:") && out.contains("fc1_gelu"), "{out}");
}
