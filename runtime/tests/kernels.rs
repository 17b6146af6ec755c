//! Kernel tests: every backend of `Backend::available()` against a naive f64 reference and
//! against the scalar backend, on shapes that are not multiples of any tile, all weight dtypes,
//! both layouts, strided operands and every epilogue combination.
//!
//! Tolerances are error bounds, not magic numbers. A dot product of `k` terms accumulated in
//! f32 (in any order, with or without FMA) satisfies `|fl(Σ a·b) − Σ a·b| ≤ γ_k Σ|a||b|` with
//! `γ_k ≈ k·u`, `u = 2⁻²⁴`; we allow `2(k + 2)·u·Σ|a||b|`. Each later f32 operation of the
//! epilogue adds one rounding (relative `u`) of its result, GELU's derivative is below 1.13 and
//! the A&S erf approximation adds at most `1e-6·(1 + |x|)` (see `scalar::erf`'s test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use factorvit::kernels::{
    self, add_scaled, gelu, gemm, gemm_parallel, layer_norm, softmax_rows, sparse_add, BLayout, Backend, Csr, Epilogue,
    Gemm, MatB, QuantI8, Rows, RowsMut, Scratch, SparseIndices, WeightSlice,
};
use factorvit::parallel::Exec;
use half::{bf16, f16};

// ---------------------------------------------------------------------------------------------
// Allocation counting (per thread, so that concurrently running tests do not interfere).

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread-local
// `Cell` without destructor, so touching it never allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCS.with(|c| c.get())
}

// ---------------------------------------------------------------------------------------------
// Helpers.

const U: f64 = 1.0 / (1u64 << 24) as f64;

struct Rng(u64);
impl Rng {
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

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dt {
    F32,
    F16,
    BF16,
    /// Int8 with one scale per output channel.
    I8,
    /// Int8 without scales (a unit scale, as a `U` whose column scales were folded into `V`).
    I8Unit,
}

enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I8(Vec<i8>, Option<Vec<f32>>),
}
impl Store {
    /// `v` (values in [-1, 1]) stored as `dt`; int8 as `round(127·v)` with channel `c`'s scale
    /// `(1 + c mod 5) / 381` (`channels` output channels), or no scale for [`Dt::I8Unit`].
    fn new(dt: Dt, v: &[f32], channels: usize) -> Store {
        let q = || v.iter().map(|&x| (x * 127.0).round().clamp(-127.0, 127.0) as i8).collect();
        match dt {
            Dt::F32 => Store::F32(v.to_vec()),
            Dt::F16 => Store::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            Dt::BF16 => Store::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            Dt::I8 => Store::I8(q(), Some((0..channels).map(|c| (1 + c % 5) as f32 / 381.0).collect())),
            Dt::I8Unit => Store::I8(q(), None),
        }
    }
    fn slice(&self) -> WeightSlice<'_> {
        match self {
            Store::F32(v) => WeightSlice::F32(v),
            Store::F16(v) => WeightSlice::F16(v),
            Store::BF16(v) => WeightSlice::BF16(v),
            Store::I8(v, s) => WeightSlice::I8(QuantI8 { values: v, scales: s.as_deref() }),
        }
    }
    /// Element `i` of output channel `c` as the weight it stands for (the test's own decoding).
    fn value(&self, i: usize, c: usize) -> f64 {
        match self {
            Store::F32(v) => v[i] as f64,
            Store::F16(v) => v[i].to_f64(),
            Store::BF16(v) => v[i].to_f64(),
            Store::I8(v, s) => v[i] as f64 * s.as_ref().map_or(1.0, |s| s[c] as f64),
        }
    }
}

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    layout: BLayout,
    dt: Dt,
    /// Extra stride padding of A, B, C.
    pad: usize,
    bias: bool,
    gelu: bool,
    accumulate: bool,
    scale: bool,
}

struct Data {
    a: Vec<f32>,
    lda: usize,
    b: Store,
    ldb: usize,
    c0: Vec<f32>,
    ldc: usize,
    bias: Vec<f32>,
    scale: Vec<f32>,
}

fn make(case: &Case, rng: &mut Rng) -> Data {
    let Case { m, n, k, pad, .. } = *case;
    let lda = k + pad;
    let ldc = n + pad;
    let (brows, bcols) = if case.layout == BLayout::NK { (n, k) } else { (k, n) };
    let ldb = bcols + pad;
    let a = rng.vec(m.max(1) * lda, 1.0);
    let b = Store::new(case.dt, &rng.vec(brows.max(1) * ldb, 1.0), n);
    let c0 = rng.vec(m.max(1) * ldc, 2.0);
    Data { a, lda, b, ldb, c0, ldc, bias: rng.vec(n, 0.5), scale: rng.vec(n, 1.5) }
}

fn epilogue<'a>(case: &Case, d: &'a Data) -> Epilogue<'a> {
    Epilogue {
        bias: case.bias.then_some(&d.bias[..]),
        gelu: case.gelu,
        accumulate: case.accumulate,
        scale: (case.accumulate && case.scale).then_some(&d.scale[..]),
    }
}

fn matb<'a>(case: &Case, d: &'a Data) -> MatB<'a> {
    MatB { data: d.b.slice(), k: case.k, n: case.n, layout: case.layout, ld: d.ldb }
}

fn run(backend: Backend, scratch: &mut Scratch, case: &Case, d: &Data) -> Vec<f32> {
    let mut c = d.c0.clone();
    gemm(
        backend,
        scratch,
        Gemm { m: case.m, a: &d.a, lda: d.lda, b: matb(case, d), c: &mut c, ldc: d.ldc, epilogue: epilogue(case, d) },
    );
    c
}

/// Reference value and error bound of element (i, j).
fn reference(case: &Case, d: &Data, i: usize, j: usize) -> (f64, f64) {
    let (mut dot, mut abs) = (0.0f64, 0.0f64);
    for p in 0..case.k {
        let at = if case.layout == BLayout::NK { j * d.ldb + p } else { p * d.ldb + j };
        let t = d.a[i * d.lda + p] as f64 * d.b.value(at, j);
        dot += t;
        abs += t.abs();
    }
    let mut v = dot;
    let mut err = 2.0 * (case.k as f64 + 2.0) * U * abs;
    if case.bias {
        v += d.bias[j] as f64;
        err += U * v.abs();
    }
    if case.gelu {
        err = 1.13 * err + 1e-6 * (1.0 + v.abs());
        v = gelu64(v);
    }
    if case.accumulate {
        let s = if case.scale { d.scale[j] as f64 } else { 1.0 };
        let c0 = d.c0[i * d.ldc + j] as f64;
        err = s.abs() * err + 2.0 * U * (c0.abs() + (s * v).abs());
        v = c0 + s * v;
    } else {
        err += U * v.abs();
    }
    (v, err + 1e-30)
}

fn check_case(backend: Backend, scratch: &mut Scratch, case: &Case, rng: &mut Rng) {
    let d = make(case, rng);
    let got = run(backend, scratch, case, &d);
    let scalar = if backend == Backend::Scalar { None } else { Some(run(Backend::Scalar, scratch, case, &d)) };
    for i in 0..case.m {
        for j in 0..d.ldc {
            let idx = i * d.ldc + j;
            if j >= case.n {
                assert_eq!(got[idx].to_bits(), d.c0[idx].to_bits(), "{backend:?} {case:?}: padding ({i},{j}) written");
                continue;
            }
            let (want, tol) = reference(case, &d, i, j);
            let g = got[idx] as f64;
            assert!((g - want).abs() <= tol, "{backend:?} {case:?}: C[{i}][{j}] = {g}, reference {want} ± {tol}");
            if let Some(s) = &scalar {
                let sv = s[idx] as f64;
                assert!((g - sv).abs() <= 2.0 * tol, "{backend:?} {case:?}: C[{i}][{j}] = {g}, scalar {sv}");
            }
        }
    }
    // Rows past m (none exist in the buffer beyond m rows), nothing else to check.
}

const LAYOUTS: [BLayout; 2] = [BLayout::NK, BLayout::KN];
const DTS: [Dt; 5] = [Dt::F32, Dt::F16, Dt::BF16, Dt::I8, Dt::I8Unit];

/// The 12 epilogue combinations: bias × gelu × (overwrite | accumulate | accumulate + scale).
fn epilogues() -> Vec<(bool, bool, bool, bool)> {
    let mut v = Vec::new();
    for bias in [false, true] {
        for gelu in [false, true] {
            for (acc, scale) in [(false, false), (true, false), (true, true)] {
                v.push((bias, gelu, acc, scale));
            }
        }
    }
    v
}

fn case(m: usize, n: usize, k: usize, layout: BLayout, dt: Dt, pad: usize, ep: (bool, bool, bool, bool)) -> Case {
    Case { m, n, k, layout, dt, pad, bias: ep.0, gelu: ep.1, accumulate: ep.2, scale: ep.3 }
}

// ---------------------------------------------------------------------------------------------
// GEMM.

#[test]
fn gemm_small_shapes_all_combinations() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // (m, n, k): r = 1, odd n, one token, k = 1, edges of the 6 × 16 tile and of the 4 × 4 one.
    let shapes =
        [(1, 1, 1), (1, 17, 9), (2, 3, 1), (5, 7, 3), (7, 33, 13), (13, 1, 20), (6, 16, 8), (9, 24, 17), (3, 9, 64)];
    for backend in Backend::available() {
        let mut scratch = Scratch::new(backend);
        for &(m, n, k) in &shapes {
            for layout in LAYOUTS {
                for dt in DTS {
                    for ep in epilogues() {
                        for pad in [0, 3] {
                            check_case(backend, &mut scratch, &case(m, n, k, layout, dt, pad, ep), &mut rng);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_k_blocks_and_large_edges() {
    // k > 256 (several k blocks: partial sums in C, or in scratch when accumulating), n > 256
    // (several column blocks), m > 264 (several row blocks), and 197 tokens.
    let mut rng = Rng(0x0bad_cafe_f00d_0001);
    let shapes = [(197, 37, 300), (11, 270, 513), (270, 20, 40), (197, 64, 64)];
    for backend in Backend::available() {
        let mut scratch = Scratch::new(backend);
        for &(m, n, k) in &shapes {
            for (li, layout) in LAYOUTS.into_iter().enumerate() {
                for (di, dt) in DTS.into_iter().enumerate() {
                    for (ei, ep) in epilogues().into_iter().enumerate() {
                        // Every combination of each dimension, not the full product (keeps the
                        // emulated aarch64 run short).
                        if (li + di + ei) % 3 != 0 {
                            continue;
                        }
                        check_case(backend, &mut scratch, &case(m, n, k, layout, dt, 2, ep), &mut rng);
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_rank_one_and_single_column() {
    // r = 1 factors: x·Vᵀ with V [1, k] (n = 1), then ·Uᵀ with U [n, 1] (k = 1).
    let mut rng = Rng(77);
    for backend in Backend::available() {
        let mut scratch = Scratch::new(backend);
        for dt in DTS {
            for layout in LAYOUTS {
                check_case(
                    backend,
                    &mut scratch,
                    &case(197, 1, 96, layout, dt, 0, (false, false, false, false)),
                    &mut rng,
                );
                check_case(
                    backend,
                    &mut scratch,
                    &case(197, 100, 1, layout, dt, 0, (true, true, true, true)),
                    &mut rng,
                );
                check_case(
                    backend,
                    &mut scratch,
                    &case(1, 300, 257, layout, dt, 1, (true, true, true, true)),
                    &mut rng,
                );
            }
        }
    }
}

#[test]
fn gemm_k_zero_is_epilogue_of_zero() {
    for backend in Backend::available() {
        let mut scratch = Scratch::new(backend);
        let b: [f32; 0] = [];
        let bias = [1.0f32, -2.0, 0.5];
        let mut c = [10.0f32; 6];
        gemm(
            backend,
            &mut scratch,
            Gemm {
                m: 2,
                a: &[],
                lda: 0,
                b: MatB { data: WeightSlice::F32(&b), k: 0, n: 3, layout: BLayout::NK, ld: 0 },
                c: &mut c,
                ldc: 3,
                epilogue: Epilogue { bias: Some(&bias), gelu: false, accumulate: true, scale: None },
            },
        );
        assert_eq!(c, [11.0, 8.0, 10.5, 11.0, 8.0, 10.5]);
    }
}

#[test]
fn attention_shaped_gemms() {
    // Q·Kᵀ per head with q/k/v interleaved in one qkv buffer (ld = 3·dim), then P·V.
    let (t, dim, dh) = (197usize, 96usize, 32usize);
    let mut rng = Rng(4242);
    let qkv = rng.vec(t * 3 * dim, 1.0);
    for backend in Backend::available() {
        let mut scratch = Scratch::new(backend);
        let head = 1;
        let q = &qkv[head * dh..];
        let k = &qkv[dim + head * dh..];
        let v = &qkv[2 * dim + head * dh..];
        let mut s = vec![0.0f32; t * t];
        gemm(
            backend,
            &mut scratch,
            Gemm {
                m: t,
                a: q,
                lda: 3 * dim,
                b: MatB { data: WeightSlice::F32(k), k: dh, n: t, layout: BLayout::NK, ld: 3 * dim },
                c: &mut s,
                ldc: t,
                epilogue: Epilogue::default(),
            },
        );
        for i in (0..t).step_by(7) {
            for j in 0..t {
                let (mut r, mut a) = (0.0f64, 0.0f64);
                for p in 0..dh {
                    let x = q[i * 3 * dim + p] as f64 * k[j * 3 * dim + p] as f64;
                    r += x;
                    a += x.abs();
                }
                assert!((s[i * t + j] as f64 - r).abs() <= 2.0 * (dh as f64 + 2.0) * U * a + 1e-30);
            }
        }
        softmax_rows(backend, t, t, &mut s, t, 0.125);
        let mut o = vec![0.0f32; t * dim];
        gemm(
            backend,
            &mut scratch,
            Gemm {
                m: t,
                a: &s,
                lda: t,
                b: MatB { data: WeightSlice::F32(v), k: t, n: dh, layout: BLayout::KN, ld: 3 * dim },
                c: &mut o[head * dh..],
                ldc: dim,
                epilogue: Epilogue::default(),
            },
        );
        for i in (0..t).step_by(5) {
            for j in 0..dh {
                let (mut r, mut a) = (0.0f64, 0.0f64);
                for p in 0..t {
                    let x = s[i * t + p] as f64 * v[p * 3 * dim + j] as f64;
                    r += x;
                    a += x.abs();
                }
                assert!((o[i * dim + head * dh + j] as f64 - r).abs() <= 2.0 * (t as f64 + 2.0) * U * a + 1e-30);
            }
            // Other heads' columns untouched.
            assert!(o[i * dim..i * dim + head * dh].iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn gemm_parallel_is_bit_identical_for_any_thread_count() {
    let mut rng = Rng(99);
    let execs = [Exec::new(1), Exec::new(2), Exec::new(3)];
    // Wide (column split), narrow (row split), m = 1 (matrix-vector), k > 256 with accumulation.
    let shapes = [(197, 300, 70), (197, 40, 33), (1, 500, 100), (50, 200, 300)];
    for backend in Backend::available() {
        let mut scratch: Vec<Scratch> = (0..3).map(|_| Scratch::new(backend)).collect();
        for &(m, n, k) in &shapes {
            for layout in LAYOUTS {
                for ep in [(true, true, false, false), (true, false, true, true)] {
                    let cs = case(m, n, k, layout, Dt::F16, 1, ep);
                    let d = make(&cs, &mut rng);
                    let serial = run(backend, &mut scratch[0], &cs, &d);
                    for exec in &execs {
                        let mut c = d.c0.clone();
                        gemm_parallel(
                            backend,
                            exec,
                            &mut scratch,
                            Gemm {
                                m,
                                a: &d.a,
                                lda: d.lda,
                                b: matb(&cs, &d),
                                c: &mut c,
                                ldc: d.ldc,
                                epilogue: epilogue(&cs, &d),
                            },
                        );
                        let same = c.iter().zip(&serial).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{backend:?} {cs:?}: {} threads differ from serial", exec.threads());
                    }
                }
            }
        }
    }
}

#[test]
fn kernels_do_not_allocate() {
    let mut rng = Rng(5);
    for backend in Backend::available() {
        let mut scratch = Scratch::new(backend);
        let cs = case(197, 70, 300, BLayout::NK, Dt::F16, 1, (true, true, true, true));
        let d = make(&cs, &mut rng);
        let mut c = d.c0.clone();
        let cs1 = case(1, 70, 40, BLayout::NK, Dt::BF16, 0, (true, false, false, false));
        let d1 = make(&cs1, &mut rng);
        let mut c1 = d1.c0.clone();
        let mut x = rng.vec(197 * 64, 3.0);
        let mut y = rng.vec(197 * 64, 1.0);
        let (g, b) = (rng.vec(64, 1.0), rng.vec(64, 1.0));
        let row_ptr: Vec<u32> = (0..=64).map(|i| i * 3).collect();
        let cols: Vec<u16> = (0..64 * 3).map(|i| (i * 7 % 64) as u16).collect();
        let vals = rng.vec(64 * 3, 1.0);
        let mut xt = vec![0.0f32; 64 * 197];
        let exec = Exec::serial();
        let xc = x.clone();
        let before = allocations();
        gemm(
            backend,
            &mut scratch,
            Gemm { m: cs.m, a: &d.a, lda: d.lda, b: matb(&cs, &d), c: &mut c, ldc: d.ldc, epilogue: epilogue(&cs, &d) },
        );
        gemm(
            backend,
            &mut scratch,
            Gemm {
                m: 1,
                a: &d1.a,
                lda: d1.lda,
                b: matb(&cs1, &d1),
                c: &mut c1,
                ldc: d1.ldc,
                epilogue: epilogue(&cs1, &d1),
            },
        );
        gemm_parallel(
            backend,
            &exec,
            std::slice::from_mut(&mut scratch),
            Gemm { m: cs.m, a: &d.a, lda: d.lda, b: matb(&cs, &d), c: &mut c, ldc: d.ldc, epilogue: epilogue(&cs, &d) },
        );
        layer_norm(backend, Rows::new(&xc, 197, 64, 64), &g, &b, 1e-6, RowsMut::new(&mut y, 197, 64, 64));
        softmax_rows(backend, 197, 64, &mut x, 64, 0.3);
        gelu(backend, &mut x);
        add_scaled(backend, &mut y, &xc, Some(&g));
        sparse_add(
            backend,
            Csr { row_ptr: &row_ptr, col_idx: SparseIndices::U16(&cols), values: WeightSlice::F32(&vals) },
            Rows::new(&xc, 197, 64, 64),
            RowsMut::new(&mut y, 197, row_ptr.len() - 1, 64),
            &mut xt,
        );
        sparse_add(
            backend,
            Csr { row_ptr: &row_ptr, col_idx: SparseIndices::U16(&cols), values: WeightSlice::F32(&vals) },
            Rows::new(&xc, 1, 64, 64),
            RowsMut::new(&mut y, 1, row_ptr.len() - 1, 64),
            &mut xt,
        );
        assert_eq!(allocations() - before, 0, "{backend:?}: a kernel allocated");
    }
}

#[test]
fn scratch_sizes() {
    // The scalar path is the Cortex-M one: at most 64 KiB of scratch.
    assert!(Scratch::new(Backend::Scalar).bytes() <= 64 * 1024);
    for backend in Backend::available() {
        assert!(backend.is_available());
        assert!(Scratch::new(backend).bytes() <= 1 << 20);
    }
    assert_eq!(Backend::detect(), *Backend::available().last().unwrap());
}

#[test]
fn mismatched_scratch_falls_back_to_scalar() {
    // A scratch made for the scalar backend has no packing buffers: SIMD calls must still be
    // correct (they run the scalar kernel) and must not allocate.
    let mut rng = Rng(6);
    let best = Backend::detect();
    let mut scratch = Scratch::new(Backend::Scalar);
    let cs = case(20, 30, 40, BLayout::KN, Dt::F32, 0, (true, false, false, false));
    check_case(best, &mut scratch, &cs, &mut rng);
}

// ---------------------------------------------------------------------------------------------
// Row and element-wise kernels.

#[test]
fn layer_norm_matches_reference() {
    let mut rng = Rng(11);
    for backend in Backend::available() {
        for &(rows, dim, pad) in &[(1usize, 1usize, 0usize), (3, 7, 2), (197, 96, 0), (2, 771, 5)] {
            let ld = dim + pad;
            let x: Vec<f32> = (0..rows * ld).map(|i| rng.f() * 4.0 + (i % 3) as f32).collect();
            let (g, b) = (rng.vec(dim, 2.0), rng.vec(dim, 1.0));
            let mut out = vec![7.0f32; rows * ld];
            layer_norm(backend, Rows::new(&x, rows, dim, ld), &g, &b, 1e-6, RowsMut::new(&mut out, rows, dim, ld));
            let mut out_s = vec![7.0f32; rows * ld];
            kernels::scalar::layer_norm(
                Rows::new(&x, rows, dim, ld),
                &g,
                &b,
                1e-6,
                RowsMut::new(&mut out_s, rows, dim, ld),
            );
            for r in 0..rows {
                let xr: Vec<f64> = x[r * ld..r * ld + dim].iter().map(|&v| v as f64).collect();
                let mean = xr.iter().sum::<f64>() / dim as f64;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / dim as f64;
                let inv = 1.0 / (var + 1e-6).sqrt();
                for i in 0..ld {
                    let got = out[r * ld + i] as f64;
                    if i >= dim {
                        assert_eq!(got, 7.0);
                        continue;
                    }
                    let xhat = (xr[i] - mean) * inv;
                    let want = xhat * g[i] as f64 + b[i] as f64;
                    // Mean and variance are sums of `dim` terms: relative error ≲ dim·u, which
                    // the normalised value inherits (scaled by |xhat| + 1 and |gamma|).
                    let tol =
                        4.0 * (dim as f64 + 8.0) * U * ((xhat.abs() + 1.0) * (g[i] as f64).abs() + (b[i] as f64).abs());
                    assert!((got - want).abs() <= tol, "{backend:?} row {r} [{i}]: {got} vs {want} ± {tol}");
                    assert!((got - out_s[r * ld + i] as f64).abs() <= 2.0 * tol);
                }
            }
        }
    }
}

#[test]
fn softmax_matches_reference() {
    let mut rng = Rng(12);
    for backend in Backend::available() {
        for &(rows, cols, pad, scale) in
            &[(1usize, 1usize, 0usize, 1.0f32), (3, 5, 1, 0.125), (197, 197, 0, 0.125), (2, 50, 3, 2.0)]
        {
            let ld = cols + pad;
            let x0 = rng.vec(rows * ld, 30.0);
            let mut x = x0.clone();
            softmax_rows(backend, rows, cols, &mut x, ld, scale);
            for r in 0..rows {
                let row: Vec<f64> = x0[r * ld..r * ld + cols].iter().map(|&v| v as f64).collect();
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| ((v - max) * scale as f64).exp()).sum();
                for i in 0..ld {
                    let got = x[r * ld + i] as f64;
                    if i >= cols {
                        assert_eq!(got, x0[r * ld + i] as f64);
                        continue;
                    }
                    let want = ((row[i] - max) * scale as f64).exp() / sum;
                    // exp is accurate to ~3e-7 relative; the normalising sum adds cols·u.
                    let tol = (6e-7 + 2.0 * (cols as f64 + 4.0) * U) * want + 1e-37;
                    assert!((got - want).abs() <= tol, "{backend:?} [{r}][{i}]: {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn gelu_matches_reference() {
    let mut rng = Rng(13);
    for backend in Backend::available() {
        for n in [0usize, 1, 7, 8, 9, 31, 1000] {
            let mut x: Vec<f32> = (0..n).map(|_| rng.f() * 8.0).collect();
            if n > 4 {
                x[0] = 0.0;
                x[1] = -20.0;
                x[2] = 20.0;
                x[3] = -1e-20;
            }
            let x0 = x.clone();
            gelu(backend, &mut x);
            for (&g, &v) in x.iter().zip(&x0) {
                let want = gelu64(v as f64);
                let tol = 1e-6 * (1.0 + (v as f64).abs());
                assert!((g as f64 - want).abs() <= tol, "{backend:?} gelu({v}) = {g}, want {want}");
                assert!((g - kernels::scalar::gelu_one(v)).abs() as f64 <= 2.0 * tol);
            }
        }
    }
}

#[test]
fn gelu_and_erf_over_the_whole_f32_range() {
    // Every 4099th bit pattern (about a million values, all exponents, both signs, subnormals,
    // infinities): exact GELU within 1e-6·(1 + |x|) of the f64 reference on every backend, NaN
    // stays NaN; the scalar erf within 5e-7 absolute and relative (or 1 ulp) of libm's.
    let mut xs = Vec::new();
    let mut bits = 0u64;
    while bits < 1 << 32 {
        xs.push(f32::from_bits(bits as u32));
        bits += 4099;
    }
    xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE, 4.0, -4.0, 3.999, 1e-30]);
    for &x in &xs {
        if x.is_nan() {
            continue;
        }
        let want = libm::erf(x as f64);
        let got = kernels::scalar::erf(x) as f64;
        let err = (got - want).abs();
        assert!(
            err <= 5e-7 * want.abs().max(f32::MIN_POSITIVE as f64) || err <= 6e-8,
            "erf({x:e}) = {got:e}, want {want:e}"
        );
    }
    for backend in Backend::available() {
        let mut g = xs.clone();
        gelu(backend, &mut g);
        for (&v, &got) in xs.iter().zip(&g) {
            if v.is_nan() {
                assert!(got.is_nan(), "{backend:?} gelu(NaN) = {got}");
                continue;
            }
            if v == f32::NEG_INFINITY {
                continue; // -inf · (1 + erf(-inf)) = -inf · 0: NaN, as PyTorch's erf GELU
            }
            let want = gelu64(v as f64);
            if v.is_infinite() {
                assert_eq!(got as f64, want, "{backend:?} gelu({v})");
                continue;
            }
            let tol = 1e-6 * (1.0 + (v as f64).abs());
            assert!((got as f64 - want).abs() <= tol, "{backend:?} gelu({v:e}) = {got:e}, want {want:e}");
        }
    }
}

#[test]
fn add_scaled_matches_scalar() {
    let mut rng = Rng(14);
    for backend in Backend::available() {
        for (n, d) in [(0usize, 1usize), (5, 5), (37, 37), (197 * 24, 24), (100, 7), (100, 3)] {
            let x = rng.vec(n, 1.0);
            let y0 = rng.vec(n, 1.0);
            let s = rng.vec(d, 2.0);
            for scale in [None, Some(&s[..])] {
                let mut y = y0.clone();
                add_scaled(backend, &mut y, &x, scale);
                for i in 0..n {
                    let sv = scale.map_or(1.0, |s| s[i % d]) as f64;
                    let want = y0[i] as f64 + sv * x[i] as f64;
                    assert!((y[i] as f64 - want).abs() <= 2.0 * U * (y0[i].abs() as f64 + (sv * x[i] as f64).abs()));
                }
            }
        }
    }
}

/// A random CSR matrix `m × n` with about `density` nonzeros per entry (some empty rows).
fn csr(rng: &mut Rng, m: usize, n: usize, per_row: usize) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let mut row_ptr = vec![0u32];
    let (mut cols, mut vals) = (Vec::new(), Vec::new());
    for j in 0..m {
        let count = if j % 5 == 3 { 0 } else { rng.below(per_row + 1) };
        for _ in 0..count {
            cols.push(rng.below(n) as u32);
            vals.push(rng.f());
        }
        row_ptr.push(cols.len() as u32);
    }
    (row_ptr, cols, vals)
}

/// Checks `sparse_add` on `backend` against an f64 reference: each output is `y0 + Σ v·x` over
/// the row's nonzeros, accumulated in f32 (bound `2(nnz + 2)·u·Σ|v·x|`) and added to `y0` (one
/// more rounding). `cols32` are the column indices of `s` as u32; `y0` has row stride `ldy`.
fn check_sparse(backend: Backend, s: Csr<'_>, cols32: &[u32], x: Rows<'_>, y0: &[f32], ldy: usize) {
    let (row_ptr, vals, m) = (s.row_ptr, s.values, s.rows());
    let (tokens, n) = (x.rows(), x.cols());
    let mut y = y0.to_vec();
    let mut xt = vec![0.0f32; n * tokens];
    sparse_add(backend, s, x, RowsMut::new(&mut y, tokens, m, ldy), &mut xt);
    for t in 0..tokens {
        for j in 0..ldy {
            let got = y[t * ldy + j] as f64;
            if j >= m {
                assert_eq!(got, y0[t * ldy + j] as f64, "padding written");
                continue;
            }
            let (s, e) = (row_ptr[j] as usize, row_ptr[j + 1] as usize);
            let (mut acc, mut abs) = (0.0f64, 0.0f64);
            for (q, &c) in cols32.iter().enumerate().take(e).skip(s) {
                let v = vals.value(q, j) as f64 * x.row(t)[c as usize] as f64;
                acc += v;
                abs += v.abs();
            }
            let want = y0[t * ldy + j] as f64 + acc;
            let tol = 2.0 * ((e - s) as f64 + 2.0) * U * abs + 2.0 * U * want.abs() + 1e-30;
            assert!((got - want).abs() <= tol, "{backend:?} tokens {tokens}: y[{t}][{j}] = {got}, want {want} ± {tol}");
        }
    }
}

#[test]
fn sparse_add_matches_reference() {
    let mut rng = Rng(15);
    for backend in Backend::available() {
        for &(tokens, m, n, per_row) in
            &[(1usize, 5usize, 7usize, 3usize), (3, 40, 33, 6), (8, 17, 64, 20), (197, 70, 96, 9), (67, 9, 300, 40)]
        {
            let (row_ptr, cols32, vals) = csr(&mut rng, m, n, per_row);
            let cols16: Vec<u16> = cols32.iter().map(|&c| c as u16).collect();
            let (ldx, ldy) = (n + 3, m + 2);
            let x = rng.vec(tokens * ldx, 1.0);
            let y0 = rng.vec(tokens * ldy, 1.0);
            for dt in DTS {
                let vs = Store::new(dt, &vals, m);
                for idx in [SparseIndices::U16(&cols16), SparseIndices::U32(&cols32)] {
                    let s = Csr { row_ptr: &row_ptr, col_idx: idx, values: vs.slice() };
                    check_sparse(backend, s, &cols32, Rows::new(&x, tokens, n, ldx), &y0, ldy);
                }
            }
        }
    }
}

#[test]
#[should_panic]
fn sparse_add_rejects_out_of_range_index() {
    let backend = Backend::detect();
    let row_ptr = [0u32, 2];
    let cols = [0u16, 50];
    let vals = [1.0f32, 2.0];
    let x = vec![1.0f32; 16 * 10];
    let mut y = vec![0.0f32; 16];
    let mut xt = vec![0.0f32; 16 * 10];
    sparse_add(
        backend,
        Csr { row_ptr: &row_ptr, col_idx: SparseIndices::U16(&cols), values: WeightSlice::F32(&vals) },
        Rows::new(&x, 16, 10, 10),
        RowsMut::new(&mut y, 16, row_ptr.len() - 1, 1),
        &mut xt,
    );
}

#[test]
#[should_panic]
fn sparse_add_rejects_bad_row_ptr() {
    let backend = Backend::detect();
    let row_ptr = [0u32, 3, 1];
    let cols = [0u16, 1, 2];
    let vals = [1.0f32, 2.0, 3.0];
    let x = vec![1.0f32; 16 * 4];
    let mut y = vec![0.0f32; 16 * 2];
    let mut xt = vec![0.0f32; 16 * 4];
    sparse_add(
        backend,
        Csr { row_ptr: &row_ptr, col_idx: SparseIndices::U16(&cols), values: WeightSlice::F32(&vals) },
        Rows::new(&x, 16, 4, 4),
        RowsMut::new(&mut y, 16, row_ptr.len() - 1, 2),
        &mut xt,
    );
}

#[test]
#[should_panic]
fn gemm_rejects_too_few_int8_scales() {
    let backend = Backend::detect();
    let w = [1i8; 4 * 3];
    let scales = [0.5f32; 3];
    let a = [1.0f32; 2 * 3];
    let mut c = [0.0f32; 2 * 4];
    gemm(
        backend,
        &mut Scratch::new(backend),
        Gemm {
            m: 2,
            a: &a,
            lda: 3,
            // Four output channels, three scales.
            b: MatB::weight(WeightSlice::I8(QuantI8 { values: &w, scales: Some(&scales) }), 4, 3),
            c: &mut c,
            ldc: 4,
            epilogue: Epilogue::default(),
        },
    );
}

#[test]
#[should_panic]
fn gemm_rejects_short_c() {
    let backend = Backend::detect();
    let mut scratch = Scratch::new(backend);
    let a = [1.0f32; 12];
    let b = [1.0f32; 12];
    let mut c = [0.0f32; 8];
    gemm(
        backend,
        &mut scratch,
        Gemm {
            m: 3,
            a: &a,
            lda: 4,
            b: MatB::weight(WeightSlice::F32(&b), 3, 4),
            c: &mut c,
            ldc: 3,
            epilogue: Epilogue::default(),
        },
    );
}

#[test]
#[should_panic(expected = "A operand too small")]
fn gemm_rejects_wrapping_stride() {
    // (m - 1)·lda + k wraps around to 1 with a plain multiplication: the check must not pass.
    let backend = Backend::detect();
    let mut scratch = Scratch::new(backend);
    let a = [1.0f32; 4];
    let b = [1.0f32; 2];
    let mut c = [0.0f32; 6];
    gemm(
        backend,
        &mut scratch,
        Gemm {
            m: 3,
            a: &a,
            lda: usize::MAX / 2 + 1,
            b: MatB::weight(WeightSlice::F32(&b), 2, 1),
            c: &mut c,
            ldc: 2,
            epilogue: Epilogue::default(),
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Random shapes.

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        #[test]
        fn gemm_random_shapes(
            m in 1usize..30, n in 1usize..70, k in 1usize..290, pad in 0usize..3,
            nk in any::<bool>(), dt in 0usize..DTS.len(), ep in 0usize..12, seed in any::<u64>(),
        ) {
            let layout = if nk { BLayout::NK } else { BLayout::KN };
            let cs = case(m, n, k, layout, DTS[dt], pad, epilogues()[ep]);
            let mut rng = Rng(seed | 1);
            for backend in Backend::available() {
                let mut scratch = Scratch::new(backend);
                check_case(backend, &mut scratch, &cs, &mut rng);
            }
        }

        #[test]
        fn sparse_random_shapes(
            tokens in 1usize..40, m in 1usize..40, n in 1usize..50, per_row in 0usize..12,
            dt in 0usize..DTS.len(), seed in any::<u64>(),
        ) {
            let mut rng = Rng(seed | 1);
            let (row_ptr, cols, vals) = csr(&mut rng, m, n, per_row);
            let vs = Store::new(DTS[dt], &vals, m);
            let x = rng.vec(tokens * n, 1.0);
            let y0 = rng.vec(tokens * m, 1.0);
            for backend in Backend::available() {
                let s = Csr { row_ptr: &row_ptr, col_idx: SparseIndices::U32(&cols), values: vs.slice() };
                check_sparse(backend, s, &cols, Rows::new(&x, tokens, n, n), &y0, m);
            }
        }
    }
}
