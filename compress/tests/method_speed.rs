//! Compressor wall time on a DeiT-Base-shaped model with random weights (224×224 inputs,
//! 64 calibration images, keep 0.4, the full method). Ignored by default (minutes of CPU):
//!
//! `cargo test --release -p factorvit-compress --test method_speed -- --ignored --nocapture`
//!
//! Environment: `FACTORVIT_SPEED_IMAGES` (default 64), `FACTORVIT_SPEED_MODEL` (`base` or
//! `small`, default `base`), `FACTORVIT_SPEED_DEPTH` (blocks, default the model's: fewer blocks
//! give a quick profile of the same per-layer work).

use std::time::Instant;

use factorvit::Model;
use factorvit_compress::method::pipeline::{compress_model, Calibration, PipelineOptions};
use factorvit_compress::method::synthetic::{random_images, random_vit_spec, SyntheticVit};
use factorvit_compress::writer;

#[test]
#[ignore = "minutes of CPU; run explicitly to measure the compressor's speed"]
fn deit_base_compression_wall_time() {
    let images: usize = std::env::var("FACTORVIT_SPEED_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let geometry = match std::env::var("FACTORVIT_SPEED_MODEL").as_deref() {
        Ok("small") => SyntheticVit { dim: 384, heads: 6, mlp: 1536, ..SyntheticVit::deit_base() },
        _ => SyntheticVit::deit_base(),
    };
    let geometry = match std::env::var("FACTORVIT_SPEED_DEPTH").ok().and_then(|v| v.parse().ok()) {
        Some(depth) => SyntheticVit { depth, ..geometry },
        None => geometry,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    faer::set_global_parallelism(if threads > 1 { faer::Par::rayon(threads) } else { faer::Par::Seq });
    let spec = random_vit_spec(&geometry, 1).unwrap();
    let model = Model::from_vec(writer::to_bytes(&spec).unwrap()).unwrap();
    let pixels = random_images(&geometry, images, 2);
    let calib =
        Calibration { pixels: &pixels, count: images, image_size: [geometry.image, geometry.image], groups: None };
    let opts = PipelineOptions {
        budget_params: (0.4 * model.block_linear_params() as f64) as usize,
        batch: 8,
        threads: 0,
        ..PipelineOptions::default()
    };
    let started = Instant::now();
    let out = compress_model(&model, &calib, &opts).unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{}", out.report.table());
    eprintln!("phases: {:?}", out.report.timings);
    println!(
        "compressed {} ({} block-linear params, {images} images of {}x{}) in {secs:.1} s on {threads} threads",
        spec.config.architecture,
        model.block_linear_params(),
        geometry.image,
        geometry.image
    );
}
