use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DeliveryError {
    #[error("invalid upload URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("bad JSON in {path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: checksum mismatch after upload ({detail})")]
    Checksum { path: String, detail: String },
    #[error("{0} is not a complete crash directory (no report.json in the store)")]
    Incomplete(String),
    #[error("cannot start the upload runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Other(String),
}

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> DeliveryError + 'a {
    move |source| DeliveryError::Io { what, path: path.to_owned(), source }
}
