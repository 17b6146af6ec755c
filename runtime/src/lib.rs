//! # factorvit runtime
//!
//! Opens a factorvit model file (a safetensors file with a documented schema, see
//! `docs/FORMAT.md`) without copying its weights and runs Vision Transformers (timm ViT/DeiT,
//! Hugging Face ViT/DeiT/DINOv2) with SIMD dense, low-rank and low-rank + sparse linears.
//!
//! `no_std` (core + alloc) without the default `std` feature; `std` adds memory-mapped files and
//! multi-threaded sessions.
//!
//! ```
//! # fn main() -> factorvit::Result<()> {
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.fvit");
//! // Memory-map a model file (weights are read in place, never copied).
//! let model = factorvit::Model::open(path)?;
//! let [c, h, w] = model.preprocess().input_size;
//! // A session preallocates every buffer; runs after the first allocate nothing.
//! let mut session = model.session(factorvit::SessionOptions { threads: 1, batch: 1, image_size: [0, 0], ..Default::default() })?;
//! // `[batch, C, H, W]` pixels, already normalised with `model.preprocess()`'s mean and std.
//! let pixels = vec![0.1f32; c * h * w];
//! let out = session.run(&pixels)?;
//! let logits = out.logits.expect("a classifier");
//! assert_eq!(logits.len(), model.config().num_classes);
//! let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
//! println!("class {best}: {}", model.labels()[best]);
//! # Ok(())
//! # }
//! ```
//!
//! Without `std` (firmware), open the bytes where they lie, e.g. in flash:
//!
//! ```
//! # fn main() -> factorvit::Result<()> {
//! // In firmware: `static MODEL: &[u8] = include_bytes!("model.fvit");` (aligned to 4 bytes or
//! // more so that f32/f16 tensors are read in place; misaligned tensors are copied to RAM).
//! let bytes: &[u8] = &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.fvit")).unwrap();
//! let model = factorvit::Model::from_bytes(bytes)?;
//! let mut session = model.session(factorvit::SessionOptions::default())?;
//! let [c, h, w] = model.preprocess().input_size;
//! let out = session.run(&vec![0.0f32; c * h * w])?;
//! assert_eq!(out.pooler_output.len(), model.config().embed_dim);
//! println!("arena {} bytes", session.memory().arena_bytes);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

pub mod error;
pub mod format;
pub mod kernels;
pub mod model;
pub mod parallel;
pub mod resample;
pub mod session;

// The format's pieces keep their historical paths (`factorvit::config`, `factorvit::json`, ...).
pub use format::{checksum, config, json, safetensors};

pub use checksum::{ChecksumPolicy, ChecksumStatus};
pub use config::{GlobalPool, Head, Interpolation, ModelConfig, PosInterpolation, Preprocess};
pub use error::{Error, Result};
pub use format::schema::BlockLinear;
pub use format::{LinearKind, FORMAT_NAME, FORMAT_VERSION};
pub use model::{CsrMatrix, Linear, LinearInfo, LinearWeights, LoadOptions, Model};
pub use session::{MemoryReport, NoObserver, Observer, Outputs, Session, SessionOptions, DEFAULT_SESSION_MEMORY_LIMIT};
