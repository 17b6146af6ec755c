//! Memory-safety checks, written to run under Miri (`scripts/miri.sh`) as well as in the normal
//! suite: loading `tests/data/tiny.fvit` from aligned, misaligned (tensors copied) and owned
//! buffers, truncated and corrupted files (errors, never a panic or an out-of-bounds read), a
//! whole session run on the result, and every scalar kernel on small shapes.
//!
//! Operand buffers here have *exactly* the length their shape and stride require (`(rows - 1) ·
//! ld + cols`), so that a kernel touching one element too many reads or writes past the end of
//! its allocation, which Miri reports. Padding elements between rows must keep their bits.
//!
//! Under Miri only the scalar backend is detected (`is_x86_feature_detected!` reports run-time
//! features as absent), loops are shortened with `cfg!(miri)`, and the memory map of
//! `Model::open` is skipped (Miri cannot map files). Outside Miri the same tests also run the
//! detected SIMD backend on the exact-size buffers.
//!
//! Tolerances are error bounds of f32 arithmetic (`u = 2⁻²⁴`): a dot product of `k` terms,
//! accumulated in any order, is within `(k + 2)·u·Σ|a·b|` of the exact value (we allow twice
//! that); each later operation adds one rounding. No Miri-specific tolerance is needed: Miri
//! perturbs only float operations that are not specified to be correctly rounded (math
//! intrinsics such as `expf`, NaN payloads), and the kernels use their own polynomial `exp` and
//! `erf` and software `libm` (`scripts/miri.sh` builds it with `force-soft-floats`).

use factorvit::kernels::{
    add_scaled, gelu, gemm, gemm_parallel, layer_norm, softmax_rows, sparse_add, BLayout, Backend, Csr, Epilogue, Gemm,
    MatB, Rows, RowsMut, Scratch, SparseIndices, WeightSlice,
};
use factorvit::parallel::Exec;
use factorvit::{Model, SessionOptions};
use half::{bf16, f16};

static TINY: &[u8] = include_bytes!("data/tiny.fvit");

const U: f64 = 1.0 / (1u64 << 24) as f64;

// ---------------------------------------------------------------------------------------------
// Helpers.

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
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Elements a row-major `rows × cols` block at stride `ld` spans (0 when empty).
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// `bytes` copied into an 8-byte aligned buffer at byte offset `offset`; returns the buffer
/// (keep it alive) and the range of the copy.
fn placed(bytes: &[u8], offset: usize) -> (Vec<u64>, core::ops::Range<usize>) {
    let mut buf = vec![0u64; (bytes.len() + offset).div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[offset..offset + bytes.len()].copy_from_slice(bytes);
    (buf, offset..offset + bytes.len())
}

/// Logits and pooled output of one run on a fixed image (batch 1, one thread, `backend`).
fn run_tiny(model: &Model<'_>, backend: Backend) -> (Vec<f32>, Vec<f32>) {
    let mut session = model.session(SessionOptions { threads: 1, batch: 1, ..Default::default() }).unwrap();
    session.set_backend(backend).unwrap();
    let [c, h, w] = model.preprocess().input_size;
    let pixels: Vec<f32> = (0..c * h * w).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let out = session.run(&pixels).unwrap();
    (out.logits.unwrap().to_vec(), out.pooler_output.to_vec())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// Model loading: aligned, misaligned, owned, mapped. Test names start with `model_` (or
// `threads_` when they use a thread pool): `scripts/miri.sh` runs them in a separate pass.

/// `tiny.fvit` loaded from an 8-byte aligned copy, shared by the tests (loading is the slow
/// part under Miri: it parses a 2.7 KB JSON header).
fn tiny() -> &'static Model<'static> {
    static MODEL: std::sync::OnceLock<Model<'static>> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let (buf, range) = placed(TINY, 0);
        let buf: &'static [u64] = Box::leak(buf.into_boxed_slice());
        Model::from_bytes(&bytemuck::cast_slice::<u64, u8>(buf)[range]).unwrap()
    })
}

#[test]
fn model_aligned_and_misaligned_buffers_give_identical_results() {
    let aligned = tiny();
    // The data region starts 8-byte aligned and every tensor offset is a multiple of its
    // element size: everything is read in place.
    assert_eq!(aligned.copied_bytes(), 0);
    let backends = Backend::available();
    let want: Vec<_> = backends.iter().map(|&b| run_tiny(aligned, b)).collect();
    // Offsets 1 and 3 misalign every f32, f16 and index tensor, 2 every f32 one: those are
    // copied at load into aligned buffers, and the model must compute exactly the same values.
    let offsets: &[usize] = if cfg!(miri) { &[1] } else { &[1, 2, 3, 5] };
    for &offset in offsets {
        let (buf, range) = placed(TINY, offset);
        let bytes = &bytemuck::cast_slice::<u64, u8>(&buf)[range];
        let model = Model::from_bytes(bytes).unwrap();
        assert!(model.copied_bytes() > 0, "offset {offset}: nothing was copied");
        for (b, w) in backends.iter().zip(&want) {
            let got = run_tiny(&model, *b);
            assert_eq!((bits(&got.0), bits(&got.1)), (bits(&w.0), bits(&w.1)), "offset {offset}, {b:?}");
        }
    }
    if !cfg!(miri) {
        // An owned buffer (whatever its address) gives the same results too.
        let owned = Model::from_vec(TINY.to_vec()).unwrap();
        let got = run_tiny(&owned, Backend::Scalar);
        assert_eq!((bits(&got.0), bits(&got.1)), (bits(&want[0].0), bits(&want[0].1)));
    }
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot memory-map files")]
fn model_mapped_file_matches_bytes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.fvit");
    let mapped = Model::open(path).unwrap();
    assert_eq!(run_tiny(&mapped, Backend::detect()), run_tiny(tiny(), Backend::detect()));
}

#[test]
fn model_sessions_reuse_buffers_and_batch_rows_are_independent() {
    let model = tiny();
    let [c, h, w] = model.preprocess().input_size;
    let per = c * h * w;
    let mut images = Rng(3).vec(3 * per);
    if cfg!(miri) {
        // Two copies of one image: one single run to compare with.
        images.copy_within(..per, per);
    }
    let singles_count = if cfg!(miri) { 1 } else { 3 };
    let mut single = model.session(SessionOptions { threads: 1, batch: 1, ..Default::default() }).unwrap();
    let singles: Vec<Vec<f32>> = (0..singles_count)
        .map(|i| single.run(&images[i * per..(i + 1) * per]).unwrap().logits.unwrap().to_vec())
        .collect();
    // A session for 3 images, run with fewer images than its capacity (then full).
    let mut batched = model.session(SessionOptions { threads: 1, batch: 3, ..Default::default() }).unwrap();
    for n in if cfg!(miri) { 2..=2 } else { 2..=3 } {
        let out = batched.run(&images[..n * per]).unwrap();
        let logits = out.logits.unwrap();
        assert_eq!(logits.len(), n * 3);
        for i in 0..n {
            // A batch of one takes the matrix-vector path for the head, a larger batch the
            // blocked one: equal up to summation order (embed_dim = 8 terms).
            for (a, b) in logits[i * 3..(i + 1) * 3].iter().zip(&singles[i.min(singles_count - 1)]) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "image {i}: {a} vs {b}");
            }
        }
    }
    assert!(batched.run(&images[..per - 1]).is_err());
    assert!(batched.run(&[]).is_err());
}

#[test]
fn threads_session_matches_one_thread() {
    // Under Miri, the data-race detector checks that the threads write disjoint outputs.
    let model = tiny();
    let [c, h, w] = model.preprocess().input_size;
    let images = Rng(4).vec(2 * c * h * w);
    let mut one = model.session(SessionOptions { threads: 1, batch: 2, ..Default::default() }).unwrap();
    let mut two = model.session(SessionOptions { threads: 2, batch: 2, ..Default::default() }).unwrap();
    let a = one.run(&images).unwrap();
    let b = two.run(&images).unwrap();
    assert_eq!(bits(a.last_hidden_state), bits(b.last_hidden_state));
    assert_eq!(bits(a.logits.unwrap()), bits(b.logits.unwrap()));
}

// ---------------------------------------------------------------------------------------------
// Bad files.

/// Byte length of the JSON header (after the 8-byte size prefix).
fn header_len() -> usize {
    u64::from_le_bytes(TINY[..8].try_into().unwrap()) as usize
}

#[test]
fn model_truncated_files_are_errors() {
    let len = TINY.len();
    let data = 8 + header_len();
    let lengths: Vec<usize> = if cfg!(miri) {
        // Inside the size prefix, just after it, one byte short of the header's end, one byte
        // short of the file's end.
        vec![7, 9, data - 1, len - 1]
    } else {
        (0..len).collect()
    };
    for n in lengths {
        // A fresh exact-size allocation, so that a read past `n` is past the allocation.
        let prefix = TINY[..n].to_vec();
        assert!(Model::from_bytes(&prefix).is_err(), "a {n}-byte prefix loaded");
    }
}

#[test]
fn model_corrupted_bytes_are_errors_or_valid_models() {
    // Each single-byte change either fails to load with an error or gives a model that runs
    // (e.g. a changed label or weight). Never a panic, never an out-of-bounds access.
    let data = 8 + header_len();
    let key = b"\"embed_dim\\\": ";
    let embed_dim = TINY.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(TINY[embed_dim], b'8');
    let cases: Vec<(usize, u8)> = if cfg!(miri) {
        // A header length far past the file, a config value (8 -> 9: every shape mismatches).
        vec![(3, b'9'), (embed_dim, b'9')]
    } else {
        let positions = (0..data).chain((data..TINY.len()).step_by(7));
        positions.flat_map(|p| [b'9', b'"', 0xff, b'-'].map(|r| (p, r))).filter(|&(p, r)| TINY[p] != r).collect()
    };
    let (mut errors, mut loaded) = (0, 0);
    for (pos, r) in cases {
        let mut bad = TINY.to_vec();
        bad[pos] = r;
        match Model::from_bytes(&bad) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                errors += 1;
            }
            Ok(model) => {
                let mut session = model.session(SessionOptions { threads: 1, batch: 1, ..Default::default() }).unwrap();
                // The session's input size comes from the config (which a change may make
                // differ from `preprocess.input_size`).
                let [h, w] = session.image_size();
                let out = session.run(&vec![0.5f32; model.config().in_chans * h * w]).unwrap();
                assert_eq!(out.pooler_output.len(), model.config().embed_dim);
                loaded += 1;
            }
        }
    }
    // (Every change loads as an error once the file carries checksums; without them, weight
    // and label changes load.)
    assert!(errors > 0, "{errors} errors, {loaded} loaded");
}

// ---------------------------------------------------------------------------------------------
// Kernels on exact-size buffers.

#[derive(Clone, Copy, Debug)]
enum Dt {
    F32,
    F16,
    BF16,
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

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// One GEMM on exact-size operands with every epilogue; checks values against an f64
/// reference and the padding of C against its initial bits.
fn check_gemm(
    backend: Backend,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    layout: BLayout,
    dt: Dt,
    pad: usize,
    (bias, act, acc, scaled): (bool, bool, bool, bool),
) {
    let (lda, ldc) = (k + pad, n + pad);
    let (brows, bcols) = if layout == BLayout::NK { (n, k) } else { (k, n) };
    let ldb = bcols + pad;
    let a = rng.vec(span(m, k, lda));
    let b = Store::new(dt, &rng.vec(span(brows, bcols, ldb)));
    let c0: Vec<f32> = rng.vec(span(m, n, ldc)).iter().map(|v| 2.0 * v).collect();
    let (bv, sv) = (rng.vec(n), rng.vec(n));
    let matb = MatB { data: b.slice(), k, n, layout, ld: ldb };
    let ep = Epilogue {
        bias: bias.then_some(&bv[..]),
        gelu: act,
        accumulate: acc,
        scale: (acc && scaled).then_some(&sv[..]),
    };
    let mut c = c0.clone();
    let mut scratch = Scratch::new(backend);
    gemm(backend, &mut scratch, Gemm { m, a: &a, lda, b: matb, c: &mut c, ldc, epilogue: ep });
    for i in 0..m {
        for j in 0..ldc {
            let idx = i * ldc + j;
            if idx >= c.len() {
                break;
            }
            if j >= n {
                assert_eq!(c[idx].to_bits(), c0[idx].to_bits(), "padding C[{i}][{j}] written");
                continue;
            }
            let (mut v, mut abs) = (0.0f64, 0.0f64);
            for p in 0..k {
                let t = a[i * lda + p] as f64 * matb.at(p, j) as f64;
                v += t;
                abs += t.abs();
            }
            let mut err = 2.0 * (k as f64 + 2.0) * U * abs;
            if bias {
                v += bv[j] as f64;
                err += 2.0 * U * v.abs();
            }
            if act {
                // GELU's slope is below 1.13; the erf approximation adds ≤ 1e-6·(1 + |v|).
                err = 1.13 * err + 1e-6 * (1.0 + v.abs());
                v = gelu64(v);
            }
            if acc {
                let s = if scaled { sv[j] as f64 } else { 1.0 };
                let c0v = c0[idx] as f64;
                err = s.abs() * err + 2.0 * U * (c0v.abs() + (s * v).abs());
                v = c0v + s * v;
            } else {
                err += 2.0 * U * v.abs();
            }
            let got = c[idx] as f64;
            assert!((got - v).abs() <= err + 1e-30, "{backend:?} {m}×{n}×{k} C[{i}][{j}] = {got}, want {v} ± {err}");
        }
    }
}

#[test]
fn kernel_gemm_exact_size_operands() {
    let mut rng = Rng(0x5eed);
    // (m, n, k): k = 0 (epilogue of zero), single rows and columns, edges of the scalar 4 × 4
    // tile; outside Miri also edges of the SIMD 6 × 16 tile and the matrix-vector path.
    let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
        &[(1, 1, 1), (2, 3, 0), (1, 5, 3), (5, 6, 2), (4, 4, 4)]
    } else {
        &[(1, 1, 1), (2, 3, 0), (1, 5, 3), (5, 6, 2), (4, 4, 4), (7, 17, 9), (1, 19, 17), (13, 33, 20), (6, 16, 8)]
    };
    let epilogues: &[(bool, bool, bool, bool)] = if cfg!(miri) {
        &[
            (false, false, false, false),
            (true, true, false, false),
            (true, false, true, true),
            (false, true, true, false),
        ]
    } else {
        &[
            (false, false, false, false),
            (true, false, false, false),
            (true, true, false, false),
            (false, false, true, false),
            (true, false, true, true),
            (false, true, true, false),
            (true, true, true, true),
        ]
    };
    for backend in Backend::available() {
        for (si, &shape) in shapes.iter().enumerate() {
            for (li, layout) in [BLayout::NK, BLayout::KN].into_iter().enumerate() {
                for (di, dt) in [Dt::F32, Dt::F16, Dt::BF16].into_iter().enumerate() {
                    for (ei, &ep) in epilogues.iter().enumerate() {
                        // Under Miri every dtype, layout and epilogue, not their full product.
                        if cfg!(miri) && (si + li + di + ei) % 3 != 0 {
                            continue;
                        }
                        for pad in [0, 2] {
                            check_gemm(backend, &mut rng, shape, layout, dt, pad, ep);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn threads_gemm_parallel_splits_are_bit_identical() {
    // Column split (n ≥ 64 per thread) and row split (m ≥ 12 per thread) on two threads.
    let exec = Exec::new(2);
    let shapes: &[(usize, usize, usize)] =
        if cfg!(miri) { &[(2, 130, 2), (25, 3, 2)] } else { &[(5, 300, 33), (40, 20, 70)] };
    let mut rng = Rng(8);
    for backend in Backend::available() {
        let mut scratch = [Scratch::new(backend), Scratch::new(backend)];
        for &(m, n, k) in shapes {
            let (lda, ldc) = (k + 1, n + 1);
            let a = rng.vec(span(m, k, lda));
            let b = Store::new(Dt::F16, &rng.vec(n * k));
            let bias = rng.vec(n);
            let c0 = rng.vec(span(m, n, ldc));
            let ep = Epilogue { bias: Some(&bias), gelu: true, accumulate: true, scale: None };
            let (mut serial, mut parallel) = (c0.clone(), c0.clone());
            let matb = MatB::weight(b.slice(), n, k);
            gemm(backend, &mut scratch[0], Gemm { m, a: &a, lda, b: matb, c: &mut serial, ldc, epilogue: ep });
            gemm_parallel(
                backend,
                &exec,
                &mut scratch,
                Gemm { m, a: &a, lda, b: matb, c: &mut parallel, ldc, epilogue: ep },
            );
            assert_eq!(bits(&serial), bits(&parallel), "{backend:?} {m}×{n}×{k}");
        }
    }
}

#[test]
fn kernel_sparse_add_exact_size_operands() {
    let mut rng = Rng(9);
    // (tokens, rows, cols, max nonzeros per row); tokens ≥ 8 take the transposed SIMD path.
    let shapes: &[(usize, usize, usize, usize)] = if cfg!(miri) {
        &[(1, 3, 5, 3), (3, 5, 4, 4)]
    } else {
        &[(1, 3, 5, 3), (3, 5, 4, 4), (9, 17, 20, 18), (70, 5, 9, 9)]
    };
    for backend in Backend::available() {
        for &(tokens, m, n, per_row) in shapes {
            let mut row_ptr = vec![0u32];
            let mut cols = Vec::new();
            for j in 0..m {
                let count = if j == 1 { 0 } else { rng.below(per_row + 1) };
                cols.extend((0..count).map(|_| rng.below(n) as u32));
                row_ptr.push(cols.len() as u32);
            }
            // Make the largest column index n - 1 (the kernel's notion of n).
            if let Some(c) = cols.first_mut() {
                *c = n as u32 - 1;
            }
            let cols16: Vec<u16> = cols.iter().map(|&c| c as u16).collect();
            let vals = rng.vec(cols.len());
            let (ldx, ldy) = (n + 1, m + 2);
            let x = rng.vec(span(tokens, n, ldx));
            let y0 = rng.vec(span(tokens, m, ldy));
            let dts: &[Dt] = if cfg!(miri) { &[Dt::F16] } else { &[Dt::F32, Dt::F16, Dt::BF16] };
            for &dt in dts {
                let vs = Store::new(dt, &vals);
                for idx in [SparseIndices::U16(&cols16), SparseIndices::U32(&cols)] {
                    let mut y = y0.clone();
                    let mut xt = vec![0.0f32; n * tokens];
                    sparse_add(
                        backend,
                        Csr { row_ptr: &row_ptr, col_idx: idx, values: vs.slice() },
                        Rows::new(&x, tokens, n, ldx),
                        RowsMut::new(&mut y, tokens, row_ptr.len() - 1, ldy),
                        &mut xt,
                    );
                    for t in 0..tokens {
                        for j in 0..ldy {
                            let i = t * ldy + j;
                            if i >= y.len() {
                                break;
                            }
                            if j >= m {
                                assert_eq!(y[i].to_bits(), y0[i].to_bits(), "padding of Y written");
                                continue;
                            }
                            let (s, e) = (row_ptr[j] as usize, row_ptr[j + 1] as usize);
                            let (mut acc, mut abs) = (y0[i] as f64, 0.0f64);
                            for q in s..e {
                                let v = vs.slice().get(q) as f64 * x[t * ldx + cols[q] as usize] as f64;
                                acc += v;
                                abs += v.abs();
                            }
                            let tol = 2.0 * ((e - s) as f64 + 2.0) * U * abs + 2.0 * U * acc.abs() + 1e-30;
                            assert!((y[i] as f64 - acc).abs() <= tol, "{backend:?} y[{t}][{j}] = {}, want {acc}", y[i]);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn kernel_row_kernels_exact_size_operands() {
    let mut rng = Rng(10);
    let dims: &[usize] = if cfg!(miri) { &[1, 5, 9] } else { &[1, 5, 9, 31, 33, 100] };
    for backend in Backend::available() {
        for &dim in dims {
            let (rows, ld) = (3, dim + 2);
            // LayerNorm.
            let x: Vec<f32> = rng.vec(span(rows, dim, ld)).iter().map(|v| 3.0 * v + 1.0).collect();
            let (g, b) = (rng.vec(dim), rng.vec(dim));
            let out0 = rng.vec(span(rows, dim, ld));
            let mut out = out0.clone();
            layer_norm(backend, Rows::new(&x, rows, dim, ld), &g, &b, 1e-5, RowsMut::new(&mut out, rows, dim, ld));
            for r in 0..rows {
                let xr: Vec<f64> = x[r * ld..r * ld + dim].iter().map(|&v| v as f64).collect();
                let mean = xr.iter().sum::<f64>() / dim as f64;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / dim as f64;
                let sd = (var + 1e-5).sqrt();
                let scale = xr.iter().map(|v| v.abs()).sum::<f64>() / dim as f64 / sd;
                for i in 0..ld {
                    let idx = r * ld + i;
                    if idx >= out.len() {
                        break;
                    }
                    if i >= dim {
                        assert_eq!(out[idx].to_bits(), out0[idx].to_bits(), "LayerNorm padding written");
                        continue;
                    }
                    let xhat = (xr[i] - mean) / sd;
                    let want = xhat * g[i] as f64 + b[i] as f64;
                    // Mean and variance are sums of `dim` terms (relative error ≲ dim·u of
                    // mean|x| and of the variance), inherited by x̂ scaled by mean|x| / σ.
                    let tol = 4.0
                        * (dim as f64 + 8.0)
                        * U
                        * ((xhat.abs() + scale) * (g[i] as f64).abs() + (b[i] as f64).abs());
                    assert!(
                        (out[idx] as f64 - want).abs() <= tol,
                        "{backend:?} LayerNorm {dim}: {} vs {want}",
                        out[idx]
                    );
                }
            }
            // Softmax (in place, strided rows).
            let s0: Vec<f32> = rng.vec(span(rows, dim, ld)).iter().map(|v| 10.0 * v).collect();
            let mut s = s0.clone();
            softmax_rows(backend, rows, dim, &mut s, ld, 0.5);
            for r in 0..rows {
                let row: Vec<f64> = s0[r * ld..r * ld + dim].iter().map(|&v| v as f64 * 0.5).collect();
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                for i in 0..dim {
                    let want = (row[i] - max).exp() / sum;
                    // exp ≤ 3e-7 relative, its argument rounded twice (2u·|z|), the sum dim·u.
                    let tol = (3e-7 + 2.0 * U * (row[i] - max).abs() + 2.0 * (dim as f64 + 4.0) * U) * want + 1e-37;
                    let got = s[r * ld + i] as f64;
                    assert!((got - want).abs() <= tol, "{backend:?} softmax {dim}: {got} vs {want}");
                }
                if r + 1 < rows {
                    assert_eq!(bits(&s[r * ld + dim..(r + 1) * ld]), bits(&s0[r * ld + dim..(r + 1) * ld]));
                }
            }
            // GELU over an exact-size slice.
            let v0: Vec<f32> = rng.vec(dim).iter().map(|v| 6.0 * v).collect();
            let mut v = v0.clone();
            gelu(backend, &mut v);
            for (&got, &x) in v.iter().zip(&v0) {
                let want = gelu64(x as f64);
                assert!((got as f64 - want).abs() <= 1e-6 * (1.0 + (x as f64).abs()), "{backend:?} gelu({x}) = {got}");
            }
            // Scaled add with a period shorter than the slice.
            let (xa, y0) = (rng.vec(dim * 2), rng.vec(dim * 2));
            let sc = rng.vec(dim);
            for scale in [None, Some(&sc[..])] {
                let mut y = y0.clone();
                add_scaled(backend, &mut y, &xa, scale);
                for i in 0..y.len() {
                    let s = scale.map_or(1.0, |s| s[i % dim]) as f64;
                    let want = y0[i] as f64 + s * xa[i] as f64;
                    assert!((y[i] as f64 - want).abs() <= 2.0 * U * (y0[i].abs() as f64 + (s * xa[i] as f64).abs()));
                }
            }
        }
    }
}

#[test]
#[should_panic]
fn kernel_sparse_add_rejects_out_of_range_index() {
    // Column 9 with rows of X only 4 wide: a panic (bounds check), not an out-of-bounds read.
    let (row_ptr, cols, vals) = ([0u32, 2], [0u16, 9], [1.0f32, 2.0]);
    let (x, mut y, mut xt) = (vec![1.0f32; 2 * 4], vec![0.0f32; 2], vec![0.0f32; 20]);
    sparse_add(
        Backend::Scalar,
        Csr { row_ptr: &row_ptr, col_idx: SparseIndices::U16(&cols), values: WeightSlice::F32(&vals) },
        Rows::new(&x, 2, 4, 4),
        RowsMut::new(&mut y, 2, row_ptr.len() - 1, 1),
        &mut xt,
    );
}

#[test]
#[should_panic]
fn kernel_gemm_rejects_short_a() {
    let (a, b, mut c) = ([1.0f32; 7], [1.0f32; 8], [0.0f32; 4]);
    gemm(
        Backend::Scalar,
        &mut Scratch::new(Backend::Scalar),
        Gemm {
            m: 2,
            a: &a,
            lda: 4,
            b: MatB::weight(WeightSlice::F32(&b), 2, 4),
            c: &mut c,
            ldc: 2,
            epilogue: Epilogue::default(),
        },
    );
}
