//! `factorvit demo`: the project in one command. Compresses the bundled Fashion-MNIST DeiT-Tiny
//! at a few budgets, evaluates every model on held-out images, benchmarks them and prints one
//! table (parameters, file size, weight bytes read per inference, latency with one and with all
//! threads, top-1, agreement with the dense model).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use factorvit_compress::bench::{bench_model, BenchOptions, BenchReport};
use factorvit_compress::data::{self, LoadOptions, Split};
use factorvit_compress::job::{configure_threads, Budget, CalibrationSource, CompressJob};
use factorvit_compress::method::eval::{self, Metrics};
use factorvit_compress::method::pipeline::PipelineOptions;
use factorvit_compress::report::units::{human_bytes, thousands};
use factorvit_compress::writer;

use super::compress_cmd;
use super::model::{load_spec, open_model};
use super::values::{self, Bound};
use super::{CliError, Context, Global};

pub const AFTER_HELP: &str = "\
Examples:
  cargo run --release -- demo                       # bundled model and data, keep 0.4 / 0.2 / 0.1
  factorvit demo --keep 0.5,0.25 --out /tmp/demo
  factorvit demo --data /usr/share/datasets/fashion-mnist   # all 10,000 test images

Defaults ship in the repository: models/fmnist-deit-tiny (a DeiT-Tiny trained on Fashion-MNIST
with timm, f16 weights), data/fmnist-calib.safetensors (512 training images; 256 are used for
calibration) and data/fmnist-test.safetensors (the first 1,000 test images). When the Debian
package dataset-fashion-mnist is installed, the full test set under
/usr/share/datasets/fashion-mnist is used instead. Outputs (the compressed .fvit files, their
JSON and HTML reports — rank allocation, spectra, errors per layer — and demo-results.md) go to
--out.";

/// Where the Debian package `dataset-fashion-mnist` installs the dataset.
const SYSTEM_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Arguments of `factorvit demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model to compress [default: the bundled models/fmnist-deit-tiny]
    #[arg(long, value_name = "DIR|FILE")]
    pub model: Option<PathBuf>,
    /// Calibration images [default: the bundled data/fmnist-calib.safetensors]
    #[arg(long, value_name = "PATH")]
    pub calib: Option<PathBuf>,
    /// Evaluation images [default: /usr/share/datasets/fashion-mnist if installed, else the
    /// bundled data/fmnist-test.safetensors]
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Budgets: fractions of the block-linear parameters kept
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.4, 0.2, 0.1])]
    pub keep: Vec<f64>,
    /// Calibration images used per compression; at least 2
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = values::count_at_least(2))]
    pub calib_count: usize,
    /// Output directory [default: target/demo under the repository]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Minimum time spent timing each model at each thread count (seconds, in [0, 3600])
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS", value_parser = values::float_in(Bound::Closed(0.0), Bound::Closed(3600.0)))]
    pub bench_time: f64,
    /// Skip the latency measurements
    #[arg(long)]
    pub no_bench: bool,
}

/// The repository root holding the bundled model and data: the working directory when it has
/// them, else the source tree this binary was built from.
fn repository_root() -> Option<PathBuf> {
    let bundled = |root: &Path| root.join("models/fmnist-deit-tiny/config.json").is_file();
    let cwd = std::env::current_dir().ok()?;
    if bundled(&cwd) {
        return Some(cwd);
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_path_buf();
    bundled(&source).then_some(source)
}

fn default_path(root: Option<&Path>, relative: &str, option: &str) -> Result<PathBuf, CliError> {
    root.map(|r| r.join(relative)).ok_or_else(|| {
        CliError::msg(format!(
            "the bundled {relative} was not found (run the demo from the repository root, or pass {option})"
        ))
    })
}

/// One row of the demo table.
struct Row {
    label: String,
    path: PathBuf,
    params: usize,
    file_bytes: u64,
    metrics: Metrics,
    bench: Vec<BenchReport>,
    seconds: Option<f64>,
}

/// Numbered progress lines on stderr (unless `--quiet`).
struct Steps<'a> {
    global: &'a Global,
    started: Instant,
    total: usize,
}

impl Steps<'_> {
    fn say(&self, i: usize, what: &str) {
        if !self.global.quiet {
            eprintln!("[{i}/{}, {:.0} s] {what}", self.total, self.started.elapsed().as_secs_f64());
        }
    }
}

/// The demo's inputs and output directory.
struct Paths {
    model: PathBuf,
    calib: PathBuf,
    data: PathBuf,
    out: PathBuf,
}

impl Paths {
    /// The arguments' paths, or the bundled defaults.
    fn resolve(args: &Args) -> Result<Paths, CliError> {
        let root = repository_root();
        let model = match &args.model {
            Some(p) => p.clone(),
            None => default_path(root.as_deref(), "models/fmnist-deit-tiny", "--model")?,
        };
        let calib = match &args.calib {
            Some(p) => p.clone(),
            None => default_path(root.as_deref(), "data/fmnist-calib.safetensors", "--calib")?,
        };
        let data = match &args.data {
            Some(p) => p.clone(),
            None if Path::new(SYSTEM_FASHION_MNIST).join("t10k-images-idx3-ubyte.gz").is_file()
                || Path::new(SYSTEM_FASHION_MNIST).join("t10k-images-idx3-ubyte").is_file() =>
            {
                PathBuf::from(SYSTEM_FASHION_MNIST)
            }
            None => default_path(root.as_deref(), "data/fmnist-test.safetensors", "--data")?,
        };
        let out = match &args.out {
            Some(p) => p.clone(),
            None => match &root {
                Some(r) => r.join("target/demo"),
                None => std::env::temp_dir().join("factorvit-demo"),
            },
        };
        Ok(Paths { model, calib, data, out })
    }
}

impl Row {
    fn new(label: String, path: PathBuf, file_bytes: u64, seconds: Option<f64>) -> Row {
        Row { label, path, params: 0, file_bytes, metrics: Metrics::default(), bench: Vec::new(), seconds }
    }
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    let started = Instant::now();
    if args.keep.is_empty() || args.keep.iter().any(|k| !(k.is_finite() && *k > 0.0 && *k <= 1.0)) {
        return Err(CliError::msg("--keep takes fractions in (0, 1], e.g. --keep 0.4,0.2"));
    }
    let paths = Paths::resolve(args)?;
    let out = &paths.out;
    std::fs::create_dir_all(out).context(|| format!("cannot create {}", out.display()))?;
    let steps = Steps { global, started, total: args.keep.len() + 3 };
    configure_threads(0);

    let mut rows = vec![write_dense(&paths, &steps)?];
    for (i, keep) in args.keep.iter().enumerate() {
        rows.push(compress(args, &paths, &rows[0].path, *keep, &steps, i + 2)?);
    }
    steps.say(steps.total - 1, &format!("evaluate every model on {}", paths.data.display()));
    evaluate(&mut rows, &paths.data, global)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let thread_counts: Vec<usize> = if cores > 1 { vec![1, cores] } else { vec![1] };
    steps.say(
        steps.total,
        &if args.no_bench {
            "model sizes (latency skipped: --no-bench)".to_string()
        } else {
            format!("latency, batch 1, {} thread(s), >= {} s per model", join(&thread_counts), args.bench_time)
        },
    );
    benchmark(&mut rows, args, &thread_counts, global)?;

    let n_eval = rows[0].metrics.n;
    let table = render_table(&rows, &thread_counts, !args.no_bench);
    let header = format!(
        "factorvit demo: {} compressed with {} calibration images from {}, evaluated on {} images of {}",
        paths.model.display(),
        args.calib_count,
        paths.calib.display(),
        n_eval,
        paths.data.display()
    );
    let backend = rows[0].bench.first().map_or("?", |b| b.backend.as_str()).to_string();
    let footer = format!(
        "weights/inference: bytes of weights read per image (batch 1); latency: median of >= 20 runs per thread count, \
         kernels: {backend}; agreement: same top-1 class as the dense model. Total {:.0} s. Files in {} (open keep-*.report.html for the per-layer ranks, spectra and errors).",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    println!("\n{header}\n\n{table}\n{footer}");
    let md = out.join("demo-results.md");
    writer::write_atomic(&md, format!("{header}\n\n{table}\n{footer}\n").as_bytes())
        .context(|| format!("cannot write {}", md.display()))?;
    Ok(())
}

/// Step 1: the source model as a factorvit file, `OUT/dense.fvit`.
fn write_dense(paths: &Paths, steps: &Steps<'_>) -> Result<Row, CliError> {
    let dense_path = paths.out.join("dense.fvit");
    steps.say(1, &format!("dense model: {} -> {}", paths.model.display(), dense_path.display()));
    let spec = load_spec(&paths.model, steps.global)?;
    let bytes = writer::to_bytes(&spec).context(|| format!("cannot convert {}", paths.model.display()))?;
    writer::write_atomic(&dense_path, &bytes).context(|| format!("cannot write {}", dense_path.display()))?;
    Ok(Row::new("dense".into(), dense_path, bytes.len() as u64, None))
}

/// Step `step`: the compression job at `keep` (the `compress` command's defaults), with its
/// HTML report.
fn compress(
    args: &Args,
    paths: &Paths,
    dense_path: &Path,
    keep: f64,
    steps: &Steps<'_>,
    step: usize,
) -> Result<Row, CliError> {
    let output = paths.out.join(format!("keep-{keep}.fvit"));
    steps.say(step, &format!("compress, keep {keep} of the block-linear parameters -> {}", output.display()));
    let global = steps.global;
    let job = CompressJob {
        report: Some(paths.out.join(format!("keep-{keep}.report.html"))),
        options: PipelineOptions { progress: super::progress::method(global), ..PipelineOptions::default() },
        ..CompressJob::new(
            dense_path,
            CalibrationSource { count: args.calib_count, ..CalibrationSource::new(&paths.calib) },
            Budget::Keep(keep),
            &output,
        )
    };
    let outcome = job.run(&mut global.progress()).map_err(compress_cmd::job_error)?;
    Ok(Row::new(format!("keep {keep}"), output, outcome.file_bytes as u64, Some(outcome.seconds)))
}

/// Top-1 and agreement with the dense model (`rows[0]`) of every row on the evaluation images.
fn evaluate(rows: &mut [Row], data: &Path, global: &Global) -> Result<(), CliError> {
    let dense = open_model(&rows[0].path, global)?;
    let labels = (!dense.labels().is_empty()).then(|| dense.labels().to_vec());
    let eval_data = data::load_dataset(
        data,
        dense.preprocess(),
        &LoadOptions { split: Split::Test, class_names: labels, ..LoadOptions::default() },
    )
    .context(|| format!("cannot load evaluation data {}", data.display()))?;
    let run = |model: &factorvit::Model<'_>, what: &str| -> Result<eval::ModelOutputs, CliError> {
        let pb = super::progress::bar(global, eval_data.n, what);
        let out = eval::run_model(
            model,
            &eval_data.pixel_values,
            eval_data.n,
            [eval_data.h, eval_data.w],
            eval::RunOptions { batch: 32, threads: 0, keep_tokens: false },
            |k| pb.inc(k as u64),
        )
        .map_err(|e| CliError::new(format!("cannot run {what}"), e));
        pb.finish_and_clear();
        out
    };
    let reference = run(&dense, "dense")?;
    drop(dense);
    for (i, row) in rows.iter_mut().enumerate() {
        let outputs = if i == 0 {
            None
        } else {
            let model = open_model(&row.path, global)?;
            Some(run(&model, &row.label)?)
        };
        let outputs = outputs.as_ref().unwrap_or(&reference);
        row.metrics = eval::metrics(outputs, eval_data.labels.as_deref(), Some(&reference))
            .map_err(|e| CliError::new("cannot compute metrics", e))?;
    }
    Ok(())
}

/// Parameters and sizes of every row, and latency at each thread count unless `--no-bench`.
fn benchmark(rows: &mut [Row], args: &Args, thread_counts: &[usize], global: &Global) -> Result<(), CliError> {
    for row in rows {
        let model = open_model(&row.path, global)?;
        row.params = model.params();
        if !args.no_bench {
            for &threads in thread_counts {
                let opts = BenchOptions {
                    threads,
                    batch: 1,
                    min_runs: 20,
                    min_time: Duration::from_secs_f64(args.bench_time),
                    warmup: 5,
                    profile: false,
                };
                let report = bench_model(&row.label, &model, row.file_bytes, &opts)
                    .context(|| format!("cannot benchmark {}", row.path.display()))?;
                row.bench.push(report);
            }
        } else {
            // Sizes only: one report without timing.
            let opts =
                BenchOptions { threads: 1, batch: 1, min_runs: 1, min_time: Duration::ZERO, warmup: 0, profile: false };
            row.bench.push(
                bench_model(&row.label, &model, row.file_bytes, &opts)
                    .context(|| format!("cannot run {}", row.path.display()))?,
            );
        }
    }
    Ok(())
}

fn join(v: &[usize]) -> String {
    v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" and ")
}

fn percent(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{:.2} %", 100.0 * v))
}

fn render_table(rows: &[Row], threads: &[usize], timed: bool) -> String {
    let mut header =
        vec!["model".to_string(), "params".into(), "file".into(), "weights/inference".into(), "vs dense".into()];
    if timed {
        for t in threads {
            header.push(format!("latency {t}T"));
        }
    }
    header.extend(["top-1".into(), "agreement".into(), "compress time".into()]);
    let dense_bytes = rows[0].bench.first().map_or(1, |b| b.weight_bytes.max(1));
    let mut lines = vec![header];
    for r in rows {
        let weight_bytes = r.bench.first().map_or(0, |b| b.weight_bytes);
        let mut line = vec![
            r.label.clone(),
            thousands(r.params),
            human_bytes(r.file_bytes),
            human_bytes(weight_bytes as u64),
            format!("{:.2}x", weight_bytes as f64 / dense_bytes as f64),
        ];
        if timed {
            for b in &r.bench {
                line.push(format!("{:.2} ms", b.median_ms));
            }
        }
        line.push(percent(r.metrics.top1));
        line.push(if r.label == "dense" { "-".into() } else { percent(r.metrics.agreement) });
        line.push(r.seconds.map_or_else(|| "-".into(), |s| format!("{s:.0} s")));
        lines.push(line);
    }
    markdown(&lines)
}

/// A markdown table with aligned columns (readable in a terminal, renders on GitHub).
fn markdown(lines: &[Vec<String>]) -> String {
    let cols = lines[0].len();
    let width: Vec<usize> =
        (0..cols).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0).max(3)).collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        out.push('|');
        for (c, cell) in line.iter().enumerate() {
            if c == 0 {
                out.push_str(&format!(" {cell:<w$} |", w = width[c]));
            } else {
                out.push_str(&format!(" {cell:>w$} |", w = width[c]));
            }
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for (c, w) in width.iter().enumerate() {
                out.push_str(if c == 0 { " :" } else { " " });
                out.push_str(&"-".repeat(w - 1));
                out.push_str(if c == 0 { " |" } else { ": |" });
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_table_aligns_columns() {
        let t = markdown(&[vec!["model".into(), "x".into()], vec!["dense".into(), "12.5".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "| model |    x |");
        assert_eq!(lines[1], "| :---- | ---: |");
        assert_eq!(lines[2], "| dense | 12.5 |");
        assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()));
    }
}
