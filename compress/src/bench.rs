//! Inference benchmark of one model: latency distribution, throughput, and the memory-traffic
//! figures users compare (weight bytes resident and read per inference, activation arena,
//! peak RSS).

use std::time::{Duration, Instant};

use factorvit::session::Op;
use factorvit::{Model, SessionOptions};
use serde::{Deserialize, Serialize};

/// What [`bench_model`] measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Model path or label.
    pub model: String,
    /// Kernel backend used.
    pub backend: String,
    /// Threads of the session.
    pub threads: usize,
    /// Images per run.
    pub batch: usize,
    /// Input `[H, W]`.
    pub image_size: [usize; 2],
    /// Timed runs.
    pub runs: usize,
    /// Median latency of one run (ms).
    pub median_ms: f64,
    /// 90th percentile latency (ms).
    pub p90_ms: f64,
    /// Fastest run (ms).
    pub min_ms: f64,
    /// Floating-point operations of one run (2 × multiply-adds).
    pub flops: u64,
    /// `flops / median`, in GFLOP/s.
    pub gflops: f64,
    /// Parameters (weights, biases, norms, tokens, positions).
    pub params: usize,
    /// Weight bytes held by the model (file-backed or copied). Every one of them is read once
    /// per run, so this is also the weight traffic per inference.
    pub weight_bytes: usize,
    /// Weight bytes read per image: `weight_bytes / batch`.
    pub weight_bytes_per_image: f64,
    /// Weight bytes copied into RAM at load (0 for an aligned file: it is read in place).
    pub copied_weight_bytes: usize,
    /// The session's preallocated activation + scratch buffers.
    pub arena_bytes: usize,
    /// `weight_bytes / median`, in GB/s: the weight-read bandwidth a run sustains.
    pub weight_gbps: f64,
    /// File size in bytes (0 when benchmarking an in-memory model).
    pub file_bytes: u64,
    /// Peak resident set size of the process (bytes), if the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Time per op kind (with [`BenchOptions::profile`]), in run order, then `other` (the time
    /// between ops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<OpTime>>,
}

/// One row of a [`BenchReport::profile`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpTime {
    /// Op kind ([`Op::name`], or `other`).
    pub op: String,
    /// Milliseconds per run.
    pub ms: f64,
    /// Fraction of the run's wall time.
    pub share: f64,
}

/// Options of [`bench_model`].
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Session threads.
    pub threads: usize,
    /// Images per run.
    pub batch: usize,
    /// Minimum timed runs.
    pub min_runs: usize,
    /// Keep running until this much time was spent (then stop at `min_runs` or more).
    pub min_time: Duration,
    /// Untimed warm-up runs.
    pub warmup: usize,
    /// After the timed runs, profile as many more runs (at most 100) per op kind.
    pub profile: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { threads: 1, batch: 1, min_runs: 20, min_time: Duration::from_secs(3), warmup: 3, profile: false }
    }
}

/// Benchmarks `model` on a fixed pseudo-random input at its trained size.
pub fn bench_model(
    label: &str,
    model: &Model<'_>,
    file_bytes: u64,
    opts: &BenchOptions,
) -> factorvit::Result<BenchReport> {
    let mut session = model.session(SessionOptions {
        threads: opts.threads,
        batch: opts.batch,
        image_size: [0, 0],
        ..Default::default()
    })?;
    let c = model.config();
    let [h, w] = session.image_size();
    let n = opts.batch * c.in_chans * h * w;
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let pixels: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    for _ in 0..opts.warmup {
        session.run(&pixels)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < opts.min_runs || start.elapsed() < opts.min_time {
        let t0 = Instant::now();
        session.run(&pixels)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if times.len() >= 10_000 {
            break;
        }
    }
    let profile = if opts.profile {
        session.set_profiling(true);
        for _ in 0..times.len().min(100) {
            session.run(&pixels)?;
        }
        session.set_profiling(false);
        Some(op_times(session.profile()))
    } else {
        None
    };
    times.sort_by(f64::total_cmp);
    let median = percentile(&times, 0.5);
    let mem = session.memory();
    let flops = 2 * session.macs_per_image() as u64 * opts.batch as u64;
    Ok(BenchReport {
        model: label.to_string(),
        backend: session.backend().name().to_string(),
        threads: session.threads(),
        batch: opts.batch,
        image_size: [h, w],
        runs: times.len(),
        median_ms: median,
        p90_ms: percentile(&times, 0.9),
        min_ms: times[0],
        flops,
        gflops: flops as f64 / (median * 1e6),
        params: model.params(),
        weight_bytes: mem.weight_bytes,
        weight_bytes_per_image: mem.weight_bytes as f64 / opts.batch as f64,
        copied_weight_bytes: mem.copied_weight_bytes,
        arena_bytes: mem.arena_bytes,
        weight_gbps: mem.weight_bytes as f64 / (median * 1e6),
        file_bytes,
        peak_rss_bytes: peak_rss_bytes(),
        profile,
    })
}

/// The rows of a profile: every op kind in run order, then `other`.
fn op_times(p: &factorvit::session::Profile) -> Vec<OpTime> {
    let per_run = |ns: u64| if p.runs == 0 { 0.0 } else { ns as f64 / 1e6 / p.runs as f64 };
    let share = |ns: u64| if p.total_ns == 0 { 0.0 } else { ns as f64 / p.total_ns as f64 };
    Op::ALL
        .iter()
        .map(|&op| OpTime { op: op.name().to_string(), ms: p.ms_per_run(op), share: p.share(op) })
        .chain(std::iter::once(OpTime { op: "other".into(), ms: per_run(p.other_ns()), share: share(p.other_ns()) }))
        .collect()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Peak resident set size of this process (`VmHWM` on Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
