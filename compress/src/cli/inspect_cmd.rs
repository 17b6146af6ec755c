//! `factorvit inspect`: per-layer table of a model file.

use std::path::PathBuf;

use factorvit::format::schema;
use factorvit_compress::report::units::{human_bytes, thousands};

use super::model::open_model;
use super::{CliError, Global};

pub const AFTER_HELP: &str = "\
Examples:
  factorvit inspect tiny-40.fvit
  factorvit inspect models/fmnist-deit-tiny      # a checkpoint directory, converted in memory

Prints every linear layer (name, kind, shape, rank, nnz, dtype, parameters, bytes), the totals,
the file size and the weight bytes one inference reads.";

/// Arguments of `factorvit inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .fvit file or checkpoint directory
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    let model = open_model(&args.path, global)?;
    let c = model.config();
    let mut out = format!(
        "{} ({}): dim {}, depth {}, heads {}, mlp {}, patch {}, input {:?}\n",
        args.path.display(),
        c.architecture,
        c.embed_dim,
        c.depth,
        c.num_heads,
        c.mlp_hidden,
        c.patch_size,
        model.preprocess().input_size
    );
    out.push_str(&format!(
        "{:<22} {:<16} {:>11} {:>5} {:>7} {:>5} {:>10} {:>10}\n",
        "layer", "kind", "shape", "rank", "nnz", "dtype", "params", "bytes"
    ));
    let (mut dense, mut params, mut bytes) = (0usize, 0usize, 0usize);
    for l in model.linears().chain(model.linear(schema::PATCH_EMBED)) {
        let i = l.info();
        dense += i.out_features * i.in_features;
        params += i.params;
        bytes += i.weight_bytes;
        out.push_str(&format!(
            "{:<22} {:<16} {:>11} {:>5} {:>7} {:>5} {:>10} {:>10}\n",
            i.name,
            i.kind.name(),
            format!("{}x{}", i.out_features, i.in_features),
            i.rank,
            i.nnz,
            i.dtype.name(),
            thousands(i.params),
            thousands(i.weight_bytes)
        ));
    }
    let file = std::fs::metadata(&args.path).ok().filter(|m| m.is_file()).map(|m| m.len());
    out.push_str(&format!(
        "linear layers: {} parameters ({:.1}% of dense {}), {}\n",
        thousands(params),
        100.0 * params as f64 / dense.max(1) as f64,
        thousands(dense),
        human_bytes(bytes as u64)
    ));
    out.push_str(&format!(
        "model: {} parameters ({} in block linears); weight bytes read per inference {}; file {}\n",
        thousands(model.params()),
        thousands(model.block_linear_params()),
        human_bytes(model.weight_bytes() as u64),
        file.map_or_else(|| "-".to_string(), human_bytes)
    ));
    out.push_str(&match model.checksum_status() {
        factorvit::ChecksumStatus::Verified { tensors } => {
            format!("integrity: crc32 of {tensors} tensors and the metadata verified\n")
        }
        factorvit::ChecksumStatus::Absent => "integrity: the file carries no checksums (not verifiable)\n".to_string(),
        factorvit::ChecksumStatus::Skipped => "integrity: not checked\n".to_string(),
    });
    global.say(out.trim_end());
    Ok(())
}
