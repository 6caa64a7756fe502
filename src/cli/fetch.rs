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
}

impl FetchArgs {
    pub fn run(self) -> ExitCode {
        let FetchArgs { uri, dest, file_name } = self;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime starts");
        match runtime.block_on(model_fetch::fetch(&uri, &dest, file_name.as_deref())) {
            Ok(_) => ExitCode::SUCCESS,
            Err(err) => {
                error!("fetch failed: {err}");
                ExitCode::FAILURE
            }
        }
    }
}
