//! `factorvit bench`: latency, throughput and memory traffic of one model, or two side by side.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use factorvit_compress::bench::{bench_model, BenchOptions, BenchReport, OpTime};
use factorvit_compress::report::units::{human_bytes, mib, thousands};

use super::model::open_model;
use super::values::{self, Bound};
use super::{CliError, Context, Global};

pub const AFTER_HELP: &str = "\
Examples:
  factorvit bench --model deit-tiny.fvit
  factorvit bench --model dense.fvit --compare compressed.fvit --threads 1,2
  factorvit bench --model ./deit_tiny_patch16_224 --json

Each (model, thread count) is measured in a fresh child process, so peak RSS is per model.
Figures: median and p90 latency over at least --runs runs and --min-time seconds after warm-up;
FLOPs = 2 x multiply-adds of one forward pass (linears, patch embedding, attention);
weight bytes = every weight tensor at its stored dtype, each read once per forward pass (the
memory-traffic figure); arena = the session's preallocated activation and scratch buffers;
weight GB/s = weight bytes / median latency; the DRAM floor = weight bytes / --dram-gbps, the
time just streaming the weights takes on a board with that bandwidth (batch 1, cold caches).

Exit status: 0 success, 1 failure, 2 usage error, 101 internal error.";

/// Arguments of `factorvit bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: a .fvit file or a checkpoint directory
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// A second model to measure side by side (ratios are OTHER / MODEL)
    #[arg(long, value_name = "OTHER")]
    compare: Option<PathBuf>,
    /// Thread counts to measure, comma separated, each 0..=64 (0 = all cores) [default: 1 and
    /// all cores]
    #[arg(long, value_delimiter = ',', value_name = "N,...", value_parser = values::threads())]
    threads: Vec<usize>,
    /// Images per run, 1..=4096
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = values::batch())]
    batch: usize,
    /// Minimum timed runs, 1..=1000000
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = values::count_in(1, 1_000_000))]
    runs: usize,
    /// Minimum measuring time per configuration, in seconds, in [0, 3600]
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS", value_parser = values::float_in(Bound::Closed(0.0), Bound::Closed(3600.0)))]
    min_time: f64,
    /// DRAM bandwidth (GB/s) used for the weight-streaming floor, in (0, 1000000] [Raspberry Pi 4:
    /// about 3]
    #[arg(long, default_value_t = 3.0, value_name = "GB/S", value_parser = values::float_in(Bound::Open(0.0), Bound::Closed(1e6)))]
    dram_gbps: f64,
    /// Also measure the core's FMA peak (a 1-second loop) and report the fraction reached
    #[arg(long)]
    peak: bool,
    /// Print one JSON object instead of tables
    #[arg(long)]
    json: bool,
    /// Also profile the runs per op kind (patch embed, norms, qkv, attention scores, softmax,
    /// attention x V, proj, fc1+GELU, fc2, head): time per run and share (in --json too)
    #[arg(long)]
    profile: bool,
    /// Internal: measure in this process and print one JSON report
    #[arg(long, hide = true)]
    child: bool,
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    let opts = |threads| BenchOptions {
        threads,
        batch: args.batch,
        min_runs: args.runs,
        min_time: Duration::from_secs_f64(args.min_time),
        warmup: 3,
        profile: args.profile,
    };
    if args.child {
        let threads = args.threads.first().copied().unwrap_or(1);
        let report = measure_here(&args.model, &opts(threads), global)?;
        println!("{}", serde_json::to_string(&report).expect("report serialises"));
        return Ok(());
    }
    let threads = if args.threads.is_empty() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if cores > 1 {
            vec![1, cores]
        } else {
            vec![1]
        }
    } else {
        args.threads.clone()
    };
    let models: Vec<&PathBuf> = std::iter::once(&args.model).chain(args.compare.iter()).collect();
    let mut reports: Vec<Vec<BenchReport>> = Vec::new();
    for m in &models {
        let mut per_model = Vec::new();
        for &t in &threads {
            if !args.json && !global.quiet {
                eprintln!("measuring {} with {t} thread(s)...", m.display());
            }
            per_model.push(measure_in_child(m, t, args)?);
        }
        reports.push(per_model);
    }
    let peak = args.peak.then(factorvit::kernels::peak::measure_fma_peak_gflops);
    if args.json {
        let out = serde_json::json!({
            "models": reports,
            "fma_peak_gflops_per_core": peak,
            "dram_gbps": args.dram_gbps,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return Ok(());
    }
    for (m, per_model) in models.iter().zip(&reports) {
        print_model(m, per_model, args.dram_gbps, peak);
    }
    if reports.len() == 2 {
        print_ratios(&reports[0], &reports[1]);
    }
    Ok(())
}

fn measure_here(path: &Path, opts: &BenchOptions, global: &Global) -> Result<BenchReport, CliError> {
    let model = open_model(path, global)?;
    let file_bytes = if path.is_file() { std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) } else { 0 };
    bench_model(&path.display().to_string(), &model, file_bytes, opts)
        .context(|| format!("cannot run {}", path.display()))
}

fn measure_in_child(path: &Path, threads: usize, args: &Args) -> Result<BenchReport, CliError> {
    let exe = std::env::current_exe().context(|| "cannot locate the factorvit executable")?;
    let out = Command::new(exe)
        .args(["--quiet", "bench", "--child", "--model"])
        .arg(path)
        .args(["--threads", &threads.to_string()])
        .args(["--batch", &args.batch.to_string(), "--runs", &args.runs.to_string()])
        .args(["--min-time", &args.min_time.to_string()])
        .args(args.profile.then_some("--profile"))
        .output()
        .context(|| "cannot start the measuring process")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().last().unwrap_or("").trim_start_matches("error: ");
        return Err(CliError::msg(format!("measuring {} failed: {line}", path.display())));
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| CliError::msg("the measuring process printed no report"))
}

fn print_model(path: &Path, reports: &[BenchReport], dram_gbps: f64, peak: Option<f64>) {
    let r0 = &reports[0];
    println!("\n{}", path.display());
    println!(
        "  {} parameters, file {}, backend {}, input {}x{}, batch {}",
        thousands(r0.params),
        human_bytes(r0.file_bytes),
        r0.backend,
        r0.image_size[0],
        r0.image_size[1],
        r0.batch
    );
    println!(
        "  weights: {} resident, {} read per inference ({} per image), {} copied at load",
        mib(r0.weight_bytes as f64),
        mib(r0.weight_bytes as f64),
        mib(r0.weight_bytes_per_image),
        mib(r0.copied_weight_bytes as f64)
    );
    println!("  activation arena: {}, FLOPs per run: {:.3} G", mib(r0.arena_bytes as f64), r0.flops as f64 / 1e9);
    println!(
        "  weight-streaming floor at {dram_gbps} GB/s DRAM: {:.2} ms per run",
        r0.weight_bytes as f64 / (dram_gbps * 1e6)
    );
    println!(
        "  {:>7} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "threads", "median ms", "p90 ms", "GFLOP/s", "% peak", "weight GB/s", "peak RSS"
    );
    for r in reports {
        let pct =
            peak.map(|p| format!("{:.0}%", 100.0 * r.gflops / (p * r.threads as f64))).unwrap_or_else(|| "-".into());
        println!(
            "  {:>7} {:>10.3} {:>10.3} {:>10.1} {:>10} {:>12.2} {:>10}",
            r.threads,
            r.median_ms,
            r.p90_ms,
            r.gflops,
            pct,
            r.weight_gbps,
            r.peak_rss_bytes.map(|b| mib(b as f64)).unwrap_or_else(|| "-".into())
        );
    }
    if let Some(p) = peak {
        println!("  FMA peak of one core: {p:.1} GFLOP/s (measured)");
    }
    for r in reports {
        if let Some(profile) = &r.profile {
            print_profile(r.threads, profile);
        }
    }
}

fn print_profile(threads: usize, profile: &[OpTime]) {
    println!("  profile with {threads} thread(s), per run:");
    println!("  {:>12} {:>10} {:>7}", "op", "ms", "share");
    for row in profile {
        println!("  {:>12} {:>10.3} {:>6.1}%", row.op, row.ms, 100.0 * row.share);
    }
    let total: f64 = profile.iter().map(|r| r.ms).sum();
    println!("  {:>12} {:>10.3} {:>6.1}%", "total", total, 100.0 * profile.iter().map(|r| r.share).sum::<f64>());
}

fn print_ratios(a: &[BenchReport], b: &[BenchReport]) {
    println!("\nratios (second model / first):");
    let (a0, b0) = (&a[0], &b[0]);
    let ratio = |x: f64, y: f64| if x > 0.0 { format!("{:.3}", y / x) } else { "-".into() };
    println!("  parameters {}", ratio(a0.params as f64, b0.params as f64));
    println!("  weight bytes per inference {}", ratio(a0.weight_bytes as f64, b0.weight_bytes as f64));
    println!("  file size {}", ratio(a0.file_bytes as f64, b0.file_bytes as f64));
    println!("  FLOPs {}", ratio(a0.flops as f64, b0.flops as f64));
    println!("  arena {}", ratio(a0.arena_bytes as f64, b0.arena_bytes as f64));
    for (x, y) in a.iter().zip(b) {
        println!(
            "  latency with {} thread(s): {} (speed-up {})",
            x.threads,
            ratio(x.median_ms, y.median_ms),
            ratio(y.median_ms, x.median_ms)
        );
    }
    if let (Some(x), Some(y)) = (a0.peak_rss_bytes, b0.peak_rss_bytes) {
        println!("  peak RSS {}", ratio(x as f64, y as f64));
    }
}
