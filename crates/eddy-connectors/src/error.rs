//! Errors of the connectors.

use std::path::PathBuf;

/// An error reading a dataset or writing an output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory that must exist does not.
    #[error("{path}: not found{hint}")]
    NotFound {
        /// The missing path.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Bad content in an input file.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: u64,
        /// What is wrong, naming the field.
        message: String,
    },
}

impl Error {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

/// The connectors' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
