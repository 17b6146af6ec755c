//! End-to-end check of the runtime alone (no compressor, no checkpoint import), built for
//! cross targets: `scripts/test-aarch64.sh` runs it under `qemu-aarch64` to exercise the NEON
//! kernels on whole models.
//!
//! ```text
//! check_fixtures --fixtures tests/fixtures --models DIR [--fmnist MODEL.fvit DATA.safetensors N]
//! ```
//!
//! `DIR` holds `<fixture>.fvit` (f32) and `<fixture>.f16.fvit` for each model fixture, written
//! natively by `factorvit convert`. For every backend available here (scalar, and NEON or AVX2):
//!
//! - the f32 files must reproduce every reference tensor of `expected.safetensors` (embeddings,
//!   each block, final features, logits) within 1e-4 (the project's contract);
//! - the same models with every block linear replaced *in memory* by an exact factorisation
//!   (`U·V` on even blocks, `U·V + S` with a CSR `S` on odd blocks) must too: this runs the
//!   low-rank and sparse paths of the kernels end to end;
//! - the f16 files must agree across backends within 1e-4 and stay close to the f32 reference
//!   (weights rounded to f16: bounded by 1e-2, with identical top classes);
//! - one model must give identical results with 1 and 2 threads.
//!
//! With `--fmnist`, a compressed Fashion-MNIST classifier (low-rank, f16) runs on the first `N`
//! test images with every backend: logits must agree within 1e-4 and top classes exactly.
//!
//! Exits with status 1 and a message on the first failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use factorvit::kernels::Backend;
use factorvit::safetensors::{Container, DType};
use factorvit::{BlockLinear, CsrMatrix, LinearWeights, Model, Observer, SessionOptions};

const FIXTURES: [&str; 6] = [
    "timm-vit-micro",
    "timm-deit-distilled-micro",
    "timm-vit-avgpool-layerscale-micro",
    "hf-vit-micro",
    "hf-deit-distilled-micro",
    "hf-dinov2-micro",
];
/// Reference tolerance (max abs), as in `tests/fixtures.rs`.
const TOLERANCE: f32 = 1e-4;
/// Bound for f16-rounded weights against the f32 reference.
const F16_BOUND: f32 = 1e-2;

type Check<T> = Result<T, String>;

/// A float tensor read as f32.
struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn read_tensors(path: &Path) -> Check<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c = Container::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for t in c.tensors() {
        let raw = &bytes[t.start..t.end];
        let data: Vec<f32> = match t.dtype {
            DType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::U8 => raw.iter().map(|&b| f32::from(b)).collect(),
            _ => continue,
        };
        out.push((t.name.clone(), Tensor { shape: t.shape.clone(), data }));
    }
    Ok(out)
}

fn take(tensors: &mut Vec<(String, Tensor)>, name: &str, path: &Path) -> Check<Tensor> {
    let i = tensors.iter().position(|(n, _)| n == name).ok_or_else(|| format!("{}: no `{name}`", path.display()))?;
    Ok(tensors.swap_remove(i).1)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> Check<f32> {
    if a.len() != b.len() {
        return Err(format!("length mismatch: {} vs {}", a.len(), b.len()));
    }
    Ok(a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max))
}

fn argmax_rows(x: &[f32], cols: usize) -> Vec<usize> {
    x.chunks(cols).map(|r| r.iter().enumerate().fold(0, |best, (j, &v)| if v > r[best] { j } else { best })).collect()
}

#[derive(Default)]
struct Capture {
    embeddings: Vec<f32>,
    blocks: Vec<Vec<f32>>,
}

impl Observer for Capture {
    fn embeddings(&mut self, x: &[f32], _rows: usize, _dim: usize) {
        self.embeddings = x.to_vec();
    }
    fn block_output(&mut self, _block: usize, x: &[f32], _rows: usize, _dim: usize) {
        self.blocks.push(x.to_vec());
    }
}

/// Every output a fixture reference can name, from one run.
struct Run {
    outputs: Vec<(String, Vec<f32>)>,
    classes: usize,
}

fn run(model: &Model<'_>, input: &Tensor, backend: Backend, threads: usize) -> Check<Run> {
    let [b, _, h, w] = input.shape[..] else { return Err("pixel_values must be 4-D".into()) };
    let opts = SessionOptions { threads, batch: b, image_size: [h, w], ..Default::default() };
    let mut session = model.session(opts).map_err(|e| e.to_string())?;
    session.set_backend(backend).map_err(|e| e.to_string())?;
    let mut cap = Capture::default();
    let out = session.run_observed(&input.data, &mut cap).map_err(|e| e.to_string())?;
    let mut outputs = vec![
        ("last_hidden_state".to_string(), out.last_hidden_state.to_vec()),
        ("pooler_output".to_string(), out.pooler_output.to_vec()),
        ("embeddings".to_string(), cap.embeddings),
    ];
    if let Some(l) = out.logits {
        outputs.push(("logits".to_string(), l.to_vec()));
    }
    let classes = out.num_classes;
    outputs.extend(cap.blocks.into_iter().enumerate().map(|(i, x)| (format!("block.{i}"), x)));
    Ok(Run { outputs, classes })
}

impl Run {
    fn get(&self, name: &str) -> Option<&[f32]> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// Largest difference over every reference tensor.
fn against_reference(got: &Run, expected: &[(String, Tensor)]) -> Check<(f32, String)> {
    let mut worst = (0.0f32, String::new());
    for (name, want) in expected {
        if name == "position_embeddings_interpolated" {
            continue; // debug aid of the fixtures, covered by `embeddings`
        }
        let g = got.get(name).ok_or_else(|| format!("no output for reference tensor `{name}`"))?;
        let d = max_abs_diff(g, &want.data).map_err(|e| format!("`{name}`: {e}"))?;
        if d >= worst.0 {
            worst = (d, name.clone());
        }
    }
    Ok(worst)
}

fn agreement(a: &Run, b: &Run) -> Check<f32> {
    let mut worst = 0.0f32;
    for (name, x) in &a.outputs {
        let y = b.get(name).ok_or_else(|| format!("missing `{name}`"))?;
        worst = worst.max(max_abs_diff(x, y)?);
    }
    Ok(worst)
}

/// A deterministic pseudo-random value in [-1, 1).
fn noise(state: &mut u64) -> f32 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Replaces every block linear with an exact factorisation of its weight: `W = W·I` or `I·W`
/// (low rank, rank min(m, n)) on even blocks, `W = U·V + (W − U·V)` with a rank-2 `U·V` and a
/// full CSR residual on odd blocks.
fn factorise_in_memory(model: &mut Model<'_>) -> Check<usize> {
    let depth = model.config().depth;
    let mut replaced = 0;
    let mut seed = 0x5eed_u64;
    for block in 0..depth {
        for which in BlockLinear::ALL {
            let layer = model.block_linear(block, which).ok_or("missing block linear")?;
            let (m, n) = (layer.info().out_features, layer.info().in_features);
            let bias = layer.bias().map(<[f32]>::to_vec);
            let w = model.effective_weight(layer);
            let weights = if block % 2 == 0 {
                let r = m.min(n);
                let eye: Vec<f32> = (0..r * r).map(|i| if i / r == i % r { 1.0 } else { 0.0 }).collect();
                if m <= n {
                    LinearWeights::Factored { u: eye, v: w, rank: r, sparse: None }
                } else {
                    LinearWeights::Factored { u: w, v: eye, rank: r, sparse: None }
                }
            } else {
                let r = 2;
                let u: Vec<f32> = (0..m * r).map(|_| 0.05 * noise(&mut seed)).collect();
                let v: Vec<f32> = (0..r * n).map(|_| 0.05 * noise(&mut seed)).collect();
                let mut csr = CsrMatrix { row_ptr: vec![0], col_idx: Vec::new(), values: Vec::new() };
                for i in 0..m {
                    for j in 0..n {
                        let uv: f32 = (0..r).map(|p| u[i * r + p] * v[p * n + j]).sum();
                        let s = w[i * n + j] - uv;
                        if s != 0.0 {
                            csr.col_idx.push(j as u32);
                            csr.values.push(s);
                        }
                    }
                    csr.row_ptr.push(csr.col_idx.len() as u32);
                }
                LinearWeights::Factored { u, v, rank: r, sparse: Some(csr) }
            };
            model.set_linear(&which.name(block), weights, bias).map_err(|e| e.to_string())?;
            replaced += 1;
        }
    }
    Ok(replaced)
}

fn check_fixture(fixtures: &Path, models: &Path, name: &str, backends: &[Backend]) -> Check<()> {
    let dir = fixtures.join(name);
    let input_path = dir.join("input.safetensors");
    let input = take(&mut read_tensors(&input_path)?, "pixel_values", &input_path)?;
    let expected = read_tensors(&dir.join("expected.safetensors"))?;
    let load = |file: &str| -> Check<Model<'static>> {
        let path = models.join(file);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Model::from_vec(bytes).map_err(|e| format!("{}: {e}", path.display()))
    };

    // f32 weights against the PyTorch reference, every backend.
    let dense = load(&format!("{name}.fvit"))?;
    let mut f32_runs = Vec::new();
    for &b in backends {
        let r = run(&dense, &input, b, 1)?;
        let (d, worst) = against_reference(&r, &expected)?;
        println!("  {name:<36} f32 dense        {:<14} max |diff| vs reference {d:.2e} ({worst})", b.name());
        if d > TOLERANCE {
            return Err(format!("{name} f32 on {}: `{worst}` differs by {d:e} > {TOLERANCE:e}", b.name()));
        }
        f32_runs.push(r);
    }

    // The same weights as exact low-rank / low-rank + sparse factorisations.
    let mut factored = load(&format!("{name}.fvit"))?;
    let replaced = factorise_in_memory(&mut factored)?;
    for &b in backends {
        let r = run(&factored, &input, b, 1)?;
        let (d, worst) = against_reference(&r, &expected)?;
        println!(
            "  {name:<36} f32 factored     {:<14} max |diff| vs reference {d:.2e} ({worst}; {replaced} layers)",
            b.name()
        );
        if d > TOLERANCE {
            return Err(format!("{name} factored on {}: `{worst}` differs by {d:e} > {TOLERANCE:e}", b.name()));
        }
    }

    // f16 weights: backends agree; close to the f32 reference.
    let half = load(&format!("{name}.f16.fvit"))?;
    let mut half_runs = Vec::new();
    for &b in backends {
        let r = run(&half, &input, b, 1)?;
        let (d, worst) = against_reference(&r, &expected)?;
        println!("  {name:<36} f16 dense        {:<14} max |diff| vs f32 reference {d:.2e} ({worst})", b.name());
        if d > F16_BOUND {
            return Err(format!("{name} f16 on {}: `{worst}` differs by {d:e} > {F16_BOUND:e}", b.name()));
        }
        if let (Some(h), Some(f)) = (r.get("logits"), f32_runs[0].get("logits")) {
            if argmax_rows(h, r.classes) != argmax_rows(f, r.classes) {
                return Err(format!("{name} f16 on {}: top classes differ from f32", b.name()));
            }
        }
        half_runs.push(r);
    }
    for (i, r) in half_runs.iter().enumerate().skip(1) {
        let d = agreement(&half_runs[0], r)?;
        println!("  {name:<36} f16 {} vs {}: max |diff| {d:.2e}", backends[i].name(), backends[0].name());
        if d > TOLERANCE {
            return Err(format!("{name} f16: {} and {} differ by {d:e}", backends[i].name(), backends[0].name()));
        }
    }
    Ok(())
}

fn check_threads(fixtures: &Path, models: &Path) -> Check<()> {
    let name = "timm-vit-avgpool-layerscale-micro";
    let path = fixtures.join(name).join("input.safetensors");
    let input = take(&mut read_tensors(&path)?, "pixel_values", &path)?;
    let bytes = std::fs::read(models.join(format!("{name}.f16.fvit"))).map_err(|e| e.to_string())?;
    let model = Model::from_vec(bytes).map_err(|e| e.to_string())?;
    let one = run(&model, &input, Backend::detect(), 1)?;
    let two = run(&model, &input, Backend::detect(), 2)?;
    let d = agreement(&one, &two)?;
    println!("  {name:<36} f16 {} 1 vs 2 threads: max |diff| {d:.2e}", Backend::detect().name());
    if d != 0.0 {
        return Err(format!("{name}: 2 threads differ from 1 by {d:e}"));
    }
    Ok(())
}

fn check_fmnist(model_path: &Path, data_path: &Path, count: usize, backends: &[Backend]) -> Check<()> {
    let bytes = std::fs::read(model_path).map_err(|e| format!("{}: {e}", model_path.display()))?;
    let model = Model::from_vec(bytes).map_err(|e| format!("{}: {e}", model_path.display()))?;
    let mut data = read_tensors(data_path)?;
    let images = take(&mut data, "images", data_path)?;
    let labels = take(&mut data, "labels", data_path)?;
    let p = model.preprocess();
    let [c, h, w] = p.input_size;
    if c != 1 || images.shape[1..] != [h, w] {
        return Err(format!(
            "{}: images {:?} do not fit the model input {:?}",
            data_path.display(),
            images.shape,
            p.input_size
        ));
    }
    let count = count.min(images.shape[0]);
    let pixels: Vec<f32> = images.data[..count * h * w].iter().map(|&v| (v / 255.0 - p.mean[0]) / p.std[0]).collect();
    let input = Tensor { shape: vec![count, 1, h, w], data: pixels };
    let factored = model.linears().filter(|l| l.info().kind.is_factored()).count();
    let mut runs = Vec::new();
    for &b in backends {
        let r = run(&model, &input, b, 1)?;
        let logits = r.get("logits").ok_or("the Fashion-MNIST model has no logits")?;
        let pred = argmax_rows(logits, r.classes);
        let correct = pred.iter().zip(&labels.data).filter(|(p, l)| **p as f32 == **l).count();
        println!(
            "  {:<36} {count} images, {:<14} {correct}/{count} correct ({factored} factored layers)",
            model_path.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
            b.name()
        );
        runs.push((r, pred));
    }
    for (i, (r, pred)) in runs.iter().enumerate().skip(1) {
        let (r0, pred0) = &runs[0];
        let d = max_abs_diff(r.get("logits").unwrap_or_default(), r0.get("logits").unwrap_or_default())?;
        println!("  fmnist logits {} vs {}: max |diff| {d:.2e}", backends[i].name(), backends[0].name());
        if d > TOLERANCE || pred != pred0 {
            return Err(format!(
                "fmnist: {} and {} disagree (logits differ by {d:e})",
                backends[i].name(),
                backends[0].name()
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut fixtures = PathBuf::from("tests/fixtures");
    let mut models = None;
    let mut fmnist = None;
    let mut i = 0;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--fixtures", Some(v)) => fixtures = PathBuf::from(v),
            ("--models", Some(v)) => models = Some(PathBuf::from(v)),
            ("--fmnist", Some(v)) if i + 3 < args.len() => {
                let n = args[i + 3].parse().unwrap_or(8);
                fmnist = Some((PathBuf::from(v), PathBuf::from(&args[i + 2]), n));
                i += 2;
            }
            _ => {
                eprintln!("usage: check_fixtures --fixtures DIR --models DIR [--fmnist MODEL.fvit DATA.safetensors N]");
                return ExitCode::from(2);
            }
        }
        i += 2;
    }
    let Some(models) = models else {
        eprintln!("check_fixtures: --models DIR is required");
        return ExitCode::from(2);
    };
    let backends = Backend::available();
    let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    println!("backends: {}", names.join(", "));
    let mut result = FIXTURES.iter().try_for_each(|name| check_fixture(&fixtures, &models, name, &backends));
    if result.is_ok() {
        result = check_threads(&fixtures, &models);
    }
    if let (Ok(()), Some((model, data, n))) = (&result, &fmnist) {
        result = check_fmnist(model, data, *n, &backends);
    }
    match result {
        Ok(()) => {
            println!("check_fixtures: all checks passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("check_fixtures: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
