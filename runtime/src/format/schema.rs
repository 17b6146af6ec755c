//! Which tensors a configuration implies, and their names: the one place that spells a tensor
//! name of the format (`docs/FORMAT.md`, "Tensors").
//!
//! * a linear layer `L` (`blocks.{i}.attn.qkv`, `head`, ...) stores [`LinearTensors::of`]`(L)`:
//!   `L.weight` (dense) or `L.u`, `L.v` (+ `L.sparse.row_ptr`, `L.sparse.col_idx`,
//!   `L.sparse.values`), and optionally `L.bias`; an I8 weight tensor `T` comes with its F32
//!   channel scales [`LinearTensors::scale_of`]`(T)` (`L.weight_scale`, `L.u_scale`,
//!   `L.v_scale`, `L.sparse.values_scale`);
//! * a LayerNorm `N` stores [`NormTensors::of`]`(N)`: `N.weight`, `N.bias`;
//! * block `i` holds [`BlockTensors::of`]`(i)`: two norms, two LayerScale vectors and the four
//!   [`BlockLinear`]s;
//! * the rest are fixed names: [`PATCH_EMBED`], [`CLS_TOKEN`], [`DIST_TOKEN`], [`POS_EMBED`],
//!   [`FINAL_NORM`], [`FC_NORM`], [`HEAD`], [`HEAD_DIST`].
//!
//! [`linear_layers`] (and its block part [`block_linear_layers`]) and [`fixed_tensors`] list
//! what a [`ModelConfig`] requires; [`model_order_key`] is the order the writer stores tensors
//! in. [`suffix`] spells the parts after `L.`, [`split_block_name`] and [`parse_block_linear`]
//! read block names back.
//!
//! ```
//! use factorvit::format::schema::{BlockLinear, BlockTensors, LinearTensors};
//! let fc1 = BlockLinear::Fc1.name(3);
//! assert_eq!(fc1, "blocks.3.mlp.fc1");
//! let t = LinearTensors::of(&fc1);
//! assert_eq!((t.weight.as_str(), t.u.as_str(), t.sparse_values.as_str()),
//!            ("blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc1.u", "blocks.3.mlp.fc1.sparse.values"));
//! assert_eq!(BlockTensors::of(3).norm2.bias, "blocks.3.norm2.bias");
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::format::config::{Head, ModelConfig};

/// The patch embedding, a dense linear layer stored as a convolution weight `[D, C, p, p]`.
pub const PATCH_EMBED: &str = "patch_embed";
/// The class token `[1, 1, D]`.
pub const CLS_TOKEN: &str = "cls_token";
/// The distillation token `[1, 1, D]`.
pub const DIST_TOKEN: &str = "dist_token";
/// The position table `[1, pos_embed_prefix + gh·gw, D]`.
pub const POS_EMBED: &str = "pos_embed";
/// The final LayerNorm (applied to every token).
pub const FINAL_NORM: &str = "norm";
/// The LayerNorm applied to the pooled feature.
pub const FC_NORM: &str = "fc_norm";
/// The classifier linear layer.
pub const HEAD: &str = "head";
/// The distillation classifier linear layer.
pub const HEAD_DIST: &str = "head_dist";

/// The linear layers of a block, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockLinear {
    /// Fused query/key/value projection (`3D ← D`).
    Qkv,
    /// Attention output projection (`D ← D`).
    Proj,
    /// MLP expansion (`M ← D`).
    Fc1,
    /// MLP contraction (`D ← M`).
    Fc2,
}

impl BlockLinear {
    /// All four, in execution order.
    pub const ALL: [BlockLinear; 4] = [BlockLinear::Qkv, BlockLinear::Proj, BlockLinear::Fc1, BlockLinear::Fc2];

    /// Suffix of the layer name inside `blocks.{i}.`.
    pub fn suffix(self) -> &'static str {
        match self {
            BlockLinear::Qkv => "attn.qkv",
            BlockLinear::Proj => "attn.proj",
            BlockLinear::Fc1 => "mlp.fc1",
            BlockLinear::Fc2 => "mlp.fc2",
        }
    }

    /// Full layer name for block `i`.
    pub fn name(self, block: usize) -> String {
        format!("{}.{}", block_prefix(block), self.suffix())
    }

    /// `(outputs, inputs)` of this layer in a model of `config`.
    pub fn shape(self, config: &ModelConfig) -> (usize, usize) {
        let (d, m) = (config.embed_dim, config.mlp_hidden);
        match self {
            BlockLinear::Qkv => (3 * d, d),
            BlockLinear::Proj => (d, d),
            BlockLinear::Fc1 => (m, d),
            BlockLinear::Fc2 => (d, m),
        }
    }
}

/// `blocks.{i}`: the prefix of every tensor of block `i`.
pub fn block_prefix(block: usize) -> String {
    format!("blocks.{block}")
}

/// Splits a name under `blocks.` into the text of its block index and the rest after the
/// next `.` (`"blocks.3.norm1.weight"` gives `("3", "norm1.weight")`, `"blocks.x"` gives
/// `("x", "")`); `None` for names outside the blocks. The index text is not checked.
pub fn split_block_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("blocks.")?;
    Some(rest.split_once('.').unwrap_or((rest, "")))
}

/// Splits `blocks.{i}.{suffix}` into the block index and which linear it is (`None` for
/// other names and for `i ≥ depth`).
pub fn parse_block_linear(name: &str, depth: usize) -> Option<(usize, BlockLinear)> {
    let (idx, suffix) = split_block_name(name)?;
    let i: usize = idx.parse().ok()?;
    if i >= depth {
        return None;
    }
    let which = BlockLinear::ALL.into_iter().find(|w| w.suffix() == suffix)?;
    Some((i, which))
}

/// The suffixes (after `L.`) of the tensors a linear layer `L` may store.
pub mod suffix {
    /// `L.weight`: the dense weight.
    pub const WEIGHT: &str = "weight";
    /// `L.bias`.
    pub const BIAS: &str = "bias";
    /// `L.u`: the left factor.
    pub const U: &str = "u";
    /// `L.v`: the right factor.
    pub const V: &str = "v";
    /// `L.sparse.row_ptr`: CSR row pointers of the sparse term.
    pub const SPARSE_ROW_PTR: &str = "sparse.row_ptr";
    /// `L.sparse.col_idx`: CSR column indices of the sparse term.
    pub const SPARSE_COL_IDX: &str = "sparse.col_idx";
    /// `L.sparse.values`: CSR values of the sparse term.
    pub const SPARSE_VALUES: &str = "sparse.values";
    /// `L.weight_scale`: per-output-row F32 scales of an I8 `L.weight`.
    pub const WEIGHT_SCALE: &str = "weight_scale";
    /// `L.u_scale`: per-output-row F32 scales of an I8 `L.u` (optional: without it `U` has a
    /// unit scale, its per-column scales folded into `L.v_scale`).
    pub const U_SCALE: &str = "u_scale";
    /// `L.v_scale`: per-row (per rank index) F32 scales of an I8 `L.v`.
    pub const V_SCALE: &str = "v_scale";
    /// `L.sparse.values_scale`: per-output-row F32 scales of I8 `L.sparse.values`.
    pub const SPARSE_VALUES_SCALE: &str = "sparse.values_scale";
    /// The scale tensors of I8 weights, in the order of the tensors they scale.
    pub const SCALES: [&str; 4] = [WEIGHT_SCALE, U_SCALE, V_SCALE, SPARSE_VALUES_SCALE];
    /// The tensors that store a linear layer's weight in any kind (dense, factors, sparse
    /// term), i.e. every suffix but [`BIAS`].
    pub const WEIGHT_TENSORS: [&str; 6] = [WEIGHT, U, V, SPARSE_ROW_PTR, SPARSE_COL_IDX, SPARSE_VALUES];
}

/// The names of every tensor a linear layer may store. A layer stores `weight` (dense) or
/// `u`, `v` (low-rank) plus the three `sparse_*` (low-rank + sparse), and `bias` when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearTensors {
    /// `L.weight [m, n]`.
    pub weight: String,
    /// `L.bias [m]`.
    pub bias: String,
    /// `L.u [m, r]`.
    pub u: String,
    /// `L.v [r, n]`.
    pub v: String,
    /// `L.sparse.row_ptr [m + 1]` (U32).
    pub sparse_row_ptr: String,
    /// `L.sparse.col_idx [nnz]` (U16 or U32).
    pub sparse_col_idx: String,
    /// `L.sparse.values [nnz]`.
    pub sparse_values: String,
    /// `L.weight_scale [m]` (F32, with an I8 `weight`).
    pub weight_scale: String,
    /// `L.u_scale [m]` (F32, optional with an I8 `u`).
    pub u_scale: String,
    /// `L.v_scale [r]` (F32, with an I8 `v`).
    pub v_scale: String,
    /// `L.sparse.values_scale [m]` (F32, with I8 `sparse.values`).
    pub sparse_values_scale: String,
}

impl LinearTensors {
    /// The tensor names of linear layer `layer` (e.g. `blocks.0.attn.qkv`, `head`).
    pub fn of(layer: &str) -> LinearTensors {
        use suffix::*;
        LinearTensors {
            weight: format!("{layer}.{WEIGHT}"),
            bias: format!("{layer}.{BIAS}"),
            u: format!("{layer}.{U}"),
            v: format!("{layer}.{V}"),
            sparse_row_ptr: format!("{layer}.{SPARSE_ROW_PTR}"),
            sparse_col_idx: format!("{layer}.{SPARSE_COL_IDX}"),
            sparse_values: format!("{layer}.{SPARSE_VALUES}"),
            weight_scale: format!("{layer}.{WEIGHT_SCALE}"),
            u_scale: format!("{layer}.{U_SCALE}"),
            v_scale: format!("{layer}.{V_SCALE}"),
            sparse_values_scale: format!("{layer}.{SPARSE_VALUES_SCALE}"),
        }
    }

    /// The name of the scale tensor of weight tensor `tensor` (one of `weight`, `u`, `v`,
    /// `sparse_values` of this layer), `None` for any other name.
    pub fn scale_of(&self, tensor: &str) -> Option<&str> {
        [
            (&self.weight, &self.weight_scale),
            (&self.u, &self.u_scale),
            (&self.v, &self.v_scale),
            (&self.sparse_values, &self.sparse_values_scale),
        ]
        .into_iter()
        .find(|(t, _)| t.as_str() == tensor)
        .map(|(_, s)| s.as_str())
    }

    /// The tensors of a dense layer: `[weight, bias]`.
    pub fn dense(&self) -> [&str; 2] {
        [&self.weight, &self.bias]
    }

    /// The three tensors of the sparse term: `[row_ptr, col_idx, values]`.
    pub fn sparse(&self) -> [&str; 3] {
        [&self.sparse_row_ptr, &self.sparse_col_idx, &self.sparse_values]
    }
}

/// The names of a LayerNorm's two tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormTensors {
    /// `N.weight [D]`.
    pub weight: String,
    /// `N.bias [D]`.
    pub bias: String,
}

impl NormTensors {
    /// The tensor names of LayerNorm `norm` (e.g. `blocks.0.norm1`, [`FINAL_NORM`]).
    pub fn of(norm: &str) -> NormTensors {
        NormTensors { weight: format!("{norm}.{}", suffix::WEIGHT), bias: format!("{norm}.{}", suffix::BIAS) }
    }

    /// Both tensors: `[weight, bias]`.
    pub fn weight_and_bias(&self) -> [&str; 2] {
        [&self.weight, &self.bias]
    }
}

/// The names of block `i`'s tensors besides its linear layers' (see [`BlockTensors::linear`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTensors {
    /// The block index.
    pub block: usize,
    /// `blocks.{i}.norm1` (before attention).
    pub norm1: NormTensors,
    /// `blocks.{i}.norm2` (before the MLP).
    pub norm2: NormTensors,
    /// `blocks.{i}.ls1 [D]`: LayerScale of the attention branch.
    pub ls1: String,
    /// `blocks.{i}.ls2 [D]`: LayerScale of the MLP branch.
    pub ls2: String,
}

impl BlockTensors {
    /// The names of block `block`.
    pub fn of(block: usize) -> BlockTensors {
        let p = block_prefix(block);
        BlockTensors {
            block,
            norm1: NormTensors::of(&format!("{p}.norm1")),
            norm2: NormTensors::of(&format!("{p}.norm2")),
            ls1: format!("{p}.ls1"),
            ls2: format!("{p}.ls2"),
        }
    }

    /// The name of this block's linear layer `which` (use [`LinearTensors::of`] for its tensors).
    pub fn linear(&self, which: BlockLinear) -> String {
        which.name(self.block)
    }
}

/// One linear layer a configuration implies: its name and geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearLayer {
    /// Layer name (`blocks.3.mlp.fc1`, `head`).
    pub name: String,
    /// Outputs `m`.
    pub out_features: usize,
    /// Inputs `n`.
    pub in_features: usize,
}

impl LinearLayer {
    fn new(name: String, (out_features, in_features): (usize, usize)) -> LinearLayer {
        LinearLayer { name, out_features, in_features }
    }
}

/// The linear layers of every block of `config` in model order: block 0's
/// [`BlockLinear::ALL`], then block 1's, ...
pub fn block_linear_layers(config: &ModelConfig) -> Vec<LinearLayer> {
    let mut out = Vec::with_capacity(config.depth.saturating_mul(4).saturating_add(2));
    for i in 0..config.depth {
        out.extend(BlockLinear::ALL.map(|w| LinearLayer::new(w.name(i), w.shape(config))));
    }
    out
}

/// Every linear layer of `config` in model order: the block linears
/// ([`block_linear_layers`]), then [`HEAD`] and [`HEAD_DIST`] when present (the patch
/// embedding is a fixed tensor, see [`fixed_tensors`]).
pub fn linear_layers(config: &ModelConfig) -> Vec<LinearLayer> {
    let layer = LinearLayer::new;
    let mut out = block_linear_layers(config);
    let head = (config.num_classes, config.embed_dim);
    match config.head {
        Head::None => {}
        Head::Linear => out.push(layer(HEAD.to_string(), head)),
        Head::Distilled => {
            out.push(layer(HEAD.to_string(), head));
            out.push(layer(HEAD_DIST.to_string(), head));
        }
    }
    out
}

/// Name and shape of every tensor `config` requires besides the linear layers' (patch
/// embedding, tokens, position table, norms, LayerScale), in model order.
pub fn fixed_tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let c = config;
    let d = c.embed_dim;
    let grid = c.pos_embed_grid[0].saturating_mul(c.pos_embed_grid[1]);
    let patch_embed = LinearTensors::of(PATCH_EMBED);
    let mut out =
        vec![(patch_embed.weight, vec![d, c.in_chans, c.patch_size, c.patch_size]), (patch_embed.bias, vec![d])];
    if c.class_token {
        out.push((CLS_TOKEN.to_string(), vec![1, 1, d]));
    }
    if c.dist_token {
        out.push((DIST_TOKEN.to_string(), vec![1, 1, d]));
    }
    out.push((POS_EMBED.to_string(), vec![1, c.pos_embed_prefix.saturating_add(grid), d]));
    for i in 0..c.depth {
        let b = BlockTensors::of(i);
        for norm in [b.norm1, b.norm2] {
            out.push((norm.weight, vec![d]));
            out.push((norm.bias, vec![d]));
        }
        if c.layer_scale {
            out.push((b.ls1, vec![d]));
            out.push((b.ls2, vec![d]));
        }
    }
    for (norm, present) in [(FINAL_NORM, c.final_norm), (FC_NORM, c.fc_norm)] {
        if present {
            let n = NormTensors::of(norm);
            out.push((n.weight, vec![d]));
            out.push((n.bias, vec![d]));
        }
    }
    out
}

/// Sort key placing tensors in model order (embeddings, blocks in order, final norms, heads):
/// the order the writer stores tensors in (within each element size).
pub fn model_order_key(name: &str) -> (u8, usize, u8, &str) {
    const BLOCK_PARTS: [&str; 8] =
        ["norm1.", "attn.qkv.", "attn.proj.", "ls1", "norm2.", "mlp.fc1.", "mlp.fc2.", "ls2"];
    if let Some((idx, tail)) = split_block_name(name) {
        if let Ok(i) = idx.parse::<usize>() {
            let part = BLOCK_PARTS.iter().position(|p| tail.starts_with(p)).unwrap_or(BLOCK_PARTS.len());
            return (1, i, part as u8, name);
        }
    }
    const FIRST: [&str; 4] = ["patch_embed.", "cls_token", "dist_token", "pos_embed"];
    if let Some(p) = FIRST.iter().position(|p| name.starts_with(p)) {
        return (0, 0, p as u8, name);
    }
    const LAST: [&str; 4] = ["norm.", "fc_norm.", "head.", "head_dist."];
    let p = LAST.iter().position(|p| name.starts_with(p)).unwrap_or(LAST.len());
    (2, 0, p as u8, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_linear_names_parse_back() {
        for i in 0..3 {
            for w in BlockLinear::ALL {
                assert_eq!(parse_block_linear(&w.name(i), 3), Some((i, w)));
            }
        }
        assert_eq!(parse_block_linear("blocks.3.mlp.fc1", 3), None);
        assert_eq!(parse_block_linear(HEAD, 3), None);
    }

    #[test]
    fn suffixes_spell_the_linear_tensors() {
        let t = LinearTensors::of(HEAD);
        let weights = suffix::WEIGHT_TENSORS.map(|s| format!("{HEAD}.{s}"));
        assert_eq!(
            weights,
            [&t.weight, &t.u, &t.v, &t.sparse_row_ptr, &t.sparse_col_idx, &t.sparse_values].map(String::clone)
        );
        assert_eq!(t.dense(), ["head.weight", "head.bias"]);
        assert_eq!(NormTensors::of(FINAL_NORM).weight_and_bias(), ["norm.weight", "norm.bias"]);
        let scales = suffix::SCALES.map(|s| format!("{HEAD}.{s}"));
        assert_eq!(scales, [&t.weight_scale, &t.u_scale, &t.v_scale, &t.sparse_values_scale].map(String::clone));
        assert_eq!(t.scale_of(&t.u), Some("head.u_scale"));
        assert_eq!(t.scale_of(&t.sparse_values), Some("head.sparse.values_scale"));
        assert_eq!(t.scale_of(&t.bias), None);
    }

    #[test]
    fn split_block_name_separates_index_and_rest() {
        assert_eq!(split_block_name("blocks.3.norm1.weight"), Some(("3", "norm1.weight")));
        assert_eq!(split_block_name("blocks.x"), Some(("x", "")));
        assert_eq!(split_block_name("head.weight"), None);
    }

    #[test]
    fn model_order_puts_blocks_between_embeddings_and_heads() {
        let mut names = ["head.weight", "blocks.1.norm1.weight", "blocks.0.mlp.fc2.u", "pos_embed", "norm.bias"];
        names.sort_by_key(|n| model_order_key(n));
        assert_eq!(names, ["pos_embed", "blocks.0.mlp.fc2.u", "blocks.1.norm1.weight", "norm.bias", "head.weight"]);
    }
}
