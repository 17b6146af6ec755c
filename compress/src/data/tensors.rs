//! Safetensors datasets: normalised `pixel_values` `[N, C, H, W]` (float) or raw uint8
//! `images` `[N, H, W]` / `[N, H, W, C]`, each with optional integer `labels` `[N]` and
//! `image_index` `[N]` (the photo each sample was cut from: crops of one photo share it, and
//! the compressor's validation split keeps them together), and an optional `class_names`
//! metadata entry (a JSON array of strings).

use std::path::Path;

use factorvit::safetensors::{Container, DType, TensorInfo};
use factorvit::Preprocess;

use super::error::DataError;
use super::{build_dataset, check_finite, checked_dataset_len, select_indices, Dataset, LoadOptions, RawImages};

/// The sample size `[C, H, W]` of a safetensors dataset that stores normalised `pixel_values`
/// `[N, C, H, W]` (`None` for raw `images`, which are resized to any model input, and for files
/// without `pixel_values`). Reads only the header; a malformed file is a [`DataError`].
pub fn pixel_values_size(path: &Path) -> Result<Option<[usize; 3]>, DataError> {
    let file = FileBytes::open(path)?;
    let container = Container::parse(file.bytes()).map_err(|e| DataError::safetensors(path, e.to_string()))?;
    Ok(container.get("pixel_values").and_then(|info| match info.shape.as_slice() {
        &[_, c, h, w] => Some([c, h, w]),
        _ => None,
    }))
}

/// The file contents: memory-mapped, or read for empty files (which cannot be mapped).
enum FileBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl FileBytes {
    fn open(path: &Path) -> Result<FileBytes, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        if len == 0 {
            return Ok(FileBytes::Read(Vec::new()));
        }
        // SAFETY: the mapping is read-only and private to this call; as with every mmap-based
        // reader, the file must not be truncated by another process while it is being read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        Ok(FileBytes::Mapped(map))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Read(v) => v,
        }
    }
}

fn tensor_bytes<'a>(bytes: &'a [u8], info: &TensorInfo, path: &Path) -> Result<&'a [u8], DataError> {
    bytes
        .get(info.start..info.end)
        .ok_or_else(|| DataError::safetensors(path, format!("tensor `{}` lies outside the file", info.name)))
}

/// Reads a `[N]` tensor of any integer dtype as class indices.
fn read_labels(bytes: &[u8], info: &TensorInfo, path: &Path) -> Result<Vec<u32>, DataError> {
    read_indices(bytes, info, path, ["labels", "label", "class index"], |message| DataError::labels(path, message))
}

/// Reads the optional `[N]` integer tensor `image_index`: the photo each sample was cut from.
fn read_photo_indices(bytes: &[u8], container: &Container, path: &Path) -> Result<Option<Vec<u32>>, DataError> {
    let Some(info) = container.get("image_index") else {
        return Ok(None);
    };
    read_indices(bytes, info, path, ["image_index", "image_index entry", "photo index"], |message| {
        DataError::safetensors(path, message)
    })
    .map(Some)
}

/// Reads a `[N]` tensor of any integer dtype as non-negative indices below 2³²; `names` are
/// the tensor's name, one element's and what the values index, for the messages.
fn read_indices(
    bytes: &[u8],
    info: &TensorInfo,
    path: &Path,
    [name, item, what]: [&str; 3],
    error: impl Fn(String) -> DataError,
) -> Result<Vec<u32>, DataError> {
    if info.shape.len() != 1 {
        return Err(error(format!("`{name}` has shape {:?}, expected [N]", info.shape)));
    }
    let data = tensor_bytes(bytes, info, path)?;
    let size = info.dtype.size();
    let decode = |c: &[u8]| -> Option<i128> {
        Some(match info.dtype {
            DType::U8 => i128::from(c[0]),
            DType::I8 => i128::from(c[0] as i8),
            DType::U16 => i128::from(u16::from_le_bytes(c.try_into().ok()?)),
            DType::I16 => i128::from(i16::from_le_bytes(c.try_into().ok()?)),
            DType::U32 => i128::from(u32::from_le_bytes(c.try_into().ok()?)),
            DType::I32 => i128::from(i32::from_le_bytes(c.try_into().ok()?)),
            DType::U64 => i128::from(u64::from_le_bytes(c.try_into().ok()?)),
            DType::I64 => i128::from(i64::from_le_bytes(c.try_into().ok()?)),
            _ => return None,
        })
    };
    let mut values = Vec::with_capacity(info.shape[0]);
    for (i, chunk) in data.chunks_exact(size).enumerate() {
        let value = decode(chunk)
            .ok_or_else(|| error(format!("`{name}` has dtype {}, expected an integer type", info.dtype.name())))?;
        let index = u32::try_from(value).map_err(|_| error(format!("{item} {i} is {value}, not a {what}")))?;
        values.push(index);
    }
    Ok(values)
}

/// Decodes float `pixel_values` elements (F32, F16 or BF16, little-endian) of the samples at
/// `indices` into `out`.
fn copy_pixel_values(
    data: &[u8],
    dtype: DType,
    sample_len: usize,
    indices: &[usize],
    out: &mut Vec<f32>,
    path: &Path,
) -> Result<(), DataError> {
    let size = dtype.size();
    let stride = sample_len.checked_mul(size).ok_or(DataError::overflow("pixel_values sample size"))?;
    for &i in indices {
        let sample = i
            .checked_mul(stride)
            .and_then(|s| data.get(s..s.checked_add(stride)?))
            .ok_or_else(|| DataError::safetensors(path, "pixel_values is shorter than its shape"))?;
        let chunks = sample.chunks_exact(size);
        match dtype {
            DType::F32 => out.extend(chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            DType::F16 => out.extend(chunks.map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
            DType::BF16 => out.extend(chunks.map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
            other => {
                return Err(DataError::safetensors(
                    path,
                    format!("`pixel_values` has dtype {}, expected F32, F16 or BF16", other.name()),
                ))
            }
        }
    }
    Ok(())
}

fn metadata_class_names(container: &Container, path: &Path) -> Result<Option<Vec<String>>, DataError> {
    let Some(text) = container.metadata("class_names") else {
        return Ok(None);
    };
    let names: Vec<String> = serde_json::from_str(text).map_err(|e| {
        DataError::safetensors(path, format!("metadata `class_names` is not a JSON array of strings: {e}"))
    })?;
    Ok(Some(names))
}

/// Loads a safetensors dataset for a model with preprocessing `pre`.
///
/// * `pixel_values` (F32/F16/BF16 `[N, C, H, W]`, already normalised) is used as is and must
///   match the model's `input_size` and be finite ([`DataError::NonFinite`]); crops are not
///   possible on it.
/// * Otherwise `images` (U8 `[N, H, W]` or `[N, H, W, C]`, `C` in 1..=4, raw pixels) is
///   converted to the model's channels, resized with the eval transform when its size differs
///   from the model input (used as is when equal), and normalised.
/// * `labels` (`[N]`, any integer dtype) is optional. Class names come from the options, else
///   from the `class_names` metadata entry.
pub fn load_safetensors_dataset(path: &Path, pre: &Preprocess, opts: &LoadOptions) -> Result<Dataset, DataError> {
    let file = FileBytes::open(path)?;
    let bytes = file.bytes();
    let container = Container::parse(bytes).map_err(|e| DataError::safetensors(path, e.to_string()))?;
    let labels = match container.get("labels") {
        Some(info) => Some(read_labels(bytes, info, path)?),
        None => None,
    };
    let class_names = match &opts.class_names {
        Some(names) => Some(names.clone()),
        None => metadata_class_names(&container, path)?,
    };
    let photos = read_photo_indices(bytes, &container, path)?;
    let check_count = |n: usize| -> Result<(), DataError> {
        match (&labels, &photos) {
            (Some(l), _) if l.len() != n => Err(DataError::labels(path, format!("{} labels for {n} samples", l.len()))),
            (_, Some(p)) if p.len() != n => {
                Err(DataError::safetensors(path, format!("{} photo indices (`image_index`) for {n} samples", p.len())))
            }
            _ => Ok(()),
        }
    };

    if let Some(info) = container.get("pixel_values") {
        let [c, h, w] = pre.input_size;
        let &[n, fc, fh, fw] = info.shape.as_slice() else {
            return Err(DataError::safetensors(
                path,
                format!("`pixel_values` has shape {:?}, expected [N, C, H, W]", info.shape),
            ));
        };
        if [fc, fh, fw] != [c, h, w] {
            return Err(DataError::mismatch(
                path,
                format!("pixel_values samples are {fc}×{fh}×{fw}, the model takes {c}×{h}×{w}"),
            ));
        }
        if opts.crops_per_image > 0 {
            return Err(DataError::Options("crops need raw images; this file holds normalised pixel_values".into()));
        }
        check_count(n)?;
        let indices = select_indices(n, opts, path)?;
        let sample_len = c * h * w;
        let total = checked_dataset_len(path, indices.len(), [c, h, w], opts)?;
        let mut pixel_values = Vec::new();
        pixel_values.try_reserve_exact(total).map_err(|_| DataError::overflow("dataset allocation"))?;
        let data = tensor_bytes(bytes, info, path)?;
        copy_pixel_values(data, info.dtype, sample_len, &indices, &mut pixel_values, path)?;
        check_finite(path, &pixel_values, sample_len, &indices)?;
        let labels = labels.map(|l| indices.iter().map(|&i| l[i]).collect());
        let groups = photos.map(|p| indices.iter().map(|&i| p[i]).collect());
        let dataset = Dataset { pixel_values, labels, n: indices.len(), c, h, w, class_names, groups };
        dataset.check_labels(path)?;
        return Ok(dataset);
    }

    let Some(info) = container.get("images") else {
        return Err(DataError::safetensors(path, "holds neither `pixel_values` nor `images`"));
    };
    if info.dtype != DType::U8 {
        return Err(DataError::safetensors(path, format!("`images` has dtype {}, expected U8", info.dtype.name())));
    }
    let (n, h, w, c) = match *info.shape.as_slice() {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, c] if (1..=4).contains(&c) => (n, h, w, c),
        _ => {
            return Err(DataError::safetensors(
                path,
                format!("`images` has shape {:?}, expected [N, H, W] or [N, H, W, C] with C ≤ 4", info.shape),
            ))
        }
    };
    check_count(n)?;
    let data = tensor_bytes(bytes, info, path)?;
    let raw = RawImages::Packed { data, count: n, height: h, width: w, channels: c };
    build_dataset(&raw, path, labels, photos, class_names, pre, opts)
}
