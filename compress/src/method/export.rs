//! Writing compression results into a [`ModelSpec`] (then [`crate::writer`] makes the file).

use factorvit::safetensors::DType;

use super::linalg;
use super::pipeline::Compressed;
use crate::checkpoint::{ModelSpec, SpecError, StoredTensor};

/// Replaces the block linears of `spec` by the compressed layers: `L.weight` becomes `L.u`,
/// `L.v` (+ `L.sparse.*`), with the corrected bias `L.bias`; floats stored as `dtype`, column
/// indices as U16 when `n ≤ 65536`.
pub fn apply_to_spec(spec: &mut ModelSpec, compressed: &Compressed, dtype: DType) -> Result<(), SpecError> {
    for layer in &compressed.layers {
        let Some(replacement) = &layer.replacement else { continue };
        let (approx, bias) = (&replacement.approx, &replacement.bias);
        let (m, r, n) = (approx.u.nrows(), approx.rank(), approx.v.ncols());
        spec.tensors.remove(&format!("{}.weight", layer.name));
        let u = linalg::to_row_major(approx.u.as_ref());
        let v = linalg::to_row_major(approx.v.as_ref());
        spec.tensors.insert(format!("{}.u", layer.name), StoredTensor::from_f32_as(dtype, vec![m, r], &u)?);
        spec.tensors.insert(format!("{}.v", layer.name), StoredTensor::from_f32_as(dtype, vec![r, n], &v)?);
        let b: Vec<f32> = bias.iter().map(|&x| x as f32).collect();
        spec.tensors.insert(format!("{}.bias", layer.name), StoredTensor::from_f32_as(dtype, vec![m], &b)?);
        for suffix in ["row_ptr", "col_idx", "values"] {
            spec.tensors.remove(&format!("{}.sparse.{suffix}", layer.name));
        }
        if let Some(s) = &approx.sparse {
            let nnz = s.values.len();
            spec.tensors
                .insert(format!("{}.sparse.row_ptr", layer.name), StoredTensor::from_u32(vec![m + 1], &s.row_ptr)?);
            let col = if n <= 1 << 16 {
                let c16: Vec<u16> = s.col_idx.iter().map(|&c| c as u16).collect();
                StoredTensor::from_u16(vec![nnz], &c16)?
            } else {
                StoredTensor::from_u32(vec![nnz], &s.col_idx)?
            };
            spec.tensors.insert(format!("{}.sparse.col_idx", layer.name), col);
            let vals: Vec<f32> = s.values.iter().map(|&x| x as f32).collect();
            spec.tensors
                .insert(format!("{}.sparse.values", layer.name), StoredTensor::from_f32_as(dtype, vec![nnz], &vals)?);
        }
    }
    Ok(())
}

/// The dtype of a spec's block weights (F32 when unknown).
pub fn block_dtype(spec: &ModelSpec) -> DType {
    spec.tensors
        .get("blocks.0.mlp.fc1.weight")
        .or_else(|| spec.tensors.get("blocks.0.mlp.fc1.u"))
        .map_or(DType::F32, |t| t.dtype)
}
