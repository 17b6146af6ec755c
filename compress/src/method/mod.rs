//! The compression method: activation-aware low-rank (+ sparse) factorisation of every block
//! linear layer of a ViT under one global parameter budget, with layer-wise error compensation.
//! See `docs/ALGORITHM.md` for the equations and the measurements behind each choice.
//!
//! * [`linalg`]: faer wrappers (symmetric eigendecomposition, SVD, clamped square roots).
//! * [`stats`]: first/second moments of layer inputs in f64.
//! * [`decompose`]: whitened truncated SVD, bias correction, low-rank + sparse fit.
//! * [`allocate`]: global greedy rank allocation.
//! * [`compensate`]: closed-form (reduced-rank regression) compensation with a validation gate.
//! * [`pipeline`]: the whole method over a model and calibration images, as a sequence of phases:
//!   `measure` (statistics, decomposition, sensitivity), [`allocate`], `factors`, `compensation`;
//!   over `streams` (the one runner that embeds, advances, captures and finishes image chunks)
//!   and `layer` (a block linear in the units of the loss). [`progress`]: its progress callback.
//! * [`eval`]: accuracy and fidelity metrics.

pub mod allocate;
pub mod compensate;
mod compensation;
pub mod decompose;
pub mod eval;
pub mod export;
mod factors;
mod layer;
pub mod linalg;
mod measure;
pub mod pipeline;
pub mod progress;
pub mod quantise;
mod sensitivity;
pub mod stats;
mod streams;
pub mod synthetic;

use std::fmt;

/// Errors of the compression method.
#[derive(Debug)]
pub enum MethodError {
    /// Inconsistent shapes or arguments.
    Shape(String),
    /// A NaN or infinity where finite numbers are required.
    NonFinite(String),
    /// A factorisation failed.
    Numerical(String),
    /// The budget cannot be met.
    Budget(String),
    /// Invalid options or input data.
    Input(String),
    /// The runtime rejected a model or an input.
    Runtime(factorvit::Error),
}

impl fmt::Display for MethodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodError::Shape(m) => write!(f, "shape error: {m}"),
            MethodError::NonFinite(m) => write!(f, "non-finite values in {m}"),
            MethodError::Numerical(m) => write!(f, "numerical failure: {m}"),
            MethodError::Budget(m) => write!(f, "budget: {m}"),
            MethodError::Input(m) => write!(f, "{m}"),
            MethodError::Runtime(e) => write!(f, "runtime: {e}"),
        }
    }
}

impl std::error::Error for MethodError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MethodError::Runtime(e) => Some(e),
            _ => None,
        }
    }
}

impl From<factorvit::Error> for MethodError {
    fn from(e: factorvit::Error) -> Self {
        MethodError::Runtime(e)
    }
}

pub use crate::report; // the per-layer report moved to `crate::report`; `method::report::Report` keeps working
