//! Global rank allocation under one parameter budget.
//!
//! Every layer has an error curve `e(r)` (non-increasing in `r`) and costs `r·(m + n)` at rank
//! `r`, or `m·n` dense. Starting from `min_rank` everywhere, the greedy repeatedly takes the step
//! (one more rank of one layer; or, from the largest rank that is still cheaper than dense, the
//! switch to dense) with the largest error reduction per parameter that still fits. With convex
//! curves (error reductions non-increasing in `r`, true for discarded squared singular values)
//! this is the optimal allocation of a separable knapsack up to the last step; steps that no
//! longer fit are skipped so the remaining budget is filled by other layers, leaving less than
//! one rank step unused.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::MethodError;

/// One layer as the allocator sees it.
#[derive(Debug, Clone)]
pub struct LayerCurve {
    /// Outputs `m`.
    pub out_features: usize,
    /// Inputs `n`.
    pub in_features: usize,
    /// `error[r]` for `r = 0..=max_rank` (weighted so errors of different layers compare).
    pub error: Vec<f64>,
}

impl LayerCurve {
    /// Parameters per rank.
    pub fn rank_cost(&self) -> usize {
        self.out_features + self.in_features
    }

    /// Dense parameters.
    pub fn dense_cost(&self) -> usize {
        self.out_features * self.in_features
    }

    /// Largest rank strictly cheaper than dense (`r·(m+n) < m·n`), capped by the curve.
    pub fn max_factored_rank(&self) -> usize {
        let limit = (self.dense_cost().saturating_sub(1)) / self.rank_cost().max(1);
        limit.min(self.error.len().saturating_sub(1))
    }
}

/// What a layer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Low rank `r`.
    Rank(usize),
    /// Kept dense.
    Dense,
}

impl Allocation {
    /// Parameters of this choice for a layer.
    pub fn cost(self, curve: &LayerCurve) -> usize {
        match self {
            Allocation::Rank(r) => r * curve.rank_cost(),
            Allocation::Dense => curve.dense_cost(),
        }
    }

    /// Error of this choice.
    pub fn error(self, curve: &LayerCurve) -> f64 {
        match self {
            Allocation::Rank(r) => curve.error[r.min(curve.error.len() - 1)],
            Allocation::Dense => 0.0,
        }
    }
}

#[derive(Debug, PartialEq)]
struct Step {
    efficiency: f64,
    layer: usize,
}

impl Eq for Step {}
impl PartialOrd for Step {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Step {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap on efficiency; ties go to the lower layer index (deterministic).
        self.efficiency.total_cmp(&other.efficiency).then(other.layer.cmp(&self.layer))
    }
}

fn next_step(curve: &LayerCurve, current: Allocation) -> Option<(Allocation, usize, f64)> {
    let Allocation::Rank(r) = current else { return None };
    let rmax = curve.max_factored_rank();
    let (next, cost) = if r < rmax {
        (Allocation::Rank(r + 1), curve.rank_cost())
    } else {
        (Allocation::Dense, curve.dense_cost() - r * curve.rank_cost())
    };
    let gain = (current.error(curve) - next.error(curve)).max(0.0);
    Some((next, cost, gain / cost.max(1) as f64))
}

/// Greedy allocation of `budget` parameters; every layer gets at least `min(min_rank, max factored rank)`.
pub fn allocate_greedy(curves: &[LayerCurve], budget: usize, min_rank: usize) -> Result<Vec<Allocation>, MethodError> {
    let mut state: Vec<Allocation> = curves
        .iter()
        .map(|c| {
            let rmax = c.max_factored_rank();
            if rmax == 0 {
                Allocation::Dense
            } else {
                Allocation::Rank(min_rank.clamp(1, rmax))
            }
        })
        .collect();
    let mut used: usize = state.iter().zip(curves).map(|(a, c)| a.cost(c)).sum();
    if used > budget {
        return Err(MethodError::Budget(format!(
            "the budget of {budget} parameters is below the minimum of {used} (rank {min_rank} in every layer)"
        )));
    }
    let mut heap = BinaryHeap::new();
    for (i, c) in curves.iter().enumerate() {
        if let Some((_, _, eff)) = next_step(c, state[i]) {
            heap.push(Step { efficiency: eff, layer: i });
        }
    }
    while let Some(Step { layer, .. }) = heap.pop() {
        let c = &curves[layer];
        let Some((next, cost, _)) = next_step(c, state[layer]) else { continue };
        if used + cost > budget {
            // A rank step of this layer no longer fits, so none of its later steps fits either,
            // except the switch to dense, which may be a smaller step.
            continue;
        }
        used += cost;
        state[layer] = next;
        if let Some((_, _, eff)) = next_step(c, next) {
            heap.push(Step { efficiency: eff, layer });
        }
    }
    Ok(state)
}

/// Uniform allocation: the same fraction of every layer's dense parameters (`r = ⌊keep·mn/(m+n)⌋`),
/// then the leftover budget is filled one rank at a time in layer order (so the budget is met
/// to within one rank step as for the greedy).
pub fn allocate_uniform(curves: &[LayerCurve], budget: usize) -> Result<Vec<Allocation>, MethodError> {
    let dense: usize = curves.iter().map(LayerCurve::dense_cost).sum();
    let keep = budget as f64 / dense.max(1) as f64;
    let mut state: Vec<Allocation> = curves
        .iter()
        .map(|c| {
            let r = ((keep * c.dense_cost() as f64) / c.rank_cost() as f64).floor() as usize;
            if r > c.max_factored_rank() {
                Allocation::Dense
            } else {
                Allocation::Rank(r.max(1))
            }
        })
        .collect();
    let mut used: usize = state.iter().zip(curves).map(|(a, c)| a.cost(c)).sum();
    if used > budget {
        return Err(MethodError::Budget(format!(
            "the budget of {budget} parameters is below the minimum uniform allocation ({used})"
        )));
    }
    loop {
        let mut progressed = false;
        for (i, c) in curves.iter().enumerate() {
            if let Some((next, cost, _)) = next_step(c, state[i]) {
                if used + cost <= budget && matches!(next, Allocation::Rank(_)) {
                    used += cost;
                    state[i] = next;
                    progressed = true;
                }
            }
        }
        if !progressed {
            break;
        }
    }
    Ok(state)
}

/// Total parameters of an allocation.
pub fn total_cost(curves: &[LayerCurve], alloc: &[Allocation]) -> usize {
    alloc.iter().zip(curves).map(|(a, c)| a.cost(c)).sum()
}

/// How ranks are allocated: the policy and the ranks reserved per factored layer.
#[derive(Debug, Clone, Copy)]
pub struct AllocationRequest {
    /// Block-linear parameter budget.
    pub budget: usize,
    /// Uniform fraction per layer instead of the greedy.
    pub uniform: bool,
    /// Extra ranks per factored layer, reserved from the budget before the allocation and added
    /// after it (layers whose rank then reaches dense cost become dense).
    pub residual_rank: usize,
}

/// The allocation of [`allocate_greedy`] (or [`allocate_uniform`]) under `request`, with the
/// residual ranks added and, where dense switches overshoot the budget, ranks given back from
/// the layers where they cost the least error.
pub fn allocate_with_residual_ranks(
    curves: &[LayerCurve],
    request: AllocationRequest,
) -> Result<Vec<Allocation>, MethodError> {
    let residual_rank = request.residual_rank;
    let reserve: usize = if residual_rank > 0 { curves.iter().map(|c| residual_rank * c.rank_cost()).sum() } else { 0 };
    let alloc_budget = request.budget.checked_sub(reserve).ok_or_else(|| {
        MethodError::Budget(format!("--residual-rank {residual_rank} needs {reserve} parameters, more than the budget"))
    })?;
    let mut alloc = if request.uniform {
        allocate_uniform(curves, alloc_budget)?
    } else {
        allocate_greedy(curves, alloc_budget, 1)?
    };
    if residual_rank > 0 {
        for (a, c) in alloc.iter_mut().zip(curves) {
            if let Allocation::Rank(r) = *a {
                let nr = r + residual_rank;
                *a = if nr > c.max_factored_rank() { Allocation::Dense } else { Allocation::Rank(nr) };
            }
        }
        // Dense switches may overshoot: give back ranks from the cheapest-error layers.
        while total_cost(curves, &alloc) > request.budget {
            let worst = alloc
                .iter()
                .enumerate()
                .filter_map(|(i, a)| match a {
                    Allocation::Rank(r) if *r > 1 => Some((i, curves[i].error[r - 1] - curves[i].error[*r])),
                    _ => None,
                })
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match worst {
                Some((i, _)) => {
                    if let Allocation::Rank(r) = alloc[i] {
                        alloc[i] = Allocation::Rank(r - 1);
                    }
                }
                None => return Err(MethodError::Budget("cannot fit the residual ranks in the budget".into())),
            }
        }
    }
    Ok(alloc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(m: usize, n: usize, sigma2: &[f64]) -> LayerCurve {
        let mut error = vec![0.0; sigma2.len() + 1];
        for r in (0..sigma2.len()).rev() {
            error[r] = error[r + 1] + sigma2[r];
        }
        LayerCurve { out_features: m, in_features: n, error }
    }

    /// Exhaustive search over all allocations of a tiny separable problem.
    fn brute_force(curves: &[LayerCurve], budget: usize) -> f64 {
        fn rec(curves: &[LayerCurve], i: usize, left: isize) -> f64 {
            if i == curves.len() {
                return 0.0;
            }
            let c = &curves[i];
            let mut best = f64::INFINITY;
            let mut opts: Vec<Allocation> = (1..=c.max_factored_rank()).map(Allocation::Rank).collect();
            opts.push(Allocation::Dense);
            for a in opts {
                let cost = a.cost(c) as isize;
                if cost <= left {
                    best = best.min(a.error(c) + rec(curves, i + 1, left - cost));
                }
            }
            best
        }
        rec(curves, 0, budget as isize)
    }

    #[test]
    fn greedy_is_optimal_on_separable_convex_problem_when_budget_is_filled() {
        // Equal step costs (m + n = 16, dense switch 64 − 3·16 = 16) and convex curves: the
        // greedy must find the exact optimum for every budget that is a multiple of the step.
        let curves = vec![
            curve(8, 8, &[9.0, 4.0, 1.0, 0.5, 0.1, 0.05, 0.01, 0.01]),
            curve(8, 8, &[5.0, 3.0, 2.5, 0.9, 0.3, 0.1, 0.0, 0.0]),
            curve(8, 8, &[20.0, 0.3, 0.2, 0.1, 0.01, 0.0, 0.0, 0.0]),
        ];
        for budget in (3..=12).map(|k| 16 * k) {
            let alloc = allocate_greedy(&curves, budget, 1).unwrap();
            let cost = total_cost(&curves, &alloc);
            assert!(cost <= budget);
            assert!(budget - cost < 16, "budget {budget}: unused {}", budget - cost);
            let err: f64 = alloc.iter().zip(&curves).map(|(a, c)| a.error(c)).sum();
            let best = brute_force(&curves, budget);
            assert!((err - best).abs() < 1e-12, "budget {budget}: greedy {err} vs optimum {best}");
        }
    }

    #[test]
    fn budget_met_within_one_step_and_dense_switch() {
        let curves = vec![curve(6, 3, &[5.0, 1.0, 0.5]), curve(3, 8, &[2.0, 1.5, 1.0])];
        let dense: usize = curves.iter().map(LayerCurve::dense_cost).sum();
        for budget in 20..=dense {
            let alloc = allocate_greedy(&curves, budget, 1).unwrap();
            let cost = total_cost(&curves, &alloc);
            assert!(cost <= budget);
            let min_step = curves
                .iter()
                .zip(&alloc)
                .filter_map(|(c, a)| next_step(c, *a).map(|(_, cost, _)| cost))
                .min()
                .unwrap_or(usize::MAX);
            assert!(budget - cost < min_step, "budget {budget}: cost {cost}, smallest step {min_step}");
        }
        assert_eq!(allocate_greedy(&curves, dense, 1).unwrap(), vec![Allocation::Dense, Allocation::Dense]);
        assert!(allocate_greedy(&curves, 5, 1).is_err());
    }
}
