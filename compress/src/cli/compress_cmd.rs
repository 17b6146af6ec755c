//! `factorvit compress`: activation-aware low-rank (+ sparse) compression of a model with
//! calibration images, under one global budget.

use std::path::PathBuf;

use factorvit_compress::data::{DataError, Split};
use factorvit_compress::job::{Budget, BudgetError, CalibrationSource, CompressJob, JobError};
use factorvit_compress::method::compensate::CompensationOptions;
use factorvit_compress::method::pipeline::{
    FactorMethod, PipelineOptions, RankPolicy, SparseLayers, DEFAULT_SENSITIVITY_IMAGES, DEFAULT_SENSITIVITY_WORK_CAP,
};
use factorvit_compress::method::quantise::{QuantOptions, UScales};
use factorvit_compress::report::html::ReportFormat;
use factorvit_compress::report::units::{human_bytes, thousands};

use super::model::DtypeArg;
use super::values::{self, Bound};
use super::{CliError, Global};

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
    /// patch size up to 8192 [default: that of calibration pixel_values of another size the
    /// model takes, else the model's]
    #[arg(long, value_name = "N")]
    pub image_size: Option<usize>,
    /// Split of an idx calibration folder
    #[arg(long, value_enum, default_value_t = SplitArg::Train)]
    pub calib_split: SplitArg,
    /// Storage dtype of every float tensor [default: the dtype of the source's block weights]
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// With --dtype int8: how the low-rank factor U is scaled (column: per rank index, folded
    /// into V's row scales; row: per output row; row-balanced: per row after balancing U and V)
    #[arg(long, value_enum, default_value_t = UScalesArg::Column)]
    pub int8_u_scales: UScalesArg,
    /// With --dtype int8: plain absmax scales instead of the activation-aware clip search
    #[arg(long)]
    pub int8_absmax: bool,
    /// With --dtype int8: do not add the mean output error of quantisation to the bias
    #[arg(long)]
    pub int8_no_bias_correction: bool,
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
    /// What the compensation's ridge pulls the weights towards: `original` (the layer's dense
    /// weights, so input directions the calibration images hardly excite keep their response) or
    /// `zero` (plain ridge regression)
    #[arg(long, value_enum, default_value_t = RidgePriorArg::Original)]
    pub ridge_prior: RidgePriorArg,
    /// Images per batch, 1..=4096
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = values::batch())]
    pub batch: usize,
    /// Worker threads, 0..=64 (0 = all cores)
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = values::threads())]
    pub threads: usize,
}

/// `--ridge-prior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RidgePriorArg {
    /// Towards the original layer's weights.
    Original,
    /// Towards zero.
    Zero,
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

/// The job's budget from the arguments (clap makes exactly one of them present).
fn budget(args: &Args) -> Result<Budget, CliError> {
    match (args.keep, args.max_params, args.max_bytes, &args.match_model) {
        (Some(keep), ..) => Ok(Budget::Keep(keep)),
        (_, Some(n), ..) => Ok(Budget::MaxParams(n)),
        (.., Some(dir)) => Ok(Budget::MatchModel(dir.clone())),
        (_, _, Some(bytes), _) => Ok(Budget::MaxBytes(bytes)),
        _ => Err(CliError::msg("one of --keep, --max-params, --max-bytes, --match-model is required")),
    }
}

/// The method's options from the arguments (the job fills in the budget, the sparse costs of
/// the dtype and the crop group size).
pub fn pipeline_options(args: &Args, global: &Global) -> PipelineOptions {
    let ranks = if args.uniform_ranks {
        RankPolicy::Uniform
    } else if args.no_sensitivity {
        RankPolicy::Greedy
    } else {
        RankPolicy::GreedySensitivity
    };
    PipelineOptions {
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
        residual_rank: args.residual_rank,
        compensation: !args.no_compensation,
        layer_scale_aware: !args.no_layer_scale,
        prefix_token_weight: args.prefix_token_weight,
        residual_target: !args.no_residual_target,
        compensation_options: CompensationOptions {
            ridge_grid: args.ridge.clone(),
            adam_steps: args.adam_steps,
            ridge_towards_original: args.ridge_prior == RidgePriorArg::Original,
            ..CompensationOptions::default()
        },
        whitening_ridge: args.whitening_ridge.clone(),
        validation_fraction: args.val_fraction,
        allocate_on_validation: args.allocate_on_validation,
        sensitivity_images: args.sensitivity_images.unwrap_or(DEFAULT_SENSITIVITY_IMAGES),
        // An explicit count is used as given; the default is capped by the probes' cost.
        sensitivity_work_cap: if args.sensitivity_images.is_some() { None } else { Some(DEFAULT_SENSITIVITY_WORK_CAP) },
        batch: args.batch,
        threads: args.threads,
        seed: args.seed,
        progress: super::progress::method(global),
        ..PipelineOptions::default()
    }
}

/// `--int8-u-scales`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UScalesArg {
    /// One scale per column (rank index), folded into V's row scales
    Column,
    /// One scale per output row
    Row,
    /// One scale per output row, after balancing U and V
    RowBalanced,
}

/// The int8 options of the arguments.
fn quant_options(args: &Args) -> QuantOptions {
    let u_scales = match args.int8_u_scales {
        UScalesArg::Column => UScales::Column,
        UScalesArg::Row => UScales::Row,
        UScalesArg::RowBalanced => UScales::RowBalanced,
    };
    let defaults = QuantOptions::default();
    QuantOptions {
        clip_grid: if args.int8_absmax { vec![1.0] } else { defaults.clip_grid },
        u_scales,
        bias_correction: !args.int8_no_bias_correction,
    }
}

/// The compression job the arguments describe.
pub fn job(args: &Args, global: &Global) -> Result<CompressJob, CliError> {
    Ok(CompressJob {
        model: args.model.clone(),
        calib: CalibrationSource {
            path: args.calib.clone(),
            split: args.calib_split.split(),
            count: args.calib_count,
            crops_per_image: args.crops_per_image,
        },
        budget: budget(args)?,
        options: pipeline_options(args, global),
        dtype: args.dtype.map(DtypeArg::dtype),
        quant: quant_options(args),
        image_size: args.image_size,
        output: args.output.clone(),
        report: args.report.clone(),
    })
}

/// A job's failure as the CLI's one-line error, naming the option at fault.
pub fn job_error(e: JobError) -> CliError {
    match e {
        JobError::Budget(BudgetError::Keep(keep)) => CliError::msg(format!("--keep {keep} must be in (0, 1]")),
        JobError::Budget(BudgetError::ParamsBelowFixed { total, fixed, reference }) => {
            let what = match reference {
                Some(dir) => format!("the parameter count of {}", dir.display()),
                None => "--max-params".to_string(),
            };
            CliError::msg(format!(
                "{what} = {} is below the {} parameters outside the block linears (embeddings, norms, heads)",
                thousands(total),
                thousands(fixed)
            ))
        }
        JobError::Budget(BudgetError::BytesBelowFixed { bytes, fixed }) => {
            CliError::msg(format!("--max-bytes {bytes} is below the {fixed} bytes outside the block linears"))
        }
        JobError::ImageSize { size, patch } => CliError::msg(format!(
            "--image-size {size} is out of range: must be a multiple of the model's patch size {patch}, \
             from {patch} to 8192"
        )),
        JobError::Calibration { path, source: source @ DataError::InputMismatch { .. } } => {
            let line = CliError::new(format!("cannot load calibration data {}", path.display()), source).render();
            CliError::msg(format!("{line}; --image-size N compresses for N×N inputs"))
        }
        e => e.into(),
    }
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    let out = job(args, global)?.run(&mut global.progress()).map_err(job_error)?;
    global.say(&out.report.table());
    global.say(&format!(
        "wrote {}: {} parameters, {} of weights, file {} ({:.1} s); report {}",
        args.output.display(),
        thousands(out.params),
        human_bytes(out.weight_bytes as u64),
        human_bytes(out.file_bytes as u64),
        out.seconds,
        out.report_path.display()
    ));
    for f in &out.report_files {
        global.say(&format!("wrote {}", f.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// The command line's defaults are the method's (the demo builds its jobs from the latter).
    #[test]
    fn default_arguments_give_the_default_options() {
        let cli =
            Cli::try_parse_from(["compress", "--model", "m", "--calib", "c", "--keep", "0.4", "-o", "o"]).unwrap();
        // Quiet: the progress callback is presentation (the CLI's bars), not a method option.
        let global = Global { quiet: true };
        assert_eq!(format!("{:?}", pipeline_options(&cli.args, &global)), format!("{:?}", PipelineOptions::default()));
        let job = job(&cli.args, &global).unwrap();
        assert_eq!(job.budget, Budget::Keep(0.4));
        assert_eq!(job.calib, CalibrationSource::new("c"));
        assert_eq!((job.dtype, job.image_size, job.report), (None, None, None));
    }
}
