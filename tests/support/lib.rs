//! Shared helpers of the end-to-end tests and benchmarks: locating test data, reading and
//! writing f32 tensors in safetensors files, comparing outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use factorvit::safetensors::{Container, DType};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/<name>` (copies of the reference outputs of timm and transformers).
pub fn fixture_dir(name: &str) -> PathBuf {
    repo_root().join("tests").join("fixtures").join(name)
}

/// The six model fixtures.
pub const MODEL_FIXTURES: [&str; 6] = [
    "timm-vit-micro",
    "timm-deit-distilled-micro",
    "timm-vit-avgpool-layerscale-micro",
    "hf-vit-micro",
    "hf-deit-distilled-micro",
    "hf-dinov2-micro",
];

/// Reference data outside the repository (`../shared`, read-only), when present. Tests that
/// need the large models look here and say so when it is missing.
pub fn shared_dir() -> Option<PathBuf> {
    let p = repo_root().join("..").join("shared");
    p.is_dir().then_some(p)
}

/// A bundled or shared model directory: `models/<name>` in the repo, else `../shared/models/<name>`.
pub fn model_dir(name: &str) -> Option<PathBuf> {
    let local = repo_root().join("models").join(name);
    if local.is_dir() {
        return Some(local);
    }
    shared_dir().map(|s| s.join("models").join(name)).filter(|p| p.is_dir())
}

/// A tensor read as f32 with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<f32>,
}

/// Reads every float tensor of a safetensors file as f32 (F16, BF16 and F64 are converted).
pub fn read_tensors(path: &Path) -> BTreeMap<String, F32Tensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let c = Container::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for t in c.tensors() {
        let raw = &bytes[t.start..t.end];
        let data: Vec<f32> = match t.dtype {
            DType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            _ => continue,
        };
        out.insert(t.name.clone(), F32Tensor { shape: t.shape.clone(), data });
    }
    out
}

/// Reads one float tensor.
pub fn read_tensor(path: &Path, name: &str) -> F32Tensor {
    read_tensors(path).remove(name).unwrap_or_else(|| panic!("{}: no tensor `{name}`", path.display()))
}

/// Writes f32 tensors as a safetensors file.
pub fn write_f32_tensors(path: &Path, tensors: &[(&str, &[usize], &[f32])]) {
    let mut header = String::from("{");
    let mut offset = 0usize;
    for (i, (name, shape, data)) in tensors.iter().enumerate() {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "{name}");
        let end = offset + data.len() * 4;
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{offset},{end}]}}"
        ));
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for (_, _, data) in tensors {
        bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    }
    std::fs::write(path, bytes).unwrap();
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Index of the largest value of each row of a `[rows, cols]` matrix.
pub fn argmax_rows(x: &[f32], cols: usize) -> Vec<usize> {
    x.chunks(cols)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
                .0
        })
        .collect()
}

/// A fresh temporary directory under the target dir (removed by the caller if it wants).
pub fn temp_dir(tag: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("factorvit-{tag}-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A safetensors file taken apart, for tests that build or corrupt files on purpose.
#[derive(Debug, Clone, Default)]
pub struct RawFile {
    /// `__metadata__` entries.
    pub metadata: Vec<(String, String)>,
    /// `(name, dtype name, shape, little-endian bytes)` in file order.
    pub tensors: Vec<(String, String, Vec<usize>, Vec<u8>)>,
}

impl RawFile {
    /// Parses a safetensors file.
    pub fn parse(bytes: &[u8]) -> RawFile {
        let c = Container::parse(bytes).expect("valid safetensors");
        let mut tensors: Vec<_> = c
            .tensors()
            .iter()
            .map(|t| {
                (t.name.clone(), t.dtype.name().to_string(), t.shape.clone(), bytes[t.start..t.end].to_vec(), t.start)
            })
            .collect();
        tensors.sort_by_key(|t| t.4);
        RawFile {
            metadata: c.metadata.clone(),
            tensors: tensors.into_iter().map(|(n, d, s, b, _)| (n, d, s, b)).collect(),
        }
    }

    /// Serialises (header padded to 8 bytes, tensors in order, no alignment padding).
    pub fn to_bytes(&self) -> Vec<u8> {
        let esc = |s: &str| factorvit::json::Value::from(s).to_json();
        let mut header = String::from("{\"__metadata__\":{");
        for (i, (k, v)) in self.metadata.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&format!("{}:{}", esc(k), esc(v)));
        }
        header.push('}');
        let mut offset = 0;
        for (name, dtype, shape, data) in &self.tensors {
            let end = offset + data.len();
            header.push_str(&format!(
                ",{}:{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{offset},{end}]}}",
                esc(name)
            ));
            offset = end;
        }
        header.push('}');
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        for t in &self.tensors {
            out.extend_from_slice(&t.3);
        }
        out
    }

    /// The tensor called `name`.
    pub fn tensor_mut(&mut self, name: &str) -> &mut (String, String, Vec<usize>, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// Removes the tensor called `name`.
    pub fn remove(&mut self, name: &str) {
        self.tensors.retain(|t| t.0 != name);
    }

    /// Sets a metadata value.
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value.to_string(),
            None => self.metadata.push((key.to_string(), value.to_string())),
        }
    }
}

/// Runs `tests/python/write_fvit.py` (the FORMAT.md example) into `out`; `None` when python3
/// with numpy + safetensors is unavailable (the caller prints a notice).
pub fn python_example_model(out: &Path, tiny: bool) -> Option<()> {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(repo_root().join("tests/python/write_fvit.py")).arg(out);
    if tiny {
        cmd.arg("--tiny");
    }
    let status = cmd.status().ok()?;
    status.success().then_some(())
}
