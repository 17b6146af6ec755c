//! Phase 3 of the method: the uncompensated replacement of every layer at its allocated rank
//! (with a sparse term where it lowers the validation error at equal cost), and its report row.

use faer::Mat;

use super::allocate::Allocation;
use super::compensate::Candidate;
use super::decompose::{self, Approximation, Metric};
use super::layer::{scaled_layer_weight, DenseLayer, LayerState};
use super::linalg::{self, Matrix};
use super::pipeline::{FactorMethod, PipelineOptions, Run};
use super::progress::Phase;
use super::report::LayerReport;
use super::MethodError;

/// Output of [`factor_layers`], one entry per layer in model order.
pub(super) struct Factored {
    /// Uncompensated replacements in loss units (`None`: the layer stays dense).
    pub starts: Vec<Option<Candidate>>,
    /// Report rows.
    pub reports: Vec<LayerReport>,
}

/// The replacement and report row of every layer for an allocation.
pub(super) fn factor_layers(
    run: &Run<'_, '_>,
    layers: &[LayerState],
    alloc: &[Allocation],
) -> Result<Factored, MethodError> {
    let mut out = Factored { starts: Vec::with_capacity(layers.len()), reports: Vec::with_capacity(layers.len()) };
    run.opts.progress.report(Phase::Factors, 0, layers.len());
    for (k, st) in layers.iter().enumerate() {
        let mut rep = LayerReport::new(&st.name, st.m, st.n);
        rep.sensitivity = st.sensitivity;
        rep.whitening_ridge = st.ridge;
        rep.spectrum = st.svd.sigma.clone();
        let dense = scaled_layer_weight(run.model, st.block, st.which, run.opts)?;
        match alloc[k] {
            Allocation::Dense => {
                rep.kind = factorvit::LinearKind::Dense;
                rep.params_after = st.m * st.n;
                rep.cost_after = (st.m * st.n) as f64;
                out.starts.push(None);
            }
            Allocation::Rank(r) => out.starts.push(Some(factor_layer(st, &dense, r, &mut rep, run.opts)?)),
        }
        out.reports.push(rep);
        run.opts.progress.report(Phase::Factors, k + 1, layers.len());
    }
    Ok(out)
}

/// The replacement of one layer at rank `r` (or low-rank + sparse at its cost), filling the
/// report row's kind, sizes and errors.
fn factor_layer(
    st: &LayerState,
    layer: &DenseLayer,
    r: usize,
    rep: &mut LayerReport,
    opts: &PipelineOptions,
) -> Result<Candidate, MethodError> {
    let (w, bias) = (&layer.weight, &layer.bias);
    let (u, v) = st.svd.factors(r);
    let mut approx = Approximation { u, v, sparse: None };
    let mut nnz_used = 0;
    if st.sparse_eligible(opts) && opts.method == FactorMethod::Whitened {
        if let Some(cand) = sparse_candidate(st, w, r, opts)? {
            approx = cand.approx;
            nnz_used = cand.nnz;
        }
    }
    let dense = approx.dense();
    let b = match opts.method {
        FactorMethod::Whitened => decompose::corrected_bias(w, &dense, bias.as_deref(), &st.fit_mean),
        FactorMethod::Svd => bias.clone().unwrap_or_else(|| vec![0.0; st.m]),
    };
    rep.kind = if nnz_used > 0 { factorvit::LinearKind::LowRankSparse } else { factorvit::LinearKind::LowRank };
    rep.rank = approx.rank();
    rep.nnz = nnz_used;
    rep.params_after = approx.rank() * (st.m + st.n) + nnz_used;
    rep.cost_after = (approx.rank() * (st.m + st.n)) as f64
        + if nnz_used > 0 {
            nnz_used as f64 * opts.sparse_entry_cost + (st.m + 1) as f64 * opts.sparse_row_cost
        } else {
            0.0
        };
    // Errors on dense inputs, measured from the moments.
    let fit_err = match (&st.fit_cov, opts.method, nnz_used) {
        (_, FactorMethod::Whitened, 0) => st.fit_tail[approx.rank()],
        _ => {
            let cov = st.fit_cov.clone().unwrap_or_else(|| Mat::zeros(0, 0));
            if cov.nrows() == st.n {
                decompose::output_error(w, bias.as_deref(), &dense, Some(&b), &cov, &st.fit_mean)
            } else {
                st.fit_tail[approx.rank()]
            }
        }
    };
    rep.error_fit = fit_err / st.fit_variance.max(f64::MIN_POSITIVE);
    rep.error_val = match (&st.val_stats, &st.val_tail, nnz_used, opts.method) {
        (Some(val), _, nnz, _) if nnz > 0 || opts.method == FactorMethod::Svd => Some(
            decompose::output_error(w, bias.as_deref(), &dense, Some(&b), &val.cov, &val.mean)
                / st.val_variance.unwrap_or(1.0).max(f64::MIN_POSITIVE),
        ),
        (_, Some(tail), _, _) => Some(tail[approx.rank()] / st.val_variance.unwrap_or(1.0).max(f64::MIN_POSITIVE)),
        _ => None,
    };
    Ok(Candidate { approx, bias: b })
}

/// A low-rank + sparse approximation and its number of sparse entries.
struct SparseCandidate {
    approx: Approximation,
    nnz: usize,
}

/// Low-rank + sparse at the same cost as rank `r`, if it beats rank `r` on validation data.
fn sparse_candidate(
    st: &LayerState,
    w: &Matrix,
    r: usize,
    opts: &PipelineOptions,
) -> Result<Option<SparseCandidate>, MethodError> {
    let traded = ((r as f64) * opts.sparse_fraction).floor() as usize;
    if traded == 0 || traded >= r {
        return Ok(None);
    }
    let freed = (traded * (st.m + st.n)) as f64 - (st.m + 1) as f64 * opts.sparse_row_cost;
    let nnz = (freed / opts.sparse_entry_cost).floor();
    if nnz < 1.0 {
        return Ok(None);
    }
    let nnz = nnz as usize;
    let Some(fit_cov) = &st.fit_cov else { return Ok(None) };
    let eig = linalg::sym_eigen(fit_cov.as_ref())?;
    let mean_eig = eig.values.iter().map(|v| v.max(0.0)).sum::<f64>() / st.n as f64;
    let metric = Metric::from_eigen(&eig, st.ridge * mean_eig, decompose::DEFAULT_REL_FLOOR);
    let (approx, _) =
        decompose::fit_low_rank_sparse(w, &metric, r - traded, nnz, opts.compensation_options.sparse_iterations)?;
    // Compare with plain rank r on validation (or fit) data.
    let (cov, mean) = match &st.val_stats {
        Some(val) => (&val.cov, val.mean.as_slice()),
        None => (fit_cov, st.fit_mean.as_slice()),
    };
    let dense_sparse = approx.dense();
    let b_sparse = decompose::corrected_bias(w, &dense_sparse, st.bias.as_deref(), &st.fit_mean);
    let err_sparse = decompose::output_error(w, st.bias.as_deref(), &dense_sparse, Some(&b_sparse), cov, mean);
    let (u, v) = st.svd.factors(r);
    let plain = linalg::mul(u.as_ref(), v.as_ref());
    let b_plain = decompose::corrected_bias(w, &plain, st.bias.as_deref(), &st.fit_mean);
    let err_plain = decompose::output_error(w, st.bias.as_deref(), &plain, Some(&b_plain), cov, mean);
    Ok((err_sparse < err_plain).then(|| {
        let nnz = approx.nnz();
        SparseCandidate { approx, nnz }
    }))
}
