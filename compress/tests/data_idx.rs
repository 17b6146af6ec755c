//! The idx reader (MNIST / Fashion-MNIST): round trips, gzip, and typed errors on corrupt
//! files.

use std::io::Write;
use std::path::{Path, PathBuf};

use factorvit::{Interpolation, Preprocess};
use factorvit_compress::data::idx::{encode_idx_u8, read_idx_images, IDX_U8};
use factorvit_compress::data::{load_dataset, DataError, IdxArray, IdxProblem, LoadOptions, Split};

/// A fresh directory under the system temp dir, removed on drop.
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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
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

fn problem(bytes: Vec<u8>) -> IdxProblem {
    IdxArray::parse(bytes).expect_err("corrupt idx must not parse")
}

#[test]
fn round_trip() {
    let data: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 7) as u8).collect();
    let bytes = encode_idx_u8(&[2, 3, 4], &data).unwrap();
    assert_eq!(&bytes[..4], &[0, 0, 0x08, 3]);
    let array = IdxArray::parse(bytes).unwrap();
    assert_eq!(array.type_code(), IDX_U8);
    assert_eq!(array.dims(), &[2, 3, 4]);
    assert_eq!(array.data(), data.as_slice());
    // Rank 0 (a scalar) and an empty dimension are valid idx.
    assert_eq!(IdxArray::parse(encode_idx_u8(&[], &[9]).unwrap()).unwrap().data(), &[9]);
    assert_eq!(IdxArray::parse(encode_idx_u8(&[0, 28, 28], &[]).unwrap()).unwrap().dims(), &[0, 28, 28]);
    assert!(encode_idx_u8(&[2, 2], &[0; 3]).is_none());
}

#[test]
fn corrupt_files_give_typed_errors() {
    let good = encode_idx_u8(&[2, 3, 4], &[1; 24]).unwrap();
    assert_eq!(problem(vec![0, 0]), IdxProblem::TooShort { len: 2 });
    assert_eq!(problem(vec![0x1f, 0x8b, 8, 0, 1, 2]), IdxProblem::BadMagic { found: [0x1f, 0x8b, 8, 0] });
    assert_eq!(problem(vec![0, 0, 0x07, 1, 0, 0, 0, 0]), IdxProblem::UnknownType { code: 0x07 });
    // Header cut inside the dimensions.
    assert_eq!(problem(good[..9].to_vec()), IdxProblem::Truncated { needed: 16, available: 9 });
    // Data cut short.
    assert_eq!(problem(good[..30].to_vec()), IdxProblem::Truncated { needed: 40, available: 30 });
    // Extra bytes.
    let mut long = good.clone();
    long.extend_from_slice(&[0, 0, 0]);
    assert_eq!(problem(long), IdxProblem::TrailingBytes { extra: 3 });
    // Dimensions whose product overflows 64 bits.
    let mut huge = vec![0, 0, 0x08, 3];
    for _ in 0..3 {
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    assert!(matches!(problem(huge), IdxProblem::SizeOverflow { .. }));
    // A product that fits but announces far more data than present.
    let mut big = vec![0, 0, 0x08, 2];
    big.extend_from_slice(&u32::MAX.to_be_bytes());
    big.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(problem(big.clone()), IdxProblem::Truncated { .. }));
    // The same dimensions with 8-byte elements overflow.
    big[2] = 0x0E;
    assert!(matches!(problem(big), IdxProblem::SizeOverflow { .. }));
}

#[test]
fn file_errors_name_the_file() {
    let dir = TempDir::new("idx-errors");
    let path = dir.0.join("t10k-images-idx3-ubyte");
    let mut bytes = encode_idx_u8(&[2, 28, 28], &[0; 2 * 784]).unwrap();
    bytes.truncate(100);
    std::fs::write(&path, &bytes).unwrap();
    let err = read_idx_images(&path).unwrap_err();
    assert!(matches!(&err, DataError::Idx { problem: IdxProblem::Truncated { .. }, .. }), "{err:?}");
    assert!(err.to_string().contains("t10k-images-idx3-ubyte"), "{err}");

    // Wrong rank for images.
    std::fs::write(&path, encode_idx_u8(&[4], &[0; 4]).unwrap()).unwrap();
    let err = read_idx_images(&path).unwrap_err();
    assert!(matches!(err, DataError::Idx { problem: IdxProblem::WrongRank { found: 1, expected: 3 }, .. }));

    // Corrupt gzip stream: truncated.
    let gz = gzip(&encode_idx_u8(&[2, 28, 28], &[3; 2 * 784]).unwrap());
    let gz_path = dir.0.join("train-images-idx3-ubyte.gz");
    std::fs::write(&gz_path, &gz[..gz.len() / 2]).unwrap();
    let err = read_idx_images(&gz_path).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    assert!(err.to_string().contains("train-images-idx3-ubyte.gz"));
}

fn write_split(dir: &Path, prefix: &str, images: &[u8], labels: &[u8], gz: bool) {
    let n = labels.len();
    let img = encode_idx_u8(&[n, 28, 28], images).unwrap();
    let lab = encode_idx_u8(&[n], labels).unwrap();
    let (img, lab, ext) = if gz { (gzip(&img), gzip(&lab), ".gz") } else { (img, lab, "") };
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), img).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), lab).unwrap();
}

#[test]
fn idx_folder_loads_both_splits() {
    let dir = TempDir::new("idx-folder");
    let train: Vec<u8> = (0..3 * 784).map(|i| (i % 251) as u8).collect();
    let test: Vec<u8> = (0..2 * 784).map(|i| (255 - i % 256) as u8).collect();
    write_split(&dir.0, "train", &train, &[4, 0, 9], true);
    write_split(&dir.0, "t10k", &test, &[1, 2], false);
    let pre = fmnist_preprocess();

    let mut opts = LoadOptions { split: Split::Train, ..LoadOptions::default() };
    let ds = load_dataset(&dir.0, &pre, &opts).unwrap();
    assert_eq!((ds.n, ds.c, ds.h, ds.w), (3, 1, 28, 28));
    assert_eq!(ds.labels.as_deref(), Some(&[4, 0, 9][..]));
    for (x, &v) in ds.pixel_values.iter().zip(&train) {
        // ToTensor + Normalize in f32, exactly.
        assert_eq!(*x, (f32::from(v) / 255.0 - 0.286) / 0.353);
    }

    opts.split = Split::Test;
    let ds = load_dataset(&dir.0, &pre, &opts).unwrap();
    assert_eq!(ds.labels.as_deref(), Some(&[1, 2][..]));
    assert_eq!(ds.pixel_values[0], (255.0 / 255.0 - 0.286f32) / 0.353);

    // An images file directly: labels from the sibling file.
    let ds = load_dataset(&dir.0.join("train-images-idx3-ubyte.gz"), &pre, &opts).unwrap();
    assert_eq!(ds.n, 3);
    assert_eq!(ds.labels.as_deref(), Some(&[4, 0, 9][..]));

    // Label count mismatch.
    std::fs::write(dir.0.join("t10k-labels-idx1-ubyte"), encode_idx_u8(&[3], &[0, 1, 2]).unwrap()).unwrap();
    let err = load_dataset(&dir.0, &pre, &opts).unwrap_err();
    assert!(matches!(err, DataError::Labels { .. }), "{err:?}");
}
