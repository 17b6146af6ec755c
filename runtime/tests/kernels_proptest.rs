//! Property tests: every SIMD backend of `Backend::available()` (AVX2 on x86-64, NEON on
//! aarch64) against the scalar backend, on random shapes biased towards the edges of the SIMD
//! blocking — 1, just below / at / just above the micro-tile (6 × 16, half panels of 8 and 4
//! lanes), the k block (256), the row and column blocks (264, 256) and the sparse kernel's token
//! and row blocks — with f32/f16/bf16 weights, both B layouts, strided operands, every epilogue,
//! low-rank (+ sparse) chains as the session runs them, and the row kernels. Operand buffers
//! have exactly the length their shape and stride need; padding between rows must keep its bits.
//!
//! Tolerance. With `u = 2⁻²⁴` (half an f32 ulp, `f32::EPSILON / 2`): any f32 evaluation of a
//! dot product of `k` terms — any summation order, blocked or not, with or without FMA — is
//! within `γ_k·S ≤ (k + 2)·u·S` of the exact value, where `S = Σ|a_p·b_p|` (Higham, *Accuracy and
//! Stability of Numerical Algorithms*, §3.1); f16 and bf16 weights convert to f32 exactly. Each
//! later f32 operation adds one rounding of its result, GELU is 1.13-Lipschitz, and both GELU
//! implementations are within `1e-6·(1 + |x|)` of the exact one (tested in `kernels.rs` and
//! `scalar::tests`). Each test computes, per output and in f64, this bound `E` on the error of
//! *one* implementation from the exact value and asserts `|simd − scalar| ≤ 2E` (both are within
//! `E` of the same value). For a plain product that is `2(k + 2)·u·S ≈ k·f32::EPSILON·S`. A real
//! bug (a lost tail column, a wrong stride, a skipped k block) moves results by O(S), far more.
//!
//! The GEMM property also checks that `gemm_parallel` on 3 threads is bit-identical to `gemm`.

use std::sync::OnceLock;

use factorvit::kernels::{
    add_scaled, gelu, gemm, gemm_parallel, layer_norm, softmax_rows, sparse_add, BLayout, Backend, Epilogue, Gemm,
    MatB, Rows, RowsMut, Scratch, SparseIndices, WeightSlice,
};
use factorvit::parallel::Exec;
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const U: f64 = 1.0 / (1u64 << 24) as f64;

// Blocking of the SIMD GEMM driver (`runtime/src/kernels/driver.rs`; not exported).
const MR: usize = 6;
const NR: usize = 16;
const KC: usize = 256;
const MC: usize = 264;
const NC: usize = 256;
/// Largest multiply-add count of one generated GEMM (keeps each case well under a millisecond).
const MAX_MACS: usize = 600_000;

// ---------------------------------------------------------------------------------------------
// Shapes.

/// `p - 1`, `p` or `p + 1` (at least 1) for a boundary `p` of `points`.
fn around(points: &'static [usize]) -> impl Strategy<Value = usize> {
    prop::sample::select(points).prop_flat_map(|p| p.saturating_sub(1).max(1)..=p + 1)
}

/// Rows of A and C: tile multiples (6, 12, 18; 4 and 8 for NEON's tails), the row block (264).
fn dim_m() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1usize..=24, 4 => around(&[1, 4, 8, MR, 2 * MR, 3 * MR]), 1 => around(&[MC])]
}

/// Output columns: vector widths (4, 8), the panel (16) and its multiples, the column block.
fn dim_n() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1usize..=40, 4 => around(&[1, 4, 8, NR, 2 * NR, 3 * NR]), 1 => around(&[NC])]
}

/// Reduction length: vector widths of the matrix-vector path (4, 8), one and two k blocks.
fn dim_k() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1usize..=40, 4 => around(&[1, 4, 8, 16, 32]), 1 => around(&[KC, 2 * KC])]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dt {
    F32,
    F16,
    BF16,
}

fn dtype() -> impl Strategy<Value = Dt> {
    prop_oneof![Just(Dt::F32), Just(Dt::F16), Just(Dt::BF16)]
}

fn layout() -> impl Strategy<Value = BLayout> {
    prop_oneof![Just(BLayout::NK), Just(BLayout::KN)]
}

/// Bias, GELU, accumulate, scale (scale only with accumulate).
#[derive(Clone, Copy, Debug)]
struct Ep {
    bias: bool,
    gelu: bool,
    accumulate: bool,
    scale: bool,
}

fn ep() -> impl Strategy<Value = Ep> {
    (any::<bool>(), any::<bool>(), 0usize..3).prop_map(|(bias, gelu, acc)| Ep {
        bias,
        gelu,
        accumulate: acc > 0,
        scale: acc == 2,
    })
}

// ---------------------------------------------------------------------------------------------
// Data.

struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Elements a row-major `rows × cols` block at stride `ld` spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}
impl Store {
    fn new(dt: Dt, v: &[f32]) -> Store {
        match dt {
            Dt::F32 => Store::F32(v.to_vec()),
            Dt::F16 => Store::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            Dt::BF16 => Store::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
        }
    }
    fn slice(&self) -> WeightSlice<'_> {
        match self {
            Store::F32(v) => WeightSlice::F32(v),
            Store::F16(v) => WeightSlice::F16(v),
            Store::BF16(v) => WeightSlice::BF16(v),
        }
    }
}

/// A `k × n` B operand in `layout` with row padding `pad`, on an exact-size buffer.
fn make_b(rng: &mut Rng, dt: Dt, k: usize, n: usize, layout: BLayout, pad: usize) -> (Store, usize) {
    let (rows, cols) = if layout == BLayout::NK { (n, k) } else { (k, n) };
    let ld = cols + pad;
    (Store::new(dt, &rng.vec(span(rows, cols, ld), 1.0)), ld)
}

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// The backends compared with the scalar one.
fn simd_backends() -> Vec<Backend> {
    Backend::available().into_iter().filter(|&b| b != Backend::Scalar).collect()
}

fn exec3() -> &'static Exec {
    static EXEC: OnceLock<Exec> = OnceLock::new();
    EXEC.get_or_init(|| Exec::new(3))
}

/// Error bound of the epilogue applied to a value `v` (exact, before the bias) known to within
/// `e` by one implementation; returns the final exact value and the final bound.
fn epilogue_bound(mut v: f64, mut e: f64, bias: Option<f64>, gelu: bool, acc: Option<(f64, f64)>) -> (f64, f64) {
    if let Some(b) = bias {
        v += b;
        e += U * v.abs();
    }
    if gelu {
        e = 1.13 * e + 1e-6 * (1.0 + v.abs());
        v = gelu64(v);
    }
    if let Some((c0, s)) = acc {
        // One rounding of the product, one of the sum.
        e = s.abs() * e + 2.0 * U * (c0.abs() + (s * v).abs());
        v = c0 + s * v;
    }
    (v, e)
}

fn check_padding(
    name: &str,
    got: &[f32],
    init: &[f32],
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<(), TestCaseError> {
    for i in 0..rows {
        for j in cols..ld {
            let idx = i * ld + j;
            if idx < got.len() {
                prop_assert_eq!(got[idx].to_bits(), init[idx].to_bits(), "{}: padding ({}, {}) written", name, i, j);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// GEMM.

#[derive(Clone, Copy, Debug)]
struct GemmCase {
    m: usize,
    n: usize,
    k: usize,
    layout: BLayout,
    dt: Dt,
    /// Row padding of A, B, C.
    pads: (usize, usize, usize),
    ep: Ep,
    seed: u64,
}

fn gemm_case() -> impl Strategy<Value = GemmCase> {
    (dim_m(), dim_n(), dim_k(), layout(), dtype(), (0usize..3, 0usize..3, 0usize..3), ep(), any::<u64>()).prop_map(
        |(m, n, k, layout, dt, pads, ep, seed)| {
            // Bound the work: shrink m (never below 1) when n·k is large.
            let m = m.min((MAX_MACS / (n * k)).max(1));
            GemmCase { m, n, k, layout, dt, pads, ep, seed }
        },
    )
}

fn check_gemm(cs: &GemmCase) -> Result<(), TestCaseError> {
    let GemmCase { m, n, k, layout, dt, pads: (pa, pb, pc), ep, seed } = *cs;
    let mut rng = Rng::new(seed);
    let (lda, ldc) = (k + pa, n + pc);
    let a = rng.vec(span(m, k, lda), 1.0);
    let (b, ldb) = make_b(&mut rng, dt, k, n, layout, pb);
    let c0 = rng.vec(span(m, n, ldc), 2.0);
    let (bias, scale) = (rng.vec(n, 0.5), rng.vec(n, 1.5));
    let matb = MatB { data: b.slice(), k, n, layout, ld: ldb };
    let epilogue = Epilogue {
        bias: ep.bias.then_some(&bias[..]),
        gelu: ep.gelu,
        accumulate: ep.accumulate,
        scale: (ep.accumulate && ep.scale).then_some(&scale[..]),
    };
    let run = |backend: Backend| {
        let mut c = c0.clone();
        gemm(backend, &mut Scratch::new(backend), Gemm { m, a: &a, lda, b: matb, c: &mut c, ldc, epilogue });
        c
    };
    let scalar = run(Backend::Scalar);
    for backend in simd_backends() {
        let got = run(backend);
        check_padding("gemm", &got, &c0, m, n, ldc)?;
        for i in 0..m {
            for j in 0..n {
                let (mut dot, mut s) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let t = a[i * lda + p] as f64 * matb.at(p, j) as f64;
                    dot += t;
                    s += t.abs();
                }
                let acc = ep.accumulate.then(|| (c0[i * ldc + j] as f64, if ep.scale { scale[j] as f64 } else { 1.0 }));
                let (_, e) =
                    epilogue_bound(dot, (k as f64 + 2.0) * U * s, ep.bias.then(|| bias[j] as f64), ep.gelu, acc);
                let (g, r) = (got[i * ldc + j], scalar[i * ldc + j]);
                prop_assert!(
                    (g as f64 - r as f64).abs() <= 2.0 * e + 1e-30,
                    "{:?}: C[{}][{}] = {}, scalar {} (bound {:e})",
                    backend,
                    i,
                    j,
                    g,
                    r,
                    2.0 * e
                );
            }
        }
        // Three threads split the output (by columns or rows): bit-identical to one.
        let mut scratch: Vec<Scratch> = (0..3).map(|_| Scratch::new(backend)).collect();
        let mut c = c0.clone();
        gemm_parallel(backend, exec3(), &mut scratch, Gemm { m, a: &a, lda, b: matb, c: &mut c, ldc, epilogue });
        prop_assert!(
            c.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{:?}: gemm_parallel differs",
            backend
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Low-rank (+ sparse) chains: `y = (x·Vᵀ)·Uᵀ + b (+ x·Sᵀ)`, then GELU / scaled accumulation,
// in the order the session applies them.

#[derive(Clone, Copy, Debug)]
struct ChainCase {
    tokens: usize,
    out: usize,
    inp: usize,
    rank: usize,
    dt: Dt,
    /// Nonzeros per sparse row at most, and 16-bit indices; `None`: no sparse term.
    sparse: Option<(usize, bool)>,
    ep: Ep,
    seed: u64,
}

fn chain_case() -> impl Strategy<Value = ChainCase> {
    (
        prop_oneof![2 => 1usize..=20, 1 => around(&[1, MR, 2 * MR, 8, 64])],
        dim_n(),
        prop_oneof![2 => 1usize..=48, 1 => around(&[8, NR, KC])],
        prop_oneof![2 => 1usize..=20, 1 => around(&[1, 4, 8, NR])],
        dtype(),
        prop::option::of((0usize..20, any::<bool>())),
        ep(),
        any::<u64>(),
    )
        .prop_map(|(tokens, out, inp, rank, dt, sparse, ep, seed)| {
            let tokens = tokens.min((MAX_MACS / ((out + inp) * rank)).max(1));
            ChainCase { tokens, out, inp, rank, dt, sparse, ep, seed }
        })
}

/// A random CSR matrix that owns its storage.
struct Csr {
    row_ptr: Vec<u32>,
    cols: Vec<u32>,
    cols16: Vec<u16>,
    vals: Store,
}

/// A random `rows × cols` CSR matrix with up to `per_row` nonzeros per row (duplicate column
/// indices allowed, some rows empty).
fn make_csr(rng: &mut Rng, dt: Dt, rows: usize, cols: usize, per_row: usize) -> Csr {
    let mut row_ptr = vec![0u32];
    let mut idx = Vec::new();
    for j in 0..rows {
        let count = if j % 7 == 3 { 0 } else { rng.below(per_row + 1) };
        idx.extend((0..count).map(|_| rng.below(cols) as u32));
        row_ptr.push(idx.len() as u32);
    }
    let vals = Store::new(dt, &rng.vec(idx.len(), 1.0));
    Csr { row_ptr, cols16: idx.iter().map(|&c| c as u16).collect(), cols: idx, vals }
}

impl Csr {
    /// The kernel operand, with 16- or 32-bit indices.
    fn view(&self, u16s: bool) -> factorvit::kernels::Csr<'_> {
        factorvit::kernels::Csr { row_ptr: &self.row_ptr, col_idx: self.indices(u16s), values: self.vals.slice() }
    }
    fn indices(&self, u16s: bool) -> SparseIndices<'_> {
        if u16s {
            SparseIndices::U16(&self.cols16)
        } else {
            SparseIndices::U32(&self.cols)
        }
    }
}

fn check_chain(cs: &ChainCase) -> Result<(), TestCaseError> {
    let ChainCase { tokens, out, inp, rank, dt, sparse, ep, seed } = *cs;
    let mut rng = Rng::new(seed);
    let x = rng.vec(tokens * inp, 1.0);
    let v = Store::new(dt, &rng.vec(rank * inp, 1.0)); // [rank, inp]
    let u = Store::new(dt, &rng.vec(out * rank, 1.0)); // [out, rank]
    let bias = rng.vec(out, 0.5);
    let scale = rng.vec(out, 1.5);
    let c0 = rng.vec(tokens * out, 2.0);
    let csr = sparse.map(|(per_row, _)| make_csr(&mut rng, dt, out, inp, per_row));
    let bias_opt = ep.bias.then_some(&bias[..]);
    let scale_opt = (ep.accumulate && ep.scale).then_some(&scale[..]);
    let run = |backend: Backend| {
        let mut scratch = Scratch::new(backend);
        let mut tmp = vec![0.0f32; tokens * rank];
        let vb = MatB::weight(v.slice(), rank, inp);
        let ub = MatB::weight(u.slice(), out, rank);
        gemm(
            backend,
            &mut scratch,
            Gemm { m: tokens, a: &x, lda: inp, b: vb, c: &mut tmp, ldc: rank, epilogue: Epilogue::default() },
        );
        let mut y = c0.clone();
        match (&csr, sparse) {
            (Some(s), Some((_, u16s))) => {
                let plain = !ep.gelu && !ep.accumulate;
                let mut lin = vec![0.0f32; tokens * out];
                let dst = if plain { &mut y } else { &mut lin };
                let e = Epilogue { bias: bias_opt, ..Epilogue::default() };
                gemm(
                    backend,
                    &mut scratch,
                    Gemm { m: tokens, a: &tmp, lda: rank, b: ub, c: &mut dst[..], ldc: out, epilogue: e },
                );
                let mut xt = vec![0.0f32; inp * tokens];
                sparse_add(
                    backend,
                    s.view(u16s),
                    Rows::new(&x, tokens, inp, inp),
                    RowsMut::new(&mut dst[..], tokens, s.row_ptr.len() - 1, out),
                    &mut xt,
                );
                if !plain {
                    if ep.gelu {
                        gelu(backend, &mut lin);
                    }
                    if ep.accumulate {
                        add_scaled(backend, &mut y, &lin, scale_opt);
                    } else {
                        y.copy_from_slice(&lin);
                    }
                }
            }
            _ => {
                let e = Epilogue { bias: bias_opt, gelu: ep.gelu, accumulate: ep.accumulate, scale: scale_opt };
                gemm(
                    backend,
                    &mut scratch,
                    Gemm { m: tokens, a: &tmp, lda: rank, b: ub, c: &mut y, ldc: out, epilogue: e },
                );
            }
        }
        y
    };
    let scalar = run(Backend::Scalar);
    let (vs, us) = (v.slice(), u.slice());
    for backend in simd_backends() {
        let got = run(backend);
        for t in 0..tokens {
            // t_r = x·V_r, known to each implementation within e1_r = (inp + 2)·u·Σ|x·V_r|.
            let (mut tr, mut e1) = (vec![0.0f64; rank], vec![0.0f64; rank]);
            for r in 0..rank {
                let (mut d, mut s) = (0.0, 0.0);
                for p in 0..inp {
                    let q = x[t * inp + p] as f64 * vs.get(r * inp + p) as f64;
                    d += q;
                    s += q.abs();
                }
                tr[r] = d;
                e1[r] = (inp as f64 + 2.0) * U * s;
            }
            for j in 0..out {
                // y_j = Σ_r t̂_r·U_jr: the inherited error Σ|U_jr|·e1_r plus the product's own
                // (rank + 2)·u·Σ|t̂_r·U_jr| with |t̂_r| ≤ |t_r| + e1_r.
                let (mut val, mut e) = (0.0f64, 0.0f64);
                for r in 0..rank {
                    let w = us.get(j * rank + r) as f64;
                    val += tr[r] * w;
                    e += w.abs() * e1[r] + (rank as f64 + 2.0) * U * (tr[r].abs() + e1[r]) * w.abs();
                }
                let acc = ep.accumulate.then(|| (c0[t * out + j] as f64, if ep.scale { scale[j] as f64 } else { 1.0 }));
                let bias_j = ep.bias.then(|| bias[j] as f64);
                let (_, bound) = match &csr {
                    Some(s) => {
                        // Bias in the GEMM, then the sparse sum (nnz terms) added: one more
                        // rounding; then GELU / accumulation.
                        let (mut val, mut e) = epilogue_bound(val, e, bias_j, false, None);
                        let (lo, hi) = (s.row_ptr[j] as usize, s.row_ptr[j + 1] as usize);
                        let (mut sv, mut sa) = (0.0f64, 0.0f64);
                        for q in lo..hi {
                            let p = s.vals.slice().get(q) as f64 * x[t * inp + s.cols[q] as usize] as f64;
                            sv += p;
                            sa += p.abs();
                        }
                        val += sv;
                        e += ((hi - lo) as f64 + 2.0) * U * sa + U * val.abs();
                        epilogue_bound(val, e, None, ep.gelu, acc)
                    }
                    None => epilogue_bound(val, e, bias_j, ep.gelu, acc),
                };
                let (g, r) = (got[t * out + j], scalar[t * out + j]);
                prop_assert!(
                    (g as f64 - r as f64).abs() <= 2.0 * bound + 1e-30,
                    "{:?}: y[{}][{}] = {}, scalar {} (bound {:e})",
                    backend,
                    t,
                    j,
                    g,
                    r,
                    2.0 * bound
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sparse add on its own: token counts around the gather / transposed switch (8) and the token
// blocks (32 NEON, 64 AVX2), row counts around the 16-row groups, nonzeros around the 8- and
// 16-wide gathers, strided X and Y.

#[derive(Clone, Copy, Debug)]
struct SparseCase {
    tokens: usize,
    rows: usize,
    cols: usize,
    per_row: usize,
    u16s: bool,
    dt: Dt,
    pads: (usize, usize),
    seed: u64,
}

fn sparse_case() -> impl Strategy<Value = SparseCase> {
    (
        prop_oneof![2 => 1usize..=80, 3 => around(&[1, 4, 8, 16, 32, 64])],
        prop_oneof![2 => 1usize..=40, 1 => around(&[4, 8, 16, 32])],
        prop_oneof![2 => 1usize..=70, 1 => around(&[8, 16])],
        prop_oneof![2 => 0usize..=20, 1 => around(&[8, 16, 32])],
        any::<bool>(),
        dtype(),
        (0usize..3, 0usize..3),
        any::<u64>(),
    )
        .prop_map(|(tokens, rows, cols, per_row, u16s, dt, pads, seed)| SparseCase {
            tokens,
            rows,
            cols,
            per_row,
            u16s,
            dt,
            pads,
            seed,
        })
}

fn check_sparse(cs: &SparseCase) -> Result<(), TestCaseError> {
    let SparseCase { tokens, rows, cols, per_row, u16s, dt, pads: (px, py), seed } = *cs;
    let mut rng = Rng::new(seed);
    let s = make_csr(&mut rng, dt, rows, cols, per_row);
    let (ldx, ldy) = (cols + px, rows + py);
    let x = rng.vec(span(tokens, cols, ldx), 1.0);
    let y0 = rng.vec(span(tokens, rows, ldy), 1.0);
    let run = |backend: Backend| {
        let mut y = y0.clone();
        let mut xt = vec![0.0f32; cols * tokens];
        sparse_add(
            backend,
            s.view(u16s),
            Rows::new(&x, tokens, cols, ldx),
            RowsMut::new(&mut y, tokens, s.row_ptr.len() - 1, ldy),
            &mut xt,
        );
        y
    };
    let scalar = run(Backend::Scalar);
    for backend in simd_backends() {
        let got = run(backend);
        check_padding("sparse_add", &got, &y0, tokens, rows, ldy)?;
        for t in 0..tokens {
            for j in 0..rows {
                let (lo, hi) = (s.row_ptr[j] as usize, s.row_ptr[j + 1] as usize);
                let (mut val, mut abs) = (y0[t * ldy + j] as f64, 0.0f64);
                for q in lo..hi {
                    let p = s.vals.slice().get(q) as f64 * x[t * ldx + s.cols[q] as usize] as f64;
                    val += p;
                    abs += p.abs();
                }
                // A sum of `nnz` products, then added to y: one more rounding.
                let e = ((hi - lo) as f64 + 2.0) * U * abs + U * val.abs();
                let (g, r) = (got[t * ldy + j], scalar[t * ldy + j]);
                prop_assert!(
                    (g as f64 - r as f64).abs() <= 2.0 * e + 1e-30,
                    "{:?}: y[{}][{}] = {}, scalar {}",
                    backend,
                    t,
                    j,
                    g,
                    r
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Row and element-wise kernels: lengths around the 8-lane (AVX2) / 4-lane (NEON) vectors and
// the 32-element unrolled sums.

#[derive(Clone, Copy, Debug)]
struct RowCase {
    rows: usize,
    dim: usize,
    pad: usize,
    /// Offset of the LayerNorm inputs relative to their spread (large offsets make the mean
    /// dominate the deviations: the bound grows with mean|x| / σ).
    offset: f32,
    softmax_scale: f32,
    /// Period of the `add_scaled` scale vector.
    period: usize,
    seed: u64,
}

fn row_case() -> impl Strategy<Value = RowCase> {
    (
        1usize..4,
        prop_oneof![2 => 1usize..=100, 3 => around(&[1, 4, 8, 16, 32, 64, 96])],
        0usize..3,
        -4.0f32..4.0,
        prop_oneof![Just(0.125f32), Just(1.0), 0.01f32..3.0],
        prop_oneof![Just(0usize), 1usize..40],
        any::<u64>(),
    )
        .prop_map(|(rows, dim, pad, offset, softmax_scale, period, seed)| RowCase {
            rows,
            dim,
            pad,
            offset,
            softmax_scale,
            period,
            seed,
        })
}

fn check_rows(cs: &RowCase) -> Result<(), TestCaseError> {
    let RowCase { rows, dim, pad, offset, softmax_scale, period, seed } = *cs;
    let mut rng = Rng::new(seed);
    let ld = dim + pad;
    let len = span(rows, dim, ld);
    let spread = 0.01 + rng.f().abs() * 4.0;
    let x: Vec<f32> = rng.vec(len, spread).iter().map(|v| v + offset * spread).collect();
    let (g, b) = (rng.vec(dim, 2.0), rng.vec(dim, 1.0));
    let out0 = rng.vec(len, 1.0);
    let s0 = rng.vec(len, 30.0);
    let v0 = rng.vec(len, 8.0);
    let period = if period == 0 { len.max(1) } else { period };
    let (ya, xa, sa) = (rng.vec(len, 1.0), rng.vec(len, 1.0), rng.vec(period, 2.0));
    let run = |backend: Backend| {
        let mut ln = out0.clone();
        layer_norm(backend, Rows::new(&x, rows, dim, ld), &g, &b, 1e-5, RowsMut::new(&mut ln, rows, dim, ld));
        let mut sm = s0.clone();
        softmax_rows(backend, rows, dim, &mut sm, ld, softmax_scale);
        let mut ge = v0.clone();
        gelu(backend, &mut ge);
        let mut y1 = ya.clone();
        add_scaled(backend, &mut y1, &xa, None);
        let mut y2 = ya.clone();
        add_scaled(backend, &mut y2, &xa, Some(&sa));
        (ln, sm, ge, y1, y2)
    };
    let scalar = run(Backend::Scalar);
    for backend in simd_backends() {
        let got = run(backend);
        check_padding("layer_norm", &got.0, &out0, rows, dim, ld)?;
        check_padding("softmax", &got.1, &s0, rows, dim, ld)?;
        for r in 0..rows {
            let row = &x[r * ld..r * ld + dim];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            let sd = (var + 1e-5).sqrt();
            let mean_abs = row.iter().map(|&v| (v as f64).abs()).sum::<f64>() / dim as f64;
            // LayerNorm: the f32 mean is off by ≤ dim·u·mean|x| (a sum of dim terms), which
            // shifts x̂ by that / σ; the variance (a sum of dim squares) has relative error
            // ≲ (dim + 2)·u, x̂ half of it; the affine step adds two roundings. Allowance
            // 2·(dim + 8)·u on each term.
            for i in 0..dim {
                let xhat = (row[i] as f64 - mean) / sd;
                let e = 2.0
                    * (dim as f64 + 8.0)
                    * U
                    * ((xhat.abs() + mean_abs / sd) * (g[i] as f64).abs() + (b[i] as f64).abs());
                let (gv, sv) = (got.0[r * ld + i] as f64, scalar.0[r * ld + i] as f64);
                prop_assert!(
                    (gv - sv).abs() <= 2.0 * e,
                    "{:?}: LayerNorm [{}][{}] {} vs scalar {}",
                    backend,
                    r,
                    i,
                    gv,
                    sv
                );
            }
            // Softmax: each exp within 3e-7 relative (tested in scalar::tests; the SIMD exp
            // shares the polynomial), its argument z = (x − max)·scale rounded twice (relative
            // error 2u·|z| of e^z), the exps' errors carried into the sum, the sum of dim terms
            // (dim·u), the reciprocal and the product (2u).
            let srow = &s0[r * ld..r * ld + dim];
            let max = srow.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let zs: Vec<f64> = srow.iter().map(|&v| (v as f64 - max) * softmax_scale as f64).collect();
            let total: f64 = zs.iter().map(|z| z.exp()).sum();
            for (i, z) in zs.iter().enumerate() {
                let want = z.exp() / total;
                let e = (6e-7 + 2.0 * U * z.abs() + (dim as f64 + 4.0) * U) * want + 1e-37;
                let (gv, sv) = (got.1[r * ld + i] as f64, scalar.1[r * ld + i] as f64);
                prop_assert!(
                    (gv - sv).abs() <= 2.0 * e,
                    "{:?}: softmax [{}][{}] {} vs scalar {}",
                    backend,
                    r,
                    i,
                    gv,
                    sv
                );
            }
        }
        for i in 0..len {
            // GELU: both within 1e-6·(1 + |x|) of the exact function.
            let e = 1e-6 * (1.0 + (v0[i] as f64).abs());
            prop_assert!(
                (got.2[i] as f64 - scalar.2[i] as f64).abs() <= 2.0 * e,
                "{:?}: gelu({}) = {} vs scalar {}",
                backend,
                v0[i],
                got.2[i],
                scalar.2[i]
            );
            // y + x and y + s·x: one rounding (two without FMA) of |y| + |s·x|.
            let e1 = 2.0 * U * ((ya[i] as f64).abs() + (xa[i] as f64).abs());
            prop_assert!((got.3[i] as f64 - scalar.3[i] as f64).abs() <= 2.0 * e1, "{:?}: add [{}]", backend, i);
            let sx = sa[i % period] as f64 * xa[i] as f64;
            let e2 = 2.0 * U * ((ya[i] as f64).abs() + sx.abs());
            prop_assert!((got.4[i] as f64 - scalar.4[i] as f64).abs() <= 2.0 * e2, "{:?}: scaled add [{}]", backend, i);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn gemm_simd_matches_scalar(cs in gemm_case()) {
        check_gemm(&cs)?;
    }

    #[test]
    fn low_rank_chain_simd_matches_scalar(cs in chain_case()) {
        check_chain(&cs)?;
    }

    #[test]
    fn sparse_add_simd_matches_scalar(cs in sparse_case()) {
        check_sparse(&cs)?;
    }

    #[test]
    fn row_kernels_simd_match_scalar(cs in row_case()) {
        check_rows(&cs)?;
    }
}

#[test]
fn a_simd_backend_is_compared_where_one_exists() {
    // On x86-64 with AVX2/FMA/F16C and on aarch64 the properties above compare a SIMD backend;
    // elsewhere they only run the scalar kernels.
    let simd = simd_backends();
    if cfg!(target_arch = "aarch64") {
        assert_eq!(simd, [Backend::Neon]);
    }
    // x86-64 with AVX-512 compares both the AVX2 and the AVX-512 backend.
    assert!(simd.len() <= 2);
}
