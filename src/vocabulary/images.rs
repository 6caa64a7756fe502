//! The images the operator supplies itself, set by flags on `run` and `render`.

/// Images the operator supplies itself (runtime images of third parties are pinned in their
/// runtime modules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorImages {
    /// The operator's own image; its `fetch` subcommand is the model-fetch init container.
    pub fetcher: String,
    /// The fastapi-pytorch runtime built from `inference/`.
    pub fastapi_pytorch: String,
}

/// The tag published images carry: the crate version, never `latest`.
pub const IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");
pub const DEFAULT_FETCHER_IMAGE: &str = concat!("ghcr.io/sathvik/model-operator:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_FASTAPI_IMAGE: &str = concat!("ghcr.io/sathvik/fastapi-pytorch:", env!("CARGO_PKG_VERSION"));

impl Default for OperatorImages {
    fn default() -> Self {
        Self {
            fetcher: DEFAULT_FETCHER_IMAGE.to_owned(),
            fastapi_pytorch: DEFAULT_FASTAPI_IMAGE.to_owned(),
        }
    }
}
