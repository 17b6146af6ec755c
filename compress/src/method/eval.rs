//! Accuracy and fidelity metrics: top-1 / top-5 against labels, top-1 agreement and KL against a
//! reference model's logits, cosine similarity of output tokens and pooled features.

use serde::Serialize;

use factorvit::{Model, SessionOptions};

use super::MethodError;

/// `log Σ exp(x)`, stable.
fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// `KL(softmax(p) ‖ softmax(q))` for logits `p`, `q`.
pub fn kl_logits(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_sum_exp(p), log_sum_exp(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let la = a as f64 - lp;
            let lb = b as f64 - lq;
            la.exp() * (la - lb)
        })
        .sum::<f64>()
        .max(0.0)
}

/// Cosine similarity of two vectors (1 for two zero vectors).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else {
        ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
    }
}

/// Index of the largest entry (first on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Whether `label` is among the `k` largest logits (ties broken by index, as a stable sort).
pub fn in_top_k(x: &[f32], label: usize, k: usize) -> bool {
    let Some(&v) = x.get(label) else { return false };
    let higher = x.iter().enumerate().filter(|&(i, &o)| o > v || (o == v && i < label)).count();
    higher < k
}

/// Outputs of a model over a dataset.
#[derive(Debug, Clone, Default)]
pub struct ModelOutputs {
    /// `[n, classes]` (empty for backbones).
    pub logits: Vec<f32>,
    /// `[n, tokens, dim]`.
    pub last_hidden_state: Vec<f32>,
    /// `[n, dim]`.
    pub pooler_output: Vec<f32>,
    /// Images.
    pub n: usize,
    /// Classes (0 for backbones).
    pub classes: usize,
    /// Tokens per image.
    pub tokens: usize,
    /// Feature width.
    pub dim: usize,
}

/// How [`run_model`] runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Images per batch (0 is taken as 1).
    pub batch: usize,
    /// Threads of the session (0 = all).
    pub threads: usize,
    /// Keep `last_hidden_state` (else only logits and pooled features).
    pub keep_tokens: bool,
}

/// Runs `model` on `n` images (`[n, C, H, W]`, finite, `image_size` `[H, W]` or `[0, 0]` for the
/// model's) in batches, calling `progress` with the images of every batch done.
pub fn run_model(
    model: &Model<'_>,
    pixels: &[f32],
    n: usize,
    image_size: [usize; 2],
    run: RunOptions,
    mut progress: impl FnMut(usize),
) -> Result<ModelOutputs, MethodError> {
    let RunOptions { batch, threads, keep_tokens } = run;
    if n == 0 {
        return Err(MethodError::Input("no images to evaluate".into()));
    }
    // Exactly `n` images of the stated size, or the batches would not line up with the images.
    let [h, w] = if image_size == [0, 0] { model.config().image_size } else { image_size };
    let expected = n.checked_mul(model.config().in_chans).and_then(|v| v.checked_mul(h)?.checked_mul(w));
    if expected != Some(pixels.len()) {
        return Err(MethodError::Input(format!(
            "{} pixel values are not {n} images of {}×{h}×{w}",
            pixels.len(),
            model.config().in_chans
        )));
    }
    let per = pixels.len() / n;
    if let Some(i) = pixels.iter().position(|v| !v.is_finite()) {
        return Err(MethodError::NonFinite(format!("the pixel values of image {}", i / per.max(1))));
    }
    let mut s = model.session(SessionOptions { threads, batch: batch.max(1), image_size, ..Default::default() })?;
    let mut out = ModelOutputs { n, ..ModelOutputs::default() };
    let mut done = 0;
    while done < n {
        let k = batch.max(1).min(n - done);
        let o = s.run(&pixels[done * per..(done + k) * per])?;
        out.classes = o.num_classes;
        out.tokens = o.tokens;
        out.dim = o.dim;
        if let Some(l) = o.logits {
            out.logits.extend_from_slice(l);
        }
        if keep_tokens {
            out.last_hidden_state.extend_from_slice(o.last_hidden_state);
        }
        out.pooler_output.extend_from_slice(o.pooler_output);
        done += k;
        progress(k);
    }
    Ok(out)
}

/// The first label of `labels` that is not a class index of a classifier with `classes` outputs,
/// as `(sample, label)`: such a label would silently count as a wrong answer. Front ends (the
/// CLI's `eval`, the Python package) check the data with it before running anything.
pub fn first_bad_label(labels: &[u32], classes: usize) -> Option<(usize, u32)> {
    labels.iter().enumerate().find(|&(_, &l)| l as usize >= classes).map(|(i, &l)| (i, l))
}

/// Whether `a` and `b` have the same outputs (classes and feature width), i.e. whether one can be
/// evaluated against the other as its reference.
pub fn same_outputs(a: &Model<'_>, b: &Model<'_>) -> bool {
    a.config().num_classes == b.config().num_classes && a.config().embed_dim == b.config().embed_dim
}

/// Evaluation metrics (fields absent where they do not apply).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Metrics {
    /// Images evaluated.
    pub n: usize,
    /// Top-1 accuracy (with labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
    /// Top-5 accuracy (with labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top5: Option<f64>,
    /// Top-1 agreement with the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// Mean KL(reference ‖ model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// Mean cosine similarity of `last_hidden_state` tokens with the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_cosine: Option<f64>,
    /// Mean cosine similarity of `pooler_output` with the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooled_cosine: Option<f64>,
}

/// Computes the metrics of `outputs` against optional labels and an optional reference. Labels
/// must be class indices (`< outputs.classes`) of a classifier.
pub fn metrics(
    outputs: &ModelOutputs,
    labels: Option<&[u32]>,
    reference: Option<&ModelOutputs>,
) -> Result<Metrics, MethodError> {
    let n = outputs.n;
    let mut m = Metrics { n, ..Metrics::default() };
    let k = outputs.classes;
    // Outputs assembled by hand (the fields are public) must still have the stated sizes.
    for (o, what) in [(outputs, "the model's"), (reference.unwrap_or(outputs), "the reference's")] {
        let sized = |len: usize, per: usize| n.checked_mul(per) == Some(len);
        if (o.classes > 0 && !sized(o.logits.len(), o.classes)) || !sized(o.pooler_output.len(), o.dim) {
            return Err(MethodError::Input(format!("{what} outputs do not hold {n} images")));
        }
    }
    if k > 0 {
        if let Some(labels) = labels {
            if labels.len() != n {
                return Err(MethodError::Input(format!("{} labels for {n} images", labels.len())));
            }
            if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l as usize >= k) {
                return Err(MethodError::Input(format!(
                    "label {l} of image {i} is not a class index of the model ({k} classes)"
                )));
            }
            let row = |i: usize| &outputs.logits[i * k..(i + 1) * k];
            let top1 = (0..n).filter(|&i| argmax(row(i)) == labels[i] as usize).count();
            let top5 = (0..n).filter(|&i| in_top_k(row(i), labels[i] as usize, 5.min(k))).count();
            m.top1 = Some(top1 as f64 / n as f64);
            m.top5 = Some(top5 as f64 / n as f64);
        }
    }
    if let Some(r) = reference {
        if r.n != n || r.classes != k || r.dim != outputs.dim {
            return Err(MethodError::Input("the reference model's outputs do not match the model's".into()));
        }
        if k > 0 {
            let row = |o: &ModelOutputs, i: usize| o.logits[i * k..(i + 1) * k].to_vec();
            let agree = (0..n).filter(|&i| argmax(&row(outputs, i)) == argmax(&row(r, i))).count();
            m.agreement = Some(agree as f64 / n as f64);
            m.kl = Some((0..n).map(|i| kl_logits(&row(r, i), &row(outputs, i))).sum::<f64>() / n as f64);
        } else {
            let d = outputs.dim;
            if !outputs.last_hidden_state.is_empty() && outputs.last_hidden_state.len() == r.last_hidden_state.len() {
                let rows = outputs.last_hidden_state.len() / d;
                let s: f64 = (0..rows)
                    .map(|t| {
                        cosine(&outputs.last_hidden_state[t * d..(t + 1) * d], &r.last_hidden_state[t * d..(t + 1) * d])
                    })
                    .sum();
                m.token_cosine = Some(s / rows as f64);
            }
            let s: f64 = (0..n)
                .map(|i| cosine(&outputs.pooler_output[i * d..(i + 1) * d], &r.pooler_output[i * d..(i + 1) * d]))
                .sum();
            m.pooled_cosine = Some(s / n as f64);
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_and_cosine_basics() {
        assert!(kl_logits(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
        assert!(kl_logits(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) > 0.1);
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 0.5, 0.5]), 1);
        assert!(in_top_k(&[0.1, 0.5, 0.4], 2, 2));
        assert!(!in_top_k(&[0.1, 0.5, 0.4], 0, 2));
        assert_eq!(first_bad_label(&[0, 2, 1], 3), None);
        assert_eq!(first_bad_label(&[0, 3, 4], 3), Some((1, 3)));
    }
}
