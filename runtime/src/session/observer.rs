//! [`Observer`]: hooks that see a forward pass's intermediate activations.

use crate::format::schema::BlockLinear;

/// Hooks called during a forward pass with intermediate activations (row-major, one row per
/// token, `batch × tokens` rows). Used for fixture checks and by the compressor to collect
/// layer-input statistics. All methods default to doing nothing.
pub trait Observer {
    /// After the embeddings (patches + prefix tokens + positions), before block 0.
    fn embeddings(&mut self, x: &[f32], rows: usize, dim: usize) {
        let _ = (x, rows, dim);
    }
    /// The input of a block linear layer, just before it is applied.
    fn linear_input(&mut self, block: usize, which: BlockLinear, x: &[f32], rows: usize, cols: usize) {
        let _ = (block, which, x, rows, cols);
    }
    /// The residual stream that the output of `which` ([`BlockLinear::Proj`] or
    /// [`BlockLinear::Fc2`]) is about to be added to (`rows × dim`), called just before that
    /// layer's [`Observer::linear_input`]: the block input for `Proj`, the stream after the
    /// attention branch for `Fc2`.
    fn residual_input(&mut self, block: usize, which: BlockLinear, x: &[f32], rows: usize, dim: usize) {
        let _ = (block, which, x, rows, dim);
    }
    /// The residual stream after a block.
    fn block_output(&mut self, block: usize, x: &[f32], rows: usize, dim: usize) {
        let _ = (block, x, rows, dim);
    }
}

/// An observer that does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;
impl Observer for NoObserver {}
