//! A loaded, validated model: configuration plus handles to every weight.
//!
//! [`Model::open`] memory-maps a file, [`Model::from_bytes`] reads any byte slice (flash,
//! `include_bytes!`), [`Model::from_vec`] takes ownership of a buffer. Loading validates the
//! whole file (see `docs/FORMAT.md`); running never re-checks it.
//!
//! Rooms: this file holds [`Model`], [`Linear`] and the read-only accessors; `load.rs` opens
//! and validates files ([`LoadOptions`]); `storage.rs` says where tensor bytes live; `edit.rs`
//! is the compressor's API (in-memory replacement weights, views, effective weights).

use alloc::string::String;
use alloc::vec::Vec;

use crate::checksum::ChecksumStatus;
use crate::config::{ModelConfig, Preprocess};
use crate::kernels::{SparseIndices, WeightSlice};
use crate::safetensors::DType;

mod edit;
mod load;
pub(crate) mod storage;

pub use crate::format::schema::{parse_block_linear, BlockLinear};
pub use crate::format::{LinearKind, FORMAT_NAME, FORMAT_VERSION};
pub use edit::{CsrMatrix, LinearWeights};
pub use load::LoadOptions;

use storage::{TensorPlace, TensorStore};

#[derive(Debug, Clone)]
pub(crate) struct Sparse {
    pub(crate) row_ptr: TensorPlace,
    pub(crate) col_idx: TensorPlace,
    pub(crate) values: TensorPlace,
}

// One per layer, built at load: the size difference (a factored layer holds five tensor
// handles) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum LinearRepr {
    Dense(TensorPlace),
    Factored { u: TensorPlace, v: TensorPlace, rank: usize, sparse: Option<Sparse> },
}

/// One linear layer `y = x·Ŵᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub(crate) name: String,
    pub(crate) out_features: usize,
    pub(crate) in_features: usize,
    pub(crate) repr: LinearRepr,
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) bias_bytes: usize,
}

/// Public description of a linear layer (for reports and budgets).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearInfo {
    /// Layer name, e.g. `blocks.3.mlp.fc1`.
    pub name: String,
    /// Representation.
    pub kind: LinearKind,
    /// Outputs `m`.
    pub out_features: usize,
    /// Inputs `n`.
    pub in_features: usize,
    /// Rank `r` of the low-rank term (0 for dense).
    pub rank: usize,
    /// Non-zeros of the sparse term.
    pub nnz: usize,
    /// Stored weight parameters (excluding bias): `mn`, `r(m+n)` or `r(m+n) + nnz`.
    pub params: usize,
    /// Stored bytes of the weight tensors (values, factors and sparse indices; excluding bias).
    pub weight_bytes: usize,
    /// Multiply-adds per input row.
    pub macs_per_row: usize,
    /// Storage dtype of the main weight tensor (`W` or `U`).
    pub dtype: DType,
}

impl Linear {
    /// Layer name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Description of the layer.
    pub fn info(&self) -> LinearInfo {
        let (m, n) = (self.out_features, self.in_features);
        let (kind, rank, nnz, weight_bytes, dtype) = match &self.repr {
            LinearRepr::Dense(w) => (LinearKind::Dense, 0, 0, w.bytes(), w.dtype),
            LinearRepr::Factored { u, v, rank, sparse } => {
                let (nnz, sb, kind) = match sparse {
                    None => (0, 0, LinearKind::LowRank),
                    Some(s) => (
                        s.values.len,
                        s.values.bytes() + s.col_idx.bytes() + s.row_ptr.bytes(),
                        LinearKind::LowRankSparse,
                    ),
                };
                (kind, *rank, nnz, u.bytes() + v.bytes() + sb, u.dtype)
            }
        };
        let params = match kind {
            LinearKind::Dense => m * n,
            _ => rank * (m + n) + nnz,
        };
        LinearInfo {
            name: self.name.clone(),
            kind,
            out_features: m,
            in_features: n,
            rank,
            nnz,
            params,
            weight_bytes,
            macs_per_row: params,
            dtype,
        }
    }

    /// Rank `r` of the low-rank term (0 for dense).
    pub(crate) fn rank(&self) -> usize {
        match &self.repr {
            LinearRepr::Dense(_) => 0,
            LinearRepr::Factored { rank, .. } => *rank,
        }
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }
}

/// LayerNorm parameters.
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) norm1: Norm,
    pub(crate) qkv: Linear,
    pub(crate) proj: Linear,
    pub(crate) ls1: Option<Vec<f32>>,
    pub(crate) norm2: Norm,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) ls2: Option<Vec<f32>>,
}

impl Block {
    /// The four linear layers, in execution order ([`BlockLinear::ALL`]).
    pub(crate) fn linears(&self) -> [&Linear; 4] {
        BlockLinear::ALL.map(|which| self.linear(which))
    }

    /// The linear layer `which`.
    pub(crate) fn linear(&self, which: BlockLinear) -> &Linear {
        match which {
            BlockLinear::Qkv => &self.qkv,
            BlockLinear::Proj => &self.proj,
            BlockLinear::Fc1 => &self.fc1,
            BlockLinear::Fc2 => &self.fc2,
        }
    }
}

/// A loaded, validated model.
pub struct Model<'a> {
    pub(crate) store: TensorStore<'a>,
    pub(crate) config: ModelConfig,
    pub(crate) preprocess: Preprocess,
    pub(crate) labels: Vec<String>,
    pub(crate) metadata: Vec<(String, String)>,
    pub(crate) patch_embed: Linear,
    pub(crate) cls_token: Option<Vec<f32>>,
    pub(crate) dist_token: Option<Vec<f32>>,
    pub(crate) pos_embed: Vec<f32>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: Option<Norm>,
    pub(crate) fc_norm: Option<Norm>,
    pub(crate) head: Option<Linear>,
    pub(crate) head_dist: Option<Linear>,
    /// Stored bytes of the vector tensors (norms, tokens, position table, LayerScale).
    pub(crate) vector_bytes: usize,
    pub(crate) checksum_status: ChecksumStatus,
}

impl core::fmt::Debug for Model<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Model").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Model<'_> {
    /// What the load found about the file's checksums.
    pub fn checksum_status(&self) -> ChecksumStatus {
        self.checksum_status
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The input pipeline.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Class names (empty when the file has none).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// A metadata value by key.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// All linear layers (blocks in order, then heads), excluding the patch embedding.
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.blocks.iter().flat_map(Block::linears).chain(self.head.iter()).chain(self.head_dist.iter())
    }

    /// The linear layer `which` of block `block`.
    pub fn block_linear(&self, block: usize, which: BlockLinear) -> Option<&Linear> {
        self.blocks.get(block).map(|b| b.linear(which))
    }

    /// The LayerScale `γ` applied to the output of a block linear before it joins the residual
    /// stream (`ls1` after `attn.proj`, `ls2` after `mlp.fc2`); `None` for the other layers and
    /// for models without LayerScale.
    pub fn layer_scale(&self, block: usize, which: BlockLinear) -> Option<&[f32]> {
        let b = self.blocks.get(block)?;
        match which {
            BlockLinear::Proj => b.ls1.as_deref(),
            BlockLinear::Fc2 => b.ls2.as_deref(),
            _ => None,
        }
    }

    /// Looks a linear layer up by name (`blocks.3.mlp.fc1`, `head`, `patch_embed`).
    pub fn linear(&self, name: &str) -> Option<&Linear> {
        if name == crate::format::schema::PATCH_EMBED {
            return Some(&self.patch_embed);
        }
        self.linears().find(|l| l.name == name)
    }

    /// The dense weight of a linear layer as a slice (f32/f16/bf16), `None` if factored.
    pub fn dense_weight(&self, layer: &Linear) -> Option<WeightSlice<'_>> {
        match &layer.repr {
            LinearRepr::Dense(w) => Some(self.store.weights(w)),
            LinearRepr::Factored { .. } => None,
        }
    }

    /// The factors `(U, V)` of a factored layer.
    pub fn factors(&self, layer: &Linear) -> Option<(WeightSlice<'_>, WeightSlice<'_>)> {
        match &layer.repr {
            LinearRepr::Factored { u, v, .. } => Some((self.store.weights(u), self.store.weights(v))),
            LinearRepr::Dense(_) => None,
        }
    }

    /// The sparse term of a layer as `(row_ptr, col_idx, values)`.
    pub fn sparse_term(&self, layer: &Linear) -> Option<(&[u32], SparseIndices<'_>, WeightSlice<'_>)> {
        match &layer.repr {
            LinearRepr::Factored { sparse: Some(s), .. } => {
                Some((self.store.u32s(&s.row_ptr), self.store.indices(&s.col_idx), self.store.weights(&s.values)))
            }
            _ => None,
        }
    }

    /// Bytes of weights the model holds: every tensor it uses, at its stored dtype. This is
    /// also the number of weight bytes one inference reads (each weight is streamed once per
    /// forward pass).
    pub fn weight_bytes(&self) -> usize {
        let linear_bytes: usize = self
            .linears()
            .chain(core::iter::once(&self.patch_embed))
            .map(|l| l.info().weight_bytes + l.bias_bytes)
            .sum();
        linear_bytes + self.vector_bytes
    }

    /// Bytes of owned copies the model made at load (misaligned tensors) or holds from
    /// [`Model::set_linear`]; zero for an aligned file opened in place.
    pub fn copied_bytes(&self) -> usize {
        self.store.owned_bytes()
    }

    /// Total weight parameters of the block linear layers.
    pub fn block_linear_params(&self) -> usize {
        self.blocks.iter().flat_map(Block::linears).map(|l| l.info().params).sum()
    }

    /// Total parameters of the model (weights, biases, norms, tokens, position table).
    pub fn params(&self) -> usize {
        let vectors = |n: &Option<Norm>| n.as_ref().map_or(0, |n| n.weight.len() + n.bias.len());
        let linear = |l: &Linear| l.info().params + l.bias.as_ref().map_or(0, Vec::len);
        let mut total = linear(&self.patch_embed) + self.pos_embed.len();
        total += self.cls_token.as_ref().map_or(0, Vec::len) + self.dist_token.as_ref().map_or(0, Vec::len);
        for b in &self.blocks {
            total += b.linears().into_iter().map(linear).sum::<usize>();
            total += b.norm1.weight.len() * 2 + b.norm2.weight.len() * 2;
            total += b.ls1.as_ref().map_or(0, Vec::len) + b.ls2.as_ref().map_or(0, Vec::len);
        }
        total += vectors(&self.norm) + vectors(&self.fc_norm);
        total += self.head.iter().chain(self.head_dist.iter()).map(linear).sum::<usize>();
        total
    }
}
