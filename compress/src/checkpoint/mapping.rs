//! Shared machinery of the importers: moving source tensors to canonical names (with
//! provenance for error messages), reading the geometry off the canonical tensors, and
//! reconciling configuration values with what the tensors say.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use factorvit::format::schema::{
    self, BlockLinear, BlockTensors, LinearTensors, NormTensors, CLS_TOKEN, DIST_TOKEN, FC_NORM, FINAL_NORM, HEAD,
    HEAD_DIST, PATCH_EMBED, POS_EMBED,
};
use factorvit::safetensors::DType;

use super::files::SourceTensor;
use super::tensor::{decode_f32, encode_f32, is_float_dtype};
use super::{CheckpointError, SpecError, StoredTensor};

/// Moves tensors from their source names to canonical names and remembers where each came from.
pub(crate) struct Mapper {
    dir: PathBuf,
    source: BTreeMap<String, SourceTensor>,
    pub out: BTreeMap<String, StoredTensor>,
    /// Canonical name -> (source name(s), file) of every tensor mapped or expected.
    provenance: BTreeMap<String, (String, Option<PathBuf>)>,
    pub warnings: Vec<String>,
}

impl Mapper {
    pub fn new(dir: &Path, source: BTreeMap<String, SourceTensor>) -> Mapper {
        Mapper {
            dir: dir.to_path_buf(),
            source,
            out: BTreeMap::new(),
            provenance: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    /// `true` if a source tensor `name` has not been consumed yet.
    pub fn has(&self, name: &str) -> bool {
        self.source.contains_key(name)
    }

    /// Source names not consumed yet.
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.source.keys().map(String::as_str)
    }

    /// Takes a source tensor out of the pool, checking that it is a float tensor.
    fn take_float(&mut self, src: &str) -> Result<Option<SourceTensor>, CheckpointError> {
        match self.source.remove(src) {
            None => Ok(None),
            Some(s) if is_float_dtype(s.tensor.dtype) => Ok(Some(s)),
            Some(s) => Err(CheckpointError::Dtype { tensor: src.to_string(), file: s.file, found: s.tensor.dtype }),
        }
    }

    /// Moves `src` to `dst` if present; returns whether it was. Records `src` as the expected
    /// source of `dst` either way.
    pub fn map(&mut self, src: &str, dst: &str) -> Result<bool, CheckpointError> {
        let taken = self.take_float(src)?;
        let file = taken.as_ref().map(|s| s.file.clone());
        self.provenance.insert(dst.to_string(), (src.to_string(), file));
        match taken {
            Some(s) => {
                self.out.insert(dst.to_string(), s.tensor);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Moves `src` to `dst`; a missing tensor is an error.
    pub fn require(&mut self, src: &str, dst: &str) -> Result<(), CheckpointError> {
        if self.map(src, dst)? {
            Ok(())
        } else {
            Err(CheckpointError::MissingTensor { tensor: src.to_string(), dir: self.dir.clone() })
        }
    }

    /// Removes `src` without using it; returns whether it was present.
    pub fn discard(&mut self, src: &str) -> bool {
        self.source.remove(src).is_some()
    }

    /// Concatenates `srcs` along their first dimension into `dst` (HF query/key/value into a
    /// fused qkv). All or none must be present; shapes must agree; mixed dtypes become F32.
    pub fn fuse_rows(&mut self, srcs: [&str; 3], dst: &str) -> Result<bool, CheckpointError> {
        let present: Vec<bool> = srcs.iter().map(|s| self.source.contains_key(*s)).collect();
        self.provenance.insert(dst.to_string(), (srcs.join(" + "), None));
        if present.iter().all(|p| !p) {
            return Ok(false);
        }
        if let Some(i) = present.iter().position(|p| !p) {
            return Err(CheckpointError::MissingTensor { tensor: srcs[i].to_string(), dir: self.dir.clone() });
        }
        let mut parts = Vec::with_capacity(3);
        for src in srcs {
            parts.push(
                self.take_float(src)?
                    .ok_or_else(|| CheckpointError::MissingTensor { tensor: src.to_string(), dir: self.dir.clone() })?,
            );
        }
        let first = parts[0].tensor.shape.clone();
        if first.is_empty() {
            return Err(CheckpointError::Shape {
                tensor: srcs[0].to_string(),
                file: parts[0].file.clone(),
                found: first,
                expected: vec![0],
            });
        }
        for (src, p) in srcs.iter().zip(&parts).skip(1) {
            if p.tensor.shape != first {
                return Err(CheckpointError::Shape {
                    tensor: src.to_string(),
                    file: p.file.clone(),
                    found: p.tensor.shape.clone(),
                    expected: first.clone(),
                });
            }
        }
        let dtype = parts[0].tensor.dtype;
        let same = parts.iter().all(|p| p.tensor.dtype == dtype);
        let (dtype, data) = if same {
            (dtype, parts.iter().flat_map(|p| p.tensor.data.iter().copied()).collect())
        } else {
            let mut values = Vec::new();
            for p in &parts {
                values.extend(decode_f32(p.tensor.dtype, &p.tensor.data).unwrap_or_default());
            }
            self.warnings.push(format!("{} have different dtypes; fused `{dst}` is stored as F32", srcs.join(", ")));
            (DType::F32, encode_f32(DType::F32, &values).unwrap_or_default())
        };
        let mut shape = first;
        shape[0] = shape[0]
            .checked_mul(3)
            .ok_or(CheckpointError::Contradiction { what: format!("`{}` is too large", srcs[0]) })?;
        self.provenance.insert(dst.to_string(), (srcs.join(" + "), Some(parts[0].file.clone())));
        self.out.insert(dst.to_string(), StoredTensor { dtype, shape, data });
        Ok(true)
    }

    /// Shape of a canonical tensor already mapped.
    pub fn shape(&self, dst: &str) -> Option<&[usize]> {
        self.out.get(dst).map(|t| t.shape.as_slice())
    }

    /// Shape of a canonical tensor already mapped; its absence is a missing source tensor.
    fn required_shape(&self, dst: &str) -> Result<&[usize], CheckpointError> {
        self.shape(dst).ok_or_else(|| {
            let (tensor, _) = self.source_of(dst);
            CheckpointError::MissingTensor { tensor, dir: self.dir.clone() }
        })
    }

    /// The error for canonical tensor `dst` having `found` instead of `expected`.
    pub fn shape_error(&self, dst: &str, found: &[usize], expected: Vec<usize>) -> CheckpointError {
        let (tensor, file) = self.source_of(dst);
        CheckpointError::Shape { tensor, file, found: found.to_vec(), expected }
    }

    /// Source name and file of canonical tensor `dst` (for messages).
    pub fn source_of(&self, dst: &str) -> (String, PathBuf) {
        match self.provenance.get(dst) {
            Some((src, file)) => (src.clone(), file.clone().unwrap_or_else(|| self.dir.clone())),
            None => (dst.to_string(), self.dir.clone()),
        }
    }

    /// Fails on the first source tensor nobody consumed, with a hint about the feature it
    /// most likely belongs to.
    pub fn finish(&self, hint: impl Fn(&str) -> Option<&'static str>) -> Result<(), CheckpointError> {
        match self.source.iter().next() {
            None => Ok(()),
            Some((name, s)) => Err(CheckpointError::UnexpectedTensor {
                tensor: name.clone(),
                file: s.file.clone(),
                hint: hint(name).map(str::to_string),
            }),
        }
    }

    /// Translates a validation error about canonical tensors into one naming the source tensors.
    pub fn explain(&self, e: SpecError) -> CheckpointError {
        match e {
            SpecError::Shape { tensor, found, expected } => {
                let (tensor, file) = self.source_of(&tensor);
                CheckpointError::Shape { tensor, file, found, expected }
            }
            SpecError::MissingTensor(t) => {
                let (tensor, _) = self.source_of(&t);
                CheckpointError::MissingTensor { tensor, dir: self.dir.clone() }
            }
            SpecError::UnexpectedTensor(t) => {
                let (tensor, file) = self.source_of(&t);
                CheckpointError::UnexpectedTensor { tensor, file, hint: None }
            }
            other => CheckpointError::Spec(other),
        }
    }
}

/// Model geometry read off the canonical tensors.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Geometry {
    pub embed_dim: usize,
    pub in_chans: usize,
    pub patch_size: usize,
    pub depth: usize,
    pub mlp_hidden: usize,
    pub class_token: bool,
    pub dist_token: bool,
    /// Rows of `pos_embed` (prefix rows + grid).
    pub pos_rows: usize,
    pub layer_scale: bool,
    pub qkv_bias: bool,
    pub norm: bool,
    pub fc_norm: bool,
    /// Rows of `head.weight`, if a head is present.
    pub head_classes: Option<usize>,
    pub head_dist: bool,
}

/// Largest depth accepted (the runtime's limit).
const MAX_DEPTH: usize = 1024;

impl Geometry {
    /// Reads the geometry from canonical tensors; `block_src` names the source block prefix in
    /// messages (e.g. `blocks.{i}` or `vit.encoder.layer.{i}`).
    pub fn read(m: &Mapper, block_src: &dyn Fn(usize) -> String) -> Result<Geometry, CheckpointError> {
        let patch_embed = LinearTensors::of(PATCH_EMBED).weight;
        let pe = m.required_shape(&patch_embed)?;
        let (embed_dim, in_chans, patch_size) = match *pe {
            [d, c, p, q] if p == q && d > 0 && c > 0 && p > 0 => (d, c, p),
            _ => return Err(m.shape_error(&patch_embed, pe, vec![0, 0, 0, 0])),
        };
        let d = embed_dim;
        let pos = m.required_shape(POS_EMBED)?;
        let pos_rows = match *pos {
            [1, rows, dd] if dd == d => rows,
            _ => return Err(m.shape_error(POS_EMBED, pos, vec![1, 0, d])),
        };
        // Blocks: indices must run 0..depth without gaps.
        let mut seen = std::collections::BTreeSet::new();
        for name in m.out.keys() {
            if let Some((idx, _)) = schema::split_block_name(name) {
                let i: usize = idx.parse().map_err(|_| CheckpointError::Contradiction {
                    what: format!("cannot parse the block index of `{name}`"),
                })?;
                if i >= MAX_DEPTH {
                    return Err(CheckpointError::Contradiction {
                        what: format!(
                            "block index {i} of `{}` exceeds the limit of {MAX_DEPTH} blocks",
                            m.source_of(name).0
                        ),
                    });
                }
                seen.insert(i);
            }
        }
        let depth = seen.len();
        if depth == 0 {
            return Err(CheckpointError::Contradiction {
                what: "the checkpoint has no transformer blocks".to_string(),
            });
        }
        if let Some(missing) = (0..depth).find(|i| !seen.contains(i)) {
            return Err(CheckpointError::MissingTensor {
                tensor: format!("{}.* (block indices are {:?})", block_src(missing), seen),
                dir: m.dir.clone(),
            });
        }
        let fc1_weight = LinearTensors::of(&BlockLinear::Fc1.name(0)).weight;
        let fc1 = m.required_shape(&fc1_weight)?;
        let mlp_hidden = match *fc1 {
            [rows, cols] if cols == d && rows > 0 => rows,
            _ => return Err(m.shape_error(&fc1_weight, fc1, vec![0, d])),
        };
        let qkv_bias_of = |i: usize| LinearTensors::of(&BlockLinear::Qkv.name(i)).bias;
        let qkv_bias = m.out.contains_key(&qkv_bias_of(0));
        for i in 1..depth {
            if m.out.contains_key(&qkv_bias_of(i)) != qkv_bias {
                return Err(CheckpointError::Contradiction {
                    what: format!(
                        "block 0 {} a qkv bias but block {i} {}",
                        if qkv_bias { "has" } else { "has no" },
                        if qkv_bias { "has none" } else { "has one" }
                    ),
                });
            }
        }
        let head_weight = LinearTensors::of(HEAD).weight;
        let head_classes = match m.shape(&head_weight) {
            None => None,
            Some(&[k, dd]) if dd == d => Some(k),
            Some(s) => return Err(m.shape_error(&head_weight, s, vec![0, d])),
        };
        Ok(Geometry {
            embed_dim,
            in_chans,
            patch_size,
            depth,
            mlp_hidden,
            class_token: m.out.contains_key(CLS_TOKEN),
            dist_token: m.out.contains_key(DIST_TOKEN),
            pos_rows,
            layer_scale: m.out.contains_key(&BlockTensors::of(0).ls1),
            qkv_bias,
            norm: m.out.contains_key(&NormTensors::of(FINAL_NORM).weight),
            fc_norm: m.out.contains_key(&NormTensors::of(FC_NORM).weight),
            head_classes,
            head_dist: m.out.contains_key(&LinearTensors::of(HEAD_DIST).weight),
        })
    }

    /// Number of prefix tokens.
    pub fn prefix(&self) -> usize {
        usize::from(self.class_token) + usize::from(self.dist_token)
    }
}

/// Where a configuration value came from, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Origin {
    /// The library's default.
    Default,
    /// The table of standard sizes, via the architecture name.
    Name,
    /// A top-level key of `config.json`.
    TopLevel,
    /// `model_args` (timm) or the transformers config.
    Explicit,
}

/// A configuration value with its provenance.
#[derive(Debug, Clone)]
pub(crate) struct Setting<T> {
    pub value: T,
    pub origin: Origin,
    key: &'static str,
    /// Human description of the source when not the default (e.g. "model_args.embed_dim").
    from: String,
}

impl<T: PartialEq + Debug + Clone> Setting<T> {
    pub fn default(key: &'static str, value: T) -> Setting<T> {
        Setting { value, origin: Origin::Default, key, from: "the default".to_string() }
    }

    /// Overrides the value (callers apply sources in increasing precedence).
    pub fn set(&mut self, value: T, origin: Origin, from: impl Into<String>) {
        self.value = value;
        self.origin = origin;
        self.from = from.into();
    }

    /// Checks the configured value against `found` (what the tensors say). A default gives way
    /// to the tensors; anything stated explicitly must agree.
    pub fn reconcile(&self, found: T, evidence: &str) -> Result<T, CheckpointError> {
        if self.value == found || self.origin == Origin::Default {
            Ok(found)
        } else {
            Err(CheckpointError::Contradiction {
                what: format!("{} gives {} = {:?}, but {evidence} gives {:?}", self.from, self.key, self.value, found),
            })
        }
    }
}
