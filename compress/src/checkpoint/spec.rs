//! [`ModelSpec`]: a model in factorvit's canonical form, and its validation against
//! `docs/FORMAT.md` (the same rules the runtime applies when it loads a file).

use std::collections::BTreeMap;

use factorvit::format::schema::{self, LinearTensors};
use factorvit::format::{layer_table_keys, metadata_keys, LinearKind};
use factorvit::json::{self, Value};
use factorvit::safetensors::DType;
use factorvit::{ModelConfig, Preprocess};

pub use factorvit::format::schema::{fixed_tensors, model_order_key};

use super::tensor::{is_float_dtype, StoredTensor};

/// A model in canonical form: configuration, input pipeline, labels and tensors named as in
/// `docs/FORMAT.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Architecture.
    pub config: ModelConfig,
    /// Input pipeline.
    pub preprocess: Preprocess,
    /// Class names (`[]`, or `config.num_classes` entries).
    pub labels: Vec<String>,
    /// Where the weights came from (free text, stored under the `source` metadata key).
    pub source: String,
    /// Tensors by canonical name.
    pub tensors: BTreeMap<String, StoredTensor>,
    /// Extra metadata entries written verbatim (e.g. `compression`, a JSON text). Must not use
    /// the reserved keys (`format`, `format_version`, `config`, `preprocess`, `labels`,
    /// `layers`, `producer`, `source`).
    pub metadata: BTreeMap<String, String>,
    /// Notes from the import that a user should see (e.g. ignored tensors, assumed defaults).
    pub warnings: Vec<String>,
}

/// Metadata keys the writer fills itself ([`metadata_keys::RESERVED`]).
pub const RESERVED_METADATA_KEYS: [&str; 9] = metadata_keys::RESERVED;

/// Why a [`ModelSpec`] (or a tensor) does not satisfy the file format.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SpecError {
    /// The configuration is invalid (as the runtime would reject it).
    Config(String),
    /// The preprocessing description is invalid or disagrees with the configuration.
    Preprocess(String),
    /// The label list has the wrong length.
    Labels {
        /// Labels present.
        found: usize,
        /// Classes of the model.
        expected: usize,
    },
    /// A tensor the configuration requires is absent.
    MissingTensor(String),
    /// A tensor that has no place in the format for this configuration.
    UnexpectedTensor(String),
    /// A tensor has the wrong shape.
    Shape {
        /// Tensor name.
        tensor: String,
        /// Its shape.
        found: Vec<usize>,
        /// The shape the configuration requires.
        expected: Vec<usize>,
    },
    /// A tensor has a dtype its slot does not accept.
    Dtype {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        found: DType,
        /// What the slot accepts.
        expected: &'static str,
    },
    /// A tensor's bytes disagree with its shape, or hold values the format forbids.
    Data {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A linear layer's tensors do not form one valid representation.
    Layer {
        /// Layer name.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// A sparse term violates the CSR invariants.
    Sparse {
        /// Layer name.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// An extra metadata entry is not allowed or not valid.
    Metadata {
        /// Metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl SpecError {
    /// Fills in the tensor name of a tensor-level error created without one.
    pub fn for_tensor(self, name: &str) -> SpecError {
        match self {
            SpecError::Dtype { tensor, found, expected } if tensor.is_empty() => {
                SpecError::Dtype { tensor: name.to_string(), found, expected }
            }
            SpecError::Data { tensor, reason } if tensor.is_empty() => {
                SpecError::Data { tensor: name.to_string(), reason }
            }
            other => other,
        }
    }
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::Config(m) => write!(f, "invalid model config: {m}"),
            SpecError::Preprocess(m) => write!(f, "invalid preprocess: {m}"),
            SpecError::Labels { found, expected } => {
                write!(f, "{found} labels for {expected} classes (labels must be empty or one per class)")
            }
            SpecError::MissingTensor(t) => write!(f, "missing tensor `{t}`"),
            SpecError::UnexpectedTensor(t) => write!(f, "unexpected tensor `{t}` (not part of this model's layout)"),
            SpecError::Shape { tensor, found, expected } => {
                write!(f, "tensor `{tensor}` has shape {found:?}, expected {expected:?}")
            }
            SpecError::Dtype { tensor, found, expected } => {
                write!(f, "tensor `{tensor}` has dtype {}, expected {expected}", found.name())
            }
            SpecError::Data { tensor, reason } => write!(f, "tensor `{tensor}`: {reason}"),
            SpecError::Layer { layer, reason } => write!(f, "linear layer `{layer}`: {reason}"),
            SpecError::Sparse { layer, reason } => write!(f, "sparse term of `{layer}`: {reason}"),
            SpecError::Metadata { key, reason } => write!(f, "metadata `{key}`: {reason}"),
        }
    }
}

impl std::error::Error for SpecError {}

/// How one linear layer is represented (the `layers` metadata table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `L.weight [m, n]`.
    Dense,
    /// `L.u [m, r]`, `L.v [r, n]`.
    LowRank {
        /// `r`.
        rank: usize,
    },
    /// `L.u`, `L.v` and a CSR sparse term of `nnz` entries.
    LowRankSparse {
        /// `r`.
        rank: usize,
        /// Stored non-zeros.
        nnz: usize,
    },
}

/// One linear layer of a model: name, geometry and representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Layer name (`blocks.3.mlp.fc1`, `head`).
    pub name: String,
    /// Outputs `m`.
    pub out_features: usize,
    /// Inputs `n`.
    pub in_features: usize,
    /// Representation.
    pub kind: LayerKind,
    /// A bias `L.bias [m]` is stored.
    pub bias: bool,
}

impl LayerKind {
    /// The representation without its sizes (the runtime's [`LinearKind`], whose
    /// [`LinearKind::name`] is the `kind` of the layer table).
    pub fn linear_kind(self) -> LinearKind {
        match self {
            LayerKind::Dense => LinearKind::Dense,
            LayerKind::LowRank { .. } => LinearKind::LowRank,
            LayerKind::LowRankSparse { .. } => LinearKind::LowRankSparse,
        }
    }
}

impl LayerEntry {
    /// The entry of the `layers` metadata table.
    pub fn to_json(&self) -> Value {
        use layer_table_keys::{KIND, NNZ, RANK};
        let kind = (KIND, Value::from(self.kind.linear_kind().name()));
        match self.kind {
            LayerKind::Dense => json::object([kind]),
            LayerKind::LowRank { rank } => json::object([kind, (RANK, rank.into())]),
            LayerKind::LowRankSparse { rank, nnz } => json::object([kind, (RANK, rank.into()), (NNZ, nnz.into())]),
        }
    }
}

/// Name and geometry `(name, outputs, inputs)` of every linear layer of `config`, in model
/// order: the block linears, then `head` and `head_dist` when present
/// ([`factorvit::format::schema::linear_layers`]).
pub fn linear_layers(config: &ModelConfig) -> Vec<(String, usize, usize)> {
    schema::linear_layers(config).into_iter().map(|l| (l.name, l.out_features, l.in_features)).collect()
}

impl ModelSpec {
    /// Checks the whole spec against the file format (configuration, preprocessing, labels,
    /// every tensor's presence, dtype, shape and byte length, linear representations, CSR
    /// invariants, finite float tensors, extra metadata) and returns the layer table.
    pub fn validate(&self) -> Result<Vec<LayerEntry>, SpecError> {
        let c = &self.config;
        // Round-trip through the runtime's own parsers: whatever they reject, we reject.
        let cfg_back = ModelConfig::from_json(&c.to_json()).map_err(|e| SpecError::Config(e.to_string()))?;
        if &cfg_back != c {
            return Err(SpecError::Config("does not survive a JSON round trip".to_string()));
        }
        let pre =
            Preprocess::from_json(&self.preprocess.to_json()).map_err(|e| SpecError::Preprocess(e.to_string()))?;
        if pre.input_size[0] != c.in_chans {
            return Err(SpecError::Preprocess(format!(
                "input_size has {} channels but the model takes {}",
                pre.input_size[0], c.in_chans
            )));
        }
        if !self.labels.is_empty() && self.labels.len() != c.num_classes {
            return Err(SpecError::Labels { found: self.labels.len(), expected: c.num_classes });
        }
        for (key, value) in &self.metadata {
            if RESERVED_METADATA_KEYS.contains(&key.as_str()) || key == "__metadata__" {
                return Err(SpecError::Metadata { key: key.clone(), reason: "is reserved for the writer".to_string() });
            }
            if key == "compression" && json::parse(value.as_bytes()).is_err() {
                return Err(SpecError::Metadata { key: key.clone(), reason: "must be a JSON text".to_string() });
            }
        }
        for (name, t) in &self.tensors {
            t.check_len(name)?;
            // The runtime rejects NaN and infinity in every float tensor at load
            // (`LoadOptions::check_finite`, on by default): weights included.
            if t.is_float() {
                expect_finite(name, t)?;
            }
        }

        let mut used: Vec<&str> = Vec::with_capacity(self.tensors.len());
        for (name, shape) in fixed_tensors(c) {
            let t = self.tensors.get(&name).ok_or_else(|| SpecError::MissingTensor(name.clone()))?;
            expect_float(&name, t)?;
            expect_shape(&name, t, &shape)?;
            used.push(self.tensors.get_key_value(&name).map(|(k, _)| k.as_str()).unwrap_or_default());
        }
        let mut layers = Vec::new();
        for (name, m, n) in linear_layers(c) {
            let (entry, names) = self.linear_entry(&name, m, n)?;
            used.extend(names);
            layers.push(entry);
        }
        used.sort_unstable();
        if let Some(extra) = self.tensors.keys().find(|k| used.binary_search(&k.as_str()).is_err()) {
            return Err(SpecError::UnexpectedTensor(extra.clone()));
        }
        Ok(layers)
    }

    /// Validates one linear layer; returns its entry and the tensor names it uses.
    fn linear_entry(&self, layer: &str, m: usize, n: usize) -> Result<(LayerEntry, Vec<&str>), SpecError> {
        let tensor_names = LinearTensors::of(layer);
        let get = |name: &str| self.tensors.get_key_value(name).map(|(k, t)| (k.as_str(), t));
        let bad = |reason: String| SpecError::Layer { layer: layer.to_string(), reason };
        let mut names = Vec::new();
        let weight = get(&tensor_names.weight);
        let (u, v) = (get(&tensor_names.u), get(&tensor_names.v));
        let sparse = tensor_names.sparse().map(get);
        let kind = match (weight, u, v) {
            (Some((wn, w)), None, None) => {
                if sparse.iter().any(Option::is_some) {
                    return Err(bad("a dense layer cannot carry a sparse term".to_string()));
                }
                expect_shape(wn, w, &[m, n])?;
                names.push(wn);
                names.extend(self.weight_scale(wn, w, &tensor_names.weight_scale, m, false)?);
                LayerKind::Dense
            }
            (None, Some((un, ut)), Some((vn, vt))) => {
                let rank = match ut.shape.as_slice() {
                    // A rank above min(m, n) cannot represent anything a dense layer cannot, at
                    // more cost: such a file is corrupt or hostile (the runtime rejects it too).
                    [rows, r] if *rows == m && *r >= 1 && *r <= m.min(n) => *r,
                    _ => {
                        return Err(SpecError::Shape {
                            tensor: un.to_string(),
                            found: ut.shape.clone(),
                            expected: vec![m, 0],
                        })
                    }
                };
                expect_shape(vn, vt, &[rank, n])?;
                names.extend([un, vn]);
                names.extend(self.weight_scale(un, ut, &tensor_names.u_scale, m, true)?);
                names.extend(self.weight_scale(vn, vt, &tensor_names.v_scale, rank, false)?);
                match sparse {
                    [None, None, None] => LayerKind::LowRank { rank },
                    [Some(rp), Some(ci), Some(vals)] => {
                        let nnz = check_csr(layer, m, n, rp, ci, vals)?;
                        names.extend([rp.0, ci.0, vals.0]);
                        names.extend(self.weight_scale(vals.0, vals.1, &tensor_names.sparse_values_scale, m, false)?);
                        LayerKind::LowRankSparse { rank, nnz }
                    }
                    _ => {
                        use schema::suffix::{SPARSE_COL_IDX, SPARSE_ROW_PTR, SPARSE_VALUES};
                        return Err(bad(format!(
                            "a sparse term needs all of `{SPARSE_ROW_PTR}`, `{SPARSE_COL_IDX}` and `{SPARSE_VALUES}`"
                        )));
                    }
                }
            }
            (None, None, None) => return Err(SpecError::MissingTensor(tensor_names.weight.clone())),
            (None, Some(_), None) => return Err(SpecError::MissingTensor(tensor_names.v.clone())),
            (None, None, Some(_)) => return Err(SpecError::MissingTensor(tensor_names.u.clone())),
            (Some(_), _, _) => return Err(bad("has both a dense `weight` and low-rank factors".to_string())),
        };
        let bias = match get(&tensor_names.bias) {
            Some((bn, b)) => {
                expect_float(bn, b)?;
                expect_shape(bn, b, &[m])?;
                names.push(bn);
                true
            }
            None => false,
        };
        Ok((LayerEntry { name: layer.to_string(), out_features: m, in_features: n, kind, bias }, names))
    }

    /// Checks a linear layer's weight tensor `t` (`name`): a float tensor, or I8 with its F32
    /// scales `scale` of shape `[channels]`, every one finite and positive (required unless
    /// `optional`, as for `U`, whose scales may be folded into `V`'s). Returns the scale
    /// tensor's name when there is one.
    fn weight_scale(
        &self,
        name: &str,
        t: &StoredTensor,
        scale: &str,
        channels: usize,
        optional: bool,
    ) -> Result<Option<&str>, SpecError> {
        if t.dtype != DType::I8 {
            expect_float(name, t)?;
            return Ok(None);
        }
        let Some((sn, st)) = self.tensors.get_key_value(scale) else {
            return if optional { Ok(None) } else { Err(SpecError::MissingTensor(scale.to_string())) };
        };
        if st.dtype != DType::F32 {
            return Err(SpecError::Dtype { tensor: sn.clone(), found: st.dtype, expected: "F32" });
        }
        expect_shape(sn, st, &[channels])?;
        let values = st.to_f32().map_err(|e| e.for_tensor(sn))?;
        if let Some(i) = values.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(SpecError::Data {
                tensor: sn.clone(),
                reason: format!("scale {} of channel {i} is not a finite positive number", values[i]),
            });
        }
        Ok(Some(sn.as_str()))
    }

    /// The layer table (validates the whole spec).
    pub fn layers(&self) -> Result<Vec<LayerEntry>, SpecError> {
        self.validate()
    }

    /// A float tensor's elements as f32.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, SpecError> {
        let t = self.tensors.get(name).ok_or_else(|| SpecError::MissingTensor(name.to_string()))?;
        t.to_f32().map_err(|e| e.for_tensor(name))
    }

    /// Converts every float tensor to `dtype` (F32, F16 or BF16), rounding to nearest even,
    /// except the F32 channel scales of int8 weights (`L.weight_scale`, ...), which stay F32.
    /// All-or-nothing: fails without changing anything when `dtype` is not a float type or a
    /// finite value would overflow (F16 tops out at 65504).
    pub fn cast_floats(&mut self, dtype: DType) -> Result<(), SpecError> {
        if !is_float_dtype(dtype) {
            return Err(SpecError::Dtype {
                tensor: "(cast target)".to_string(),
                found: dtype,
                expected: "F32, F16 or BF16",
            });
        }
        let mut converted = Vec::new();
        for (name, t) in &self.tensors {
            let is_scale = schema::suffix::SCALES.iter().any(|sfx| name.ends_with(&format!(".{sfx}")));
            if t.is_float() && t.dtype != dtype && !is_scale {
                converted.push((name.clone(), t.cast(dtype).map_err(|e| e.for_tensor(name))?));
            }
        }
        for (name, t) in converted {
            self.tensors.insert(name, t);
        }
        Ok(())
    }

    /// Total number of stored elements over all tensors.
    pub fn num_elements(&self) -> usize {
        self.tensors.values().map(|t| t.numel().unwrap_or(0)).fold(0usize, usize::saturating_add)
    }

    /// Total bytes of tensor data.
    pub fn num_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).fold(0usize, usize::saturating_add)
    }

    /// Distinct dtypes of the stored tensors with their element counts, largest first.
    pub fn dtype_summary(&self) -> Vec<(DType, usize)> {
        let mut out: Vec<(DType, usize)> = Vec::new();
        for t in self.tensors.values() {
            let n = t.numel().unwrap_or(0);
            match out.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, count)) => *count = count.saturating_add(n),
                None => out.push((t.dtype, n)),
            }
        }
        out.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        out
    }
}

fn expect_float(name: &str, t: &StoredTensor) -> Result<(), SpecError> {
    if t.is_float() {
        Ok(())
    } else {
        Err(SpecError::Dtype { tensor: name.to_string(), found: t.dtype, expected: "F32, F16 or BF16" })
    }
}

fn expect_shape(name: &str, t: &StoredTensor, shape: &[usize]) -> Result<(), SpecError> {
    if t.shape == shape {
        Ok(())
    } else {
        Err(SpecError::Shape { tensor: name.to_string(), found: t.shape.clone(), expected: shape.to_vec() })
    }
}

fn expect_finite(name: &str, t: &StoredTensor) -> Result<(), SpecError> {
    let values = t.to_f32().map_err(|e| e.for_tensor(name))?;
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(SpecError::Data { tensor: name.to_string(), reason: format!("element {i} is {}", values[i]) }),
    }
}

/// Checks the CSR invariants of a sparse term; returns `nnz`.
fn check_csr(
    layer: &str,
    m: usize,
    n: usize,
    (rp_name, rp): (&str, &StoredTensor),
    (ci_name, ci): (&str, &StoredTensor),
    (val_name, vals): (&str, &StoredTensor),
) -> Result<usize, SpecError> {
    let bad = |reason: String| SpecError::Sparse { layer: layer.to_string(), reason };
    if rp.dtype != DType::U32 {
        return Err(SpecError::Dtype { tensor: rp_name.to_string(), found: rp.dtype, expected: "U32" });
    }
    let rows = m.checked_add(1).ok_or_else(|| bad("too many rows".to_string()))?;
    expect_shape(rp_name, rp, &[rows])?;
    match ci.dtype {
        DType::U32 => {}
        DType::U16 if n <= 1 << 16 => {}
        DType::U16 => return Err(bad(format!("U16 column indices need n <= 65536, but n = {n}"))),
        other => return Err(SpecError::Dtype { tensor: ci_name.to_string(), found: other, expected: "U16 or U32" }),
    }
    if vals.dtype != DType::I8 {
        expect_float(val_name, vals)?;
    }
    let nnz = match vals.shape.as_slice() {
        [nnz] => *nnz,
        _ => {
            return Err(SpecError::Shape { tensor: val_name.to_string(), found: vals.shape.clone(), expected: vec![0] })
        }
    };
    expect_shape(ci_name, ci, &[nnz])?;
    let row_ptr = rp.to_u32().unwrap_or_default();
    if row_ptr.first() != Some(&0) {
        return Err(bad("row_ptr[0] is not 0".to_string()));
    }
    if let Some(j) = row_ptr.windows(2).position(|w| w[0] > w[1]) {
        return Err(bad(format!("row_ptr decreases at row {j}")));
    }
    let last = row_ptr.last().map_or(0, |&x| x as usize);
    if last != nnz {
        return Err(bad(format!("row_ptr[m] = {last} but {nnz} values are stored")));
    }
    let cols = ci.to_u32().unwrap_or_default();
    if let Some(q) = cols.iter().position(|&col| col as usize >= n) {
        return Err(bad(format!("column index {} at position {q} is out of range (n = {n})", cols[q])));
    }
    Ok(nnz)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::synthetic::{random_vit_spec, SyntheticVit};

    /// Fuzzer find (read_fvit, import_checkpoint): a NaN in a weight matrix passed validation,
    /// so the compressor wrote files the runtime refuses to load.
    #[test]
    fn non_finite_values_are_rejected_in_every_float_tensor() {
        let spec = random_vit_spec(&SyntheticVit::micro(), 1).unwrap();
        spec.validate().unwrap();
        for name in ["patch_embed.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "head.weight"] {
            for bad in [f32::NAN, f32::INFINITY] {
                let mut s = spec.clone();
                let t = &s.tensors[name];
                let mut values = t.to_f32().unwrap();
                values[1] = bad;
                let t = StoredTensor::from_f32(t.shape.clone(), &values).unwrap();
                s.tensors.insert(name.to_string(), t);
                match s.validate() {
                    Err(SpecError::Data { tensor, .. }) => assert_eq!(tensor, name),
                    other => panic!("{name} with {bad}: {other:?}"),
                }
            }
        }
    }
}
