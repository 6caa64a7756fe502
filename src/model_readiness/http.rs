//! The HTTP request both HTTP-speaking probes make (TorchServe's management API, the
//! fastapi-pytorch app): one GET, with an unreachable server turned into the probe's outcome.

use reqwest::{StatusCode, Url};

use super::{ProbeOutcome, ProbeTarget};
use crate::api::conditions::reasons;

/// A server's answer; the body is read whole (probe answers are small).
pub struct HttpAnswer {
    pub status: StatusCode,
    pub body: String,
    /// The path asked for, as sent, for messages.
    pub path: String,
}

/// GETs `path` (segments, each percent-encoded, so a model name cannot change the route) from
/// the target's endpoint. `server` names the server in messages.
pub async fn get(
    http: &reqwest::Client,
    target: &ProbeTarget,
    path: &[&str],
    bearer: Option<&str>,
    server: &str,
) -> Result<HttpAnswer, ProbeOutcome> {
    let endpoint = &target.endpoint;
    let mut url = Url::parse(&format!("http://{endpoint}/")).map_err(|err| {
        ProbeOutcome::not_ready(reasons::PROBE_FAILED, format!("{endpoint} is not an address: {err}"))
    })?;
    url.path_segments_mut()
        .expect("an http URL has path segments")
        .pop_if_empty()
        .extend(path);
    let path = url.path().to_owned();
    let mut request = http.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|err| {
        let reason = if err.is_timeout() {
            reasons::PROBE_TIMEOUT
        } else {
            reasons::SERVER_UNAVAILABLE
        };
        ProbeOutcome::not_ready(reason, format!("{server} on {endpoint} does not answer: {err}"))
    })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    Ok(HttpAnswer { status, body, path })
}
