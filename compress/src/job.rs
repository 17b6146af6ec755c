//! The compression job: one model, calibration images, a budget and the method's options in, a
//! compressed `.fvit` file (plus its JSON report, optionally an HTML / SVG report) and an
//! [`Outcome`] out. This is the library entry point that the CLI's `compress` and `demo`, and any
//! other front end, call: no argument parsing, no printing, no process exit; failures are typed
//! ([`JobError`]) and the caller decides how to show them; warnings and phases go to a
//! [`JobProgress`] sink.
//!
//! ```no_run
//! use factorvit_compress::job::{Budget, CalibrationSource, CompressJob};
//! let job = CompressJob::new("models/fmnist-deit-tiny", CalibrationSource::new("data/fmnist-calib.safetensors"), Budget::Keep(0.4), "k40.fvit");
//! let outcome = job.run(&mut ()).expect("compression succeeds");
//! println!("{}", outcome.report.table());
//! ```
//!
//! The budget is turned into a block-linear parameter count once, in [`Budget::block_params`],
//! against a [`BudgetBase`] measured once from the source model.

use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use factorvit::format::schema;
use factorvit::safetensors::DType;
use factorvit::ModelConfig;

use crate::checkpoint::{self, ModelSpec};
use crate::data::{self, DataError, Dataset, LoadOptions, Split};
use crate::method::pipeline::{self, Calibration, Compressed, PipelineOptions};
use crate::method::quantise::{self, QuantOptions};
use crate::method::{export, MethodError};
use crate::report::html::{self, ReportInfo};
use crate::report::Report;
use crate::writer;

/// An error of any step, boxed (the cause of a [`JobError`]).
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// The compression budget, in the user's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Budget {
    /// Keep this fraction, in `(0, 1]`, of the dense block-linear parameters.
    Keep(f64),
    /// Total parameters of the output model.
    MaxParams(usize),
    /// Total bytes of the output model's weight tensors (in the output dtype).
    MaxBytes(usize),
    /// Total parameters of another model (checkpoint directory or `.fvit` file).
    MatchModel(PathBuf),
}

/// What a [`Budget`] is measured against, taken once from the source model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetBase {
    /// Parameters of the block linears when dense: `Σ m·n` over the config's shapes of every
    /// block's `qkv`, `proj`, `fc1`, `fc2` (the same for an already-compressed source).
    pub dense_block_params: usize,
    /// Parameters outside the block linears' weights (embeddings, norms, biases, heads).
    pub other_params: usize,
    /// Bytes of every tensor outside the block linears' weights, floats in the output dtype.
    pub other_bytes: usize,
    /// Bytes of one weight value in the output dtype.
    pub elem_bytes: usize,
}

/// The dtype of the float tensors of an output stored as `dtype`: itself, or F16 for int8
/// weights (norms, biases, tokens, positions, patch embedding and heads).
pub fn float_dtype(dtype: DType) -> DType {
    if dtype == DType::I8 {
        DType::F16
    } else {
        dtype
    }
}

/// The block linears of `config`, `(name, m, n)`: the config's shapes (every block's `qkv`,
/// `proj`, `fc1`, `fc2`), whatever the source stores.
fn block_linears(config: &ModelConfig) -> Vec<(String, usize, usize)> {
    schema::block_linear_layers(config).into_iter().map(|l| (l.name, l.out_features, l.in_features)).collect()
}

impl BudgetBase {
    /// Counts of `spec` (loaded as `model`) when stored as `dtype`.
    pub fn of(spec: &ModelSpec, model: &factorvit::Model<'_>, dtype: DType) -> BudgetBase {
        let linears = block_linears(&spec.config);
        let elem = dtype.size();
        // Int8: the other floats are stored as F16, and every block linear carries up to one
        // F32 scale per output row (dense and sparse terms; a factored layer's `V` scales are
        // fewer) — charged as `4·m` bytes per layer, an upper bound.
        let (float_elem, scale_bytes) = if dtype == DType::I8 {
            (float_dtype(dtype).size(), linears.iter().map(|(_, m, _)| 4 * m).sum())
        } else {
            (elem, 0)
        };
        let is_block_weight = |tensor: &str| {
            linears.iter().any(|(layer, _, _)| {
                tensor
                    .strip_prefix(layer.as_str())
                    .and_then(|t| t.strip_prefix('.'))
                    .is_some_and(|suffix| schema::suffix::WEIGHT_TENSORS.contains(&suffix))
            })
        };
        let other_bytes = spec
            .tensors
            .iter()
            .filter(|(name, _)| !is_block_weight(name))
            .map(|(_, t)| t.numel().unwrap_or(0) * if t.is_float() { float_elem } else { t.dtype.size() })
            .sum::<usize>()
            + scale_bytes;
        BudgetBase {
            dense_block_params: linears.iter().map(|(_, m, n)| m * n).sum(),
            other_params: model.params() - model.block_linear_params(),
            other_bytes,
            elem_bytes: elem,
        }
    }
}

/// A budget that cannot be met.
#[derive(Debug, Clone, PartialEq)]
pub enum BudgetError {
    /// [`Budget::Keep`] outside `(0, 1]`.
    Keep(f64),
    /// A parameter total below the parameters outside the block linears.
    ParamsBelowFixed {
        /// The total asked for.
        total: usize,
        /// Parameters outside the block linears.
        fixed: usize,
        /// The model whose parameter count was the total ([`Budget::MatchModel`]).
        reference: Option<PathBuf>,
    },
    /// [`Budget::MaxBytes`] below the bytes outside the block linears.
    BytesBelowFixed {
        /// The bytes asked for.
        bytes: usize,
        /// Bytes outside the block linears.
        fixed: usize,
    },
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetError::Keep(k) => write!(f, "the kept fraction {k} must be in (0, 1]"),
            BudgetError::ParamsBelowFixed { total, fixed, reference } => {
                match reference {
                    Some(path) => write!(f, "the parameter count of {} ({total})", path.display())?,
                    None => write!(f, "the parameter budget {total}")?,
                }
                write!(f, " is below the {fixed} parameters outside the block linears (embeddings, norms, heads)")
            }
            BudgetError::BytesBelowFixed { bytes, fixed } => {
                write!(f, "the byte budget {bytes} is below the {fixed} bytes outside the block linears")
            }
        }
    }
}

impl Budget {
    /// The budget in block-linear parameter units (sparse entries are charged with their index
    /// bytes by the method), at most the dense count. [`Budget::MatchModel`] opens the other model
    /// (its import warnings go to `progress`).
    pub fn block_params(&self, base: &BudgetBase, progress: &mut dyn JobProgress) -> Result<usize, JobError> {
        let params_budget = |total: usize, reference: Option<&Path>| {
            total.checked_sub(base.other_params).ok_or_else(|| {
                JobError::Budget(BudgetError::ParamsBelowFixed {
                    total,
                    fixed: base.other_params,
                    reference: reference.map(Path::to_path_buf),
                })
            })
        };
        let budget = match self {
            Budget::Keep(keep) => {
                if !(*keep > 0.0 && *keep <= 1.0) {
                    return Err(JobError::Budget(BudgetError::Keep(*keep)));
                }
                (keep * base.dense_block_params as f64).floor() as usize
            }
            Budget::MaxParams(n) => params_budget(*n, None)?,
            Budget::MatchModel(path) => params_budget(open_model(path, progress)?.params(), Some(path))?,
            Budget::MaxBytes(bytes) => bytes
                .checked_sub(base.other_bytes)
                .map(|b| b / base.elem_bytes)
                .ok_or(JobError::Budget(BudgetError::BytesBelowFixed { bytes: *bytes, fixed: base.other_bytes }))?,
        };
        Ok(budget.min(base.dense_block_params))
    }
}

/// Where the calibration images come from.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationSource {
    /// Image folder, safetensors file (`pixel_values`) or Fashion-MNIST idx folder.
    pub path: PathBuf,
    /// Split of an idx folder.
    pub split: Split,
    /// Images used: a seeded random subset of the source (the seed is the method's
    /// [`PipelineOptions::seed`]); at least 2.
    pub count: usize,
    /// Random crops per image (for a few photos); 0 = one eval-transformed image each.
    pub crops_per_image: usize,
}

impl CalibrationSource {
    /// 256 images of the training split of `path`, no crops (the CLI's defaults).
    pub fn new(path: impl Into<PathBuf>) -> CalibrationSource {
        CalibrationSource { path: path.into(), split: Split::Train, count: 256, crops_per_image: 0 }
    }
}

/// One compression: everything `factorvit compress` does, without the command line.
#[derive(Debug, Clone)]
pub struct CompressJob {
    /// The source: checkpoint directory or `.fvit` file.
    pub model: PathBuf,
    /// Calibration images.
    pub calib: CalibrationSource,
    /// The budget.
    pub budget: Budget,
    /// The method's options. The job sets `budget_params` (from [`Self::budget`]),
    /// `sparse_entry_cost` and `sparse_row_cost` (from the output dtype) and `group_size` (from
    /// [`CalibrationSource::crops_per_image`]); the values given for those are ignored.
    /// `options.progress` is the method's per-phase progress callback (none by default).
    pub options: PipelineOptions,
    /// Storage dtype of every float tensor (`None`: the dtype of the source's block weights);
    /// `I8`: int8 block-linear weights (see [`Self::quant`]).
    pub dtype: Option<DType>,
    /// How int8 weights are quantised (with `dtype` `I8`: block linears int8 with F32 channel
    /// scales, every other float tensor F16).
    pub quant: QuantOptions,
    /// Input size (square) for calibration and in the output's preprocessing; a multiple of the
    /// patch size up to 8192. `None`: the size of the calibration file's `pixel_values` when
    /// they hold another size the model takes (with a warning), else the model's.
    pub image_size: Option<usize>,
    /// The compressed file (written atomically); the JSON report goes to `OUTPUT.report.json`.
    pub output: PathBuf,
    /// Pictures of the run: `FILE.html` (one page) or `FILE.svg` (one SVG file per figure).
    pub report: Option<PathBuf>,
}

/// A stage of [`CompressJob::run`], as reported to [`JobProgress::phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading (and converting) the source model.
    LoadModel,
    /// Loading the calibration images.
    LoadCalibration,
    /// The compression method.
    Compress,
    /// Building and writing the output file and the reports.
    Write,
}

/// Receives what a running job has to say. Every method ignores it by default; `()` ignores all.
pub trait JobProgress {
    /// A warning for the user (e.g. from a checkpoint import).
    fn warning(&mut self, _text: &str) {}
    /// A stage starts.
    fn phase(&mut self, _phase: Phase) {}
}

impl JobProgress for () {}

/// What [`CompressJob::run`] wrote.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The per-layer report.
    pub report: Report,
    /// The budget in block-linear parameters.
    pub budget_params: usize,
    /// The dtype the output stores floats in.
    pub dtype: DType,
    /// Parameters of the source model.
    pub source_params: usize,
    /// Parameters of the output model.
    pub params: usize,
    /// Weight bytes of the output model (read once per inference).
    pub weight_bytes: usize,
    /// Size of the written file.
    pub file_bytes: usize,
    /// Where the JSON report was written.
    pub report_path: PathBuf,
    /// Files written for [`CompressJob::report`] (empty without it).
    pub report_files: Vec<PathBuf>,
    /// Wall time of the whole job.
    pub seconds: f64,
}

/// Why a job failed. `Display` is the failed step; [`Error::source`] is its cause.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobError {
    /// The budget cannot be met.
    Budget(BudgetError),
    /// [`CompressJob::image_size`] is not a multiple of the patch size in `patch..=8192`.
    ImageSize {
        /// The size asked for.
        size: usize,
        /// The model's patch size.
        patch: usize,
    },
    /// The calibration source holds fewer than 2 images.
    TooFewImages {
        /// The calibration source.
        path: PathBuf,
        /// Images found.
        count: usize,
    },
    /// A model cannot be read, imported, converted or loaded by the runtime.
    Model {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: BoxError,
    },
    /// The calibration images cannot be loaded.
    Calibration {
        /// The calibration source.
        path: PathBuf,
        /// Why.
        source: DataError,
    },
    /// The compression method failed.
    Method(MethodError),
    /// The output cannot be built or written.
    Output {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: BoxError,
    },
}

impl JobError {
    fn model(context: String, source: impl Into<BoxError>) -> JobError {
        JobError::Model { context, source: source.into() }
    }

    fn output(context: String, source: impl Into<BoxError>) -> JobError {
        JobError::Output { context, source: source.into() }
    }

    /// The cause, owned (for callers that keep their own error chain).
    pub fn into_source(self) -> Option<BoxError> {
        match self {
            JobError::Budget(_) | JobError::ImageSize { .. } | JobError::TooFewImages { .. } => None,
            JobError::Model { source, .. } | JobError::Output { source, .. } => Some(source),
            JobError::Calibration { source, .. } => Some(Box::new(source)),
            JobError::Method(e) => Some(Box::new(e)),
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Budget(e) => e.fmt(f),
            JobError::ImageSize { size, patch } => write!(
                f,
                "image size {size} is out of range: must be a multiple of the model's patch size {patch}, from {patch} to 8192"
            ),
            JobError::TooFewImages { path, count } => {
                write!(f, "{} holds {count} calibration image(s): at least 2 are needed", path.display())
            }
            JobError::Model { context, .. } | JobError::Output { context, .. } => f.write_str(context),
            JobError::Calibration { path, .. } => write!(f, "cannot load calibration data {}", path.display()),
            JobError::Method(_) => f.write_str("compression failed"),
        }
    }
}

impl Error for JobError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            JobError::Budget(_) | JobError::ImageSize { .. } | JobError::TooFewImages { .. } => None,
            JobError::Model { source, .. } | JobError::Output { source, .. } => Some(source.as_ref()),
            JobError::Calibration { source, .. } => Some(source),
            JobError::Method(e) => Some(e),
        }
    }
}

/// Whether `side` pixels is an input side a model with `patch`-pixel patches takes: a multiple of
/// the patch size from one patch to 8192.
pub fn image_side_fits(side: usize, patch: usize) -> bool {
    (patch..=8192).contains(&side) && side.checked_rem(patch) == Some(0)
}

/// Imports a checkpoint directory or reads a factorvit file into a spec; the import's warnings
/// go to `progress` (and stay in the spec).
pub fn load_spec(path: &Path, progress: &mut dyn JobProgress) -> Result<ModelSpec, JobError> {
    let spec = if path.is_dir() {
        checkpoint::load_checkpoint(path)
            .map_err(|e| JobError::model(format!("cannot import checkpoint {}", path.display()), e))?
    } else {
        checkpoint::read_fvit(path).map_err(|e| JobError::model(format!("cannot read model {}", path.display()), e))?
    };
    for w in &spec.warnings {
        progress.warning(w);
    }
    Ok(spec)
}

/// Opens a model for inference: a factorvit file is memory-mapped; a checkpoint directory is
/// imported and converted in memory.
pub fn open_model(path: &Path, progress: &mut dyn JobProgress) -> Result<factorvit::Model<'static>, JobError> {
    if path.is_dir() {
        let spec = load_spec(path, progress)?;
        let bytes = writer::to_bytes(&spec)
            .map_err(|e| JobError::model(format!("cannot convert checkpoint {}", path.display()), e))?;
        factorvit::Model::from_vec(bytes)
            .map_err(|e| JobError::model(format!("the runtime rejects the converted checkpoint {}", path.display()), e))
    } else {
        factorvit::Model::open(path).map_err(|e| JobError::model(format!("cannot load model {}", path.display()), e))
    }
}

/// Sets the thread count of rayon's global pool (once per process; 0 = all cores) and of faer.
pub fn configure_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    }
    let n = if threads == 0 { rayon::current_num_threads() } else { threads };
    faer::set_global_parallelism(if n <= 1 { faer::Par::Seq } else { faer::Par::rayon(n) });
}

/// The source model, read and loaded.
struct Source {
    spec: ModelSpec,
    model: factorvit::Model<'static>,
    dtype: DType,
    file_bytes: usize,
}

/// The output file, built and checked.
struct Built {
    bytes: Vec<u8>,
    params: usize,
    weight_bytes: usize,
    /// Per block linear, with int8 weights: the relative output error quantisation added.
    quant_errors: Vec<(String, Option<f64>)>,
}

impl CompressJob {
    /// A job with the method's default options (no progress bars), the source's dtype and size,
    /// and no HTML / SVG report.
    pub fn new(
        model: impl Into<PathBuf>,
        calib: CalibrationSource,
        budget: Budget,
        output: impl Into<PathBuf>,
    ) -> CompressJob {
        CompressJob {
            model: model.into(),
            calib,
            budget,
            options: PipelineOptions::default(),
            dtype: None,
            quant: QuantOptions::default(),
            image_size: None,
            output: output.into(),
            report: None,
        }
    }

    /// Compresses [`Self::model`] into [`Self::output`] (atomically) and writes the JSON report
    /// next to it, and the HTML / SVG report if asked. Sets the process's thread pools first
    /// ([`configure_threads`] with the options' thread count).
    pub fn run(&self, progress: &mut dyn JobProgress) -> Result<Outcome, JobError> {
        let started = Instant::now();
        configure_threads(self.options.threads);
        progress.phase(Phase::LoadModel);
        let source = self.load_source(progress)?;
        let budget = self.budget.block_params(&BudgetBase::of(&source.spec, &source.model, source.dtype), progress)?;
        progress.phase(Phase::LoadCalibration);
        let calib = self.load_calibration(&source.model)?;
        let opts = self.pipeline_options(budget, source.dtype);
        progress.phase(Phase::Compress);
        let calibration = Calibration::from_dataset(&calib);
        let mut compressed = pipeline::compress_model(&source.model, &calibration, &opts).map_err(JobError::Method)?;
        let Source { mut spec, model, dtype, file_bytes: source_file_bytes } = source;
        let (source_params, source_weight_bytes) = (model.params(), model.weight_bytes());
        drop(model);

        progress.phase(Phase::Write);
        let built = build_output(&mut spec, &compressed, &opts, (dtype, &self.quant), calib.n)?;
        compressed.input_moments = Vec::new();
        let stored = float_dtype(dtype).name();
        for l in &mut compressed.report.layers {
            let q = built.quant_errors.iter().find(|(name, _)| *name == l.name).and_then(|(_, e)| *e);
            l.dtype = if q.is_some() { DType::I8.name() } else { stored }.to_string();
            l.quant_error = q;
        }
        writer::write_atomic(&self.output, &built.bytes)
            .map_err(|e| JobError::output(format!("cannot write {}", self.output.display()), e))?;
        let report_path = PathBuf::from(format!("{}.report.json", self.output.display()));
        writer::write_atomic(&report_path, compressed.report.to_json().as_bytes())
            .map_err(|e| JobError::output(format!("cannot write {}", report_path.display()), e))?;
        let report_files = match &self.report {
            Some(path) => {
                let info = ReportInfo {
                    model: Some(self.model.display().to_string()),
                    output: Some(self.output.display().to_string()),
                    file_bytes: Some(built.bytes.len() as u64),
                    source_file_bytes: Some(source_file_bytes as u64),
                    model_params: Some((source_params, built.params)),
                    weight_bytes: Some((source_weight_bytes, built.weight_bytes)),
                    total_seconds: Some(started.elapsed().as_secs_f64()),
                    extra: vec![
                        ("method".into(), format!("{:?}, ranks {:?}", opts.method, opts.ranks)),
                        ("dtype".into(), dtype.name().to_string()),
                        ("calibration data".into(), self.calib.path.display().to_string()),
                    ],
                    ..ReportInfo::default()
                };
                html::write_report(&compressed.report, &info, path)
                    .map_err(|e| JobError::output(format!("cannot write the report {}", path.display()), e))?
            }
            None => Vec::new(),
        };
        Ok(Outcome {
            report: compressed.report,
            budget_params: budget,
            dtype,
            source_params,
            params: built.params,
            weight_bytes: built.weight_bytes,
            file_bytes: built.bytes.len(),
            report_path,
            report_files,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Reads the source, applies the image size, picks the dtype and loads the model.
    fn load_source(&self, progress: &mut dyn JobProgress) -> Result<Source, JobError> {
        let mut spec = load_spec(&self.model, progress)?;
        let patch = spec.config.patch_size;
        if let Some(size) = self.image_size {
            if !image_side_fits(size, patch) {
                return Err(JobError::ImageSize { size, patch });
            }
            spec.preprocess.input_size = [spec.preprocess.input_size[0], size, size];
        } else if let Some([h, w]) = self.calibration_image_size(&spec)? {
            let [_, sh, sw] = spec.preprocess.input_size;
            progress.warning(&format!(
                "the calibration pixel_values are {h}×{w}: compressing for {h}×{w} inputs (the checkpoint's \
                 input is {sh}×{sw}; setting the image size chooses another)"
            ));
            spec.preprocess.input_size = [spec.preprocess.input_size[0], h, w];
        }
        let dtype = self.dtype.unwrap_or_else(|| export::block_dtype(&spec));
        let bytes = writer::to_bytes(&spec)
            .map_err(|e| JobError::model(format!("cannot convert {}", self.model.display()), e))?;
        let file_bytes = bytes.len();
        let model = factorvit::Model::from_vec(bytes)
            .map_err(|e| JobError::model(format!("the runtime rejects {}", self.model.display()), e))?;
        Ok(Source { spec, model, dtype, file_bytes })
    }

    /// The input size to compress for when no image size is given: that of the calibration file's
    /// normalised `pixel_values` when they have the model's channels, another `H×W` than the
    /// checkpoint's, and sides the model can take (multiples of the patch size; the runtime
    /// interpolates the position table). `None` otherwise: raw images are resized to the
    /// model's input, and pixel_values that do not fit fail to load with their sizes named.
    fn calibration_image_size(&self, spec: &ModelSpec) -> Result<Option<[usize; 2]>, JobError> {
        let path = &self.calib.path;
        if !path.is_file() || !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
            return Ok(None);
        }
        let sample =
            data::pixel_values_size(path).map_err(|source| JobError::Calibration { path: path.clone(), source })?;
        let [c, h, w] = spec.preprocess.input_size;
        Ok(sample.and_then(|[fc, fh, fw]| {
            let fits =
                fc == c && image_side_fits(fh, spec.config.patch_size) && image_side_fits(fw, spec.config.patch_size);
            (fits && [fh, fw] != [h, w]).then_some([fh, fw])
        }))
    }

    /// The calibration images, in the model's preprocessing.
    fn load_calibration(&self, model: &factorvit::Model<'_>) -> Result<Dataset, JobError> {
        let c = &self.calib;
        let opts = LoadOptions {
            split: c.split,
            limit: Some(c.count),
            random_subset: true,
            seed: self.options.seed,
            crops_per_image: c.crops_per_image,
            ..LoadOptions::default()
        };
        let calib = data::load_dataset(&c.path, model.preprocess(), &opts)
            .map_err(|source| JobError::Calibration { path: c.path.clone(), source })?;
        if calib.n < 2 {
            return Err(JobError::TooFewImages { path: c.path.clone(), count: calib.n });
        }
        Ok(calib)
    }

    /// The method's options with the fields the job derives (see [`Self::options`]).
    fn pipeline_options(&self, budget: usize, dtype: DType) -> PipelineOptions {
        let elem = dtype.size() as f64;
        let int8 = dtype == DType::I8;
        PipelineOptions {
            budget_params: budget,
            sparse_entry_cost: (dtype.size() + 2) as f64 / elem,
            // A row pointer, and with int8 values a row scale.
            sparse_row_cost: if int8 { 8.0 } else { 4.0 } / elem,
            group_size: self.calib.crops_per_image.max(1),
            keep_input_moments: int8 || self.options.keep_input_moments,
            ..self.options.clone()
        }
    }
}

/// Stores the compressed layers in `spec` as `dtype`, records the run in the metadata, serialises
/// it and checks that the runtime loads it.
fn build_output(
    spec: &mut ModelSpec,
    compressed: &Compressed,
    opts: &PipelineOptions,
    (dtype, quant): (DType, &QuantOptions),
    calibration_images: usize,
) -> Result<Built, JobError> {
    let int8 = dtype == DType::I8;
    export::apply_to_spec(spec, compressed, if int8 { DType::F32 } else { dtype })
        .map_err(|e| JobError::output("cannot store the compressed layers".into(), e))?;
    let quant_errors = if int8 {
        quantise::quantise_blocks(spec, &compressed.input_moments, quant)
            .map_err(|e| JobError::output("cannot quantise the model to int8".into(), e))?
    } else {
        Vec::new()
    };
    let floats = float_dtype(dtype);
    spec.cast_floats(floats)
        .map_err(|e| JobError::output(format!("cannot store the model as {}", floats.name()), e))?;
    let (before, after, cost) = compressed.report.totals();
    let summary = serde_json::json!({
        "method": format!("{:?}", opts.method),
        "ranks": format!("{:?}", opts.ranks),
        "budget_params": opts.budget_params,
        "block_params_before": before,
        "block_params_after": after,
        "budget_charged": cost,
        "calibration_images": calibration_images,
        "compensation": opts.compensation,
        "seed": opts.seed,
    });
    spec.metadata.insert("compression".into(), summary.to_string());
    let bytes =
        writer::to_bytes(spec).map_err(|e| JobError::output("cannot serialise the compressed model".into(), e))?;
    let reloaded = factorvit::Model::from_bytes(&bytes)
        .map_err(|e| JobError::output("the runtime rejects the compressed model (a bug)".into(), e))?;
    let (params, weight_bytes) = (reloaded.params(), reloaded.weight_bytes());
    drop(reloaded);
    Ok(Built { bytes, params, weight_bytes, quant_errors })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An already-compressed source has the same dense block parameters and the same counts
    /// outside the block linears as its dense original.
    #[test]
    fn budget_base_is_the_same_for_a_compressed_source() {
        use crate::checkpoint::StoredTensor;
        use crate::method::synthetic::{random_vit_spec, SyntheticVit};
        let load = |spec: &ModelSpec| factorvit::Model::from_vec(writer::to_bytes(spec).unwrap()).unwrap();
        let dense = random_vit_spec(&SyntheticVit::micro(), 3).unwrap();
        let mut factored = dense.clone();
        let name = "blocks.0.mlp.fc1";
        let (m, n) = block_linears(&dense.config).into_iter().find(|l| l.0 == name).map(|l| (l.1, l.2)).unwrap();
        factored.tensors.remove(&format!("{name}.weight"));
        factored
            .tensors
            .insert(format!("{name}.u"), StoredTensor::from_f32_as(DType::F32, vec![m, 2], &vec![0.5; m * 2]).unwrap());
        factored
            .tensors
            .insert(format!("{name}.v"), StoredTensor::from_f32_as(DType::F32, vec![2, n], &vec![0.5; 2 * n]).unwrap());
        let (a, b) = (load(&dense), load(&factored));
        assert!(b.block_linear_params() < a.block_linear_params());
        for dtype in [DType::F32, DType::F16] {
            assert_eq!(BudgetBase::of(&dense, &a, dtype), BudgetBase::of(&factored, &b, dtype));
        }
        let base = BudgetBase::of(&dense, &a, DType::F32);
        assert_eq!(base.dense_block_params, a.block_linear_params());
        // Int8: one byte per block weight; the other floats at F16 plus up to one F32 scale per
        // output row of every block linear.
        let int8 = BudgetBase::of(&dense, &a, DType::I8);
        let f16 = BudgetBase::of(&dense, &a, DType::F16);
        let rows: usize = block_linears(&dense.config).iter().map(|l| l.1).sum();
        assert_eq!(int8.elem_bytes, 1);
        assert_eq!(int8.other_bytes, f16.other_bytes + 4 * rows);
    }

    #[test]
    fn keep_is_checked_and_capped() {
        let base = BudgetBase { dense_block_params: 1000, other_params: 50, other_bytes: 200, elem_bytes: 2 };
        let params = |b: Budget| b.block_params(&base, &mut ());
        assert_eq!(params(Budget::Keep(0.4)).unwrap(), 400);
        assert_eq!(params(Budget::Keep(1.0)).unwrap(), 1000);
        assert!(matches!(params(Budget::Keep(0.0)), Err(JobError::Budget(BudgetError::Keep(_)))));
        assert!(matches!(params(Budget::Keep(f64::NAN)), Err(JobError::Budget(BudgetError::Keep(_)))));
        assert_eq!(params(Budget::MaxParams(550)).unwrap(), 500);
        assert_eq!(params(Budget::MaxParams(5000)).unwrap(), 1000);
        assert!(matches!(params(Budget::MaxParams(49)), Err(JobError::Budget(BudgetError::ParamsBelowFixed { .. }))));
        assert_eq!(params(Budget::MaxBytes(1201)).unwrap(), 500);
        assert!(matches!(params(Budget::MaxBytes(199)), Err(JobError::Budget(BudgetError::BytesBelowFixed { .. }))));
    }
}
