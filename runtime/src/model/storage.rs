//! Where a model's bytes live, and typed views of tensors inside them.
//!
//! A tensor is read in place when its bytes are aligned for its element type; otherwise it is
//! copied once, at load, into an aligned owned buffer (never rejected). Views are resolved on
//! each use from a [`TensorPlace`], so the model never stores self-referential slices.

use alloc::vec::Vec;
use half::{bf16, f16};

use crate::kernels::{QuantI8, SparseIndices, WeightSlice};
use crate::safetensors::DType;

/// The bytes of a model file.
pub(crate) enum Storage<'a> {
    /// Caller-provided bytes (flash, `include_bytes!`, a buffer the caller keeps alive).
    Borrowed(&'a [u8]),
    /// Bytes the model owns.
    Owned(Vec<u8>),
    /// A read-only memory map of a file.
    #[cfg(feature = "std")]
    Mapped(memmap2::Mmap),
}

impl Storage<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Storage::Borrowed(b) => b,
            Storage::Owned(v) => v,
            #[cfg(feature = "std")]
            Storage::Mapped(m) => m,
        }
    }
}

/// An owned, aligned copy of a tensor (or a tensor created in memory).
#[derive(Debug, Clone)]
pub(crate) enum OwnedTensor {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl OwnedTensor {
    /// Copies `bytes` (little-endian elements of `dtype`) into an aligned buffer.
    pub(crate) fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Option<OwnedTensor> {
        fn collect<T, const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
        }
        Some(match dtype {
            DType::F32 => OwnedTensor::F32(collect(bytes, f32::from_le_bytes)),
            DType::F16 => OwnedTensor::F16(collect(bytes, |b| f16::from_bits(u16::from_le_bytes(b)))),
            DType::BF16 => OwnedTensor::BF16(collect(bytes, |b| bf16::from_bits(u16::from_le_bytes(b)))),
            DType::U16 => OwnedTensor::U16(collect(bytes, u16::from_le_bytes)),
            DType::U32 => OwnedTensor::U32(collect(bytes, u32::from_le_bytes)),
            _ => return None,
        })
    }

    fn bytes(&self) -> usize {
        match self {
            OwnedTensor::F32(v) => v.len() * 4,
            OwnedTensor::F16(v) => v.len() * 2,
            OwnedTensor::BF16(v) => v.len() * 2,
            OwnedTensor::U16(v) => v.len() * 2,
            OwnedTensor::U32(v) => v.len() * 4,
        }
    }
}

/// Where a tensor's elements are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// In the file, at this absolute, aligned byte range.
    File { start: usize, end: usize },
    /// In the model's owned buffer with this index.
    Owned(usize),
}

/// A handle to a stored tensor: dtype, element count and location; for an I8 weight also the
/// location and length of its F32 channel scales (`None`: unit scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TensorPlace {
    pub(crate) dtype: DType,
    pub(crate) len: usize,
    pub(crate) place: Place,
    pub(crate) scales: Option<(Place, usize)>,
}

impl TensorPlace {
    /// Bytes occupied by the elements (and the scales of an I8 weight).
    pub(crate) fn bytes(&self) -> usize {
        self.len * self.dtype.size() + self.scales.map_or(0, |(_, n)| n * 4)
    }
}

/// Every tensor a model reads: the file plus owned copies.
pub(crate) struct TensorStore<'a> {
    pub(crate) storage: Storage<'a>,
    pub(crate) owned: Vec<OwnedTensor>,
}

impl<'a> TensorStore<'a> {
    pub(crate) fn new(storage: Storage<'a>) -> Self {
        TensorStore { storage, owned: Vec::new() }
    }

    /// Whether a tensor of `dtype` starting at file offset `start` can be read in place.
    pub(crate) fn is_aligned(&self, dtype: DType, start: usize) -> bool {
        (self.storage.bytes().as_ptr() as usize).wrapping_add(start) % dtype.size() == 0
    }

    /// Registers the file range `start..end` of `dtype`: in place when aligned, else copied.
    /// The caller has validated the range against the file.
    pub(crate) fn place_file(&mut self, dtype: DType, start: usize, end: usize) -> Option<TensorPlace> {
        let len = (end - start) / dtype.size();
        let bytes = self.storage.bytes().get(start..end)?;
        if (bytes.as_ptr() as usize) % dtype.size() == 0 {
            return Some(TensorPlace { dtype, len, place: Place::File { start, end }, scales: None });
        }
        let copy = OwnedTensor::from_le_bytes(dtype, bytes)?;
        Some(self.push_owned(copy))
    }

    pub(crate) fn push_owned(&mut self, t: OwnedTensor) -> TensorPlace {
        let (dtype, len) = match &t {
            OwnedTensor::F32(v) => (DType::F32, v.len()),
            OwnedTensor::F16(v) => (DType::F16, v.len()),
            OwnedTensor::BF16(v) => (DType::BF16, v.len()),
            OwnedTensor::U16(v) => (DType::U16, v.len()),
            OwnedTensor::U32(v) => (DType::U32, v.len()),
        };
        self.owned.push(t);
        TensorPlace { dtype, len, place: Place::Owned(self.owned.len() - 1), scales: None }
    }

    fn file_bytes(&self, start: usize, end: usize) -> &[u8] {
        // Ranges were validated against this storage when the place was created.
        &self.storage.bytes()[start..end]
    }

    /// A float tensor as a weight slice. Panics only on an internal invariant violation
    /// (a place whose dtype is not a float type).
    pub(crate) fn weights(&self, t: &TensorPlace) -> WeightSlice<'_> {
        match t.place {
            Place::File { start, end } => {
                let b = self.file_bytes(start, end);
                match t.dtype {
                    DType::F32 => WeightSlice::F32(bytemuck::cast_slice(b)),
                    DType::F16 => WeightSlice::F16(bytemuck::cast_slice(b)),
                    DType::BF16 => WeightSlice::BF16(bytemuck::cast_slice(b)),
                    DType::I8 => WeightSlice::I8(QuantI8 {
                        values: bytemuck::cast_slice(b),
                        scales: t.scales.map(|(place, len)| self.f32s(place, len)),
                    }),
                    other => unreachable!("float tensor with dtype {other:?}"),
                }
            }
            Place::Owned(i) => match &self.owned[i] {
                OwnedTensor::F32(v) => WeightSlice::F32(v),
                OwnedTensor::F16(v) => WeightSlice::F16(v),
                OwnedTensor::BF16(v) => WeightSlice::BF16(v),
                _ => unreachable!("float tensor stored as integers"),
            },
        }
    }

    /// The `len` f32 values at `place` (the scales of an I8 weight, placed as F32).
    fn f32s(&self, place: Place, len: usize) -> &[f32] {
        let all: &[f32] = match place {
            Place::File { start, end } => bytemuck::cast_slice(self.file_bytes(start, end)),
            Place::Owned(i) => match &self.owned[i] {
                OwnedTensor::F32(v) => v,
                _ => unreachable!("scales stored with another type"),
            },
        };
        &all[..len]
    }

    /// A U32 tensor.
    pub(crate) fn u32s(&self, t: &TensorPlace) -> &[u32] {
        match t.place {
            Place::File { start, end } => bytemuck::cast_slice(self.file_bytes(start, end)),
            Place::Owned(i) => match &self.owned[i] {
                OwnedTensor::U32(v) => v,
                _ => unreachable!("u32 tensor stored with another type"),
            },
        }
    }

    /// A U16 or U32 index tensor.
    pub(crate) fn indices(&self, t: &TensorPlace) -> SparseIndices<'_> {
        match (t.dtype, t.place) {
            (DType::U16, Place::File { start, end }) => {
                SparseIndices::U16(bytemuck::cast_slice(self.file_bytes(start, end)))
            }
            (DType::U32, Place::File { start, end }) => {
                SparseIndices::U32(bytemuck::cast_slice(self.file_bytes(start, end)))
            }
            (_, Place::Owned(i)) => match &self.owned[i] {
                OwnedTensor::U16(v) => SparseIndices::U16(v),
                OwnedTensor::U32(v) => SparseIndices::U32(v),
                _ => unreachable!("index tensor stored as floats"),
            },
            (other, _) => unreachable!("index tensor with dtype {other:?}"),
        }
    }

    /// Bytes held in owned copies (not in the file or map).
    pub(crate) fn owned_bytes(&self) -> usize {
        self.owned.iter().map(OwnedTensor::bytes).sum()
    }
}
