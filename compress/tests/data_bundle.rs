//! The bundled Fashion-MNIST subsets under `data/` load, and match the idx source when the
//! Debian package `dataset-fashion-mnist` is installed.

use std::path::{Path, PathBuf};

use factorvit::safetensors::Container;
use factorvit::{Interpolation, Preprocess};
use factorvit_compress::data::idx::{read_idx_images, read_idx_labels};
use factorvit_compress::data::{load_dataset, LoadOptions, Split};

const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn fmnist_preprocess() -> Preprocess {
    Preprocess {
        input_size: [1, 28, 28],
        mean: vec![0.286],
        std: vec![0.353],
        interpolation: Interpolation::Bilinear,
        crop_pct: 1.0,
    }
}

const CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The `indices_json` metadata entry of a bundle file.
fn recorded_indices(path: &Path) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    let container = Container::parse(&bytes).unwrap();
    serde_json::from_str(container.metadata("indices_json").unwrap()).unwrap()
}

#[test]
fn bundle_loads() {
    let pre = fmnist_preprocess();
    for (name, n) in [("fmnist-calib.safetensors", 512), ("fmnist-test.safetensors", 1000)] {
        let ds = load_dataset(&data_dir().join(name), &pre, &LoadOptions::default()).unwrap();
        assert_eq!((ds.n, ds.c, ds.h, ds.w), (n, 1, 28, 28), "{name}");
        let labels = ds.labels.as_ref().unwrap();
        assert!(labels.iter().all(|&l| l < 10));
        // Every class is represented.
        assert!((0..10).all(|c| labels.contains(&c)), "{name}");
        let names: Vec<&str> = ds.class_names.as_ref().unwrap().iter().map(String::as_str).collect();
        assert_eq!(names, CLASSES);
        let lo = (0.0 - 0.286f32) / 0.353;
        let hi = (1.0 - 0.286f32) / 0.353;
        assert!(ds.pixel_values.iter().all(|&v| (lo..=hi).contains(&v)));
        assert_eq!(recorded_indices(&data_dir().join(name)).len(), n);
    }
}

#[test]
fn bundle_matches_the_idx_source() {
    let dir = Path::new(DEBIAN_DIR);
    if !dir.join("t10k-labels-idx1-ubyte.gz").is_file() {
        println!("NOTICE: {DEBIAN_DIR} not found (Debian package dataset-fashion-mnist); skipping the comparison");
        return;
    }
    let pre = fmnist_preprocess();
    // Test bundle = the first 1000 t10k images.
    let bundle = load_dataset(&data_dir().join("fmnist-test.safetensors"), &pre, &LoadOptions::default()).unwrap();
    let opts = LoadOptions { split: Split::Test, limit: Some(1000), ..LoadOptions::default() };
    let source = load_dataset(dir, &pre, &opts).unwrap();
    assert_eq!(bundle.labels, source.labels);
    assert_eq!(bundle.pixel_values, source.pixel_values);
    let t10k_labels = read_idx_labels(&dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!(&bundle.labels.as_ref().unwrap()[..20], &t10k_labels[..20]);

    // Calibration bundle = the train images at the recorded indices.
    let calib_path = data_dir().join("fmnist-calib.safetensors");
    let calib = load_dataset(&calib_path, &pre, &LoadOptions::default()).unwrap();
    let indices = recorded_indices(&calib_path);
    let (_, h, w, images) = read_idx_images(&dir.join("train-images-idx3-ubyte.gz")).unwrap();
    let labels = read_idx_labels(&dir.join("train-labels-idx1-ubyte.gz")).unwrap();
    let calib_labels = calib.labels.as_ref().unwrap();
    for (k, &i) in indices.iter().enumerate() {
        assert_eq!(calib_labels[k], labels[i], "sample {k} (train index {i})");
        let pixels = &images.data()[i * h * w..(i + 1) * h * w];
        let expected: Vec<f32> = pixels.iter().map(|&v| (f32::from(v) / 255.0 - 0.286) / 0.353).collect();
        assert_eq!(calib.sample(k), expected.as_slice(), "sample {k}");
    }
}
