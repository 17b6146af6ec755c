//! Accuracy and fidelity metrics: top-1 / top-5 against labels, top-1 agreement and KL against a
//! reference model's logits, cosine similarity of output tokens and pooled features, and
//! nearest-neighbour retrieval agreement of pooled features ([`knn_agreement`]).

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
    /// Backbones with at least 3 images: fraction of images whose nearest other image by cosine
    /// of `pooler_output` is the same with the model's features as with the reference's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_top1_agreement: Option<f64>,
    /// Backbones with at least 7 images: mean fraction of the 5 nearest other images shared by
    /// the model's and the reference's neighbour lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_top5_overlap: Option<f64>,
    /// As `knn_top1_agreement` with the neighbours of an image restricted to images of another
    /// label (for a backbone the labels group images, e.g. the crops of one photo).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_top1_agreement_other_labels: Option<f64>,
    /// As `knn_top5_overlap` with the neighbours restricted to images of another label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_top5_overlap_other_labels: Option<f64>,
    /// With labels: fraction of images whose top-1 neighbour among images of another label has
    /// the same label with the model's features as with the reference's (e.g. which other photo
    /// a crop retrieves, whichever crop of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_top1_label_agreement_other_labels: Option<f64>,
}

/// Agreement of nearest-neighbour retrieval between two sets of features of the same images
/// (see [`knn_agreement`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnAgreement {
    /// Fraction of the images with at least 2 candidate neighbours whose top-1 neighbour is the
    /// same in both; `None` when no image has 2 candidates.
    pub top1: Option<f64>,
    /// Mean over the images with at least 6 candidates of `|A ∩ B| / 5` for their 5 nearest
    /// neighbours `A`, `B`; `None` when no image has 6 candidates.
    pub top5_overlap: Option<f64>,
    /// With groups: fraction of the images counted in `top1` whose two top-1 neighbours are in
    /// the same group (`None` without groups).
    pub top1_group: Option<f64>,
}

/// The rows of `features` (`[n, dim]`) scaled to unit length (zero rows stay zero), in f64.
fn unit_rows(features: &[f32], dim: usize) -> Vec<f64> {
    let mut out: Vec<f64> = features.iter().map(|&v| v as f64).collect();
    for row in out.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

/// The (at most) `k` nearest candidates of image `i` by cosine, nearest first, ties broken by the
/// smaller index; non-finite similarities rank last.
fn nearest(unit: &[f64], dim: usize, i: usize, candidates: &[usize], k: usize) -> Vec<usize> {
    let row = |j: usize| &unit[j * dim..(j + 1) * dim];
    let mut scored: Vec<(f64, usize)> = candidates
        .iter()
        .map(|&j| {
            let s: f64 = row(i).iter().zip(row(j)).map(|(a, b)| a * b).sum();
            (if s.is_nan() { f64::NEG_INFINITY } else { s }, j)
        })
        .collect();
    let order = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if scored.len() > k && k > 0 {
        scored.select_nth_unstable_by(k - 1, order);
        scored.truncate(k);
    }
    scored.sort_unstable_by(order);
    scored.into_iter().take(k).map(|(_, j)| j).collect()
}

/// Nearest-neighbour retrieval agreement: for every image `i` of `n`, its nearest neighbours by
/// cosine similarity among the other images (only those with a different entry in `groups`,
/// when given) with the `reference` features and with the `model` features (both `[n, dim]`),
/// compared as top-1 agreement and top-5 overlap ([`KnnAgreement`]). Ties rank the smaller index
/// first. Errors on features or groups of the wrong size.
pub fn knn_agreement(
    reference: &[f32],
    model: &[f32],
    n: usize,
    dim: usize,
    groups: Option<&[u32]>,
) -> Result<KnnAgreement, MethodError> {
    if dim == 0 || n.checked_mul(dim) != Some(reference.len()) || reference.len() != model.len() {
        return Err(MethodError::Input(format!("the features do not hold {n} images of width {dim}")));
    }
    if let Some(g) = groups.filter(|g| g.len() != n) {
        return Err(MethodError::Input(format!("{} labels (groups) for {n} images", g.len())));
    }
    let (r, m) = (unit_rows(reference, dim), unit_rows(model, dim));
    let (mut top1, mut top1_count, mut top5, mut top5_count) = (0usize, 0usize, 0.0f64, 0usize);
    let mut top1_group = 0usize;
    for i in 0..n {
        let candidates: Vec<usize> = (0..n).filter(|&j| j != i && groups.map_or(true, |g| g[j] != g[i])).collect();
        if candidates.len() < 2 {
            continue;
        }
        let k = if candidates.len() >= 6 { 5 } else { 1 };
        let (nr, nm) = (nearest(&r, dim, i, &candidates, k), nearest(&m, dim, i, &candidates, k));
        top1_count += 1;
        top1 += usize::from(nr[0] == nm[0]);
        top1_group += usize::from(groups.is_some_and(|g| g[nr[0]] == g[nm[0]]));
        if k == 5 {
            top5_count += 1;
            top5 += nr.iter().filter(|j| nm.contains(j)).count() as f64 / 5.0;
        }
    }
    Ok(KnnAgreement {
        top1: (top1_count > 0).then(|| top1 as f64 / top1_count as f64),
        top5_overlap: (top5_count > 0).then(|| top5 / top5_count as f64),
        top1_group: (groups.is_some() && top1_count > 0).then(|| top1_group as f64 / top1_count as f64),
    })
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
            if n >= 3 {
                let all = knn_agreement(&r.pooler_output, &outputs.pooler_output, n, d, None)?;
                m.knn_top1_agreement = all.top1;
                m.knn_top5_overlap = all.top5_overlap;
                if let Some(labels) = labels {
                    let across = knn_agreement(&r.pooler_output, &outputs.pooler_output, n, d, Some(labels))?;
                    m.knn_top1_agreement_other_labels = across.top1;
                    m.knn_top5_overlap_other_labels = across.top5_overlap;
                    m.knn_top1_label_agreement_other_labels = across.top1_group;
                }
            }
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

    /// Features on the unit circle at the given angles (degrees), `[n, 2]`.
    fn circle(degrees: &[f64]) -> Vec<f32> {
        degrees.iter().flat_map(|d| [d.to_radians().cos() as f32, d.to_radians().sin() as f32]).collect()
    }

    #[test]
    fn knn_agreement_of_identical_features_is_one() {
        let f = circle(&[0.0, 1.0, 3.0, 7.0, 12.0, 20.0, 30.0]);
        let a = knn_agreement(&f, &f, 7, 2, None).unwrap();
        assert_eq!(a, KnnAgreement { top1: Some(1.0), top5_overlap: Some(1.0), top1_group: None });
        // Scaling rows does not change cosine neighbours.
        let scaled: Vec<f32> = f.iter().enumerate().map(|(i, &v)| v * (1 + i / 2) as f32).collect();
        assert_eq!(knn_agreement(&f, &scaled, 7, 2, None).unwrap(), a);
    }

    #[test]
    fn knn_top1_agreement_hand_computed() {
        // Reference at 0°, 10°, 100°, 115°: top-1 neighbours 1, 0, 3, 2.
        let reference = circle(&[0.0, 10.0, 100.0, 115.0]);
        // A permutation of the images (1 and 2 swapped), i.e. 0°, 100°, 10°, 115°: neighbours
        // 2 (10° away), 3 (15°), 0 (10°), 1 (15°): none agrees.
        let permuted = circle(&[0.0, 100.0, 10.0, 115.0]);
        assert_eq!(knn_agreement(&reference, &permuted, 4, 2, None).unwrap().top1, Some(0.0));
        // Swapping the features of 2 and 3, which are each other's neighbours, changes nothing.
        let swapped = circle(&[0.0, 10.0, 115.0, 100.0]);
        assert_eq!(knn_agreement(&reference, &swapped, 4, 2, None).unwrap().top1, Some(1.0));
        // Image 3 moved to 50°: its neighbour becomes 1 (40° away; 2 is 50°); 0, 1, 2 keep theirs
        // (1, 0 and 3): 3 of 4.
        let moved = circle(&[0.0, 10.0, 100.0, 50.0]);
        assert_eq!(knn_agreement(&reference, &moved, 4, 2, None).unwrap().top1, Some(0.75));
        // Groups {0, 1} and {2, 3}, neighbours only in the other group. Reference: 0→2 (100° vs
        // 115°), 1→2, 2→1 (90° vs 100°), 3→1; moved: 0→3 (50° vs 100°), 1→3, 2→1, 3→1: 2 of 4.
        let groups = [0, 0, 1, 1];
        let across = knn_agreement(&reference, &moved, 4, 2, Some(&groups)).unwrap();
        assert_eq!(across.top1, Some(0.5));
        // The two disagreements (0 and 1 retrieve 3 instead of 2) stay within group 1.
        assert_eq!(across.top1_group, Some(1.0));
        // Groups {0, 1}, {2}, {3} at 0°, 10°, 100°, 200°: top-1 neighbours among other groups
        // 2, 2, 1 (90°; 0 and 3 are 100°), 2. Image 3 moved to 140°: 2's neighbour becomes 3
        // (40°), of another group than 1; the others keep theirs: 3 of 4 for both.
        let g = [0, 0, 1, 2];
        let (r3, m3) = (circle(&[0.0, 10.0, 100.0, 200.0]), circle(&[0.0, 10.0, 100.0, 140.0]));
        let a = knn_agreement(&r3, &m3, 4, 2, Some(&g)).unwrap();
        assert_eq!((a.top1, a.top1_group), (Some(0.75), Some(0.75)));
        // A group of its own leaves an image 1 candidate: it is not counted.
        let alone = [0, 0, 0, 1];
        let a = knn_agreement(&reference, &moved, 4, 2, Some(&alone)).unwrap();
        // 0, 1, 2 each have the single candidate 3; 3 has 0, 1, 2: 3's neighbour 2 (15°) became
        // 1 (40°).
        assert_eq!(a.top1, Some(0.0));
    }

    #[test]
    fn knn_top5_overlap_hand_computed() {
        // Seven images in a 30° arc: the five nearest of each are all others but the farther of
        // the two ends, 0° and 30° (the end itself for an end image).
        let reference = circle(&[0.0, 1.0, 3.0, 7.0, 12.0, 20.0, 30.0]);
        // Image 6 moved to 180°, far from all: the images below 15° had 6 (30°) as the farthest and
        // keep their five; image 5 (20°) had 0 as the farthest and now drops 6 for 0: 4 of 5.
        // Image 6's five nearest stay 1..=5 (0 is the farthest at 180° too).
        let model = circle(&[0.0, 1.0, 3.0, 7.0, 12.0, 20.0, 180.0]);
        let a = knn_agreement(&reference, &model, 7, 2, None).unwrap();
        let expected = (6.0 * 5.0 + 4.0) / 5.0 / 7.0;
        assert!((a.top5_overlap.unwrap() - expected).abs() < 1e-12, "{a:?}");
        // Top-1 neighbours (1, 0, 1, 2, 3, 4, 5) do not change: image 6's nearest at 180° is 5.
        assert_eq!(a.top1, Some(1.0));
    }

    #[test]
    fn knn_agreement_rejects_bad_sizes_and_survives_non_finite() {
        let f = circle(&[0.0, 10.0, 20.0]);
        assert!(knn_agreement(&f, &f[..4], 3, 2, None).is_err());
        assert!(knn_agreement(&f, &f, 3, 0, None).is_err());
        assert!(knn_agreement(&f, &f, 4, 2, None).is_err());
        assert!(knn_agreement(&f, &f, 3, 2, Some(&[0, 1])).is_err());
        // Fewer than 2 candidates everywhere: nothing to compare.
        assert_eq!(
            knn_agreement(&f[..4], &f[..4], 2, 2, None).unwrap(),
            KnnAgreement { top1: None, top5_overlap: None, top1_group: None }
        );
        let mut bad = f.clone();
        bad[2] = f32::NAN;
        bad[5] = f32::INFINITY;
        let a = knn_agreement(&f, &bad, 3, 2, None).unwrap();
        assert!(a.top1.is_some_and(|v| (0.0..=1.0).contains(&v)));
    }
}
