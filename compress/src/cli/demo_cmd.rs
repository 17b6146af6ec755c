//! `factorvit demo`: the project in one command. Compresses the bundled Fashion-MNIST DeiT-Tiny
//! at a few budgets, evaluates every model on held-out images, benchmarks them and prints one
//! table (parameters, file size, weight bytes read per inference, latency with one and with all
//! threads, top-1, agreement with the dense model).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use factorvit_compress::bench::{bench_model, BenchOptions, BenchReport};
use factorvit_compress::data::{self, LoadOptions, Split};
use factorvit_compress::method::eval::{self, Metrics};
use factorvit_compress::writer;

use super::compress_cmd::{self, configure_threads};
use super::eval_cmd;
use super::model::{human_bytes, load_spec, open_model, thousands};
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

fn step(global: &Global, started: Instant, i: usize, n: usize, what: &str) {
    if !global.quiet {
        eprintln!("[{i}/{n}, {:.0} s] {what}", started.elapsed().as_secs_f64());
    }
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    let started = Instant::now();
    if args.keep.is_empty() || args.keep.iter().any(|k| !(k.is_finite() && *k > 0.0 && *k <= 1.0)) {
        return Err(CliError::msg("--keep takes fractions in (0, 1], e.g. --keep 0.4,0.2"));
    }
    let root = repository_root();
    let model_path = match &args.model {
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
    std::fs::create_dir_all(&out).context(|| format!("cannot create {}", out.display()))?;
    let steps = args.keep.len() + 3;
    configure_threads(0);

    step(
        global,
        started,
        1,
        steps,
        &format!("dense model: {} -> {}", model_path.display(), out.join("dense.fvit").display()),
    );
    let spec = load_spec(&model_path, global)?;
    let dense_path = out.join("dense.fvit");
    let bytes = writer::to_bytes(&spec).context(|| format!("cannot convert {}", model_path.display()))?;
    writer::write_atomic(&dense_path, &bytes).context(|| format!("cannot write {}", dense_path.display()))?;
    let mut rows = vec![Row {
        label: "dense".into(),
        path: dense_path.clone(),
        params: 0,
        file_bytes: bytes.len() as u64,
        metrics: Metrics::default(),
        bench: Vec::new(),
        seconds: None,
    }];
    drop(bytes);

    for (i, keep) in args.keep.iter().enumerate() {
        let output = out.join(format!("keep-{keep}.fvit"));
        step(
            global,
            started,
            i + 2,
            steps,
            &format!("compress, keep {keep} of the block-linear parameters -> {}", output.display()),
        );
        let argv: Vec<String> = vec![
            "compress".into(),
            "--model".into(),
            dense_path.display().to_string(),
            "--calib".into(),
            calib.display().to_string(),
            "--calib-count".into(),
            args.calib_count.to_string(),
            "--keep".into(),
            keep.to_string(),
            "-o".into(),
            output.display().to_string(),
            "--report".into(),
            out.join(format!("keep-{keep}.report.html")).display().to_string(),
        ];
        let parsed = CompressArgs::try_parse_from(&argv).map_err(|e| {
            // clap's message without its `error: ` prefix and usage hint.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
            CliError::msg(format!("invalid compress arguments: {first}"))
        })?;
        let outcome = compress_cmd::compress(&parsed.args, global)?;
        rows.push(Row {
            label: format!("keep {keep}"),
            path: output,
            params: 0,
            file_bytes: outcome.file_bytes as u64,
            metrics: Metrics::default(),
            bench: Vec::new(),
            seconds: Some(outcome.seconds),
        });
    }

    step(global, started, steps - 1, steps, &format!("evaluate every model on {}", data.display()));
    let dense = open_model(&dense_path, global)?;
    let labels = (!dense.labels().is_empty()).then(|| dense.labels().to_vec());
    let eval_data = data::load_dataset(
        &data,
        dense.preprocess(),
        &LoadOptions { split: Split::Test, class_names: labels, ..LoadOptions::default() },
    )
    .context(|| format!("cannot load evaluation data {}", data.display()))?;
    let run = |model: &factorvit::Model<'_>, what: &str| -> Result<eval::ModelOutputs, CliError> {
        let pb = eval_cmd::progress(global, eval_data.n, what);
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

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let thread_counts: Vec<usize> = if cores > 1 { vec![1, cores] } else { vec![1] };
    step(
        global,
        started,
        steps,
        steps,
        &if args.no_bench {
            "model sizes (latency skipped: --no-bench)".to_string()
        } else {
            format!("latency, batch 1, {} thread(s), >= {} s per model", join(&thread_counts), args.bench_time)
        },
    );
    for row in &mut rows {
        let model = open_model(&row.path, global)?;
        row.params = model.params();
        if !args.no_bench {
            for &threads in &thread_counts {
                let opts = BenchOptions {
                    threads,
                    batch: 1,
                    min_runs: 20,
                    min_time: Duration::from_secs_f64(args.bench_time),
                    warmup: 5,
                };
                let report = bench_model(&row.label, &model, row.file_bytes, &opts)
                    .context(|| format!("cannot benchmark {}", row.path.display()))?;
                row.bench.push(report);
            }
        } else {
            // Sizes only: one report without timing.
            let opts = BenchOptions { threads: 1, batch: 1, min_runs: 1, min_time: Duration::ZERO, warmup: 0 };
            row.bench.push(
                bench_model(&row.label, &model, row.file_bytes, &opts)
                    .context(|| format!("cannot run {}", row.path.display()))?,
            );
        }
    }

    let n_eval = rows[0].metrics.n;
    let table = render_table(&rows, &thread_counts, !args.no_bench);
    let header = format!(
        "factorvit demo: {} compressed with {} calibration images from {}, evaluated on {} images of {}",
        model_path.display(),
        args.calib_count,
        calib.display(),
        n_eval,
        data.display()
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

/// `factorvit compress` arguments parsed from a command line built by the demo.
#[derive(Debug, Parser)]
struct CompressArgs {
    #[command(flatten)]
    args: compress_cmd::Args,
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
            human_bytes(r.file_bytes as usize),
            human_bytes(weight_bytes),
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
