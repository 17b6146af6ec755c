//! Int8 weights (`--dtype int8`): every weight tensor of a block linear (`W`, `U`, `V`, the
//! sparse values) becomes I8 with one F32 scale per output channel (`docs/FORMAT.md`).
//!
//! * **Activation-aware clipping.** For a channel (row) `w` with input covariance `C`, the
//!   layer-output error of storing `q` is `(w − q)ᵀ C (w − q)`. Each row tries the clip ratios of
//!   [`QuantOptions::clip_grid`] (the fraction of its largest magnitude mapped to ±127) and keeps
//!   the one with the smallest such error; without calibration statistics (`convert`) the plain
//!   weight error decides. The sparse values use the diagonal of `C`.
//! * **U's outlier columns.** `y = Σ_r U[:,r]·t_r` with `t = V·x`: a column scale `c_r` of `U`
//!   multiplies `t_r`, so [`UScales::Column`] quantises `U` per column and folds `c_r` into `V`'s
//!   row scale `r` — no `U` scale tensor at all (`U` is stored with a unit scale), and a column of
//!   large magnitude never inflates the step of the others. [`UScales::Row`] keeps one scale per
//!   output row of `U` (`4·m` bytes more per layer, chosen in the metric of `t`), and
//!   [`UScales::RowBalanced`] first balances `U` and `V` by the diagonal rescaling
//!   `U[:,r]·d_r`, `V[r,:]/d_r` with `d_r = sqrt(max|V[r,:]| / max|U[:,r]|)`.
//! * **Bias correction.** The mean of the output error, `ΔŴ·μ` (μ: the inputs' mean), is added
//!   to the bias, so the error left is the covariance part.

use factorvit::format::schema::{self, LinearTensors};
use factorvit::safetensors::DType;
use faer::Mat;

use super::linalg::{self, Matrix};
use super::pipeline::InputMoments;
use crate::checkpoint::{ModelSpec, SpecError, StoredTensor};

/// The clip ratios tried per channel, largest first (1.0: absmax scaling).
pub const DEFAULT_CLIP_GRID: [f32; 6] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.7];

/// How the left factor `U` of a low-rank layer is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UScales {
    /// One scale per column (rank index), folded into `V`'s row scales (no `u_scale` tensor).
    Column,
    /// One scale per output row (`L.u_scale [m]`).
    Row,
    /// Per output row, after balancing `U` and `V` by a diagonal rescaling.
    RowBalanced,
}

/// Options of the int8 quantiser.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantOptions {
    /// Clip ratios tried per channel (each in `(0, 1]`); `[1.0]` is plain absmax scaling.
    pub clip_grid: Vec<f32>,
    /// Scales of `U`.
    pub u_scales: UScales,
    /// Add the mean output error to the bias (needs the input mean).
    pub bias_correction: bool,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions { clip_grid: DEFAULT_CLIP_GRID.to_vec(), u_scales: UScales::Column, bias_correction: true }
    }
}

/// Int8 values with one scale per channel (row-major, a channel's values contiguous unless
/// said otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantised {
    /// Values in `-127..=127`.
    pub values: Vec<i8>,
    /// One positive, finite scale per channel.
    pub scales: Vec<f32>,
}

impl Quantised {
    /// The weights the values stand for, `values[i·cols + j] · scales[i]`.
    pub fn dequantise_rows(&self, cols: usize) -> Vec<f32> {
        self.values.iter().enumerate().map(|(i, &q)| f32::from(q) * self.scales[i / cols.max(1)]).collect()
    }
}

/// The scale that maps `clip · absmax` to 127; a positive stand-in (1) for an all-zero (or
/// vanishingly small) channel, whose values then all round to 0.
pub fn channel_scale(absmax: f32, clip: f32) -> f32 {
    let s = absmax * clip / 127.0;
    if s.is_normal() && s > 0.0 {
        s
    } else {
        1.0
    }
}

fn quantise_into(w: &[f32], scale: f32, out: &mut [i8]) {
    for (q, &x) in out.iter_mut().zip(w) {
        *q = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
}

fn absmax(w: &[f32]) -> f32 {
    w.iter().fold(0.0f32, |a, &x| a.max(x.abs()))
}

/// Per-row int8 quantisation of `w` (`rows × cols`, row-major): each row's scale from the clip
/// ratio of `grid` minimising `eᵀ·C·e` (`e`: the row's error; `C = metric`, `cols × cols`), or
/// `eᵀe` without a metric (or one of another size).
pub fn quantise_rows(w: &[f32], rows: usize, cols: usize, metric: Option<&Matrix>, grid: &[f32]) -> Quantised {
    let metric = metric.filter(|c| c.nrows() == cols && c.ncols() == cols);
    let amax: Vec<f32> = (0..rows).map(|i| absmax(&w[i * cols..(i + 1) * cols])).collect();
    let mut best = Quantised { values: vec![0; rows * cols], scales: vec![1.0; rows] };
    let mut best_err = vec![f64::INFINITY; rows];
    let mut q = vec![0i8; rows * cols];
    for &clip in grid {
        let scales: Vec<f32> = amax.iter().map(|&a| channel_scale(a, clip)).collect();
        for i in 0..rows {
            quantise_into(&w[i * cols..(i + 1) * cols], scales[i], &mut q[i * cols..(i + 1) * cols]);
        }
        let err_of =
            |i: usize, j: usize| f64::from(w[i * cols + j]) - f64::from(q[i * cols + j]) * f64::from(scales[i]);
        let err: Vec<f64> = match metric {
            None => (0..rows).map(|i| (0..cols).map(|j| err_of(i, j).powi(2)).sum()).collect(),
            Some(c) => {
                let e = Mat::from_fn(rows, cols, err_of);
                let ec = linalg::mul(e.as_ref(), c.as_ref());
                (0..rows).map(|i| (0..cols).map(|j| e[(i, j)] * ec[(i, j)]).sum()).collect()
            }
        };
        for i in 0..rows {
            if err[i] < best_err[i] {
                best_err[i] = err[i];
                best.scales[i] = scales[i];
                best.values[i * cols..(i + 1) * cols].copy_from_slice(&q[i * cols..(i + 1) * cols]);
            }
        }
    }
    best
}

/// Per-row int8 quantisation of CSR values (row `j` holds `values[row_ptr[j]..row_ptr[j+1]]`),
/// each row's clip minimising `Σ_q e_q²·diag[col_idx[q]]` (plain squared error without `diag`).
pub fn quantise_csr_rows(
    values: &[f32],
    row_ptr: &[u32],
    col_idx: &[u32],
    diag: Option<&[f64]>,
    grid: &[f32],
) -> Quantised {
    let rows = row_ptr.len().saturating_sub(1);
    let mut out = Quantised { values: vec![0; values.len()], scales: vec![1.0; rows] };
    let mut q = vec![0i8; values.len()];
    for j in 0..rows {
        let (s, e) = (row_ptr[j] as usize, row_ptr[j + 1] as usize);
        let row = &values[s..e];
        let a = absmax(row);
        let mut best = f64::INFINITY;
        for &clip in grid {
            let scale = channel_scale(a, clip);
            quantise_into(row, scale, &mut q[s..e]);
            let err: f64 = (s..e)
                .map(|p| {
                    let d = f64::from(values[p]) - f64::from(q[p]) * f64::from(scale);
                    d * d * diag.map_or(1.0, |g| g.get(col_idx[p] as usize).copied().unwrap_or(1.0))
                })
                .sum();
            if err < best {
                best = err;
                out.scales[j] = scale;
                out.values[s..e].copy_from_slice(&q[s..e]);
            }
        }
    }
    out
}

/// Balances `U` (`m × r`) and `V` (`r × n`) in place: column `k` of `U` times `d_k`, row `k`
/// of `V` divided by it, `d_k = sqrt(max|V[k,:]| / max|U[:,k]|)` (the product is unchanged;
/// both then have the largest magnitude `sqrt(max|U[:,k]|·max|V[k,:]|)`).
pub fn balance(u: &mut [f32], v: &mut [f32], m: usize, r: usize, n: usize) {
    for k in 0..r {
        let au = (0..m).fold(0.0f32, |a, i| a.max(u[i * r + k].abs()));
        let av = absmax(&v[k * n..(k + 1) * n]);
        if au > 0.0 && av > 0.0 {
            let d = (av / au).sqrt();
            if d.is_normal() {
                (0..m).for_each(|i| u[i * r + k] *= d);
                v[k * n..(k + 1) * n].iter_mut().for_each(|x| *x /= d);
            }
        }
    }
}

fn i8_tensor(shape: Vec<usize>, values: &[i8]) -> Result<StoredTensor, SpecError> {
    StoredTensor::new(DType::I8, shape, values.iter().map(|&v| v as u8).collect())
}

/// `A·B` of row-major f32 matrices as an f64 matrix.
fn product(a: &[f32], b: &[f32], m: usize, r: usize, n: usize) -> Matrix {
    linalg::mul(linalg::from_row_major(a, m, r).as_ref(), linalg::from_row_major(b, r, n).as_ref())
}

fn add_csr(w: &mut Matrix, row_ptr: &[u32], col_idx: &[u32], values: &[f32]) {
    for j in 0..row_ptr.len().saturating_sub(1) {
        for p in row_ptr[j] as usize..row_ptr[j + 1] as usize {
            w[(j, col_idx[p] as usize)] += f64::from(values[p]);
        }
    }
}

fn tensor_f32(spec: &ModelSpec, name: &str) -> Result<(Vec<f32>, Vec<usize>), SpecError> {
    let t = spec.tensors.get(name).ok_or_else(|| SpecError::MissingTensor(name.to_string()))?;
    Ok((t.to_f32().map_err(|e| e.for_tensor(name))?, t.shape.clone()))
}

/// The two effective weights of a layer (float and int8) before and after quantisation.
struct Effective {
    before: Matrix,
    after: Matrix,
}

/// Quantises the weight tensors of linear layer `layer` of `spec` to I8 (see the module
/// documentation), with the dense-input moments of the layer when known. Returns the relative
/// layer-output error quantisation adds (`tr(ΔŴ·C·ΔŴᵀ) / tr(Ŵ·C·Ŵᵀ)`, or the relative weight
/// error without moments); `None` when the layer already is int8.
pub fn quantise_layer(
    spec: &mut ModelSpec,
    layer: &str,
    moments: Option<&InputMoments>,
    opts: &QuantOptions,
) -> Result<Option<f64>, SpecError> {
    let names = LinearTensors::of(layer);
    let grid = &opts.clip_grid;
    let dense = spec.tensors.get(&names.weight).map(|t| t.dtype);
    let main = dense.or_else(|| spec.tensors.get(&names.u).map(|t| t.dtype));
    if matches!(main, None | Some(DType::I8)) {
        return Ok(None);
    }
    let eff = if dense.is_some() {
        let (w, shape) = tensor_f32(spec, &names.weight)?;
        let (m, n) = (shape[0], shape[1]);
        let cov = moments.map(|mo| &mo.cov);
        let q = quantise_rows(&w, m, n, cov, grid);
        let wq = q.dequantise_rows(n);
        spec.tensors.insert(names.weight.clone(), i8_tensor(vec![m, n], &q.values)?);
        spec.tensors.insert(names.weight_scale.clone(), StoredTensor::from_f32(vec![m], &q.scales)?);
        Effective { before: linalg::from_row_major(&w, m, n), after: linalg::from_row_major(&wq, m, n) }
    } else {
        quantise_factored(spec, &names, moments, opts)?
    };
    let delta = &eff.before - &eff.after;
    let n = delta.ncols();
    let cov = moments.map(|mo| &mo.cov).filter(|c| c.nrows() == n);
    let error = match cov {
        Some(c) => linalg::quad_trace(delta.as_ref(), c.as_ref()) / linalg::quad_trace(eff.before.as_ref(), c.as_ref()),
        None => linalg::frob2(delta.as_ref()) / linalg::frob2(eff.before.as_ref()),
    };
    if let (true, Some(mo), Some(b)) = (opts.bias_correction, moments, spec.tensors.get(&names.bias)) {
        if mo.mean.len() == n {
            let dtype = b.dtype;
            let (mut bias, shape) = tensor_f32(spec, &names.bias)?;
            for (i, bi) in bias.iter_mut().enumerate() {
                let shift: f64 = (0..n).map(|j| delta[(i, j)] * mo.mean[j]).sum();
                *bi = (f64::from(*bi) + shift) as f32;
            }
            spec.tensors.insert(names.bias.clone(), StoredTensor::from_f32_as(dtype, shape, &bias)?);
        }
    }
    Ok(Some(if error.is_finite() { error } else { 0.0 }))
}

/// [`quantise_layer`] for `U·V (+ S)`.
fn quantise_factored(
    spec: &mut ModelSpec,
    names: &LinearTensors,
    moments: Option<&InputMoments>,
    opts: &QuantOptions,
) -> Result<Effective, SpecError> {
    let grid = &opts.clip_grid;
    let (mut u, us) = tensor_f32(spec, &names.u)?;
    let (mut v, vs) = tensor_f32(spec, &names.v)?;
    let (m, r, n) = (us[0], us[1], vs[1]);
    let cov = moments.map(|mo| &mo.cov).filter(|c| c.nrows() == n);
    let mut before = product(&u, &v, m, r, n);
    if opts.u_scales == UScales::RowBalanced {
        balance(&mut u, &mut v, m, r, n);
    }
    let qv = quantise_rows(&v, r, n, cov, grid);
    let vq = qv.dequantise_rows(n);
    let (u_values, u_scale, v_scale, uq) = match opts.u_scales {
        UScales::Column => {
            let ut: Vec<f32> = (0..r * m).map(|x| u[(x % m) * r + x / m]).collect();
            let qt = quantise_rows(&ut, r, m, None, grid);
            let values: Vec<i8> = (0..m * r).map(|x| qt.values[(x % r) * m + x / r]).collect();
            let uq: Vec<f32> = (0..m * r).map(|x| f32::from(values[x]) * qt.scales[x % r]).collect();
            let v_scale: Vec<f32> = qv.scales.iter().zip(&qt.scales).map(|(a, b)| a * b).collect();
            (values, None, v_scale, uq)
        }
        UScales::Row | UScales::RowBalanced => {
            // The metric of U's input t = V̂·x: V̂·C·V̂ᵀ.
            let metric = cov.map(|c| {
                let vm = linalg::from_row_major(&vq, r, n);
                linalg::mul(linalg::mul(vm.as_ref(), c.as_ref()).as_ref(), vm.transpose())
            });
            let qu = quantise_rows(&u, m, r, metric.as_ref(), grid);
            let uq = qu.dequantise_rows(r);
            (qu.values, Some(qu.scales), qv.scales.clone(), uq)
        }
    };
    let mut after = product(&uq, &vq, m, r, n);
    spec.tensors.insert(names.u.clone(), i8_tensor(vec![m, r], &u_values)?);
    match u_scale {
        Some(s) => spec.tensors.insert(names.u_scale.clone(), StoredTensor::from_f32(vec![m], &s)?),
        None => spec.tensors.remove(&names.u_scale),
    };
    spec.tensors.insert(names.v.clone(), i8_tensor(vec![r, n], &qv.values)?);
    spec.tensors.insert(names.v_scale.clone(), StoredTensor::from_f32(vec![r], &v_scale)?);
    if spec.tensors.contains_key(&names.sparse_values) {
        let row_ptr = spec.tensors.get(&names.sparse_row_ptr).and_then(StoredTensor::to_u32).unwrap_or_default();
        let col_idx = spec.tensors.get(&names.sparse_col_idx).and_then(StoredTensor::to_u32).unwrap_or_default();
        let (values, shape) = tensor_f32(spec, &names.sparse_values)?;
        let diag: Option<Vec<f64>> = cov.map(|c| (0..n).map(|j| c[(j, j)]).collect());
        let q = quantise_csr_rows(&values, &row_ptr, &col_idx, diag.as_deref(), grid);
        let deq: Vec<f32> = (0..row_ptr.len().saturating_sub(1))
            .flat_map(|j| (row_ptr[j]..row_ptr[j + 1]).map(move |p| (j, p as usize)))
            .map(|(j, p)| f32::from(q.values[p]) * q.scales[j])
            .collect();
        add_csr(&mut before, &row_ptr, &col_idx, &values);
        add_csr(&mut after, &row_ptr, &col_idx, &deq);
        spec.tensors.insert(names.sparse_values.clone(), i8_tensor(shape, &q.values)?);
        spec.tensors.insert(names.sparse_values_scale.clone(), StoredTensor::from_f32(vec![m], &q.scales)?);
    }
    Ok(Effective { before, after })
}

/// Quantises every block linear of `spec` ([`quantise_layer`]); `moments` holds the layers'
/// input moments in model order (may be empty). Returns each layer's name and added error.
pub fn quantise_blocks(
    spec: &mut ModelSpec,
    moments: &[InputMoments],
    opts: &QuantOptions,
) -> Result<Vec<(String, Option<f64>)>, SpecError> {
    let layers = schema::block_linear_layers(&spec.config);
    let mut out = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let err = quantise_layer(spec, &l.name, moments.get(i), opts)?;
        out.push((l.name.clone(), err));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let w: Vec<f32> = (0..40).map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.01).collect();
        let q = quantise_rows(&w, 4, 10, None, &[1.0]);
        let back = q.dequantise_rows(10);
        for i in 0..4 {
            assert!(q.scales[i] > 0.0);
            for j in 0..10 {
                // Absmax scaling: rounding error at most half a step.
                assert!((w[i * 10 + j] - back[i * 10 + j]).abs() <= q.scales[i] * 0.5 + 1e-7);
            }
        }
    }

    #[test]
    fn zero_rows_get_a_positive_scale() {
        let q = quantise_rows(&[0.0; 6], 2, 3, None, &DEFAULT_CLIP_GRID);
        assert_eq!(q.scales, [1.0, 1.0]);
        assert!(q.values.iter().all(|&v| v == 0));
    }

    #[test]
    fn clipping_helps_a_row_with_one_outlier() {
        // Many small values and one outlier: a tighter clip costs the outlier little in the
        // plain metric but is still worse; with a metric that ignores the outlier's input,
        // clipping wins.
        let mut w: Vec<f32> = (0..64).map(|j| ((j * 13 % 7) as f32 - 3.0) * 0.013).collect();
        w[0] = 1.0;
        let mut c = Mat::<f64>::identity(64, 64);
        c[(0, 0)] = 1e-6;
        let plain = quantise_rows(&w, 1, 64, None, &DEFAULT_CLIP_GRID);
        let aware = quantise_rows(&w, 1, 64, Some(&c), &DEFAULT_CLIP_GRID);
        assert!(aware.scales[0] < plain.scales[0], "{:?} vs {:?}", aware.scales, plain.scales);
    }

    /// The writer round trip: a quantised spec validates, the runtime loads it, every layer's
    /// effective weight is the dequantised one, and the logits stay close to the float model's.
    #[test]
    fn quantised_spec_round_trips_through_the_runtime() {
        use crate::method::synthetic::{random_vit_spec, SyntheticVit};
        use crate::writer;
        let float = random_vit_spec(&SyntheticVit::micro(), 5).unwrap();
        let mut spec = float.clone();
        // One low-rank layer (folded U scales) and one low-rank + sparse layer (row scales).
        let names = LinearTensors::of("blocks.0.mlp.fc1");
        let (w, shape) = tensor_f32(&spec, &names.weight).unwrap();
        let (m, n) = (shape[0], shape[1]);
        spec.tensors.remove(&names.weight);
        let r = 8;
        let u: Vec<f32> = (0..m * r).map(|i| w[(i / r) * n + i % r]).collect();
        let v: Vec<f32> = (0..r * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
        spec.tensors.insert(names.u.clone(), StoredTensor::from_f32(vec![m, r], &u).unwrap());
        spec.tensors.insert(names.v.clone(), StoredTensor::from_f32(vec![r, n], &v).unwrap());
        let row_ptr: Vec<u32> = (0..=m as u32).collect();
        let cols: Vec<u32> = (0..m as u32).map(|j| j % n as u32).collect();
        let vals: Vec<f32> = (0..m).map(|j| 0.01 * (j as f32 - 7.0)).collect();
        spec.tensors.insert(names.sparse_row_ptr.clone(), StoredTensor::from_u32(vec![m + 1], &row_ptr).unwrap());
        spec.tensors.insert(names.sparse_col_idx.clone(), StoredTensor::from_u32(vec![m], &cols).unwrap());
        spec.tensors.insert(names.sparse_values.clone(), StoredTensor::from_f32(vec![m], &vals).unwrap());
        let reference = spec.clone();
        let errors = quantise_blocks(&mut spec, &[], &QuantOptions::default()).unwrap();
        assert_eq!(errors.len(), 8);
        for (name, e) in &errors {
            // Rounding to 255 levels: a relative weight error around 1e-5, far below 1e-3.
            let e = e.unwrap();
            assert!(e > 0.0 && e < 1e-3, "{name}: {e}");
        }
        assert!(!spec.tensors.contains_key(&names.u_scale), "U's column scales are folded into V's");
        assert_eq!(spec.tensors[&names.sparse_values].dtype, DType::I8);
        let bytes = writer::to_bytes(&spec).unwrap();
        let model = factorvit::Model::from_bytes(&bytes).unwrap();
        let float_model = factorvit::Model::from_vec(writer::to_bytes(&reference).unwrap()).unwrap();
        for (a, b) in model.linears().zip(float_model.linears()) {
            let (wa, wb) = (model.effective_weight(a), float_model.effective_weight(b));
            let num: f64 = wa.iter().zip(&wb).map(|(x, y)| f64::from(x - y).powi(2)).sum();
            let den: f64 = wb.iter().map(|y| f64::from(*y).powi(2)).sum();
            assert!(num / den < 1e-3, "{}: {}", a.name(), num / den);
        }
        let pixels: Vec<f32> = (0..28 * 28).map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5).collect();
        let run = |m: &factorvit::Model<'_>| {
            let mut session = m.session(Default::default()).unwrap();
            session.run(&pixels).unwrap().logits.unwrap().to_vec()
        };
        let (lq, lf) = (run(&model), run(&float_model));
        let diff = lq.iter().zip(&lf).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let scale = lf.iter().fold(0.0f32, |a, b| a.max(b.abs()));
        // Weight errors of ~1e-5 (relative energy) move the logits by well under 5 %.
        assert!(diff <= 0.05 * scale.max(1e-3), "logits differ by {diff} (scale {scale})");
    }

    #[test]
    fn balancing_keeps_the_product() {
        let (m, r, n) = (3, 2, 4);
        let mut u: Vec<f32> = vec![10.0, 0.1, -20.0, 0.2, 5.0, -0.3];
        let mut v: Vec<f32> = vec![0.01, 0.02, -0.03, 0.04, 1.0, 2.0, -3.0, 4.0];
        let before = product(&u, &v, m, r, n);
        balance(&mut u, &mut v, m, r, n);
        let after = product(&u, &v, m, r, n);
        assert!(linalg::frob2((&before - &after).as_ref()) < 1e-10);
        let au = (0..m).fold(0.0f32, |a, i| a.max(u[i * r].abs()));
        assert!((au - absmax(&v[..n])).abs() < 1e-5);
    }
}
