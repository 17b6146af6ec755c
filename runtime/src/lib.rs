//! # factorvit runtime
//!
//! Opens a factorvit model file (a safetensors file with a documented schema, see
//! `docs/FORMAT.md`) without copying its weights and runs Vision Transformers (timm ViT/DeiT,
//! Hugging Face ViT/DeiT/DINOv2) with SIMD dense, low-rank and low-rank + sparse linears.
//!
//! `no_std` (core + alloc) without the default `std` feature; `std` adds memory-mapped files and
//! multi-threaded sessions.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

pub mod config;
pub mod error;
pub mod json;
pub mod kernels;
pub mod model;
pub mod parallel;
pub mod resample;
pub mod safetensors;
pub mod session;
mod storage;

pub use config::{GlobalPool, Head, Interpolation, ModelConfig, PosInterpolation, Preprocess};
pub use error::{Error, Result};
pub use model::{BlockLinear, CsrMatrix, Linear, LinearInfo, LinearKind, LinearWeights, Model};
pub use session::{MemoryReport, NoObserver, Observer, Outputs, Session, SessionOptions};
