//! Kernel benchmarks: ViT-B/16 shapes (197 tokens, dim 768, MLP 3072, 64-dim heads).
//!
//! Throughput is reported as elements = floating-point operations, so criterion's `Gelem/s`
//! reads as GFLOP/s (a GEMM `m × k · k × n` counts `2·m·n·k`). The single-core FMA peak
//! (`kernels::peak::measure_fma_peak_gflops`) is printed first as the yardstick.
//!
//! `cargo bench -p factorvit-e2e --bench kernels` (the whole file runs in about two minutes);
//! `cargo bench -p factorvit-e2e --bench kernels -- dense` to filter.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, Throughput};
use factorvit::kernels::{
    self, gemm, gemm_parallel, BLayout, Backend, Epilogue, Gemm, MatB, QuantI8, Rows, RowsMut, Scratch, WeightSlice,
};
use factorvit::parallel::Exec;
use half::{bf16, f16};

const TOKENS: usize = 197;
const DIM: usize = 768;
const HIDDEN: usize = 3072;
const HEAD: usize = 64;

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn flops(m: usize, n: usize, k: usize) -> u64 {
    2 * (m * n * k) as u64
}

fn configure(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
}

/// Dense linear 197×768 → 3072 (weight `[3072, 768]`), f32 / f16 / bf16 / int8, 1 and 2 threads.
fn dense(c: &mut Criterion) {
    let backend = Backend::detect();
    let a = data(TOKENS * DIM, 1);
    let w = data(HIDDEN * DIM, 2);
    let w16: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
    let wb16: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
    let wi8: Vec<i8> = w.iter().map(|&x| (x * 127.0).round().clamp(-127.0, 127.0) as i8).collect();
    let si8 = vec![1.0f32 / 127.0; HIDDEN];
    let mut out = vec![0.0f32; TOKENS * HIDDEN];
    let mut scratch = Scratch::new(backend);
    let mut g = c.benchmark_group("dense_197x768x3072");
    configure(&mut g);
    g.throughput(Throughput::Elements(flops(TOKENS, HIDDEN, DIM)));
    for (name, ws) in [
        ("f32", WeightSlice::F32(&w)),
        ("f16", WeightSlice::F16(&w16)),
        ("bf16", WeightSlice::BF16(&wb16)),
        ("i8", WeightSlice::I8(QuantI8 { values: &wi8, scales: Some(&si8) })),
    ] {
        g.bench_function(name, |bch| {
            bch.iter(|| {
                gemm(
                    backend,
                    &mut scratch,
                    Gemm {
                        m: TOKENS,
                        a: &a,
                        lda: DIM,
                        b: MatB::weight(ws, HIDDEN, DIM),
                        c: &mut out,
                        ldc: HIDDEN,
                        epilogue: Epilogue::default(),
                    },
                );
                black_box(&out);
            })
        });
    }
    let bias = data(HIDDEN, 3);
    g.bench_function("f32_bias_gelu", |bch| {
        bch.iter(|| {
            gemm(
                backend,
                &mut scratch,
                Gemm {
                    m: TOKENS,
                    a: &a,
                    lda: DIM,
                    b: MatB::weight(WeightSlice::F32(&w), HIDDEN, DIM),
                    c: &mut out,
                    ldc: HIDDEN,
                    epilogue: Epilogue { bias: Some(&bias), gelu: true, ..Epilogue::default() },
                },
            );
        })
    });
    let exec = Exec::new(2);
    let mut scratches: Vec<Scratch> = (0..2).map(|_| Scratch::new(backend)).collect();
    g.bench_function("f32_2threads", |bch| {
        bch.iter(|| {
            gemm_parallel(
                backend,
                &exec,
                &mut scratches,
                Gemm {
                    m: TOKENS,
                    a: &a,
                    lda: DIM,
                    b: MatB::weight(WeightSlice::F32(&w), HIDDEN, DIM),
                    c: &mut out,
                    ldc: HIDDEN,
                    epilogue: Epilogue::default(),
                },
            );
        })
    });
    g.finish();

    // MLP fc2: 197×3072 → 768 with LayerScale residual accumulation (k = 3072: 12 k blocks).
    let h = data(TOKENS * HIDDEN, 4);
    let scale = data(DIM, 5);
    let mut resid = vec![0.0f32; TOKENS * DIM];
    let mut g = c.benchmark_group("fc2_197x3072x768");
    configure(&mut g);
    g.throughput(Throughput::Elements(flops(TOKENS, DIM, HIDDEN)));
    g.bench_function("f32_accumulate_scale", |bch| {
        bch.iter(|| {
            gemm(
                backend,
                &mut scratch,
                Gemm {
                    m: TOKENS,
                    a: &h,
                    lda: HIDDEN,
                    b: MatB::weight(WeightSlice::F32(&w), DIM, HIDDEN),
                    c: &mut resid,
                    ldc: DIM,
                    epilogue: Epilogue { bias: Some(&bias[..DIM]), gelu: false, accumulate: true, scale: Some(&scale) },
                },
            );
        })
    });
    g.finish();
}

/// Factored linear `y = (x·Vᵀ)·Uᵀ` at rank r, vs the dense 768 → 3072 baseline. The ideal time
/// ratio to dense is `r(k + n)/(k·n)` = 0.625, 0.3125, 0.156 for r = 384, 192, 96.
fn factored(c: &mut Criterion) {
    let backend = Backend::detect();
    let a = data(TOKENS * DIM, 6);
    let w = data(HIDDEN * DIM, 7);
    let mut out = vec![0.0f32; TOKENS * HIDDEN];
    let mut mid = vec![0.0f32; TOKENS * DIM];
    let mut scratch = Scratch::new(backend);
    let mut g = c.benchmark_group("factored_197x768x3072");
    configure(&mut g);
    // Same "work" unit for all entries (the dense flops), so Gelem/s compares effective speed.
    g.throughput(Throughput::Elements(flops(TOKENS, HIDDEN, DIM)));
    g.bench_function("dense", |bch| {
        bch.iter(|| {
            gemm(
                backend,
                &mut scratch,
                Gemm {
                    m: TOKENS,
                    a: &a,
                    lda: DIM,
                    b: MatB::weight(WeightSlice::F32(&w), HIDDEN, DIM),
                    c: &mut out,
                    ldc: HIDDEN,
                    epilogue: Epilogue::default(),
                },
            );
        })
    });
    for r in [DIM / 2, DIM / 4, DIM / 8] {
        let v = &w[..r * DIM];
        let u = &w[..HIDDEN * r];
        g.bench_function(format!("rank{r}"), |bch| {
            bch.iter(|| {
                gemm(
                    backend,
                    &mut scratch,
                    Gemm {
                        m: TOKENS,
                        a: &a,
                        lda: DIM,
                        b: MatB::weight(WeightSlice::F32(v), r, DIM),
                        c: &mut mid,
                        ldc: r,
                        epilogue: Epilogue::default(),
                    },
                );
                gemm(
                    backend,
                    &mut scratch,
                    Gemm {
                        m: TOKENS,
                        a: &mid,
                        lda: r,
                        b: MatB::weight(WeightSlice::F32(u), HIDDEN, r),
                        c: &mut out,
                        ldc: HIDDEN,
                        epilogue: Epilogue::default(),
                    },
                );
            })
        });
    }
    g.finish();
}

/// Per-head attention GEMMs with q, k, v interleaved in one `[197, 3·768]` buffer.
fn attention(c: &mut Criterion) {
    let backend = Backend::detect();
    let qkv = data(TOKENS * 3 * DIM, 8);
    let mut s = data(TOKENS * TOKENS, 9);
    let mut o = vec![0.0f32; TOKENS * DIM];
    let mut scratch = Scratch::new(backend);
    let mut g = c.benchmark_group("attention_head");
    configure(&mut g);
    g.throughput(Throughput::Elements(flops(TOKENS, TOKENS, HEAD)));
    g.bench_function("qk_t_197x64x197", |bch| {
        bch.iter(|| {
            gemm(
                backend,
                &mut scratch,
                Gemm {
                    m: TOKENS,
                    a: &qkv,
                    lda: 3 * DIM,
                    b: MatB {
                        data: WeightSlice::F32(&qkv[DIM..]),
                        k: HEAD,
                        n: TOKENS,
                        layout: BLayout::NK,
                        ld: 3 * DIM,
                    },
                    c: &mut s,
                    ldc: TOKENS,
                    epilogue: Epilogue::default(),
                },
            );
        })
    });
    g.bench_function("pv_197x197x64", |bch| {
        bch.iter(|| {
            gemm(
                backend,
                &mut scratch,
                Gemm {
                    m: TOKENS,
                    a: &s,
                    lda: TOKENS,
                    b: MatB {
                        data: WeightSlice::F32(&qkv[2 * DIM..]),
                        k: TOKENS,
                        n: HEAD,
                        layout: BLayout::KN,
                        ld: 3 * DIM,
                    },
                    c: &mut o,
                    ldc: DIM,
                    epilogue: Epilogue::default(),
                },
            );
        })
    });
    g.finish();
}

/// Row and element-wise kernels on 197 × 768.
fn elementwise(c: &mut Criterion) {
    let backend = Backend::detect();
    let x = data(TOKENS * DIM, 10);
    let gamma = data(DIM, 11);
    let beta = data(DIM, 12);
    let mut out = vec![0.0f32; TOKENS * DIM];
    let mut g = c.benchmark_group("rows_197x768");
    configure(&mut g);
    g.throughput(Throughput::Elements((TOKENS * DIM) as u64));
    g.bench_function("layer_norm", |bch| {
        bch.iter(|| {
            kernels::layer_norm(
                backend,
                Rows::new(&x, TOKENS, DIM, DIM),
                &gamma,
                &beta,
                1e-6,
                RowsMut::new(&mut out, TOKENS, DIM, DIM),
            )
        })
    });
    g.bench_function("softmax", |bch| {
        bch.iter(|| {
            out.copy_from_slice(&x);
            kernels::softmax_rows(backend, TOKENS, DIM, &mut out, DIM, 0.125);
        })
    });
    g.bench_function("gelu", |bch| {
        bch.iter(|| {
            out.copy_from_slice(&x);
            kernels::gelu(backend, &mut out);
        })
    });
    g.finish();
}

/// Load-time integrity pass: CRC-32 alone, and the CRC + finiteness scan `Model` runs at load
/// over a DeiT-Tiny-sized set of tensors (22 MB f32, 48 matrices + vectors).
fn integrity(c: &mut Criterion) {
    let bytes: Vec<u8> = (0..16usize << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    let mut g = c.benchmark_group("integrity");
    configure(&mut g);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("crc32_16MiB", |bch| bch.iter(|| factorvit::checksum::crc32(&bytes)));
    g.finish();
    let spec = factorvit_compress::method::synthetic::random_vit_spec(
        &factorvit_compress::method::synthetic::SyntheticVit {
            image: 224,
            patch: 16,
            channels: 3,
            dim: 192,
            depth: 12,
            heads: 3,
            mlp: 768,
            classes: 1000,
        },
        1,
    )
    .expect("synthetic spec");
    let file = factorvit_compress::writer::to_bytes(&spec).expect("serialise");
    let container = factorvit::safetensors::Container::parse(&file).expect("parse");
    let mut g = c.benchmark_group("integrity");
    configure(&mut g);
    g.throughput(Throughput::Bytes(file.len() as u64));
    g.bench_function("verify_deit_tiny_f32", |bch| {
        bch.iter(|| factorvit::checksum::verify(&container, &file, factorvit::ChecksumPolicy::Require, true).unwrap())
    });
    g.bench_function("load_deit_tiny_f32_verified", |bch| bch.iter(|| factorvit::Model::from_bytes(&file).unwrap()));
    let skip = factorvit::LoadOptions {
        checksums: factorvit::ChecksumPolicy::Skip,
        check_finite: false,
        ..Default::default()
    };
    g.bench_function("load_deit_tiny_f32_unverified", |bch| {
        bch.iter(|| factorvit::Model::from_bytes_with(&file, &skip).unwrap())
    });
    g.finish();
}

fn main() {
    let peak = kernels::peak::measure_fma_peak_gflops();
    println!(
        "backend {}: single-core FMA peak {peak:.1} GFLOP/s (implied clock {:.2} GHz at 32 flop/cycle)",
        Backend::detect().name(),
        peak / 32.0
    );
    let mut c = Criterion::default().configure_from_args();
    dense(&mut c);
    factored(&mut c);
    attention(&mut c);
    elementwise(&mut c);
    integrity(&mut c);
    c.final_summary();
}
