//! TorchServe's model probe, over the management API (8081).
//!
//! `GET /models/{name}/all` lists every registered version with its workers. The model is ready
//! when the chosen version has at least `minWorkers` workers in state `READY` (TorchServe marks a
//! worker READY only once its handler has loaded the model) and never with none at all: a model
//! registered with `minWorkers` 0 has no process to answer a request, so it needs one READY
//! worker like any other. A 404 means the model is not registered. `/ping` on the inference port
//! is no substitute: it stays Healthy when a model failed to register.

use reqwest::StatusCode;
use serde::Deserialize;

use super::{ModelProbe, ProbeOutcome, ProbeTarget, http};
use crate::api::{ModelInfo, conditions::reasons};

pub struct TorchserveProbe {
    http: reqwest::Client,
    /// The management key, sent as `Authorization: Bearer`, when TorchServe's token auth is on.
    token: Option<String>,
}

/// One element of `GET /models/{name}[/version]`: one registered version.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelDescription {
    model_version: String,
    #[serde(default)]
    min_workers: u32,
    #[serde(default)]
    workers: Vec<Worker>,
    #[serde(default)]
    runtime: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Worker {
    status: String,
}

/// TorchServe's worker state once the handler has loaded the model; anything else (its code
/// says `UNLOADING` for a worker still starting) cannot take requests.
const WORKER_READY: &str = "READY";

impl TorchserveProbe {
    pub fn new(http: reqwest::Client, token: Option<String>) -> Self {
        Self { http, token }
    }

    /// GETs a management path and returns the parsed versions, or the outcome that ends the probe.
    async fn describe(&self, target: &ProbeTarget, path: &[&str]) -> Result<Vec<ModelDescription>, ProbeOutcome> {
        let answer = http::get(
            &self.http,
            target,
            path,
            self.token.as_deref(),
            "TorchServe's management API",
        )
        .await?;
        let (status, body, shown_path) = (answer.status, answer.body, answer.path);
        match status {
            StatusCode::NOT_FOUND => Err(ProbeOutcome::not_ready(
                reasons::MODEL_NOT_REGISTERED,
                format!(
                    "TorchServe has no model {:?} registered ({})",
                    target.model_name,
                    summary(&body)
                ),
            )),
            // TorchServe 0.11+ answers a missing or wrong key with 400 "Token Authorization failed".
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(unauthorized(&body, self.token.is_some())),
            StatusCode::BAD_REQUEST if body.contains("Token Authorization") => {
                Err(unauthorized(&body, self.token.is_some()))
            }
            status if !status.is_success() => Err(ProbeOutcome::not_ready(
                reasons::PROBE_FAILED,
                format!("TorchServe answered GET {shown_path} with {status}: {}", summary(&body)),
            )),
            _ => serde_json::from_str(&body).map_err(|err| {
                ProbeOutcome::not_ready(
                    reasons::PROBE_FAILED,
                    format!("TorchServe's answer to GET {shown_path} is not a model description: {err}"),
                )
            }),
        }
    }
}

impl ModelProbe for TorchserveProbe {
    async fn probe(&self, target: &ProbeTarget) -> ProbeOutcome {
        let name = target.model_name.as_str();
        let mut registered = match self.describe(target, &["models", name, "all"]).await {
            Ok(versions) => versions,
            Err(outcome) => return outcome,
        };
        let versions: Vec<String> = registered.iter().map(|m| m.model_version.clone()).collect();
        let asked = target.version.as_deref();
        // The ModelDeployment's version is used when TorchServe has a version of that name;
        // otherwise TorchServe's default version is the one that serves requests.
        let chosen = match registered.iter().position(|m| Some(m.model_version.as_str()) == asked) {
            Some(position) => registered.swap_remove(position),
            None if registered.len() == 1 => registered.swap_remove(0),
            None => match self.describe(target, &["models", name]).await {
                Ok(mut default) if !default.is_empty() => default.swap_remove(0),
                Ok(_) => {
                    return ProbeOutcome::not_ready(
                        reasons::PROBE_FAILED,
                        format!("TorchServe describes no default version of {name:?}"),
                    );
                }
                Err(outcome) => return outcome,
            },
        };
        readiness(name, chosen, versions)
    }
}

fn readiness(name: &str, chosen: ModelDescription, versions: Vec<String>) -> ProbeOutcome {
    let ModelDescription {
        model_version,
        min_workers,
        workers,
        runtime,
    } = chosen;
    let ready_workers = workers.iter().filter(|w| w.status == WORKER_READY).count();
    let needed = min_workers.max(1) as usize;
    let counts = format!(
        "{ready_workers} of {} workers READY, at least {needed} needed (minWorkers {min_workers})",
        workers.len()
    );
    if ready_workers >= needed {
        let model = ModelInfo {
            name: name.to_owned(),
            platform: runtime,
            versions,
            ..ModelInfo::default()
        };
        return ProbeOutcome::ready(
            format!("TorchServe serves model {name:?} version {model_version}: {counts}"),
            Some(model),
        );
    }
    let others: Vec<&str> = workers
        .iter()
        .filter(|w| w.status != WORKER_READY)
        .map(|w| w.status.as_str())
        .collect();
    let others = if others.is_empty() {
        String::new()
    } else {
        format!("; the others are {}", others.join(", "))
    };
    ProbeOutcome::not_ready(
        reasons::WORKERS_NOT_READY,
        format!("TorchServe model {name:?} version {model_version}: {counts}{others}"),
    )
}

fn unauthorized(body: &str, token_given: bool) -> ProbeOutcome {
    let hint = if token_given {
        "the management token was refused"
    } else {
        "TorchServe's token auth is on: pass its management key (--token or --token-file)"
    };
    ProbeOutcome::not_ready(reasons::PROBE_UNAUTHORIZED, format!("{hint} ({})", summary(body)))
}

/// TorchServe's JSON error message when there is one, else the start of the body.
fn summary(body: &str) -> String {
    #[derive(Deserialize)]
    struct Error {
        message: String,
    }
    match serde_json::from_str::<Error>(body) {
        Ok(error) => error.message,
        Err(_) => body.trim().chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(min_workers: u32, statuses: &[&str]) -> ModelDescription {
        ModelDescription {
            model_version: "1.0".into(),
            min_workers,
            workers: statuses.iter().map(|s| Worker { status: s.to_string() }).collect(),
            runtime: Some("python".into()),
        }
    }

    #[test]
    fn ready_needs_min_workers_ready_and_never_zero() {
        let ready = |min, statuses: &[&str]| readiness("m", described(min, statuses), vec!["1.0".into()]).ready;
        assert!(ready(1, &["READY"]));
        assert!(ready(2, &["READY", "READY", "UNLOADING"]));
        assert!(!ready(2, &["READY", "UNLOADING"]));
        assert!(!ready(1, &["UNLOADING"]));
        assert!(!ready(0, &[]), "a model without workers cannot answer");
        assert!(ready(0, &["READY"]));
    }

    #[test]
    fn the_message_counts_workers() {
        let outcome = readiness("m", described(2, &["READY", "UNLOADING"]), vec!["1.0".into()]);
        assert_eq!(outcome.reason, reasons::WORKERS_NOT_READY);
        assert_eq!(
            outcome.message,
            "TorchServe model \"m\" version 1.0: 1 of 2 workers READY, at least 2 needed (minWorkers 2); \
             the others are UNLOADING"
        );
    }

    #[test]
    fn a_described_model_parses_from_torchserve_json() {
        let body = r#"[{"modelName":"noop","modelVersion":"1.0","modelUrl":"noop.mar","runtime":"python",
            "minWorkers":1,"maxWorkers":1,"batchSize":1,"maxBatchDelay":100,
            "workers":[{"id":"9000","startTime":"2026-11-25T17:00:00.000Z","status":"READY","gpu":false}],
            "jobQueueStatus":{"remainingCapacity":100,"pendingRequests":0}}]"#;
        let parsed: Vec<ModelDescription> = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].workers[0].status, "READY");
        assert_eq!(
            summary(r#"{"code":404,"type":"ModelNotFoundException","message":"Model not found: x"}"#),
            "Model not found: x"
        );
    }
}
