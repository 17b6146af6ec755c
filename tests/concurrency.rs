//! A [`Model`] is shared by many sessions on many threads: it is `Send + Sync` (checked at
//! compile time), and 8 threads, each with its own session (1 or 2 worker threads), running 25
//! inferences each in their own order over 16 inputs, get outputs bit-for-bit equal to a
//! single-threaded reference — for the dense bundled model (f16, in memory), for a compressed
//! version of it with low-rank layers (f32, memory-mapped from a file), and for that version with
//! a low-rank + sparse `mlp.fc2` in every block.

use std::sync::Barrier;

use factorvit::safetensors::DType;
use factorvit::{CsrMatrix, LinearKind, LinearWeights, Model, Session, SessionOptions};
use factorvit_compress::checkpoint::load_checkpoint;
use factorvit_compress::data::{load_dataset, Dataset, LoadOptions, Split};
use factorvit_compress::method::export::apply_to_spec;
use factorvit_compress::method::pipeline::{compress_model, Calibration, FactorMethod, PipelineOptions, RankPolicy};
use factorvit_compress::writer;
use factorvit_e2e::*;

// ---- Compile-time guarantees ----

const fn assert_send_sync<T: Send + Sync>() {}
const fn assert_send<T: Send>() {}

/// `Model` can be shared between threads (`&Model` sent to each) and moved to another thread,
/// whatever it borrows from; a `Session` (which borrows its model) can be moved to another
/// thread, and so can a session's outputs' owner. `Session` is also `Sync` (its methods that
/// run take `&mut self`, so sharing one gives nothing but read-only accessors).
const _: () = {
    assert_send_sync::<Model<'static>>();
    assert_send::<Session<'static, 'static>>();
    assert_send_sync::<Session<'static, 'static>>();
    assert_send_sync::<SessionOptions>();
    assert_send_sync::<factorvit::Error>();
};

#[allow(dead_code)]
fn model_is_send_sync_for_any_lifetime<'a: 'm, 'm>() {
    assert_send_sync::<Model<'a>>();
    assert_send::<Session<'m, 'a>>();
}

// ---- Runtime check ----

/// Inputs shared by every run.
const INPUTS: usize = 16;
/// Threads sharing one model.
const THREADS: usize = 8;
/// Inferences per thread.
const RUNS_PER_THREAD: usize = 25;

/// One image's outputs as raw bits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bits {
    logits: Vec<u32>,
    pooled: Vec<u32>,
    hidden: Vec<u32>,
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn infer(session: &mut Session<'_, '_>, pixels: &[f32]) -> Bits {
    let out = session.run(pixels).expect("inference");
    Bits {
        logits: bits(out.logits.expect("a classifier")),
        pooled: bits(out.pooler_output),
        hidden: bits(out.last_hidden_state),
    }
}

fn options(threads: usize) -> SessionOptions {
    SessionOptions { threads, batch: 1, ..Default::default() }
}

/// The test images (bundled Fashion-MNIST test subset).
fn inputs(model: &Model<'_>) -> Dataset {
    let path = repo_root().join("data/fmnist-test.safetensors");
    let data = load_dataset(&path, model.preprocess(), &LoadOptions { limit: Some(INPUTS), ..LoadOptions::default() })
        .expect("bundled test images load");
    assert_eq!(data.n, INPUTS);
    data
}

/// Runs the 8-thread check on `model`; returns the number of inferences compared.
fn check_shared_model(name: &str, model: &Model<'_>) -> usize {
    let data = inputs(model);
    let mut single = model.session(options(1)).unwrap();
    let reference: Vec<Bits> = (0..INPUTS).map(|i| infer(&mut single, data.sample(i))).collect();
    drop(single);
    // The inputs differ, so the outputs do: a mix-up between images would be caught.
    for i in 1..INPUTS {
        assert_ne!(reference[i].logits, reference[0].logits, "{name}: inputs 0 and {i} give equal logits");
    }
    assert!(reference.iter().flat_map(|r| &r.logits).all(|&b| f32::from_bits(b).is_finite()), "{name}");

    let barrier = Barrier::new(THREADS);
    let counts: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (data, reference, barrier) = (&data, &reference, &barrier);
                scope.spawn(move || {
                    // Half the sessions run on the calling thread, half with a 2-thread pool.
                    let mut session = model.session(options(1 + t % 2)).unwrap();
                    assert_eq!(session.threads(), 1 + t % 2);
                    // A different order per thread: start t, stride coprime with 16.
                    let stride = [1, 3, 5, 7, 9, 11, 13, 15][t];
                    barrier.wait();
                    let mut done = 0;
                    for k in 0..RUNS_PER_THREAD {
                        let i = (t + k * stride) % INPUTS;
                        let got = infer(&mut session, data.sample(i));
                        assert!(
                            got == reference[i],
                            "{name}: thread {t} ({} worker threads), run {k}, input {i}: outputs differ from \
                             the single-threaded reference",
                            session.threads()
                        );
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker thread")).collect()
    });
    let total: usize = counts.iter().sum();
    assert_eq!(total, THREADS * RUNS_PER_THREAD);
    total
}

/// The bundled model as a factorvit file in memory (its f16 weights kept).
fn dense_fmnist() -> Option<(factorvit_compress::checkpoint::ModelSpec, Model<'static>)> {
    let Some(dir) = model_dir("fmnist-deit-tiny") else {
        eprintln!("NOTICE: models/fmnist-deit-tiny is missing; skipping");
        return None;
    };
    let spec = load_checkpoint(&dir).expect("bundled model imports");
    let model = Model::from_vec(writer::to_bytes(&spec).unwrap()).unwrap();
    Some((spec, model))
}

#[test]
fn dense_model_shared_by_8_threads_is_bit_exact() {
    let Some((_, model)) = dense_fmnist() else { return };
    assert!(model.linears().all(|l| l.info().kind == LinearKind::Dense));
    let started = std::time::Instant::now();
    let n = check_shared_model("dense f16", &model);
    eprintln!("dense f16: {n} concurrent inferences checked in {:.2} s", started.elapsed().as_secs_f64());
}

/// Adds a sparse term to every `mlp.fc2` of a factored model: per output row, the `per_row`
/// largest entries of the residual `W − U·V` against the dense model (a low-rank + sparse split),
/// so those layers run the `U·V + S` kernels. The replaced layers hold in-memory f32 tensors
/// while the rest stays in the memory-mapped file.
fn add_sparse_terms(model: &mut Model<'_>, dense: &Model<'_>, per_row: usize) {
    let names: Vec<String> =
        model.linears().filter(|l| l.name().ends_with("mlp.fc2")).map(|l| l.name().to_string()).collect();
    assert!(!names.is_empty());
    for name in names {
        let layer = model.linear(&name).unwrap();
        let info = layer.info();
        let (m, n, r) = (info.out_features, info.in_features, info.rank);
        let (u, v) = model.factors(layer).expect("a factored layer");
        let (u, v): (Vec<f32>, Vec<f32>) =
            ((0..m * r).map(|i| u.get(i)).collect(), (0..r * n).map(|i| v.get(i)).collect());
        let approx = model.effective_weight(layer);
        let exact = dense.effective_weight(dense.linear(&name).unwrap());
        let mut csr = CsrMatrix { row_ptr: vec![0], ..CsrMatrix::default() };
        for i in 0..m {
            let residual = |j: usize| exact[i * n + j] - approx[i * n + j];
            let mut cols: Vec<usize> = (0..n).collect();
            cols.sort_by(|&a, &b| residual(b).abs().total_cmp(&residual(a).abs()).then(a.cmp(&b)));
            cols.truncate(per_row);
            cols.sort_unstable();
            csr.col_idx.extend(cols.iter().map(|&j| j as u32));
            csr.values.extend(cols.iter().map(|&j| residual(j)));
            csr.row_ptr.push(csr.col_idx.len() as u32);
        }
        let bias = layer.bias().map(<[f32]>::to_vec);
        model.set_linear(&name, LinearWeights::Factored { u, v, rank: r, sparse: Some(csr) }, bias).unwrap();
    }
}

#[test]
fn compressed_model_shared_by_8_threads_is_bit_exact() {
    let Some((mut spec, dense)) = dense_fmnist() else { return };
    // A quick compression (plain SVD, uniform ranks, no compensation): low-rank layers.
    let started = std::time::Instant::now();
    let calib_path = repo_root().join("data/fmnist-calib.safetensors");
    let calib = load_dataset(
        &calib_path,
        dense.preprocess(),
        &LoadOptions { split: Split::Train, limit: Some(16), ..LoadOptions::default() },
    )
    .expect("bundled calibration images load");
    let opts = PipelineOptions {
        budget_params: dense.block_linear_params() * 3 / 10,
        method: FactorMethod::Svd,
        ranks: RankPolicy::Uniform,
        compensation: false,
        batch: 8,
        threads: 0,
        ..PipelineOptions::default()
    };
    let compressed = compress_model(&dense, &Calibration::from_dataset(&calib), &opts).expect("compression");
    apply_to_spec(&mut spec, &compressed, DType::F32).unwrap();
    spec.cast_floats(DType::F32).unwrap();
    let dir = temp_dir("concurrency");
    let path = dir.join("fmnist-low-rank.fvit");
    writer::write_model(&spec, &path).unwrap();
    eprintln!("compressed in {:.2} s", started.elapsed().as_secs_f64());

    // Memory-mapped: every thread reads the same mapping.
    let low_rank = Model::open(&path).unwrap();
    let kinds: Vec<LinearKind> = low_rank.linears().map(|l| l.info().kind).collect();
    assert!(kinds.iter().filter(|&&k| k == LinearKind::LowRank).count() >= 40, "{kinds:?}");
    let started = std::time::Instant::now();
    let n = check_shared_model("low-rank f32 (mmap)", &low_rank);
    eprintln!("low-rank: {n} concurrent inferences checked in {:.2} s", started.elapsed().as_secs_f64());

    // The same with a sparse term on every mlp.fc2.
    let mut sparse = low_rank.view();
    add_sparse_terms(&mut sparse, &dense, 16);
    let kinds: Vec<LinearKind> = sparse.linears().map(|l| l.info().kind).collect();
    assert_eq!(kinds.iter().filter(|&&k| k == LinearKind::LowRankSparse).count(), 12, "{kinds:?}");
    let started = std::time::Instant::now();
    let n = check_shared_model("low-rank + sparse", &sparse);
    eprintln!("low-rank + sparse: {n} concurrent inferences checked in {:.2} s", started.elapsed().as_secs_f64());
    drop(sparse);
    drop(low_rank);
    std::fs::remove_dir_all(&dir).ok();
}

/// A session can be moved to another thread and keeps giving the same outputs there.
#[test]
fn sessions_move_between_threads() {
    let Some((_, model)) = dense_fmnist() else { return };
    let data = inputs(&model);
    let mut session = model.session(options(2)).unwrap();
    let here = infer(&mut session, data.sample(3));
    let (session, there) = std::thread::scope(|s| {
        s.spawn(move || {
            let there = infer(&mut session, data.sample(3));
            (session, there)
        })
        .join()
        .unwrap()
    });
    assert_eq!(here, there);
    assert_eq!(session.threads(), 2);
}
