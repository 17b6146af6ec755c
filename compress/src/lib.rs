//! factorvit compressor: checkpoint import (timm / transformers), the file writer, image
//! preprocessing and datasets, the activation-aware low-rank + residual compression method, the
//! compression job that ties them together ([`job::CompressJob`], what the CLI, the demo and other
//! front ends call) and its report ([`report`]).
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod job;
pub mod method;
pub mod preprocess;
pub mod report;
pub mod writer;

/// The HTML / SVG report, now [`report::html`] (this path keeps working).
pub use report::html as report_html;
