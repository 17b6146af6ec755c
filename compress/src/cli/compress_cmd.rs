//! `factorvit compress`: activation-aware low-rank (+ sparse) compression of a model with
//! calibration images, under one global budget.

use std::path::{Path, PathBuf};
use std::time::Instant;

use factorvit::safetensors::DType;
use factorvit_compress::checkpoint::ModelSpec;
use factorvit_compress::data::{self, LoadOptions, Split};
use factorvit_compress::method::compensate::CompensationOptions;
use factorvit_compress::method::export;
use factorvit_compress::method::pipeline::{
    self, Calibration, FactorMethod, PipelineOptions, RankPolicy, SparseLayers, DEFAULT_SENSITIVITY_IMAGES,
    DEFAULT_SENSITIVITY_WORK_CAP,
};
use factorvit_compress::report_html::{self, ReportFormat, ReportInfo};
use factorvit_compress::writer;

use super::model::{human_bytes, load_spec, thousands, DtypeArg};
use super::values::{self, Bound};
use super::{CliError, Context, Global};

pub const AFTER_HELP: &str = "\
Examples:
  factorvit compress --model fmnist-deit-tiny --calib /usr/share/datasets/fashion-mnist --keep 0.4 -o tiny-40.fvit
  factorvit compress --model fmnist-deit-small --calib fmnist-calib.safetensors --match-model fmnist-deit-tiny -o small-as-tiny.fvit
  factorvit compress --model dinov2-small --calib ./photos --crops-per-image 16 --keep 0.5 -o dinov2-50.fvit
  factorvit compress --model models/fmnist-deit-tiny --calib data/fmnist-calib.safetensors --keep 0.25 -o k25.fvit --report k25.html

Budget (exactly one): --keep F keeps fraction F of the block-linear weights; --max-params N and
--match-model DIR bound the total parameter count of the output (DIR: another checkpoint);
--max-bytes N bounds the bytes of all weight tensors. Patch embedding and heads stay dense.
The per-layer report is printed and written to OUTPUT.report.json. --report FILE.html also draws
it as one offline HTML page (rank per layer across depth, each layer's activation-weighted
singular values with the chosen rank, parameters and error per layer before/after compensation);
--report FILE.svg writes the same figures as FILE-ranks.svg, FILE-spectra.svg, FILE-params.svg
and FILE-errors.svg next to it.

Memory: the calibration samples are held as f32, images x max(1, --crops-per-image) x C x H x W
x 4 bytes; above 16 GiB the command stops before allocating them (lower --calib-count,
--crops-per-image or --image-size).";

/// Factorisation method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// Plain truncated SVD of the weights (no data)
    Svd,
    /// SVD in the layer's input metric (activation-aware, bias corrected)
    Whitened,
}

/// Layers allowed a sparse term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SparseLayersArg {
    /// Only mlp.fc2
    Fc2,
    /// Every block linear
    All,
}

/// Arguments of `factorvit compress`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("budget").required(true).args(["keep", "max_params", "max_bytes", "match_model"])))]
pub struct Args {
    /// Checkpoint directory or .fvit file
    #[arg(long, value_name = "DIR|FILE")]
    pub model: PathBuf,
    /// Calibration images: image folder, safetensors (pixel_values) or Fashion-MNIST idx folder
    #[arg(long, value_name = "PATH")]
    pub calib: PathBuf,
    /// Output file
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Pictures of the run: FILE.html (one offline page) or FILE.svg (one SVG file per figure)
    #[arg(long, value_name = "FILE", value_parser = parse_report_path)]
    pub report: Option<PathBuf>,
    /// Fraction of block-linear parameters to keep
    #[arg(long)]
    pub keep: Option<f64>,
    /// Total parameters of the output model
    #[arg(long, value_name = "N")]
    pub max_params: Option<usize>,
    /// Total bytes of the output model's weight tensors
    #[arg(long, value_name = "N")]
    pub max_bytes: Option<usize>,
    /// Total parameters of another checkpoint (directory or .fvit)
    #[arg(long, value_name = "DIR")]
    pub match_model: Option<PathBuf>,
    /// Calibration images (a seeded random subset of the source); at least 2
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = values::count_at_least(2))]
    pub calib_count: usize,
    /// Random crops per calibration image (for a few photos), 0..=256; 0 = one eval-transformed
    /// image each
    #[arg(long, default_value_t = 0, value_name = "K", value_parser = values::count_in(0, MAX_CROPS_PER_IMAGE))]
    pub crops_per_image: usize,
    /// Input size (square) for calibration and in the output's preprocessing, a multiple of the
    /// patch size up to 8192 [default: the model's]
    #[arg(long, value_name = "N")]
    pub image_size: Option<usize>,
    /// Split of an idx calibration folder
    #[arg(long, value_enum, default_value_t = SplitArg::Train)]
    pub calib_split: SplitArg,
    /// Storage dtype of every float tensor [default: the dtype of the source's block weights]
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Fraction of an eligible layer's low-rank parameters traded for sparse entries, in [0, 1)
    /// (0 = off)
    #[arg(long, default_value_t = 0.0, value_name = "F", value_parser = values::fraction_below_one())]
    pub sparse: f64,
    /// Layers eligible for the sparse term
    #[arg(long, value_enum, default_value_t = SparseLayersArg::Fc2)]
    pub sparse_layers: SparseLayersArg,
    /// Extra ranks per factored layer for a low-rank residual (merged into U,V)
    #[arg(long, default_value_t = 0)]
    pub residual_rank: usize,
    /// Seed of the calibration subset, crops and validation split
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip layer-wise error compensation
    #[arg(long)]
    pub no_compensation: bool,
    /// Compensate attn.proj / mlp.fc2 towards their own outputs only, not the original block
    /// outputs (by default they also cancel the residual stream's upstream error where their
    /// inputs predict it; this flag is for ablations)
    #[arg(long)]
    pub no_residual_target: bool,
    /// Measure errors of attn.proj / mlp.fc2 before LayerScale instead of after it (ablation)
    #[arg(long)]
    pub no_layer_scale: bool,
    /// Weight of the class (and distillation) token in the activation statistics, relative to
    /// one patch token, in [1, 1000000]
    #[arg(long, default_value_t = 1.0, value_name = "W", value_parser = values::float_in(Bound::Closed(1.0), Bound::Closed(MAX_PREFIX_TOKEN_WEIGHT)))]
    pub prefix_token_weight: f64,
    /// Factorisation method
    #[arg(long, value_enum, default_value_t = MethodArg::Whitened)]
    pub method: MethodArg,
    /// Same parameter fraction in every layer instead of the greedy allocation
    #[arg(long)]
    pub uniform_ranks: bool,
    /// Greedy allocation on normalised errors without measured sensitivities
    #[arg(long)]
    pub no_sensitivity: bool,
    /// Calibration images used to measure layer sensitivities (at least 1; --no-sensitivity skips
    /// the measurement) [default: 32, fewer when probing would cost more than 4 dense passes
    /// over the calibration set, at least 8]
    #[arg(long, value_name = "N", value_parser = values::count_at_least(1))]
    pub sensitivity_images: Option<usize>,
    /// Fraction of calibration images held out for validation, in [0, 1)
    #[arg(long, default_value_t = 0.2, value_name = "F", value_parser = values::fraction_below_one())]
    pub val_fraction: f64,
    /// Allocate ranks on validation-split errors (more robust with few calibration photos)
    #[arg(long)]
    pub allocate_on_validation: bool,
    /// Ridge grid of the compensation (fractions of the mean input eigenvalue; finite, >= 0)
    #[arg(long, value_delimiter = ',', value_name = "R,...", default_values_t = vec![1e-4, 1e-3, 1e-2, 1e-1], value_parser = values::non_negative())]
    pub ridge: Vec<f64>,
    /// Ridge grid of the decomposition's input metric (chosen on validation; finite, >= 0)
    #[arg(long, value_delimiter = ',', value_name = "R,...", default_values_t = vec![0.0], value_parser = values::non_negative())]
    pub whitening_ridge: Vec<f64>,
    /// Adam steps after the closed-form compensation (early stopped on validation)
    #[arg(long, default_value_t = 0)]
    pub adam_steps: usize,
    /// Images per batch, 1..=4096
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = values::batch())]
    pub batch: usize,
    /// Worker threads, 0..=64 (0 = all cores)
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = values::threads())]
    pub threads: usize,
}

/// Largest `--crops-per-image`.
pub const MAX_CROPS_PER_IMAGE: usize = 256;

/// Largest `--prefix-token-weight`.
const MAX_PREFIX_TOKEN_WEIGHT: f64 = 1e6;

/// `--report`: a path ending in .html, .htm or .svg.
fn parse_report_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    ReportFormat::from_path(&p).map(|_| p).map_err(|e| e.to_string())
}

/// Split argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    /// Training images
    Train,
    /// Test images
    Test,
}

impl SplitArg {
    /// The data module's split.
    pub fn split(self) -> Split {
        match self {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

/// Sets the thread count of rayon's global pool and of faer (once per process).
pub fn configure_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
    let n = if threads == 0 { rayon::current_num_threads() } else { threads };
    faer::set_global_parallelism(if n <= 1 { faer::Par::Seq } else { faer::Par::rayon(n) });
}

/// Names of the block linear layers of a spec, with `(m, n)`.
fn block_linears(spec: &ModelSpec) -> Vec<(String, usize, usize)> {
    let c = &spec.config;
    let mut out = Vec::new();
    for i in 0..c.depth {
        out.push((format!("blocks.{i}.attn.qkv"), 3 * c.embed_dim, c.embed_dim));
        out.push((format!("blocks.{i}.attn.proj"), c.embed_dim, c.embed_dim));
        out.push((format!("blocks.{i}.mlp.fc1"), c.mlp_hidden, c.embed_dim));
        out.push((format!("blocks.{i}.mlp.fc2"), c.embed_dim, c.mlp_hidden));
    }
    out
}

/// Budget in block-linear parameter units (sparse entries charged with their index bytes).
fn resolve_budget(
    args: &Args,
    model: &factorvit::Model<'_>,
    spec: &ModelSpec,
    dtype: DType,
    global: &Global,
) -> Result<usize, CliError> {
    let dense_block: usize = block_linears(spec).iter().map(|(_, m, n)| m * n).sum();
    let other_params = model.params() - model.block_linear_params();
    let total_budget = |total: usize, what: &str| -> Result<usize, CliError> {
        total.checked_sub(other_params).ok_or_else(|| {
            CliError::msg(format!(
                "{what} = {} is below the {} parameters outside the block linears (embeddings, norms, heads)",
                thousands(total),
                thousands(other_params)
            ))
        })
    };
    let budget = if let Some(keep) = args.keep {
        if !(keep > 0.0 && keep <= 1.0) {
            return Err(CliError::msg(format!("--keep {keep} must be in (0, 1]")));
        }
        (keep * dense_block as f64).floor() as usize
    } else if let Some(n) = args.max_params {
        total_budget(n, "--max-params")?
    } else if let Some(dir) = &args.match_model {
        let other = super::model::open_model(dir, global)?;
        total_budget(other.params(), &format!("the parameter count of {}", dir.display()))?
    } else if let Some(bytes) = args.max_bytes {
        let elem = dtype.size();
        let block_bytes: usize = block_linears(spec)
            .iter()
            .map(|(name, _, _)| {
                spec.tensors.get(&format!("{name}.weight")).map_or(0, |t| t.numel().unwrap_or(0) * elem)
            })
            .sum();
        let fixed = spec
            .tensors
            .values()
            .map(|t| t.numel().unwrap_or(0) * if t.is_float() { elem } else { t.dtype.size() })
            .sum::<usize>()
            - block_bytes;
        bytes.checked_sub(fixed).map(|b| b / elem).ok_or_else(|| {
            CliError::msg(format!("--max-bytes {bytes} is below the {fixed} bytes outside the block linears"))
        })?
    } else {
        return Err(CliError::msg("one of --keep, --max-params, --max-bytes, --match-model is required"));
    };
    Ok(budget.min(dense_block))
}

/// Pipeline options from the arguments.
pub fn pipeline_options(args: &Args, budget: usize, dtype: DType, _global: &Global) -> PipelineOptions {
    let ranks = if args.uniform_ranks {
        RankPolicy::Uniform
    } else if args.no_sensitivity {
        RankPolicy::Greedy
    } else {
        RankPolicy::GreedySensitivity
    };
    PipelineOptions {
        budget_params: budget,
        method: match args.method {
            MethodArg::Svd => FactorMethod::Svd,
            MethodArg::Whitened => FactorMethod::Whitened,
        },
        ranks,
        sparse_fraction: args.sparse,
        sparse_layers: match args.sparse_layers {
            SparseLayersArg::Fc2 => SparseLayers::Fc2,
            SparseLayersArg::All => SparseLayers::All,
        },
        sparse_entry_cost: (dtype.size() + 2) as f64 / dtype.size() as f64,
        sparse_row_cost: 4.0 / dtype.size() as f64,
        residual_rank: args.residual_rank,
        compensation: !args.no_compensation,
        layer_scale_aware: !args.no_layer_scale,
        prefix_token_weight: args.prefix_token_weight,
        residual_target: !args.no_residual_target,
        compensation_options: CompensationOptions {
            ridge_grid: args.ridge.clone(),
            adam_steps: args.adam_steps,
            ..CompensationOptions::default()
        },
        whitening_ridge: args.whitening_ridge.clone(),
        validation_fraction: args.val_fraction,
        allocate_on_validation: args.allocate_on_validation,
        sensitivity_images: args.sensitivity_images.unwrap_or(DEFAULT_SENSITIVITY_IMAGES),
        // An explicit count is used as given; the default is capped by the probes' cost.
        sensitivity_work_cap: if args.sensitivity_images.is_some() { None } else { Some(DEFAULT_SENSITIVITY_WORK_CAP) },
        group_size: args.crops_per_image.max(1),
        batch: args.batch,
        threads: args.threads,
        seed: args.seed,
        progress: pipeline::Progress::none(),
        ..PipelineOptions::default()
    }
}

/// Loads the calibration images for a model.
pub fn load_calibration(
    path: &Path,
    model: &factorvit::Model<'_>,
    opts: LoadOptions,
) -> Result<data::Dataset, CliError> {
    data::load_dataset(path, model.preprocess(), &opts)
        .context(|| format!("cannot load calibration data {}", path.display()))
}

/// What [`compress`] wrote.
pub struct Outcome {
    /// The per-layer report.
    pub report: factorvit_compress::method::report::Report,
    /// Parameters of the output model.
    pub params: usize,
    /// Weight bytes of the output model (read once per inference).
    pub weight_bytes: usize,
    /// Size of the written file.
    pub file_bytes: usize,
    /// Where the JSON report was written.
    pub report_path: PathBuf,
    /// Files written for `--report` (empty without it).
    pub report_files: Vec<PathBuf>,
    /// Wall time of the whole command.
    pub seconds: f64,
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    let out = compress(args, global)?;
    global.say(&out.report.table());
    global.say(&format!(
        "wrote {}: {} parameters, {} of weights, file {} ({:.1} s); report {}",
        args.output.display(),
        thousands(out.params),
        human_bytes(out.weight_bytes),
        human_bytes(out.file_bytes),
        out.seconds,
        out.report_path.display()
    ));
    for f in &out.report_files {
        global.say(&format!("wrote {}", f.display()));
    }
    Ok(())
}

/// Compresses `args.model` into `args.output` (atomically) and writes the JSON report next to it;
/// shows progress bars unless `--quiet`, prints nothing else.
pub fn compress(args: &Args, global: &Global) -> Result<Outcome, CliError> {
    let started = Instant::now();
    configure_threads(args.threads);
    let mut spec = load_spec(&args.model, global)?;
    if let Some(size) = args.image_size {
        let patch = spec.config.patch_size;
        if size < patch || size > 8192 || size.checked_rem(patch) != Some(0) {
            return Err(CliError::msg(format!(
                "--image-size {size} is out of range: must be a multiple of the model's patch size {patch}, \
                 from {patch} to 8192"
            )));
        }
        spec.preprocess.input_size = [spec.preprocess.input_size[0], size, size];
    }
    let dtype = args.dtype.map_or_else(|| export::block_dtype(&spec), DtypeArg::dtype);
    let bytes = writer::to_bytes(&spec).context(|| format!("cannot convert {}", args.model.display()))?;
    let source_file_bytes = bytes.len();
    let model =
        factorvit::Model::from_vec(bytes).context(|| format!("the runtime rejects {}", args.model.display()))?;
    let budget = resolve_budget(args, &model, &spec, dtype, global)?;
    let calib = load_calibration(
        &args.calib,
        &model,
        LoadOptions {
            split: args.calib_split.split(),
            limit: Some(args.calib_count),
            random_subset: true,
            seed: args.seed,
            crops_per_image: args.crops_per_image,
            ..LoadOptions::default()
        },
    )?;
    if calib.n < 2 {
        return Err(CliError::msg(format!(
            "{} holds {} calibration image(s): at least 2 are needed",
            args.calib.display(),
            calib.n
        )));
    }
    let opts = pipeline_options(args, budget, dtype, global);
    let (source_params, source_weight_bytes) = (model.params(), model.weight_bytes());
    let calibration = Calibration { pixels: &calib.pixel_values, count: calib.n, image_size: [calib.h, calib.w] };
    let compressed =
        pipeline::compress_model(&model, &calibration, &opts).map_err(|e| CliError::new("compression failed", e))?;
    drop(model);

    export::apply_to_spec(&mut spec, &compressed, dtype)
        .context(|| "cannot store the compressed layers".to_string())?;
    spec.cast_floats(dtype).context(|| format!("cannot store the model as {}", dtype.name()))?;
    let (before, after, cost) = compressed.report.totals();
    let summary = serde_json::json!({
        "method": format!("{:?}", opts.method),
        "ranks": format!("{:?}", opts.ranks),
        "budget_params": budget,
        "block_params_before": before,
        "block_params_after": after,
        "budget_charged": cost,
        "calibration_images": calib.n,
        "compensation": opts.compensation,
        "seed": args.seed,
    });
    spec.metadata.insert("compression".into(), summary.to_string());
    let bytes = writer::to_bytes(&spec).context(|| "cannot serialise the compressed model".to_string())?;
    let reloaded = factorvit::Model::from_bytes(&bytes)
        .context(|| "the runtime rejects the compressed model (a bug)".to_string())?;
    let (params, weight_bytes) = (reloaded.params(), reloaded.weight_bytes());
    drop(reloaded);
    writer::write_atomic(&args.output, &bytes).context(|| format!("cannot write {}", args.output.display()))?;
    let report_path = PathBuf::from(format!("{}.report.json", args.output.display()));
    writer::write_atomic(&report_path, compressed.report.to_json().as_bytes())
        .context(|| format!("cannot write {}", report_path.display()))?;
    let report_files = match &args.report {
        Some(path) => {
            let info = ReportInfo {
                model: Some(args.model.display().to_string()),
                output: Some(args.output.display().to_string()),
                file_bytes: Some(bytes.len() as u64),
                source_file_bytes: Some(source_file_bytes as u64),
                model_params: Some((source_params, params)),
                weight_bytes: Some((source_weight_bytes, weight_bytes)),
                total_seconds: Some(started.elapsed().as_secs_f64()),
                extra: vec![
                    ("method".into(), format!("{:?}, ranks {:?}", opts.method, opts.ranks)),
                    ("dtype".into(), dtype.name().to_string()),
                    ("calibration data".into(), args.calib.display().to_string()),
                ],
                ..ReportInfo::default()
            };
            report_html::write_report(&compressed.report, &info, path)
                .context(|| format!("cannot write the report {}", path.display()))?
        }
        None => Vec::new(),
    };
    Ok(Outcome {
        report: compressed.report,
        params,
        weight_bytes,
        file_bytes: bytes.len(),
        report_path,
        report_files,
        seconds: started.elapsed().as_secs_f64(),
    })
}
