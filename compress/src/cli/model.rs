//! Loading models for the subcommands: checkpoint directories (imported and converted in
//! memory) and factorvit files.

use std::path::Path;

use factorvit::safetensors::DType;
use factorvit_compress::checkpoint::ModelSpec;
use factorvit_compress::job;

use super::{CliError, Global};

/// Storage dtype choices for float tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// 32-bit IEEE float
    F32,
    /// 16-bit IEEE float (round to nearest even; fails if a value exceeds 65504)
    F16,
    /// bfloat16 (round to nearest even)
    Bf16,
    /// int8 block-linear weights with f32 per-channel scales; every other float tensor f16
    Int8,
}

impl DtypeArg {
    /// The safetensors dtype.
    pub fn dtype(self) -> DType {
        match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::Int8 => DType::I8,
        }
    }
}

/// Imports a checkpoint directory or reads a factorvit file into a spec, printing import
/// warnings.
pub fn load_spec(path: &Path, global: &Global) -> Result<ModelSpec, CliError> {
    Ok(job::load_spec(path, &mut global.progress())?)
}

/// Opens a model for inference: a factorvit file is memory-mapped; a checkpoint directory is
/// imported and converted in memory.
pub fn open_model(path: &Path, global: &Global) -> Result<factorvit::Model<'static>, CliError> {
    Ok(job::open_model(path, &mut global.progress())?)
}
