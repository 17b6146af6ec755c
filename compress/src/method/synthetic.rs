//! Random-weight ViTs of any geometry (tests, and the compressor speed benchmark on a
//! DeiT-Base-shaped model). Weights are `N(0, 1/fan_in)`, norms near identity, biases small, so
//! activations stay in a realistic range through the blocks.

use std::collections::BTreeMap;

use factorvit::format::schema::{
    BlockLinear, BlockTensors, LinearTensors, NormTensors, CLS_TOKEN, FINAL_NORM, HEAD, PATCH_EMBED, POS_EMBED,
};
use factorvit::{GlobalPool, Head, Interpolation, ModelConfig, PosInterpolation, Preprocess};

use crate::checkpoint::{ModelSpec, SpecError, StoredTensor};
use crate::data::Rng;

/// Geometry of a synthetic ViT.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticVit {
    /// Square input size.
    pub image: usize,
    /// Patch size.
    pub patch: usize,
    /// Input channels.
    pub channels: usize,
    /// Embedding width.
    pub dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Heads.
    pub heads: usize,
    /// MLP width.
    pub mlp: usize,
    /// Classes (0 = backbone).
    pub classes: usize,
}

impl SyntheticVit {
    /// DeiT-Base geometry: 224×224, patch 16, dim 768, depth 12, 12 heads, MLP 3072, 1000 classes.
    pub fn deit_base() -> SyntheticVit {
        SyntheticVit { image: 224, patch: 16, channels: 3, dim: 768, depth: 12, heads: 12, mlp: 3072, classes: 1000 }
    }

    /// A small model on 28×28 grey images (Fashion-MNIST shaped) for fast tests.
    pub fn micro() -> SyntheticVit {
        SyntheticVit { image: 28, patch: 4, channels: 1, dim: 32, depth: 2, heads: 2, mlp: 64, classes: 10 }
    }
}

/// A random model of geometry `g` (f32 tensors).
pub fn random_vit_spec(g: &SyntheticVit, seed: u64) -> Result<ModelSpec, SpecError> {
    let mut rng = Rng::scrambled(seed);
    let mut t: BTreeMap<String, StoredTensor> = BTreeMap::new();
    let mut put = |name: &str, shape: Vec<usize>, f: &mut dyn FnMut() -> f64| -> Result<(), SpecError> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| f() as f32).collect();
        t.insert(name.to_string(), StoredTensor::from_f32(shape, &v)?);
        Ok(())
    };
    let grid = g.image / g.patch;
    let d = g.dim;
    let pe_in = g.channels * g.patch * g.patch;
    let config = ModelConfig {
        architecture: format!("synthetic_vit_d{}_l{}", g.dim, g.depth),
        image_size: [g.image, g.image],
        patch_size: g.patch,
        in_chans: g.channels,
        embed_dim: d,
        depth: g.depth,
        num_heads: g.heads,
        mlp_hidden: g.mlp,
        layer_norm_eps: 1e-6,
        class_token: true,
        dist_token: false,
        pos_embed_prefix: 1,
        pos_embed_grid: [grid, grid],
        pos_interpolation: PosInterpolation::Bicubic,
        layer_scale: false,
        final_norm: true,
        global_pool: GlobalPool::Token,
        fc_norm: false,
        head: if g.classes > 0 { Head::Linear } else { Head::None },
        num_classes: g.classes,
    };
    let normal = |scale: f64, rng: &mut Rng| rng.normal() * scale;
    let patch_embed = LinearTensors::of(PATCH_EMBED);
    put(&patch_embed.weight, vec![d, g.channels, g.patch, g.patch], &mut || {
        normal(1.0 / (pe_in as f64).sqrt(), &mut rng)
    })?;
    let mut r2 = Rng::scrambled(seed ^ 1);
    put(&patch_embed.bias, vec![d], &mut || 0.02 * r2.normal())?;
    put(CLS_TOKEN, vec![1, 1, d], &mut || 0.5 * r2.normal())?;
    put(POS_EMBED, vec![1, 1 + grid * grid, d], &mut || 0.5 * r2.normal())?;
    for i in 0..g.depth {
        let block = BlockTensors::of(i);
        for norm in [&block.norm1, &block.norm2] {
            put(&norm.weight, vec![d], &mut || 1.0 + 0.1 * r2.normal())?;
            put(&norm.bias, vec![d], &mut || 0.05 * r2.normal())?;
        }
        for which in BlockLinear::ALL {
            let (m, n) = which.shape(&config);
            let linear = LinearTensors::of(&block.linear(which));
            let s = 1.0 / (n as f64).sqrt();
            // A decaying spectrum (as trained weights have): scale column j by 0.97^(j mod 64)-ish.
            let mut k = 0usize;
            put(&linear.weight, vec![m, n], &mut || {
                let col = k % n;
                k += 1;
                r2.normal() * s * (1.0 + 2.0 * (-(col as f64) / 8.0).exp())
            })?;
            put(&linear.bias, vec![m], &mut || 0.02 * r2.normal())?;
        }
    }
    let final_norm = NormTensors::of(FINAL_NORM);
    put(&final_norm.weight, vec![d], &mut || 1.0 + 0.1 * r2.normal())?;
    put(&final_norm.bias, vec![d], &mut || 0.05 * r2.normal())?;
    if g.classes > 0 {
        let head = LinearTensors::of(HEAD);
        put(&head.weight, vec![g.classes, d], &mut || r2.normal() / (d as f64).sqrt())?;
        put(&head.bias, vec![g.classes], &mut || 0.02 * r2.normal())?;
    }
    let preprocess = Preprocess {
        input_size: [g.channels, g.image, g.image],
        mean: vec![0.5; g.channels],
        std: vec![0.5; g.channels],
        interpolation: Interpolation::Bicubic,
        crop_pct: 1.0,
    };
    Ok(ModelSpec {
        config,
        preprocess,
        labels: (0..g.classes).map(|i| format!("class {i}")).collect(),
        source: format!("synthetic random weights, seed {seed}"),
        tensors: t,
        metadata: BTreeMap::new(),
        warnings: Vec::new(),
    })
}

/// Random normalised images `[n, C, H, W]` for a geometry (smooth blobs plus noise).
pub fn random_images(g: &SyntheticVit, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::scrambled(seed);
    let mut out = Vec::with_capacity(n * g.channels * g.image * g.image);
    for _ in 0..n {
        let (cx, cy, s) = (
            rng.next_f64() * g.image as f64,
            rng.next_f64() * g.image as f64,
            2.0 + rng.next_f64() * g.image as f64 / 3.0,
        );
        for _ in 0..g.channels {
            let amp = rng.normal();
            for y in 0..g.image {
                for x in 0..g.image {
                    let r2 = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)) / (s * s);
                    out.push((amp * (-r2).exp() + 0.3 * rng.normal()) as f32);
                }
            }
        }
    }
    out
}
