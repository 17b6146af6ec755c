//! The compressor's API on a [`Model`]: replace a block linear's weights with in-memory
//! tensors ([`Model::set_linear`]), derive cheap variants ([`Model::view`]) and read any
//! layer's effective dense weight ([`Model::effective_weight`]). Inference never needs these.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::load::validate_csr;
use super::storage::{OwnedTensor, Storage, TensorStore};
use super::{parse_block_linear, Block, BlockLinear, Linear, LinearRepr, Model, Sparse};
use crate::error::{Error, Result};
use crate::kernels::SparseIndices;

/// Replacement weights for a linear layer, built in memory (used by the compressor).
#[derive(Debug, Clone)]
pub enum LinearWeights {
    /// Dense `W`, row-major `m × n`.
    Dense {
        /// Elements.
        weight: Vec<f32>,
    },
    /// `U·V (+ S)`.
    Factored {
        /// `U`, row-major `m × r`.
        u: Vec<f32>,
        /// `V`, row-major `r × n`.
        v: Vec<f32>,
        /// `r ≥ 1`.
        rank: usize,
        /// Optional sparse term.
        sparse: Option<CsrMatrix>,
    },
}

/// A CSR matrix with rows = outputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsrMatrix {
    /// `m + 1` row pointers.
    pub row_ptr: Vec<u32>,
    /// Column index per non-zero.
    pub col_idx: Vec<u32>,
    /// Value per non-zero.
    pub values: Vec<f32>,
}

impl CsrMatrix {
    /// Checks the CSR invariants for an `m × n` matrix.
    pub fn validate(&self, m: usize, n: usize) -> core::result::Result<(), String> {
        validate_csr(m, n, &self.row_ptr, SparseIndices::U32(&self.col_idx), self.values.len())
    }
}

impl Block {
    fn linear_mut(&mut self, which: BlockLinear) -> &mut Linear {
        match which {
            BlockLinear::Qkv => &mut self.qkv,
            BlockLinear::Proj => &mut self.proj,
            BlockLinear::Fc1 => &mut self.fc1,
            BlockLinear::Fc2 => &mut self.fc2,
        }
    }
}

impl Model<'_> {
    /// The effective weight `Ŵ` of a layer as a dense f32 `m × n` matrix (for references,
    /// tests and the compressor; allocates).
    pub fn effective_weight(&self, layer: &Linear) -> Vec<f32> {
        let (m, n) = (layer.out_features, layer.in_features);
        let mut w = alloc::vec![0.0f32; m * n];
        match &layer.repr {
            LinearRepr::Dense(t) => {
                let s = self.store.weights(t);
                for (i, x) in w.iter_mut().enumerate() {
                    *x = s.value(i, i / n.max(1));
                }
            }
            LinearRepr::Factored { u, v, rank, .. } => {
                let (u, v) = (self.store.weights(u), self.store.weights(v));
                for i in 0..m {
                    for p in 0..*rank {
                        let uip = u.value(i * rank + p, i);
                        for j in 0..n {
                            w[i * n + j] += uip * v.value(p * n + j, p);
                        }
                    }
                }
                if let Some((rp, ci, vals)) = self.sparse_term(layer) {
                    for i in 0..m {
                        for q in rp[i] as usize..rp[i + 1] as usize {
                            w[i * n + ci.get(q)] += vals.value(q, i);
                        }
                    }
                }
            }
        }
        w
    }

    /// Replaces the weights (and bias) of linear layer `name` with in-memory f32 tensors.
    /// Used by the compressor to evaluate candidate factorisations without writing files.
    pub fn set_linear(&mut self, name: &str, weights: LinearWeights, bias: Option<Vec<f32>>) -> Result<()> {
        let (block, which) = parse_block_linear(name, self.blocks.len())
            .ok_or_else(|| Error::Input(format!("`{name}` is not a block linear layer")))?;
        let (m, n) = {
            let l = self.blocks[block].linear(which);
            (l.out_features, l.in_features)
        };
        if let Some(b) = &bias {
            if b.len() != m {
                return Err(Error::Input(format!("bias of `{name}` has {} entries, expected {m}", b.len())));
            }
        }
        let repr = match weights {
            LinearWeights::Dense { weight } => {
                if weight.len() != m * n {
                    return Err(Error::Input(format!(
                        "weight of `{name}` has {} entries, expected {}",
                        weight.len(),
                        m * n
                    )));
                }
                LinearRepr::Dense(self.store.push_owned(OwnedTensor::F32(weight)))
            }
            LinearWeights::Factored { u, v, rank, sparse } => {
                if rank == 0 || u.len() != m * rank || v.len() != rank * n {
                    return Err(Error::Input(format!(
                        "factors of `{name}` do not match rank {rank} and shape {m}×{n}"
                    )));
                }
                let sparse = match sparse {
                    None => None,
                    Some(s) => {
                        s.validate(m, n).map_err(|reason| Error::Sparse { layer: name.to_string(), reason })?;
                        Some(Sparse {
                            row_ptr: self.store.push_owned(OwnedTensor::U32(s.row_ptr)),
                            col_idx: self.store.push_owned(OwnedTensor::U32(s.col_idx)),
                            values: self.store.push_owned(OwnedTensor::F32(s.values)),
                        })
                    }
                };
                LinearRepr::Factored {
                    u: self.store.push_owned(OwnedTensor::F32(u)),
                    v: self.store.push_owned(OwnedTensor::F32(v)),
                    rank,
                    sparse,
                }
            }
        };
        let layer = self.blocks[block].linear_mut(which);
        layer.repr = repr;
        if bias.is_some() || layer.bias.is_some() {
            layer.bias_bytes = m * 4;
        }
        layer.bias = bias;
        Ok(())
    }

    /// A model that borrows this one's bytes (cheap: copies only small vectors and owned
    /// replacement tensors). Used to derive variants with [`Model::set_linear`].
    pub fn view(&self) -> Model<'_> {
        Model {
            store: TensorStore {
                storage: Storage::Borrowed(self.store.storage.bytes()),
                owned: self.store.owned.clone(),
            },
            config: self.config.clone(),
            preprocess: self.preprocess.clone(),
            labels: self.labels.clone(),
            metadata: self.metadata.clone(),
            patch_embed: self.patch_embed.clone(),
            cls_token: self.cls_token.clone(),
            dist_token: self.dist_token.clone(),
            pos_embed: self.pos_embed.clone(),
            blocks: self.blocks.clone(),
            norm: self.norm.clone(),
            fc_norm: self.fc_norm.clone(),
            head: self.head.clone(),
            head_dist: self.head_dist.clone(),
            vector_bytes: self.vector_bytes,
            checksum_status: self.checksum_status,
        }
    }
}
