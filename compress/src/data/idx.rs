//! The idx container of MNIST / Fashion-MNIST (`train-images-idx3-ubyte[.gz]`, ...).
//!
//! Layout: a big-endian magic number `00 00 <type> <rank>`, `rank` big-endian `u32`
//! dimensions, then the elements in row-major order. Type codes: `0x08` u8, `0x09` i8, `0x0B`
//! i16, `0x0C` i32, `0x0D` f32, `0x0E` f64. Files may be gzip-compressed (detected by the gzip
//! magic bytes, whatever the name).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::{DataError, IdxProblem};

/// Type code of unsigned bytes, the only element type the datasets use.
pub const IDX_U8: u8 = 0x08;

/// Largest decompressed idx file accepted (2 GiB; Fashion-MNIST train images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 1 << 31;

/// Size in bytes of one element of idx type `code`, `None` for unknown codes.
pub fn idx_element_size(code: u8) -> Option<usize> {
    match code {
        0x08 | 0x09 => Some(1),
        0x0B => Some(2),
        0x0C | 0x0D => Some(4),
        0x0E => Some(8),
        _ => None,
    }
}

/// A parsed idx file: header fields and the raw (big-endian) element bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    bytes: Vec<u8>,
    type_code: u8,
    dims: Vec<usize>,
    data_start: usize,
}

impl IdxArray {
    /// Parses a whole (decompressed) idx file. Every size is checked: a header announcing more
    /// data than present, dimensions whose product overflows, or trailing bytes are errors.
    pub fn parse(bytes: Vec<u8>) -> Result<IdxArray, IdxProblem> {
        let magic: [u8; 4] = match bytes.get(..4) {
            Some(m) => [m[0], m[1], m[2], m[3]],
            None => return Err(IdxProblem::TooShort { len: bytes.len() }),
        };
        if magic[0] != 0 || magic[1] != 0 {
            return Err(IdxProblem::BadMagic { found: magic });
        }
        let type_code = magic[2];
        let elem = idx_element_size(type_code).ok_or(IdxProblem::UnknownType { code: type_code })?;
        let rank = usize::from(magic[3]);
        let available = bytes.len() as u64;
        // rank <= 255, so the header is at most 1024 bytes: no overflow.
        let header = 4 + 4 * rank as u64;
        let dims_bytes = bytes.get(4..header as usize).ok_or(IdxProblem::Truncated { needed: header, available })?;
        let dims64: Vec<u64> =
            dims_bytes.chunks_exact(4).map(|d| u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))).collect();
        let overflow = || IdxProblem::SizeOverflow { dims: dims64.clone() };
        let mut count: u64 = 1;
        for &d in &dims64 {
            count = count.checked_mul(d).ok_or_else(overflow)?;
        }
        let data_len = count.checked_mul(elem as u64).ok_or_else(overflow)?;
        let needed = data_len.checked_add(header).ok_or_else(overflow)?;
        if needed > available {
            return Err(IdxProblem::Truncated { needed, available });
        }
        if needed < available {
            return Err(IdxProblem::TrailingBytes { extra: available - needed });
        }
        // `needed <= bytes.len()`, so every dimension and product fits in usize.
        let dims = dims64.iter().map(|&d| d as usize).collect();
        Ok(IdxArray { bytes, type_code, dims, data_start: header as usize })
    }

    /// Reads (decompressing gzip if needed) and parses an idx file.
    pub fn read(path: &Path) -> Result<IdxArray, DataError> {
        let bytes = read_maybe_gzip(path, MAX_IDX_BYTES)?;
        IdxArray::parse(bytes).map_err(|p| DataError::idx(path, p))
    }

    /// The element type code.
    pub fn type_code(&self) -> u8 {
        self.type_code
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The element bytes (big-endian for multi-byte types).
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.data_start..]
    }

    /// Checks the element type and rank.
    pub fn expect(&self, type_code: u8, rank: usize) -> Result<(), IdxProblem> {
        if self.type_code != type_code {
            return Err(IdxProblem::WrongType { found: self.type_code, expected: type_code });
        }
        if self.dims.len() != rank {
            return Err(IdxProblem::WrongRank { found: self.dims.len(), expected: rank });
        }
        Ok(())
    }
}

/// Encodes a u8 idx file (type `0x08`); `None` when a dimension exceeds `u32`, there are more
/// than 255 dimensions, or `data` does not hold the product of `dims` bytes.
pub fn encode_idx_u8(dims: &[usize], data: &[u8]) -> Option<Vec<u8>> {
    let rank = u8::try_from(dims.len()).ok()?;
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    if count != data.len() {
        return None;
    }
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, IDX_U8, rank]);
    for &d in dims {
        out.extend_from_slice(&u32::try_from(d).ok()?.to_be_bytes());
    }
    out.extend_from_slice(data);
    Some(out)
}

/// Reads a file, transparently decompressing gzip (one or more members), refusing more than
/// `limit` decompressed bytes.
pub fn read_maybe_gzip(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let size = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?.len();
    if size > limit {
        return Err(DataError::Gzip {
            path: path.to_path_buf(),
            message: format!("{size} bytes exceed the {limit}-byte limit"),
        });
    }
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    let decoder = flate2::read::MultiGzDecoder::new(raw.as_slice());
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DataError::Gzip { path: path.to_path_buf(), message: e.to_string() })?;
    if out.len() as u64 > limit {
        return Err(DataError::Gzip {
            path: path.to_path_buf(),
            message: format!("decompresses past the {limit}-byte limit"),
        });
    }
    Ok(out)
}

/// The images and labels files of a split inside an idx folder: `<prefix>-images-idx3-ubyte`
/// and `<prefix>-labels-idx1-ubyte`, each optionally with `.gz` (prefix `train` or `t10k`).
/// The labels path is `None` when absent.
pub fn find_idx_files(dir: &Path, prefix: &str) -> Option<(PathBuf, Option<PathBuf>)> {
    let find =
        |stem: String| [stem.clone(), format!("{stem}.gz")].into_iter().map(|n| dir.join(n)).find(|p| p.is_file());
    let images = find(format!("{prefix}-images-idx3-ubyte"))?;
    let labels = find(format!("{prefix}-labels-idx1-ubyte"));
    Some((images, labels))
}

/// The labels file next to an images file (`...images-idx3-ubyte[.gz]` →
/// `...labels-idx1-ubyte[.gz]`), if it exists.
pub fn sibling_labels(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gz").unwrap_or(name);
    let labels_stem = stem.replace("images-idx3-ubyte", "labels-idx1-ubyte");
    if labels_stem == stem {
        return None;
    }
    let dir = images.parent()?;
    [labels_stem.clone(), format!("{labels_stem}.gz")].into_iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Reads an idx3 u8 images file: `(count, height, width, pixels)`.
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, usize, IdxArray), DataError> {
    let array = IdxArray::read(path)?;
    array.expect(IDX_U8, 3).map_err(|p| DataError::idx(path, p))?;
    let (n, h, w) = (array.dims()[0], array.dims()[1], array.dims()[2]);
    Ok((n, h, w, array))
}

/// Reads an idx1 u8 labels file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u32>, DataError> {
    let array = IdxArray::read(path)?;
    array.expect(IDX_U8, 1).map_err(|p| DataError::idx(path, p))?;
    Ok(array.data().iter().map(|&b| u32::from(b)).collect())
}
