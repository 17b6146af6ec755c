//! Writing factorvit files (`docs/FORMAT.md`): [`to_bytes`] serialises a validated
//! [`ModelSpec`], [`write_atomic`] puts bytes on disk without ever leaving a partial file, and
//! [`safetensors_bytes`] is the underlying general safetensors writer (also used for tensor
//! outputs such as `factorvit infer`'s).
//!
//! Layout guarantees: the JSON header is padded with spaces so the data region starts at a
//! multiple of 8; tensors are stored by decreasing element size (8-, 4-, then 2-byte, then
//! 1-byte elements), so every tensor starts at a multiple of its element size and the runtime
//! reads all of them in place; the data region is contiguous (no gaps), as safetensors
//! requires.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use factorvit::checksum;
use factorvit::format::metadata_keys;
use factorvit::json::{self, Value};
use factorvit::safetensors::DType;

use crate::checkpoint::{model_order_key, numel_of, ModelSpec, SpecError};

/// Values of the `format` and `format_version` metadata keys (defined by the runtime's
/// [`factorvit::format`], the one home of the file's vocabulary).
pub use factorvit::format::{FORMAT_NAME, FORMAT_VERSION};
/// Value of the `producer` metadata key.
pub const PRODUCER: &str = concat!("factorvit-compress ", env!("CARGO_PKG_VERSION"));

/// Why a file could not be produced.
#[derive(Debug)]
#[non_exhaustive]
pub enum WriteError {
    /// The spec violates the format; nothing was written.
    Invalid(SpecError),
    /// A tensor handed to [`safetensors_bytes`] is inconsistent.
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A size does not fit in memory.
    TooLarge(&'static str),
    /// Writing the file failed (no partial file was left behind).
    Io {
        /// The output path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Invalid(e) => write!(f, "refusing to write an invalid model: {e}"),
            WriteError::Tensor { name, reason } => write!(f, "tensor `{name}`: {reason}"),
            WriteError::TooLarge(what) => write!(f, "{what} is too large"),
            WriteError::Io { path, source } => write!(f, "cannot write {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Invalid(e) => Some(e),
            WriteError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<SpecError> for WriteError {
    fn from(e: SpecError) -> Self {
        WriteError::Invalid(e)
    }
}

/// A tensor to write: borrowed bytes plus dtype and shape.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// Tensor name (unique, non-empty, not `__metadata__`).
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: &'a [usize],
    /// Little-endian elements, `numel · dtype.size()` bytes.
    pub data: &'a [u8],
}

/// Serialises `spec` as a factorvit file after validating it completely
/// ([`ModelSpec::validate`]): metadata `format`, `format_version`, `config`, `preprocess`,
/// `labels`, `layers` (derived from the tensors), `producer`, `source` (when non-empty) and the
/// spec's extra entries (e.g. `compression`), and `checksums` (CRC-32 of every tensor and of the
/// other metadata, see [`factorvit::checksum`]).
pub fn to_bytes(spec: &ModelSpec) -> Result<Vec<u8>, WriteError> {
    let layers = spec.validate()?;
    let layer_table = Value::Object(layers.iter().map(|l| (l.name.clone(), l.to_json())).collect());
    let labels = Value::Array(spec.labels.iter().map(|l| Value::from(l.as_str())).collect());
    let mut metadata = vec![
        (metadata_keys::FORMAT.to_string(), FORMAT_NAME.to_string()),
        (metadata_keys::FORMAT_VERSION.to_string(), FORMAT_VERSION.to_string()),
        (metadata_keys::CONFIG.to_string(), spec.config.to_json().to_json()),
        (metadata_keys::PREPROCESS.to_string(), spec.preprocess.to_json().to_json()),
        (metadata_keys::LABELS.to_string(), labels.to_json()),
        (metadata_keys::LAYERS.to_string(), layer_table.to_json()),
        (metadata_keys::PRODUCER.to_string(), PRODUCER.to_string()),
    ];
    if !spec.source.is_empty() {
        metadata.push((metadata_keys::SOURCE.to_string(), spec.source.clone()));
    }
    metadata.extend(spec.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut tensors: Vec<TensorRef<'_>> = spec
        .tensors
        .iter()
        .map(|(name, t)| TensorRef { name, dtype: t.dtype, shape: &t.shape, data: &t.data })
        .collect();
    // Integrity: the CRC-32 of every tensor and of the metadata above (docs/FORMAT.md).
    let checksums = checksum::metadata_value(
        tensors.iter().map(|t| (t.name, t.data)),
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    metadata.push((metadata_keys::CHECKSUMS.to_string(), checksums));
    tensors.sort_by(|a, b| model_order_key(a.name).cmp(&model_order_key(b.name)));
    safetensors_bytes(&tensors, &metadata)
}

/// Serialises tensors and string metadata as a safetensors file. Tensors keep the given order
/// within each element size; larger elements come first so every tensor is aligned.
pub fn safetensors_bytes(tensors: &[TensorRef<'_>], metadata: &[(String, String)]) -> Result<Vec<u8>, WriteError> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tensors[i].dtype.size()));
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(WriteError::Tensor { name: w[0].to_string(), reason: "appears twice".to_string() });
    }
    let mut header: Vec<(String, Value)> = Vec::with_capacity(tensors.len() + 1);
    if !metadata.is_empty() {
        let mut keys: Vec<&str> = metadata.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(WriteError::Tensor {
                name: "__metadata__".to_string(),
                reason: format!("key `{}` appears twice", w[0]),
            });
        }
        let meta = metadata.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        header.push(("__metadata__".to_string(), Value::Object(meta)));
    }
    let mut offset = 0usize;
    for &i in &order {
        let t = &tensors[i];
        if t.name.is_empty() || t.name == "__metadata__" {
            return Err(WriteError::Tensor {
                name: t.name.to_string(),
                reason: "is not a valid tensor name".to_string(),
            });
        }
        let expected = numel_of(t.shape).and_then(|n| n.checked_mul(t.dtype.size()));
        if expected != Some(t.data.len()) {
            return Err(WriteError::Tensor {
                name: t.name.to_string(),
                reason: format!("{} bytes for shape {:?} of {}", t.data.len(), t.shape, t.dtype.name()),
            });
        }
        let end = offset.checked_add(t.data.len()).ok_or(WriteError::TooLarge("data region"))?;
        // JSON numbers are exact up to 2^53.
        if end as u64 > 1 << 53 {
            return Err(WriteError::TooLarge("data region"));
        }
        let shape = Value::Array(t.shape.iter().map(|&d| Value::from(d)).collect());
        let entry = json::object([
            ("dtype", Value::from(t.dtype.name())),
            ("shape", shape),
            ("data_offsets", Value::Array(vec![Value::from(offset), Value::from(end)])),
        ]);
        header.push((t.name.to_string(), entry));
        offset = end;
    }
    let mut text = Value::Object(header).to_json().into_bytes();
    let padded = text.len().checked_next_multiple_of(8).ok_or(WriteError::TooLarge("header"))?;
    text.resize(padded, b' ');
    let total =
        8usize.checked_add(text.len()).and_then(|n| n.checked_add(offset)).ok_or(WriteError::TooLarge("file"))?;
    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|_| WriteError::TooLarge("file"))?;
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for &i in &order {
        out.extend_from_slice(tensors[i].data);
    }
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

/// Validates, serialises and atomically writes `spec` to `path`; returns the file size.
pub fn write_model(spec: &ModelSpec, path: &Path) -> Result<usize, WriteError> {
    let bytes = to_bytes(spec)?;
    write_atomic(path, &bytes).map_err(|source| WriteError::Io { path: path.to_path_buf(), source })?;
    Ok(bytes.len())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// flushed to disk and renamed over `path`. On any failure the temporary file is removed and
/// `path` is left as it was (absent or with its previous contents).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match fault_write_delay() {
        None => write_atomic_with(path, |f| f.write_all(bytes)),
        Some(delay) => write_atomic_with(path, |f| write_slowly(f, bytes, delay)),
    }
}

/// [`write_atomic`] with the content produced by `write` (which may fail; the target is then
/// untouched and the temporary file removed).
///
/// Steps: the content goes to a new temporary file `.<name>.factorvit-tmp.<pid>.<n>` (hidden,
/// in the same directory as `path`, created exclusively), which is flushed and `fsync`ed, then
/// renamed over `path`, then the directory is `fsync`ed so the rename survives a power loss.
/// A process killed at any point (even `kill -9`) therefore leaves `path` either with its
/// previous complete contents or absent — never truncated.
///
/// Stale temporary files: a killed process cannot remove its temporary file. Such a file keeps
/// its recognisable hidden name, which never ends in the output's extension, so it is never
/// mistaken for the output (and image-folder listings skip hidden files). After a successful
/// write, the temporary files of the same target left by processes that no longer exist are
/// removed (Linux, judged by `/proc/<pid>`; elsewhere they stay until deleted by hand). In a
/// directory shared between machines, a writer on another machine could lose its temporary
/// file to this clean-up; its write then fails with an error, and `path` is still never left
/// partial.
///
/// Testing hook: when the environment variable `FACTORVIT_FAULT_WRITE_DELAY_MS` holds a
/// positive integer `N`, [`write_atomic`] writes its bytes in [`FAULT_WRITE_CHUNKS`] chunks and
/// sleeps `N` ms after each, and this function sleeps another `N` ms between the `fsync` and the
/// rename. This makes the write window wide enough for a test to kill the process while the
/// temporary file is partially (or completely, but not yet renamed) written. Outside tests the
/// variable is not set and the hook costs one environment lookup.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = temp_prefix(file_name);
    tmp_name.push(format!("{}.{n}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    // Removes the temporary file on every exit path that does not complete the rename,
    // including a panic inside `write`.
    let mut guard = TempFile { path: &tmp, armed: true };
    write(&mut file)?;
    file.flush()?;
    file.sync_all()?;
    drop(file);
    if let Some(delay) = fault_write_delay() {
        std::thread::sleep(delay);
    }
    std::fs::rename(&tmp, path)?;
    guard.armed = false;
    // Persist the rename itself (best effort: not every platform can open directories).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    remove_stale_temp_files(&dir, file_name);
    Ok(())
}

/// Environment variable of the testing hook of [`write_atomic_with`].
pub const FAULT_WRITE_DELAY_ENV: &str = "FACTORVIT_FAULT_WRITE_DELAY_MS";

/// Chunks [`write_atomic`] writes its bytes in when the testing hook is on.
pub const FAULT_WRITE_CHUNKS: usize = 64;

/// The delay of the testing hook, when it is on.
fn fault_write_delay() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(FAULT_WRITE_DELAY_ENV).ok()?.trim().parse().ok()?;
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// Writes `bytes` in [`FAULT_WRITE_CHUNKS`] chunks, syncing the data and sleeping `delay`
/// after each so that other processes see the file grow (testing hook).
fn write_slowly(file: &mut File, bytes: &[u8], delay: std::time::Duration) -> io::Result<()> {
    for chunk in bytes.chunks(bytes.len().div_ceil(FAULT_WRITE_CHUNKS).max(1)) {
        file.write_all(chunk)?;
        file.flush()?;
        std::thread::sleep(delay);
    }
    Ok(())
}

/// `.<name>.factorvit-tmp.`: the start of every temporary file name for target `name`.
fn temp_prefix(file_name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".factorvit-tmp.");
    prefix
}

/// Removes the temporary files of target `file_name` in `dir` whose writing process no longer
/// exists (best effort; see [`write_atomic_with`]).
fn remove_stale_temp_files(dir: &Path, file_name: &std::ffi::OsStr) {
    let Some(prefix) = temp_prefix(file_name).to_str().map(str::to_owned) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix.as_str())) else {
            continue;
        };
        // `<pid>.<n>`, both decimal.
        let Some((pid, n)) = rest.split_once('.') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u64>()) else {
            continue;
        };
        if pid != own && process_is_gone(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `true` only when it is certain that no process `pid` exists on this machine.
fn process_is_gone(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        let proc = Path::new("/proc");
        proc.join("self").exists() && !proc.join(pid.to_string()).exists()
    } else {
        false
    }
}

/// A temporary file deleted on drop unless disarmed.
struct TempFile<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(self.path);
        }
    }
}
