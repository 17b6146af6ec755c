//! Typed errors of image decoding, preprocessing and dataset loading.

use std::fmt;
use std::path::{Path, PathBuf};

/// What is wrong with an idx file (the MNIST / Fashion-MNIST container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdxProblem {
    /// The file is shorter than the 4-byte magic number.
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// The magic number does not start with two zero bytes.
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The element-type byte of the magic number is not one idx defines.
    UnknownType {
        /// The type byte.
        code: u8,
    },
    /// The element type is valid idx but not the one this reader needs.
    WrongType {
        /// The type byte found.
        found: u8,
        /// The type byte needed.
        expected: u8,
    },
    /// The number of dimensions is not the one needed.
    WrongRank {
        /// Dimensions found.
        found: usize,
        /// Dimensions needed.
        expected: usize,
    },
    /// The product of the dimensions (times the element size) overflows.
    SizeOverflow {
        /// The dimensions.
        dims: Vec<u64>,
    },
    /// The file ends before the header or the data it announces.
    Truncated {
        /// Bytes the header announces (header included).
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// Bytes follow the announced data.
    TrailingBytes {
        /// How many.
        extra: u64,
    },
}

impl fmt::Display for IdxProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdxProblem::TooShort { len } => {
                write!(f, "{len} bytes is shorter than the 4-byte idx magic number")
            }
            IdxProblem::BadMagic { found } => write!(
                f,
                "bad idx magic number {:02x} {:02x} {:02x} {:02x} (expected 00 00 <type> <rank>)",
                found[0], found[1], found[2], found[3]
            ),
            IdxProblem::UnknownType { code } => write!(f, "unknown idx element type 0x{code:02x}"),
            IdxProblem::WrongType { found, expected } => {
                write!(f, "idx element type 0x{found:02x}, expected 0x{expected:02x}")
            }
            IdxProblem::WrongRank { found, expected } => {
                write!(f, "idx array has {found} dimensions, expected {expected}")
            }
            IdxProblem::SizeOverflow { dims } => {
                write!(f, "idx dimensions {dims:?} overflow the addressable size")
            }
            IdxProblem::Truncated { needed, available } => {
                write!(f, "truncated idx file: {needed} bytes announced, {available} present")
            }
            IdxProblem::TrailingBytes { extra } => {
                write!(f, "{extra} unexpected bytes after the idx data")
            }
        }
    }
}

/// Everything that can go wrong while decoding images or loading a dataset. Every variant that
/// concerns a file names it.
#[derive(Debug)]
#[non_exhaustive]
pub enum DataError {
    /// Reading a file or listing a folder failed.
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image file could not be decoded.
    Image {
        /// The image file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// A gzip stream is corrupt or decompresses past the size limit.
    Gzip {
        /// The compressed file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An idx file is malformed.
    Idx {
        /// The idx file.
        path: PathBuf,
        /// The problem.
        problem: IdxProblem,
    },
    /// A safetensors dataset file is malformed or lacks what a dataset needs.
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The problem.
        message: String,
    },
    /// A labels array is inconsistent with the images or holds an invalid value.
    Labels {
        /// The file holding the labels.
        path: PathBuf,
        /// The problem.
        message: String,
    },
    /// An image folder does not follow the expected layout, or a class folder matches no label.
    Folder {
        /// The folder.
        path: PathBuf,
        /// The problem.
        message: String,
    },
    /// The path is none of the supported dataset kinds.
    UnknownSource {
        /// The path.
        path: PathBuf,
    },
    /// The source holds no sample.
    Empty {
        /// The source.
        path: PathBuf,
    },
    /// An image folder holds no jpg/jpeg/png image.
    NoImages {
        /// The folder.
        path: PathBuf,
        /// Other (non-hidden) files found and skipped.
        skipped: usize,
    },
    /// The loaded samples would exceed the memory limit of a dataset
    /// ([`LoadOptions::max_bytes`](super::LoadOptions::max_bytes)); nothing was allocated.
    TooLarge {
        /// The source.
        path: PathBuf,
        /// Samples requested (images × crops).
        samples: u64,
        /// `[C, H, W]` of one sample.
        sample_shape: [usize; 3],
        /// Bytes the samples would take (`u64::MAX` when that overflows).
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A stored pixel value is NaN or infinite.
    NonFinite {
        /// The source.
        path: PathBuf,
        /// Index of the first sample holding one (in the source).
        sample: usize,
        /// The value.
        value: f32,
    },
    /// Stored samples do not fit the model input (shape or channel count).
    InputMismatch {
        /// The source.
        path: PathBuf,
        /// The problem.
        message: String,
    },
    /// The preprocessing description cannot be applied (channel count, mean/std lengths, ...).
    Preprocess(String),
    /// A size computation overflowed (hostile dimensions).
    Overflow {
        /// What was being computed.
        what: &'static str,
    },
    /// The loader options are inconsistent.
    Options(String),
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> DataError {
        DataError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn idx(path: &Path, problem: IdxProblem) -> DataError {
        DataError::Idx { path: path.to_path_buf(), problem }
    }

    pub(crate) fn safetensors(path: &Path, message: impl Into<String>) -> DataError {
        DataError::Safetensors { path: path.to_path_buf(), message: message.into() }
    }

    pub(crate) fn labels(path: &Path, message: impl Into<String>) -> DataError {
        DataError::Labels { path: path.to_path_buf(), message: message.into() }
    }

    pub(crate) fn folder(path: &Path, message: impl Into<String>) -> DataError {
        DataError::Folder { path: path.to_path_buf(), message: message.into() }
    }

    pub(crate) fn mismatch(path: &Path, message: impl Into<String>) -> DataError {
        DataError::InputMismatch { path: path.to_path_buf(), message: message.into() }
    }

    pub(crate) fn overflow(what: &'static str) -> DataError {
        DataError::Overflow { what }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            DataError::Image { path, message } => {
                write!(f, "{}: cannot decode image: {message}", path.display())
            }
            DataError::Gzip { path, message } => {
                write!(f, "{}: gzip stream: {message}", path.display())
            }
            DataError::Idx { path, problem } => write!(f, "{}: {problem}", path.display()),
            DataError::Safetensors { path, message } => {
                write!(f, "{}: safetensors dataset: {message}", path.display())
            }
            DataError::Labels { path, message } => {
                write!(f, "{}: labels: {message}", path.display())
            }
            DataError::Folder { path, message } => {
                write!(f, "{}: image folder: {message}", path.display())
            }
            DataError::UnknownSource { path } => write!(
                f,
                "{}: not a dataset (expected an image folder, a jpg/png image, a .safetensors \
                 file, or a folder or file of idx data)",
                path.display()
            ),
            DataError::Empty { path } => {
                write!(f, "{}: the dataset holds no sample", path.display())
            }
            DataError::NoImages { path, skipped } => {
                write!(f, "no .jpg/.jpeg/.png images were found under {}", path.display())?;
                match skipped {
                    0 => write!(f, " (the folder is empty)"),
                    1 => write!(f, " (1 other file skipped)"),
                    n => write!(f, " ({n} other files skipped)"),
                }
            }
            DataError::TooLarge { path, samples, sample_shape: [c, h, w], bytes, limit } => write!(
                f,
                "{}: {samples} samples of {c}×{h}×{w} floats would take {} in memory, above the {} \
                 limit; load fewer images or crops, or a smaller image size",
                path.display(),
                gib(*bytes),
                gib(*limit)
            ),
            DataError::NonFinite { path, sample, value } => write!(
                f,
                "{}: sample {sample} holds a non-finite pixel value ({value}); pixel values must be \
                 finite numbers",
                path.display()
            ),
            DataError::InputMismatch { path, message } => {
                write!(f, "{}: does not fit the model input: {message}", path.display())
            }
            DataError::Preprocess(m) => write!(f, "invalid preprocessing: {m}"),
            DataError::Overflow { what } => write!(f, "size overflow computing {what}"),
            DataError::Options(m) => write!(f, "invalid dataset options: {m}"),
        }
    }
}

/// `bytes` in GiB, for messages.
fn gib(bytes: u64) -> String {
    if bytes == u64::MAX {
        "more than 16 EiB".to_string()
    } else {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
