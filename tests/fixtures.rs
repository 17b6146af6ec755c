//! Numeric ground truth: every fixture checkpoint (timm and transformers layouts) is imported,
//! written as a factorvit file, loaded by the runtime and run; every reference tensor
//! (embeddings, each block, final features, logits / pooler output) must match.
//!
//! Tolerance: 1e-4 max-abs, the project's contract. The references are PyTorch float32; our
//! kernels differ only in summation order and in the exp/erf approximations (≤ 3e-7 relative),
//! which gives ~3e-6 here, so 1e-4 leaves a 30× margin while still catching any real error
//! (a wrong epsilon, a missing bias or a swapped head moves values by ≥ 1e-3).

use factorvit::kernels::Backend;
use factorvit::{Model, Observer, SessionOptions};
use factorvit_compress::checkpoint::load_checkpoint;
use factorvit_compress::writer;
use factorvit_e2e::*;

const TOLERANCE: f32 = 1e-4;

#[derive(Default)]
struct Capture {
    embeddings: Vec<f32>,
    blocks: Vec<Vec<f32>>,
}

impl Observer for Capture {
    fn embeddings(&mut self, x: &[f32], _rows: usize, _dim: usize) {
        self.embeddings = x.to_vec();
    }
    fn block_output(&mut self, _block: usize, x: &[f32], _rows: usize, _dim: usize) {
        self.blocks.push(x.to_vec());
    }
}

fn fixture_model(name: &str) -> Vec<u8> {
    let spec = load_checkpoint(&fixture_dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    writer::to_bytes(&spec).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs `model` on the fixture input and compares every expected tensor; returns the outputs
/// for further comparisons.
fn check_fixture(name: &str, model: &Model<'_>, threads: usize, backend: Backend) -> Vec<(String, Vec<f32>)> {
    let dir = fixture_dir(name);
    let input = read_tensor(&dir.join("input.safetensors"), "pixel_values");
    let expected = read_tensors(&dir.join("expected.safetensors"));
    let [b, _, h, w] = input.shape[..] else { panic!("pixel_values must be 4-D") };
    let mut session =
        model.session(SessionOptions { threads, batch: b, image_size: [h, w], ..Default::default() }).unwrap();
    session.set_backend(backend).unwrap();
    let mut cap = Capture::default();
    let out = session.run_observed(&input.data, &mut cap).unwrap();
    let mut results = Vec::new();
    for (tensor, want) in &expected {
        let got: &[f32] = match tensor.as_str() {
            "logits" => out.logits.expect("classifier fixture has logits"),
            "last_hidden_state" => out.last_hidden_state,
            "pooler_output" => out.pooler_output,
            "embeddings" => &cap.embeddings,
            t if t.starts_with("block.") => &cap.blocks[t["block.".len()..].parse::<usize>().unwrap()],
            "position_embeddings_interpolated" => continue, // debug aid, covered by `embeddings`
            other => panic!("{name}: unexpected reference tensor {other}"),
        };
        let diff = max_abs_diff(got, &want.data);
        assert!(
            diff <= TOLERANCE,
            "{name} [{} threads, {}]: `{tensor}` differs by {diff:e} (tolerance {TOLERANCE:e})",
            threads,
            backend.name()
        );
        results.push((tensor.clone(), got.to_vec()));
    }
    assert!(!results.is_empty());
    results
}

#[test]
fn every_fixture_matches_its_reference_on_every_backend() {
    for name in MODEL_FIXTURES {
        let bytes = fixture_model(name);
        let model = Model::from_bytes(&bytes).unwrap();
        for backend in Backend::available() {
            check_fixture(name, &model, 1, backend);
        }
    }
}

#[test]
fn results_are_identical_for_any_thread_count() {
    for name in MODEL_FIXTURES {
        let bytes = fixture_model(name);
        let model = Model::from_bytes(&bytes).unwrap();
        let one = check_fixture(name, &model, 1, Backend::detect());
        for threads in [2, 3] {
            let many = check_fixture(name, &model, threads, Backend::detect());
            for ((t, a), (_, b)) in one.iter().zip(&many) {
                let diff = max_abs_diff(a, b);
                assert!(diff <= 1e-6, "{name}: `{t}` with {threads} threads differs by {diff:e}");
            }
        }
    }
}

#[test]
fn half_precision_weights_are_converted_exactly_inside_the_kernels() {
    // A model stored in f16 (or bf16) must compute exactly what the same rounded weights
    // stored in f32 compute: conversion happens in the kernels, not by approximation.
    use factorvit::safetensors::DType;
    for name in ["timm-vit-micro", "hf-dinov2-micro"] {
        for dtype in [DType::F16, DType::BF16] {
            let mut spec = load_checkpoint(&fixture_dir(name)).unwrap();
            spec.cast_floats(dtype).unwrap();
            let half_bytes = writer::to_bytes(&spec).unwrap();
            spec.cast_floats(DType::F32).unwrap();
            let f32_bytes = writer::to_bytes(&spec).unwrap();
            assert!(half_bytes.len() < f32_bytes.len() * 6 / 10, "{name}: half file is not smaller");
            let run = |bytes: &[u8]| {
                let model = Model::from_bytes(bytes).unwrap();
                let dir = fixture_dir(name);
                let input = read_tensor(&dir.join("input.safetensors"), "pixel_values");
                let [b, _, h, w] = input.shape[..] else { unreachable!() };
                let mut s = model
                    .session(SessionOptions { threads: 1, batch: b, image_size: [h, w], ..Default::default() })
                    .unwrap();
                s.run(&input.data).unwrap().last_hidden_state.to_vec()
            };
            let diff = max_abs_diff(&run(&half_bytes), &run(&f32_bytes));
            assert!(diff <= 1e-5, "{name} {dtype:?}: {diff:e}");
        }
    }
}

#[test]
fn misaligned_buffers_are_copied_not_rejected() {
    let bytes = fixture_model("timm-vit-micro");
    // Shift the whole file by one byte: every tensor becomes misaligned for its dtype.
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let model = Model::from_bytes(&shifted[1..]).unwrap();
    assert!(model.copied_bytes() > 0, "misaligned tensors should have been copied");
    check_fixture("timm-vit-micro", &model, 1, Backend::detect());
    let aligned = Model::from_bytes(&bytes).unwrap();
    // Our writer aligns every tensor; only vectors (converted to f32 at load) may be owned.
    assert_eq!(aligned.copied_bytes(), 0);
}

/// Records every layer input a block shows, in order.
#[derive(Default)]
struct LayerInputs(Vec<(usize, factorvit::BlockLinear, Vec<f32>)>);

impl Observer for LayerInputs {
    fn linear_input(&mut self, block: usize, which: factorvit::BlockLinear, x: &[f32], _rows: usize, _cols: usize) {
        self.0.push((block, which, x.to_vec()));
    }
}

/// The LayerScale micro fixture (file bytes), its input pixels and session options for the
/// whole input batch.
fn layerscale_micro() -> (Vec<u8>, F32Tensor, SessionOptions) {
    let bytes = fixture_model("timm-vit-avgpool-layerscale-micro");
    let dir = fixture_dir("timm-vit-avgpool-layerscale-micro");
    let input = read_tensor(&dir.join("input.safetensors"), "pixel_values");
    let [b, _, h, w] = input.shape[..] else { panic!("pixel_values must be 4-D") };
    let opts = SessionOptions { threads: 1, batch: b, image_size: [h, w], ..Default::default() };
    (bytes, input, opts)
}

/// `run_block_until(i, last)` shows exactly the layer inputs `run_block(i)` shows, bit for
/// bit, up to and including `last`'s, and none after it (the compressor's compensation relies
/// on it to skip the rest of a block).
#[test]
fn a_block_run_until_a_layer_shows_the_same_inputs_up_to_it() {
    use factorvit::BlockLinear;
    let (bytes, input, opts) = layerscale_micro();
    let model = Model::from_bytes(&bytes).unwrap();
    for block in 0..model.config().depth {
        let mut full = model.session(opts.clone()).unwrap();
        full.embed(&input.data).unwrap();
        for i in 0..block {
            full.run_block(i, &mut factorvit::NoObserver);
        }
        let stream = full.residual().to_vec();
        let mut all = LayerInputs::default();
        full.run_block(block, &mut all);
        assert_eq!(all.0.len(), 4);
        for (k, last) in BlockLinear::ALL.into_iter().enumerate() {
            let mut partial = model.session(opts.clone()).unwrap();
            partial.embed(&input.data).unwrap();
            partial.residual_mut().copy_from_slice(&stream);
            let mut seen = LayerInputs::default();
            partial.run_block_until(block, last, &mut seen);
            assert_eq!(seen.0.len(), k + 1, "block {block} until {last:?}");
            for (got, want) in seen.0.iter().zip(&all.0) {
                assert_eq!((got.0, got.1), (want.0, want.1));
                assert!(
                    got.2.iter().zip(&want.2).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "block {block} {:?}",
                    got.1
                );
            }
        }
    }
}

/// Records the residual streams a block shows (`residual_input`), its layer inputs and outputs.
#[derive(Default)]
struct ResidualPoints {
    residual: Vec<(factorvit::BlockLinear, Vec<f32>)>,
    inputs: Vec<(factorvit::BlockLinear, Vec<f32>)>,
    output: Vec<f32>,
}

impl Observer for ResidualPoints {
    fn residual_input(&mut self, _block: usize, which: factorvit::BlockLinear, x: &[f32], _rows: usize, _dim: usize) {
        self.residual.push((which, x.to_vec()));
    }
    fn linear_input(&mut self, _block: usize, which: factorvit::BlockLinear, x: &[f32], _rows: usize, _cols: usize) {
        self.inputs.push((which, x.to_vec()));
    }
    fn block_output(&mut self, _block: usize, x: &[f32], _rows: usize, _dim: usize) {
        self.output = x.to_vec();
    }
}

/// `residual_input` shows the block input before `proj` and, before `fc2`, the stream that
/// `fc2`'s LayerScaled output is added to: block output = that stream + γ₂ ⊙ (W₂·h + b₂), checked
/// with a naive product (the compressor's residual-stream targets rely on both points).
#[test]
fn residual_input_shows_the_stream_each_residual_branch_is_added_to() {
    use factorvit::BlockLinear;
    let (bytes, input, opts) = layerscale_micro();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut session = model.session(opts).unwrap();
    session.embed(&input.data).unwrap();
    let d = model.config().embed_dim;
    for block in 0..model.config().depth {
        let stream = session.residual().to_vec();
        let mut seen = ResidualPoints::default();
        session.run_block(block, &mut seen);
        let kinds: Vec<BlockLinear> = seen.residual.iter().map(|r| r.0).collect();
        assert_eq!(kinds, [BlockLinear::Proj, BlockLinear::Fc2]);
        assert_eq!(seen.residual[0].1, stream, "block {block}: proj's residual is the block input");
        let fc2 = model.block_linear(block, BlockLinear::Fc2).unwrap();
        let w2 = model.effective_weight(fc2);
        let b2 = fc2.bias().unwrap();
        let g2 = model.layer_scale(block, BlockLinear::Fc2).expect("fixture has LayerScale");
        let hidden = &seen.inputs.iter().find(|x| x.0 == BlockLinear::Fc2).unwrap().1;
        let n = hidden.len() / (seen.output.len() / d);
        let mid = &seen.residual[1].1;
        for (row, (out, mid)) in seen.output.chunks(d).zip(mid.chunks(d)).enumerate() {
            let x = &hidden[row * n..(row + 1) * n];
            for i in 0..d {
                let y: f64 = (0..n).map(|j| f64::from(w2[i * n + j]) * f64::from(x[j])).sum::<f64>() + f64::from(b2[i]);
                let want = f64::from(mid[i]) + f64::from(g2[i]) * y;
                // f32 kernels against an f64 sum of ≤ a few hundred terms of size ~1.
                assert!((f64::from(out[i]) - want).abs() < 1e-4, "block {block} row {row} ch {i}");
            }
        }
    }
}
