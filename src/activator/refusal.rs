//! What a client gets when the activator cannot forward its request: never a hang or a reset,
//! but an answer in the client's own protocol that says why and when to try again. HTTP clients
//! get `503` with `Retry-After`; gRPC clients `UNAVAILABLE` (which their retry policies treat as
//! retryable) with `grpc-retry-pushback-ms`, as a trailers-only response.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

/// Why a request was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The host names no model (a missing or malformed host, an unknown or ambiguous Service).
    NoModel(String),
    /// The model's queue of held requests is full.
    QueueFull { model: String, capacity: usize },
    /// The model did not become ready within its cold-start bound.
    ColdStartTimeout { model: String, waited: Duration },
    /// The replica took the request and failed it at the transport (it died mid-request).
    UpstreamFailed { model: String, error: String },
}

impl Refusal {
    /// The words the client reads.
    pub fn message(&self) -> String {
        match self {
            Self::NoModel(why) => why.clone(),
            Self::QueueFull { model, capacity } => format!(
                "model {model} is starting and already holds {capacity} requests, the most it queues; try again shortly"
            ),
            Self::ColdStartTimeout { model, waited } => format!(
                "model {model} did not become ready within {}; it may still be starting, try again shortly",
                humantime::format_duration(*waited)
            ),
            Self::UpstreamFailed { model, error } => {
                format!("model {model}'s replica did not answer: {error}")
            }
        }
    }

    /// The fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoModel(_) => "NoModel",
            Self::QueueFull { .. } => "QueueFull",
            Self::ColdStartTimeout { .. } => "ColdStartTimeout",
            Self::UpstreamFailed { .. } => "UpstreamFailed",
        }
    }

    /// When the client should try again; `None` when trying again cannot help.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NoModel(_) => None,
            Self::QueueFull { .. } | Self::UpstreamFailed { .. } => Some(Duration::from_secs(1)),
            Self::ColdStartTimeout { .. } => Some(Duration::from_secs(5)),
        }
    }

    /// The HTTP answer: 404 for no model, else 503, with `Retry-After` in whole seconds.
    pub fn http(&self) -> Response<Body> {
        let status = match self {
            Self::NoModel(_) => StatusCode::NOT_FOUND,
            Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = Response::new(Body::from(format!("{}\n", self.message())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(after) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        response
    }

    /// The gRPC answer: trailers-only, HTTP 200, `grpc-status` 14 (`UNAVAILABLE`), or 5
    /// (`NOT_FOUND`) for no model, the message percent-encoded as gRPC requires.
    pub fn grpc(&self) -> Response<Body> {
        let code: u16 = match self {
            Self::NoModel(_) => 5,
            _ => 14,
        };
        let mut response = Response::new(Body::empty());
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(code));
        let message = grpc_message(&self.message());
        headers.insert(
            "grpc-message",
            HeaderValue::from_str(&message).expect("percent-encoded text is a valid header value"),
        );
        if let Some(after) = self.retry_after() {
            let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            headers.insert("grpc-retry-pushback-ms", HeaderValue::from(millis));
        }
        response
    }
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, every other byte as `%XX`.
fn grpc_message(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(response: &'a Response<Body>, name: &str) -> &'a str {
        response.headers()[name].to_str().unwrap()
    }

    #[test]
    fn a_full_queue_is_a_503_with_a_retry_hint_or_unavailable_with_pushback() {
        let refusal = Refusal::QueueFull {
            model: "ml/bert".into(),
            capacity: 100,
        };
        let http = refusal.http();
        assert_eq!(http.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&http, "retry-after"), "1");
        let grpc = refusal.grpc();
        assert_eq!(grpc.status(), StatusCode::OK, "gRPC errors travel in grpc-status");
        assert_eq!(header(&grpc, "grpc-status"), "14");
        assert_eq!(header(&grpc, "grpc-retry-pushback-ms"), "1000");
        assert_eq!(
            header(&grpc, "grpc-message"),
            "model ml/bert is starting and already holds 100 requests, the most it queues; try again shortly"
        );
    }

    #[test]
    fn no_model_is_not_found_without_a_retry_hint() {
        let refusal = Refusal::NoModel("no model has a Service bert-service".into());
        assert_eq!(refusal.http().status(), StatusCode::NOT_FOUND);
        assert!(!refusal.http().headers().contains_key("retry-after"));
        assert_eq!(header(&refusal.grpc(), "grpc-status"), "5");
    }

    #[test]
    fn the_grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("50% done, naïve\n"), "50%25 done, na%C3%AFve%0A");
    }
}
