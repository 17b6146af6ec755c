//! The file's vocabulary (`docs/FORMAT.md`), shared by the runtime's loader and the
//! compressor's writer: the format name and version, the metadata keys, the kinds of linear
//! layer ([`LinearKind`]), the tensor names a configuration implies ([`schema`]), and the
//! readers of the pieces a file is made of ([`config`], [`safetensors`], [`checksum`],
//! [`json`]). `no_std`.
//!
//! A new representation (e.g. an int8 dtype or kind) is named here first; the loader
//! (`model::load`) and the compressor's validation (`checkpoint::spec`) then follow it.

pub mod checksum;
pub mod config;
pub mod json;
pub mod safetensors;
pub mod schema;

/// Value of the `format` metadata key.
pub const FORMAT_NAME: &str = "factorvit";
/// Value of the `format_version` metadata key: the major version this runtime reads and the
/// compressor writes (a reader accepts `1` and `1.x`).
pub const FORMAT_VERSION: &str = "1";

/// The metadata keys of a factorvit file (values are strings; several hold JSON texts).
pub mod metadata_keys {
    /// [`super::FORMAT_NAME`].
    pub const FORMAT: &str = "format";
    /// [`super::FORMAT_VERSION`].
    pub const FORMAT_VERSION: &str = "format_version";
    /// The architecture, a JSON object ([`crate::config::ModelConfig`]).
    pub const CONFIG: &str = "config";
    /// The input pipeline, a JSON object ([`crate::config::Preprocess`]).
    pub const PREPROCESS: &str = "preprocess";
    /// Class names, a JSON array of strings.
    pub const LABELS: &str = "labels";
    /// The layer table, a JSON object: linear layer name -> `{"kind", "rank", "nnz"}`.
    pub const LAYERS: &str = "layers";
    /// The program that wrote the file (free text).
    pub const PRODUCER: &str = "producer";
    /// Where the weights came from (free text, optional).
    pub const SOURCE: &str = "source";
    /// CRC-32 of every tensor and of the other metadata ([`crate::checksum::METADATA_KEY`]).
    pub const CHECKSUMS: &str = crate::format::checksum::METADATA_KEY;
    /// Every key the writer fills itself (the others are free for extra entries).
    pub const RESERVED: [&str; 9] =
        [FORMAT, FORMAT_VERSION, CONFIG, PREPROCESS, LABELS, LAYERS, PRODUCER, SOURCE, CHECKSUMS];
}

/// The keys of one entry of the `layers` metadata table.
pub mod layer_table_keys {
    /// The representation, [`super::LinearKind::name`].
    pub const KIND: &str = "kind";
    /// Rank of the low-rank term (factored kinds).
    pub const RANK: &str = "rank";
    /// Stored non-zeros of the sparse term (`low_rank_sparse`).
    pub const NNZ: &str = "nnz";
}

/// How a linear layer's weight is represented (the `kind` of its `layers` table entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearKind {
    /// A dense `m × n` matrix.
    Dense,
    /// `U·V` with `U: m × r`, `V: r × n`.
    LowRank,
    /// `U·V + S` with a CSR sparse `S`.
    LowRankSparse,
}

impl LinearKind {
    /// Every kind.
    pub const ALL: [LinearKind; 3] = [LinearKind::Dense, LinearKind::LowRank, LinearKind::LowRankSparse];

    /// The name used in the file's `layers` table.
    pub fn name(self) -> &'static str {
        match self {
            LinearKind::Dense => "dense",
            LinearKind::LowRank => "low_rank",
            LinearKind::LowRankSparse => "low_rank_sparse",
        }
    }

    /// The kind called `name` in the `layers` table.
    ///
    /// ```
    /// use factorvit::format::LinearKind;
    /// assert_eq!(LinearKind::from_name("low_rank"), Some(LinearKind::LowRank));
    /// assert_eq!(LinearKind::from_name("int8"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<LinearKind> {
        LinearKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the weight is stored as factors `U`, `V`.
    pub fn is_factored(self) -> bool {
        self != LinearKind::Dense
    }

    /// Whether the layer carries a sparse term.
    pub fn has_sparse(self) -> bool {
        self == LinearKind::LowRankSparse
    }
}
