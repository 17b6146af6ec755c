//! Datasets for calibration and evaluation, loaded for a model's [`Preprocess`]:
//!
//! * image folders — flat (unlabelled photos) or one subfolder per class ([`folder`]);
//! * safetensors files with normalised `pixel_values` or raw uint8 `images` ([`tensors`]);
//! * Fashion-MNIST / MNIST idx files, plain or gzipped ([`idx`]);
//! * a single jpg/png image.
//!
//! Options select a split, a (seeded) subset, and seeded random-resized-crop augmentation.
//! Parsing is bounds- and overflow-checked and reports a typed [`DataError`] naming the file;
//! decoding and preprocessing run in parallel (rayon).

mod error;
pub mod folder;
pub mod idx;
mod rng;
pub mod tensors;

use std::path::{Path, PathBuf};

use factorvit::Preprocess;
use rayon::prelude::*;

pub use error::{DataError, IdxProblem};
pub use folder::{is_image_file, list_image_folder, match_class_names, FolderListing};
pub use idx::IdxArray;
pub use rng::Rng;
pub use tensors::{load_safetensors_dataset, pixel_values_size};

use crate::preprocess::{
    augmented_crop, convert_channels, eval_transform_u8, load_image_u8, normalize_into, validate_preprocess,
    CropAugment, ImageU8, ImageView,
};

/// Normalised model inputs with optional labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `[n, c, h, w]` normalised floats, sample after sample.
    pub pixel_values: Vec<f32>,
    /// Per sample class index, when the source has labels.
    pub labels: Option<Vec<u32>>,
    /// Number of samples.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Names of the classes the labels index, when known.
    pub class_names: Option<Vec<String>>,
    /// Per sample, the source photo it comes from, when known: the image's index for random
    /// crops, or the file's `image_index` tensor. The compressor keeps a photo's samples on one
    /// side of its validation split.
    pub groups: Option<Vec<u32>>,
}

impl Dataset {
    /// Floats per sample (`c * h * w`).
    pub fn sample_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The `[c, h, w]` floats of sample `i` (panics when `i >= n`, like slice indexing).
    pub fn sample(&self, i: usize) -> &[f32] {
        let len = self.sample_len();
        &self.pixel_values[i * len..(i + 1) * len]
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// `true` when there is no sample.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Checks that every label indexes `class_names` (when both are present).
    fn check_labels(&self, path: &Path) -> Result<(), DataError> {
        if let (Some(labels), Some(names)) = (&self.labels, &self.class_names) {
            if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l as usize >= names.len()) {
                return Err(DataError::labels(
                    path,
                    format!("sample {i} has label {l}, but there are {} class names", names.len()),
                ));
            }
        }
        Ok(())
    }
}

/// Which part of a dataset with train / test files to load (idx folders).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Split {
    /// `train-*` files.
    Train,
    /// `t10k-*` files.
    #[default]
    Test,
}

impl Split {
    /// File-name prefix of the split in idx folders.
    pub fn idx_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// How to load a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Split of an idx folder.
    pub split: Split,
    /// Keep at most this many source images (before crops multiply them).
    pub limit: Option<usize>,
    /// With `limit`, pick a seeded random subset instead of the first images (kept in source
    /// order).
    pub random_subset: bool,
    /// Seed of the subset and of the crops: the same seed gives the same samples.
    pub seed: u64,
    /// `0`: one sample per image through the eval transform. `k > 0`: `k` random resized
    /// crops per image instead (calibration from few photos).
    pub crops_per_image: usize,
    /// Crop augmentation parameters (used when `crops_per_image > 0`).
    pub crop: CropAugment,
    /// The model's label list: class folders are matched to it, and it becomes the dataset's
    /// `class_names`.
    pub class_names: Option<Vec<String>>,
    /// Largest size of the loaded samples (`n × C × H × W` f32), in bytes: checked before
    /// anything is allocated or decoded, exceeding it is [`DataError::TooLarge`]. Default
    /// [`DEFAULT_MAX_DATASET_BYTES`].
    pub max_bytes: u64,
}

/// Default [`LoadOptions::max_bytes`]: 16 GiB.
pub const DEFAULT_MAX_DATASET_BYTES: u64 = 16 << 30;

/// Checks that `samples` samples of `[c, h, w]` f32 fit `opts.max_bytes`; returns the number of
/// floats.
pub(crate) fn checked_dataset_len(
    path: &Path,
    samples: usize,
    [c, h, w]: [usize; 3],
    opts: &LoadOptions,
) -> Result<usize, DataError> {
    let bytes = (samples as u64)
        .checked_mul(c as u64)
        .and_then(|v| v.checked_mul(h as u64))
        .and_then(|v| v.checked_mul(w as u64))
        .and_then(|v| v.checked_mul(std::mem::size_of::<f32>() as u64));
    match bytes {
        Some(b) if b <= opts.max_bytes => usize::try_from(b / 4).map_err(|_| DataError::overflow("dataset size")),
        _ => Err(DataError::TooLarge {
            path: path.to_path_buf(),
            samples: samples as u64,
            sample_shape: [c, h, w],
            bytes: bytes.unwrap_or(u64::MAX),
            limit: opts.max_bytes,
        }),
    }
}

/// The first non-finite value of `pixels` (samples of `sample_len` floats) as
/// [`DataError::NonFinite`], naming the sample by its index in the source (`indices`).
pub(crate) fn check_finite(path: &Path, pixels: &[f32], sample_len: usize, indices: &[usize]) -> Result<(), DataError> {
    match pixels.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let k = i / sample_len.max(1);
            Err(DataError::NonFinite {
                path: path.to_path_buf(),
                sample: indices.get(k).copied().unwrap_or(k),
                value: pixels[i],
            })
        }
    }
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            split: Split::Test,
            limit: None,
            random_subset: false,
            seed: 0,
            crops_per_image: 0,
            crop: CropAugment::default(),
            class_names: None,
            max_bytes: DEFAULT_MAX_DATASET_BYTES,
        }
    }
}

/// The indices of `total` source images to load: all, the first `limit`, or — with
/// `random_subset` — a uniform seeded sample of `limit` (partial Fisher–Yates), sorted.
pub fn select_indices(total: usize, opts: &LoadOptions, path: &Path) -> Result<Vec<usize>, DataError> {
    if total == 0 {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    let keep = match opts.limit {
        Some(0) => return Err(DataError::Options("limit must be at least 1".into())),
        Some(limit) => limit.min(total),
        None => total,
    };
    if !opts.random_subset || keep == total {
        return Ok((0..keep).collect());
    }
    let mut rng = Rng::derive(opts.seed, &[0x5eed_5b5e7]);
    let mut pool: Vec<usize> = (0..total).collect();
    for i in 0..keep {
        let j = i + rng.below((total - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(keep);
    pool.sort_unstable();
    Ok(pool)
}

/// Raw uint8 images a dataset is built from.
pub(crate) enum RawImages<'a> {
    /// Image files, decoded on demand (eval transform always applied).
    Files(&'a [PathBuf]),
    /// `count` images of `height × width × channels` bytes, back to back (used as is when
    /// already of the model's size).
    Packed { data: &'a [u8], count: usize, height: usize, width: usize, channels: usize },
}

impl RawImages<'_> {
    fn len(&self) -> usize {
        match self {
            RawImages::Files(files) => files.len(),
            RawImages::Packed { count, .. } => *count,
        }
    }
}

/// One decoded or borrowed source image.
enum Source<'a> {
    Owned(ImageU8),
    Borrowed(ImageView<'a>),
}

impl Source<'_> {
    fn view(&self) -> ImageView<'_> {
        match self {
            Source::Owned(img) => img.view(),
            Source::Borrowed(v) => *v,
        }
    }
}

fn source_image<'a>(raw: &RawImages<'a>, index: usize) -> Result<Source<'a>, DataError> {
    match *raw {
        RawImages::Files(files) => Ok(Source::Owned(load_image_u8(&files[index])?)),
        RawImages::Packed { data, height, width, channels, .. } => {
            let len = height
                .checked_mul(width)
                .and_then(|p| p.checked_mul(channels))
                .ok_or(DataError::overflow("image size"))?;
            let start = index.checked_mul(len).ok_or(DataError::overflow("image offset"))?;
            let bytes = start
                .checked_add(len)
                .and_then(|end| data.get(start..end))
                .ok_or(DataError::overflow("image offset"))?;
            Ok(Source::Borrowed(ImageView::new(width, height, channels, bytes)?))
        }
    }
}

/// Runs the transform of one source image into `out` (`k` samples of `c*h*w` floats).
fn process_image(
    raw: &RawImages<'_>,
    index: usize,
    pre: &Preprocess,
    opts: &LoadOptions,
    out: &mut [f32],
) -> Result<(), DataError> {
    let img = source_image(raw, index)?;
    let view = img.view();
    let [c, h, w] = pre.input_size;
    if opts.crops_per_image == 0 {
        let as_is = matches!(raw, RawImages::Packed { .. }) && view.height() == h && view.width() == w;
        let prepared = if as_is { convert_channels(view, c)? } else { eval_transform_u8(view, pre)? };
        return normalize_into(prepared.view(), pre, out);
    }
    let sample_len = c * h * w;
    for (j, dst) in out.chunks_exact_mut(sample_len).enumerate() {
        let mut rng = Rng::derive(opts.seed, &[index as u64, j as u64]);
        let crop = augmented_crop(view, pre, &opts.crop, &mut rng)?;
        normalize_into(crop.view(), pre, dst)?;
    }
    Ok(())
}

/// Fewer source images than this are processed on the calling thread.
const PARALLEL_MIN_IMAGES: usize = 4;

/// Builds a dataset from raw images: subset selection, eval transform or crops, normalisation.
pub(crate) fn build_dataset(
    raw: &RawImages<'_>,
    path: &Path,
    labels: Option<Vec<u32>>,
    photos: Option<Vec<u32>>,
    class_names: Option<Vec<String>>,
    pre: &Preprocess,
    opts: &LoadOptions,
) -> Result<Dataset, DataError> {
    validate_preprocess(pre)?;
    if opts.crops_per_image > 0 {
        opts.crop.validate()?;
    }
    if let Some(l) = &labels {
        if l.len() != raw.len() {
            return Err(DataError::labels(path, format!("{} labels for {} images", l.len(), raw.len())));
        }
    }
    if let Some(p) = &photos {
        if p.len() != raw.len() {
            return Err(DataError::safetensors(path, format!("{} photo indices for {} images", p.len(), raw.len())));
        }
    }
    let indices = select_indices(raw.len(), opts, path)?;
    let [c, h, w] = pre.input_size;
    let per_image = opts.crops_per_image.max(1);
    let n = indices.len().checked_mul(per_image).ok_or(DataError::overflow("sample count"))?;
    let total = checked_dataset_len(path, n, [c, h, w], opts)?;
    let chunk = (c * h * w).checked_mul(per_image).ok_or(DataError::overflow("sample size"))?;
    let mut pixel_values = Vec::new();
    pixel_values.try_reserve_exact(total).map_err(|_| DataError::overflow("dataset allocation"))?;
    pixel_values.resize(total, 0.0f32);
    if indices.len() < PARALLEL_MIN_IMAGES {
        for (out, &index) in pixel_values.chunks_exact_mut(chunk).zip(&indices) {
            process_image(raw, index, pre, opts, out)?;
        }
    } else {
        pixel_values
            .par_chunks_exact_mut(chunk)
            .zip(indices.par_iter())
            .try_for_each(|(out, &index)| process_image(raw, index, pre, opts, out))?;
    }
    let repeat =
        |l: &[u32]| indices.iter().flat_map(|&i| std::iter::repeat(l[i]).take(per_image)).collect::<Vec<u32>>();
    let labels = labels.map(|l| repeat(&l));
    // The crops of one image share its photo (the file's photo index, else the image's).
    let groups = match photos {
        Some(p) => Some(repeat(&p)),
        None if opts.crops_per_image > 0 => Some(
            indices
                .iter()
                .map(|&i| u32::try_from(i).map_err(|_| DataError::overflow("image index")))
                .collect::<Result<Vec<u32>, _>>()
                .map(|p| p.iter().flat_map(|&g| std::iter::repeat(g).take(per_image)).collect())?,
        ),
        None => None,
    };
    let dataset = Dataset { pixel_values, labels, n, c, h, w, class_names, groups };
    dataset.check_labels(path)?;
    Ok(dataset)
}

/// Loads an image folder ([`list_image_folder`]): every image goes through the eval transform
/// (or the crops).
pub fn load_image_folder(dir: &Path, pre: &Preprocess, opts: &LoadOptions) -> Result<Dataset, DataError> {
    let listing = list_image_folder(dir, opts.class_names.as_deref())?;
    build_dataset(&RawImages::Files(&listing.files), dir, listing.labels, None, listing.class_names, pre, opts)
}

/// Loads idx data: a folder holding `<split>-images-idx3-ubyte[.gz]` (and usually the
/// matching labels file), or an images file directly (labels taken from the sibling
/// `...labels-idx1-ubyte[.gz]` when present).
pub fn load_idx_dataset(path: &Path, pre: &Preprocess, opts: &LoadOptions) -> Result<Dataset, DataError> {
    let (images_path, labels_path) = if path.is_dir() {
        idx::find_idx_files(path, opts.split.idx_prefix()).ok_or_else(|| {
            DataError::folder(path, format!("no {}-images-idx3-ubyte[.gz] file", opts.split.idx_prefix()))
        })?
    } else {
        (path.to_path_buf(), idx::sibling_labels(path))
    };
    let (n, h, w, images) = idx::read_idx_images(&images_path)?;
    let labels = match &labels_path {
        Some(p) => {
            let labels = idx::read_idx_labels(p)?;
            if labels.len() != n {
                return Err(DataError::labels(p, format!("{} labels for {n} images", labels.len())));
            }
            Some(labels)
        }
        None => None,
    };
    let raw = RawImages::Packed { data: images.data(), count: n, height: h, width: w, channels: 1 };
    build_dataset(&raw, &images_path, labels, None, opts.class_names.clone(), pre, opts)
}

fn has_idx_images(dir: &Path) -> bool {
    ["train", "t10k"].iter().any(|p| idx::find_idx_files(dir, p).is_some())
}

fn is_idx_images_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("idx3-ubyte"))
}

/// Loads whatever `path` is: a folder of idx files, an image folder, a `.safetensors` file,
/// an idx images file, or a single jpg/png image.
pub fn load_dataset(path: &Path, pre: &Preprocess, opts: &LoadOptions) -> Result<Dataset, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return if has_idx_images(path) {
            load_idx_dataset(path, pre, opts)
        } else {
            load_image_folder(path, pre, opts)
        };
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("safetensors") {
        load_safetensors_dataset(path, pre, opts)
    } else if is_idx_images_file(path) {
        load_idx_dataset(path, pre, opts)
    } else if is_image_file(path) {
        let files = [path.to_path_buf()];
        build_dataset(&RawImages::Files(&files), path, None, None, opts.class_names.clone(), pre, opts)
    } else {
        Err(DataError::UnknownSource { path: path.to_path_buf() })
    }
}
