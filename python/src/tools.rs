//! The package's functions: image preprocessing, safetensors reading and writing, compression
//! and evaluation. Each does its work without the GIL; the pure-Python wrappers in
//! `factorvit/__init__.py` give them their documented signatures.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::prelude::*;
use numpy::{PyArray1, PyArrayDyn, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use factorvit::safetensors::DType;
use factorvit_compress::checkpoint::read_safetensors;
use factorvit_compress::data::{self, LoadOptions, Split};
use factorvit_compress::job::{Budget, CalibrationSource, CompressJob, JobProgress, Phase};
use factorvit_compress::method::eval::{self, RunOptions};
use factorvit_compress::method::pipeline::Progress;
use factorvit_compress::preprocess::{self as pre, ImageView};
use factorvit_compress::writer::{self, TensorRef};

use crate::errors::{guard, raise, Failure, Kind};
use crate::{check_pixels, non_finite, PyModel, Warnings};

/// One image handed to [`preprocess_images`].
enum ImageItem {
    /// An image file (PNG or JPEG).
    Path(PathBuf),
    /// `height × width × channels` uint8 pixels.
    Pixels { width: usize, height: usize, channels: usize, data: Vec<u8> },
}

/// Reads one item: a path (`str` / `os.PathLike`) or a uint8 array `(H, W)` / `(H, W, C)`.
fn image_item(py: Python<'_>, index: usize, item: &Bound<'_, PyAny>) -> PyResult<ImageItem> {
    if let Ok(array) = item.cast::<PyUntypedArray>() {
        let dtype = array.dtype();
        if !dtype.is_equiv_to(&numpy::dtype::<u8>(py)) {
            return Err(raise(py, Kind::Dtype, format!("image {index} has dtype {dtype}, expected uint8")));
        }
        let shape = array.shape().to_vec();
        let (height, width, channels) = match shape[..] {
            [h, w] => (h, w, 1),
            [h, w, c] if (1..=4).contains(&c) => (h, w, c),
            _ => {
                return Err(raise(
                    py,
                    Kind::Shape,
                    format!("image {index} has shape {shape:?}, expected (H, W) or (H, W, C) with C in 1..=4"),
                ))
            }
        };
        let typed = array.cast::<PyArrayDyn<u8>>().map_err(PyErr::from)?;
        let readonly = typed.try_readonly().map_err(|e| raise(py, Kind::Layout, e.to_string()))?;
        // Any layout: the elements in logical (C) order.
        let data: Vec<u8> = readonly.as_array().iter().copied().collect();
        return Ok(ImageItem::Pixels { width, height, channels, data });
    }
    match item.extract::<PathBuf>() {
        Ok(path) => Ok(ImageItem::Path(path)),
        Err(_) => Err(raise(py, Kind::Dtype, format!("image {index} is neither a path nor a uint8 numpy array"))),
    }
}

/// The eval transform of the model (resize, center crop, normalisation) applied to every image
/// of `images` (a list of paths and uint8 arrays): a float32 array `(N, C, H, W)`.
#[pyfunction]
#[pyo3(name = "_preprocess")]
fn preprocess_images<'py>(
    py: Python<'py>,
    images: Vec<Bound<'py, PyAny>>,
    model: &PyModel,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let items = images.iter().enumerate().map(|(i, item)| image_item(py, i, item)).collect::<PyResult<Vec<_>>>()?;
    let preprocess = model.model.preprocess().clone();
    let [c, h, w] = preprocess.input_size;
    let n = items.len();
    let pixels = py
        .detach(|| {
            guard(|| {
                let mut out = Vec::with_capacity(n * c * h * w);
                for (i, item) in items.iter().enumerate() {
                    let failed = |e: &dyn std::error::Error| Failure::new(Kind::Data, format!("image {i}: {e}"));
                    let values = match item {
                        ImageItem::Path(path) => {
                            let img = pre::load_image_u8(path).map_err(|e| failed(&e))?;
                            pre::preprocess_image(img.view(), &preprocess)
                        }
                        ImageItem::Pixels { width, height, channels, data } => {
                            let view = ImageView::new(*width, *height, *channels, data).map_err(|e| failed(&e))?;
                            pre::preprocess_image(view, &preprocess)
                        }
                    }
                    .map_err(|e| failed(&e))?;
                    out.extend_from_slice(&values);
                }
                Ok(out)
            })
        })
        .map_err(|f| f.into_py(py))?;
    let array = ArrayD::from_shape_vec(IxDyn(&[n, c, h, w]), pixels)
        .map_err(|e| raise(py, Kind::Base, format!("internal error: {e}")))?;
    Ok(array.into_pyarray(py))
}

/// Writes `pixel_values` (a float32 array `(N, C, H, W)`, finite) as a safetensors file with
/// one tensor `pixel_values` (what the compressor's calibration loader reads).
#[pyfunction]
#[pyo3(name = "_save_pixel_values")]
fn save_pixel_values(py: Python<'_>, path: PathBuf, pixel_values: &Bound<'_, PyAny>) -> PyResult<()> {
    let (array, [n, c, h, w]) = check_pixels_any(py, pixel_values)?;
    let readonly = array.try_readonly().map_err(|e| raise(py, Kind::Layout, e.to_string()))?;
    let pixels = readonly.as_slice().map_err(|e| raise(py, Kind::Layout, e.to_string()))?;
    py.detach(|| {
        guard(|| {
            if let Some(f) = non_finite(pixels, c * h * w) {
                return Err(f);
            }
            let bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
            let shape = [n, c, h, w];
            let tensor = TensorRef { name: "pixel_values", dtype: DType::F32, shape: &shape, data: &bytes };
            let metadata = vec![("format".to_string(), "pt".to_string())];
            let file =
                writer::safetensors_bytes(&[tensor], &metadata).map_err(|e| Failure::from_error(&e, Kind::Base))?;
            writer::write_atomic(&path, &file)
                .map_err(|e| Failure::new(Kind::Io, format!("cannot write {}: {e}", path.display())))
        })
    })
    .map_err(|f| f.into_py(py))
}

/// [`check_pixels`] for any channel count and size.
fn check_pixels_any<'py>(
    py: Python<'py>,
    array: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, [usize; 4])> {
    let channels = array.cast::<PyUntypedArray>().ok().and_then(|a| a.shape().get(1).copied()).unwrap_or(0);
    check_pixels(py, array, channels, None)
}

/// Reads every tensor of a safetensors file: F64 as float64 arrays, the other floats as float32
/// arrays, integers and booleans as int64 arrays.
#[pyfunction]
fn load_safetensors<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let file = py
        .detach(|| {
            guard(|| {
                read_safetensors(&path)
                    .map_err(|e| Failure::new(Kind::Format, format!("cannot read {}: {e}", path.display())))
            })
        })
        .map_err(|f| f.into_py(py))?;
    let d = PyDict::new(py);
    for (name, t) in &file.tensors {
        let shape = IxDyn(&t.shape);
        let bad = |e: &dyn std::fmt::Display| raise(py, Kind::Format, format!("tensor `{name}`: {e}"));
        if t.dtype == DType::F64 {
            let values: Vec<f64> =
                t.data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
            d.set_item(name, ArrayD::from_shape_vec(shape, values).map_err(|e| bad(&e))?.into_pyarray(py))?;
        } else if t.is_float() {
            let values = t.to_f32().map_err(|e| bad(&e))?;
            d.set_item(name, ArrayD::from_shape_vec(shape, values).map_err(|e| bad(&e))?.into_pyarray(py))?;
        } else {
            let values = integers(t.dtype, &t.data).ok_or_else(|| bad(&format!("dtype {}", t.dtype.name())))?;
            d.set_item(name, ArrayD::from_shape_vec(shape, values).map_err(|e| bad(&e))?.into_pyarray(py))?;
        }
    }
    Ok(d)
}

/// Little-endian integers (or booleans) of `dtype` as i64 (`None` for u64 values above
/// `i64::MAX`).
fn integers(dtype: DType, data: &[u8]) -> Option<Vec<i64>> {
    fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> Option<i64>) -> Option<Vec<i64>> {
        data.chunks_exact(N).map(|c| f(c.try_into().ok()?)).collect()
    }
    match dtype {
        DType::U8 | DType::Bool => each::<1>(data, |b| Some(i64::from(b[0]))),
        DType::I8 => each::<1>(data, |b| Some(i64::from(b[0] as i8))),
        DType::U16 => each::<2>(data, |b| Some(i64::from(u16::from_le_bytes(b)))),
        DType::I16 => each::<2>(data, |b| Some(i64::from(i16::from_le_bytes(b)))),
        DType::U32 => each::<4>(data, |b| Some(i64::from(u32::from_le_bytes(b)))),
        DType::I32 => each::<4>(data, |b| Some(i64::from(i32::from_le_bytes(b)))),
        DType::U64 => each::<8>(data, |b| i64::try_from(u64::from_le_bytes(b)).ok()),
        DType::I64 => each::<8>(data, |b| Some(i64::from_le_bytes(b))),
        _ => None,
    }
}

/// A storage dtype by name: `f32` / `float32`, `f16` / `float16`, `bf16` / `bfloat16`.
fn parse_dtype(name: &str) -> Result<DType, Failure> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Failure::new(Kind::Input, format!("dtype {name:?}: expected \"f32\", \"f16\" or \"bf16\""))),
    }
}

/// Sends the job's warnings to the collected list (issued as Python warnings afterwards).
struct JobWarnings(Warnings);

impl JobProgress for JobWarnings {
    fn warning(&mut self, text: &str) {
        self.0.warning(text);
    }
    fn phase(&mut self, _phase: Phase) {}
}

/// Runs a compression job; see `factorvit.compress` for the arguments. Returns a dict of the
/// outcome (`report_json` and `table` are the report as JSON text and as the CLI's table).
#[pyfunction]
#[pyo3(name = "_compress")]
#[pyo3(signature = (model, calib, output, keep=None, max_params=None, max_bytes=None, dtype=None, progress=None,
                    calib_count=256, crops_per_image=0, image_size=None, seed=0, threads=0, report=None))]
#[allow(clippy::too_many_arguments)]
fn compress<'py>(
    py: Python<'py>,
    model: PathBuf,
    calib: PathBuf,
    output: PathBuf,
    keep: Option<f64>,
    max_params: Option<usize>,
    max_bytes: Option<usize>,
    dtype: Option<String>,
    progress: Option<Py<PyAny>>,
    calib_count: usize,
    crops_per_image: usize,
    image_size: Option<usize>,
    seed: u64,
    threads: usize,
    report: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let budget = match (keep, max_params, max_bytes) {
        (Some(k), None, None) => Budget::Keep(k),
        (None, Some(p), None) => Budget::MaxParams(p),
        (None, None, Some(b)) => Budget::MaxBytes(b),
        _ => return Err(raise(py, Kind::Budget, "give exactly one budget: keep=, max_params= or max_bytes=")),
    };
    let dtype = dtype.as_deref().map(parse_dtype).transpose().map_err(|f| f.into_py(py))?;
    if calib_count < 2 {
        return Err(raise(py, Kind::Input, "calib_count must be at least 2"));
    }
    let mut job = CompressJob::new(
        model,
        CalibrationSource { path: calib, split: Split::Train, count: calib_count, crops_per_image },
        budget,
        output,
    );
    job.dtype = dtype;
    job.image_size = image_size;
    job.report = report;
    job.options.seed = seed;
    job.options.threads = threads;
    // A callback that raises stops being called; its exception is raised once the job ends.
    let failed: Arc<Mutex<Option<PyErr>>> = Arc::new(Mutex::new(None));
    if let Some(callback) = progress {
        let failed = Arc::clone(&failed);
        job.options.progress = Progress::new(move |event| {
            Python::attach(|py| {
                let Ok(mut slot) = failed.lock() else { return };
                if slot.is_none() {
                    if let Err(e) = callback.call1(py, (event.phase.label(), event.done, event.total)) {
                        *slot = Some(e);
                    }
                }
            })
        });
    }
    let (result, warnings) = py.detach(|| {
        let mut warnings = JobWarnings(Warnings::default());
        let result = guard(|| job.run(&mut warnings).map_err(|e| Failure::from_job(&e)));
        (result, warnings.0)
    });
    warnings.emit(py)?;
    if let Some(e) = failed.lock().ok().and_then(|mut s| s.take()) {
        return Err(e);
    }
    let outcome = result.map_err(|f| f.into_py(py))?;
    let d = PyDict::new(py);
    d.set_item("output", &job.output)?;
    d.set_item("report_path", &outcome.report_path)?;
    d.set_item("report_files", &outcome.report_files)?;
    d.set_item("report_json", outcome.report.to_json())?;
    d.set_item("table", outcome.report.table())?;
    d.set_item("budget_params", outcome.budget_params)?;
    d.set_item("dtype", outcome.dtype.name())?;
    d.set_item("source_params", outcome.source_params)?;
    d.set_item("params", outcome.params)?;
    d.set_item("weight_bytes", outcome.weight_bytes)?;
    d.set_item("file_bytes", outcome.file_bytes)?;
    d.set_item("seconds", outcome.seconds)?;
    Ok(d)
}

/// Evaluation data: a dataset path or in-memory pixel values with optional labels.
enum EvalData {
    Path(PathBuf),
    Pixels { pixels: Vec<f32>, dims: [usize; 4], labels: Option<Vec<u32>> },
}

/// Evaluates `model` on `data` (optionally against `reference`); see `factorvit.evaluate`.
/// Returns the metrics as the JSON text `factorvit eval --json` prints.
#[pyfunction]
#[pyo3(name = "_evaluate")]
#[pyo3(signature = (model, data, labels=None, reference=None, limit=None, split="test", batch=32, threads=0))]
#[allow(clippy::too_many_arguments)]
fn evaluate(
    py: Python<'_>,
    model: &PyModel,
    data: &Bound<'_, PyAny>,
    labels: Option<&Bound<'_, PyAny>>,
    reference: Option<&PyModel>,
    limit: Option<usize>,
    split: &str,
    batch: usize,
    threads: usize,
) -> PyResult<String> {
    let split = match split {
        "test" => Split::Test,
        "train" => Split::Train,
        other => return Err(raise(py, Kind::Input, format!("split {other:?}: expected \"test\" or \"train\""))),
    };
    if limit == Some(0) {
        return Err(raise(py, Kind::Input, "limit must be at least 1"));
    }
    let source = if data.cast::<PyUntypedArray>().is_ok() {
        let (array, dims) = check_pixels(py, data, model.model.config().in_chans, None)?;
        let readonly = array.try_readonly().map_err(|e| raise(py, Kind::Layout, e.to_string()))?;
        let pixels = readonly.as_slice().map_err(|e| raise(py, Kind::Layout, e.to_string()))?.to_vec();
        let labels = match labels {
            None => None,
            Some(l) if l.is_none() => None,
            Some(l) => {
                let l = l.cast::<PyArray1<i64>>().map_err(|_| {
                    raise(py, Kind::Dtype, "labels must be a 1-D int64 numpy array (the Python wrapper converts them)")
                })?;
                let values = l.to_vec().map_err(|e| raise(py, Kind::Layout, e.to_string()))?;
                if values.len() != dims[0] {
                    return Err(raise(py, Kind::Shape, format!("{} labels for {} images", values.len(), dims[0])));
                }
                let labels = values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        u32::try_from(v)
                            .map_err(|_| raise(py, Kind::Data, format!("label {v} of sample {i} is not a class index")))
                    })
                    .collect::<PyResult<Vec<u32>>>()?;
                Some(labels)
            }
        };
        EvalData::Pixels { pixels, dims, labels }
    } else {
        if labels.is_some_and(|l| !l.is_none()) {
            return Err(raise(py, Kind::Input, "labels= goes with in-memory pixel values; a dataset has its own"));
        }
        let path = data
            .extract::<PathBuf>()
            .map_err(|_| raise(py, Kind::Dtype, "data must be a dataset path or a float32 numpy array (N, C, H, W)"))?;
        EvalData::Path(path)
    };
    let (m, r) = (Arc::clone(&model.model), reference.map(|r| Arc::clone(&r.model)));
    let result = py.detach(|| {
        guard(|| {
            let dataset = match source {
                EvalData::Path(path) => {
                    let class_names = (!m.labels().is_empty()).then(|| m.labels().to_vec());
                    let options = LoadOptions { split, limit, class_names, ..LoadOptions::default() };
                    data::load_dataset(&path, m.preprocess(), &options).map_err(|e| {
                        Failure::new(Kind::Data, format!("cannot load evaluation data {}: {e}", path.display()))
                    })?
                }
                EvalData::Pixels { mut pixels, dims: [n, c, h, w], mut labels } => {
                    let n = limit.map_or(n, |l| l.min(n));
                    pixels.truncate(n * c * h * w);
                    if let Some(l) = &mut labels {
                        l.truncate(n);
                    }
                    if let Some(f) = non_finite(&pixels, c * h * w) {
                        return Err(f);
                    }
                    data::Dataset { pixel_values: pixels, labels, n, c, h, w, class_names: None, groups: None }
                }
            };
            let classes = m.config().num_classes;
            if let (Some(labels), true) = (&dataset.labels, classes > 0) {
                if let Some((i, l)) = eval::first_bad_label(labels, classes) {
                    return Err(Failure::new(
                        Kind::Data,
                        format!(
                            "label {l} of sample {i} is not a class of the model (it has {classes} classes, labels \
                             0..={})",
                            classes - 1
                        ),
                    ));
                }
            }
            let backbone = classes == 0;
            let options = RunOptions { batch, threads, keep_tokens: backbone };
            let size = [dataset.h, dataset.w];
            let run = |model: &factorvit::Model<'_>, what: &str| {
                eval::run_model(model, &dataset.pixel_values, dataset.n, size, options, |_| {}).map_err(|e| {
                    Failure::new(Failure::from_error(&e, Kind::Base).kind, format!("cannot run {what}: {e}"))
                })
            };
            let reference = match &r {
                Some(r) => {
                    if !eval::same_outputs(r, &m) {
                        return Err(Failure::new(Kind::Input, "the reference does not have the model's outputs"));
                    }
                    Some(run(r, "the reference")?)
                }
                None => None,
            };
            let outputs = run(&m, "the model")?;
            let metrics = eval::metrics(&outputs, dataset.labels.as_deref(), reference.as_ref())
                .map_err(|e| Failure::from_error(&e, Kind::Base))?;
            serde_json::to_string(&metrics).map_err(|e| Failure::new(Kind::Base, e.to_string()))
        })
    });
    result.map_err(|f| f.into_py(py))
}

/// Adds the functions to the native module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(preprocess_images, m)?)?;
    m.add_function(wrap_pyfunction!(save_pixel_values, m)?)?;
    m.add_function(wrap_pyfunction!(load_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(compress, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    Ok(())
}
