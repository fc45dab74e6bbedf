//! Errors of training and of loading models.

use std::path::{Path, PathBuf};

/// What went wrong, naming the file, field or step and the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the backup failed.
    #[error("reading the backup {dir}: {source}")]
    Backup {
        /// The backup directory.
        dir: PathBuf,
        /// The reader's error.
        source: eddy_parquet::Error,
    },
    /// The data cannot train the task (e.g. no reference channel).
    #[error("{0}")]
    Data(String),
    /// smartcore failed to fit or predict.
    #[error("training {task}: {message}")]
    Fit {
        /// The task.
        task: &'static str,
        /// smartcore's message.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A model file is not a valid model.
    #[error("{path}: {message}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io { path: path.to_path_buf(), source }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
