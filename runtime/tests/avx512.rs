//! The opt-in AVX-512 backend (`FACTORVIT_AVX512=1`, x86-64 with AVX-512F, Rust ≥ 1.89): its
//! GEMM (12 × 32 tiles) must give the same bits as the AVX2 backend on shapes that are multiples
//! of neither tile, every weight dtype (int8 with per-channel scales too), layout and epilogue,
//! several k blocks, and with a scratch made for AVX2 (falls back); and be within the f32 error
//! bound of a naive f64 reference. A
//! whole session must give the same logits on either backend, on 1 and 2 threads.
//!
//! This file is its own test binary because the backend is detected once per process: the only
//! test sets the variable before anything detects. Elsewhere it prints why it skipped.

use factorvit::kernels::{gemm, BLayout, Backend, Epilogue, Gemm, MatB, QuantI8, Scratch, WeightSlice};
use factorvit::{Model, SessionOptions};
use half::{bf16, f16};

static TINY: &[u8] = include_bytes!("data/tiny.fvit");
const U: f64 = 1.0 / (1u64 << 24) as f64;

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    /// Int8 values and one scale per output channel.
    I8(Vec<i8>, Vec<f32>),
}

impl Store {
    fn slice(&self) -> WeightSlice<'_> {
        match self {
            Store::F32(v) => WeightSlice::F32(v),
            Store::F16(v) => WeightSlice::F16(v),
            Store::BF16(v) => WeightSlice::BF16(v),
            Store::I8(v, s) => WeightSlice::I8(QuantI8 { values: v, scales: Some(s) }),
        }
    }
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
    layout: BLayout,
    lda: usize,
    ldb: usize,
    ldc: usize,
    a: Vec<f32>,
    b: Store,
    c0: Vec<f32>,
    bias: Vec<f32>,
    scale: Vec<f32>,
}

fn run(backend: Backend, s: &mut Scratch, cs: &Case, ep: (bool, bool, bool, bool)) -> Vec<f32> {
    let mut c = cs.c0.clone();
    let epilogue = Epilogue {
        bias: ep.0.then_some(&cs.bias[..]),
        gelu: ep.1,
        accumulate: ep.2,
        scale: (ep.2 && ep.3).then_some(&cs.scale[..]),
    };
    let b = MatB { data: cs.b.slice(), k: cs.k, n: cs.n, layout: cs.layout, ld: cs.ldb };
    gemm(backend, s, Gemm { m: cs.m, a: &cs.a, lda: cs.lda, b, c: &mut c, ldc: cs.ldc, epilogue });
    c
}

/// The plain product `A·B` (no epilogue) in f64 and its error bound, element (i, j).
fn naive(cs: &Case, i: usize, j: usize) -> (f64, f64) {
    let b = MatB { data: cs.b.slice(), k: cs.k, n: cs.n, layout: cs.layout, ld: cs.ldb };
    let (mut dot, mut abs) = (0.0f64, 0.0f64);
    for p in 0..cs.k {
        let t = cs.a[i * cs.lda + p] as f64 * b.at(p, j) as f64;
        dot += t;
        abs += t.abs();
    }
    (dot, 2.0 * (cs.k as f64 + 2.0) * U * abs + 1e-30)
}

#[test]
fn avx512_is_bit_identical_to_avx2_and_within_bounds_of_naive() {
    // SAFETY (edition 2021: safe): set before any detection in this process (the only test).
    std::env::set_var("FACTORVIT_AVX512", "1");
    if !Backend::available().contains(&Backend::Avx512) {
        eprintln!("AVX-512 backend not available (CPU without AVX-512F, or compiler < 1.89): skipped");
        return;
    }
    assert_eq!(Backend::detect(), Backend::Avx512);
    assert!(Backend::Avx2.is_available());
    let mut rng = Rng(0xa512_a512_0000_0001);
    let shapes = [
        (1, 40, 9),
        (2, 33, 1),
        (11, 31, 17),
        (12, 32, 64),
        (13, 47, 5),
        (25, 70, 300),
        (197, 64, 197),
        (197, 197, 64),
        (30, 300, 600),
    ];
    let mut s2 = Scratch::new(Backend::Avx2);
    let mut s5 = Scratch::new(Backend::Avx512);
    let mut epilogues = Vec::new();
    for bias in [false, true] {
        for gelu in [false, true] {
            for (acc, scale) in [(false, false), (true, false), (true, true)] {
                epilogues.push((bias, gelu, acc, scale));
            }
        }
    }
    for &(m, n, k) in &shapes {
        for layout in [BLayout::NK, BLayout::KN] {
            for dt in 0..4 {
                for pad in [0, 5] {
                    let (lda, ldc) = (k + pad, n + pad);
                    let (brows, bcols) = if layout == BLayout::NK { (n, k) } else { (k, n) };
                    let ldb = bcols + pad;
                    let bv = rng.vec(brows * ldb);
                    let b = match dt {
                        0 => Store::F32(bv),
                        1 => Store::F16(bv.iter().map(|&x| f16::from_f32(x)).collect()),
                        2 => Store::BF16(bv.iter().map(|&x| bf16::from_f32(x)).collect()),
                        _ => Store::I8(
                            bv.iter().map(|&x| (x * 127.0).round() as i8).collect(),
                            (0..n).map(|_| rng.f().abs() / 64.0 + 1e-3).collect(),
                        ),
                    };
                    let cs = Case {
                        m,
                        n,
                        k,
                        layout,
                        lda,
                        ldb,
                        ldc,
                        a: rng.vec(m * lda),
                        b,
                        c0: rng.vec(m * ldc),
                        bias: rng.vec(n),
                        scale: rng.vec(n),
                    };
                    for &ep in &epilogues {
                        let want = run(Backend::Avx2, &mut s2, &cs, ep);
                        let got = run(Backend::Avx512, &mut s5, &cs, ep);
                        let same = got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(
                            same,
                            "({m}, {n}, {k}) {layout:?} dtype {dt} pad {pad} {ep:?}: AVX-512 differs from AVX2"
                        );
                        let fallback = run(Backend::Avx512, &mut s2, &cs, ep);
                        assert!(fallback.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
                    }
                    // The plain product against f64, and the padding between rows untouched.
                    let got = run(Backend::Avx512, &mut s5, &cs, (false, false, false, false));
                    for i in 0..m {
                        for j in 0..ldc {
                            let g = got[i * ldc + j];
                            if j >= n {
                                assert_eq!(g.to_bits(), cs.c0[i * ldc + j].to_bits(), "padding written");
                                continue;
                            }
                            let (want, tol) = naive(&cs, i, j);
                            assert!((g as f64 - want).abs() <= tol, "({m}, {n}, {k}) C[{i}][{j}] = {g}, naive {want}");
                        }
                    }
                }
            }
        }
    }

    // A whole session: same logits on AVX2 and AVX-512, 1 and 2 threads.
    let model = Model::from_bytes(TINY).unwrap();
    let mut logits = Vec::new();
    for threads in [1, 2] {
        for backend in [Backend::Avx2, Backend::Avx512] {
            let mut session = model.session(SessionOptions { threads, batch: 2, ..Default::default() }).unwrap();
            assert_eq!(session.backend(), Backend::Avx512);
            session.set_backend(backend).unwrap();
            let [h, w] = session.image_size();
            let x: Vec<f32> =
                (0..2 * model.config().in_chans * h * w).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            logits.push(session.run(&x).unwrap().logits.unwrap().to_vec());
        }
    }
    for l in &logits[1..] {
        assert!(l.iter().zip(&logits[0]).all(|(a, b)| a.to_bits() == b.to_bits()), "session logits differ");
    }
}
