//! Applying one linear layer, whatever its representation (dense, low-rank, low-rank +
//! sparse): [`LinearCtx::apply`].

use alloc::vec::Vec;

use crate::kernels::{self, Backend, Csr, Epilogue, Gemm, MatB, Rows, RowsMut, Scratch};
use crate::model::{Linear, LinearRepr, Model, Sparse};
use crate::parallel::Exec;

/// Temporaries a factored or sparse linear layer needs (sized by the arena plan).
#[derive(Debug, Default)]
pub(super) struct LinearBuffers {
    /// `rows × r`: `x·Vᵀ`.
    pub(super) low_rank: Vec<f32>,
    /// `rows × m`: the output before the activation / residual add of a sparse layer.
    pub(super) lin_out: Vec<f32>,
    /// `rows × n`: the transposed input of a sparse term.
    pub(super) xt: Vec<f32>,
}

/// Everything a linear layer needs besides its operands: the model's weights, the kernel
/// backend, the thread pool with its per-thread scratch, and the temporaries.
pub(super) struct LinearCtx<'c> {
    pub(super) model: &'c Model<'c>,
    pub(super) backend: Backend,
    pub(super) exec: &'c Exec,
    pub(super) scratch: &'c mut [Scratch],
    pub(super) bufs: &'c mut LinearBuffers,
}

impl LinearCtx<'_> {
    /// `out (ld m) ⊕= epilogue(input · Ŵᵀ + b)` for any representation of `Ŵ` (the epilogue's
    /// bias is replaced by the layer's).
    pub(super) fn apply(&mut self, layer: &Linear, input: Rows<'_>, out: &mut [f32], epilogue: Epilogue<'_>) {
        let (rows, m, n) = (input.rows(), layer.out_features, layer.in_features);
        let (a, lda) = (input.data, input.ld());
        let bias = layer.bias.as_deref();
        let store = &self.model.store;
        match &layer.repr {
            LinearRepr::Dense(w) => {
                let ep = Epilogue { bias, ..epilogue };
                let b = MatB::weight(store.weights(w), m, n);
                kernels::gemm_parallel(
                    self.backend,
                    self.exec,
                    self.scratch,
                    Gemm { m: rows, a, lda, b, c: out, ldc: m, epilogue: ep },
                );
            }
            LinearRepr::Factored { u, v, rank, sparse } => {
                let r = *rank;
                let tmp = &mut self.bufs.low_rank[..rows * r];
                let vb = MatB::weight(store.weights(v), r, n);
                kernels::gemm_parallel(
                    self.backend,
                    self.exec,
                    self.scratch,
                    Gemm { m: rows, a, lda, b: vb, c: tmp, ldc: r, epilogue: Epilogue::default() },
                );
                let ub = MatB::weight(store.weights(u), m, r);
                match sparse {
                    None => {
                        let ep = Epilogue { bias, ..epilogue };
                        kernels::gemm_parallel(
                            self.backend,
                            self.exec,
                            self.scratch,
                            Gemm {
                                m: rows,
                                a: &self.bufs.low_rank[..rows * r],
                                lda: r,
                                b: ub,
                                c: out,
                                ldc: m,
                                epilogue: ep,
                            },
                        );
                    }
                    Some(s) => self.apply_sparse(layer, ub, s, input, out, epilogue),
                }
            }
        }
    }

    /// The rest of a low-rank + sparse layer once `low_rank` holds `x·Vᵀ`:
    /// `y = (x·Vᵀ)·Uᵀ + b`, then `y += x·Sᵀ`, then the activation / residual add.
    fn apply_sparse(
        &mut self,
        layer: &Linear,
        ub: MatB<'_>,
        s: &Sparse,
        input: Rows<'_>,
        out: &mut [f32],
        epilogue: Epilogue<'_>,
    ) {
        let (rows, m, r) = (input.rows(), layer.out_features, layer.rank());
        let store = &self.model.store;
        let plain = !epilogue.gelu && !epilogue.accumulate;
        let (row_ptr, col_idx, values) = (store.u32s(&s.row_ptr), store.indices(&s.col_idx), store.weights(&s.values));
        let LinearBuffers { low_rank, lin_out, xt } = &mut *self.bufs;
        let y: &mut [f32] = if plain { out } else { &mut lin_out[..rows * m] };
        let ep = Epilogue { bias: layer.bias.as_deref(), ..Epilogue::default() };
        kernels::gemm_parallel(
            self.backend,
            self.exec,
            self.scratch,
            Gemm { m: rows, a: &low_rank[..rows * r], lda: r, b: ub, c: y, ldc: m, epilogue: ep },
        );
        kernels::sparse_add(self.backend, Csr { row_ptr, col_idx, values }, input, RowsMut::new(y, rows, m, m), xt);
        if !plain {
            let y = &mut lin_out[..rows * m];
            if epilogue.gelu {
                kernels::gelu(self.backend, y);
            }
            if epilogue.accumulate {
                kernels::add_scaled(self.backend, &mut out[..rows * m], y, epilogue.scale);
            } else {
                out[..rows * m].copy_from_slice(y);
            }
        }
    }
}
