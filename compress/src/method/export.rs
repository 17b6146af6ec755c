//! Writing compression results into a [`ModelSpec`] (then [`crate::writer`] makes the file).

use factorvit::format::schema::{BlockLinear, LinearTensors};
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
        let names = LinearTensors::of(&layer.name);
        spec.tensors.remove(&names.weight);
        let u = linalg::to_row_major(approx.u.as_ref());
        let v = linalg::to_row_major(approx.v.as_ref());
        spec.tensors.insert(names.u.clone(), StoredTensor::from_f32_as(dtype, vec![m, r], &u)?);
        spec.tensors.insert(names.v.clone(), StoredTensor::from_f32_as(dtype, vec![r, n], &v)?);
        let b: Vec<f32> = bias.iter().map(|&x| x as f32).collect();
        spec.tensors.insert(names.bias.clone(), StoredTensor::from_f32_as(dtype, vec![m], &b)?);
        for sparse_tensor in names.sparse() {
            spec.tensors.remove(sparse_tensor);
        }
        if let Some(s) = &approx.sparse {
            let nnz = s.values.len();
            spec.tensors.insert(names.sparse_row_ptr, StoredTensor::from_u32(vec![m + 1], &s.row_ptr)?);
            let col = if n <= 1 << 16 {
                let c16: Vec<u16> = s.col_idx.iter().map(|&c| c as u16).collect();
                StoredTensor::from_u16(vec![nnz], &c16)?
            } else {
                StoredTensor::from_u32(vec![nnz], &s.col_idx)?
            };
            spec.tensors.insert(names.sparse_col_idx, col);
            let vals: Vec<f32> = s.values.iter().map(|&x| x as f32).collect();
            spec.tensors.insert(names.sparse_values, StoredTensor::from_f32_as(dtype, vec![nnz], &vals)?);
        }
    }
    Ok(())
}

/// The dtype of a spec's block weights (F32 when unknown).
pub fn block_dtype(spec: &ModelSpec) -> DType {
    let fc1 = LinearTensors::of(&BlockLinear::Fc1.name(0));
    spec.tensors.get(&fc1.weight).or_else(|| spec.tensors.get(&fc1.u)).map_or(DType::F32, |t| t.dtype)
}
