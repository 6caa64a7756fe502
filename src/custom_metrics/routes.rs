//! The HTTP side of `custom.metrics.k8s.io`: discovery as the aggregator and the HPA controller's
//! discovery client read it, `pods/{name|*}/gpu_utilization` and
//! `pods/{name|*}/inference_queue_duration_us` in v1beta2 (and v1beta1), errors as
//! `metav1.Status`; every request first passes the front-proxy check.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use kube::{ResourceExt, runtime::reflector::Store};
use serde::Deserialize;
use tracing::{debug, warn};

use super::{
    front_proxy::{
        ClientCertificate, authenticate,
        authorization::{Access, DelegatedAuthorizer},
        header_text,
        reload::LiveTls,
    },
    gpu_utilization::{self, node_agents::SampleSource},
    label_selector::LabelSelector,
    queue_time::QueueTimeSource,
    wire::{self, ApiVersion, VERSIONS},
};
use crate::vocabulary::{
    GPU_UTILIZATION_METRIC, POD_METRICS, cached::CachedPod, names::CUSTOM_METRICS_GROUP as GROUP, pods::is_finished,
};

pub struct ApiState {
    pub pods: Store<CachedPod>,
    pub samples: SampleSource,
    pub queue_time: QueueTimeSource,
    /// The front proxy's CA and names in use now (they may be reloaded).
    pub tls: Arc<LiveTls>,
    /// `None` leaves authorization to kube-apiserver alone (`--delegated-authorization=false`).
    pub authorizer: Option<DelegatedAuthorizer>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/apis", get(api_group_list))
        .route(&format!("/apis/{GROUP}"), get(api_group))
        .route(&format!("/apis/{GROUP}/{{version}}"), get(api_resource_list))
        .route(
            &format!("/apis/{GROUP}/{{version}}/namespaces/{{namespace}}/pods/{{pod}}/{{metric}}"),
            get(pods_metric),
        )
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), front_proxy_only))
        .with_state(state)
}

/// Serves only requests the API server's front proxy forwards: its client certificate (checked
/// against the requestheader CA in the handshake) with an allowed name, and a user header; then,
/// unless disabled, only what a SubjectAccessReview allows that user.
async fn front_proxy_only(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let certificate = request.extensions().get::<ClientCertificate>();
    let requester = match authenticate(&state.tls.trust(), certificate, request.headers()) {
        Ok(requester) => requester,
        Err(refused) => return status(StatusCode::UNAUTHORIZED, "Unauthorized", &refused.to_string()),
    };
    let path = request.uri().path().to_owned();
    debug!(user = %requester.user, groups = ?requester.groups, %path, "custom metrics request");
    if let Some(authorizer) = &state.authorizer {
        let access = Access::of_path(&path);
        match authorizer.allows(&requester, &access).await {
            Ok(true) => {}
            Ok(false) => {
                return status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!("user {:?} may not get {path}", requester.user),
                );
            }
            Err(error) => {
                warn!(%error, "authorization check failed");
                return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &error.to_string());
            }
        }
    }
    next.run(request).await
}

/// A `metav1.Status` failure as a response.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (code, Json(wire::failure(code.as_u16(), reason, message))).into_response()
}

/// The aggregator first asks for aggregated discovery; a 406 makes it fall back to the legacy
/// documents (a 200 with a plain list would be misread as the aggregated form).
async fn api_group_list(headers: HeaderMap) -> Response {
    let accept = header_text(&headers, header::ACCEPT.as_str()).unwrap_or_default();
    if accept.contains("as=APIGroupDiscoveryList") {
        return status(
            StatusCode::NOT_ACCEPTABLE,
            "NotAcceptable",
            "aggregated discovery is not served; ask for application/json",
        );
    }
    Json(wire::api_group_list()).into_response()
}

async fn api_group() -> Response {
    Json(wire::api_group()).into_response()
}

async fn api_resource_list(Path(version): Path<String>) -> Response {
    match ApiVersion::parse(&version) {
        Some(version) => Json(wire::api_resource_list(version)).into_response(),
        None => unknown_version(&version),
    }
}

fn unknown_version(version: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{GROUP}/{version} is not served (served: {})", VERSIONS.join(", ")),
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricQuery {
    label_selector: Option<String>,
}

async fn pods_metric(
    State(state): State<Arc<ApiState>>,
    Path((version, namespace, pod, metric)): Path<(String, String, String, String)>,
    Query(query): Query<MetricQuery>,
) -> Response {
    let Some(api_version) = ApiVersion::parse(&version) else {
        return unknown_version(&version);
    };
    if !POD_METRICS.contains(&metric.as_str()) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "the custom metric {metric:?} is not served for pods (served: {})",
                POD_METRICS.join(", ")
            ),
        );
    }
    let selector = match LabelSelector::parse(query.label_selector.as_deref().unwrap_or("")) {
        Ok(selector) => selector,
        Err(error) => return status(StatusCode::BAD_REQUEST, "BadRequest", &error.to_string()),
    };
    let pods: Vec<Arc<CachedPod>> = state
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| pod == "*" || p.name_any() == pod)
        .filter(|p| selector.matches(p.labels()))
        .filter(|p| !is_finished(p))
        .collect();
    if pod != "*" && pods.is_empty() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{pod}\" not found in namespace {namespace}"),
        );
    }
    let (values, why_absent) = if metric == GPU_UTILIZATION_METRIC {
        (
            gpu_utilization::values(&state.samples, &pods).await,
            "its node agent has no fresh sample of a GPU it holds",
        )
    } else {
        (
            state.queue_time.values(&pods).await,
            "its runtime's metrics were not read twice yet, or could not be read",
        )
    };
    if pod != "*" && values.is_empty() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no {metric} for pod {namespace}/{pod}: {why_absent}"),
        );
    }
    Json(wire::metric_value_list(api_version, &metric, &values)).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::custom_metrics::{front_proxy::reload, gpu_utilization::node_agents::AgentDirectory, queue_time};

    fn pod(name: &str, node: Option<&str>) -> Arc<CachedPod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ml", "labels": {"app": "llm"}},
                "spec": {"containers": [{"name": "triton"}], "nodeName": node},
            }))
            .unwrap(),
        )
    }

    /// The router with one pod in the cache, whose node has no agent.
    async fn router_with_pod(allowed_names: Vec<String>) -> Router {
        let (pods, mut writer) = kube::runtime::reflector::store::<CachedPod>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            (*pod("a", Some("gpu-0"))).clone(),
        ));
        router(Arc::new(ApiState {
            pods,
            samples: SampleSource::new(
                AgentDirectory::from_flags(vec![]),
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(5),
            ),
            queue_time: QueueTimeSource::new(queue_time::Settings {
                endpoints: Default::default(),
                pod_ips: false,
                timeout: std::time::Duration::from_secs(1),
            }),
            tls: reload::for_tests(allowed_names).await,
            authorizer: None,
        }))
    }

    async fn call(app: &Router, path: &str, certificate: Option<&str>, headers: &[(&str, &str)]) -> (u16, Value) {
        use tower::ServiceExt;
        let mut request = axum::http::Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        request.extensions_mut().insert(match certificate {
            Some(cn) => ClientCertificate::Verified {
                common_name: Some(cn.to_owned()),
            },
            None => ClientCertificate::Absent,
        });
        let response = app.clone().oneshot(request).await.unwrap();
        let code = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (code, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn only_the_front_proxy_with_a_user_is_served() {
        let app = router_with_pod(vec!["front-proxy-client".into()]).await;
        let path = "/apis/custom.metrics.k8s.io/v1beta2";
        let user = [("X-Remote-User", "system:kube-aggregator")];
        let (code, body) = call(&app, path, None, &user).await;
        assert_eq!((code, body["reason"].as_str()), (401, Some("Unauthorized")), "{body}");
        let (code, body) = call(&app, path, Some("someone-else"), &user).await;
        assert_eq!(code, 401, "{body}");
        assert!(body["message"].as_str().unwrap().contains("someone-else"), "{body}");
        let (code, _) = call(&app, path, Some("front-proxy-client"), &[]).await;
        assert_eq!(code, 401);
        let (code, body) = call(&app, path, Some("front-proxy-client"), &user).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["resources"][0]["name"], "pods/gpu_utilization");
        assert_eq!(body["resources"][1]["name"], "pods/inference_queue_duration_us");
    }

    #[tokio::test]
    async fn discovery_answers_as_the_aggregator_expects() {
        let app = router_with_pod(vec![]).await;
        let user = ("X-Remote-User", "u");
        let aggregated = (
            "Accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        );
        let (code, _) = call(&app, "/apis", Some("p"), &[user, aggregated]).await;
        assert_eq!(code, 406);
        let (code, body) = call(&app, "/apis", Some("p"), &[user]).await;
        assert_eq!(code, 200);
        assert_eq!(
            body["groups"][0]["preferredVersion"]["groupVersion"],
            "custom.metrics.k8s.io/v1beta2"
        );
        let (code, body) = call(&app, "/apis/custom.metrics.k8s.io", Some("p"), &[user]).await;
        assert_eq!((code, body["kind"].as_str()), (200, Some("APIGroup")));
        let (code, _) = call(&app, "/apis/custom.metrics.k8s.io/v2", Some("p"), &[user]).await;
        assert_eq!(code, 404);
    }

    #[tokio::test]
    async fn metric_requests_leave_out_pods_without_samples_and_refuse_bad_input() {
        let app = router_with_pod(vec![]).await;
        let user = [("X-Remote-User", "u")];
        let base = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ml/pods";
        let (code, body) = call(
            &app,
            &format!("{base}/%2A/gpu_utilization?labelSelector=app%3Dllm"),
            Some("p"),
            &user,
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["items"], json!([]), "no agent for gpu-0, so no made-up value");
        let (code, body) = call(&app, &format!("{base}/a/gpu_utilization"), Some("p"), &user).await;
        assert_eq!(code, 404, "{body}");
        assert!(body["message"].as_str().unwrap().contains("ml/a"), "{body}");
        let (code, _) = call(&app, &format!("{base}/missing/gpu_utilization"), Some("p"), &user).await;
        assert_eq!(code, 404);
        let (code, body) = call(&app, &format!("{base}/%2A/gpu_temperature"), Some("p"), &user).await;
        assert_eq!(code, 404);
        assert!(body["message"].as_str().unwrap().contains("gpu_temperature"), "{body}");
        let (code, body) = call(
            &app,
            &format!("{base}/%2A/gpu_utilization?labelSelector=app%20in%20(x"),
            Some("p"),
            &user,
        )
        .await;
        assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")), "{body}");
    }
}
