//! A loaded, validated model: configuration plus handles to every weight.
//!
//! [`Model::open`] memory-maps a file, [`Model::from_bytes`] reads any byte slice (flash,
//! `include_bytes!`), [`Model::from_vec`] takes ownership of a buffer. Loading validates the
//! whole file (see `docs/FORMAT.md`); running never re-checks it.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::checksum::{self, ChecksumPolicy, ChecksumStatus};
use crate::config::{Head, ModelConfig, Preprocess};
use crate::error::{Error, Result};
use crate::json::{self, Value};
use crate::kernels::{SparseIndices, WeightSlice};
use crate::safetensors::{Container, DType, TensorInfo};
use crate::storage::{OwnedTensor, Storage, TensorPlace, TensorStore};

/// Format name stored under the `format` metadata key.
pub const FORMAT_NAME: &str = "factorvit";
/// Format version this runtime reads and writes.
pub const FORMAT_VERSION: &str = "1";

/// How a linear layer's weight is represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearKind {
    /// A dense `m × n` matrix.
    Dense,
    /// `U·V` with `U: m × r`, `V: r × n`.
    LowRank,
    /// `U·V + S` with a CSR sparse `S`.
    LowRankSparse,
}

impl LinearKind {
    /// The name used in the file's `layers` table.
    pub fn name(self) -> &'static str {
        match self {
            LinearKind::Dense => "dense",
            LinearKind::LowRank => "low_rank",
            LinearKind::LowRankSparse => "low_rank_sparse",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Sparse {
    pub(crate) row_ptr: TensorPlace,
    pub(crate) col_idx: TensorPlace,
    pub(crate) values: TensorPlace,
}

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

/// The linear layers of a block, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockLinear {
    /// Fused query/key/value projection (`3D ← D`).
    Qkv,
    /// Attention output projection (`D ← D`).
    Proj,
    /// MLP expansion (`M ← D`).
    Fc1,
    /// MLP contraction (`D ← M`).
    Fc2,
}

impl BlockLinear {
    /// All four, in execution order.
    pub const ALL: [BlockLinear; 4] = [BlockLinear::Qkv, BlockLinear::Proj, BlockLinear::Fc1, BlockLinear::Fc2];

    /// Suffix of the layer name inside `blocks.{i}.`.
    pub fn suffix(self) -> &'static str {
        match self {
            BlockLinear::Qkv => "attn.qkv",
            BlockLinear::Proj => "attn.proj",
            BlockLinear::Fc1 => "mlp.fc1",
            BlockLinear::Fc2 => "mlp.fc2",
        }
    }

    /// Full layer name for block `i`.
    pub fn name(self, block: usize) -> String {
        format!("blocks.{block}.{}", self.suffix())
    }
}

impl Block {
    pub(crate) fn linear(&self, which: BlockLinear) -> &Linear {
        match which {
            BlockLinear::Qkv => &self.qkv,
            BlockLinear::Proj => &self.proj,
            BlockLinear::Fc1 => &self.fc1,
            BlockLinear::Fc2 => &self.fc2,
        }
    }
    fn linear_mut(&mut self, which: BlockLinear) -> &mut Linear {
        match which {
            BlockLinear::Qkv => &mut self.qkv,
            BlockLinear::Proj => &mut self.proj,
            BlockLinear::Fc1 => &mut self.fc1,
            BlockLinear::Fc2 => &mut self.fc2,
        }
    }
}

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

fn validate_csr(
    m: usize,
    n: usize,
    row_ptr: &[u32],
    col_idx: SparseIndices<'_>,
    nvalues: usize,
) -> core::result::Result<(), String> {
    if row_ptr.len() != m + 1 {
        return Err(format!("row_ptr has {} entries, expected {}", row_ptr.len(), m + 1));
    }
    if row_ptr[0] != 0 {
        return Err("row_ptr[0] is not 0".to_string());
    }
    if let Some(j) = row_ptr.windows(2).position(|w| w[0] > w[1]) {
        return Err(format!("row_ptr decreases at row {j}"));
    }
    let nnz = row_ptr[m] as usize;
    if nnz != col_idx.len() || nnz != nvalues {
        return Err(format!("row_ptr[m] = {nnz} but there are {} column indices and {nvalues} values", col_idx.len()));
    }
    if let Some(q) = (0..col_idx.len()).find(|&q| col_idx.get(q) >= n) {
        return Err(format!("column index {} at position {q} is out of range (n = {n})", col_idx.get(q)));
    }
    Ok(())
}

/// How to load a model: integrity checks and a memory cap.
///
/// ```
/// let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.fvit")).unwrap();
/// // A boot from flash that trusts its image: no pass over the weights at load.
/// let fast = factorvit::LoadOptions {
///     checksums: factorvit::ChecksumPolicy::Skip,
///     check_finite: false,
///     ..Default::default()
/// };
/// let model = factorvit::Model::from_bytes_with(&bytes, &fast).unwrap();
/// assert_eq!(model.checksum_status(), factorvit::ChecksumStatus::Skipped);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Checksum verification (default: verify when the file has checksums).
    pub checksums: ChecksumPolicy,
    /// Reject files whose float tensors hold NaN or infinity (default `true`). Norm, bias,
    /// token and position vectors are always checked; this flag covers the weight matrices,
    /// which costs one read of the file (shared with the checksum pass).
    pub check_finite: bool,
    /// Largest number of bytes the load may allocate: copies of misaligned tensors and the
    /// f32 vectors (norms, biases, tokens, positions). Checked before allocating; exceeding it
    /// is [`Error::MemoryLimit`]. Default: unlimited (these allocations are bounded by the
    /// file's size anyway; firmware sets its heap size).
    pub memory_limit: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { checksums: ChecksumPolicy::VerifyIfPresent, check_finite: true, memory_limit: usize::MAX }
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

#[cfg(feature = "std")]
impl Model<'static> {
    /// Memory-maps and validates a factorvit file.
    ///
    /// Every offset, shape, index and row pointer is checked here; a bad file gives a typed
    /// [`Error`] naming the problem.
    ///
    /// ```
    /// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.fvit");
    /// let model = factorvit::Model::open(path).unwrap();
    /// assert_eq!(model.config().num_classes, 3);
    /// // Aligned tensors are read in place from the map.
    /// assert_eq!(model.session(Default::default()).unwrap().memory().copied_weight_bytes, 0);
    /// assert!(factorvit::Model::open("/no/such/model.fvit").is_err());
    /// ```
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Model<'static>> {
        Model::open_with(path, &LoadOptions::default())
    }

    /// [`Model::open`] with explicit [`LoadOptions`].
    pub fn open_with(path: impl AsRef<std::path::Path>, options: &LoadOptions) -> Result<Model<'static>> {
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process. Modifying or truncating the
        // file while it is mapped is outside this API's contract (as for every mmap-based
        // reader, e.g. safetensors); every offset read through it was validated against its
        // length at load.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Model::load(Storage::Mapped(map), options)
    }
}

impl Model<'static> {
    /// Validates a factorvit file held in an owned buffer.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Model<'static>> {
        Model::from_vec_with(bytes, &LoadOptions::default())
    }

    /// [`Model::from_vec`] with explicit [`LoadOptions`].
    pub fn from_vec_with(bytes: Vec<u8>, options: &LoadOptions) -> Result<Model<'static>> {
        Model::load(Storage::Owned(bytes), options)
    }
}

impl<'a> Model<'a> {
    /// Validates a factorvit file held in caller memory, reading weights in place.
    ///
    /// ```
    /// let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.fvit")).unwrap();
    /// let model = factorvit::Model::from_bytes(&bytes).unwrap();
    /// assert_eq!(model.labels(), ["class 0", "class 1", "class 2"]);
    /// // A truncated file is an error, never a panic.
    /// assert!(factorvit::Model::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    /// ```
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Model<'a>> {
        Model::from_bytes_with(bytes, &LoadOptions::default())
    }

    /// [`Model::from_bytes`] with explicit [`LoadOptions`].
    pub fn from_bytes_with(bytes: &'a [u8], options: &LoadOptions) -> Result<Model<'a>> {
        Model::load(Storage::Borrowed(bytes), options)
    }

    fn load(storage: Storage<'a>, options: &LoadOptions) -> Result<Model<'a>> {
        let container = Container::parse(storage.bytes())?;
        let mut loader = Loader {
            c: &container,
            store: TensorStore::new(storage),
            used: Vec::new(),
            vector_bytes: 0,
            allocated: 0,
            memory_limit: options.memory_limit,
        };
        let meta = |key: &str| {
            container.metadata(key).ok_or_else(|| Error::Format(format!("metadata key `{key}` is missing")))
        };
        let format_name = meta("format")?;
        if format_name != FORMAT_NAME {
            return Err(Error::Format(format!("metadata `format` is `{format_name}`, expected `{FORMAT_NAME}`")));
        }
        let version = meta("format_version")?;
        if version.split('.').next() != Some(FORMAT_VERSION) {
            return Err(Error::Format(format!(
                "format_version `{version}` is not supported (this runtime reads version {FORMAT_VERSION})"
            )));
        }
        let parse_meta = |key: &str| -> Result<Value> {
            json::parse(meta(key)?.as_bytes()).map_err(|error| Error::Json { what: format!("metadata `{key}`"), error })
        };
        let config = ModelConfig::from_json(&parse_meta("config")?)?;
        let preprocess = Preprocess::from_json(&parse_meta("preprocess")?)?;
        if preprocess.input_size[0] != config.in_chans {
            return Err(Error::Config(format!(
                "preprocess.input_size has {} channels but the model takes {}",
                preprocess.input_size[0], config.in_chans
            )));
        }
        let labels_json = parse_meta("labels")?;
        let labels: Option<Vec<String>> = labels_json
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().map(ToOwned::to_owned)).collect())
            .unwrap_or(None);
        let labels =
            labels.ok_or_else(|| Error::Format("metadata `labels` must be an array of strings".to_string()))?;
        if !labels.is_empty() && labels.len() != config.num_classes {
            return Err(Error::Format(format!("{} labels for {} classes", labels.len(), config.num_classes)));
        }
        let layers = parse_meta("layers")?;
        let layer_table =
            layers.as_object().ok_or_else(|| Error::Format("metadata `layers` must be an object".to_string()))?;

        // Integrity before anything reads a weight: one pass over the tensor bytes.
        let checksum_status =
            checksum::verify(&container, loader.store.storage.bytes(), options.checksums, options.check_finite)?;

        let c = &config;
        let d = c.embed_dim;
        let patch_in = c.in_chans.checked_mul(c.patch_size * c.patch_size).ok_or(Error::Overflow("patch size"))?;
        let grid = c.pos_embed_grid[0] * c.pos_embed_grid[1];
        let pos_rows = c.pos_embed_prefix + grid;

        let pe_info = loader.require("patch_embed.weight")?;
        expect_shape(pe_info, &[d, c.in_chans, c.patch_size, c.patch_size])?;
        let pe_w = loader.matrix(pe_info)?;
        let patch_embed = Linear {
            name: "patch_embed".to_string(),
            out_features: d,
            in_features: patch_in,
            repr: LinearRepr::Dense(pe_w),
            bias: Some(loader.vector("patch_embed.bias", &[d])?),
            bias_bytes: 0,
        };
        let cls_token = if c.class_token { Some(loader.vector("cls_token", &[1, 1, d])?) } else { None };
        let dist_token = if c.dist_token { Some(loader.vector("dist_token", &[1, 1, d])?) } else { None };
        let pos_embed = loader.vector("pos_embed", &[1, pos_rows, d])?;

        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let p = |s: &str| format!("blocks.{i}.{s}");
            let norm1 = loader.norm(&p("norm1"), d)?;
            let qkv = loader.linear(&p("attn.qkv"), 3 * d, d, layer_table)?;
            let proj = loader.linear(&p("attn.proj"), d, d, layer_table)?;
            let ls1 = if c.layer_scale { Some(loader.vector(&p("ls1"), &[d])?) } else { None };
            let norm2 = loader.norm(&p("norm2"), d)?;
            let fc1 = loader.linear(&p("mlp.fc1"), c.mlp_hidden, d, layer_table)?;
            let fc2 = loader.linear(&p("mlp.fc2"), d, c.mlp_hidden, layer_table)?;
            let ls2 = if c.layer_scale { Some(loader.vector(&p("ls2"), &[d])?) } else { None };
            blocks.push(Block { norm1, qkv, proj, ls1, norm2, fc1, fc2, ls2 });
        }
        let norm = if c.final_norm { Some(loader.norm("norm", d)?) } else { None };
        let fc_norm = if c.fc_norm { Some(loader.norm("fc_norm", d)?) } else { None };
        let (head, head_dist) = match c.head {
            Head::None => (None, None),
            Head::Linear => (Some(loader.linear("head", c.num_classes, d, layer_table)?), None),
            Head::Distilled => (
                Some(loader.linear("head", c.num_classes, d, layer_table)?),
                Some(loader.linear("head_dist", c.num_classes, d, layer_table)?),
            ),
        };
        // Every tensor must be accounted for, and every entry of the layer table must name a
        // layer of this architecture: a file that carries more than it declares is corrupt.
        let mut expected_layers: Vec<String> = blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.proj, &b.fc1, &b.fc2])
            .chain(head.iter())
            .chain(head_dist.iter())
            .map(|l| l.name.clone())
            .collect();
        expected_layers.sort();
        for (name, _) in layer_table {
            if expected_layers.binary_search(name).is_err() {
                return Err(Error::Format(format!(
                    "layer table names `{name}`, which is not a linear layer of this model"
                )));
            }
        }
        loader.used.sort();
        for t in container.tensors() {
            if loader.used.binary_search(&t.name).is_err() {
                return Err(Error::Format(format!("unexpected tensor `{}`", t.name)));
            }
        }
        let vector_bytes = loader.vector_bytes;
        Ok(Model {
            store: loader.store,
            config,
            preprocess,
            labels,
            metadata: container.metadata.clone(),
            patch_embed,
            cls_token,
            dist_token,
            pos_embed,
            blocks,
            norm,
            fc_norm,
            head,
            head_dist,
            vector_bytes,
            checksum_status,
        })
    }

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
        self.blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.proj, &b.fc1, &b.fc2])
            .chain(self.head.iter())
            .chain(self.head_dist.iter())
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
        if name == "patch_embed" {
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

    /// The effective weight `Ŵ` of a layer as a dense f32 `m × n` matrix (for references,
    /// tests and the compressor; allocates).
    pub fn effective_weight(&self, layer: &Linear) -> Vec<f32> {
        let (m, n) = (layer.out_features, layer.in_features);
        let mut w = alloc::vec![0.0f32; m * n];
        match &layer.repr {
            LinearRepr::Dense(t) => {
                let s = self.store.weights(t);
                for (i, x) in w.iter_mut().enumerate() {
                    *x = s.get(i);
                }
            }
            LinearRepr::Factored { u, v, rank, .. } => {
                let (u, v) = (self.store.weights(u), self.store.weights(v));
                for i in 0..m {
                    for p in 0..*rank {
                        let uip = u.get(i * rank + p);
                        for j in 0..n {
                            w[i * n + j] += uip * v.get(p * n + j);
                        }
                    }
                }
                if let Some((rp, ci, vals)) = self.sparse_term(layer) {
                    for i in 0..m {
                        for q in rp[i] as usize..rp[i + 1] as usize {
                            w[i * n + ci.get(q)] += vals.get(q);
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
        self.blocks.iter().flat_map(|b| [&b.qkv, &b.proj, &b.fc1, &b.fc2]).map(|l| l.info().params).sum()
    }

    /// Total parameters of the model (weights, biases, norms, tokens, position table).
    pub fn params(&self) -> usize {
        let vectors = |n: &Option<Norm>| n.as_ref().map_or(0, |n| n.weight.len() + n.bias.len());
        let linear = |l: &Linear| l.info().params + l.bias.as_ref().map_or(0, Vec::len);
        let mut total = linear(&self.patch_embed) + self.pos_embed.len();
        total += self.cls_token.as_ref().map_or(0, Vec::len) + self.dist_token.as_ref().map_or(0, Vec::len);
        for b in &self.blocks {
            total += [&b.qkv, &b.proj, &b.fc1, &b.fc2].iter().map(|l| linear(l)).sum::<usize>();
            total += b.norm1.weight.len() * 2 + b.norm2.weight.len() * 2;
            total += b.ls1.as_ref().map_or(0, Vec::len) + b.ls2.as_ref().map_or(0, Vec::len);
        }
        total += vectors(&self.norm) + vectors(&self.fc_norm);
        total += self.head.iter().chain(self.head_dist.iter()).map(linear).sum::<usize>();
        total
    }
}

/// Splits `blocks.{i}.{suffix}` into the block index and which linear it is.
pub fn parse_block_linear(name: &str, depth: usize) -> Option<(usize, BlockLinear)> {
    let rest = name.strip_prefix("blocks.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    if i >= depth {
        return None;
    }
    let which = BlockLinear::ALL.into_iter().find(|w| w.suffix() == suffix)?;
    Some((i, which))
}

fn expect_shape(t: &TensorInfo, shape: &[usize]) -> Result<()> {
    if t.shape != shape {
        return Err(Error::Shape { tensor: t.name.clone(), found: t.shape.clone(), expected: shape.to_vec() });
    }
    Ok(())
}

struct Loader<'c, 'a> {
    c: &'c Container,
    store: TensorStore<'a>,
    used: Vec<String>,
    vector_bytes: usize,
    /// Bytes allocated so far for owned copies and f32 vectors.
    allocated: usize,
    memory_limit: usize,
}

impl<'c> Loader<'c, '_> {
    fn require(&mut self, name: &str) -> Result<&'c TensorInfo> {
        let t = self.c.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        self.used.push(name.to_string());
        Ok(t)
    }

    fn optional(&mut self, name: &str) -> Option<&'c TensorInfo> {
        let t = self.c.get(name)?;
        self.used.push(name.to_string());
        Some(t)
    }

    fn check_float(t: &TensorInfo) -> Result<()> {
        match t.dtype {
            DType::F32 | DType::F16 | DType::BF16 => Ok(()),
            other => Err(Error::Dtype {
                tensor: t.name.clone(),
                found: other.name().to_string(),
                expected: "F32, F16 or BF16",
            }),
        }
    }

    /// Accounts for `bytes` about to be allocated, failing before the allocation when it would
    /// exceed the memory limit.
    fn charge(&mut self, bytes: usize) -> Result<()> {
        let total = self.allocated.checked_add(bytes).ok_or(Error::Overflow("load allocations"))?;
        if total > self.memory_limit {
            return Err(Error::MemoryLimit { what: "loading the model", needed: total, limit: self.memory_limit });
        }
        self.allocated = total;
        Ok(())
    }

    fn matrix(&mut self, t: &TensorInfo) -> Result<TensorPlace> {
        Self::check_float(t)?;
        self.place_index(t)
    }

    fn place_unchecked(&mut self, t: &TensorInfo) -> Result<TensorPlace> {
        self.store
            .place_file(t.dtype, t.start, t.end)
            .ok_or_else(|| Error::Container(format!("tensor `{}` lies outside the file", t.name)))
    }

    /// A small float tensor converted to f32 (norm parameters, biases, tokens, positions).
    fn vector(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        self.vector_of(t, shape)
    }

    fn vector_of(&mut self, t: &TensorInfo, shape: &[usize]) -> Result<Vec<f32>> {
        Self::check_float(t)?;
        expect_shape(t, shape)?;
        self.charge(t.numel().checked_mul(4).ok_or(Error::Overflow("vector size"))?)?;
        let place = self.matrix(t)?;
        let v: Vec<f32> = {
            let s = self.store.weights(&place);
            (0..s.len()).map(|i| s.get(i)).collect()
        };
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite(t.name.clone()));
        }
        self.vector_bytes += t.end - t.start;
        Ok(v)
    }

    fn norm(&mut self, prefix: &str, d: usize) -> Result<Norm> {
        Ok(Norm {
            weight: self.vector(&format!("{prefix}.weight"), &[d])?,
            bias: self.vector(&format!("{prefix}.bias"), &[d])?,
        })
    }

    fn linear(&mut self, name: &str, m: usize, n: usize, table: &[(String, Value)]) -> Result<Linear> {
        let entry = table
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::Format(format!("layer table has no entry for `{name}`")))?;
        let kind = entry.get("kind").and_then(Value::as_str).unwrap_or("");
        let bias = match self.optional(&format!("{name}.bias")) {
            Some(t) => {
                let bytes = t.end - t.start;
                let v = self.vector_of(t, &[m])?;
                self.vector_bytes -= bytes; // counted with the layer instead
                Some((v, bytes))
            }
            None => None,
        };
        let declared = |key: &str| entry.get(key).and_then(Value::as_usize);
        let repr = match kind {
            "dense" => {
                let w = self.require(&format!("{name}.weight"))?;
                expect_shape(w, &[m, n])?;
                LinearRepr::Dense(self.matrix(w)?)
            }
            "low_rank" | "low_rank_sparse" => {
                let u = self.require(&format!("{name}.u"))?;
                let rank = u.shape.get(1).copied().unwrap_or(0);
                if rank == 0 {
                    return Err(Error::Shape {
                        tensor: u.name.clone(),
                        found: u.shape.clone(),
                        expected: alloc::vec![m, 1],
                    });
                }
                if rank > m.min(n) {
                    return Err(Error::Format(format!(
                        "layer `{name}`: rank {rank} exceeds min(m, n) = {} (a {m}×{n} layer)",
                        m.min(n)
                    )));
                }
                if declared("rank") != Some(rank) {
                    return Err(Error::Format(format!(
                        "layer `{name}`: table declares rank {:?} but `{}` has shape {:?}",
                        declared("rank"),
                        u.name,
                        u.shape
                    )));
                }
                expect_shape(u, &[m, rank])?;
                let v = self.require(&format!("{name}.v"))?;
                expect_shape(v, &[rank, n])?;
                let (u, v) = (self.matrix(u)?, self.matrix(v)?);
                let sparse =
                    if kind == "low_rank_sparse" { Some(self.sparse(name, m, n, declared("nnz"))?) } else { None };
                LinearRepr::Factored { u, v, rank, sparse }
            }
            other => return Err(Error::Format(format!("layer `{name}` has unknown kind `{other}`"))),
        };
        let (bias, bias_bytes) = match bias {
            Some((v, b)) => (Some(v), b),
            None => (None, 0),
        };
        Ok(Linear { name: name.to_string(), out_features: m, in_features: n, repr, bias, bias_bytes })
    }

    fn sparse(&mut self, name: &str, m: usize, n: usize, declared_nnz: Option<usize>) -> Result<Sparse> {
        let rp = self.require(&format!("{name}.sparse.row_ptr"))?;
        if rp.dtype != DType::U32 {
            return Err(Error::Dtype { tensor: rp.name.clone(), found: rp.dtype.name().to_string(), expected: "U32" });
        }
        expect_shape(rp, &[m + 1])?;
        let ci = self.require(&format!("{name}.sparse.col_idx"))?;
        if !matches!(ci.dtype, DType::U16 | DType::U32) {
            return Err(Error::Dtype {
                tensor: ci.name.clone(),
                found: ci.dtype.name().to_string(),
                expected: "U16 or U32",
            });
        }
        let vals = self.require(&format!("{name}.sparse.values"))?;
        Self::check_float(vals)?;
        let nnz = vals.numel();
        if ci.shape != [nnz] || vals.shape != [nnz] {
            return Err(Error::Sparse {
                layer: name.to_string(),
                reason: format!("col_idx shape {:?} and values shape {:?} must both be [nnz]", ci.shape, vals.shape),
            });
        }
        if declared_nnz != Some(nnz) {
            return Err(Error::Format(format!(
                "layer `{name}`: table declares nnz {declared_nnz:?} but {nnz} are stored"
            )));
        }
        let row_ptr = self.place_index(rp)?;
        let col_idx = self.place_index(ci)?;
        let values = self.matrix(vals)?;
        validate_csr(m, n, self.store.u32s(&row_ptr), self.store.indices(&col_idx), nnz)
            .map_err(|reason| Error::Sparse { layer: name.to_string(), reason })?;
        Ok(Sparse { row_ptr, col_idx, values })
    }

    /// Places a tensor of the file (in place when aligned, else charged and copied).
    fn place_index(&mut self, t: &TensorInfo) -> Result<TensorPlace> {
        if !self.store.is_aligned(t.dtype, t.start) {
            self.charge(t.end - t.start)?;
        }
        self.place_unchecked(t)
    }
}
