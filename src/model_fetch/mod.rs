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

use crate::vocabulary::{ArtifactShape, ModelSource, ModelUri, UriError};

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

/// Fetches `uri` into `dest` (created if missing). A single file keeps its name unless
/// `file_name` gives one; archives and prefixes are written as a tree under `dest`.
pub async fn fetch(uri: &str, dest: &Path, file_name: Option<&str>) -> Result<Fetched, FetchError> {
    let parsed = ModelUri::parse(uri)?;
    if matches!(parsed.source, ModelSource::Pvc { .. }) {
        return Err(FetchError::PvcNotFetched);
    }
    tokio::fs::create_dir_all(dest).await.map_err(FetchError::io(dest))?;
    let shown = parsed.to_string();
    info!(uri = %shown, dest = %dest.display(), "fetching model");

    if let ModelSource::ObjectStore { key, .. } = &parsed.source
        && key.ends_with('/')
    {
        if parsed.sha256.is_some() {
            return Err(FetchError::ChecksumOnPrefix { uri: shown });
        }
        return sources::fetch_prefix(&parsed, dest).await;
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
        let (stream, total) = sources::open(&parsed).await?;
        write_verified(stream, total, &partial, &parsed, &shown).await
    };
    let bytes = match download.await {
        Ok(bytes) => bytes,
        Err(error) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error);
        }
    };

    let result = if shape == ArtifactShape::Directory && file_name.is_none() {
        let files = archive::unpack_into(&partial, dest).await;
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

/// Streams the body into `partial`, hashing as it goes, logging progress every few seconds.
async fn write_verified(
    mut stream: impl Stream<Item = Result<bytes::Bytes, FetchError>> + Unpin,
    total: Option<u64>,
    partial: &Path,
    parsed: &ModelUri,
    shown: &str,
) -> Result<u64, FetchError> {
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
