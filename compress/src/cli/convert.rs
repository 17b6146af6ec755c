//! `factorvit convert`: checkpoint directory (or factorvit file) -> factorvit file.

use std::path::PathBuf;

use factorvit_compress::method::quantise::{self, QuantOptions};
use factorvit_compress::report::units::{human_bytes, thousands};
use factorvit_compress::{job, writer};

use super::model::{load_spec, DtypeArg};
use super::{CliError, Context, Global};

pub const AFTER_HELP: &str = "\
Examples:
  factorvit convert --model ./deit_tiny_patch16_224 -o deit-tiny.fvit
  factorvit convert --model ./dinov2-small -o dinov2-small-f16.fvit --dtype f16
  factorvit convert --model big.fvit -o big-bf16.fvit --dtype bf16
  factorvit convert --model ./dinov2-small -o dinov2-small-int8.fvit --dtype int8

The directory is what timm (save_for_hf / hub) or transformers (save_pretrained) writes:
config.json plus model.safetensors, or shards listed by model.safetensors.index.json.
The output is validated by the runtime before it is written, and written atomically.

Exit status: 0 success, 1 failure, 2 usage error, 101 internal error.";

/// Arguments of `factorvit convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint directory (timm hub or transformers layout), or a .fvit file to re-encode
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Output file (conventionally *.fvit)
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Store every float tensor in this dtype [default: keep the source dtypes]; int8: the block
    /// linears' weights as int8 with per-row f32 scales (weight-error clip search), the rest f16
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Input size (square) stored in the output's preprocessing, a multiple of the patch size up
    /// to 8192 (the runtime interpolates the position table) [default: the source's]
    #[arg(long, value_name = "N")]
    image_size: Option<usize>,
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    let mut spec = load_spec(&args.model, global)?;
    if let Some(size) = args.image_size {
        let patch = spec.config.patch_size;
        if !job::image_side_fits(size, patch) {
            return Err(CliError::msg(format!(
                "--image-size {size} is not a multiple of the patch size {patch} between {patch} and 8192"
            )));
        }
        spec.preprocess.input_size = [spec.preprocess.input_size[0], size, size];
    }
    if let Some(d) = args.dtype {
        if d == DtypeArg::Int8 {
            // No calibration data here: each row's clip minimises its weight error.
            quantise::quantise_blocks(&mut spec, &[], &QuantOptions::default())
                .context(|| format!("cannot quantise {} to int8", args.model.display()))?;
        }
        let floats = job::float_dtype(d.dtype());
        spec.cast_floats(floats).context(|| format!("cannot cast {} to {}", args.model.display(), floats.name()))?;
    }
    let bytes = writer::to_bytes(&spec).context(|| format!("cannot convert {}", args.model.display()))?;
    // Never write a file the runtime would reject.
    let model = factorvit::Model::from_bytes(&bytes).context(|| {
        format!("the runtime rejects the converted model (a bug in the converter): {}", args.model.display())
    })?;
    let params = model.params();
    drop(model);
    writer::write_atomic(&args.output, &bytes).context(|| format!("cannot write {}", args.output.display()))?;
    let dtypes: Vec<String> = spec.dtype_summary().iter().map(|(d, _)| d.name().to_string()).collect();
    global.say(&format!(
        "wrote {}: {} ({} parameters, {}, {}) from {}",
        args.output.display(),
        spec.config.architecture,
        thousands(params),
        dtypes.join("+"),
        human_bytes(bytes.len() as u64),
        spec.source
    ));
    Ok(())
}
