//! Typed errors of the core crate.

use std::path::PathBuf;

/// Everything that can go wrong in `vptq-core`.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A caller-supplied value is out of range or inconsistent (bad bit width, index too
    /// large, wrong shape).
    #[error("{0}")]
    InvalidArgument(String),
    /// A checkpoint on disk disagrees with its config, or its bytes cannot be parsed.
    #[error("{0}")]
    Checkpoint(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, CoreError>;

/// Build an [`CoreError::InvalidArgument`] from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::CoreError::InvalidArgument(format!($($arg)*)) };
}
pub(crate) use invalid;

impl CoreError {
    /// Attach a path to an I/O error.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}
