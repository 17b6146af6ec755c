//! Helpers shared by the checkpoint, writer and CLI tests: fixture paths, temporary
//! directories, and building (possibly corrupted) checkpoint directories.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use factorvit::safetensors::DType;
use factorvit_compress::checkpoint::{read_safetensors, StoredTensor};
use factorvit_compress::writer::{safetensors_bytes, TensorRef};

/// The six model fixtures under `tests/fixtures` (copies of `shared/fixtures`).
pub const MODEL_FIXTURES: [&str; 6] = [
    "timm-vit-micro",
    "timm-deit-distilled-micro",
    "timm-vit-avgpool-layerscale-micro",
    "hf-vit-micro",
    "hf-deit-distilled-micro",
    "hf-dinov2-micro",
];

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("compress/ has a parent").to_path_buf()
}

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests").join("fixtures").join(name)
}

/// `../shared/<rel>` next to the repository, if present (read-only reference data that is not
/// copied into the repository: the large models). Prints a notice when absent.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let p = repo_root().join("..").join("shared").join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("notice: {} is not available; skipping this check", p.display());
        None
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("fvit-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Names of the entries in the directory.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Restore write permission in case a test made it read-only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a fixture into a fresh temporary directory (to corrupt it).
pub fn copy_fixture(name: &str) -> TempDir {
    let tmp = TempDir::new(name);
    for entry in std::fs::read_dir(fixture(name)).expect("fixture exists") {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.join(&entry.file_name().to_string_lossy())).unwrap();
    }
    tmp
}

/// The tensors of a safetensors file.
pub fn tensors_of(path: &Path) -> BTreeMap<String, StoredTensor> {
    read_safetensors(path).unwrap_or_else(|e| panic!("{e}")).tensors
}

/// Writes tensors as a safetensors file.
pub fn write_tensors(path: &Path, tensors: &BTreeMap<String, StoredTensor>) {
    let refs: Vec<TensorRef<'_>> =
        tensors.iter().map(|(n, t)| TensorRef { name: n, dtype: t.dtype, shape: &t.shape, data: &t.data }).collect();
    let bytes = safetensors_bytes(&refs, &[("format".to_string(), "pt".to_string())]).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites `dir/model.safetensors` through `edit`.
pub fn edit_weights(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, StoredTensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = tensors_of(&path);
    edit(&mut t);
    write_tensors(&path, &t);
}

/// Rewrites `dir/config.json` through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// A deterministic pseudo-random F16 tensor (values in about [-1, 1]).
pub fn f16_tensor(shape: &[usize], seed: u64) -> StoredTensor {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    StoredTensor::from_f32_as(DType::F16, shape.to_vec(), &values).unwrap()
}

/// Geometry of a synthetic timm ViT checkpoint.
#[derive(Debug, Clone)]
pub struct SynthVit {
    pub dim: usize,
    pub depth: usize,
    pub mlp: usize,
    pub patch: usize,
    pub in_chans: usize,
    pub grid: usize,
    pub classes: usize,
    pub class_token: bool,
    pub dist_token: bool,
    pub layer_scale: bool,
    /// Position rows for the prefix tokens (timm `no_embed_class=False`).
    pub embed_class: bool,
    pub qkv_bias: bool,
}

impl SynthVit {
    pub fn micro() -> SynthVit {
        SynthVit {
            dim: 64,
            depth: 2,
            mlp: 256,
            patch: 8,
            in_chans: 3,
            grid: 4,
            classes: 10,
            class_token: true,
            dist_token: false,
            layer_scale: false,
            embed_class: true,
            qkv_bias: true,
        }
    }

    /// timm-named tensors of this geometry (F16, pseudo-random).
    pub fn tensors(&self) -> BTreeMap<String, StoredTensor> {
        let (d, m) = (self.dim, self.mlp);
        let mut t = BTreeMap::new();
        let mut seed = 1u64;
        let mut put = |name: String, shape: &[usize]| {
            seed += 1;
            t.insert(name, f16_tensor(shape, seed));
        };
        put("patch_embed.proj.weight".into(), &[d, self.in_chans, self.patch, self.patch]);
        put("patch_embed.proj.bias".into(), &[d]);
        let prefix = usize::from(self.class_token) + usize::from(self.dist_token);
        if self.class_token {
            put("cls_token".into(), &[1, 1, d]);
        }
        if self.dist_token {
            put("dist_token".into(), &[1, 1, d]);
        }
        let rows = self.grid * self.grid + if self.embed_class { prefix } else { 0 };
        put("pos_embed".into(), &[1, rows, d]);
        for i in 0..self.depth {
            let b = format!("blocks.{i}");
            for n in ["norm1", "norm2"] {
                put(format!("{b}.{n}.weight"), &[d]);
                put(format!("{b}.{n}.bias"), &[d]);
            }
            put(format!("{b}.attn.qkv.weight"), &[3 * d, d]);
            if self.qkv_bias {
                put(format!("{b}.attn.qkv.bias"), &[3 * d]);
            }
            put(format!("{b}.attn.proj.weight"), &[d, d]);
            put(format!("{b}.attn.proj.bias"), &[d]);
            put(format!("{b}.mlp.fc1.weight"), &[m, d]);
            put(format!("{b}.mlp.fc1.bias"), &[m]);
            put(format!("{b}.mlp.fc2.weight"), &[d, m]);
            put(format!("{b}.mlp.fc2.bias"), &[d]);
            if self.layer_scale {
                put(format!("{b}.ls1.gamma"), &[d]);
                put(format!("{b}.ls2.gamma"), &[d]);
            }
        }
        put("norm.weight".into(), &[d]);
        put("norm.bias".into(), &[d]);
        if self.classes > 0 {
            put("head.weight".into(), &[self.classes, d]);
            put("head.bias".into(), &[self.classes]);
            if self.dist_token {
                put("head_dist.weight".into(), &[self.classes, d]);
                put("head_dist.bias".into(), &[self.classes]);
            }
        }
        t
    }

    /// Writes a timm hub checkpoint directory with `config` as config.json.
    pub fn write(&self, dir: &Path, config: serde_json::Value) {
        write_tensors(&dir.join("model.safetensors"), &self.tensors());
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }
}
