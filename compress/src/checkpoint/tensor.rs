//! [`StoredTensor`]: a tensor as raw little-endian bytes plus dtype and shape, with conversions.

use factorvit::safetensors::DType;
use half::{bf16, f16};

use super::SpecError;

/// A tensor held in memory exactly as it is (or will be) stored in a safetensors file.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredTensor {
    /// Element type.
    pub dtype: DType,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Little-endian element bytes; `data.len() == numel · dtype.size()`.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for StoredTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// `true` for the floating-point dtypes factorvit stores weights in (F32, F16, BF16).
pub fn is_float_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// Number of elements of `shape`, `None` on overflow.
pub fn numel_of(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl StoredTensor {
    /// Wraps raw bytes, checking that their length matches `shape` and `dtype`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<StoredTensor, SpecError> {
        let t = StoredTensor { dtype, shape, data };
        t.check_len("tensor")?;
        Ok(t)
    }

    /// An F32 tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<StoredTensor, SpecError> {
        StoredTensor::from_f32_as(DType::F32, shape, values)
    }

    /// A float tensor of `dtype` (F32, F16 or BF16) from f32 values, rounding to nearest even.
    /// Values too large for F16 become infinite; use [`StoredTensor::cast`] for a checked cast.
    pub fn from_f32_as(dtype: DType, shape: Vec<usize>, values: &[f32]) -> Result<StoredTensor, SpecError> {
        let data = encode_f32(dtype, values).ok_or(SpecError::Dtype {
            tensor: String::new(),
            found: dtype,
            expected: "F32, F16 or BF16",
        })?;
        StoredTensor::new(dtype, shape, data)
    }

    /// A U32 tensor (sparse row pointers or column indices).
    pub fn from_u32(shape: Vec<usize>, values: &[u32]) -> Result<StoredTensor, SpecError> {
        StoredTensor::new(DType::U32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// A U16 tensor (compact sparse column indices).
    pub fn from_u16(shape: Vec<usize>, values: &[u16]) -> Result<StoredTensor, SpecError> {
        StoredTensor::new(DType::U16, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// Number of elements according to the shape (`None` on overflow).
    pub fn numel(&self) -> Option<usize> {
        numel_of(&self.shape)
    }

    /// `true` when the dtype is F32, F16 or BF16.
    pub fn is_float(&self) -> bool {
        is_float_dtype(self.dtype)
    }

    /// Checks `data.len() == numel · dtype.size()`; `name` is used in the error.
    pub fn check_len(&self, name: &str) -> Result<(), SpecError> {
        let expected = self.numel().and_then(|n| n.checked_mul(self.dtype.size()));
        if expected != Some(self.data.len()) {
            return Err(SpecError::Data {
                tensor: name.to_string(),
                reason: format!(
                    "{} bytes stored but shape {:?} of {} needs {}",
                    self.data.len(),
                    self.shape,
                    self.dtype.name(),
                    expected.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string())
                ),
            });
        }
        Ok(())
    }

    /// The elements as f32 (exact for F32, F16 and BF16). Fails for non-float dtypes.
    pub fn to_f32(&self) -> Result<Vec<f32>, SpecError> {
        decode_f32(self.dtype, &self.data).ok_or(SpecError::Dtype {
            tensor: String::new(),
            found: self.dtype,
            expected: "F32, F16 or BF16",
        })
    }

    /// The elements as u32, for U16 and U32 tensors (sparse indices).
    pub fn to_u32(&self) -> Option<Vec<u32>> {
        match self.dtype {
            DType::U32 => {
                Some(self.data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            DType::U16 => {
                Some(self.data.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect())
            }
            _ => None,
        }
    }

    /// This float tensor converted to `dtype` (round to nearest, ties to even). Fails when
    /// either dtype is not a float type, or when a finite value would overflow to infinity
    /// (F16 holds at most 65504).
    pub fn cast(&self, dtype: DType) -> Result<StoredTensor, SpecError> {
        if self.dtype == dtype {
            return Ok(self.clone());
        }
        let values = self.to_f32()?;
        let data = encode_f32(dtype, &values).ok_or(SpecError::Dtype {
            tensor: String::new(),
            found: dtype,
            expected: "F32, F16 or BF16",
        })?;
        let back = decode_f32(dtype, &data).unwrap_or_default();
        if let Some((i, (&v, _))) =
            values.iter().zip(&back).enumerate().find(|(_, (v, b))| v.is_finite() && !b.is_finite())
        {
            return Err(SpecError::Data {
                tensor: String::new(),
                reason: format!("element {i} = {v} overflows {}", dtype.name()),
            });
        }
        Ok(StoredTensor { dtype, shape: self.shape.clone(), data })
    }
}

/// Decodes little-endian float bytes of `dtype` into f32 (`None` for non-float dtypes).
pub fn decode_f32(dtype: DType, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::F16 => {
            bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        DType::BF16 => {
            bytes.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        _ => return None,
    })
}

/// Encodes f32 values as little-endian bytes of `dtype`, rounding to nearest even (`None` for
/// non-float dtypes).
pub fn encode_f32(dtype: DType, values: &[f32]) -> Option<Vec<u8>> {
    Some(match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()).collect(),
        DType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes()).collect(),
        _ => return None,
    })
}
