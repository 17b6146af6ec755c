//! timm's eval transform against the reference tensors of
//! `tests/fixtures/preprocess-imagenet` (timm 1.0.31 + torchvision 0.29.2 + Pillow 13.0.0,
//! `deit_tiny_patch16_224`: bicubic, crop_pct 0.9, ImageNet mean/std).

use std::path::{Path, PathBuf};

use factorvit::safetensors::{Container, DType};
use factorvit::{Interpolation, Preprocess};
use factorvit_compress::data::{load_dataset, LoadOptions};
use factorvit_compress::preprocess::{
    eval_geometry, eval_transform_u8, load_image, preprocess_rgb8, resize, ImageView,
};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/preprocess-imagenet")
}

fn deit_preprocess() -> Preprocess {
    Preprocess {
        input_size: [3, 224, 224],
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        interpolation: Interpolation::Bicubic,
        crop_pct: 0.9,
    }
}

struct Expected {
    resized_u8: (Vec<usize>, Vec<u8>),
    cropped_u8: (Vec<usize>, Vec<u8>),
    pixel_values: (Vec<usize>, Vec<f32>),
}

fn load_expected(name: &str) -> Expected {
    let bytes = std::fs::read(fixture_dir().join(format!("{name}.expected.safetensors"))).unwrap();
    let container = Container::parse(&bytes).unwrap();
    let u8_tensor = |key: &str| {
        let t = container.get(key).unwrap();
        assert_eq!(t.dtype, DType::U8);
        (t.shape.clone(), bytes[t.start..t.end].to_vec())
    };
    let t = container.get("pixel_values").unwrap();
    assert_eq!(t.dtype, DType::F32);
    let floats = bytes[t.start..t.end].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Expected {
        resized_u8: u8_tensor("resized_u8"),
        cropped_u8: u8_tensor("cropped_u8"),
        pixel_values: (t.shape.clone(), floats),
    }
}

fn count_mismatches(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len());
    let diffs = a.iter().zip(b).filter(|(x, y)| x != y);
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
    (diffs.count(), max)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn geometry_matches_the_readme() {
    let pre = deit_preprocess();
    for (w, h) in [(451, 300), (600, 400)] {
        let g = eval_geometry(w, h, &pre).unwrap();
        assert_eq!((g.resized_width, g.resized_height), (372, 248), "{w}x{h}");
        assert_eq!((g.crop_left, g.crop_top), (74, 12));
        assert_eq!((g.crop_width, g.crop_height), (224, 224));
        assert_eq!(g.interpolation, Interpolation::Bicubic);
    }
}

#[test]
fn photos_match_timm_bit_exactly() {
    let pre = deit_preprocess();
    for name in ["chelsea", "coffee"] {
        let img = load_image(&fixture_dir().join(format!("{name}.png"))).unwrap();
        let expected = load_expected(name);
        let view = ImageView::from_rgb(&img);
        let g = eval_geometry(view.width(), view.height(), &pre).unwrap();

        let resized = resize(view, g.resized_width, g.resized_height, g.interpolation).unwrap();
        assert_eq!(expected.resized_u8.0, [g.resized_height, g.resized_width, 3]);
        let (mismatches, max) = count_mismatches(resized.data(), &expected.resized_u8.1);
        println!("{name}: resized_u8 {mismatches} mismatching bytes (max diff {max})");
        assert_eq!(mismatches, 0, "{name}: resized_u8 differs from Pillow");

        let cropped = eval_transform_u8(view, &pre).unwrap();
        assert_eq!(expected.cropped_u8.0, [224, 224, 3]);
        let (mismatches, max) = count_mismatches(cropped.data(), &expected.cropped_u8.1);
        println!("{name}: cropped_u8 {mismatches} mismatching bytes (max diff {max})");
        assert_eq!(mismatches, 0, "{name}: cropped_u8 differs from timm");

        let pixels = preprocess_rgb8(&img, &pre).unwrap();
        assert_eq!(expected.pixel_values.0, [1, 3, 224, 224]);
        let err = max_abs(&pixels, &expected.pixel_values.1);
        println!("{name}: pixel_values max abs error {err:e}");
        assert!(err <= 1e-6, "{name}: pixel_values max abs error {err}");
    }
}

#[test]
fn flat_folder_of_the_photos_loads_the_same_tensors() {
    // The fixture folder itself is a flat image folder (the .safetensors and README files are
    // not images): chelsea.png then coffee.png, in name order.
    let pre = deit_preprocess();
    let dataset = load_dataset(&fixture_dir(), &pre, &LoadOptions::default()).unwrap();
    assert_eq!((dataset.n, dataset.c, dataset.h, dataset.w), (2, 3, 224, 224));
    assert!(dataset.labels.is_none());
    for (i, name) in ["chelsea", "coffee"].into_iter().enumerate() {
        let expected = load_expected(name);
        let err = max_abs(dataset.sample(i), &expected.pixel_values.1);
        assert!(err <= 1e-6, "{name}: {err}");
    }
}
