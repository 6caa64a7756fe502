//! What a `modelURI` names: an HTTP(S) file, an object-store object or prefix, a path on a
//! PersistentVolumeClaim, or (for `model-operator fetch` run by hand) a local file. Shared by
//! validation, the builders and the fetcher so that all three read a URI the same way.

use std::fmt;

use percent_encoding::percent_decode_str;
use url::Url;

/// A parsed `modelURI`, with its optional `#sha256=<hex>` checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUri {
    pub source: ModelSource,
    pub sha256: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Http(Url),
    ObjectStore {
        store: ObjectStoreKind,
        bucket: String,
        /// Object key; ends with `/` when it names a prefix.
        key: String,
    },
    Pvc {
        claim: String,
        /// Path inside the claim, without a leading `/`; empty for the claim's root.
        path: String,
    },
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectStoreKind {
    S3,
    Gcs,
}

impl ObjectStoreKind {
    pub fn scheme(self) -> &'static str {
        match self {
            ObjectStoreKind::S3 => "s3",
            ObjectStoreKind::Gcs => "gs",
        }
    }
}

/// How the fetched artifact lands on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactShape {
    /// One file, kept under its own name.
    File { file_name: String },
    /// A directory tree: an unpacked archive, every object under a prefix, or a claim path.
    Directory,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("{0:?} is not a URI: {1}")]
    Malformed(String, String),
    #[error("scheme {0:?} is not supported; use http, https, s3, gs or pvc")]
    UnsupportedScheme(String),
    #[error("{0:?} names no bucket or claim")]
    MissingHost(String),
    #[error("{0:?} names no object: add a key after the bucket")]
    MissingKey(String),
    #[error("checksum fragment must be #sha256=<64 hex digits>, found {0:?}")]
    BadChecksum(String),
}

/// Where cluster pods may fetch from: everything but local files.
pub const CLUSTER_SCHEMES: [&str; 5] = ["http", "https", "s3", "gs", "pvc"];

impl ModelUri {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let (base, fragment) = match uri.split_once('#') {
            Some((base, fragment)) => (base, Some(fragment)),
            None => (uri, None),
        };
        let sha256 = fragment.map(parse_checksum).transpose()?;
        // Errors name the URI without its secrets: it reaches the status and the Events.
        let shown = redact_text(uri);
        let url = Url::parse(base).map_err(|e| UriError::Malformed(shown.clone(), e.to_string()))?;
        let host = url.host_str().unwrap_or("").to_owned();
        // The URL parser percent-encodes what a key may hold (spaces, non-ASCII); the store and
        // the claim know the key by its real characters.
        let path = percent_decode_str(url.path().trim_start_matches('/'))
            .decode_utf8()
            .map_err(|e| UriError::Malformed(shown.clone(), format!("the path is not UTF-8: {e}")))?
            .into_owned();
        let source = match url.scheme() {
            "http" | "https" => {
                if host.is_empty() {
                    return Err(UriError::MissingHost(shown.clone()));
                }
                ModelSource::Http(url)
            }
            scheme @ ("s3" | "gs") => {
                if host.is_empty() {
                    return Err(UriError::MissingHost(shown.clone()));
                }
                if path.is_empty() {
                    return Err(UriError::MissingKey(shown.clone()));
                }
                // A store's key has no query: a `?` in `s3://b/what?.pt` would end the key at
                // `what` and fetch another object, so it must be written %3F.
                if url.query().is_some() {
                    return Err(UriError::Malformed(
                        shown.clone(),
                        "an object key has no query: write a `?` in a key as %3F".into(),
                    ));
                }
                let store = if scheme == "s3" {
                    ObjectStoreKind::S3
                } else {
                    ObjectStoreKind::Gcs
                };
                ModelSource::ObjectStore {
                    store,
                    bucket: host,
                    key: path,
                }
            }
            "pvc" => {
                if host.is_empty() {
                    return Err(UriError::MissingHost(shown.clone()));
                }
                ModelSource::Pvc {
                    claim: host,
                    path: path.trim_end_matches('/').to_owned(),
                }
            }
            "file" => ModelSource::File(
                url.to_file_path()
                    .map_err(|()| UriError::Malformed(shown.clone(), "not a local path".into()))?,
            ),
            other => return Err(UriError::UnsupportedScheme(other.to_owned())),
        };
        Ok(Self { source, sha256 })
    }

    pub fn scheme(&self) -> &'static str {
        match &self.source {
            ModelSource::Http(url) if url.scheme() == "http" => "http",
            ModelSource::Http(_) => "https",
            ModelSource::ObjectStore { store, .. } => store.scheme(),
            ModelSource::Pvc { .. } => "pvc",
            ModelSource::File(_) => "file",
        }
    }

    /// Whether the artifact is one file or a tree once fetched.
    pub fn shape(&self) -> ArtifactShape {
        let last = match &self.source {
            ModelSource::Http(url) => url.path_segments().and_then(|mut s| s.next_back()).unwrap_or(""),
            ModelSource::ObjectStore { key, .. } if key.ends_with('/') => {
                return ArtifactShape::Directory;
            }
            ModelSource::ObjectStore { key, .. } => key.rsplit('/').next().unwrap_or(""),
            // A claim path is mounted as it is: a file when its name has an extension.
            ModelSource::Pvc { path, .. } => {
                let last = path.rsplit('/').next().unwrap_or("");
                return if last.contains('.') {
                    ArtifactShape::File {
                        file_name: last.to_owned(),
                    }
                } else {
                    ArtifactShape::Directory
                };
            }
            ModelSource::File(path) => path.file_name().and_then(|n| n.to_str()).unwrap_or(""),
        };
        if is_archive(last) {
            ArtifactShape::Directory
        } else if last.is_empty() {
            ArtifactShape::File {
                file_name: "model".to_owned(),
            }
        } else {
            ArtifactShape::File {
                file_name: last.to_owned(),
            }
        }
    }
}

/// A URI as it may be shown (status, Events, logs, the runtime's `MODEL_URI`): a password and
/// every query value (a presigned URL's signature and token) are replaced by `***`.
impl fmt::Display for ModelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            ModelSource::Http(url) => write!(f, "{}", redact_url(url)),
            ModelSource::ObjectStore { store, bucket, key } => {
                write!(f, "{}://{bucket}/{key}", store.scheme())
            }
            ModelSource::Pvc { claim, path } => write!(f, "pvc://{claim}/{path}"),
            ModelSource::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

impl ModelUri {
    /// Whether the URI itself carries secrets: a user's password, or a query (presigned URLs
    /// carry their signature there). Such a URI reaches only the fetcher.
    pub fn has_credentials(&self) -> bool {
        matches!(&self.source, ModelSource::Http(url) if url.password().is_some() || !url.username().is_empty() || url.query().is_some())
    }
}

fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    } else if !shown.username().is_empty() {
        // A user name alone is how tokens are written (`https://TOKEN@host/...`).
        let _ = shown.set_username("***");
    }
    if let Some(query) = url.query() {
        shown.set_query(Some(&redact_query(query)));
    }
    shown.to_string()
}

/// A query string with every value replaced by `***` (presigned URLs carry their signature
/// there); the keys stay, so the reader still sees what kind of URL it was.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) => format!("{key}=***"),
            None => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `text` with what looks like a password (`user:pass@`) or query values replaced by `***`,
/// for URIs that do not even parse.
pub fn redact_text(text: &str) -> String {
    let (text, query) = match text.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (text, None),
    };
    let mut shown = match text.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***@{host}"),
                    None => format!("***@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => text.to_owned(),
    };
    if let Some(query) = query {
        shown.push('?');
        shown.push_str(&redact_query(query));
    }
    shown
}

/// Tar archives are unpacked by the fetcher; everything else is stored as it is (a TorchServe
/// `.mar` is a zip that TorchServe opens itself).
pub fn is_archive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

fn parse_checksum(fragment: &str) -> Result<[u8; 32], UriError> {
    let bad = || UriError::BadChecksum(fragment.to_owned());
    let hex_digits = fragment.strip_prefix("sha256=").ok_or_else(bad)?;
    let bytes = hex::decode(hex_digits).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_file_keeps_its_name() {
        let uri = ModelUri::parse("https://dummy.com/dummy_model.pt").unwrap();
        assert_eq!(uri.scheme(), "https");
        assert_eq!(
            uri.shape(),
            ArtifactShape::File {
                file_name: "dummy_model.pt".into()
            }
        );
        assert_eq!(uri.sha256, None);
    }

    #[test]
    fn archives_and_prefixes_are_directories() {
        for uri in [
            "s3://models/resnet/",
            "gs://b/triton/resnet.tar.gz",
            "https://h/m.tgz",
            "pvc://models/resnet",
        ] {
            assert_eq!(ModelUri::parse(uri).unwrap().shape(), ArtifactShape::Directory, "{uri}");
        }
    }

    #[test]
    fn object_store_uri_splits_bucket_and_key() {
        let uri = ModelUri::parse("s3://bucket/path/to/model.mar").unwrap();
        assert_eq!(
            uri.source,
            ModelSource::ObjectStore {
                store: ObjectStoreKind::S3,
                bucket: "bucket".into(),
                key: "path/to/model.mar".into()
            }
        );
        assert_eq!(uri.to_string(), "s3://bucket/path/to/model.mar");
    }

    #[test]
    fn pvc_uri_names_claim_and_path() {
        let uri = ModelUri::parse("pvc://model-cache/llama/7b/").unwrap();
        assert_eq!(
            uri.source,
            ModelSource::Pvc {
                claim: "model-cache".into(),
                path: "llama/7b".into()
            }
        );
        assert_eq!(uri.shape(), ArtifactShape::Directory);
        let file = ModelUri::parse("pvc://model-cache/mars/bert.mar").unwrap();
        assert_eq!(
            file.shape(),
            ArtifactShape::File {
                file_name: "bert.mar".into()
            }
        );
    }

    #[test]
    fn checksum_fragment_is_decoded() {
        let digest = "a".repeat(64);
        let uri = ModelUri::parse(&format!("https://h/m.pt#sha256={digest}")).unwrap();
        assert_eq!(uri.sha256, Some([0xaa; 32]));
        assert_eq!(
            ModelUri::parse("https://h/m.pt#md5=00"),
            Err(UriError::BadChecksum("md5=00".into()))
        );
        assert_eq!(
            ModelUri::parse("https://h/m.pt#sha256=abc"),
            Err(UriError::BadChecksum("sha256=abc".into()))
        );
    }

    #[test]
    fn object_keys_are_read_by_their_real_characters() {
        let uri = ModelUri::parse("s3://models/my models/résumé v2.pt").unwrap();
        assert_eq!(
            uri.source,
            ModelSource::ObjectStore {
                store: ObjectStoreKind::S3,
                bucket: "models".into(),
                key: "my models/résumé v2.pt".into()
            }
        );
        let encoded = ModelUri::parse("gs://models/my%20models/r%C3%A9sum%C3%A9.pt").unwrap();
        assert!(matches!(encoded.source, ModelSource::ObjectStore { ref key, .. } if key == "my models/résumé.pt"));
        // The characters URI syntax reserves are written percent-encoded and read back.
        let reserved = ModelUri::parse("s3://models/take%20%232%3F%25.pt").unwrap();
        assert!(matches!(reserved.source, ModelSource::ObjectStore { ref key, .. } if key == "take #2?%.pt"));
        assert_eq!(
            reserved.shape(),
            ArtifactShape::File {
                file_name: "take #2?%.pt".into()
            }
        );
        for uri in ["s3://models/what?.pt", "gs://models/m.pt?generation=1"] {
            assert!(
                matches!(ModelUri::parse(uri), Err(UriError::Malformed(_, ref why)) if why.contains("%3F")),
                "{uri}"
            );
        }
    }

    #[test]
    fn credentials_in_a_uri_are_never_shown() {
        let basic = ModelUri::parse("https://deploy:s3cr3t@models.example.com/m.pt").unwrap();
        assert!(basic.has_credentials());
        assert_eq!(basic.to_string(), "https://deploy:***@models.example.com/m.pt");
        let presigned = ModelUri::parse(
            "https://bucket.s3.amazonaws.com/m.pt?X-Amz-Credential=AKIA%2F&X-Amz-Signature=abc123&X-Amz-Expires=600",
        )
        .unwrap();
        assert!(presigned.has_credentials());
        assert_eq!(
            presigned.to_string(),
            "https://bucket.s3.amazonaws.com/m.pt?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=***"
        );
        assert!(
            !ModelUri::parse("https://models.example.com/m.pt")
                .unwrap()
                .has_credentials()
        );
        let token = ModelUri::parse("https://ghp_t0ken@models.example.com/m.pt").unwrap();
        assert!(token.has_credentials());
        assert_eq!(token.to_string(), "https://***@models.example.com/m.pt");
        assert_eq!(
            redact_text("htp://user:pw@host/x?token=t"),
            "htp://user:***@host/x?token=***"
        );
        assert_eq!(redact_text("htp://t0ken@host/x"), "htp://***@host/x");
        let error = ModelUri::parse("ftp://user:pw@host/x").unwrap_err().to_string();
        assert!(!error.contains("pw"), "{error}");
    }

    #[test]
    fn unsupported_and_incomplete_uris_are_refused() {
        assert_eq!(
            ModelUri::parse("ftp://h/m.pt"),
            Err(UriError::UnsupportedScheme("ftp".into()))
        );
        assert_eq!(
            ModelUri::parse("s3://bucket"),
            Err(UriError::MissingKey("s3://bucket".into()))
        );
        assert!(matches!(ModelUri::parse("not a uri"), Err(UriError::Malformed(..))));
    }
}
