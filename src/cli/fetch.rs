//! `model-operator fetch --uri URI --dest DIR`: the model-fetch init container.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use tracing::error;

use crate::model_fetch;

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Model URI: http(s)://, s3://, gs:// or file://, with an optional #sha256=<hex> suffix.
    #[arg(long, env = "MODEL_URI")]
    pub uri: String,
    /// Directory the model is written into (created if missing).
    #[arg(long, env = "MODEL_DEST")]
    pub dest: PathBuf,
    /// Store a single-file model under this name instead of its own.
    #[arg(long)]
    pub file_name: Option<String>,
    /// Write at most this many bytes (the model volume's size limit): a larger download, prefix
    /// or unpacked archive fails instead of filling the node's disk.
    #[arg(long, env = "MODEL_SIZE_LIMIT")]
    pub size_limit: Option<u64>,
    /// The mounted credentials Secret: a `uri` key is the URI to download (the same object as
    /// --uri, with credentials), a `service-account.json` key the GCS service account.
    #[arg(long, env = "MODEL_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
}

impl FetchArgs {
    pub fn run(self) -> ExitCode {
        let FetchArgs {
            uri,
            dest,
            file_name,
            size_limit,
            credentials_dir,
        } = self;
        let options = model_fetch::FetchOptions {
            file_name,
            size_limit,
            credentials_dir,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime starts");
        match runtime.block_on(model_fetch::fetch(&uri, &dest, options)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(err) => {
                error!("fetch failed: {err}");
                ExitCode::FAILURE
            }
        }
    }
}
