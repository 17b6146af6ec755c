//! Loading models for the subcommands: checkpoint directories (imported and converted in
//! memory) and factorvit files.

use std::path::Path;

use factorvit::safetensors::DType;
use factorvit_compress::checkpoint::{self, ModelSpec};
use factorvit_compress::writer;

use super::{CliError, Context, Global};

/// Storage dtype choices for float tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// 32-bit IEEE float
    F32,
    /// 16-bit IEEE float (round to nearest even; fails if a value exceeds 65504)
    F16,
    /// bfloat16 (round to nearest even)
    Bf16,
}

impl DtypeArg {
    /// The safetensors dtype.
    pub fn dtype(self) -> DType {
        match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::BF16,
        }
    }
}

/// Imports a checkpoint directory or reads a factorvit file into a spec, printing import
/// warnings.
pub fn load_spec(path: &Path, global: &Global) -> Result<ModelSpec, CliError> {
    let spec = if path.is_dir() {
        checkpoint::load_checkpoint(path).context(|| format!("cannot import checkpoint {}", path.display()))?
    } else {
        checkpoint::read_fvit(path).context(|| format!("cannot read model {}", path.display()))?
    };
    for w in &spec.warnings {
        global.warn(w);
    }
    Ok(spec)
}

/// Opens a model for inference: a factorvit file is memory-mapped; a checkpoint directory is
/// imported and converted in memory.
pub fn open_model(path: &Path, global: &Global) -> Result<factorvit::Model<'static>, CliError> {
    if path.is_dir() {
        let spec = load_spec(path, global)?;
        let bytes = writer::to_bytes(&spec).context(|| format!("cannot convert checkpoint {}", path.display()))?;
        factorvit::Model::from_vec(bytes)
            .context(|| format!("the runtime rejects the converted checkpoint {}", path.display()))
    } else {
        factorvit::Model::open(path).context(|| format!("cannot load model {}", path.display()))
    }
}

/// `1234567` -> `1,234,567`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Human-readable byte size.
pub fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
