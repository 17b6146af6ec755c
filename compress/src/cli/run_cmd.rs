//! `factorvit run`: classify image files with a model's own preprocessing and print the top-5
//! labels with their probabilities.

use std::path::PathBuf;

use factorvit::SessionOptions;
use factorvit_compress::data::{self, LoadOptions};
use factorvit_compress::job::configure_threads;

use super::model::open_model;
use super::values;
use super::{CliError, Context, Global};

pub const AFTER_HELP: &str = "\
Examples:
  factorvit run --model models/fmnist-deit-tiny examples/images/*.png
  factorvit run --model tiny-40.fvit --top 3 --json shirt.jpg

Each image (jpg or png) goes through the model's eval transform (resize the shorter side by
crop_pct with the model's interpolation, center crop, scale to [0, 1], normalise by mean/std;
channels converted to the model's) exactly as timm does, then one forward pass. Prints, per
image, the top classes with their softmax probabilities. Classifiers only.";

/// Arguments of `factorvit run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: .fvit file or checkpoint directory
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Image files (jpg, png)
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,
    /// Classes shown per image
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// One JSON object per image
    #[arg(long)]
    pub json: bool,
    /// Worker threads, 0..=64 (0 = all cores)
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = values::threads())]
    pub threads: usize,
}

/// Softmax of `logits` in f64.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest probabilities, largest first (ties: lower index first).
pub fn top_k(probs: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    if args.top == 0 {
        return Err(CliError::msg("--top must be at least 1"));
    }
    configure_threads(args.threads);
    let model = open_model(&args.model, global)?;
    let classes = model.config().num_classes;
    if classes == 0 {
        return Err(CliError::msg(format!(
            "{} is a backbone without a classifier; use `factorvit infer` for its features",
            args.model.display()
        )));
    }
    let labels = model.labels().to_vec();
    let mut session = model
        .session(SessionOptions { threads: args.threads, batch: 1, image_size: [0, 0], ..Default::default() })
        .context(|| "cannot create a session".to_string())?;
    for path in &args.images {
        if !data::is_image_file(path) {
            return Err(CliError::msg(format!("{}: not a jpg or png file", path.display())));
        }
        if path.is_dir() {
            return Err(CliError::msg(format!("{}: is a directory, not an image file", path.display())));
        }
        let image = data::load_dataset(path, model.preprocess(), &LoadOptions::default())
            .context(|| format!("cannot read image {}", path.display()))?;
        let outputs = session.run(&image.pixel_values).context(|| format!("cannot run {}", path.display()))?;
        let logits = outputs.logits.ok_or_else(|| CliError::msg("the model produced no logits"))?;
        let probs = softmax(logits);
        let best = top_k(&probs, args.top.min(classes));
        let name = |i: usize| labels.get(i).cloned().unwrap_or_else(|| format!("class {i}"));
        if args.json {
            let top: Vec<serde_json::Value> = best
                .iter()
                .map(|&i| serde_json::json!({ "class": i, "label": name(i), "probability": probs[i] }))
                .collect();
            println!("{}", serde_json::json!({ "image": path.display().to_string(), "top": top }));
        } else {
            println!("{}", path.display());
            for &i in &best {
                println!("  {:6.2} %  {} ({i})", 100.0 * probs[i], name(i));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, 2.0, -1000.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(top_k(&p, 3), vec![1, 2, 0]);
        assert!(p[3] < 1e-300);
        // e^1 / (e^1 + e^3 + e^2)
        let e = [1f64.exp(), 3f64.exp(), 2f64.exp()];
        assert!((p[0] - e[0] / e.iter().sum::<f64>()).abs() < 1e-12);
    }

    #[test]
    fn top_k_breaks_ties_by_index() {
        assert_eq!(top_k(&[0.25, 0.5, 0.25], 3), vec![1, 0, 2]);
        assert_eq!(top_k(&[0.5, 0.5], 5), vec![0, 1]);
    }
}
