//! Progress of [`super::pipeline::compress_model`], reported through an optional callback (as
//! `eval::run_model` reports its batches): the method draws nothing itself.

use std::fmt;
use std::sync::Arc;

/// A phase of the method that reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Dense statistics, decompositions and sensitivity probes (one step per block).
    Statistics,
    /// Uncompensated factors (one step per layer).
    Factors,
    /// Compensation (one step per block).
    Compensation,
}

impl Phase {
    /// A short label for a progress display.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Statistics => "statistics + SVD",
            Phase::Factors => "factors",
            Phase::Compensation => "compensation",
        }
    }
}

/// `done` of a phase's `total` steps. Every phase reports `done = 0` when it starts and
/// `done = total` when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressEvent {
    /// The phase.
    pub phase: Phase,
    /// Steps done.
    pub done: usize,
    /// Steps of the phase.
    pub total: usize,
}

/// The progress callback of [`super::pipeline::PipelineOptions`]; the default reports nothing.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Fn(ProgressEvent) + Send + Sync>>);

impl Progress {
    /// No progress reports.
    pub fn none() -> Progress {
        Progress(None)
    }

    /// Reports every event to `callback` (called on the thread that runs the method).
    pub fn new(callback: impl Fn(ProgressEvent) + Send + Sync + 'static) -> Progress {
        Progress(Some(Arc::new(callback)))
    }

    /// Whether a callback is set.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    pub(super) fn report(&self, phase: Phase, done: usize, total: usize) {
        if let Some(f) = &self.0 {
            f(ProgressEvent { phase, done, total });
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_some() { "Progress(callback)" } else { "Progress(none)" })
    }
}
