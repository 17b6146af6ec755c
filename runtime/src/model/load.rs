//! Opening and validating a factorvit file: [`LoadOptions`], the constructors of [`Model`]
//! and the `Loader` that checks every tensor against the [`crate::format::schema`].

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::storage::{Storage, TensorPlace, TensorStore};
use super::{Block, Linear, LinearRepr, Model, Norm, Sparse};
use crate::checksum::{self, ChecksumPolicy};
use crate::config::{Head, ModelConfig, Preprocess};
use crate::error::{Error, Result};
use crate::format::schema::{self, BlockLinear, BlockTensors, LinearTensors, NormTensors};
use crate::format::{layer_table_keys, metadata_keys, LinearKind, FORMAT_NAME, FORMAT_VERSION};
use crate::json::{self, Value};
use crate::kernels::SparseIndices;
use crate::safetensors::{Container, DType, TensorInfo};

pub(super) fn validate_csr(
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
        let header = Header::read(&container)?;
        let mut loader = Loader {
            c: &container,
            store: TensorStore::new(storage),
            used: Vec::new(),
            vector_bytes: 0,
            allocated: 0,
            memory_limit: options.memory_limit,
        };
        // Integrity before anything reads a weight: one pass over the tensor bytes.
        let checksum_status =
            checksum::verify(&container, loader.store.storage.bytes(), options.checksums, options.check_finite)?;
        let layer_table = header.layer_table();
        let tensors = loader.tensors(&header.config, layer_table)?;
        loader.check_complete(&tensors, layer_table)?;
        let vector_bytes = loader.vector_bytes;
        let Tensors { patch_embed, cls_token, dist_token, pos_embed, blocks, norm, fc_norm, head, head_dist } = tensors;
        Ok(Model {
            store: loader.store,
            config: header.config,
            preprocess: header.preprocess,
            labels: header.labels,
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
}

/// The metadata of a file, parsed and checked against each other.
struct Header {
    config: ModelConfig,
    preprocess: Preprocess,
    labels: Vec<String>,
    /// The `layers` table (checked to be an object).
    layers: Value,
}

impl Header {
    fn read(container: &Container) -> Result<Header> {
        let meta = |key: &str| {
            container.metadata(key).ok_or_else(|| Error::Format(format!("metadata key `{key}` is missing")))
        };
        let format_name = meta(metadata_keys::FORMAT)?;
        if format_name != FORMAT_NAME {
            return Err(Error::Format(format!("metadata `format` is `{format_name}`, expected `{FORMAT_NAME}`")));
        }
        let version = meta(metadata_keys::FORMAT_VERSION)?;
        if version.split('.').next() != Some(FORMAT_VERSION) {
            return Err(Error::Format(format!(
                "format_version `{version}` is not supported (this runtime reads version {FORMAT_VERSION})"
            )));
        }
        let parse_meta = |key: &str| -> Result<Value> {
            json::parse(meta(key)?.as_bytes()).map_err(|error| Error::Json { what: format!("metadata `{key}`"), error })
        };
        let config = ModelConfig::from_json(&parse_meta(metadata_keys::CONFIG)?)?;
        let preprocess = Preprocess::from_json(&parse_meta(metadata_keys::PREPROCESS)?)?;
        if preprocess.input_size[0] != config.in_chans {
            return Err(Error::Config(format!(
                "preprocess.input_size has {} channels but the model takes {}",
                preprocess.input_size[0], config.in_chans
            )));
        }
        let labels_json = parse_meta(metadata_keys::LABELS)?;
        let labels: Option<Vec<String>> = labels_json
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().map(ToOwned::to_owned)).collect())
            .unwrap_or(None);
        let labels =
            labels.ok_or_else(|| Error::Format("metadata `labels` must be an array of strings".to_string()))?;
        if !labels.is_empty() && labels.len() != config.num_classes {
            return Err(Error::Format(format!("{} labels for {} classes", labels.len(), config.num_classes)));
        }
        let layers = parse_meta(metadata_keys::LAYERS)?;
        if layers.as_object().is_none() {
            return Err(Error::Format("metadata `layers` must be an object".to_string()));
        }
        Ok(Header { config, preprocess, labels, layers })
    }

    /// The entries of the `layers` table.
    fn layer_table(&self) -> &[(String, Value)] {
        self.layers.as_object().unwrap_or(&[])
    }
}

/// Every tensor of a model, loaded and checked (the parts of [`Model`] the file holds).
struct Tensors {
    patch_embed: Linear,
    cls_token: Option<Vec<f32>>,
    dist_token: Option<Vec<f32>>,
    pos_embed: Vec<f32>,
    blocks: Vec<Block>,
    norm: Option<Norm>,
    fc_norm: Option<Norm>,
    head: Option<Linear>,
    head_dist: Option<Linear>,
}

fn expect_shape(t: &TensorInfo, shape: &[usize]) -> Result<()> {
    if t.shape != shape {
        return Err(Error::Shape { tensor: t.name.clone(), found: t.shape.clone(), expected: shape.to_vec() });
    }
    Ok(())
}

/// Reads and checks a file's tensors, recording which it used.
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
    /// Every tensor `c` implies, in model order (see [`schema`]).
    fn tensors(&mut self, c: &ModelConfig, layer_table: &[(String, Value)]) -> Result<Tensors> {
        let d = c.embed_dim;
        let patch_in = c.in_chans.checked_mul(c.patch_size * c.patch_size).ok_or(Error::Overflow("patch size"))?;
        let grid = c.pos_embed_grid[0] * c.pos_embed_grid[1];
        let pos_rows = c.pos_embed_prefix + grid;

        let pe_names = LinearTensors::of(schema::PATCH_EMBED);
        let pe_info = self.require(&pe_names.weight)?;
        expect_shape(pe_info, &[d, c.in_chans, c.patch_size, c.patch_size])?;
        let pe_w = self.matrix(pe_info)?;
        let patch_embed = Linear {
            name: schema::PATCH_EMBED.to_string(),
            out_features: d,
            in_features: patch_in,
            repr: LinearRepr::Dense(pe_w),
            bias: Some(self.vector(&pe_names.bias, &[d])?),
            bias_bytes: 0,
        };
        let cls_token = if c.class_token { Some(self.vector(schema::CLS_TOKEN, &[1, 1, d])?) } else { None };
        let dist_token = if c.dist_token { Some(self.vector(schema::DIST_TOKEN, &[1, 1, d])?) } else { None };
        let pos_embed = self.vector(schema::POS_EMBED, &[1, pos_rows, d])?;

        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            blocks.push(self.block(c, i, layer_table)?);
        }
        let norm = if c.final_norm { Some(self.norm(&NormTensors::of(schema::FINAL_NORM), d)?) } else { None };
        let fc_norm = if c.fc_norm { Some(self.norm(&NormTensors::of(schema::FC_NORM), d)?) } else { None };
        let k = c.num_classes;
        let (head, head_dist) = match c.head {
            Head::None => (None, None),
            Head::Linear => (Some(self.linear(schema::HEAD, k, d, layer_table)?), None),
            Head::Distilled => (
                Some(self.linear(schema::HEAD, k, d, layer_table)?),
                Some(self.linear(schema::HEAD_DIST, k, d, layer_table)?),
            ),
        };
        Ok(Tensors { patch_embed, cls_token, dist_token, pos_embed, blocks, norm, fc_norm, head, head_dist })
    }

    /// Block `i`, in execution order.
    fn block(&mut self, c: &ModelConfig, i: usize, layer_table: &[(String, Value)]) -> Result<Block> {
        let d = c.embed_dim;
        let names = BlockTensors::of(i);
        let linear = |loader: &mut Self, which: BlockLinear| {
            let (m, n) = which.shape(c);
            loader.linear(&names.linear(which), m, n, layer_table)
        };
        let norm1 = self.norm(&names.norm1, d)?;
        let qkv = linear(self, BlockLinear::Qkv)?;
        let proj = linear(self, BlockLinear::Proj)?;
        let ls1 = if c.layer_scale { Some(self.vector(&names.ls1, &[d])?) } else { None };
        let norm2 = self.norm(&names.norm2, d)?;
        let fc1 = linear(self, BlockLinear::Fc1)?;
        let fc2 = linear(self, BlockLinear::Fc2)?;
        let ls2 = if c.layer_scale { Some(self.vector(&names.ls2, &[d])?) } else { None };
        Ok(Block { norm1, qkv, proj, ls1, norm2, fc1, fc2, ls2 })
    }

    /// Every tensor must be accounted for, and every entry of the layer table must name a
    /// layer of this architecture: a file that carries more than it declares is corrupt.
    fn check_complete(&mut self, t: &Tensors, layer_table: &[(String, Value)]) -> Result<()> {
        let mut expected_layers: Vec<&str> = t
            .blocks
            .iter()
            .flat_map(Block::linears)
            .chain(t.head.iter())
            .chain(t.head_dist.iter())
            .map(|l| l.name.as_str())
            .collect();
        expected_layers.sort_unstable();
        for (name, _) in layer_table {
            if expected_layers.binary_search(&name.as_str()).is_err() {
                return Err(Error::Format(format!(
                    "layer table names `{name}`, which is not a linear layer of this model"
                )));
            }
        }
        self.used.sort();
        for t in self.c.tensors() {
            if self.used.binary_search(&t.name).is_err() {
                return Err(Error::Format(format!("unexpected tensor `{}`", t.name)));
            }
        }
        Ok(())
    }

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

    /// A linear layer's weight tensor `t` (`weight`, `u`, `v` or `sparse.values`): a float
    /// matrix, or I8 with its F32 scales `scale_name` of shape `[channels]`, every one finite
    /// and positive. The scales are required unless `scale_optional` (`u`: a unit scale).
    fn weight(
        &mut self,
        t: &TensorInfo,
        scale_name: &str,
        channels: usize,
        scale_optional: bool,
    ) -> Result<TensorPlace> {
        match t.dtype {
            DType::F32 | DType::F16 | DType::BF16 => return self.place_index(t),
            DType::I8 => {}
            other => {
                return Err(Error::Dtype {
                    tensor: t.name.clone(),
                    found: other.name().to_string(),
                    expected: "F32, F16, BF16 or I8",
                })
            }
        }
        let mut place = self.place_index(t)?;
        let s = match self.optional(scale_name) {
            Some(s) => s,
            None if scale_optional => return Ok(place),
            None => return Err(Error::MissingTensor(scale_name.to_string())),
        };
        if s.dtype != DType::F32 {
            return Err(Error::Dtype { tensor: s.name.clone(), found: s.dtype.name().to_string(), expected: "F32" });
        }
        expect_shape(s, &[channels])?;
        let sp = self.place_index(s)?;
        let scales = self.store.weights(&sp);
        if let Some((channel, value)) =
            (0..scales.len()).map(|i| (i, scales.get(i))).find(|&(_, v)| !(v.is_finite() && v > 0.0))
        {
            return Err(Error::Scale { tensor: s.name.clone(), channel, value });
        }
        place.scales = Some((sp.place, channels));
        Ok(place)
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

    fn norm(&mut self, names: &NormTensors, d: usize) -> Result<Norm> {
        Ok(Norm { weight: self.vector(&names.weight, &[d])?, bias: self.vector(&names.bias, &[d])? })
    }

    fn linear(&mut self, name: &str, m: usize, n: usize, table: &[(String, Value)]) -> Result<Linear> {
        let entry = table
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::Format(format!("layer table has no entry for `{name}`")))?;
        let kind_name = entry.get(layer_table_keys::KIND).and_then(Value::as_str).unwrap_or("");
        let names = LinearTensors::of(name);
        let bias = match self.optional(&names.bias) {
            Some(t) => {
                let bytes = t.end - t.start;
                let v = self.vector_of(t, &[m])?;
                self.vector_bytes -= bytes; // counted with the layer instead
                Some((v, bytes))
            }
            None => None,
        };
        let declared = |key: &str| entry.get(key).and_then(Value::as_usize);
        let repr = match LinearKind::from_name(kind_name) {
            Some(LinearKind::Dense) => {
                let w = self.require(&names.weight)?;
                expect_shape(w, &[m, n])?;
                LinearRepr::Dense(self.weight(w, &names.weight_scale, m, false)?)
            }
            Some(kind @ (LinearKind::LowRank | LinearKind::LowRankSparse)) => {
                let u = self.require(&names.u)?;
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
                if declared(layer_table_keys::RANK) != Some(rank) {
                    return Err(Error::Format(format!(
                        "layer `{name}`: table declares rank {:?} but `{}` has shape {:?}",
                        declared(layer_table_keys::RANK),
                        u.name,
                        u.shape
                    )));
                }
                expect_shape(u, &[m, rank])?;
                let v = self.require(&names.v)?;
                expect_shape(v, &[rank, n])?;
                let u = self.weight(u, &names.u_scale, m, true)?;
                let v = self.weight(v, &names.v_scale, rank, false)?;
                let sparse = if kind.has_sparse() {
                    Some(self.sparse(&names, name, m, n, declared(layer_table_keys::NNZ))?)
                } else {
                    None
                };
                LinearRepr::Factored { u, v, rank, sparse }
            }
            None => return Err(Error::Format(format!("layer `{name}` has unknown kind `{kind_name}`"))),
        };
        let (bias, bias_bytes) = match bias {
            Some((v, b)) => (Some(v), b),
            None => (None, 0),
        };
        Ok(Linear { name: name.to_string(), out_features: m, in_features: n, repr, bias, bias_bytes })
    }

    /// The sparse term of layer `name` (tensors `names`).
    fn sparse(
        &mut self,
        names: &LinearTensors,
        name: &str,
        m: usize,
        n: usize,
        declared_nnz: Option<usize>,
    ) -> Result<Sparse> {
        let rp = self.require(&names.sparse_row_ptr)?;
        if rp.dtype != DType::U32 {
            return Err(Error::Dtype { tensor: rp.name.clone(), found: rp.dtype.name().to_string(), expected: "U32" });
        }
        expect_shape(rp, &[m + 1])?;
        let ci = self.require(&names.sparse_col_idx)?;
        if !matches!(ci.dtype, DType::U16 | DType::U32) {
            return Err(Error::Dtype {
                tensor: ci.name.clone(),
                found: ci.dtype.name().to_string(),
                expected: "U16 or U32",
            });
        }
        let vals = self.require(&names.sparse_values)?;
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
        let values = self.weight(vals, &names.sparse_values_scale, m, false)?;
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
