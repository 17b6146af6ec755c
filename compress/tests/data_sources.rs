//! Safetensors datasets, seeded subsets and crop augmentation.

use std::path::{Path, PathBuf};

use factorvit::{Interpolation, Preprocess};
use factorvit_compress::data::{load_dataset, select_indices, DataError, LoadOptions, Rng};
use factorvit_compress::preprocess::{
    augmented_crop, eval_transform_u8, normalize_into, sample_crop_box, CropAugment, ImageU8, ImageView,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("factorvit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal safetensors writer: (name, dtype, shape, little-endian bytes).
fn safetensors(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> =
            metadata.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
        header.insert("__metadata__".into(), meta.into());
    }
    let mut offset = 0;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    out
}

fn grey_preprocess(size: usize, crop_pct: f32) -> Preprocess {
    Preprocess {
        input_size: [1, size, size],
        mean: vec![0.286],
        std: vec![0.353],
        interpolation: Interpolation::Bilinear,
        crop_pct,
    }
}

fn ramp_images(n: usize, h: usize, w: usize) -> Vec<u8> {
    (0..n * h * w).map(|i| ((i * 31 + i / (h * w) * 7) % 256) as u8).collect()
}

#[test]
fn pixel_values_are_used_as_is() {
    let dir = TempDir::new("st-pixel-values");
    let values: Vec<f32> = (0..3 * 2 * 4 * 4).map(|i| i as f32 * 0.01 - 0.3).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels: Vec<u8> = [5i64, 0, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = dir.0.join("pv.safetensors");
    std::fs::write(
        &path,
        safetensors(
            &[("pixel_values", "F32", vec![3, 2, 4, 4], bytes.clone()), ("labels", "I64", vec![3], labels)],
            &[("class_names", r#"["a","b","c","d","e","f"]"#)],
        ),
    )
    .unwrap();
    let pre = Preprocess {
        input_size: [2, 4, 4],
        mean: vec![0.5; 2],
        std: vec![0.5; 2],
        interpolation: Interpolation::Bicubic,
        crop_pct: 0.875,
    };
    let ds = load_dataset(&path, &pre, &LoadOptions::default()).unwrap();
    assert_eq!(ds.pixel_values, values);
    assert_eq!(ds.labels.as_deref(), Some(&[5, 0, 2][..]));
    assert_eq!(ds.class_names.as_ref().map(Vec::len), Some(6));
    assert_eq!(ds.groups, None, "no image_index, no photo groups");

    let opts = LoadOptions { limit: Some(2), random_subset: true, seed: 3, ..LoadOptions::default() };
    let sub = load_dataset(&path, &pre, &opts).unwrap();
    assert_eq!(sub.n, 2);
    let picked = select_indices(3, &opts, &path).unwrap();
    for (k, &i) in picked.iter().enumerate() {
        assert_eq!(sub.sample(k), ds.sample(i));
    }

    // Shape that does not fit the model.
    let other = Preprocess { input_size: [2, 8, 8], ..pre.clone() };
    assert!(matches!(load_dataset(&path, &other, &LoadOptions::default()), Err(DataError::InputMismatch { .. })));
    // Crops need raw pixels.
    let crops = LoadOptions { crops_per_image: 2, ..LoadOptions::default() };
    assert!(matches!(load_dataset(&path, &pre, &crops), Err(DataError::Options(_))));
}

#[test]
fn raw_images_are_normalised_and_resized_when_needed() {
    let dir = TempDir::new("st-images");
    let (n, h, w) = (4, 28, 28);
    let images = ramp_images(n, h, w);
    let labels: Vec<u8> = vec![3, 1, 4, 1];
    let path = dir.0.join("img.safetensors");
    std::fs::write(
        &path,
        safetensors(&[("images", "U8", vec![n, h, w], images.clone()), ("labels", "U8", vec![n], labels.clone())], &[]),
    )
    .unwrap();
    // Same size as the model: used as is (even with crop_pct < 1).
    let ds = load_dataset(&path, &grey_preprocess(28, 0.875), &LoadOptions::default()).unwrap();
    assert_eq!(ds.labels.as_deref(), Some(&[3, 1, 4, 1][..]));
    for (x, &v) in ds.pixel_values.iter().zip(&images) {
        assert_eq!(*x, (f32::from(v) / 255.0 - 0.286) / 0.353);
    }
    // Different size: the model's eval transform.
    let pre = grey_preprocess(20, 0.875);
    let ds = load_dataset(&path, &pre, &LoadOptions::default()).unwrap();
    assert_eq!((ds.n, ds.h, ds.w), (4, 20, 20));
    let first = ImageView::new(w, h, 1, &images[..h * w]).unwrap();
    let mut expected = vec![0f32; 400];
    normalize_into(eval_transform_u8(first, &pre).unwrap().view(), &pre, &mut expected).unwrap();
    assert_eq!(ds.sample(0), expected.as_slice());

    // RGB images [N, H, W, 3] for an RGB model.
    let rgb = ramp_images(2, 28, 28 * 3);
    let rgb_path = dir.0.join("rgb.safetensors");
    std::fs::write(&rgb_path, safetensors(&[("images", "U8", vec![2, 28, 28, 3], rgb.clone())], &[])).unwrap();
    let rgb_pre = Preprocess {
        input_size: [3, 28, 28],
        mean: vec![0.1, 0.2, 0.3],
        std: vec![0.5, 0.6, 0.7],
        interpolation: Interpolation::Bicubic,
        crop_pct: 1.0,
    };
    let ds = load_dataset(&rgb_path, &rgb_pre, &LoadOptions::default()).unwrap();
    assert!(ds.labels.is_none());
    // Channel 1 of pixel (0, 1) of image 1.
    let v = rgb[28 * 28 * 3 + 3 + 1];
    assert_eq!(ds.sample(1)[28 * 28 + 1], (f32::from(v) / 255.0 - 0.2) / 0.6);
}

#[test]
fn image_index_gives_the_photo_of_every_sample() {
    let dir = TempDir::new("st-photos");
    let values: Vec<f32> = (0..4 * 2 * 4 * 4).map(|i| i as f32 * 0.01).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let photos: Vec<u8> = [7i64, 7, 2, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = dir.0.join("pv.safetensors");
    std::fs::write(
        &path,
        safetensors(&[("pixel_values", "F32", vec![4, 2, 4, 4], bytes), ("image_index", "I64", vec![4], photos)], &[]),
    )
    .unwrap();
    let pre = Preprocess {
        input_size: [2, 4, 4],
        mean: vec![0.5; 2],
        std: vec![0.5; 2],
        interpolation: Interpolation::Bicubic,
        crop_pct: 0.875,
    };
    let ds = load_dataset(&path, &pre, &LoadOptions::default()).unwrap();
    assert_eq!(ds.groups.as_deref(), Some(&[7, 7, 2, 9][..]));
    // A subset keeps the photos of the samples it picks.
    let opts = LoadOptions { limit: Some(2), random_subset: true, seed: 5, ..LoadOptions::default() };
    let sub = load_dataset(&path, &pre, &opts).unwrap();
    let picked = select_indices(4, &opts, &path).unwrap();
    let expected: Vec<u32> = picked.iter().map(|&i| [7, 7, 2, 9][i]).collect();
    assert_eq!(sub.groups, Some(expected));

    // Raw images with a photo index, cropped: every crop keeps its image's photo.
    let img = ramp_images(3, 32, 32);
    let raw = dir.0.join("raw.safetensors");
    std::fs::write(
        &raw,
        safetensors(&[("images", "U8", vec![3, 32, 32], img), ("image_index", "U8", vec![3], vec![4, 4, 1])], &[]),
    )
    .unwrap();
    let crops = LoadOptions { crops_per_image: 2, ..LoadOptions::default() };
    let ds = load_dataset(&raw, &grey_preprocess(28, 1.0), &crops).unwrap();
    assert_eq!(ds.groups.as_deref(), Some(&[4, 4, 4, 4, 1, 1][..]));
}

#[test]
fn malformed_safetensors_datasets_are_typed_errors() {
    let dir = TempDir::new("st-bad");
    let pre = grey_preprocess(28, 1.0);
    let write = |name: &str, bytes: Vec<u8>| {
        let p = dir.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let img = ramp_images(2, 28, 28);
    type Check = fn(&DataError) -> bool;
    let cases: Vec<(PathBuf, Check)> = vec![
        (write("empty.safetensors", Vec::new()), |e| matches!(e, DataError::Safetensors { .. })),
        (write("garbage.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7fxx".to_vec()), |e| {
            matches!(e, DataError::Safetensors { .. })
        }),
        (write("nothing.safetensors", safetensors(&[("other", "U8", vec![1], vec![0])], &[])), |e| {
            matches!(e, DataError::Safetensors { .. })
        }),
        (write("f32img.safetensors", safetensors(&[("images", "F32", vec![1, 1, 1], vec![0; 4])], &[])), |e| {
            matches!(e, DataError::Safetensors { .. })
        }),
        (
            write(
                "count.safetensors",
                safetensors(
                    &[("images", "U8", vec![2, 28, 28], img.clone()), ("labels", "U8", vec![3], vec![0; 3])],
                    &[],
                ),
            ),
            |e| matches!(e, DataError::Labels { .. }),
        ),
        (
            write(
                "negative.safetensors",
                safetensors(
                    &[
                        ("images", "U8", vec![2, 28, 28], img.clone()),
                        ("labels", "I32", vec![2], [1i32, -1].iter().flat_map(|v| v.to_le_bytes()).collect()),
                    ],
                    &[],
                ),
            ),
            |e| matches!(e, DataError::Labels { .. }),
        ),
        (
            write(
                "floatlabels.safetensors",
                safetensors(
                    &[("images", "U8", vec![2, 28, 28], img.clone()), ("labels", "F32", vec![2], vec![0; 8])],
                    &[],
                ),
            ),
            |e| matches!(e, DataError::Labels { .. }),
        ),
        (
            write(
                "photocount.safetensors",
                safetensors(
                    &[("images", "U8", vec![2, 28, 28], img.clone()), ("image_index", "U8", vec![3], vec![0; 3])],
                    &[],
                ),
            ),
            |e| matches!(e, DataError::Safetensors { .. }),
        ),
        (
            write(
                "photonegative.safetensors",
                safetensors(
                    &[
                        ("images", "U8", vec![2, 28, 28], img.clone()),
                        ("image_index", "I16", vec![2], [0i16, -3].iter().flat_map(|v| v.to_le_bytes()).collect()),
                    ],
                    &[],
                ),
            ),
            |e| matches!(e, DataError::Safetensors { .. }),
        ),
        (
            write(
                "photofloat.safetensors",
                safetensors(
                    &[("images", "U8", vec![2, 28, 28], img.clone()), ("image_index", "F32", vec![2], vec![0; 8])],
                    &[],
                ),
            ),
            |e| matches!(e, DataError::Safetensors { .. }),
        ),
        (
            write(
                "names.safetensors",
                safetensors(&[("images", "U8", vec![2, 28, 28], img.clone())], &[("class_names", "[1, 2]")]),
            ),
            |e| matches!(e, DataError::Safetensors { .. }),
        ),
        (
            write(
                "labelrange.safetensors",
                safetensors(
                    &[("images", "U8", vec![2, 28, 28], img.clone()), ("labels", "U8", vec![2], vec![0, 2])],
                    &[("class_names", r#"["x","y"]"#)],
                ),
            ),
            |e| matches!(e, DataError::Labels { .. }),
        ),
    ];
    for (path, check) in cases {
        let err = load_dataset(&path, &pre, &LoadOptions::default()).unwrap_err();
        assert!(check(&err), "{}: {err:?}", path.display());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.to_string().contains(&name), "{err}");
    }
    let missing = dir.0.join("missing.safetensors");
    assert!(matches!(load_dataset(&missing, &pre, &LoadOptions::default()), Err(DataError::Io { .. })));
    let unknown = write("notes.txt", b"hello".to_vec());
    assert!(matches!(load_dataset(&unknown, &pre, &LoadOptions::default()), Err(DataError::UnknownSource { .. })));
}

#[test]
fn seeded_subsets_are_deterministic() {
    let path = Path::new("subset-test");
    let opts = |seed, limit| LoadOptions { limit: Some(limit), random_subset: true, seed, ..LoadOptions::default() };
    let a = select_indices(1000, &opts(7, 50), path).unwrap();
    assert_eq!(a, select_indices(1000, &opts(7, 50), path).unwrap());
    assert_ne!(a, select_indices(1000, &opts(8, 50), path).unwrap());
    assert_eq!(a.len(), 50);
    assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    assert!(a.iter().all(|&i| i < 1000));
    // Not just the first ones.
    assert!(*a.last().unwrap() > 100);
    // Without random_subset: the first `limit`; a limit above the total keeps everything.
    let first = LoadOptions { limit: Some(3), ..LoadOptions::default() };
    assert_eq!(select_indices(10, &first, path).unwrap(), [0, 1, 2]);
    assert_eq!(select_indices(5, &opts(1, 50), path).unwrap(), [0, 1, 2, 3, 4]);
    assert!(matches!(select_indices(5, &opts(1, 0), path), Err(DataError::Options(_))));
    assert!(matches!(select_indices(0, &LoadOptions::default(), path), Err(DataError::Empty { .. })));
}

#[test]
fn crops_stay_inside_and_are_reproducible() {
    let aug = CropAugment::default();
    let mut rng = Rng::new(11);
    for _ in 0..2000 {
        let w = 1 + rng.below(300) as usize;
        let h = 1 + rng.below(300) as usize;
        let b = sample_crop_box(w, h, &aug, &mut rng);
        assert!(b.width >= 1 && b.height >= 1, "{b:?}");
        assert!(b.left + b.width <= w && b.top + b.height <= h, "{b:?} in {w}x{h}");
    }
    // Extreme aspect ratios use the fallback and still fit.
    let b = sample_crop_box(1000, 2, &aug, &mut Rng::new(1));
    assert!(b.left + b.width <= 1000 && b.height <= 2);

    let data: Vec<u8> = (0..60 * 40 * 3).map(|i| (i % 253) as u8).collect();
    let img = ImageU8::new(60, 40, 3, data).unwrap();
    let pre = Preprocess {
        input_size: [3, 24, 24],
        mean: vec![0.5; 3],
        std: vec![0.5; 3],
        interpolation: Interpolation::Bicubic,
        crop_pct: 0.875,
    };
    let a = augmented_crop(img.view(), &pre, &aug, &mut Rng::new(5)).unwrap();
    let b = augmented_crop(img.view(), &pre, &aug, &mut Rng::new(5)).unwrap();
    assert_eq!(a, b);
    assert_eq!((a.width(), a.height(), a.channels()), (24, 24, 3));
    let bad = CropAugment { scale: [0.0, 1.0], ..aug };
    assert!(augmented_crop(img.view(), &pre, &bad, &mut Rng::new(5)).is_err());
}

#[test]
fn crop_augmented_datasets_multiply_samples_deterministically() {
    let dir = TempDir::new("st-crops");
    let (n, h, w) = (5, 32, 32);
    let path = dir.0.join("img.safetensors");
    let labels = vec![0u8, 1, 2, 3, 4];
    std::fs::write(
        &path,
        safetensors(&[("images", "U8", vec![n, h, w], ramp_images(n, h, w)), ("labels", "U8", vec![n], labels)], &[]),
    )
    .unwrap();
    let pre = grey_preprocess(28, 1.0);
    let opts = LoadOptions { crops_per_image: 3, seed: 9, ..LoadOptions::default() };
    let a = load_dataset(&path, &pre, &opts).unwrap();
    assert_eq!(a.n, 15);
    assert_eq!(a.labels.as_deref(), Some(&[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4][..]));
    assert_eq!(a.groups.as_deref(), Some(&[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4][..]), "crops of one image");
    let b = load_dataset(&path, &pre, &opts).unwrap();
    assert_eq!(a, b, "same seed, same crops");
    assert_ne!(a.sample(0), a.sample(1), "crops of one image differ");
    let c = load_dataset(&path, &pre, &LoadOptions { seed: 10, ..opts.clone() }).unwrap();
    assert_ne!(a.pixel_values, c.pixel_values);
    // A subset keeps each image's crops (streams are keyed by source index).
    let sub = LoadOptions { limit: Some(2), random_subset: true, ..opts.clone() };
    let picked = select_indices(n, &sub, &path).unwrap();
    let s = load_dataset(&path, &pre, &sub).unwrap();
    for (k, &i) in picked.iter().enumerate() {
        for j in 0..3 {
            assert_eq!(s.sample(k * 3 + j), a.sample(i * 3 + j));
        }
    }
}
