//! `factorvit._native`: the native half of the `factorvit` Python package (the pure-Python half,
//! `python/factorvit/`, re-exports it with the documented API).
//!
//! - [`PyModel`] (`factorvit.Model`): a model opened from a `.fvit` file (memory-mapped), a
//!   timm / Hugging Face checkpoint directory (converted in memory) or bytes.
//! - [`PySession`] (`factorvit.Session`): preallocated buffers for one input size, batch limit and
//!   thread count; [`PySession::run`] reads a C-contiguous float32 array in place and releases
//!   the GIL while the model runs.
//! - [`tools`]: image preprocessing, compression and evaluation.
//!
//! Nothing panics across the boundary: every failure is a [`errors::Failure`] raised as a
//! `factorvit.FactorvitError` subclass, and panics are caught ([`errors::guard`]).
#![warn(missing_docs)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::ndarray::{Array2, Array3};
use numpy::prelude::*;
use numpy::{PyArrayDyn, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList};
use self_cell::self_cell;

use factorvit::session::MAX_THREADS;
use factorvit::{Head, SessionOptions};
use factorvit_compress::job::{self, JobProgress};

mod errors;
mod tools;

use errors::{guard, Failure, Kind};

/// Collects the warnings of a model import, to be issued as Python warnings.
#[derive(Debug, Default)]
pub(crate) struct Warnings(pub(crate) Vec<String>);

impl JobProgress for Warnings {
    fn warning(&mut self, text: &str) {
        self.0.push(text.to_string());
    }
}

impl Warnings {
    /// Issues every warning as a Python `UserWarning`.
    pub(crate) fn emit(self, py: Python<'_>) -> PyResult<()> {
        let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
        for w in self.0 {
            let text = std::ffi::CString::new(w.replace('\0', " ")).unwrap_or_default();
            PyErr::warn(py, &category, &text, 1)?;
        }
        Ok(())
    }
}

/// Parses runtime JSON text (the config's, the preprocessing's) into Python objects.
pub(crate) fn json_loads<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (text,))
}

/// A model: architecture, preprocessing, labels and weights, shared by its sessions.
#[pyclass(module = "factorvit", name = "Model", frozen)]
pub struct PyModel {
    pub(crate) model: Arc<factorvit::Model<'static>>,
    source: String,
}

impl PyModel {
    /// Wraps a loaded model.
    pub(crate) fn wrap(model: factorvit::Model<'static>, source: String) -> PyModel {
        PyModel { model: Arc::new(model), source }
    }

    /// Opens a `.fvit` file or a checkpoint directory without the GIL.
    pub(crate) fn open_path(py: Python<'_>, path: PathBuf) -> PyResult<PyModel> {
        let source = path.display().to_string();
        let (result, warnings) = py.detach(|| {
            let mut warnings = Warnings::default();
            let result = guard(|| job::open_model(&path, &mut warnings).map_err(|e| Failure::from_job(&e)));
            (result, warnings)
        });
        warnings.emit(py)?;
        Ok(PyModel::wrap(result.map_err(|f| f.into_py(py))?, source))
    }
}

/// The options of a session from the Python arguments.
fn session_options(
    model: &factorvit::Model<'_>,
    threads: usize,
    batch: usize,
    image_size: Option<&Bound<'_, PyAny>>,
) -> Result<SessionOptions, Failure> {
    if threads > MAX_THREADS {
        return Err(Failure::new(Kind::Input, format!("threads={threads}: at most {MAX_THREADS} (0 = one per core)")));
    }
    if batch == 0 {
        return Err(Failure::new(Kind::Input, "batch must be at least 1"));
    }
    let image_size = match image_size {
        None => [0, 0],
        Some(v) if v.is_none() => [0, 0],
        Some(v) => {
            if let Ok(side) = v.extract::<usize>() {
                [side, side]
            } else if let Ok((h, w)) = v.extract::<(usize, usize)>() {
                [h, w]
            } else {
                return Err(Failure::new(Kind::Input, "image_size must be None, an int or a (height, width) pair"));
            }
        }
    };
    let p = model.config().patch_size;
    if image_size != [0, 0] && image_size.iter().any(|&s| s < p || s % p != 0) {
        return Err(Failure::new(
            Kind::Input,
            format!(
                "image_size {}x{}: height and width must be multiples of the model's patch size {p}",
                image_size[0], image_size[1]
            ),
        ));
    }
    Ok(SessionOptions { threads, batch, image_size, ..SessionOptions::default() })
}

/// One row of [`PyModel::layers`].
fn layer_dict<'py>(py: Python<'py>, info: &factorvit::LinearInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &info.name)?;
    d.set_item("kind", info.kind.name())?;
    d.set_item("out_features", info.out_features)?;
    d.set_item("in_features", info.in_features)?;
    d.set_item("rank", info.rank)?;
    d.set_item("nnz", info.nnz)?;
    d.set_item("params", info.params)?;
    d.set_item("dense_params", info.out_features * info.in_features)?;
    d.set_item("weight_bytes", info.weight_bytes)?;
    d.set_item("macs_per_row", info.macs_per_row)?;
    d.set_item("dtype", info.dtype.name())?;
    Ok(d)
}

#[pymethods]
impl PyModel {
    /// Opens a model: a `.fvit` file (memory-mapped, weights read in place) or a timm / Hugging
    /// Face checkpoint directory (`config.json` + `model.safetensors`, converted in memory).
    /// Import warnings are issued as `UserWarning`s.
    ///
    /// Raises `IoError` if the file cannot be read, `FormatError` if it is not a valid model.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<PyModel> {
        PyModel::open_path(py, path)
    }

    /// Loads a model from the bytes of a `.fvit` file (`bytes`, `bytearray`, `memoryview` or
    /// anything `bytes()` accepts); the bytes are copied.
    ///
    /// Raises `FormatError` if they are not a valid model.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<PyModel> {
        let bytes: Vec<u8> = if let Ok(b) = data.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(b) = data.cast::<PyByteArray>() {
            b.to_vec()
        } else {
            let converted = py
                .import("builtins")?
                .getattr("bytes")?
                .call1((data,))
                .map_err(|_| errors::raise(py, Kind::Dtype, "from_bytes takes bytes, bytearray or a buffer"))?;
            converted.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes().to_vec()
        };
        let size = bytes.len();
        let model = py
            .detach(|| guard(|| factorvit::Model::from_vec(bytes).map_err(|e| Failure::from_error(&e, Kind::Format))))
            .map_err(|f| f.into_py(py))?;
        Ok(PyModel::wrap(model, format!("<{size} bytes>")))
    }

    /// The architecture as a dict (the file's `config` entry: `architecture`, `image_size`,
    /// `patch_size`, `in_chans`, `embed_dim`, `depth`, `num_heads`, `mlp_hidden`,
    /// `num_classes`, ...).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_loads(py, &self.model.config().to_json().to_json())
    }

    /// The eval preprocessing as a dict: `input_size` `[C, H, W]`, `mean`, `std`,
    /// `interpolation`, `crop_pct`.
    #[getter]
    fn preprocess<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_loads(py, &self.model.preprocess().to_json().to_json())
    }

    /// Class names (empty for backbones or files without labels).
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.model.labels().to_vec()
    }

    /// Total parameters (weights, biases, norms, tokens, position table).
    #[getter]
    fn params(&self) -> usize {
        self.model.params()
    }

    /// Bytes of weights the model holds, at their stored dtype (read once per inference).
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// Where the model came from (the path, or `<N bytes>`).
    #[getter]
    fn source(&self) -> &str {
        &self.source
    }

    /// A metadata entry of the file by key (e.g. `compression`, `producer`), or `None`.
    fn metadata(&self, key: &str) -> Option<String> {
        self.model.metadata(key).map(str::to_string)
    }

    /// The per-layer table: one dict per linear layer (the patch embedding, every block's `qkv`,
    /// `proj`, `fc1`, `fc2`, the heads) with `name`, `kind` (`dense`, `low_rank`,
    /// `low_rank_sparse`), `out_features`, `in_features`, `rank`, `nnz`, `params`,
    /// `dense_params`, `weight_bytes`, `macs_per_row` and `dtype`.
    #[getter]
    fn layers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        let patch = self.model.linear(factorvit::format::schema::PATCH_EMBED);
        for layer in patch.into_iter().chain(self.model.linears()) {
            list.append(layer_dict(py, &layer.info())?)?;
        }
        Ok(list)
    }

    /// Memory figures in bytes: `weight_bytes` (held by the model), `copied_weight_bytes` (of
    /// which copied into RAM at load), `arena_bytes` (what a session with these options
    /// allocates) and `bytes_read_per_inference` (every weight is streamed once per forward pass).
    #[pyo3(signature = (threads=1, batch=1, image_size=None))]
    fn memory<'py>(
        &self,
        py: Python<'py>,
        threads: usize,
        batch: usize,
        image_size: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let options = session_options(&self.model, threads, batch, image_size).map_err(|f| f.into_py(py))?;
        let arena = guard(|| {
            factorvit::Session::required_memory(&self.model, &options).map_err(|e| Failure::from_error(&e, Kind::Base))
        })
        .map_err(|f| f.into_py(py))?;
        let d = PyDict::new(py);
        d.set_item("weight_bytes", self.model.weight_bytes())?;
        d.set_item("copied_weight_bytes", self.model.copied_bytes())?;
        d.set_item("arena_bytes", arena)?;
        d.set_item("bytes_read_per_inference", self.model.weight_bytes())?;
        Ok(d)
    }

    /// A session: every buffer preallocated for inputs of `image_size` (`None`: the model's
    /// trained size; an int or `(height, width)`, multiples of the patch size), up to `batch`
    /// images per pass (`Session.run` splits larger arrays), on `threads` worker threads
    /// (0 = one per core, 1 = the calling thread).
    #[pyo3(signature = (threads=0, batch=1, image_size=None))]
    fn session(
        slf: &Bound<'_, PyModel>,
        threads: usize,
        batch: usize,
        image_size: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PySession> {
        let py = slf.py();
        let this = slf.get();
        let options = session_options(&this.model, threads, batch, image_size).map_err(|f| f.into_py(py))?;
        let owner = Arc::clone(&this.model);
        let cell = py
            .detach(|| {
                guard(|| {
                    SessionCell::try_new(owner, |m| m.session(options.clone()))
                        .map_err(|e| Failure::from_error(&e, Kind::Base))
                })
            })
            .map_err(|f| f.into_py(py))?;
        let (image, used_threads) = cell.with_dependent(|_, s| (s.image_size(), s.threads()));
        let config = this.model.config();
        Ok(PySession {
            cell: Mutex::new(cell),
            model: slf.clone().unbind(),
            batch,
            threads: used_threads,
            image,
            in_chans: config.in_chans,
            classifier: config.head != Head::None,
        })
    }

    fn __repr__(&self) -> String {
        let c = self.model.config();
        format!(
            "Model({:?}, architecture={:?}, depth={}, embed_dim={}, num_classes={}, params={})",
            self.source,
            c.architecture,
            c.depth,
            c.embed_dim,
            c.num_classes,
            self.model.params()
        )
    }
}

/// A runtime session borrowing the model it runs.
type RtSession<'m> = factorvit::Session<'m, 'static>;

self_cell!(
    /// A session together with the model it borrows (shared with the Python `Model`).
    struct SessionCell {
        owner: Arc<factorvit::Model<'static>>,
        #[not_covariant]
        dependent: RtSession,
    }
);

/// A reusable inference context (`Model.session(...)`); `run` may be called from several Python
/// threads, runs of one session are serialised (use one session per thread for parallel runs).
#[pyclass(module = "factorvit", name = "Session", frozen)]
pub struct PySession {
    cell: Mutex<SessionCell>,
    model: Py<PyModel>,
    batch: usize,
    threads: usize,
    image: [usize; 2],
    in_chans: usize,
    classifier: bool,
}

/// The outputs of [`PySession::run`], concatenated over the batches.
struct RunOutputs {
    logits: Vec<f32>,
    hidden: Vec<f32>,
    pooled: Vec<f32>,
    classes: usize,
    tokens: usize,
    dim: usize,
}

/// The data of `array` as a float32 slice after checking its type, dtype, layout and shape
/// (`[N, C, H, W]`): the runtime reads it in place.
pub(crate) fn check_pixels<'py>(
    py: Python<'py>,
    array: &Bound<'py, PyAny>,
    channels: usize,
    size: Option<[usize; 2]>,
) -> PyResult<(Bound<'py, PyArrayDyn<f32>>, [usize; 4])> {
    let untyped = array.cast::<PyUntypedArray>().map_err(|_| {
        let ty = array.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        errors::raise(py, Kind::Dtype, format!("pixel_values must be a numpy.ndarray of float32, got {ty}"))
    })?;
    let dtype = untyped.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
        return Err(errors::raise(
            py,
            Kind::Dtype,
            format!("pixel_values has dtype {dtype}, expected float32 (convert with x.astype(numpy.float32))"),
        ));
    }
    let shape = untyped.shape().to_vec();
    let dims = match shape[..] {
        [n, c, h, w] if n > 0 => [n, c, h, w],
        _ => {
            return Err(errors::raise(
                py,
                Kind::Shape,
                format!("pixel_values has shape {shape:?}, expected (N, C, H, W) with N >= 1"),
            ))
        }
    };
    let [_, c, h, w] = dims;
    if c != channels {
        return Err(errors::raise(
            py,
            Kind::Shape,
            format!("pixel_values has {c} channels (shape {shape:?}), the model takes {channels}"),
        ));
    }
    if let Some([sh, sw]) = size {
        if [h, w] != [sh, sw] {
            return Err(errors::raise(
                py,
                Kind::Shape,
                format!(
                    "pixel_values are {h}x{w} (shape {shape:?}), the session takes {sh}x{sw} (make a session with \
                     image_size=({h}, {w}))"
                ),
            ));
        }
    }
    let typed = untyped.cast::<PyArrayDyn<f32>>().map_err(PyErr::from)?.clone();
    let aligned = (typed.data() as usize) % std::mem::align_of::<f32>() == 0;
    if !untyped.is_c_contiguous() || !aligned {
        return Err(errors::raise(
            py,
            Kind::Layout,
            "pixel_values must be C-contiguous and aligned (use numpy.ascontiguousarray(x, dtype=numpy.float32))",
        ));
    }
    Ok((typed, dims))
}

/// The index of the first image holding a non-finite value, and the value.
pub(crate) fn non_finite(pixels: &[f32], per_image: usize) -> Option<Failure> {
    pixels.iter().position(|v| !v.is_finite()).map(|i| {
        Failure::new(
            Kind::NonFinite,
            format!(
                "pixel_values: image {} holds a non-finite value ({}); pixel values must be finite",
                i / per_image.max(1),
                pixels[i]
            ),
        )
    })
}

#[pymethods]
impl PySession {
    /// Runs the model on `pixel_values`, a C-contiguous float32 array `(N, C, H, W)` already
    /// normalised with the model's mean and std (see `factorvit.preprocess`), read in place.
    /// The GIL is released while the model runs. Arrays of more than `batch` images run in
    /// several passes.
    ///
    /// Returns a dict of float32 arrays: `logits` `(N, classes)` for classifiers,
    /// `last_hidden_state` `(N, tokens, dim)` and `pooler_output` `(N, dim)`.
    ///
    /// Raises `DtypeError` (not a float32 ndarray), `ShapeError` (not `(N, C, H, W)` of the
    /// session's size), `LayoutError` (not C-contiguous), `NonFiniteError` (NaN or infinity).
    fn run<'py>(&self, py: Python<'py>, pixel_values: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let (array, [n, c, h, w]) = check_pixels(py, pixel_values, self.in_chans, Some(self.image))?;
        let readonly = array.try_readonly().map_err(|e| errors::raise(py, Kind::Layout, e.to_string()))?;
        let pixels = readonly.as_slice().map_err(|e| errors::raise(py, Kind::Layout, e.to_string()))?;
        let per_image = c * h * w;
        let (cell, batch) = (&self.cell, self.batch);
        let result = py.detach(|| {
            guard(|| {
                if let Some(f) = non_finite(pixels, per_image) {
                    return Err(f);
                }
                let mut cell = cell.lock().map_err(|_| Failure::new(Kind::Base, "the session is unusable"))?;
                cell.with_dependent_mut(|_, session| {
                    let mut out = RunOutputs {
                        logits: Vec::new(),
                        hidden: Vec::new(),
                        pooled: Vec::new(),
                        classes: 0,
                        tokens: 0,
                        dim: 0,
                    };
                    for chunk in pixels.chunks(batch * per_image) {
                        let o = session.run(chunk).map_err(|e| Failure::from_error(&e, Kind::Input))?;
                        (out.classes, out.tokens, out.dim) = (o.num_classes, o.tokens, o.dim);
                        if let Some(l) = o.logits {
                            out.logits.extend_from_slice(l);
                        }
                        out.hidden.extend_from_slice(o.last_hidden_state);
                        out.pooled.extend_from_slice(o.pooler_output);
                    }
                    Ok(out)
                })
            })
        });
        drop(readonly);
        let out = result.map_err(|f| f.into_py(py))?;
        let shape_err = |e: numpy::ndarray::ShapeError| {
            errors::raise(py, Kind::Base, format!("internal error: outputs of an unexpected size ({e})"))
        };
        let d = PyDict::new(py);
        if self.classifier {
            d.set_item(
                "logits",
                Array2::from_shape_vec((n, out.classes), out.logits).map_err(shape_err)?.into_pyarray(py),
            )?;
        }
        d.set_item(
            "last_hidden_state",
            Array3::from_shape_vec((n, out.tokens, out.dim), out.hidden).map_err(shape_err)?.into_pyarray(py),
        )?;
        d.set_item(
            "pooler_output",
            Array2::from_shape_vec((n, out.dim), out.pooled).map_err(shape_err)?.into_pyarray(py),
        )?;
        Ok(d)
    }

    /// Memory figures of this session in bytes: `weight_bytes`, `copied_weight_bytes`,
    /// `arena_bytes` (its preallocated buffers) and `bytes_read_per_inference`.
    fn memory<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let report = {
            let cell = self.cell.lock().map_err(|_| errors::raise(py, Kind::Base, "the session is unusable"))?;
            cell.with_dependent(|_, s| s.memory())
        };
        let d = PyDict::new(py);
        d.set_item("weight_bytes", report.weight_bytes)?;
        d.set_item("copied_weight_bytes", report.copied_weight_bytes)?;
        d.set_item("arena_bytes", report.arena_bytes)?;
        d.set_item("bytes_read_per_inference", report.weight_bytes)?;
        Ok(d)
    }

    /// The model this session runs.
    #[getter]
    fn model(&self, py: Python<'_>) -> Py<PyModel> {
        self.model.clone_ref(py)
    }

    /// Largest number of images per forward pass.
    #[getter]
    fn batch(&self) -> usize {
        self.batch
    }

    /// Worker threads of the session.
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// The input size `(height, width)` the session takes.
    #[getter]
    fn image_size(&self) -> (usize, usize) {
        (self.image[0], self.image[1])
    }

    fn __repr__(&self) -> String {
        format!(
            "Session(image_size=({}, {}), batch={}, threads={})",
            self.image[0], self.image[1], self.batch, self.threads
        )
    }
}

/// The native module `factorvit._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PySession>()?;
    tools::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
