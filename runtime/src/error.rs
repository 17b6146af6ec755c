//! Typed errors of the runtime. Every failure to load or run a model is one of these; the
//! runtime never panics on bad input.

use alloc::string::String;

use crate::json::JsonError;

/// Everything that can go wrong when loading or running a model.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Reading or mapping a file failed.
    #[cfg(feature = "std")]
    Io {
        /// The path that failed.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The safetensors container is malformed (size prefix, header, offsets).
    Container(String),
    /// The header or a metadata entry is not valid JSON.
    Json {
        /// Which JSON text: `"header"` or the metadata key.
        what: String,
        /// The parse error.
        error: JsonError,
    },
    /// The file is a valid safetensors file but not a factorvit model (or a version this runtime
    /// does not read).
    Format(String),
    /// The model configuration is incomplete or inconsistent.
    Config(String),
    /// A tensor the configuration requires is absent.
    MissingTensor(String),
    /// A tensor has a dtype this slot does not accept.
    Dtype {
        /// Tensor name.
        tensor: String,
        /// What was found.
        found: String,
        /// What the slot accepts.
        expected: &'static str,
    },
    /// A tensor has the wrong shape.
    Shape {
        /// Tensor name.
        tensor: String,
        /// Shape found in the file.
        found: alloc::vec::Vec<usize>,
        /// Shape the configuration requires.
        expected: alloc::vec::Vec<usize>,
    },
    /// A sparse tensor's row pointers or column indices are invalid.
    Sparse {
        /// Layer name.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// An arithmetic overflow while computing a size (hostile or corrupt shapes).
    Overflow(&'static str),
    /// The input handed to a session does not match what the session was built for.
    Input(String),
    /// A tensor holds a non-finite value where one is not allowed.
    NonFinite(String),
    /// A channel scale of an int8 weight is zero, negative, NaN or infinite.
    Scale {
        /// The scale tensor.
        tensor: String,
        /// The channel (index into the scale tensor).
        channel: usize,
        /// The value found.
        value: f32,
    },
    /// The bytes of a tensor (or the metadata, named `__metadata__`) do not match the checksum
    /// stored in the file: the file is corrupt.
    Checksum {
        /// The tensor at fault, or `__metadata__`.
        tensor: String,
        /// CRC-32 stored in the file.
        expected: u32,
        /// CRC-32 of the bytes found.
        found: u32,
    },
    /// Building the model or session would allocate more than the configured memory limit
    /// (checked before allocating).
    MemoryLimit {
        /// What needed the memory.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            #[cfg(feature = "std")]
            Error::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            Error::Container(m) => write!(f, "malformed safetensors container: {m}"),
            Error::Json { what, error } => write!(f, "{what}: {error}"),
            Error::Format(m) => write!(f, "not a factorvit v1 model: {m}"),
            Error::Config(m) => write!(f, "invalid model config: {m}"),
            Error::MissingTensor(t) => write!(f, "missing tensor `{t}`"),
            Error::Dtype { tensor, found, expected } => {
                write!(f, "tensor `{tensor}` has dtype {found}, expected {expected}")
            }
            Error::Shape { tensor, found, expected } => {
                write!(f, "tensor `{tensor}` has shape {found:?}, expected {expected:?}")
            }
            Error::Sparse { layer, reason } => write!(f, "sparse term of `{layer}`: {reason}"),
            Error::Overflow(what) => write!(f, "size overflow while computing {what}"),
            Error::Input(m) => write!(f, "bad input: {m}"),
            Error::NonFinite(t) => write!(f, "tensor `{t}` contains NaN or infinity"),
            Error::Scale { tensor, channel, value } => {
                write!(f, "tensor `{tensor}`: scale {value} of channel {channel} is not a finite positive number")
            }
            Error::Checksum { tensor, expected, found } => write!(
                f,
                "checksum mismatch in `{tensor}`: the file stores crc32 {expected:08x}, the bytes have {found:08x} (corrupt file)"
            ),
            Error::MemoryLimit { what, needed, limit } => {
                write!(f, "{what} needs {needed} bytes, more than the memory limit of {limit} bytes")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result alias of the runtime.
pub type Result<T> = core::result::Result<T, Error>;
