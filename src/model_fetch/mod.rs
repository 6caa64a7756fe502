//! `model-operator fetch`: the model-fetch init container's job. Downloads `modelURI` into a
//! directory (HTTP(S) with reqwest; S3 and GCS with `object_store`; local files for use by
//! hand), verifies an optional `#sha256=` checksum, unpacks tar archives, and never leaves a
//! partial download under a name that looks complete: bytes go to a dot-prefixed `.partial`
//! file that is renamed only once whole and verified.

mod archive;
mod sources;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::info;

use crate::vocabulary::{ArtifactShape, ModelSource, ModelUri, UriError, redact_text};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Uri(#[from] UriError),
    #[error("pvc:// models are mounted into the pod, not fetched")]
    PvcNotFetched,
    #[error("GET {url} answered {status}")]
    HttpStatus { url: String, status: reqwest::StatusCode },
    #[error("downloading {uri}: {message}")]
    Transfer { uri: String, message: String },
    #[error("{uri} was not found")]
    NotFound { uri: String },
    #[error("object store {uri}: {source}")]
    ObjectStore { uri: String, source: object_store::Error },
    #[error("no credentials for {uri}: {wanted}, and the instance metadata service gave none: {source}")]
    NoCredentials {
        uri: String,
        wanted: &'static str,
        source: object_store::Error,
    },
    #[error("checksum mismatch for {uri}: expected sha256 {expected}, downloaded {actual}")]
    ChecksumMismatch {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("a #sha256= checksum names one file, but {uri} is a prefix of many")]
    ChecksumOnPrefix { uri: String },
    #[error("unpacking {file}: {source}")]
    Unpack { file: String, source: std::io::Error },
    #[error("refusing archive {file}: entry {entry:?}: {why}")]
    UnsafeArchive {
        file: String,
        entry: String,
        why: &'static str,
    },
    #[error("refusing object {key:?} of {uri}: {why}")]
    UnsafeKey {
        uri: String,
        key: String,
        why: &'static str,
    },
    #[error("{key} names another object than modelURI {spec}: it must be the same URL with credentials")]
    CredentialsUriMismatch { key: String, spec: String },
    #[error("{uri} holds more than the model volume's {limit} bytes (--size-limit)")]
    TooLarge { uri: String, limit: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl FetchError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| FetchError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What `fetch` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The model file, or `dest` itself for a tree.
    pub path: PathBuf,
    pub bytes: u64,
    pub files: usize,
}

/// How one fetch is made, besides what is fetched and where to.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Store a single-file model under this name instead of its own.
    pub file_name: Option<String>,
    /// Write at most this many bytes, downloaded or unpacked (the model volume's limit).
    pub size_limit: Option<u64>,
    /// The mounted `modelCredentials` Secret: its `uri` is the URI to download in place of the
    /// spec's (which names the same object without credentials), its `service-account.json`
    /// the GCS service account.
    pub credentials_dir: Option<PathBuf>,
}

/// The credentials Secret's key holding the URI to download.
pub const CREDENTIALS_URI_KEY: &str = "uri";
/// The credentials Secret's key holding a GCS service account.
pub const GCS_SERVICE_ACCOUNT_KEY: &str = "service-account.json";

/// Fetches `uri` into `dest` (created if missing). A single file keeps its name unless
/// `file_name` gives one; archives and prefixes are written as a tree under `dest`. No more than
/// `size_limit` bytes are written (the model volume's limit), downloaded or unpacked.
pub async fn fetch(uri: &str, dest: &Path, options: FetchOptions) -> Result<Fetched, FetchError> {
    let FetchOptions {
        file_name,
        size_limit,
        credentials_dir,
    } = options;
    let file_name = file_name.as_deref();
    let uri = uri_to_download(uri, credentials_dir.as_deref())?;
    let gcs_service_account = credentials_dir
        .as_deref()
        .map(|dir| dir.join(GCS_SERVICE_ACCOUNT_KEY))
        .filter(|path| path.is_file());
    let parsed = ModelUri::parse(&uri)?;
    if matches!(parsed.source, ModelSource::Pvc { .. }) {
        return Err(FetchError::PvcNotFetched);
    }
    tokio::fs::create_dir_all(dest).await.map_err(FetchError::io(dest))?;
    remove_leftovers(dest).await?;
    let shown = parsed.to_string();
    info!(uri = %shown, dest = %dest.display(), "fetching model");

    if let ModelSource::ObjectStore { key, .. } = &parsed.source
        && key.ends_with('/')
    {
        if parsed.sha256.is_some() {
            return Err(FetchError::ChecksumOnPrefix { uri: shown });
        }
        return sources::fetch_prefix(&parsed, dest, size_limit, gcs_service_account.as_deref()).await;
    }
    if let ModelSource::File(path) = &parsed.source
        && path.is_dir()
    {
        return sources::copy_local_tree(path, dest).await;
    }

    let shape = parsed.shape();
    let stored_name = match (&shape, file_name) {
        (_, Some(name)) => name.to_owned(),
        (ArtifactShape::File { file_name }, None) => file_name.clone(),
        (ArtifactShape::Directory, None) => "archive".to_owned(),
    };
    let partial = dest.join(format!(".{stored_name}.partial"));
    let download = async {
        let (stream, total) = sources::open(&parsed, gcs_service_account.as_deref()).await?;
        write_verified(stream, total, &partial, &parsed, &shown, size_limit).await
    };
    let bytes = match download.await {
        Ok(bytes) => bytes,
        Err(error) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error);
        }
    };

    let result = if shape == ArtifactShape::Directory && file_name.is_none() {
        let files = archive::unpack_into(&partial, dest, size_limit).await;
        let _ = tokio::fs::remove_file(&partial).await;
        Fetched {
            path: dest.to_owned(),
            bytes,
            files: files?,
        }
    } else {
        let target = dest.join(&stored_name);
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(FetchError::io(&target))?;
        Fetched {
            path: target,
            bytes,
            files: 1,
        }
    };
    info!(uri = %shown, path = %result.path.display(), bytes = result.bytes, files = result.files, "model fetched");
    Ok(result)
}

/// The URI to download: the credentials Secret's `uri` when it has one, else `spec_uri`. The
/// Secret's must name the object `spec_uri` names (same scheme, host and path, credentials and
/// query aside), so the status never describes one model while another is served.
pub fn uri_to_download(spec_uri: &str, credentials_dir: Option<&Path>) -> Result<String, FetchError> {
    let Some(path) = credentials_dir
        .map(|dir| dir.join(CREDENTIALS_URI_KEY))
        .filter(|path| path.is_file())
    else {
        return Ok(spec_uri.to_owned());
    };
    let secret_uri = std::fs::read_to_string(&path)
        .map_err(FetchError::io(&path))?
        .trim()
        .to_owned();
    let (spec_base, fragment) = match spec_uri.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (spec_uri, None),
    };
    // What each URI names, credentials and query aside: for object stores the bucket and the
    // key by its real characters, so `my models/résumé.pt` and `my%20models/r%C3%A9sum%C3%A9.pt`
    // are one object.
    let object = |text: &str| {
        let mut url = url::Url::parse(text).ok()?;
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
        ModelUri::parse(url.as_str()).ok().map(|uri| uri.source)
    };
    if object(&secret_uri).is_none() || object(&secret_uri) != object(spec_base) {
        return Err(FetchError::CredentialsUriMismatch {
            key: path.display().to_string(),
            spec: ModelUri::parse(spec_uri)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| redact_text(spec_uri)),
        });
    }
    // The spec's checksum still applies.
    Ok(match fragment {
        Some(fragment) => format!("{secret_uri}#{fragment}"),
        None => secret_uri,
    })
}

/// Removes what an interrupted fetch (an init container OOM-killed, say) left in `dest`: dot-
/// prefixed partial downloads and unpack staging directories. Neither is ever a model.
async fn remove_leftovers(dest: &Path) -> Result<(), FetchError> {
    let mut entries = tokio::fs::read_dir(dest).await.map_err(FetchError::io(dest))?;
    while let Some(entry) = entries.next_entry().await.map_err(FetchError::io(dest))? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let kind = entry.file_type().await.map_err(FetchError::io(&path))?;
        if kind.is_dir() && name.starts_with(archive::STAGING_PREFIX) {
            tokio::fs::remove_dir_all(&path).await.map_err(FetchError::io(&path))?;
            info!(path = %path.display(), "removed an interrupted unpack");
        } else if kind.is_file() && name.starts_with('.') && name.ends_with(".partial") {
            tokio::fs::remove_file(&path).await.map_err(FetchError::io(&path))?;
            info!(path = %path.display(), "removed an interrupted download");
        }
    }
    Ok(())
}

/// Streams the body into `partial`, hashing as it goes, logging progress every few seconds;
/// stops with an error once more than `size_limit` bytes came.
async fn write_verified(
    mut stream: impl Stream<Item = Result<bytes::Bytes, FetchError>> + Unpin,
    total: Option<u64>,
    partial: &Path,
    parsed: &ModelUri,
    shown: &str,
    size_limit: Option<u64>,
) -> Result<u64, FetchError> {
    if let (Some(total), Some(limit)) = (total, size_limit)
        && total > limit
    {
        return Err(FetchError::TooLarge {
            uri: shown.to_owned(),
            limit,
        });
    }
    let mut file = tokio::fs::File::create(partial)
        .await
        .map_err(FetchError::io(partial))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut last_report = Instant::now();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(FetchError::io(partial))?;
        written += chunk.len() as u64;
        if let Some(limit) = size_limit
            && written > limit
        {
            return Err(FetchError::TooLarge {
                uri: shown.to_owned(),
                limit,
            });
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            match total {
                Some(total) if total > 0 => {
                    info!(uri = %shown, bytes = written, total, percent = written * 100 / total, "downloading")
                }
                _ => info!(uri = %shown, bytes = written, "downloading"),
            }
        }
    }
    if let Some(total) = total
        && written != total
    {
        return Err(FetchError::Transfer {
            uri: shown.to_owned(),
            message: format!("connection ended after {written} of {total} bytes"),
        });
    }
    file.sync_all().await.map_err(FetchError::io(partial))?;
    if let Some(expected) = parsed.sha256 {
        let actual: [u8; 32] = hasher.finalize().into();
        if actual != expected {
            return Err(FetchError::ChecksumMismatch {
                uri: shown.to_owned(),
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
    }
    Ok(written)
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);
