//! Byte streams from each kind of source.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{
    ObjectStore,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    gcp::{GoogleCloudStorageBuilder, GoogleConfigKey},
    path::Path as ObjectPath,
};
use tracing::{info, warn};

use super::{FetchError, Fetched};
use crate::vocabulary::{ModelSource, ModelUri, ObjectStoreKind};

type ByteStream = BoxStream<'static, Result<bytes::Bytes, FetchError>>;

/// Attempts for an HTTP download that fails before its body starts (connection refused, 5xx).
const HTTP_ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens a single-object source: the body stream and its length when known.
pub async fn open(uri: &ModelUri, gcs_service_account: Option<&Path>) -> Result<(ByteStream, Option<u64>), FetchError> {
    let shown = uri.to_string();
    match &uri.source {
        ModelSource::Http(url) => open_http(url.clone(), &shown).await,
        ModelSource::ObjectStore { store, bucket, key } => {
            let location = object_path(key, &shown)?;
            let store = object_store_for(*store, bucket, &shown, gcs_service_account)?;
            let result = store.get(&location).await.map_err(|e| store.error(&shown, e))?;
            let size = result.meta.size;
            let stream = result.into_stream().map_err(move |e| store_error(&shown, e));
            Ok((stream.boxed(), Some(size)))
        }
        ModelSource::File(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|source| match source.kind() {
                    std::io::ErrorKind::NotFound => FetchError::NotFound { uri: shown.clone() },
                    _ => FetchError::Io {
                        path: path.clone(),
                        source,
                    },
                })?;
            let size = file.metadata().await.ok().map(|m| m.len());
            let path = path.clone();
            let stream = tokio_util_stream(file).map_err(move |source| FetchError::Io {
                path: path.clone(),
                source,
            });
            Ok((stream.boxed(), size))
        }
        ModelSource::Pvc { .. } => Err(FetchError::PvcNotFetched),
    }
}

/// `shown` is the URL without its secrets, for messages; reqwest's own errors have the URL
/// taken out for the same reason.
async fn open_http(url: url::Url, shown: &str) -> Result<(ByteStream, Option<u64>), FetchError> {
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("model-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Transfer {
            uri: shown.to_owned(),
            message: e.without_url().to_string(),
        })?;
    let mut attempt = 1;
    let response = loop {
        let outcome = client.get(url.clone()).send().await;
        let retryable = match &outcome {
            Ok(response) => response.status().is_server_error(),
            Err(error) => error.is_connect() || error.is_timeout(),
        };
        if !retryable || attempt == HTTP_ATTEMPTS {
            break outcome;
        }
        warn!(url = %shown, attempt, "download failed, retrying");
        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        attempt += 1;
    };
    let response = response.map_err(|e| FetchError::Transfer {
        uri: shown.to_owned(),
        message: e.without_url().to_string(),
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::HttpStatus {
            url: shown.to_owned(),
            status,
        });
    }
    let total = response.content_length();
    let shown = shown.to_owned();
    let stream = response.bytes_stream().map_err(move |e| FetchError::Transfer {
        uri: shown.clone(),
        message: e.without_url().to_string(),
    });
    Ok((stream.boxed(), total))
}

/// The object-store key as object_store names it. `Path::from` would percent-encode what it
/// thinks a key should not hold (every non-ASCII byte, `%`, `#`, `~`, `[`, ...) into the key
/// itself, asking the store for another object; `Path::parse` keeps the key's characters and
/// refuses only what no `Path` can name.
fn object_path(key: &str, shown: &str) -> Result<ObjectPath, FetchError> {
    ObjectPath::parse(key).map_err(|_| FetchError::UnsafeKey {
        uri: shown.to_owned(),
        key: key.to_owned(),
        why: "object_store cannot name a key with an empty, `.` or `..` segment or a control character",
    })
}

/// A store, and where its credentials come from when none are configured: the cloud's metadata
/// service, whose failure is reported as missing credentials.
struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Set when the fetch has no credentials of its own; then a failed request to the metadata
    /// service means there are none at all.
    implicit_credentials: Option<ImplicitCredentials>,
}

struct ImplicitCredentials {
    /// What object_store's requests to the metadata service have in their URLs (and so in their
    /// errors), and no store request has.
    requests: &'static [&'static str],
    /// What the fetch would need instead.
    wanted: &'static str,
}

impl std::ops::Deref for Store {
    type Target = dyn ObjectStore;

    fn deref(&self) -> &Self::Target {
        self.inner.as_ref()
    }
}

impl Store {
    fn error(&self, uri: &str, error: object_store::Error) -> FetchError {
        if let Some(implicit) = &self.implicit_credentials
            && !matches!(error, object_store::Error::NotFound { .. })
            && implicit
                .requests
                .iter()
                .any(|request| error.to_string().contains(request))
        {
            return FetchError::NoCredentials {
                uri: uri.to_owned(),
                wanted: implicit.wanted,
                source: error,
            };
        }
        store_error(uri, error)
    }
}

/// Credentials and endpoints come from the environment the way each cloud's tools read them
/// (`AWS_*`, `GOOGLE_*`), so the pod's env configures the fetcher.
fn object_store_for(
    kind: ObjectStoreKind,
    bucket: &str,
    shown: &str,
    gcs_service_account: Option<&Path>,
) -> Result<Store, FetchError> {
    let (built, implicit_credentials): (Result<Arc<dyn ObjectStore>, object_store::Error>, _) = match kind {
        ObjectStoreKind::S3 => {
            let builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            // object_store's order: static keys, a web identity, the container (ECS, EKS pod
            // identity) endpoints, and last the EC2 instance metadata service.
            let configured = [
                AmazonS3ConfigKey::AccessKeyId,
                AmazonS3ConfigKey::SecretAccessKey,
                AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
                AmazonS3ConfigKey::ContainerCredentialsFullUri,
            ]
            .iter()
            .any(|key| builder.get_config_value(key).is_some())
                || std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some();
            let implicit = (!configured).then_some(ImplicitCredentials {
                requests: &["/latest/api/token", "/latest/meta-data/iam/security-credentials"],
                wanted: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set (a modelCredentials \
                         Secret with those keys gives them to the fetch as env)",
            });
            (builder.build().map(|s| Arc::new(s) as _), implicit)
        }
        ObjectStoreKind::Gcs => {
            let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            let configured = gcs_service_account.is_some()
                || [
                    GoogleConfigKey::ServiceAccount,
                    GoogleConfigKey::ServiceAccountKey,
                    GoogleConfigKey::ApplicationCredentials,
                ]
                .iter()
                .any(|key| builder.get_config_value(key).is_some())
                || gcloud_default_credentials().is_some_and(|path| path.is_file());
            if let Some(path) = gcs_service_account {
                builder = builder.with_service_account_path(path.to_string_lossy());
            }
            let implicit = (!configured).then_some(ImplicitCredentials {
                requests: &["/computeMetadata/v1/instance/service-accounts/default/token"],
                wanted: "there is no service account (a modelCredentials Secret with a \
                         `service-account.json` key gives one)",
            });
            (builder.build().map(|s| Arc::new(s) as _), implicit)
        }
    };
    Ok(Store {
        inner: built.map_err(|e| store_error(shown, e))?,
        implicit_credentials,
    })
}

/// Where gcloud keeps application default credentials, which object_store reads when nothing
/// else is configured.
fn gcloud_default_credentials() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/gcloud/application_default_credentials.json"))
}

fn store_error(uri: &str, error: object_store::Error) -> FetchError {
    match error {
        object_store::Error::NotFound { .. } => FetchError::NotFound { uri: uri.to_owned() },
        source => FetchError::ObjectStore {
            uri: uri.to_owned(),
            source,
        },
    }
}

/// Every object under an object-store prefix, written under `dest` by relative key.
pub async fn fetch_prefix(
    uri: &ModelUri,
    dest: &Path,
    size_limit: Option<u64>,
    gcs_service_account: Option<&Path>,
) -> Result<Fetched, FetchError> {
    let ModelSource::ObjectStore { store, bucket, key } = &uri.source else {
        unreachable!("fetch_prefix is only called for object-store prefixes");
    };
    let shown = uri.to_string();
    let prefix = object_path(key.trim_end_matches('/'), &shown)?;
    let store = object_store_for(*store, bucket, &shown, gcs_service_account)?;
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| store.error(&shown, e))?;
    if objects.is_empty() {
        return Err(FetchError::NotFound { uri: shown });
    }
    let listed: u64 = objects.iter().map(|o| o.size).sum();
    if let Some(limit) = size_limit
        && listed > limit
    {
        return Err(FetchError::TooLarge { uri: shown, limit });
    }
    let mut bytes = 0;
    for object in &objects {
        let relative: Vec<_> = object
            .location
            .prefix_match(&prefix)
            .into_iter()
            .flatten()
            .map(|p| p.as_ref().to_owned())
            .collect();
        // A key is any string: one that climbs out of the prefix (`a/../../x`) is refused.
        if relative.is_empty()
            || relative
                .iter()
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(FetchError::UnsafeKey {
                uri: shown.clone(),
                key: object.location.to_string(),
                why: "its path leaves the prefix",
            });
        }
        let target = relative.iter().fold(dest.to_path_buf(), |path, part| path.join(part));
        let partial = target.with_file_name(format!(
            ".{}.partial",
            relative.last().map(String::as_str).unwrap_or("object")
        ));
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(FetchError::io(parent))?;
        }
        let object_uri = format!("{shown}{}", relative.join("/"));
        let result = store
            .get(&object.location)
            .await
            .map_err(|e| store.error(&object_uri, e))?;
        let stream = result.into_stream().map_err({
            let object_uri = object_uri.clone();
            move |e| store_error(&object_uri, e)
        });
        let no_checksum = ModelUri {
            source: uri.source.clone(),
            sha256: None,
        };
        let room = size_limit.map(|limit| limit.saturating_sub(bytes));
        match super::write_verified(
            stream.boxed(),
            Some(object.size),
            &partial,
            &no_checksum,
            &object_uri,
            room,
        )
        .await
        {
            Ok(written) => bytes += written,
            Err(error) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(error);
            }
        }
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(FetchError::io(&target))?;
        info!(object = %object_uri, bytes = object.size, "fetched object");
    }
    Ok(Fetched {
        path: dest.to_owned(),
        bytes,
        files: objects.len(),
    })
}

/// A local directory, copied as a tree (for running the fetcher by hand).
pub async fn copy_local_tree(source: &Path, dest: &Path) -> Result<Fetched, FetchError> {
    let (source, dest) = (source.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut fetched = Fetched {
            path: dest.clone(),
            bytes: 0,
            files: 0,
        };
        let mut pending = vec![source.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).map_err(FetchError::io(&dir))? {
                let entry = entry.map_err(FetchError::io(&dir))?;
                let path = entry.path();
                let target = dest.join(path.strip_prefix(&source).expect("walked below the source"));
                if entry.file_type().map_err(FetchError::io(&path))?.is_dir() {
                    std::fs::create_dir_all(&target).map_err(FetchError::io(&target))?;
                    pending.push(path);
                } else {
                    fetched.bytes += std::fs::copy(&path, &target).map_err(FetchError::io(&target))?;
                    fetched.files += 1;
                }
            }
        }
        Ok(fetched)
    })
    .await
    .expect("copy task does not panic")
}

/// Reads a file as a stream of chunks.
fn tokio_util_stream(file: tokio::fs::File) -> impl Stream<Item = std::io::Result<bytes::Bytes>> {
    use tokio::io::AsyncReadExt;
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buffer = vec![0; 1 << 16];
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.truncate(read);
        Ok(Some((bytes::Bytes::from(buffer), file)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_by_their_own_characters() {
        for key in [
            "my models/résumé v2.pt",
            "v1~final [best].pt",
            "take#2.pt",
            "100%/model.pt",
        ] {
            assert_eq!(object_path(key, "s3://b/k").unwrap().as_ref(), key);
        }
        // What `Path::from` would have asked the store for instead.
        assert_eq!(ObjectPath::from("résumé~.pt").as_ref(), "r%C3%A9sum%C3%A9%7E.pt");
    }

    #[test]
    fn keys_no_path_can_name_are_refused() {
        for key in ["a//b.pt", "a/../b.pt", "./b.pt", "a/\u{7}.pt"] {
            let error = object_path(key, "s3://b/k").unwrap_err();
            assert!(matches!(error, FetchError::UnsafeKey { .. }), "{key:?}: {error}");
        }
    }
}
