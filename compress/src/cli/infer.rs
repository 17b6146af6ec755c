//! `factorvit infer`: run a model on a `pixel_values` tensor and save the outputs.

use std::path::PathBuf;
use std::time::Instant;

use factorvit::safetensors::DType;
use factorvit::session::MAX_THREADS;
use factorvit::{Head, SessionOptions};
use factorvit_compress::checkpoint::{read_safetensors, StoredTensor};
use factorvit_compress::writer::{self, TensorRef};

use super::model::open_model;
use super::{CliError, Context, Global};

pub const AFTER_HELP: &str = "\
Input: a safetensors file with `pixel_values` [B, C, H, W] (F32, F16 or BF16), already
normalised with the model's mean/std, every value finite. H and W may differ from the trained
size (position embeddings are interpolated); they must be multiples of the patch size (an error
otherwise).
Output: a safetensors file (F32) with `logits` [B, K] for classifiers, or
`last_hidden_state` [B, T, D] and `pooler_output` [B, D] for backbones.

Examples:
  factorvit infer --model deit-tiny.fvit --input batch.safetensors --output logits.safetensors
  factorvit infer --model ./dinov2-small --input x.safetensors --output feats.safetensors --threads 2

Exit status: 0 success, 1 failure, 2 usage error, 101 internal error.";

/// Name of the input tensor.
const INPUT_TENSOR: &str = "pixel_values";

/// Arguments of `factorvit infer`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: a .fvit file, or a checkpoint directory (converted in memory)
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Input safetensors file holding `pixel_values` [B, C, H, W]
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Output safetensors file
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Worker threads (0 = one per core)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=MAX_THREADS as i64))]
    threads: u16,
    /// Images per forward pass
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch_size: u32,
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    let model = open_model(&args.model, global)?;
    let cfg = model.config().clone();

    let input = read_safetensors(&args.input).context(|| format!("cannot read input {}", args.input.display()))?;
    let pv = input.tensors.get(INPUT_TENSOR).ok_or_else(|| {
        let names: Vec<&str> = input.tensors.keys().map(String::as_str).collect();
        CliError::msg(format!(
            "input {} has no `{INPUT_TENSOR}` tensor (it has: {})",
            args.input.display(),
            if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
        ))
    })?;
    let (b, c, h, w) = match *pv.shape.as_slice() {
        [b, c, h, w] if b > 0 => (b, c, h, w),
        _ => {
            return Err(CliError::msg(format!(
                "input `{INPUT_TENSOR}` has shape {:?}, expected [B, C, H, W] with B >= 1",
                pv.shape
            )))
        }
    };
    if c != cfg.in_chans {
        return Err(CliError::msg(format!(
            "input `{INPUT_TENSOR}` has {c} channels but the model takes {}",
            cfg.in_chans
        )));
    }
    let p = cfg.patch_size;
    if h < p || w < p || h % p != 0 || w % p != 0 {
        return Err(CliError::msg(format!(
            "input `{INPUT_TENSOR}` is {h}×{w}: height and width must be multiples of the model's patch size {p}"
        )));
    }
    if !matches!(pv.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(CliError::msg(format!(
            "input `{INPUT_TENSOR}` in {} has dtype {}, expected F32, F16 or BF16",
            args.input.display(),
            pv.dtype.name()
        )));
    }
    let pixels = pv.to_f32().context(|| format!("input `{INPUT_TENSOR}` in {}", args.input.display()))?;
    let per_image = c * h * w;
    if let Some(i) = pixels.iter().position(|v| !v.is_finite()) {
        return Err(CliError::msg(format!(
            "input `{INPUT_TENSOR}` in {}: image {} holds a non-finite value ({}); pixel values must be finite",
            args.input.display(),
            i / per_image,
            pixels[i]
        )));
    }

    let batch = (args.batch_size as usize).min(b);
    let options =
        SessionOptions { threads: usize::from(args.threads), batch, image_size: [h, w], ..Default::default() };
    let mut session =
        model.session(options).context(|| format!("cannot run {} on {h}x{w} inputs", args.model.display()))?;
    let classifier = cfg.head != Head::None;
    let (mut logits, mut hidden, mut pooled) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tokens, mut dim, mut classes) = (0, 0, 0);
    let start = Instant::now();
    for chunk in pixels.chunks(batch * per_image) {
        let out = session.run(chunk).context(|| "inference failed".to_string())?;
        (tokens, dim, classes) = (out.tokens, out.dim, out.num_classes);
        if classifier {
            let l = out.logits.ok_or_else(|| CliError::msg("the runtime returned no logits for a classifier"))?;
            logits.extend_from_slice(l);
        } else {
            hidden.extend_from_slice(out.last_hidden_state);
            pooled.extend_from_slice(out.pooler_output);
        }
    }
    let elapsed = start.elapsed();

    let outputs: Vec<(&str, StoredTensor)> = if classifier {
        vec![("logits", f32_tensor(vec![b, classes], &logits)?)]
    } else {
        vec![
            ("last_hidden_state", f32_tensor(vec![b, tokens, dim], &hidden)?),
            ("pooler_output", f32_tensor(vec![b, dim], &pooled)?),
        ]
    };
    let refs: Vec<TensorRef<'_>> =
        outputs.iter().map(|(name, t)| TensorRef { name, dtype: t.dtype, shape: &t.shape, data: &t.data }).collect();
    let metadata =
        vec![("format".to_string(), "pt".to_string()), ("producer".to_string(), writer::PRODUCER.to_string())];
    let bytes = writer::safetensors_bytes(&refs, &metadata).context(|| "cannot serialise the outputs".to_string())?;
    writer::write_atomic(&args.output, &bytes).context(|| format!("cannot write {}", args.output.display()))?;
    let shapes: Vec<String> = outputs.iter().map(|(n, t)| format!("{n} {:?}", t.shape)).collect();
    global.say(&format!(
        "wrote {}: {} ({b} image(s) of {h}x{w}, {:.2} ms/image, {} thread(s))",
        args.output.display(),
        shapes.join(", "),
        elapsed.as_secs_f64() * 1e3 / b as f64,
        session.threads()
    ));
    Ok(())
}

fn f32_tensor(shape: Vec<usize>, values: &[f32]) -> Result<StoredTensor, CliError> {
    StoredTensor::from_f32(shape, values).context(|| "the runtime returned outputs of an unexpected size".to_string())
}
