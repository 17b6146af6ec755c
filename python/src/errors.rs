//! Failures of the native module and their Python exception classes.
//!
//! The classes are defined in `factorvit/_errors.py` (so that they can also derive from the
//! built-in `ValueError`, `TypeError`, `OSError`, ...). Work done without the GIL returns a
//! [`Failure`]; it becomes a Python exception once the GIL is held again ([`Failure::into_py`]).

use std::any::Any;
use std::error::Error;

use pyo3::prelude::*;
use pyo3::types::PyType;

use factorvit_compress::data::DataError;
use factorvit_compress::job::JobError;
use factorvit_compress::method::MethodError;

/// The Python exception classes of `factorvit._errors`, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `FactorvitError`: the base class (also internal errors).
    Base,
    /// `FormatError`: the file or checkpoint is not a valid model.
    Format,
    /// `ChecksumError`: a checksum mismatch (a corrupt file).
    Checksum,
    /// `IoError`: a file cannot be read or written.
    Io,
    /// `InputError`: a bad argument or input.
    Input,
    /// `ShapeError`: an array of the wrong shape.
    Shape,
    /// `DtypeError`: an array of the wrong dtype (or not an array).
    Dtype,
    /// `LayoutError`: an array that is not C-contiguous and aligned.
    Layout,
    /// `NonFiniteError`: NaN or infinity in an input.
    NonFinite,
    /// `MemoryLimitError`: a session would exceed its memory limit.
    MemoryLimit,
    /// `DataError`: images or a dataset cannot be loaded.
    Data,
    /// `BudgetError`: a compression budget that cannot be met.
    Budget,
    /// `CompressError`: the compression failed.
    Compress,
}

impl Kind {
    /// The class name in `factorvit._errors`.
    fn class_name(self) -> &'static str {
        match self {
            Kind::Base => "FactorvitError",
            Kind::Format => "FormatError",
            Kind::Checksum => "ChecksumError",
            Kind::Io => "IoError",
            Kind::Input => "InputError",
            Kind::Shape => "ShapeError",
            Kind::Dtype => "DtypeError",
            Kind::Layout => "LayoutError",
            Kind::NonFinite => "NonFiniteError",
            Kind::MemoryLimit => "MemoryLimitError",
            Kind::Data => "DataError",
            Kind::Budget => "BudgetError",
            Kind::Compress => "CompressError",
        }
    }
}

/// A failure: the exception class and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The class.
    pub kind: Kind,
    /// The message (the runtime's or compressor's, with its causes).
    pub message: String,
}

impl Failure {
    /// A failure of class `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into() }
    }

    /// The Python exception (needs the GIL).
    pub fn into_py(self, py: Python<'_>) -> PyErr {
        raise(py, self.kind, self.message)
    }

    /// A panic caught at the boundary: reported as `FactorvitError`, never unwound into Python.
    pub fn from_panic(payload: Box<dyn Any + Send>) -> Failure {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Failure::new(Kind::Base, format!("internal error (a bug in factorvit): {what}"))
    }

    /// `error` with its causes, classified by the most specific cause the chain names.
    pub fn from_error(error: &(dyn Error + 'static), fallback: Kind) -> Failure {
        Failure::new(classify(error).unwrap_or(fallback), chain(error))
    }

    /// A [`JobError`] of the compression job or of opening a model.
    pub fn from_job(error: &JobError) -> Failure {
        let fallback = match error {
            JobError::Budget(_) => Kind::Budget,
            JobError::ImageSize { .. } => Kind::Input,
            JobError::TooFewImages { .. } | JobError::Calibration { .. } => Kind::Data,
            JobError::Model { .. } => Kind::Format,
            _ => Kind::Compress,
        };
        let kind = match error {
            JobError::Budget(_) | JobError::ImageSize { .. } | JobError::TooFewImages { .. } => fallback,
            JobError::Calibration { .. } => Kind::Data,
            _ => classify(error).unwrap_or(fallback),
        };
        Failure::new(kind, chain(error))
    }
}

/// Raises the class `kind` of `factorvit._errors` with `message`.
pub fn raise(py: Python<'_>, kind: Kind, message: impl Into<String>) -> PyErr {
    let message = message.into();
    let class = py
        .import("factorvit._errors")
        .and_then(|m| m.getattr(kind.class_name()))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        // The package is broken (the module is missing): say so rather than hide the message.
        Err(e) => pyo3::exceptions::PyRuntimeError::new_err(format!("{message} (and factorvit._errors: {e})")),
    }
}

/// The class of the most specific known error in `error`'s chain (outermost first).
fn classify(error: &(dyn Error + 'static)) -> Option<Kind> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(rt) = e.downcast_ref::<factorvit::Error>() {
            return Some(runtime_kind(rt));
        }
        if e.downcast_ref::<DataError>().is_some() {
            return Some(Kind::Data);
        }
        if let Some(m) = e.downcast_ref::<MethodError>() {
            // The method wraps runtime errors; a bad input to it is the caller's.
            if let Some(k) = e.source().and_then(classify) {
                return Some(k);
            }
            return Some(match m {
                MethodError::Input(_) => Kind::Input,
                MethodError::NonFinite(_) => Kind::NonFinite,
                MethodError::Shape(_) => Kind::Shape,
                MethodError::Budget(_) => Kind::Budget,
                _ => Kind::Compress,
            });
        }
        if e.downcast_ref::<std::io::Error>().is_some() {
            return Some(Kind::Io);
        }
        current = e.source();
    }
    None
}

/// The class of a runtime error.
pub fn runtime_kind(error: &factorvit::Error) -> Kind {
    use factorvit::Error as E;
    match error {
        E::Io { .. } => Kind::Io,
        E::Checksum { .. } => Kind::Checksum,
        E::Input(_) => Kind::Input,
        E::MemoryLimit { .. } => Kind::MemoryLimit,
        E::Container(_)
        | E::Json { .. }
        | E::Format(_)
        | E::Config(_)
        | E::MissingTensor(_)
        | E::Dtype { .. }
        | E::Shape { .. }
        | E::Sparse { .. }
        | E::Overflow(_)
        | E::NonFinite(_) => Kind::Format,
        _ => Kind::Base,
    }
}

/// `error: cause: cause ...`, skipping a cause whose text the message already ends with.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let part = e.to_string();
        if !part.is_empty() && !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = e.source();
    }
    text
}

/// Runs `f`, turning a panic into a [`Failure`] (nothing unwinds into the interpreter).
pub fn guard<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| Err(Failure::from_panic(p)))
}
