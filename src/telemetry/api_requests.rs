//! `model_operator_kube_requests_total{verb,resource}`: every request the operator sends to the
//! API server, counted by a tower layer on its clients, so "no writes at rest" can be read from
//! the operator itself instead of from the API server's metrics (which mix every client).

use std::task::{Context, Poll};

use prometheus::IntCounterVec;

/// Counts each request by the API server's own verb and by resource (`deployments`,
/// `modeldeployments/status`, ...), before it is sent.
#[derive(Clone)]
pub struct CountRequests {
    requests: IntCounterVec,
}

impl CountRequests {
    pub fn new(requests: IntCounterVec) -> Self {
        Self { requests }
    }
}

impl<S> tower::Layer<S> for CountRequests {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountedService {
            inner,
            requests: self.requests.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountedService<S> {
    inner: S,
    requests: IntCounterVec,
}

impl<S, B> tower::Service<http::Request<B>> for CountedService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (verb, resource) = classify(request.method(), request.uri());
        self.requests.with_label_values(&[verb, &resource]).inc();
        self.inner.call(request)
    }
}

/// The verb the API server would log for this request, and the resource (with its subresource)
/// it names; paths outside `/api` and `/apis` (discovery, `/version`) are `other`.
pub fn classify(method: &http::Method, uri: &http::Uri) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    };
    let Some(mut rest) = rest.filter(|rest| !rest.is_empty()) else {
        return ("other", String::new());
    };
    // `namespaces/NS/<resource>...`; `namespaces` alone, or `namespaces/NS`, is the Namespace itself.
    if rest.len() > 2 && rest[0] == "namespaces" {
        rest = &rest[2..];
    }
    let named = rest.len() >= 2;
    let resource = match rest.get(2) {
        Some(subresource) => format!("{}/{subresource}", rest[0]),
        None => rest[0].to_owned(),
    };
    let watching = uri
        .query()
        .is_some_and(|query| query.split('&').any(|pair| pair == "watch=true" || pair == "watch=1"));
    let verb = match *method {
        http::Method::GET if watching => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

/// The verbs that change what the API server stores.
pub fn is_write(verb: &str) -> bool {
    matches!(verb, "create" | "update" | "patch" | "delete" | "deletecollection")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verb_and_resource(method: http::Method, uri: &str) -> (&'static str, String) {
        classify(&method, &uri.parse().unwrap())
    }

    #[test]
    fn requests_are_named_as_the_api_server_names_them() {
        use http::Method;
        let cases = [
            (
                Method::GET,
                "/apis/apps/v1/namespaces/ml/deployments?labelSelector=a%3Db",
                ("list", "deployments"),
            ),
            (
                Method::GET,
                "/apis/apps/v1/deployments?watch=true&resourceVersion=5",
                ("watch", "deployments"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ml/services/resnet",
                ("get", "services"),
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/ml/deployments/resnet?fieldManager=m&force=true",
                ("patch", "deployments"),
            ),
            (
                Method::PATCH,
                "/apis/mlops.sathvik.dev/v1/namespaces/ml/modeldeployments/resnet/status",
                ("patch", "modeldeployments/status"),
            ),
            (
                Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                ("create", "subjectaccessreviews"),
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/ops/leases/lead",
                ("update", "leases"),
            ),
            (
                Method::DELETE,
                "/apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/r",
                ("delete", "horizontalpodautoscalers"),
            ),
            (Method::GET, "/api/v1/nodes", ("list", "nodes")),
            (Method::GET, "/api/v1/namespaces/ml", ("get", "namespaces")),
            (Method::GET, "/version", ("other", "")),
        ];
        for (method, uri, (verb, resource)) in cases {
            assert_eq!(
                verb_and_resource(method.clone(), uri),
                (verb, resource.to_owned()),
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn only_changes_count_as_writes() {
        assert!(is_write("patch") && is_write("create") && is_write("delete"));
        assert!(!is_write("get") && !is_write("list") && !is_write("watch"));
    }
}
