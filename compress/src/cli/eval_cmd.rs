//! `factorvit eval`: accuracy on labelled images and fidelity against a reference model.

use std::path::PathBuf;

use factorvit_compress::data::LoadOptions;
use factorvit_compress::job::configure_threads;
use factorvit_compress::method::eval::{self, Metrics};

use super::compress_cmd::SplitArg;
use super::model::open_model;
use super::values;
use super::{CliError, Context, Global};

pub const AFTER_HELP: &str = "\
Examples:
  factorvit eval --model tiny-40.fvit --data /usr/share/datasets/fashion-mnist --reference fmnist-deit-tiny
  factorvit eval --model dinov2-50.fvit --data input.safetensors --reference dinov2-small --json

DATA: an image folder with one subfolder per class (class order from the model's labels, else
sorted folder names), a safetensors file with pixel_values (+ labels), or a Fashion-MNIST idx
folder (--split). Labels must be class indices of the model (an error otherwise), pixel_values
finite. The images are held in memory as f32 (N x C x H x W x 4 bytes, at most 16 GiB; use
--limit for more). With --reference: top-1 agreement and mean KL(reference || model) for
classifiers, mean cosine similarity of last_hidden_state tokens and of pooler_output for
backbones, and for backbones on at least 3 images nearest-neighbour retrieval agreement: the
fraction of images whose nearest other image by cosine of pooler_output is the same with the
model's features as with the reference's (knn_top1_agreement), and the mean overlap of the 5
nearest (knn_top5_overlap, at least 7 images). With labels (for a backbone: groups, e.g. the
crops of one photo) the same with neighbours restricted to images of another label
(knn_top1_agreement_other_labels, knn_top5_overlap_other_labels), and the fraction whose
nearest image of another label has the same label with both (knn_top1_label_agreement_other_labels).";

/// Arguments of `factorvit eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: .fvit file or checkpoint directory (repeat to evaluate several models on the same
    /// data; the reference runs once)
    #[arg(long, value_name = "PATH", required = true)]
    pub model: Vec<PathBuf>,
    /// Evaluation images
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// Reference model (the dense original) for agreement / KL / cosine
    #[arg(long, value_name = "PATH")]
    pub reference: Option<PathBuf>,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// Evaluate at most N images (the first N; at least 1)
    #[arg(long, value_name = "N", value_parser = values::count_at_least(1))]
    pub limit: Option<usize>,
    /// Split of an idx folder
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,
    /// Images per batch, 1..=4096
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = values::batch())]
    pub batch: usize,
    /// Worker threads, 0..=64 (0 = all cores)
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = values::threads())]
    pub threads: usize,
}

/// Evaluates every `args.model` (and the reference once) and returns their metrics.
pub fn evaluate(args: &Args, global: &Global) -> Result<Vec<Metrics>, CliError> {
    configure_threads(args.threads);
    let model = open_model(&args.model[0], global)?;
    let labels = (!model.labels().is_empty()).then(|| model.labels().to_vec());
    let data = factorvit_compress::data::load_dataset(
        &args.data,
        model.preprocess(),
        &LoadOptions { split: args.split.split(), limit: args.limit, class_names: labels, ..LoadOptions::default() },
    )
    .context(|| format!("cannot load evaluation data {}", args.data.display()))?;
    let size = [data.h, data.w];
    let backbone = model.config().num_classes == 0;
    // Labels beyond the classifier's classes would silently count as wrong answers.
    let classes = model.config().num_classes;
    if let (Some(labels), false) = (&data.labels, backbone) {
        if let Some((i, l)) = eval::first_bad_label(labels, classes) {
            return Err(CliError::msg(format!(
                "evaluation data {}: label {l} of sample {i} is not a class of the model (it has {classes} \
                 classes, labels 0..={})",
                args.data.display(),
                classes - 1
            )));
        }
    }
    let run = |m: &factorvit::Model<'_>, what: &str| -> Result<eval::ModelOutputs, CliError> {
        let pb = super::progress::bar(global, data.n, what);
        let out = eval::run_model(
            m,
            &data.pixel_values,
            data.n,
            size,
            eval::RunOptions { batch: args.batch, threads: args.threads, keep_tokens: backbone },
            |k| pb.inc(k as u64),
        )
        .map_err(|e| CliError::new(format!("cannot run {what}"), e));
        pb.finish_and_clear();
        out
    };
    let reference = match &args.reference {
        Some(p) => {
            let r = open_model(p, global)?;
            if !eval::same_outputs(&r, &model) {
                return Err(CliError::msg(format!("the reference {} does not have the model's outputs", p.display())));
            }
            Some(run(&r, "reference")?)
        }
        None => None,
    };
    let mut all = Vec::with_capacity(args.model.len());
    for (i, path) in args.model.iter().enumerate() {
        let m = if i == 0 { None } else { Some(open_model(path, global)?) };
        let m_ref = m.as_ref().unwrap_or(&model);
        if !eval::same_outputs(m_ref, &model) {
            return Err(CliError::msg(format!(
                "{} does not have the outputs of {}",
                path.display(),
                args.model[0].display()
            )));
        }
        let outputs = run(m_ref, &path.display().to_string())?;
        all.push(
            eval::metrics(&outputs, data.labels.as_deref(), reference.as_ref())
                .map_err(|e| CliError::new("cannot compute metrics", e))?,
        );
    }
    Ok(all)
}

pub fn run(args: &Args, global: &Global) -> Result<(), CliError> {
    for (path, m) in args.model.iter().zip(evaluate(args, global)?) {
        print_metrics(path, &m, args.json, args.model.len() > 1);
    }
    Ok(())
}

fn print_metrics(path: &std::path::Path, m: &Metrics, json: bool, name_it: bool) {
    if json {
        let mut v = serde_json::to_value(m).unwrap_or(serde_json::Value::Null);
        if let (true, Some(o)) = (name_it, v.as_object_mut()) {
            o.insert("model".into(), path.display().to_string().into());
        }
        println!("{v}");
        return;
    }
    let pct = |v: Option<f64>| v.map(|x| format!("{:.2}%", 100.0 * x));
    let mut parts = vec![format!("n={}", m.n)];
    if let Some(v) = pct(m.top1) {
        parts.push(format!("top-1 {v}"));
    }
    if let Some(v) = pct(m.top5) {
        parts.push(format!("top-5 {v}"));
    }
    if let Some(v) = pct(m.agreement) {
        parts.push(format!("agreement {v}"));
    }
    if let Some(v) = m.kl {
        parts.push(format!("KL {v:.3e}"));
    }
    if let Some(v) = m.token_cosine {
        parts.push(format!("token cosine {v:.4}"));
    }
    if let Some(v) = m.pooled_cosine {
        parts.push(format!("pooled cosine {v:.4}"));
    }
    for (name, value) in [
        ("kNN top-1 agreement", m.knn_top1_agreement),
        ("kNN top-5 overlap", m.knn_top5_overlap),
        ("other-label kNN top-1 agreement", m.knn_top1_agreement_other_labels),
        ("other-label kNN top-5 overlap", m.knn_top5_overlap_other_labels),
        ("other-label kNN top-1 label agreement", m.knn_top1_label_agreement_other_labels),
    ] {
        if let Some(v) = pct(value) {
            parts.push(format!("{name} {v}"));
        }
    }
    if name_it {
        parts.insert(0, path.display().to_string());
    }
    println!("{}", parts.join("  "));
}
