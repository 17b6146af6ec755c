//! Reading the files of a checkpoint directory: `config.json` and the weights, as one
//! `model.safetensors` or as shards listed by `model.safetensors.index.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use factorvit::safetensors::Container;

use super::{CheckpointError, StoredTensor};

/// Name of the single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the shard index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the configuration file.
pub const CONFIG_FILE: &str = "config.json";

/// A tensor read from a checkpoint, with the file it came from (for error messages).
#[derive(Debug, Clone)]
pub(crate) struct SourceTensor {
    pub tensor: StoredTensor,
    pub file: PathBuf,
}

/// The contents of a safetensors file: tensors by name and the `__metadata__` entries.
#[derive(Debug, Clone, Default)]
pub struct SafetensorsFile {
    /// Tensors by name.
    pub tensors: BTreeMap<String, StoredTensor>,
    /// `__metadata__` entries in file order.
    pub metadata: Vec<(String, String)>,
}

/// Reads a whole safetensors file (memory-mapped, every range checked by the runtime's
/// [`Container::parse`]) into owned tensors.
pub fn read_safetensors(path: &Path) -> Result<SafetensorsFile, CheckpointError> {
    read_safetensors_checked(path, |_| Ok(()))
}

/// [`read_safetensors`] that first runs `check` on the whole file's bytes (e.g. checksum
/// verification) while they are mapped.
pub(crate) fn read_safetensors_checked(
    path: &Path,
    check: impl FnOnce(&[u8]) -> Result<(), CheckpointError>,
) -> Result<SafetensorsFile, CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        // A zero-length mapping is not portable; the container parser reports the problem.
        let source = match Container::parse(&[]) {
            Err(e) => e,
            Ok(_) => factorvit::Error::Container("empty file".to_string()),
        };
        return Err(CheckpointError::Container { file: path.to_path_buf(), source });
    }
    // SAFETY: a private read-only mapping. The bytes are copied out before the map is dropped;
    // concurrent truncation of the file by another process is outside this function's contract
    // (as for every mmap-based safetensors reader).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    check(&map)?;
    parse_safetensors(&map, path)
}

/// Parses safetensors `bytes` (the whole file) into owned tensors; `path` names it in errors.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<SafetensorsFile, CheckpointError> {
    let container =
        Container::parse(bytes).map_err(|source| CheckpointError::Container { file: path.to_path_buf(), source })?;
    let mut tensors = BTreeMap::new();
    for info in container.tensors() {
        let data = bytes.get(info.start..info.end).ok_or_else(|| CheckpointError::Container {
            file: path.to_path_buf(),
            source: factorvit::Error::Container(format!("tensor `{}` lies outside the file", info.name)),
        })?;
        let tensor = StoredTensor { dtype: info.dtype, shape: info.shape.clone(), data: data.to_vec() };
        tensors.insert(info.name.clone(), tensor);
    }
    Ok(SafetensorsFile { tensors, metadata: container.metadata.clone() })
}

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, CheckpointError> {
    let text = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&text).map_err(|source| CheckpointError::Json { file: path.to_path_buf(), source })
}

/// Reads the weights of checkpoint directory `dir`: `model.safetensors` if present, otherwise
/// the shards of `model.safetensors.index.json`.
pub(crate) fn read_weights(dir: &Path) -> Result<BTreeMap<String, SourceTensor>, CheckpointError> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        let file = read_safetensors(&single)?;
        return Ok(file
            .tensors
            .into_iter()
            .map(|(name, tensor)| (name, SourceTensor { tensor, file: single.clone() }))
            .collect());
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        return read_sharded(dir, &index);
    }
    let mut reason = format!("neither `{WEIGHTS_FILE}` nor `{INDEX_FILE}` exists");
    for unsupported in ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pth", "model.onnx"] {
        if dir.join(unsupported).exists() {
            reason.push_str(&format!(
                " (found `{unsupported}`: only safetensors weights are supported; re-save with safe_serialization=True)"
            ));
            break;
        }
    }
    Err(CheckpointError::NotACheckpoint { path: dir.to_path_buf(), reason })
}

fn read_sharded(dir: &Path, index_path: &Path) -> Result<BTreeMap<String, SourceTensor>, CheckpointError> {
    let index = read_json(index_path)?;
    let bad = |reason: String| CheckpointError::ShardIndex { file: index_path.to_path_buf(), reason };
    let map = index
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad("`weight_map` is missing or not an object".to_string()))?;
    if map.is_empty() {
        return Err(bad("`weight_map` is empty".to_string()));
    }
    // Shard file -> tensors the index assigns to it.
    let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("`weight_map` entry of `{tensor}` is not a file name")))?;
        let p = Path::new(file);
        if file.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(bad(format!(
                "shard name `{file}` (for `{tensor}`) must be a relative path inside the checkpoint"
            )));
        }
        shards.entry(file).or_default().push(tensor);
    }
    if let Some((file, expected)) = shards.iter().find(|(file, _)| !dir.join(file).is_file()) {
        return Err(bad(format!("shard `{file}` (holding `{}`) does not exist", expected[0])));
    }
    let mut out: BTreeMap<String, SourceTensor> = BTreeMap::new();
    for (file, expected) in shards {
        let path = dir.join(file);
        let shard = read_safetensors(&path)?;
        for name in &expected {
            if !shard.tensors.contains_key(*name) {
                return Err(bad(format!("`weight_map` puts `{name}` in `{file}`, which does not contain it")));
            }
        }
        for (name, tensor) in shard.tensors {
            match map.get(&name).and_then(serde_json::Value::as_str) {
                Some(f) if f == file => {}
                Some(f) => {
                    return Err(bad(format!("`{name}` is stored in `{file}` but `weight_map` puts it in `{f}`")));
                }
                None => return Err(bad(format!("`{name}` is stored in `{file}` but missing from `weight_map`"))),
            }
            out.insert(name, SourceTensor { tensor, file: path.clone() });
        }
    }
    Ok(out)
}
