//! Bad inputs to the compressor and the CLI are clear typed errors with a non-zero exit status —
//! never a panic, never an output file.
//!
//! Library entry points are checked for the error *variant*; the `factorvit` binary for its exit
//! status, one `error: ` line on stderr naming the problem, no panic, and no file written.
//! Cases already covered elsewhere are not repeated here: `cli.rs` (convert / infer errors),
//! `cli_demo.rs` (run: non-image file, missing image, missing model, `--top 0`), `data_sources.rs`
//! (malformed safetensors datasets, pixel_values of the wrong H×W), `data_folder.rs` (folder
//! layouts, a PNG signature followed by garbage), `checkpoint_errors.rs` (broken checkpoints).
//!
//! Images whose channels or bit depth differ from the model's are **converted**, not rejected,
//! as timm's `convert('RGB')` / `convert('L')` would: grey is replicated to RGB, alpha is dropped
//! without compositing, RGB becomes grey by PIL's luma, and 16-bit samples keep their high byte
//! (Pillow does the same for 16-bit RGB; for 16-bit grey Pillow saturates at 255, which would
//! make nearly every such image white — factorvit deliberately scales instead).
//! `image_conversions_are_documented_behaviour` pins this down.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use factorvit::safetensors::DType;
use factorvit::{Interpolation, Model, Preprocess};
use factorvit_compress::checkpoint::StoredTensor;
use factorvit_compress::data::{load_dataset, DataError, LoadOptions, Rng};
use factorvit_compress::method::compensate::CompensationOptions;
use factorvit_compress::method::eval::{metrics, run_model, ModelOutputs, RunOptions};
use factorvit_compress::method::pipeline::{compress_model, Calibration, PipelineOptions};
use factorvit_compress::method::synthetic::{random_vit_spec, SyntheticVit};
use factorvit_compress::method::MethodError;
use factorvit_compress::writer;

// ---------------------------------------------------------------------------------------------
// Test inputs
// ---------------------------------------------------------------------------------------------

/// Writes a random RGB PNG.
fn rgb_png(path: &Path, w: u32, h: u32, seed: u64) {
    let mut rng = Rng::new(seed);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        image::Rgb([rng.below(256) as u8, rng.below(256) as u8, rng.below(256) as u8])
    });
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

/// A PNG whose header claims 65535 × 65535 RGB pixels (12 GiB decoded) with almost no data.
fn huge_png() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&65535u32.to_be_bytes());
    ihdr.extend_from_slice(&65535u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    // A valid, tiny zlib stream (stored block of 4 zero bytes).
    chunk(&mut png, b"IDAT", &[0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn write_st(path: &Path, tensors: &[(&str, StoredTensor)]) {
    let map: BTreeMap<String, StoredTensor> = tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    write_tensors(path, &map);
}

/// Every bad input, built once in a temporary directory.
struct Inputs {
    dir: TempDir,
}

impl Inputs {
    fn new() -> Inputs {
        let dir = TempDir::new("bad-inputs");
        let mk = |rel: &str| {
            let p = dir.join(rel);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        // Six good 40×40 photos for a 32×32 model.
        let ok = mk("calib_ok");
        for i in 0..6 {
            rgb_png(&ok.join(format!("{i}.png")), 40, 40, i);
        }
        mk("empty");
        let txt = mk("txt_only");
        std::fs::write(txt.join("notes.txt"), "not an image").unwrap();
        std::fs::write(txt.join("labels.csv"), "a,b").unwrap();
        std::fs::write(txt.join("model.safetensors.json"), "{}").unwrap();
        // A real PNG cut in half, next to a good one.
        let trunc = mk("truncated");
        rgb_png(&trunc.join("good.png"), 40, 40, 10);
        let full = std::fs::read(ok.join("0.png")).unwrap();
        std::fs::write(trunc.join("cut.png"), &full[..full.len() / 2]).unwrap();
        // Random bytes named .jpg, next to a good image.
        let garbage = mk("garbage");
        rgb_png(&garbage.join("good.png"), 40, 40, 11);
        let mut rng = Rng::new(5);
        let noise: Vec<u8> = (0..1000).map(|_| rng.below(256) as u8).collect();
        std::fs::write(garbage.join("noise.jpg"), noise).unwrap();
        // A decompression bomb header, next to a good image.
        let bomb = mk("bomb");
        rgb_png(&bomb.join("good.png"), 40, 40, 12);
        std::fs::write(bomb.join("huge.png"), huge_png()).unwrap();
        std::fs::write(dir.join("huge.png"), huge_png()).unwrap();
        std::fs::write(dir.join("zero.png"), b"").unwrap();
        std::fs::copy(trunc.join("cut.png"), dir.join("cut.png")).unwrap();
        std::fs::copy(garbage.join("noise.jpg"), dir.join("noise.jpg")).unwrap();
        // pixel_values that do not fit the 3×32×32 micro model.
        write_st(&dir.join("pv_c1.safetensors"), &[("pixel_values", f16_tensor(&[4, 1, 32, 32], 1))]);
        write_st(&dir.join("pv_c4.safetensors"), &[("pixel_values", f16_tensor(&[4, 4, 32, 32], 2))]);
        // 20×20 is no multiple of the 8-pixel patch: no size the model takes (24×24 would be:
        // compress then calibrates at that size, see below).
        write_st(&dir.join("pv_hw.safetensors"), &[("pixel_values", f16_tensor(&[4, 3, 20, 20], 3))]);
        write_st(&dir.join("pv_24.safetensors"), &[("pixel_values", f16_tensor(&[4, 3, 24, 24], 5))]);
        write_st(&dir.join("pv_ok.safetensors"), &[("pixel_values", f16_tensor(&[4, 3, 32, 32], 4))]);
        let ints = StoredTensor { dtype: DType::I64, shape: vec![2, 3, 32, 32], data: vec![0; 2 * 3 * 32 * 32 * 8] };
        write_st(&dir.join("pv_i64.safetensors"), &[("pixel_values", ints)]);
        let nan = StoredTensor::from_f32(vec![4, 3, 32, 32], &vec![f32::NAN; 4 * 3 * 32 * 32]).unwrap();
        write_st(&dir.join("pv_nan.safetensors"), &[("pixel_values", nan)]);
        write_st(&dir.join("pv_tiny.safetensors"), &[("pixel_values", f16_tensor(&[1, 3, 4, 4], 5))]);
        // 30×30: not a multiple of the 8-pixel patch.
        write_st(&dir.join("pv_30.safetensors"), &[("pixel_values", f16_tensor(&[2, 3, 30, 30], 6))]);
        // Label 99 (sample 2) for a 10-class model.
        let labels: Vec<u8> = [0i64, 1, 99, 2].iter().flat_map(|l| l.to_le_bytes()).collect();
        let labels = StoredTensor { dtype: DType::I64, shape: vec![4], data: labels };
        write_st(
            &dir.join("labels_99.safetensors"),
            &[("pixel_values", f16_tensor(&[4, 3, 32, 32], 7)), ("labels", labels)],
        );
        // A directory named like an image.
        let dir_png = mk("photo.png");
        rgb_png(&dir_png.join("inside.png"), 40, 40, 13);
        mk("out");
        Inputs { dir }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).to_str().unwrap().to_string()
    }

    fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// `timm-vit-micro`: a 3×32×32 classifier checkpoint (patch 8).
fn micro() -> String {
    fixture("timm-vit-micro").to_str().unwrap().to_string()
}

/// Preprocessing of a 3×32×32 model.
fn rgb32() -> Preprocess {
    Preprocess {
        input_size: [3, 32, 32],
        mean: vec![0.5, 0.4, 0.3],
        std: vec![0.2, 0.25, 0.3],
        interpolation: Interpolation::Bicubic,
        crop_pct: 0.875,
    }
}

/// `true` when a file without read permission can still be read (root, CAP_DAC_OVERRIDE):
/// permission cases are skipped then.
#[cfg(unix)]
fn permissions_do_not_block(path: &Path) -> bool {
    std::fs::read(path).is_ok()
}

#[cfg(unix)]
fn make_unreadable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Library: typed errors
// ---------------------------------------------------------------------------------------------

type DataCheck = fn(&DataError) -> bool;

#[test]
fn dataset_inputs_are_typed_errors() {
    let inputs = Inputs::new();
    let pre = rgb32();
    let limit0 = LoadOptions { limit: Some(0), ..LoadOptions::default() };
    // 6 images × 4 crops × 3×32×32 floats = 294,912 bytes.
    let crops_over = LoadOptions { crops_per_image: 4, max_bytes: 294_911, ..LoadOptions::default() };
    let crops_fit = LoadOptions { crops_per_image: 4, max_bytes: 294_912, ..LoadOptions::default() };
    assert_eq!(load_dataset(&inputs.dir.join("calib_ok"), &pre, &crops_fit).unwrap().n, 24);
    let small = LoadOptions { max_bytes: 1000, ..LoadOptions::default() };
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, LoadOptions, DataCheck, &str)> = vec![
        // (what, path, options, expected variant, text the message must contain)
        ("empty calibration folder", "empty", LoadOptions::default(), |e| matches!(e, DataError::NoImages { skipped: 0, .. }), "no .jpg/.jpeg/.png images were found under"),
        ("folder of non-image files", "txt_only", LoadOptions::default(), |e| matches!(e, DataError::NoImages { skipped: 3, .. }), "(3 other files skipped)"),
        ("truncated PNG in a folder", "truncated", LoadOptions::default(), |e| matches!(e, DataError::Image { .. }), "cut.png"),
        ("random bytes named .jpg", "garbage", LoadOptions::default(), |e| matches!(e, DataError::Image { .. }), "noise.jpg"),
        ("PNG header claiming 65535²", "huge.png", LoadOptions::default(), |e| matches!(e, DataError::Image { .. }), "huge.png"),
        ("zero-byte .png", "zero.png", LoadOptions::default(), |e| matches!(e, DataError::Image { .. }), "zero.png"),
        ("pixel_values with 1 channel", "pv_c1.safetensors", LoadOptions::default(), |e| matches!(e, DataError::InputMismatch { .. }), "1×32×32"),
        ("pixel_values with 4 channels", "pv_c4.safetensors", LoadOptions::default(), |e| matches!(e, DataError::InputMismatch { .. }), "4×32×32"),
        ("integer pixel_values", "pv_i64.safetensors", LoadOptions::default(), |e| matches!(e, DataError::Safetensors { .. }), "I64"),
        ("missing folder", "no-such-folder", LoadOptions::default(), |e| matches!(e, DataError::Io { .. }), "no-such-folder"),
        ("limit 0 (--calib-count 0)", "calib_ok", limit0, |e| matches!(e, DataError::Options(_)), "limit"),
        ("NaN pixel_values", "pv_nan.safetensors", LoadOptions::default(), |e| matches!(e, DataError::NonFinite { sample: 0, .. }), "non-finite"),
        ("crops above max_bytes", "calib_ok", crops_over, |e| matches!(e, DataError::TooLarge { samples: 24, .. }), "24 samples of 3×32×32"),
        ("images above max_bytes", "calib_ok", small.clone(), |e| matches!(e, DataError::TooLarge { .. }), "limit"),
        ("pixel_values above max_bytes", "pv_ok.safetensors", small, |e| matches!(e, DataError::TooLarge { .. }), "limit"),
    ];
    for (what, rel, opts, check, needle) in cases {
        let err = load_dataset(&inputs.dir.join(rel), &pre, &opts).expect_err(what);
        assert!(check(&err), "{what}: {err:?}");
        assert!(err.to_string().contains(needle), "{what}: `{err}` lacks `{needle}`");
    }
}

#[cfg(unix)]
#[test]
fn unreadable_images_are_io_errors() {
    let inputs = Inputs::new();
    let file = inputs.dir.join("calib_ok/3.png");
    make_unreadable(&file);
    if permissions_do_not_block(&file) {
        eprintln!("notice: running with privileges that ignore file permissions (root?): skipping");
        return;
    }
    let err = load_dataset(&inputs.dir.join("calib_ok"), &rgb32(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("3.png"), "{err}");
    // The CLI: compress and run fail with one line naming the file, and write nothing.
    let out = inputs.out_dir().join("m.fvit");
    let (model, calib) = (micro(), inputs.path("calib_ok"));
    for args in [
        vec!["compress", "--model", &model, "--calib", &calib, "--keep", "0.5", "-o", out.to_str().unwrap()],
        vec!["run", "--model", &model, file.to_str().unwrap()],
    ] {
        let o = factorvit(&args);
        assert_fails_cleanly(&o, 1, "3.png", &args);
        assert_eq!(std::fs::read_dir(inputs.out_dir()).unwrap().count(), 0, "{args:?} wrote a file");
    }
}

fn synthetic_model() -> Model<'static> {
    let spec = random_vit_spec(&SyntheticVit::micro(), 7).unwrap();
    Model::from_vec(writer::to_bytes(&spec).unwrap()).unwrap()
}

type MethodCheck = fn(&MethodError) -> bool;

fn input_error(e: &MethodError) -> bool {
    matches!(e, MethodError::Input(_))
}

/// `compress_model` with calibration data or options that cannot work. Before the geometry
/// check, an `image_size` larger than the pixels panicked (slice length mismatch) and a smaller
/// one failed with a misleading "batch exceeds the session's maximum".
#[test]
fn pipeline_rejects_inconsistent_calibration() {
    let model = synthetic_model();
    let [c, h, w] = model.preprocess().input_size;
    let n = 6;
    let px: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0).collect();
    let nan = vec![f32::NAN; px.len()];
    let base = PipelineOptions {
        budget_params: model.block_linear_params() / 2,
        sensitivity_images: 2,
        batch: 4,
        threads: 1,
        ..PipelineOptions::default()
    };
    fn calib(pixels: &[f32], count: usize, image_size: [usize; 2]) -> Calibration<'_> {
        Calibration { pixels, count, image_size, groups: None }
    }
    let (px, nan) = (&px[..], &nan[..]);
    #[rustfmt::skip]
    let cases: Vec<(&str, Calibration<'_>, PipelineOptions, MethodCheck)> = vec![
        ("no images", calib(px, 0, [h, w]), base.clone(), input_error),
        ("one value short", calib(&px[..px.len() - 1], n, [h, w]), base.clone(), input_error),
        ("count above the pixels", calib(px, n + 1, [h, w]), base.clone(), input_error),
        ("count below the pixels", calib(px, n - 1, [h, w]), base.clone(), input_error),
        ("no pixels", calib(&[], n, [h, w]), base.clone(), input_error),
        ("image_size larger than the pixels", calib(px, n, [2 * h, 2 * w]), base.clone(), input_error),
        ("image_size smaller than the pixels", calib(px, n, [h / 2, w]), base.clone(), input_error),
        ("NaN pixels", calib(nan, n, [h, w]), base.clone(), |e| matches!(e, MethodError::NonFinite(_))),
        ("budget 0", calib(px, n, [h, w]), PipelineOptions { budget_params: 0, ..base.clone() }, |e| matches!(e, MethodError::Budget(_))),
        ("batch 0", calib(px, n, [h, w]), PipelineOptions { batch: 0, ..base.clone() }, input_error),
        ("batch above the runtime's limit", calib(px, n, [h, w]), PipelineOptions { batch: usize::MAX, ..base.clone() }, |e| matches!(e, MethodError::Runtime(_))),
        ("empty whitening ridge grid", calib(px, n, [h, w]), PipelineOptions { whitening_ridge: vec![], ..base.clone() }, input_error),
        ("residual rank beyond any budget", calib(px, n, [h, w]), PipelineOptions { residual_rank: usize::MAX, ..base.clone() }, |e| matches!(e, MethodError::Budget(_))),
        ("sparse fraction 1.5", calib(px, n, [h, w]), PipelineOptions { sparse_fraction: 1.5, ..base.clone() }, input_error),
        ("sparse fraction NaN", calib(px, n, [h, w]), PipelineOptions { sparse_fraction: f64::NAN, ..base.clone() }, input_error),
        ("validation fraction 1", calib(px, n, [h, w]), PipelineOptions { validation_fraction: 1.0, ..base.clone() }, input_error),
        ("validation fraction -0.5", calib(px, n, [h, w]), PipelineOptions { validation_fraction: -0.5, ..base.clone() }, input_error),
        ("prefix token weight NaN", calib(px, n, [h, w]), PipelineOptions { prefix_token_weight: f64::NAN, ..base.clone() }, input_error),
        ("prefix token weight -1", calib(px, n, [h, w]), PipelineOptions { prefix_token_weight: -1.0, ..base.clone() }, input_error),
        ("whitening ridge -5", calib(px, n, [h, w]), PipelineOptions { whitening_ridge: vec![0.0, -5.0], ..base.clone() }, input_error),
        ("whitening ridge NaN", calib(px, n, [h, w]), PipelineOptions { whitening_ridge: vec![f64::NAN], ..base.clone() }, input_error),
        ("compensation ridge -1", calib(px, n, [h, w]), PipelineOptions { compensation_options: CompensationOptions { ridge_grid: vec![-1.0], ..CompensationOptions::default() }, ..base.clone() }, input_error),
        ("compensation ridge inf", calib(px, n, [h, w]), PipelineOptions { compensation_options: CompensationOptions { ridge_grid: vec![1e-3, f64::INFINITY], ..CompensationOptions::default() }, ..base.clone() }, input_error),
    ];
    for (what, calib, opts, check) in cases {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compress_model(&model, &calib, &opts)));
        let err = match outcome {
            Ok(Ok(_)) => panic!("{what}: compression succeeded"),
            Ok(Err(e)) => e,
            Err(_) => panic!("{what}: compress_model panicked"),
        };
        assert!(check(&err), "{what}: {err:?}");
    }
}

/// `run_model` / `metrics` with inconsistent geometry or outputs. Before the checks, pixels of
/// a smaller image size than `image_size` produced fewer outputs than images and `metrics`
/// then panicked (slice out of range).
#[test]
fn evaluation_rejects_inconsistent_inputs() {
    let model = synthetic_model();
    let [c, h, w] = model.preprocess().input_size;
    let n = 8;
    let px: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0).collect();
    for (what, pixels, count, size) in [
        ("image_size larger than the pixels", &px[..], n, [2 * h, 2 * w]),
        ("image_size smaller than the pixels", &px[..], n, [h / 2, w / 2]),
        ("a few values short", &px[..px.len() - 3], n, [h, w]),
        ("no images", &px[..0], 0, [h, w]),
    ] {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_model(&model, pixels, count, size, RunOptions { batch: 4, threads: 1, keep_tokens: false }, |_| {})
        }));
        match outcome {
            Ok(Err(e)) => assert!(input_error(&e), "{what}: {e:?}"),
            Ok(Ok(_)) => panic!("{what}: evaluation succeeded"),
            Err(_) => panic!("{what}: run_model panicked"),
        }
    }
    // NaN pixels: a typed error, not NaN logits counted as answers.
    let mut nan = px.clone();
    nan[5 * c * h * w + 7] = f32::NAN;
    let err = run_model(&model, &nan, n, [h, w], RunOptions { batch: 4, threads: 1, keep_tokens: false }, |_| {})
        .unwrap_err();
    assert!(matches!(&err, MethodError::NonFinite(m) if m.contains("image 5")), "{err:?}");
    let good =
        run_model(&model, &px, n, [h, w], RunOptions { batch: 4, threads: 1, keep_tokens: false }, |_| {}).unwrap();
    metrics(&good, Some(&vec![0; n]), Some(&good)).unwrap();
    let mut beyond = vec![0u32; n];
    beyond[3] = good.classes as u32;
    // Outputs whose sizes contradict their counts; label count mismatch.
    let short = ModelOutputs { logits: good.logits[..good.logits.len() - 1].to_vec(), ..good.clone() };
    let more = ModelOutputs { n: n + 1, ..good.clone() };
    let no_pool = ModelOutputs { pooler_output: Vec::new(), ..good.clone() };
    for (what, outputs, reference, labels) in [
        ("logits one value short", &short, None, None),
        ("more images than outputs", &more, None, None),
        ("no pooled features", &no_pool, None, None),
        ("reference with fewer values", &good, Some(&short), None),
        ("three labels for eight images", &good, None, Some(&[0u32, 1, 2][..])),
        ("a label beyond the classes", &good, None, Some(&beyond[..])),
    ] {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| metrics(outputs, labels, reference)));
        match outcome {
            Ok(Err(e)) => assert!(input_error(&e), "{what}: {e:?}"),
            Ok(Ok(_)) => panic!("{what}: metrics succeeded"),
            Err(_) => panic!("{what}: metrics panicked"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The binary: exit status, one error line, no panic, no output
// ---------------------------------------------------------------------------------------------

fn factorvit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_factorvit")).args(args).output().expect("run factorvit")
}

/// Exit status `code`; for status 1 exactly one `error: ` line (warnings aside) containing
/// `needle`; for usage errors (2) clap's message; never a panic.
fn assert_fails_cleanly(o: &Output, code: i32, needle: &str, args: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{args:?}: stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error") && !err.contains("RUST_BACKTRACE"), "{err}");
    assert!(err.contains(needle), "{args:?}: stderr lacks `{needle}`: {err}");
    if code == 1 {
        let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning: ")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("error: "), "{args:?}: {err}");
    } else {
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
}

/// Without `--image-size`, normalised calibration pixel_values of another size the model takes
/// (24×24 for the 32×32 micro model with 8-pixel patches) set the size to compress for, with a
/// warning; the output's preprocessing says so. An explicit `--image-size` wins (and then the
/// file does not fit).
#[test]
fn compress_takes_the_image_size_from_calibration_pixel_values() {
    let inputs = Inputs::new();
    std::fs::create_dir_all(inputs.out_dir()).unwrap();
    let out = inputs.out_dir().join("from-calib.fvit");
    let (model, calib, out_s) = (micro(), inputs.path("pv_24.safetensors"), out.to_str().unwrap().to_string());
    let args = ["compress", "--model", &model, "--calib", &calib, "--keep", "0.5", "-o", &out_s, "--threads", "1"];
    let o = factorvit(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "stderr: {err}");
    assert!(err.contains("the calibration pixel_values are 24×24: compressing for 24×24 inputs"), "{err}");
    let compressed = Model::open(&out).unwrap();
    assert_eq!(compressed.preprocess().input_size, [3, 24, 24]);

    let explicit = [&args[..], &["--image-size", "32"]].concat();
    assert_fails_cleanly(&factorvit(&explicit), 1, "3×24×24, the model takes 3×32×32", &explicit);
}

#[test]
fn cli_bad_inputs_fail_cleanly() {
    let inputs = Inputs::new();
    let model = micro();
    let out = inputs.out_dir().join("out.fvit");
    let out_s = out.to_str().unwrap().to_string();
    let p = |rel: &str| inputs.path(rel);
    let owned = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    // `compress` of `model` into `out` with these extra arguments.
    let compress_model_with = |model: &str, extra: &[&str]| -> Vec<String> {
        let mut v = owned(&["compress", "--model", model, "-o", &out_s, "--threads", "1", "--sensitivity-images", "2"]);
        v.extend(owned(extra));
        v
    };
    let compress = |extra: &[&str]| compress_model_with(&model, extra);
    let calib_ok = p("calib_ok");
    let with = |calib: &str| -> Vec<String> { compress(&["--calib", calib, "--keep", "0.5"]) };
    let ok_with = |extra: &[&str]| -> Vec<String> {
        let mut v = compress(&["--calib", &calib_ok]);
        v.extend(owned(extra));
        v
    };
    let missing_model = p("no-such-model");
    let int_pv = format!("input `pixel_values` in {} has dtype I64", p("pv_i64.safetensors"));
    let no_images = format!("no .jpg/.jpeg/.png images were found under {} (the folder is empty)", p("empty"));
    let dir_png = p("photo.png");
    let dir_not_image = format!("{dir_png}: is a directory, not an image file");
    let eval = |data: &str, extra: &[&str]| -> Vec<String> {
        let mut v = owned(&["eval", "--model", &model, "--data", data, "--threads", "1"]);
        v.extend(owned(extra));
        v
    };
    let pv_ok = p("pv_ok.safetensors");
    // Good compress arguments without the `--threads` and `--sensitivity-images` above.
    let bare = |extra: &[&str]| -> Vec<String> {
        let mut v = owned(&["compress", "--model", &model, "-o", &out_s, "--calib", &calib_ok, "--keep", "0.5"]);
        v.extend(owned(extra));
        v
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<String>, i32, &str)> = vec![
        // compress: calibration data
        ("compress: empty calibration folder", with(&p("empty")), 1, no_images.as_str()),
        ("compress: folder of non-image files", with(&p("txt_only")), 1, "no .jpg/.jpeg/.png images were found under"),
        ("compress: folder of non-image files (count)", with(&p("txt_only")), 1, "(3 other files skipped)"),
        ("compress: truncated PNG", with(&p("truncated")), 1, "cut.png"),
        ("compress: garbage named .jpg", with(&p("garbage")), 1, "noise.jpg"),
        ("compress: decompression-bomb PNG", with(&p("bomb")), 1, "huge.png"),
        ("compress: pixel_values with 1 channel", with(&p("pv_c1.safetensors")), 1, "1×32×32, the model takes 3×32×32"),
        ("compress: pixel_values with 4 channels", with(&p("pv_c4.safetensors")), 1, "4×32×32"),
        ("compress: pixel_values of a size the model cannot take", with(&p("pv_hw.safetensors")), 1, "3×20×20"),
        ("compress: integer pixel_values", with(&p("pv_i64.safetensors")), 1, "I64"),
        ("compress: NaN pixel_values", with(&p("pv_nan.safetensors")), 1, "non-finite"),
        ("compress: missing calibration path", with(&p("no-such-calib")), 1, "no-such-calib"),
        ("compress: crops of normalised pixel_values", compress(&["--calib", &p("pv_ok.safetensors"), "--keep", "0.5", "--crops-per-image", "2"]), 1, "crops"),
        // compress: model
        ("compress: missing model", compress_model_with(&missing_model, &["--calib", &calib_ok, "--keep", "0.5"]), 1, "no-such-model"),
        ("compress: model dir that is no checkpoint", compress_model_with(&p("txt_only"), &["--calib", &calib_ok, "--keep", "0.5"]), 1, "txt_only"),
        ("compress: missing --match-model", ok_with(&["--match-model", &missing_model]), 1, "no-such-model"),
        // compress: budget and counts
        ("compress: --keep 0", ok_with(&["--keep", "0"]), 1, "--keep 0 must be in (0, 1]"),
        ("compress: --keep 1.5", ok_with(&["--keep", "1.5"]), 1, "--keep 1.5"),
        ("compress: --keep=-0.1", ok_with(&["--keep=-0.1"]), 1, "--keep -0.1"),
        ("compress: --keep -0.1 (read as a flag)", ok_with(&["--keep", "-0.1"]), 2, "error:"),
        ("compress: --keep nan", ok_with(&["--keep", "nan"]), 1, "--keep NaN"),
        ("compress: --keep inf", ok_with(&["--keep", "inf"]), 1, "--keep inf"),
        ("compress: --keep abc", ok_with(&["--keep", "abc"]), 2, "--keep"),
        ("compress: --keep below rank 1 everywhere", ok_with(&["--keep", "1e-9"]), 1, "budget"),
        ("compress: --max-params 0", ok_with(&["--max-params", "0"]), 1, "--max-params"),
        ("compress: --max-bytes 0", ok_with(&["--max-bytes", "0"]), 1, "--max-bytes"),
        ("compress: two budgets", ok_with(&["--keep", "0.5", "--max-params", "9"]), 2, "cannot be used with"),
        ("compress: no budget", compress(&["--calib", &calib_ok]), 2, "--keep"),
        ("compress: --calib-count 0", ok_with(&["--keep", "0.5", "--calib-count", "0"]), 2, "'--calib-count <N>': 0 is out of range: must be at least 2"),
        ("compress: --calib-count 1", ok_with(&["--keep", "0.5", "--calib-count", "1"]), 2, "'--calib-count <N>': 1 is out of range: must be at least 2"),
        ("compress: --calib-count -1", ok_with(&["--keep", "0.5", "--calib-count=-1"]), 2, "--calib-count"),
        ("compress: --image-size 7 (below one patch)", ok_with(&["--keep", "0.5", "--image-size", "7"]), 1, "--image-size 7"),
        ("compress: --image-size 9000", ok_with(&["--keep", "0.5", "--image-size", "9000"]), 1, "--image-size 9000"),
        ("compress: --image-size 30 (not a multiple of the patch)", ok_with(&["--keep", "0.5", "--image-size", "30"]), 1, "--image-size 30 is out of range: must be a multiple of the model's patch size 8"),
        ("compress: --residual-rank beyond the budget", ok_with(&["--keep", "0.5", "--residual-rank", "100000"]), 1, "--residual-rank"),
        // compress: every numeric option is range-checked while parsing (usage error, nothing run)
        ("compress: --sparse 1.5", ok_with(&["--keep", "0.5", "--sparse", "1.5"]), 2, "'--sparse <F>': 1.5 is out of range: must be a finite number in [0, 1)"),
        ("compress: --sparse=-1", ok_with(&["--keep", "0.5", "--sparse=-1"]), 2, "'--sparse <F>': -1 is out of range"),
        ("compress: --sparse nan", ok_with(&["--keep", "0.5", "--sparse", "nan"]), 2, "'--sparse <F>': nan is out of range"),
        ("compress: --val-fraction 1.0", ok_with(&["--keep", "0.5", "--val-fraction", "1.0"]), 2, "'--val-fraction <F>': 1.0 is out of range: must be a finite number in [0, 1)"),
        ("compress: --val-fraction=-0.5", ok_with(&["--keep", "0.5", "--val-fraction=-0.5"]), 2, "'--val-fraction <F>': -0.5 is out of range"),
        ("compress: --val-fraction nan", ok_with(&["--keep", "0.5", "--val-fraction", "nan"]), 2, "'--val-fraction <F>': nan is out of range"),
        ("compress: --ridge=-1", ok_with(&["--keep", "0.5", "--ridge=-1"]), 2, "'--ridge <R,...>': -1 is out of range: must be a finite number in [0, inf)"),
        ("compress: --ridge nan", ok_with(&["--keep", "0.5", "--ridge", "nan"]), 2, "'--ridge <R,...>': nan is out of range"),
        ("compress: --ridge with an inf in the list", ok_with(&["--keep", "0.5", "--ridge", "1e-3,inf"]), 2, "'--ridge <R,...>': inf is out of range"),
        ("compress: --whitening-ridge=-5", ok_with(&["--keep", "0.5", "--whitening-ridge=-5"]), 2, "'--whitening-ridge <R,...>': -5 is out of range"),
        ("compress: --whitening-ridge nan", ok_with(&["--keep", "0.5", "--whitening-ridge", "0,nan"]), 2, "'--whitening-ridge <R,...>': nan is out of range"),
        ("compress: --prefix-token-weight=-1", ok_with(&["--keep", "0.5", "--prefix-token-weight=-1"]), 2, "'--prefix-token-weight <W>': -1 is out of range: must be a finite number in [1, 1000000]"),
        ("compress: --prefix-token-weight nan", ok_with(&["--keep", "0.5", "--prefix-token-weight", "nan"]), 2, "'--prefix-token-weight <W>': nan is out of range"),
        ("compress: --prefix-token-weight 0.5 (below one patch token)", ok_with(&["--keep", "0.5", "--prefix-token-weight", "0.5"]), 2, "'--prefix-token-weight <W>': 0.5 is out of range"),
        ("compress: --crops-per-image 100000", ok_with(&["--keep", "0.5", "--crops-per-image", "100000"]), 2, "'--crops-per-image <K>': 100000 is out of range: must be in 0..=256"),
        ("compress: --sensitivity-images 0", bare(&["--sensitivity-images", "0"]), 2, "'--sensitivity-images <N>': 0 is out of range: must be at least 1"),
        ("compress: --batch 0", ok_with(&["--keep", "0.5", "--batch", "0"]), 2, "'--batch <N>': 0 is out of range: must be in 1..=4096"),
        ("compress: --threads 100000", bare(&["--threads", "100000"]), 2, "'--threads <N>': 100000 is out of range: must be in 0..=64"),
        // compress: the calibration tensor is sized before it is allocated (6 × 256 × 3×4096×4096 f32)
        ("compress: calibration tensor above 16 GiB", ok_with(&["--keep", "0.5", "--image-size", "4096", "--crops-per-image", "256"]), 1, "1536 samples of 3×4096×4096 floats would take 288.0 GiB in memory, above the 16.0 GiB limit"),
        ("compress: --report with another extension", ok_with(&["--keep", "0.5", "--report", &p("out/r.pdf")]), 2, "--report"),
        // eval
        ("eval: pixel_values with 1 channel", owned(&["eval", "--model", &model, "--data", &p("pv_c1.safetensors")]), 1, "1×32×32"),
        ("eval: pixel_values of the wrong size", owned(&["eval", "--model", &model, "--data", &p("pv_24.safetensors")]), 1, "3×24×24"),
        ("eval: empty folder", owned(&["eval", "--model", &model, "--data", &p("empty")]), 1, no_images.as_str()),
        ("eval: folder of non-image files", owned(&["eval", "--model", &model, "--data", &p("txt_only")]), 1, "(3 other files skipped)"),
        ("eval: truncated PNG", owned(&["eval", "--model", &model, "--data", &p("truncated")]), 1, "cut.png"),
        ("eval: garbage named .jpg", owned(&["eval", "--model", &model, "--data", &p("garbage")]), 1, "noise.jpg"),
        ("eval: missing model", owned(&["eval", "--model", &missing_model, "--data", &p("pv_ok.safetensors")]), 1, "no-such-model"),
        ("eval: missing data", owned(&["eval", "--model", &model, "--data", &p("no-such-data")]), 1, "no-such-data"),
        ("eval: --limit 0", owned(&["eval", "--model", &model, "--data", &calib_ok, "--limit", "0"]), 2, "'--limit <N>': 0 is out of range: must be at least 1"),
        ("eval: label 99 for a 10-class model", eval(&p("labels_99.safetensors"), &[]), 1, "label 99 of sample 2 is not a class of the model (it has 10 classes, labels 0..=9)"),
        ("eval: NaN pixel_values", eval(&p("pv_nan.safetensors"), &[]), 1, "sample 0 holds a non-finite pixel value (NaN)"),
        ("eval: --batch 0", eval(&pv_ok, &["--batch", "0"]), 2, "'--batch <N>': 0 is out of range"),
        ("eval: --threads 65", owned(&["eval", "--model", &model, "--data", &pv_ok, "--threads", "65"]), 2, "'--threads <N>': 65 is out of range"),
        ("eval: reference with other outputs", owned(&["eval", "--model", &model, "--data", &p("pv_ok.safetensors"), "--reference", fixture("hf-dinov2-micro").to_str().unwrap()]), 1, "reference"),
        // run
        ("run: truncated PNG", owned(&["run", "--model", &model, &p("cut.png")]), 1, "cut.png"),
        ("run: garbage named .jpg", owned(&["run", "--model", &model, &p("noise.jpg")]), 1, "noise.jpg"),
        ("run: decompression-bomb PNG", owned(&["run", "--model", &model, &p("huge.png")]), 1, "huge.png"),
        ("run: zero-byte PNG", owned(&["run", "--model", &model, &p("zero.png")]), 1, "zero.png"),
        ("run: model dir that is no checkpoint", owned(&["run", "--model", &p("empty"), &p("calib_ok/0.png")]), 1, "empty"),
        ("run: a directory named .png", owned(&["run", "--model", &model, &dir_png]), 1, dir_not_image.as_str()),
        ("run: --threads 1000", owned(&["run", "--model", &model, "--threads", "1000", &p("calib_ok/0.png")]), 2, "'--threads <N>': 1000 is out of range"),
        // infer
        ("infer: integer pixel_values", owned(&["infer", "--model", &model, "--input", &p("pv_i64.safetensors"), "-o", &out_s]), 1, int_pv.as_str()),
        ("infer: 30×30 with patch 8", owned(&["infer", "--model", &model, "--input", &p("pv_30.safetensors"), "-o", &out_s]), 1, "`pixel_values` is 30×30: height and width must be multiples of the model's patch size 8"),
        ("infer: NaN pixel_values", owned(&["infer", "--model", &model, "--input", &p("pv_nan.safetensors"), "-o", &out_s]), 1, "image 0 holds a non-finite value (NaN)"),
        // bench and demo options
        ("bench: --min-time 1e300", owned(&["bench", "--model", &model, "--min-time", "1e300"]), 2, "'--min-time <SECONDS>': 1e300 is out of range: must be a finite number in [0, 3600]"),
        ("bench: --dram-gbps 0", owned(&["bench", "--model", &model, "--dram-gbps", "0"]), 2, "'--dram-gbps <GB/S>': 0 is out of range: must be a finite number in (0, 1000000]"),
        ("bench: --runs 0", owned(&["bench", "--model", &model, "--runs", "0"]), 2, "'--runs <N>': 0 is out of range"),
        ("bench: --threads 1,nan", owned(&["bench", "--model", &model, "--threads", "1,nan"]), 2, "'--threads <N,...>': `nan` is not a whole number"),
        ("demo: --calib-count 1", owned(&["demo", "--calib-count", "1", "--out", &p("out")]), 2, "'--calib-count <N>': 1 is out of range: must be at least 2"),
        ("demo: --bench-time inf", owned(&["demo", "--bench-time", "inf", "--out", &p("out")]), 2, "'--bench-time <SECONDS>': inf is out of range"),
        ("infer: input smaller than one patch", owned(&["infer", "--model", &model, "--input", &p("pv_tiny.safetensors"), "-o", &out_s]), 1, "patch"),
        ("infer: 4-channel pixel_values", owned(&["infer", "--model", &model, "--input", &p("pv_c4.safetensors"), "-o", &out_s]), 1, "channels"),
    ];
    for (what, args, code, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = factorvit(&args);
        assert_fails_cleanly(&o, *code, needle, &args);
        let left: Vec<String> = std::fs::read_dir(inputs.out_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "{what}: wrote {left:?}");
    }
    // The same compress arguments with good data succeed (the failures above are the inputs').
    let o = factorvit(&ok_with(&["--keep", "0.5", "-q"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    Model::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Channel and bit-depth conversions (converted, not rejected)
// ---------------------------------------------------------------------------------------------

/// Top-10 JSON of `factorvit run` per image (the image name removed).
fn run_json(model: &str, images: &[PathBuf]) -> Vec<serde_json::Value> {
    let mut args = vec!["run", "--model", model, "--json", "--top", "10", "--threads", "1"];
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    let o = factorvit(&args);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["top"].clone())
        .collect()
}

#[test]
fn image_conversions_are_documented_behaviour() {
    let tmp = TempDir::new("bad-inputs-convert");
    let (w, h) = (40u32, 36u32);
    let mut rng = Rng::new(9);
    let grey: Vec<u8> = (0..w * h).map(|_| rng.below(256) as u8).collect();
    let rgb: Vec<u8> = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
    let alpha: Vec<u8> = (0..w * h).map(|_| rng.below(256) as u8).collect();
    let path = |n: &str| tmp.join(n);
    let save =
        |name: &str, img: image::DynamicImage| img.save_with_format(path(name), image::ImageFormat::Png).unwrap();
    use image::{DynamicImage as D, ImageBuffer};
    save("grey.png", D::ImageLuma8(ImageBuffer::from_raw(w, h, grey.clone()).unwrap()));
    let grey3: Vec<u8> = grey.iter().flat_map(|&v| [v, v, v]).collect();
    save("grey-as-rgb.png", D::ImageRgb8(ImageBuffer::from_raw(w, h, grey3).unwrap()));
    let grey_alpha: Vec<u8> = grey.iter().zip(&alpha).flat_map(|(&v, &a)| [v, a]).collect();
    save("grey-alpha.png", D::ImageLumaA8(ImageBuffer::from_raw(w, h, grey_alpha).unwrap()));
    let grey16: Vec<u16> = grey.iter().map(|&v| u16::from(v) * 257).collect();
    save("grey16.png", D::ImageLuma16(ImageBuffer::from_raw(w, h, grey16).unwrap()));
    save("rgb.png", D::ImageRgb8(ImageBuffer::from_raw(w, h, rgb.clone()).unwrap()));
    let rgba: Vec<u8> = rgb.chunks_exact(3).zip(&alpha).flat_map(|(p, &a)| [p[0], p[1], p[2], a]).collect();
    save("rgba.png", D::ImageRgba8(ImageBuffer::from_raw(w, h, rgba).unwrap()));
    // 16-bit samples with a low byte that must not matter.
    let rgb16: Vec<u16> = rgb.iter().enumerate().map(|(i, &v)| u16::from(v) * 256 + (i % 256) as u16).collect();
    save("rgb16.png", D::ImageRgb16(ImageBuffer::from_raw(w, h, rgb16).unwrap()));
    let names = ["grey", "grey-as-rgb", "grey-alpha", "grey16", "rgb", "rgba", "rgb16"];
    let files: Vec<PathBuf> = names.iter().map(|n| path(&format!("{n}.png"))).collect();

    // A 3-channel model: grey is replicated, alpha dropped, 16 bits keep the high byte.
    let top = run_json(&micro(), &files);
    let of = |n: &str| &top[names.iter().position(|&x| x == n).unwrap()];
    for (a, b) in
        [("grey", "grey-as-rgb"), ("grey-alpha", "grey"), ("grey16", "grey"), ("rgba", "rgb"), ("rgb16", "rgb")]
    {
        assert_eq!(of(a), of(b), "3-channel model: {a} should classify exactly like {b}");
    }
    assert_ne!(of("grey"), of("rgb"));
    // The same holds for the tensors eval and compress load (all channels, every value).
    let pre = rgb32();
    let load = |n: &str| load_dataset(&path(&format!("{n}.png")), &pre, &LoadOptions::default()).unwrap().pixel_values;
    assert_eq!(load("grey"), load("grey-as-rgb"));
    assert_eq!(load("grey16"), load("grey"));
    assert_eq!(load("rgba"), load("rgb"));

    // A 1-channel model (the bundled Fashion-MNIST DeiT): RGB becomes grey by PIL's luma, which
    // maps a grey RGB pixel (v, v, v) to v; alpha is dropped.
    let fmnist = repo_root().join("models/fmnist-deit-tiny");
    if fmnist.is_dir() {
        let grey_files = [path("grey.png"), path("grey-as-rgb.png"), path("grey-alpha.png"), path("grey16.png")];
        let top = run_json(fmnist.to_str().unwrap(), &grey_files);
        assert!(top.iter().all(|t| t == &top[0]), "1-channel model: {top:?}");
    }

    // eval reads a class folder of mixed formats.
    let data = tmp.join("data");
    for (i, f) in files.iter().enumerate() {
        let class = data.join(if i % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&class).unwrap();
        std::fs::copy(f, class.join(f.file_name().unwrap())).unwrap();
    }
    let o = factorvit(&["eval", "--model", &micro(), "--data", data.to_str().unwrap(), "--json", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["n"], names.len());
}
