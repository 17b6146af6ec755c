//! Checkpoint import: reads a model directory as timm or Hugging Face transformers save it and
//! returns it in factorvit's canonical form ([`ModelSpec`], tensors named as in
//! `docs/FORMAT.md`).
//!
//! Supported layouts (detected from `config.json`):
//!
//! * **timm hub** (`architecture`, `model_args`, `pretrained_cfg`; `timm.models.save_for_hf`):
//!   `VisionTransformer` and `VisionTransformerDistilled` (`vit_*`, `deit_*`, `deit3_*`, custom
//!   names with full `model_args`). Dimensions the config does not state come from the table of
//!   standard sizes selected by the architecture name (see [`timm::TimmName`]), then from the
//!   tensors; every value stated by the config or the name is checked against the tensors.
//!   LayerNorm eps 1e-6; position tables are resampled `bicubic_antialias`.
//! * **transformers** (`model_type`, `architectures`; `save_pretrained`): `ViTModel`,
//!   `ViTForImageClassification`, `DeiTModel`, `DeiTForImageClassification`,
//!   `DeiTForImageClassificationWithTeacher`, `Dinov2Model`. Query, key and value are fused into
//!   one `attn.qkv` layer (rows `[q; k; v]`); labels come from `id2label`; eps from the config;
//!   position tables are resampled `bicubic`. Preprocessing comes from
//!   `preprocessor_config.json` when present, otherwise from the defaults documented in
//!   [`inputs`] (ImageNet mean/std, bicubic, crop_pct 0.875, input = `image_size`).
//!
//! Weights are `model.safetensors` or shards listed by `model.safetensors.index.json`, in F32,
//! F16 or BF16, kept in their source dtype ([`ModelSpec::cast_floats`] converts). Files are
//! memory-mapped and parsed with the runtime's bounds-checked [`factorvit::safetensors`]
//! reader; every failure is a [`CheckpointError`] naming the file, key or tensor at fault.

mod cfgjson;
mod files;
mod hf;
pub mod inputs;
mod mapping;
mod spec;
mod tensor;
pub mod timm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use factorvit::format::{metadata_keys, FORMAT_NAME, FORMAT_VERSION};
use factorvit::json;
use factorvit::safetensors::DType;
use factorvit::{ModelConfig, Preprocess};

pub use files::{parse_safetensors, read_safetensors, SafetensorsFile, CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE};
pub use spec::{
    fixed_tensors, linear_layers, model_order_key, LayerEntry, LayerKind, ModelSpec, SpecError, RESERVED_METADATA_KEYS,
};
pub use tensor::{decode_f32, encode_f32, is_float_dtype, numel_of, StoredTensor};

/// Why a checkpoint (or a factorvit file read back as a spec) could not be imported.
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Reading a file failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The path is not a checkpoint directory this importer understands.
    NotACheckpoint {
        /// The path given.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A JSON file does not parse.
    Json {
        /// The file.
        file: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A configuration value is missing or invalid.
    Config {
        /// The file.
        file: PathBuf,
        /// Key path, e.g. `model_args.embed_dim`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The model class or architecture is not one the format can represent.
    UnsupportedArchitecture {
        /// The configuration file.
        file: PathBuf,
        /// The architecture or class name.
        architecture: String,
        /// Why it is not supported.
        reason: String,
    },
    /// A safetensors file is malformed (truncated, bad header, offsets out of range).
    Container {
        /// The file.
        file: PathBuf,
        /// The runtime's parse error.
        source: factorvit::Error,
    },
    /// The shard index disagrees with the shard files.
    ShardIndex {
        /// The index file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the model needs is absent.
    MissingTensor {
        /// Source name of the tensor.
        tensor: String,
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// A tensor the importer cannot place (usually a feature the format does not have).
    UnexpectedTensor {
        /// Source name of the tensor.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// The feature it most likely belongs to.
        hint: Option<String>,
    },
    /// A tensor has the wrong shape.
    Shape {
        /// Source name of the tensor.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// Its shape.
        found: Vec<usize>,
        /// The shape the configuration requires (0 = any size).
        expected: Vec<usize>,
    },
    /// A weight tensor is not F32, F16 or BF16.
    Dtype {
        /// Source name of the tensor.
        tensor: String,
        /// The file holding it.
        file: PathBuf,
        /// Its dtype.
        found: DType,
    },
    /// The configuration and the tensors (or two configuration sources) disagree.
    Contradiction {
        /// What disagrees with what.
        what: String,
    },
    /// The imported model does not satisfy the file format.
    Spec(SpecError),
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CheckpointError::NotACheckpoint { path, reason } => {
                write!(f, "{}: not a supported checkpoint directory: {reason}", path.display())
            }
            CheckpointError::Json { file, source } => write!(f, "{}: invalid JSON: {source}", file.display()),
            CheckpointError::Config { file, key, reason } => write!(f, "{}: `{key}` {reason}", file.display()),
            CheckpointError::UnsupportedArchitecture { file, architecture, reason } => {
                write!(f, "{}: unsupported architecture `{architecture}`: {reason}", file.display())
            }
            CheckpointError::Container { file, source } => write!(f, "{}: {source}", file.display()),
            CheckpointError::ShardIndex { file, reason } => write!(f, "{}: {reason}", file.display()),
            CheckpointError::MissingTensor { tensor, dir } => {
                write!(f, "{}: missing tensor `{tensor}`", dir.display())
            }
            CheckpointError::UnexpectedTensor { tensor, file, hint } => {
                write!(f, "{}: unexpected tensor `{tensor}`", file.display())?;
                match hint {
                    Some(h) => write!(f, " ({h})"),
                    None => write!(f, " (not part of a supported ViT layout)"),
                }
            }
            CheckpointError::Shape { tensor, file, found, expected } => {
                let exp: Vec<String> =
                    expected.iter().map(|&d| if d == 0 { "_".to_string() } else { d.to_string() }).collect();
                write!(f, "{}: tensor `{tensor}` has shape {found:?}, expected [{}]", file.display(), exp.join(", "))
            }
            CheckpointError::Dtype { tensor, file, found } => {
                write!(f, "{}: tensor `{tensor}` has dtype {}, expected F32, F16 or BF16", file.display(), found.name())
            }
            CheckpointError::Contradiction { what } => write!(f, "inconsistent checkpoint: {what}"),
            CheckpointError::Spec(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Io { source, .. } => Some(source),
            CheckpointError::Json { source, .. } => Some(source),
            CheckpointError::Container { source, .. } => Some(source),
            CheckpointError::Spec(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SpecError> for CheckpointError {
    fn from(e: SpecError) -> Self {
        CheckpointError::Spec(e)
    }
}

/// Which library wrote a checkpoint directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// timm hub layout (`architecture` in `config.json`).
    Timm,
    /// Hugging Face transformers (`model_type` / `architectures` in `config.json`).
    Transformers,
}

/// Detects the layout from a parsed `config.json`.
pub fn detect_layout(config: &serde_json::Value) -> Option<Layout> {
    if config.get("architecture").is_some_and(serde_json::Value::is_string) {
        Some(Layout::Timm)
    } else if config.get("model_type").is_some() || config.get("architectures").is_some() {
        Some(Layout::Transformers)
    } else {
        None
    }
}

/// Imports the checkpoint directory `dir` (timm hub or transformers layout).
pub fn load_checkpoint(dir: &Path) -> Result<ModelSpec, CheckpointError> {
    let meta = std::fs::metadata(dir).map_err(|source| CheckpointError::Io { path: dir.to_path_buf(), source })?;
    if !meta.is_dir() {
        return Err(CheckpointError::NotACheckpoint { path: dir.to_path_buf(), reason: "not a directory".to_string() });
    }
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(CheckpointError::NotACheckpoint {
            path: dir.to_path_buf(),
            reason: format!("`{CONFIG_FILE}` is missing"),
        });
    }
    let config = files::read_json(&config_path)?;
    let layout = config_layout(&config_path, &config)?;
    let weights = files::read_weights(dir)?;
    import_parsed(layout, dir, &config_path, &config, weights)
}

/// The directory name [`import_from_memory`] gives its inputs in errors and in the spec's
/// `source`: the config is `<memory>/config.json`, the weights `<memory>/model.safetensors`.
pub const MEMORY_DIR: &str = "<memory>";

/// Imports a checkpoint held in memory: the bytes of its `config.json` and of its (single)
/// `model.safetensors`. Does what [`load_checkpoint`] does for a directory holding these two
/// files, and names them [`MEMORY_DIR`]`/config.json` and [`MEMORY_DIR`]`/model.safetensors` in
/// errors.
///
/// Other files of a checkpoint directory are not available: transformers checkpoints get the
/// default preprocessing (as a directory without `preprocessor_config.json` does). Note that the
/// transformers importer still looks for `<memory>/preprocessor_config.json` relative to the
/// working directory, so keep no directory of that name there.
pub fn import_from_memory(config_json: &[u8], weights: &[u8]) -> Result<ModelSpec, CheckpointError> {
    let dir = Path::new(MEMORY_DIR);
    let config_path = dir.join(CONFIG_FILE);
    let config: serde_json::Value = serde_json::from_slice(config_json)
        .map_err(|source| CheckpointError::Json { file: config_path.clone(), source })?;
    let layout = config_layout(&config_path, &config)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let file = parse_safetensors(weights, &weights_path)?;
    let weights = file
        .tensors
        .into_iter()
        .map(|(name, tensor)| (name, files::SourceTensor { tensor, file: weights_path.clone() }))
        .collect();
    import_parsed(layout, dir, &config_path, &config, weights)
}

/// The layout of a parsed `config.json` (at `config_path`), or why it has none.
fn config_layout(config_path: &Path, config: &serde_json::Value) -> Result<Layout, CheckpointError> {
    detect_layout(config).ok_or_else(|| CheckpointError::Config {
        file: config_path.to_path_buf(),
        key: "architecture".to_string(),
        reason: "is missing: neither a timm (`architecture`) nor a transformers (`model_type`, `architectures`) config"
            .to_string(),
    })
}

/// Imports parsed checkpoint contents: the configuration and the weights by source name
/// (shared by [`load_checkpoint`] and [`import_from_memory`]).
fn import_parsed(
    layout: Layout,
    dir: &Path,
    config_path: &Path,
    config: &serde_json::Value,
    weights: BTreeMap<String, files::SourceTensor>,
) -> Result<ModelSpec, CheckpointError> {
    match layout {
        Layout::Timm => timm::import(dir, config_path, config, weights),
        Layout::Transformers => hf::import(dir, config_path, config, weights),
    }
}

/// Loads a model spec from either a checkpoint directory or a factorvit (`.fvit`) file.
pub fn load_any(path: &Path) -> Result<ModelSpec, CheckpointError> {
    if path.is_dir() {
        load_checkpoint(path)
    } else {
        read_fvit(path)
    }
}

/// Reads a factorvit file back into a spec (e.g. to re-convert or recompress it). The runtime
/// remains the authority on running files; this reader checks the same metadata and, via
/// [`ModelSpec::validate`], the same tensor rules.
///
/// The file's checksums, when it has them, are verified first (a corrupt file is
/// [`CheckpointError::Container`] with [`factorvit::Error::Checksum`] naming the tensor).
pub fn read_fvit(path: &Path) -> Result<ModelSpec, CheckpointError> {
    let file = files::read_safetensors_checked(path, |bytes| {
        let container_error = |source| CheckpointError::Container { file: path.to_path_buf(), source };
        let container = factorvit::safetensors::Container::parse(bytes).map_err(container_error)?;
        factorvit::checksum::verify(&container, bytes, factorvit::ChecksumPolicy::VerifyIfPresent, false)
            .map_err(container_error)?;
        Ok(())
    })?;
    ModelSpec::from_safetensors(file, path)
}

impl ModelSpec {
    /// Builds a spec from the tensors and metadata of a factorvit file (`path` names it in
    /// errors).
    pub fn from_safetensors(file: SafetensorsFile, path: &Path) -> Result<ModelSpec, CheckpointError> {
        let meta = |key: &str| file.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let config_err = |key: &str, reason: String| CheckpointError::Config {
            file: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let required = |key: &str| meta(key).ok_or_else(|| config_err(key, "is missing from the metadata".to_string()));
        if required(metadata_keys::FORMAT)? != FORMAT_NAME {
            return Err(config_err(metadata_keys::FORMAT, format!("is not `{FORMAT_NAME}`")));
        }
        let version = required(metadata_keys::FORMAT_VERSION)?;
        if version.split('.').next() != Some(FORMAT_VERSION) {
            return Err(config_err(
                metadata_keys::FORMAT_VERSION,
                format!("`{version}` is not supported (version {FORMAT_VERSION} is)"),
            ));
        }
        let parse = |key: &str| -> Result<json::Value, CheckpointError> {
            json::parse(required(key)?.as_bytes()).map_err(|e| config_err(key, e.to_string()))
        };
        let (config_key, preprocess_key, labels_key) =
            (metadata_keys::CONFIG, metadata_keys::PREPROCESS, metadata_keys::LABELS);
        let config = ModelConfig::from_json(&parse(config_key)?).map_err(|e| config_err(config_key, e.to_string()))?;
        let preprocess =
            Preprocess::from_json(&parse(preprocess_key)?).map_err(|e| config_err(preprocess_key, e.to_string()))?;
        let labels: Option<Vec<String>> =
            parse(labels_key)?.as_array().and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect());
        let labels = labels.ok_or_else(|| config_err(labels_key, "must be an array of strings".to_string()))?;
        let writer_keys = [metadata_keys::LAYERS, metadata_keys::PRODUCER];
        let metadata = file
            .metadata
            .iter()
            .filter(|(k, _)| !RESERVED_METADATA_KEYS.contains(&k.as_str()) && !writer_keys.contains(&k.as_str()))
            .cloned()
            .collect();
        let spec = ModelSpec {
            config,
            preprocess,
            labels,
            source: meta(metadata_keys::SOURCE).unwrap_or_default().to_string(),
            tensors: file.tensors,
            metadata,
            warnings: Vec::new(),
        };
        let layers = spec.validate()?;
        let layers_key = metadata_keys::LAYERS;
        let table = parse(layers_key)?;
        if table.as_object().map(<[_]>::len) != Some(layers.len()) {
            return Err(config_err(layers_key, format!("must have one entry per linear layer ({})", layers.len())));
        }
        for entry in &layers {
            if table.get(&entry.name) != Some(&entry.to_json()) {
                return Err(config_err(layers_key, format!("entry of `{}` disagrees with the tensors", entry.name)));
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn import_from_memory_gives_the_spec_load_checkpoint_gives() {
        let fixtures = [
            "timm-vit-micro",
            "timm-deit-distilled-micro",
            "timm-vit-avgpool-layerscale-micro",
            "hf-vit-micro",
            "hf-deit-distilled-micro",
            "hf-dinov2-micro",
        ];
        let mut dirs: Vec<PathBuf> = fixtures.iter().map(|n| repo().join("tests").join("fixtures").join(n)).collect();
        dirs.push(repo().join("models").join("fmnist-deit-tiny"));
        for dir in dirs {
            let from_dir = load_checkpoint(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let config = std::fs::read(dir.join(CONFIG_FILE)).unwrap();
            let weights = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
            let mut from_memory =
                import_from_memory(&config, &weights).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            // Only the directory name in `source` differs.
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(from_memory.source, from_dir.source.replace(&format!("({name})"), &format!("({MEMORY_DIR})")));
            from_memory.source.clone_from(&from_dir.source);
            assert!(from_memory == from_dir, "{}: the specs differ", dir.display());
        }
    }

    #[test]
    fn import_from_memory_names_the_virtual_files_in_errors() {
        let e = import_from_memory(b"{", b"").unwrap_err();
        assert!(matches!(e, CheckpointError::Json { .. }), "{e:?}");
        assert!(e.to_string().starts_with("<memory>/config.json: "), "{e}");
        let e = import_from_memory(b"{}", b"").unwrap_err();
        assert!(matches!(e, CheckpointError::Config { ref key, .. } if key == "architecture"), "{e:?}");
        let e = import_from_memory(br#"{"architecture": "vit_tiny_patch16_224"}"#, b"garbage").unwrap_err();
        assert!(matches!(e, CheckpointError::Container { .. }), "{e:?}");
        assert!(e.to_string().starts_with("<memory>/model.safetensors: "), "{e}");
    }
}
