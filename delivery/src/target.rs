//! Where crashes go: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
//! `file:///path`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::list::PaginatedListStore;
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, RetryConfig};

use crate::error::io;
use crate::{private, DeliveryError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    S3,
    Gcs,
    Azure,
    File,
}

/// A parsed upload URL with the store built from it.
#[derive(Clone)]
pub struct Target {
    /// The URL as given, without a trailing slash.
    pub url: String,
    pub scheme: Scheme,
    /// The bucket or container (empty for `file://`).
    pub bucket: String,
    /// The key prefix inside the bucket, without leading or trailing slashes.
    pub prefix: String,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    /// S3, GCS, Azure: built when parsed (which connects to nothing).
    Cloud {
        store: Arc<dyn ObjectStore>,
        /// The resumable multipart API.
        multipart: Arc<dyn MultipartStore>,
        /// Listing a page of a chosen size.
        pages: Arc<dyn PaginatedListStore>,
    },
    /// `file://`: the directory is created (owner-only) when first written to, not when the
    /// URL is parsed, and the store is built once it exists.
    File { root: PathBuf, store: Arc<OnceLock<Arc<LocalFileSystem>>> },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.url).field("scheme", &self.scheme).finish()
    }
}

/// A few quick retries inside one request; the uploader's own backoff does the rest (and
/// survives restarts).
fn retry() -> RetryConfig {
    RetryConfig { max_retries: 3, retry_timeout: std::time::Duration::from_secs(30), ..Default::default() }
}

fn bad(url: &str, reason: impl Into<String>) -> DeliveryError {
    DeliveryError::Url { url: url.to_owned(), reason: reason.into() }
}

impl Target {
    /// Parse `url` and build its store; nothing is created or connected to (a `file://`
    /// directory is made, owner-only, when first written to). Credentials and settings come from the environment as
    /// object_store reads them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, instance metadata...;
    /// `GOOGLE_SERVICE_ACCOUNT`/`GOOGLE_APPLICATION_CREDENTIALS`; `AZURE_STORAGE_ACCOUNT_NAME`,
    /// `AZURE_STORAGE_ACCOUNT_KEY`...). `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), as the
    /// AWS CLI reads it, points S3 at an S3-compatible server; plain `http://` is then allowed.
    pub fn parse(url: &str) -> Result<Self, DeliveryError> {
        let url = url.trim_end_matches('/');
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| bad(url, "no scheme (s3://, gs://, az://, file://)"))?;
        let scheme = match scheme {
            "s3" | "s3a" => Scheme::S3,
            "gs" => Scheme::Gcs,
            "az" | "azure" | "abfs" => Scheme::Azure,
            "file" => Scheme::File,
            other => return Err(bad(url, format!("unknown scheme {other}://"))),
        };
        if scheme == Scheme::File {
            if !rest.starts_with('/') {
                return Err(bad(url, "file:// needs an absolute path (file:///path)"));
            }
            return Ok(Self {
                url: url.to_owned(),
                scheme,
                bucket: String::new(),
                prefix: String::new(),
                backend: Backend::File { root: PathBuf::from(rest), store: Arc::new(OnceLock::new()) },
            });
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(url, "no bucket"));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        type Apis = (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>, Arc<dyn PaginatedListStore>);
        let (store, multipart, pages): Apis = match scheme {
            Scheme::S3 => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry());
                let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL"));
                if let Ok(endpoint) = endpoint.map(|e| e.trim().to_owned()) {
                    if !endpoint.is_empty() {
                        b = b.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
                    }
                }
                if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
                    b = b.with_region("us-east-1");
                } else if let Ok(r) = std::env::var("AWS_REGION") {
                    b = b.with_region(r);
                }
                let s = Arc::new(b.build()?);
                (s.clone(), s.clone(), s)
            }
            Scheme::Gcs => {
                let s = Arc::new(
                    GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket).with_retry(retry()).build()?,
                );
                (s.clone(), s.clone(), s)
            }
            Scheme::Azure => {
                let s = Arc::new(
                    MicrosoftAzureBuilder::from_env().with_container_name(bucket).with_retry(retry()).build()?,
                );
                (s.clone(), s.clone(), s)
            }
            Scheme::File => return Err(bad(url, "unreachable")),
        };
        Ok(Self {
            url: url.to_owned(),
            scheme,
            bucket: bucket.to_owned(),
            prefix,
            backend: Backend::Cloud { store, multipart, pages },
        })
    }

    /// The store, to read from. A `file://` directory that does not exist is an error (it is
    /// not created by reading).
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>, DeliveryError> {
        match &self.backend {
            Backend::Cloud { store, .. } => Ok(store.clone()),
            Backend::File { .. } => match self.local()? {
                Some(s) => Ok(s),
                None => Err(DeliveryError::Other("no local store".into())),
            },
        }
    }

    /// A `file://` target's store (`None` elsewhere), built once its directory exists.
    fn local(&self) -> Result<Option<Arc<LocalFileSystem>>, DeliveryError> {
        let Backend::File { root, store } = &self.backend else { return Ok(None) };
        if let Some(s) = store.get() {
            return Ok(Some(s.clone()));
        }
        std::fs::metadata(root).map_err(io("open the store", root))?;
        let s = Arc::new(LocalFileSystem::new_with_prefix(root)?);
        Ok(Some(store.get_or_init(|| s).clone()))
    }

    /// The store, to write `key` to: a `file://` directory, and the directories between it and
    /// the object, are created first, owner-only (existing ones keep their modes).
    pub(crate) fn store_for_write(&self, key: &ObjPath) -> Result<Arc<dyn ObjectStore>, DeliveryError> {
        if let Backend::File { root, .. } = &self.backend {
            private::create_dir_all(root).map_err(io("create", root))?;
            if let Some(parent) = self.local_path(key)?.as_deref().and_then(std::path::Path::parent) {
                private::create_dir_all(parent).map_err(io("create", parent))?;
            }
        }
        self.store()
    }

    /// Make the object `key`, once written, owner-only (`file://`; a no-op elsewhere).
    pub(crate) fn seal(&self, key: &ObjPath) -> Result<(), DeliveryError> {
        if let Some(path) = self.local_path(key)? {
            private::seal(&path).map_err(io("chmod", &path))?;
        }
        Ok(())
    }

    /// The file that holds `key` (`file://` only).
    fn local_path(&self, key: &ObjPath) -> Result<Option<PathBuf>, DeliveryError> {
        match self.local()? {
            Some(store) => Ok(Some(store.path_to_filesystem(key)?)),
            None => Ok(None),
        }
    }

    /// The resumable multipart API, where the store has one (not `file://`).
    pub(crate) fn multipart(&self) -> Option<Arc<dyn MultipartStore>> {
        match &self.backend {
            Backend::Cloud { multipart, .. } => Some(multipart.clone()),
            Backend::File { .. } => None,
        }
    }

    /// Listing in pages of a chosen size, in key order (S3, GCS, Azure; not `file://`).
    pub(crate) fn pages(&self) -> Option<Arc<dyn PaginatedListStore>> {
        match &self.backend {
            Backend::Cloud { pages, .. } => Some(pages.clone()),
            Backend::File { .. } => None,
        }
    }

    /// The same store, with `sub` (slash-separated) appended to the prefix.
    pub fn join(&self, sub: &str) -> Self {
        let sub = sub.trim_matches('/');
        let mut t = self.clone();
        if !sub.is_empty() {
            t.prefix = if t.prefix.is_empty() { sub.to_owned() } else { format!("{}/{sub}", t.prefix) };
            t.url = format!("{}/{sub}", self.url);
        }
        t
    }

    /// The object key of `rel` (slash-separated) under the prefix.
    pub fn key(&self, rel: &str) -> ObjPath {
        let rel = rel.trim_matches('/');
        if self.prefix.is_empty() {
            ObjPath::from(rel)
        } else if rel.is_empty() {
            ObjPath::from(self.prefix.as_str())
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// `key` relative to the prefix.
    pub(crate) fn relative<'a>(&self, key: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            key
        } else {
            key.strip_prefix(self.prefix.as_str()).map(|k| k.trim_start_matches('/')).unwrap_or(key)
        }
    }

    /// The URL of `rel` under this target.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{}", self.url, rel.trim_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("s3://bucket/a/b/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.scheme, t.bucket.as_str(), t.prefix.as_str()), (Scheme::S3, "bucket", "a/b"));
        assert_eq!(t.key("x/y").as_ref(), "a/b/x/y");
        assert_eq!(t.relative("a/b/x/y"), "x/y");
        assert!(Target::parse("ftp://x/y").is_err());
        assert!(Target::parse("s3:///y").is_err());
        assert!(Target::parse("file://relative").is_err());
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let t = Target::parse(&format!("file://{}/store", d.path().display())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.scheme, Scheme::File);
        // Parsing has no side effects: the directory is made when first written to.
        assert!(!d.path().join("store").exists());
        assert_eq!(t.join("sig/host").key("f").as_ref(), "sig/host/f");
    }
}
