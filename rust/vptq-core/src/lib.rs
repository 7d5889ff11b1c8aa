//! Pure-Rust core of vptq-rs: index bit-packing ([`bitpack`]), weighted k-means
//! ([`kmeans`]) and the packed VPTQ checkpoint layout ([`checkpoint`]).
//!
//! Nothing here knows about Python; the `vptq-py` crate converts.

#![warn(missing_docs)]

pub mod bitpack;
pub mod checkpoint;
pub mod error;
pub mod kmeans;

pub use error::{CoreError, Result};
