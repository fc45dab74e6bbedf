//! The crate's error type.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What went wrong, and on which file or directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The Parquet writer or reader failed.
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Building or reading an Arrow batch failed.
    #[error("{}: arrow: {source}", path.display())]
    Arrow {
        /// The Parquet file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A manifest entry could not be read, or could not be written.
    #[error("{}: manifest: {detail}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A data file does not have the columns or types eddy writes.
    #[error("{}: unexpected contents: {detail}", path.display())]
    Format {
        /// The Parquet file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// An invalid writer id or configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The writer failed earlier and writes nothing more. This is its
    /// first error (shared: every later call returns it), displayed as it.
    #[error(transparent)]
    Failed(Arc<Error>),
    /// A writer's thread stopped without an error (it panicked).
    #[error("the writer thread stopped")]
    Stopped,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn parquet(path: &Path, source: parquet::errors::ParquetError) -> Error {
        Error::Parquet { path: path.to_path_buf(), source }
    }

    pub(crate) fn arrow(path: &Path, source: arrow::error::ArrowError) -> Error {
        Error::Arrow { path: path.to_path_buf(), source }
    }

    pub(crate) fn format(path: &Path, detail: impl Into<String>) -> Error {
        Error::Format { path: path.to_path_buf(), detail: detail.into() }
    }
}
