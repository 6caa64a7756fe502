//! `model-operator probe`: one model-readiness probe from the command line, the same one the
//! operator runs per ready pod. Exit status: 0 ready, 1 not ready, 2 bad usage or another error.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::{
    api::{ModelInfo, Runtime, TensorInfo},
    model_readiness::{ProbeOutcome, ProbeSettings, ProbeTarget, Prober},
    vocabulary::parse_endpoint,
};

/// Exit status when the model is not ready.
const EXIT_NOT_READY: u8 = 1;
/// Exit status for usage errors and failures to probe at all (clap uses it too).
const EXIT_ERROR: u8 = 2;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The runtime serving the model.
    #[arg(long, env = "PROBE_RUNTIME", value_enum)]
    pub runtime: RuntimeArg,
    /// HOST:PORT of the runtime's probe port: Triton gRPC (8001), TorchServe management (8081),
    /// fastapi-pytorch HTTP (8000).
    #[arg(long, env = "PROBE_ENDPOINT", value_parser = parse_endpoint)]
    pub endpoint: String,
    /// The model's name inside the runtime.
    #[arg(long, env = "PROBE_MODEL")]
    pub model: String,
    /// The ModelDeployment's version. Triton gets it only when it is a number; TorchServe uses
    /// the registered version of that name if there is one, else its default version.
    #[arg(long = "model-version", env = "PROBE_MODEL_VERSION")]
    pub model_version: Option<String>,
    /// The longest the probe may take, e.g. 500ms, 2s, 1m.
    #[arg(long, env = "PROBE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// TorchServe management key, when its token auth is on.
    #[arg(
        long,
        env = "TORCHSERVE_TOKEN",
        conflicts_with = "token_file",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File holding the TorchServe management key: TorchServe's own key_file.json, or the key.
    #[arg(long, env = "TORCHSERVE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ProbeOutput::Text)]
    pub output: ProbeOutput,
}

/// The `runtime` values of a ModelDeployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    Triton,
    Torchserve,
    FastapiPytorch,
}

impl From<RuntimeArg> for Runtime {
    fn from(arg: RuntimeArg) -> Self {
        match arg {
            RuntimeArg::Triton => Runtime::Triton,
            RuntimeArg::Torchserve => Runtime::Torchserve,
            RuntimeArg::FastapiPytorch => Runtime::FastapiPytorch,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeOutput {
    Text,
    Json,
}

/// What `-o json` prints: the target, then the outcome's fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub runtime: Runtime,
    pub endpoint: String,
    pub model_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(flatten)]
    pub outcome: ProbeOutcome,
    pub elapsed_ms: u128,
}

impl ProbeArgs {
    pub fn run(self) -> ExitCode {
        let ProbeArgs {
            runtime,
            endpoint,
            model,
            model_version,
            timeout,
            token,
            token_file,
            output,
        } = self;
        let token = match token_file {
            Some(path) => match read_token_file(&path) {
                Ok(token) => Some(token),
                Err(problem) => return usage_error(&problem.to_string()),
            },
            None => token,
        };
        let settings = ProbeSettings {
            timeout,
            torchserve_token: token,
            max_concurrent: 1,
        };
        let prober = match Prober::new(settings) {
            Ok(prober) => prober,
            Err(err) => return usage_error(&err.to_string()),
        };
        let target = ProbeTarget {
            runtime: runtime.into(),
            endpoint,
            model_name: model,
            version: model_version,
        };
        let tokio_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime starts");
        let started = Instant::now();
        let outcome = tokio_runtime.block_on(prober.probe(&target));
        let ready = outcome.ready;
        let ProbeTarget {
            runtime,
            endpoint,
            model_name,
            version,
        } = target;
        let report = ProbeReport {
            runtime,
            endpoint,
            model_name,
            version,
            outcome,
            elapsed_ms: started.elapsed().as_millis(),
        };
        match output {
            ProbeOutput::Text => print!("{}", format_text(&report)),
            ProbeOutput::Json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a probe report serializes")
                )
            }
        }
        if ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_NOT_READY)
        }
    }
}

fn usage_error(problem: &str) -> ExitCode {
    eprintln!("model-operator probe: {problem}");
    ExitCode::from(EXIT_ERROR)
}

/// Why `--token-file` gives no key.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("--token-file {path}: {source}")]
    Unreadable { path: String, source: std::io::Error },
    #[error("--token-file {path}: JSON without a management.key entry")]
    NoManagementKey { path: String },
    #[error("--token-file {path} is empty")]
    Empty { path: String },
}

/// Reads a TorchServe key: its `key_file.json` (the `management.key` entry), or a file that
/// holds only the key.
fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Unreadable { path: shown(), source })?;
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
        return json
            .pointer("/management/key")
            .and_then(|key| key.as_str())
            .map(str::to_owned)
            .ok_or_else(|| TokenFileError::NoManagementKey { path: shown() });
    }
    let key = text.trim();
    if key.is_empty() {
        return Err(TokenFileError::Empty { path: shown() });
    }
    Ok(key.to_owned())
}

pub fn format_text(report: &ProbeReport) -> String {
    let ProbeReport {
        runtime,
        endpoint,
        model_name,
        version,
        outcome,
        elapsed_ms,
    } = report;
    let state = if outcome.ready { "ready" } else { "not ready" };
    let version = version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default();
    let mut text = format!(
        "{state}: model {model_name:?}{version} on {runtime} at {endpoint} ({elapsed_ms} ms)\n\
         reason:   {}\nmessage:  {}\n",
        outcome.reason, outcome.message
    );
    if let Some(ModelInfo {
        name: _,
        platform,
        versions,
        inputs,
        outputs,
    }) = &outcome.model
    {
        if let Some(platform) = platform {
            text.push_str(&format!("platform: {platform}\n"));
        }
        if !versions.is_empty() {
            text.push_str(&format!("versions: {}\n", versions.join(", ")));
        }
        for (label, tensors) in [("input", inputs), ("output", outputs)] {
            for TensorInfo { name, datatype, shape } in tensors {
                text.push_str(&format!("{label:<9} {name} {datatype} {shape:?}\n"));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::reasons;

    #[test]
    fn text_shows_state_reason_and_tensors() {
        let report = ProbeReport {
            runtime: Runtime::Triton,
            endpoint: "127.0.0.1:8001".into(),
            model_name: "adder".into(),
            version: Some("1".into()),
            outcome: ProbeOutcome::ready(
                "Triton reports model \"adder\" version 1 ready",
                Some(ModelInfo {
                    name: "adder".into(),
                    platform: Some("python".into()),
                    versions: vec!["1".into()],
                    inputs: vec![TensorInfo {
                        name: "INPUT0".into(),
                        datatype: "FP32".into(),
                        shape: vec![-1, 4],
                    }],
                    outputs: Vec::new(),
                }),
            ),
            elapsed_ms: 3,
        };
        assert_eq!(
            format_text(&report),
            "ready: model \"adder\" version 1 on triton at 127.0.0.1:8001 (3 ms)\n\
             reason:   ModelLoaded\n\
             message:  Triton reports model \"adder\" version 1 ready\n\
             platform: python\n\
             versions: 1\n\
             input     INPUT0 FP32 [-1, 4]\n"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["modelName"], "adder");
        assert_eq!(json["reason"], reasons::MODEL_LOADED);
        assert_eq!(json["model"]["inputs"][0]["shape"], serde_json::json!([-1, 4]));
    }

    #[test]
    fn token_files_are_torchserve_key_files_or_bare_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key_file.json");
        std::fs::write(
            &key_file,
            r#"{"management": {"key": "m-key", "expiration time": "x"}, "inference": {"key": "i-key"}}"#,
        )
        .unwrap();
        assert_eq!(read_token_file(&key_file).unwrap(), "m-key");
        let bare = dir.path().join("token");
        std::fs::write(&bare, "abc123\n").unwrap();
        assert_eq!(read_token_file(&bare).unwrap(), "abc123");
        std::fs::write(&bare, "\n").unwrap();
        assert!(read_token_file(&bare).unwrap_err().to_string().ends_with("is empty"));
        std::fs::write(&bare, "{\"inference\": {}}").unwrap();
        assert!(
            read_token_file(&bare)
                .unwrap_err()
                .to_string()
                .contains("management.key")
        );
        assert!(
            read_token_file(&dir.path().join("absent"))
                .unwrap_err()
                .to_string()
                .starts_with("--token-file")
        );
    }
}
