//! The fastapi-pytorch runtime's model probe, over the app's KServe-v2-style HTTP API (8000).
//!
//! `GET /v2/health/ready` is 200 once the app's background load finished and 503 before, with
//! `{"state": "LOADING" | "READY" | "FAILED", "reason": ...}`; `GET /v2/models/{name}` then
//! confirms that the app serves this model and gives its metadata (`inference/model_server/app.py`).

use reqwest::StatusCode;
use serde::Deserialize;

use super::{ModelProbe, ProbeOutcome, ProbeTarget, http};
use crate::api::{ModelInfo, conditions::reasons};

pub struct FastapiProbe {
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct Readiness {
    state: String,
    #[serde(default)]
    reason: String,
}

impl FastapiProbe {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    async fn get(&self, target: &ProbeTarget, path: &[&str]) -> Result<(StatusCode, String), ProbeOutcome> {
        let answer = http::get(&self.http, target, path, None, "the model server").await?;
        Ok((answer.status, answer.body))
    }
}

impl ModelProbe for FastapiProbe {
    async fn probe(&self, target: &ProbeTarget) -> ProbeOutcome {
        let name = target.model_name.as_str();
        let (status, body) = match self.get(target, &["v2", "health", "ready"]).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if status != StatusCode::OK {
            return match (status, serde_json::from_str::<Readiness>(&body)) {
                (StatusCode::SERVICE_UNAVAILABLE, Ok(Readiness { state, reason })) => match state.as_str() {
                    "LOADING" => ProbeOutcome::not_ready(reasons::MODEL_LOADING, reason),
                    "FAILED" => ProbeOutcome::not_ready(reasons::MODEL_LOAD_FAILED, reason),
                    _ => ProbeOutcome::not_ready(reasons::MODEL_NOT_READY, format!("state {state}: {reason}")),
                },
                _ => ProbeOutcome::not_ready(
                    reasons::PROBE_FAILED,
                    format!("GET /v2/health/ready answered {status}: {}", short(&body)),
                ),
            };
        }
        let (status, body) = match self.get(target, &["v2", "models", name]).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        match status {
            // The app's metadata has the shape of `status.model`.
            StatusCode::OK => match serde_json::from_str::<ModelInfo>(&body) {
                Ok(model) => {
                    ProbeOutcome::ready(format!("the model server reports model {name:?} loaded"), Some(model))
                }
                Err(err) => ProbeOutcome::not_ready(
                    reasons::PROBE_FAILED,
                    format!("GET /v2/models/{name} is not model metadata: {err}"),
                ),
            },
            StatusCode::NOT_FOUND => ProbeOutcome::not_ready(
                reasons::MODEL_NOT_REGISTERED,
                format!(
                    "the model server on {} does not serve model {name:?}: {}",
                    target.endpoint,
                    short(&body)
                ),
            ),
            // The model went away between the two requests (a reload); the next probe will tell.
            _ => ProbeOutcome::not_ready(
                reasons::MODEL_NOT_READY,
                format!("GET /v2/models/{name} answered {status}: {}", short(&body)),
            ),
        }
    }
}

fn short(body: &str) -> String {
    body.trim().chars().take(200).collect()
}
