//! End-to-end properties of the compression method on a small random ViT calibrated with the
//! bundled Fashion-MNIST images (`data/fmnist-calib.safetensors`).

use std::path::Path;

use factorvit::safetensors::DType;
use factorvit::Model;
use factorvit_compress::data::{load_dataset, Dataset, LoadOptions, Split};
use factorvit_compress::method::compensate::CompensationOptions;
use factorvit_compress::method::export::apply_to_spec;
use factorvit_compress::method::pipeline::{
    compress_model, Calibration, Compressed, FactorMethod, Phase, PipelineOptions, Progress, ProgressEvent, RankPolicy,
    COMPENSATION_GATE_TIE,
};
use factorvit_compress::method::synthetic::{random_vit_spec, SyntheticVit};
use factorvit_compress::writer;

fn calibration(model: &Model<'_>, count: usize) -> Dataset {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fmnist-calib.safetensors");
    let opts = LoadOptions { split: Split::Train, limit: Some(count), ..LoadOptions::default() };
    load_dataset(&path, model.preprocess(), &opts).expect("bundled calibration data loads")
}

fn micro_model() -> (factorvit_compress::checkpoint::ModelSpec, Model<'static>) {
    let spec = random_vit_spec(&SyntheticVit::micro(), 7).unwrap();
    let model = Model::from_vec(writer::to_bytes(&spec).unwrap()).unwrap();
    (spec, model)
}

fn options(model: &Model<'_>, keep: f64) -> PipelineOptions {
    PipelineOptions {
        budget_params: (keep * model.block_linear_params() as f64) as usize,
        sensitivity_images: 8,
        batch: 8,
        threads: 1,
        ..PipelineOptions::default()
    }
}

fn run(model: &Model<'_>, data: &Dataset, opts: &PipelineOptions) -> Compressed {
    let calib = Calibration::from_dataset(data);
    compress_model(model, &calib, opts).expect("compression succeeds")
}

#[test]
fn activation_aware_error_never_worse_than_plain_svd() {
    let (_, model) = micro_model();
    let data = calibration(&model, 48);
    for keep in [0.2, 0.5] {
        let base = PipelineOptions { ranks: RankPolicy::Uniform, compensation: false, ..options(&model, keep) };
        let plain = run(&model, &data, &PipelineOptions { method: FactorMethod::Svd, ..base.clone() });
        let aware = run(&model, &data, &PipelineOptions { method: FactorMethod::Whitened, ..base });
        for (p, a) in plain.report.layers.iter().zip(&aware.report.layers) {
            assert_eq!(p.rank, a.rank, "{}: uniform ranks differ", p.name);
            if !a.is_dense() {
                assert!(
                    a.error_fit <= p.error_fit * (1.0 + 1e-6),
                    "{} keep {keep}: whitened {} > svd {}",
                    a.name,
                    a.error_fit,
                    p.error_fit
                );
            }
        }
    }
}

#[test]
fn budget_is_met_exactly_for_every_policy() {
    let (_, model) = micro_model();
    let data = calibration(&model, 32);
    for keep in [0.15, 0.3, 0.6] {
        for ranks in [RankPolicy::Uniform, RankPolicy::Greedy, RankPolicy::GreedySensitivity] {
            let opts = PipelineOptions { ranks, compensation: false, ..options(&model, keep) };
            let out = run(&model, &data, &opts);
            let (_, _, cost) = out.report.totals();
            let budget = opts.budget_params as f64;
            assert!(cost <= budget, "{ranks:?} keep {keep}: {cost} > {budget}");
            // Within one rank step of the smallest layer that could still grow.
            let step = out
                .report
                .layers
                .iter()
                .filter(|l| !l.is_dense())
                .map(|l| l.out_features + l.in_features)
                .min()
                .unwrap_or(0);
            assert!(
                budget - cost < step as f64,
                "{ranks:?} keep {keep}: {cost} leaves more than one rank step ({step}) of {budget}"
            );
        }
    }
}

#[test]
fn budget_with_sparse_term_is_met() {
    let (_, model) = micro_model();
    let data = calibration(&model, 32);
    let opts = PipelineOptions { sparse_fraction: 0.3, compensation: false, ..options(&model, 0.3) };
    let out = run(&model, &data, &opts);
    let (_, _, cost) = out.report.totals();
    assert!(cost <= opts.budget_params as f64);
}

#[test]
fn compensation_never_increases_fit_loss_nor_validation_loss() {
    let (_, model) = micro_model();
    let data = calibration(&model, 64);
    // Both targets: each layer's own output, and the residual-stream target of proj / fc2.
    for (keep, residual_target) in [(0.15, false), (0.4, false), (0.15, true), (0.4, true)] {
        let opts = PipelineOptions {
            compensation_options: CompensationOptions { adam_steps: 30, ..CompensationOptions::default() },
            residual_target,
            ..options(&model, keep)
        };
        let out = run(&model, &data, &opts);
        let mut compensated = 0;
        for l in &out.report.layers {
            if let (Some(fb), Some(fa)) = (l.compensation_fit_before, l.compensation_fit_after) {
                compensated += 1;
                assert!(fa <= fb * (1.0 + 1e-9), "{}: fit loss {fb} -> {fa}", l.name);
                let (vb, va) = (l.compensation_val_before.unwrap(), l.compensation_val_after.unwrap());
                assert!(va <= vb * (1.0 + 1e-9), "{}: validation loss {vb} -> {va}", l.name);
            }
        }
        assert!(compensated > 0);
        let (b, a) = (
            out.report.validation_distortion_before_compensation.unwrap(),
            out.report.validation_distortion_after_compensation.unwrap(),
        );
        // The model gate: candidates k = 0 (none) .. depth (all), the kept one is the best.
        let gate = &out.report.compensation_gate;
        assert_eq!(gate.first().map(|g| g.0), Some(0));
        assert_eq!(gate.last().map(|g| g.0), Some(model.config().depth));
        assert_eq!(gate[0].1, b);
        assert_eq!(gate.last().unwrap().1, a);
        let k = out.report.compensated_blocks.unwrap();
        let chosen = gate.iter().find(|g| g.0 == k).expect("the chosen k is a candidate").1;
        let best = gate.iter().map(|g| g.1).fold(f64::INFINITY, f64::min);
        assert!(chosen <= b, "gate kept k={k} ({chosen}), worse than none ({b})");
        assert!(chosen <= best * (1.0 + COMPENSATION_GATE_TIE), "gate kept k={k} ({chosen}) but {gate:?}");
        assert_eq!(out.report.compensation_kept, Some(k > 0));
        // Blocks from k on are exactly the uncompensated run's layers.
        let plain = run(&model, &data, &PipelineOptions { compensation: false, ..opts.clone() });
        for (i, (x, y)) in out.layers.iter().zip(&plain.layers).enumerate() {
            let same = match (&x.replacement, &y.replacement) {
                (None, None) => true,
                (Some(xa), Some(ya)) => xa.approx.u == ya.approx.u && xa.approx.v == ya.approx.v && xa.bias == ya.bias,
                _ => false,
            };
            if i >= 4 * k {
                assert!(same, "{}: block at or after k={k} differs from the uncompensated run", x.name);
                if x.replacement.is_some() {
                    assert_eq!(out.report.layers[i].compensation_kept, Some(false), "{}", x.name);
                }
            }
        }
    }
}

#[test]
fn deterministic_for_a_seed() {
    let (_, model) = micro_model();
    let data = calibration(&model, 40);
    let opts = PipelineOptions { sparse_fraction: 0.2, ..options(&model, 0.3) };
    let a = run(&model, &data, &opts);
    let b = run(&model, &data, &opts);
    assert_eq!(a.layers.len(), b.layers.len());
    for (x, y) in a.layers.iter().zip(&b.layers) {
        match (&x.replacement, &y.replacement) {
            (None, None) => {}
            (Some(xa), Some(ya)) => {
                let (ax, bx) = (&xa.approx, &ya.approx);
                assert!(
                    ax.u == bx.u && ax.v == bx.v && ax.sparse == bx.sparse && xa.bias == ya.bias,
                    "{} differs between runs",
                    x.name
                );
            }
            _ => panic!("{}: kind differs between runs", x.name),
        }
    }
}

#[test]
fn compressed_file_reloads_and_runs() {
    let (mut spec, model) = micro_model();
    let data = calibration(&model, 32);
    let opts = PipelineOptions { sparse_fraction: 0.3, ..options(&model, 0.3) };
    let out = run(&model, &data, &opts);
    // In-memory reference: the replacements applied to the model in f32.
    let mut applied = model.view();
    out.apply(&mut applied).unwrap();
    apply_to_spec(&mut spec, &out, DType::F32).unwrap();
    let bytes = writer::to_bytes(&spec).unwrap();
    let reloaded = Model::from_bytes(&bytes).unwrap();
    assert_eq!(reloaded.block_linear_params(), out.report.totals().1);
    assert!(reloaded.linears().any(|l| l.info().rank > 0));
    let pixels = &data.pixel_values[..4 * data.sample_len()];
    let mut s1 = reloaded.session(factorvit::SessionOptions { batch: 4, ..Default::default() }).unwrap();
    let mut s2 = applied.session(factorvit::SessionOptions { batch: 4, ..Default::default() }).unwrap();
    let l1 = s1.run(pixels).unwrap().logits.unwrap().to_vec();
    let l2 = s2.run(pixels).unwrap().logits.unwrap().to_vec();
    for (a, b) in l1.iter().zip(&l2) {
        assert!(a.is_finite() && (a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// The bundled trained model (`models/fmnist-deit-tiny`): at keep 0.4 the compressed model must
/// agree with the dense one on ≥ 99% of 300 bundled test images, and the activation-aware
/// decomposition must beat plain SVD layer by layer on real activations.
#[test]
fn trained_fmnist_tiny_keeps_its_predictions_at_keep_04() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fmnist-deit-tiny");
    let spec = factorvit_compress::checkpoint::load_checkpoint(&dir).expect("bundled model imports");
    let model = Model::from_vec(writer::to_bytes(&spec).unwrap()).unwrap();
    let calib = calibration(&model, 40);
    let opts = PipelineOptions { sensitivity_images: 4, threads: 0, ..options(&model, 0.4) };
    let full = run(&model, &calib, &opts);
    let plain = run(
        &model,
        &calib,
        &PipelineOptions { method: FactorMethod::Svd, ranks: RankPolicy::Uniform, compensation: false, ..opts.clone() },
    );
    let aware =
        run(&model, &calib, &PipelineOptions { ranks: RankPolicy::Uniform, compensation: false, ..opts.clone() });
    for (p, a) in plain.report.layers.iter().zip(&aware.report.layers) {
        if !a.is_dense() {
            assert!(a.error_fit <= p.error_fit, "{}: whitened {} > svd {}", a.name, a.error_fit, p.error_fit);
        }
    }
    let test_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fmnist-test.safetensors");
    let test =
        load_dataset(&test_path, model.preprocess(), &LoadOptions { limit: Some(300), ..LoadOptions::default() })
            .unwrap();
    let mut compressed = model.view();
    full.apply(&mut compressed).unwrap();
    let eval = |m: &Model<'_>| {
        factorvit_compress::method::eval::run_model(
            m,
            &test.pixel_values,
            test.n,
            [test.h, test.w],
            factorvit_compress::method::eval::RunOptions { batch: 50, threads: 0, keep_tokens: false },
            |_| {},
        )
        .unwrap()
    };
    let (dense_out, comp_out) = (eval(&model), eval(&compressed));
    let metrics =
        factorvit_compress::method::eval::metrics(&comp_out, test.labels.as_deref(), Some(&dense_out)).unwrap();
    assert!(metrics.agreement.unwrap() >= 0.99, "agreement {:?}", metrics.agreement);
}

#[test]
fn progress_reaches_the_callback_phase_by_phase_and_changes_nothing() {
    use std::sync::{Arc, Mutex};
    let (_, model) = micro_model();
    let data = calibration(&model, 32);
    let opts = options(&model, 0.3);
    assert!(!opts.progress.is_some(), "no progress by default");
    let events: Arc<Mutex<Vec<ProgressEvent>>> = Arc::default();
    let sink = Arc::clone(&events);
    let with = PipelineOptions { progress: Progress::new(move |e| sink.lock().unwrap().push(e)), ..opts.clone() };
    let (a, b) = (run(&model, &data, &opts), run(&model, &data, &with));
    for (x, y) in a.layers.iter().zip(&b.layers) {
        let same = match (&x.replacement, &y.replacement) {
            (None, None) => true,
            (Some(p), Some(q)) => p.approx.u == q.approx.u && p.approx.v == q.approx.v && p.bias == q.bias,
            _ => false,
        };
        assert!(same, "{}: progress reporting changed the result", x.name);
    }
    let events = events.lock().unwrap();
    let depth = model.config().depth;
    let layers = a.layers.len();
    for (phase, total) in [(Phase::Statistics, depth), (Phase::Factors, layers), (Phase::Compensation, depth)] {
        let done: Vec<usize> = events.iter().filter(|e| e.phase == phase).map(|e| e.done).collect();
        assert_eq!(done, (0..=total).collect::<Vec<_>>(), "{phase:?}");
        assert!(events.iter().filter(|e| e.phase == phase).all(|e| e.total == total), "{phase:?}");
    }
    // Phases in order.
    let first = |p: Phase| events.iter().position(|e| e.phase == p).unwrap();
    assert!(first(Phase::Statistics) < first(Phase::Factors) && first(Phase::Factors) < first(Phase::Compensation));
}
