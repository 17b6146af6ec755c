//! The compressor's API on a [`Session`]: read and overwrite the residual stream between
//! blocks, and run a block only up to the input of one of its layers. Inference
//! ([`Session::run`]) needs none of it.

use super::{Observer, Session};
use crate::format::schema::BlockLinear;

impl Session<'_, '_> {
    /// The residual stream `[batch·tokens, dim]` of the current run.
    pub fn residual(&self) -> &[f32] {
        &self.x[..self.rows() * self.dim()]
    }

    /// Mutable residual stream (the compressor feeds blocks inputs from another model).
    pub fn residual_mut(&mut self) -> &mut [f32] {
        let n = self.rows() * self.dim();
        &mut self.x[..n]
    }

    /// Block `i` up to the input of its layer `last`: runs everything `last`'s input depends
    /// on, shows it to `observer` (with the inputs of the layers before it) and returns without
    /// applying `last` or anything after it. For calibration tools that need one layer's input
    /// and not the block's output: the residual stream is left part-way through the block
    /// (after the attention residual when `last` is `Fc1` or `Fc2`), so reload it before the
    /// next [`Session::run_block`].
    pub fn run_block_until(&mut self, i: usize, last: BlockLinear, observer: &mut dyn Observer) {
        self.run_block_inner(i, Some(last), observer);
    }
}
