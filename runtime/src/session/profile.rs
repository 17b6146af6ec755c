//! Per-op profile of a session's runs: wall time per kind of operation, accumulated over the
//! runs made while profiling is on ([`Session::set_profiling`], [`Session::profile`]).
//!
//! Timing needs a clock, so it only exists with the `std` feature; without it the profile stays
//! empty. When profiling is off the cost is one branch per op (no clock is read).
//!
//! Attention is timed as a whole (wall time of the parallel section); its three parts (Q·Kᵀ,
//! softmax, P·V) are timed by each worker thread and the wall time is split between them in
//! proportion to the per-thread sums, so the parts always add up to the attention's wall time.

use super::Session;

/// A kind of operation of the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// im2col + patch-embedding GEMM, prefix tokens, position embeddings.
    PatchEmbed,
    /// The two LayerNorms of every block (residual stream into the linear inputs).
    Norm,
    /// The fused `qkv` linear.
    Qkv,
    /// Attention scores `Q·Kᵀ`, every head.
    AttnScores,
    /// Row softmax of the scores.
    Softmax,
    /// Attention output `P·V`, every head.
    AttnV,
    /// The attention output projection (with the residual add).
    Proj,
    /// `fc1` with its fused GELU.
    Fc1Gelu,
    /// `fc2` (with the residual add).
    Fc2,
    /// Final norm, pooling, `fc_norm` and the classifier heads.
    Head,
}

impl Op {
    /// Every op kind, in run order.
    pub const ALL: [Op; 10] = [
        Op::PatchEmbed,
        Op::Norm,
        Op::Qkv,
        Op::AttnScores,
        Op::Softmax,
        Op::AttnV,
        Op::Proj,
        Op::Fc1Gelu,
        Op::Fc2,
        Op::Head,
    ];

    /// Short name for reports (`snake_case`, stable: used as a JSON key).
    pub fn name(self) -> &'static str {
        match self {
            Op::PatchEmbed => "patch_embed",
            Op::Norm => "norm",
            Op::Qkv => "qkv",
            Op::AttnScores => "attn_scores",
            Op::Softmax => "softmax",
            Op::AttnV => "attn_v",
            Op::Proj => "proj",
            Op::Fc1Gelu => "fc1_gelu",
            Op::Fc2 => "fc2",
            Op::Head => "head",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Time per op kind accumulated over the profiled runs (see [`Session::set_profiling`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// Runs accumulated.
    pub runs: u64,
    /// Wall time of those runs, in nanoseconds (every op plus the time between ops).
    pub total_ns: u64,
    ns: [u64; Op::ALL.len()],
}

impl Profile {
    /// Nanoseconds spent in `op` over all profiled runs.
    pub fn ns(&self, op: Op) -> u64 {
        self.ns[op.index()]
    }

    /// Milliseconds per run spent in `op` (0 before any run).
    pub fn ms_per_run(&self, op: Op) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.ns(op) as f64 / 1e6 / self.runs as f64
        }
    }

    /// Fraction of the runs' wall time spent in `op` (0 before any run).
    pub fn share(&self, op: Op) -> f64 {
        if self.total_ns == 0 {
            0.0
        } else {
            self.ns(op) as f64 / self.total_ns as f64
        }
    }

    /// Nanoseconds of the runs not attributed to any op (bookkeeping between ops).
    pub fn other_ns(&self) -> u64 {
        self.total_ns.saturating_sub(self.ns.iter().sum())
    }

    fn add(&mut self, op: Op, ns: u64) {
        self.ns[op.index()] += ns;
    }
}

/// A point in time when profiling is on (nothing otherwise, and nothing without `std`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Stamp(#[cfg(feature = "std")] Option<std::time::Instant>);

impl Stamp {
    /// The current time if `on`.
    #[inline]
    pub(super) fn now_if(on: bool) -> Stamp {
        #[cfg(feature = "std")]
        {
            Stamp(on.then(std::time::Instant::now))
        }
        #[cfg(not(feature = "std"))]
        {
            let _ = on;
            Stamp()
        }
    }

    /// Nanoseconds since this stamp, resetting it to now (0 when profiling is off).
    #[inline]
    pub(super) fn lap(&mut self) -> u64 {
        #[cfg(feature = "std")]
        if let Some(t) = self.0 {
            let now = std::time::Instant::now();
            self.0 = Some(now);
            return now.duration_since(t).as_nanos() as u64;
        }
        0
    }
}

/// The profiling state of a session.
#[derive(Clone, Debug, Default)]
pub(super) struct Profiler {
    pub(super) on: bool,
    pub(super) profile: Profile,
}

impl Profiler {
    /// A stamp for the next lap (empty when off).
    #[inline]
    pub(super) fn start(&self) -> Stamp {
        Stamp::now_if(self.on)
    }

    /// Adds the time since `stamp` to `op` and restarts `stamp`.
    #[inline]
    pub(super) fn lap(&mut self, op: Op, stamp: &mut Stamp) {
        if self.on {
            let ns = stamp.lap();
            self.profile.add(op, ns);
        }
    }

    /// Adds the attention's wall time since `stamp`, split between scores, softmax and P·V in
    /// proportion to the per-thread sums `parts`.
    pub(super) fn lap_attention(&mut self, stamp: &mut Stamp, parts: [u64; 3]) {
        if !self.on {
            return;
        }
        let wall = stamp.lap();
        let sum: u64 = parts.iter().sum();
        let ops = [Op::AttnScores, Op::Softmax, Op::AttnV];
        if sum == 0 {
            self.profile.add(Op::AttnScores, wall);
            return;
        }
        let mut given = 0;
        for (i, (&op, &p)) in ops.iter().zip(&parts).enumerate() {
            let share = if i + 1 == ops.len() { wall - given } else { (wall as u128 * p as u128 / sum as u128) as u64 };
            given += share;
            self.profile.add(op, share);
        }
    }

    /// Records one finished run that started at `stamp`.
    pub(super) fn end_run(&mut self, stamp: &mut Stamp) {
        if self.on {
            self.profile.total_ns += stamp.lap();
            self.profile.runs += 1;
        }
    }
}

impl Session<'_, '_> {
    /// Turns per-op profiling of [`Session::run`] on or off (off by default). Turning it on
    /// clears the accumulated [`Session::profile`]. Profiling reads a clock around every op; the
    /// outputs are the same with it on or off. Without the `std` feature there is no clock and
    /// the profile stays empty.
    pub fn set_profiling(&mut self, on: bool) {
        if on && !self.profiler.on {
            self.profiler.profile = Profile::default();
        }
        self.profiler.on = on;
    }

    /// Whether profiling is on.
    pub fn profiling(&self) -> bool {
        self.profiler.on
    }

    /// The time per op kind accumulated over the runs made while profiling was on.
    ///
    /// ```
    /// use factorvit::session::Op;
    /// let model = factorvit::Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.fvit")).unwrap();
    /// let mut session = model.session(Default::default()).unwrap();
    /// session.set_profiling(true);
    /// session.run(&vec![0.25f32; 3 * 8 * 8]).unwrap();
    /// let p = session.profile();
    /// assert_eq!(p.runs, 1);
    /// assert!(Op::ALL.iter().map(|&op| p.ns(op)).sum::<u64>() <= p.total_ns);
    /// ```
    pub fn profile(&self) -> &Profile {
        &self.profiler.profile
    }
}
