//! factorvit compressor: checkpoint import (timm / transformers), the file writer, image
//! preprocessing and datasets, and the activation-aware low-rank + residual compression method.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod method;
pub mod preprocess;
pub mod report_html;
pub mod writer;
