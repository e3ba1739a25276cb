use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DeliveryError {
    #[error("invalid upload URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object store")]
    Store(#[from] object_store::Error),
    #[error("bad JSON in {path}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// A report.json that is not a report (not JSON, not an object).
    #[error("unreadable report {path}")]
    Report {
        path: String,
        #[source]
        source: crash_report::ReportError,
    },
    #[error("{path}: checksum mismatch after upload ({detail})")]
    Checksum { path: String, detail: String },
    #[error("{0} is not a complete crash directory (no report.json in the store)")]
    Incomplete(String),
    #[error("cannot start the upload runtime")]
    Runtime(#[source] std::io::Error),
    /// The store has no such bucket or container (a write was answered "not found").
    #[error("{url}: no such bucket or container")]
    NoBucket {
        url: String,
        #[source]
        source: object_store::Error,
    },
    /// Something the spool reads is not its own (another user's, writable by others, a
    /// symbolic link): it is never acted on.
    #[error("refusing {path}: {reason}")]
    Untrusted { path: PathBuf, reason: String },
    #[error("{0}: no report.json, not a finished crash directory")]
    Unfinished(PathBuf),
    #[error("{0} changed size since it was queued")]
    Changed(PathBuf),
    /// A task of the upload runtime that read a file failed (panicked or was cancelled).
    #[error("reader task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("{0}")]
    Other(String),
}

impl DeliveryError {
    /// Whether trying again cannot help: the store refused the credentials, has no such
    /// bucket, or a crash directory (or one of its files) is gone or changed. Everything else
    /// (the network, a store that is down, a checksum that did not match) is retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Store(object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) => {
                true
            }
            Self::Io { source, .. } => {
                matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied)
            }
            Self::Url { .. }
            | Self::NoBucket { .. }
            | Self::Untrusted { .. }
            | Self::Unfinished(_)
            | Self::Changed(_) => true,
            _ => false,
        }
    }
}

/// An error and its causes on one line, joined with ": " (the crate's messages leave the
/// cause out; it is the `source()`). The same as `vmm::error::chain`, which sits above this
/// crate.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> DeliveryError + 'a {
    move |source| DeliveryError::Io { what, path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_and_missing_files_are_permanent_outages_are_not() {
        let store = |e: fn(String, Box<dyn std::error::Error + Send + Sync>) -> object_store::Error| {
            DeliveryError::Store(e("k".into(), "403".into()))
        };
        assert!(store(|path, source| object_store::Error::PermissionDenied { path, source }).is_permanent());
        assert!(store(|path, source| object_store::Error::Unauthenticated { path, source }).is_permanent());
        assert!(
            !DeliveryError::Store(object_store::Error::Generic { store: "S3", source: "503".into() }).is_permanent()
        );
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(DeliveryError::Io { what: "stat", path: "/c/d/vmcore".into(), source: gone }.is_permanent());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = DeliveryError::Io { what: "read", path: "/c/d/vmcore".into(), source: reset };
        // The message names what failed, the chain adds why: the cause once.
        assert_eq!(e.to_string(), "cannot read /c/d/vmcore");
        assert_eq!(chain(&e), "cannot read /c/d/vmcore: connection reset");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!DeliveryError::Io { what: "read", path: "/c/d/vmcore".into(), source: reset }.is_permanent());
    }
}
