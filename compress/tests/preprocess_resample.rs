//! The Pillow-exact resampler: reference cases generated with Pillow 13
//! (`tests/fixtures/preprocess-pil`), and properties (identity, constants, closeness to a
//! plain floating-point implementation of the same antialiased filters).

use std::path::{Path, PathBuf};

use factorvit::safetensors::Container;
use factorvit::{Interpolation, Preprocess};
use factorvit_compress::data::Rng;
use factorvit_compress::preprocess::{
    convert_channels, crop, decode_image, eval_geometry, eval_transform_u8, flip_horizontal, luma, preprocess_image,
    resize, ImageU8, ImageView,
};

fn cases_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/preprocess-pil/cases.safetensors")
}

struct Cases {
    bytes: Vec<u8>,
    container: Container,
}

impl Cases {
    fn load() -> Cases {
        let bytes = std::fs::read(cases_path()).unwrap();
        let container = Container::parse(&bytes).unwrap();
        Cases { bytes, container }
    }

    fn tensor(&self, name: &str) -> (Vec<usize>, &[u8]) {
        let t = self.container.get(name).unwrap_or_else(|| panic!("missing {name}"));
        (t.shape.clone(), &self.bytes[t.start..t.end])
    }

    fn image(&self, name: &str) -> ImageU8 {
        let (shape, data) = self.tensor(name);
        ImageU8::new(shape[1], shape[0], shape[2], data.to_vec()).unwrap()
    }
}

fn filter(name: &str) -> Interpolation {
    match name {
        "bicubic" => Interpolation::Bicubic,
        "bilinear" => Interpolation::Bilinear,
        "nearest" => Interpolation::Nearest,
        other => panic!("unknown filter {other}"),
    }
}

#[test]
fn pillow_reference_cases_are_bit_exact() {
    let cases = Cases::load();
    let list: serde_json::Value = serde_json::from_str(cases.container.metadata("cases").unwrap()).unwrap();
    let list = list.as_array().unwrap();
    assert!(list.len() >= 40);
    let mut failures = Vec::new();
    for case in list {
        let name = case["name"].as_str().unwrap();
        let filt = filter(case["filter"].as_str().unwrap());
        let w = case["size"][0].as_u64().unwrap() as usize;
        let h = case["size"][1].as_u64().unwrap() as usize;
        let src = cases.image(&format!("{name}.src"));
        let expected = cases.image(&format!("{name}.out"));
        let got = resize(src.view(), w, h, filt).unwrap();
        assert_eq!(
            (got.width(), got.height(), got.channels()),
            (expected.width(), expected.height(), expected.channels())
        );
        let bad = got.data().iter().zip(expected.data()).filter(|(a, b)| a != b).count();
        if bad > 0 {
            failures.push(format!("{name}: {bad} bytes differ"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn luma_matches_pillow_convert_l() {
    let cases = Cases::load();
    let (shape, src) = cases.tensor("luma.src");
    let (_, expected) = cases.tensor("luma.out");
    assert_eq!(shape, [4096, 3]);
    for (px, &e) in src.chunks_exact(3).zip(expected) {
        assert_eq!(luma(px[0], px[1], px[2]), e, "{px:?}");
    }
    // Grey → RGB → L is the identity.
    for v in 0..=255u8 {
        assert_eq!(luma(v, v, v), v);
    }
}

#[test]
fn jpeg_decoding_is_close_to_pillow() {
    let cases = Cases::load();
    let (_, jpeg) = cases.tensor("jpeg.bytes");
    let expected = cases.image("jpeg.rgb");
    let got = decode_image(jpeg, Path::new("chelsea-crop.jpg")).unwrap();
    assert_eq!((got.width(), got.height(), got.channels()), (128, 96, 3));
    let diffs: Vec<u8> = got.data().iter().zip(expected.data()).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = diffs.iter().copied().max().unwrap();
    let differing = diffs.iter().filter(|&&d| d > 0).count();
    println!("JPEG decode vs Pillow/libjpeg-turbo: {differing} of {} bytes differ, max {max}", diffs.len());
    // Different IDCT / chroma upsampling implementations: small, bounded differences.
    assert!(max <= 8, "max JPEG difference {max}");
    assert!(differing * 4 <= diffs.len(), "{differing} differing bytes");
}

fn random_image(rng: &mut Rng, w: usize, h: usize, c: usize) -> ImageU8 {
    let data = (0..w * h * c).map(|_| rng.below(256) as u8).collect();
    ImageU8::new(w, h, c, data).unwrap()
}

const FILTERS: [Interpolation; 3] = [Interpolation::Bicubic, Interpolation::Bilinear, Interpolation::Nearest];

#[test]
fn same_size_is_the_identity() {
    let mut rng = Rng::new(1);
    for (w, h, c) in [(1, 1, 1), (5, 3, 3), (17, 29, 1), (8, 8, 4)] {
        let img = random_image(&mut rng, w, h, c);
        for f in FILTERS {
            assert_eq!(resize(img.view(), w, h, f).unwrap(), img);
        }
    }
}

#[test]
fn constant_images_stay_constant() {
    let sizes = [(1, 1), (2, 3), (7, 5), (31, 17), (64, 64), (100, 9)];
    for value in [0u8, 1, 77, 128, 254, 255] {
        for &(w, h) in &sizes {
            let img = ImageU8::new(w, h, 3, vec![value; w * h * 3]).unwrap();
            for &(ow, oh) in &sizes {
                for f in FILTERS {
                    let out = resize(img.view(), ow, oh, f).unwrap();
                    assert!(out.data().iter().all(|&v| v == value), "{value} {w}x{h}->{ow}x{oh} {f:?}");
                }
            }
        }
    }
}

/// Plain double-precision antialiased resampling (same filter definition, no fixed point, no
/// intermediate rounding; like Pillow, the intermediate is clamped to the pixel range): the
/// reference the Pillow-exact version must stay close to.
fn float_resize(img: &ImageU8, ow: usize, oh: usize, filt: Interpolation) -> Vec<f64> {
    fn kernel(filt: Interpolation, x: f64) -> f64 {
        let x = x.abs();
        match filt {
            Interpolation::Bilinear => (1.0 - x).max(0.0),
            Interpolation::Bicubic => {
                let a = -0.5;
                if x < 1.0 {
                    (a + 2.0) * x * x * x - (a + 3.0) * x * x + 1.0
                } else if x < 2.0 {
                    a * (x * x * x - 5.0 * x * x + 8.0 * x - 4.0)
                } else {
                    0.0
                }
            }
            Interpolation::Nearest => unreachable!(),
        }
    }
    fn weights(filt: Interpolation, n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
        let scale = n_in as f64 / n_out as f64;
        let fs = scale.max(1.0);
        let support = if filt == Interpolation::Bicubic { 2.0 } else { 1.0 } * fs;
        (0..n_out)
            .map(|o| {
                let center = (o as f64 + 0.5) * scale;
                let taps: Vec<(usize, f64)> = (0..n_in)
                    .map(|i| (i, kernel(filt, (i as f64 + 0.5 - center) / fs)))
                    .filter(|&(i, w)| w != 0.0 && (i as f64 + 0.5 - center).abs() < support + 0.5)
                    .collect();
                let total: f64 = taps.iter().map(|t| t.1).sum();
                taps.into_iter().map(|(i, w)| (i, w / total)).collect()
            })
            .collect()
    }
    let (w, h, c) = (img.width(), img.height(), img.channels());
    let wx = weights(filt, w, ow);
    let wy = weights(filt, h, oh);
    let mut tmp = vec![0f64; h * ow * c];
    for y in 0..h {
        for (x, taps) in wx.iter().enumerate() {
            for ch in 0..c {
                let v: f64 = taps.iter().map(|&(i, k)| k * f64::from(img.data()[(y * w + i) * c + ch])).sum();
                tmp[(y * ow + x) * c + ch] = v.clamp(0.0, 255.0);
            }
        }
    }
    let mut out = vec![0f64; oh * ow * c];
    for (y, taps) in wy.iter().enumerate() {
        for x in 0..ow * c {
            out[y * ow * c + x] = taps.iter().map(|&(i, k)| k * tmp[i * ow * c + x]).sum::<f64>().clamp(0.0, 255.0);
        }
    }
    out
}

#[test]
fn close_to_a_float_reference_when_shrinking_and_enlarging() {
    let mut rng = Rng::new(42);
    // Smooth content: the uint8 rounding of the intermediate pass is the only difference.
    let (w, h) = (45, 33);
    let data: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [(x * 5 + y) as u8, (y * 7) as u8, ((x * x + y * 3) % 256) as u8]))
        .collect();
    let smooth = ImageU8::new(w, h, 3, data).unwrap();
    let noise = random_image(&mut rng, 40, 30, 1);
    for img in [&smooth, &noise] {
        for (ow, oh) in [(20, 15), (11, 7), (90, 66), (64, 20), (3, 50)] {
            for f in [Interpolation::Bicubic, Interpolation::Bilinear] {
                let exact = resize(img.view(), ow, oh, f).unwrap();
                let reference = float_resize(img, ow, oh, f);
                let max =
                    exact.data().iter().zip(&reference).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max);
                // Two roundings (after each pass, the first amplified by the second pass's
                // absolute tap sum, ≤ 7/6 for bicubic) plus fixed-point taps.
                let bound = if f == Interpolation::Bicubic { 1.2 } else { 1.0 };
                assert!(max <= bound, "{ow}x{oh} {f:?}: max deviation {max}");
            }
        }
    }
}

#[test]
fn crop_pads_with_zeros_and_flip_mirrors() {
    let img = ImageU8::new(3, 2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
    let c = crop(img.view(), -1, 1, 4, 2).unwrap();
    assert_eq!(c.data(), &[0, 4, 5, 6, 0, 0, 0, 0]);
    assert_eq!(flip_horizontal(&img).data(), &[3, 2, 1, 6, 5, 4]);
}

fn pre(c: usize, size: [usize; 2], crop_pct: f32, interpolation: Interpolation) -> Preprocess {
    Preprocess { input_size: [c, size[0], size[1]], mean: vec![0.5; c], std: vec![0.25; c], interpolation, crop_pct }
}

#[test]
fn eval_geometry_follows_torchvision_and_timm() {
    // crop_pct 0.875: Resize(256); 500x375 → 341x256, left = round(58.5) = 58 (half to even).
    let g = eval_geometry(500, 375, &pre(3, [224, 224], 0.875, Interpolation::Bilinear)).unwrap();
    assert_eq!((g.resized_width, g.resized_height, g.crop_left, g.crop_top), (341, 256, 58, 16));
    // Portrait: the width is the short side.
    let g = eval_geometry(300, 451, &pre(3, [224, 224], 0.9, Interpolation::Bicubic)).unwrap();
    assert_eq!((g.resized_width, g.resized_height, g.crop_left, g.crop_top), (248, 372, 12, 74));
    // (L - H) / 2 = 2.5 rounds to 2, 3.5 rounds to 4.
    let g = eval_geometry(33, 28, &pre(1, [28, 28], 1.0, Interpolation::Bicubic)).unwrap();
    assert_eq!((g.resized_width, g.crop_left), (33, 2));
    let g = eval_geometry(35, 28, &pre(1, [28, 28], 1.0, Interpolation::Bicubic)).unwrap();
    assert_eq!((g.resized_width, g.crop_left), (35, 4));
    // Fashion-MNIST: 28x28, crop_pct 1 → untouched.
    let g = eval_geometry(28, 28, &pre(1, [28, 28], 1.0, Interpolation::Bicubic)).unwrap();
    assert_eq!((g.resized_width, g.resized_height, g.crop_left, g.crop_top), (28, 28, 0, 0));
    // crop_pct 0.95 at 384: floor(384 / 0.95) = 404 (the f32 crop_pct is read as 0.95).
    let g = eval_geometry(1000, 1000, &pre(3, [384, 384], 0.95, Interpolation::Bicubic)).unwrap();
    assert_eq!((g.resized_width, g.crop_left), (404, 10));
    // Non-square input: timm's ResizeKeepRatio (bilinear, round half to even).
    let g = eval_geometry(640, 480, &pre(3, [192, 256], 1.0, Interpolation::Bicubic)).unwrap();
    assert_eq!((g.resized_width, g.resized_height, g.interpolation), (256, 192, Interpolation::Bilinear));
}

#[test]
fn grey_models_convert_like_pil_convert_l() {
    let mut rng = Rng::new(5);
    let rgb = random_image(&mut rng, 40, 30, 3);
    let p = pre(1, [28, 28], 0.875, Interpolation::Bicubic);
    let via_transform = eval_transform_u8(rgb.view(), &p).unwrap();
    let grey = convert_channels(rgb.view(), 1).unwrap();
    let g = eval_geometry(40, 30, &p).unwrap();
    let resized = resize(grey.view(), g.resized_width, g.resized_height, g.interpolation).unwrap();
    let manual = crop(resized.view(), g.crop_left, g.crop_top, 28, 28).unwrap();
    assert_eq!(via_transform, manual);
    // A grey image given to an RGB model is replicated.
    let rgb_pre = pre(3, [28, 28], 1.0, Interpolation::Bilinear);
    let tensor = preprocess_image(grey.view(), &rgb_pre).unwrap();
    assert_eq!(tensor[..28 * 28], tensor[28 * 28..2 * 28 * 28]);
}

#[test]
fn invalid_inputs_are_errors_not_panics() {
    assert!(ImageView::new(0, 3, 3, &[]).is_err());
    assert!(ImageView::new(2, 2, 3, &[0; 11]).is_err());
    assert!(ImageView::new(2, 2, 5, &[0; 20]).is_err());
    let img = ImageU8::new(2, 2, 1, vec![0; 4]).unwrap();
    assert!(resize(img.view(), 0, 5, Interpolation::Bicubic).is_err());
    assert!(resize(img.view(), usize::MAX, 2, Interpolation::Bicubic).is_err());
    let bad = pre(2, [8, 8], 1.0, Interpolation::Bicubic);
    assert!(preprocess_image(img.view(), &bad).is_err());
    let mut bad = pre(3, [8, 8], 1.0, Interpolation::Bicubic);
    bad.std[1] = 0.0;
    assert!(preprocess_image(img.view(), &bad).is_err());
    // An extreme aspect ratio would need a gigantic resize: refused.
    let thin = ImageU8::new(1, 1 << 20, 1, vec![0; 1 << 20]).unwrap();
    assert!(eval_geometry(thin.width(), thin.height(), &pre(1, [224, 224], 0.875, Interpolation::Bicubic)).is_err());
    assert!(decode_image(b"not an image", Path::new("x.png")).is_err());
    let empty = image::RgbImage::new(0, 0);
    let view = ImageView::from_rgb(&empty);
    assert!(resize(view, 4, 4, Interpolation::Nearest).is_err());
    assert!(eval_transform_u8(view, &pre(3, [8, 8], 1.0, Interpolation::Bicubic)).is_err());
}
