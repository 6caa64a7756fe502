//! The HTTP request both HTTP-speaking probes make (TorchServe's management API, the
//! fastapi-pytorch app): one GET, with an unreachable server turned into the probe's outcome.

use reqwest::{StatusCode, Url};

use super::{ProbeOutcome, ProbeTarget};
use crate::{
    api::conditions::reasons,
    bounded_io::{BodyError, PROBE_BODY_LIMIT, body_within},
};

/// A server's answer; the body is read up to `PROBE_BODY_LIMIT` (probe answers are small, and a
/// server that sends more is broken or hostile).
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
    let body = body_within(response, PROBE_BODY_LIMIT).await.map_err(|err| {
        let reason = match &err {
            BodyError::Transfer(e) if e.is_timeout() => reasons::PROBE_TIMEOUT,
            _ => reasons::PROBE_FAILED,
        };
        ProbeOutcome::not_ready(
            reason,
            format!("{server} on {endpoint} answered {path} with {status}, but {err}"),
        )
    })?;
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok(HttpAnswer { status, body, path })
}
