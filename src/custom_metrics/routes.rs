//! The HTTP side of `custom.metrics.k8s.io`: discovery as the aggregator and the HPA controller's
//! discovery client read it, `pods/{name|*}/gpu_utilization` and
//! `pods/{name|*}/inference_queue_duration_us` in v1beta2 (and v1beta1), and errors as
//! `metav1.Status`. Types follow `k8s.io/metrics/pkg/apis/custom_metrics`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::future;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{ResourceExt, runtime::reflector::Store};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::{
    agents::{FreshSamples, SampleSource, SamplesError},
    authorization::{Access, DelegatedAuthorizer, Requester},
    queue_time::QueueTimeSource,
    reload::LiveTls,
    selector::LabelSelector,
    tls::FrontProxyTrust,
};
use crate::{
    gpu::is_finished,
    reconcile::build::{GPU_UTILIZATION_METRIC, QUEUE_TIME_METRIC},
};

pub const GROUP: &str = "custom.metrics.k8s.io";
/// The metrics served for pods, each from its own source.
pub const POD_METRICS: [&str; 2] = [GPU_UTILIZATION_METRIC, QUEUE_TIME_METRIC];
/// Newest first: the preferred version leads.
const VERSIONS: [&str; 2] = ["v1beta2", "v1beta1"];
/// The header that carries the user the front proxy authenticated.
const REMOTE_USER: &str = "x-remote-user";
const REMOTE_GROUP: &str = "x-remote-group";
/// Every authenticated user's group.
const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// What the TLS handshake established about the client; set per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertificate {
    /// The client sent none.
    Absent,
    /// Signed by the requestheader CA (rustls checked the chain during the handshake).
    Verified { common_name: Option<String> },
}

pub struct ApiState {
    pub pods: Store<Pod>,
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
    let requester = match authenticate(&state.tls.trust(), &request) {
        Ok(requester) => requester,
        Err(message) => return status(StatusCode::UNAUTHORIZED, "Unauthorized", &message),
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

/// The user the front proxy vouches for, or why the request is not from the front proxy.
fn authenticate(trust: &FrontProxyTrust, request: &Request) -> Result<Requester, String> {
    match request.extensions().get::<ClientCertificate>() {
        None | Some(ClientCertificate::Absent) => {
            Err("no client certificate: only the API server's front proxy may call this server".to_owned())
        }
        Some(ClientCertificate::Verified { common_name }) if !trust.name_allowed(common_name.as_deref()) => {
            Err(format!(
                "client certificate CN {:?} is not among the requestheader allowed names {:?}",
                common_name.clone().unwrap_or_default(),
                trust.allowed_names
            ))
        }
        Some(ClientCertificate::Verified { .. }) => {
            let user = header_text(request.headers(), REMOTE_USER).ok_or("the front proxy sent no X-Remote-User")?;
            // One header per group, as kube-apiserver sends them.
            let mut groups: Vec<String> = request
                .headers()
                .get_all(REMOTE_GROUP)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect();
            // As k8s.io/apiserver's authenticators do: the aggregator's own discovery requests
            // name a user without groups, and `system:discovery` is granted to this group.
            if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
                groups.push(AUTHENTICATED_GROUP.to_owned());
            }
            Ok(Requester { user, groups })
        }
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// A `metav1.Status` failure.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

fn group_json() -> Value {
    let versions: Vec<Value> = VERSIONS
        .iter()
        .map(|v| json!({"groupVersion": format!("{GROUP}/{v}"), "version": v}))
        .collect();
    json!({"name": GROUP, "versions": versions, "preferredVersion": versions[0]})
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
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_json()]})).into_response()
}

async fn api_group() -> Response {
    let mut group = group_json();
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    Json(group).into_response()
}

async fn api_resource_list(Path(version): Path<String>) -> Response {
    if !VERSIONS.contains(&version.as_str()) {
        return unknown_version(&version);
    }
    let resources: Vec<Value> = POD_METRICS
        .iter()
        .map(|metric| {
            json!({"name": format!("pods/{metric}"), "singularName": "", "namespaced": true,
                   "kind": "MetricValueList", "verbs": ["get"]})
        })
        .collect();
    Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{version}"),
        "resources": resources,
    }))
    .into_response()
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

/// One pod's value, ready to be written in either version's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct PodValue {
    pub namespace: String,
    pub pod: String,
    /// Percent for `gpu_utilization`, microseconds for `inference_queue_duration_us`.
    pub value: f64,
    pub timestamp: Timestamp,
    pub window_seconds: i64,
}

async fn pods_metric(
    State(state): State<Arc<ApiState>>,
    Path((version, namespace, pod, metric)): Path<(String, String, String, String)>,
    Query(query): Query<MetricQuery>,
) -> Response {
    if !VERSIONS.contains(&version.as_str()) {
        return unknown_version(&version);
    }
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
    let pods: Vec<Arc<Pod>> = state
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
        let samples = fetch_nodes(&state.samples, &pods).await;
        (
            gpu_utilization_values(&pods, &samples),
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
    Json(metric_value_list(&version, &metric, &values)).into_response()
}

/// The samples of every node that runs one of `pods`, asked for all at once; nodes whose agent
/// failed are absent (and logged), so their pods get no value.
async fn fetch_nodes(source: &SampleSource, pods: &[Arc<Pod>]) -> BTreeMap<String, FreshSamples> {
    let nodes: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .collect();
    let now = Timestamp::now();
    let fetched = future::join_all(nodes.iter().map(|node| source.fetch(node, now))).await;
    nodes
        .into_iter()
        .zip(fetched)
        .filter_map(|(node, result)| match result {
            Ok(samples) => Some((node.to_owned(), samples)),
            Err(error @ SamplesError::NoAgent(_)) => {
                debug!(%error, "pods on this node get no GPU utilisation");
                None
            }
            Err(error) => {
                warn!(%error, "pods on this node get no GPU utilisation");
                None
            }
        })
        .collect()
}

/// Each pod's mean utilisation over the GPUs it holds, from the samples of its node; pods
/// without a node, a fresh sample or a GPU reading are left out, never given a made-up value.
pub fn gpu_utilization_values(pods: &[Arc<Pod>], samples: &BTreeMap<String, FreshSamples>) -> Vec<PodValue> {
    let mut values: Vec<PodValue> = pods
        .iter()
        .filter_map(|pod| {
            let node = pod.spec.as_ref()?.node_name.as_deref()?;
            let fresh = samples.get(node)?;
            let (namespace, name) = (pod.namespace()?, pod.name_any());
            let value = fresh.samples.pod_gpu_utilization(&namespace, &name)?;
            Some(PodValue {
                namespace,
                pod: name,
                value,
                timestamp: fresh.sampled_at,
                // NVML's utilisation covers at most the last second; the agent reads it each interval.
                window_seconds: fresh.samples.interval_seconds.ceil().max(1.0) as i64,
            })
        })
        .collect();
    values.sort_by(|a, b| a.pod.cmp(&b.pod));
    values
}

/// A `MetricValueList` of `metric` in the shape of `version`.
pub fn metric_value_list(version: &str, metric: &str, values: &[PodValue]) -> Value {
    let items: Vec<Value> = values
        .iter()
        .map(|v| {
            let described = json!({"kind": "Pod", "namespace": v.namespace, "name": v.pod, "apiVersion": "v1"});
            let timestamp = format!("{:.0}", v.timestamp);
            if version == "v1beta1" {
                json!({"describedObject": described, "metricName": metric, "timestamp": timestamp,
                       "window": v.window_seconds, "value": quantity(v.value), "selector": null})
            } else {
                json!({"describedObject": described, "metric": {"name": metric, "selector": null},
                       "timestamp": timestamp, "windowSeconds": v.window_seconds, "value": quantity(v.value)})
            }
        })
        .collect();
    json!({"kind": "MetricValueList", "apiVersion": format!("{GROUP}/{version}"), "metadata": {}, "items": items})
}

/// A value as a Kubernetes quantity in the HPA target's unit (`target: 70` renders as
/// `averageValue: "70"`): whole numbers plain, fractions in milli-units.
pub fn quantity(value: f64) -> String {
    let milli = (value * 1000.0).round() as i64;
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use node_agent::samples::{ContainerGpus, GpuSample, NodeSamples};

    use super::*;

    fn pod(name: &str, node: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ml", "labels": {"app": "llm"}},
                "spec": {"containers": [{"name": "triton"}], "nodeName": node},
            }))
            .unwrap(),
        )
    }

    fn node_samples(utilization: &[(&str, &str, u32)]) -> FreshSamples {
        let sampled_at: Timestamp = "2026-11-25T17:00:00.250Z".parse().unwrap();
        FreshSamples {
            samples: NodeSamples {
                node: "gpu-0".into(),
                sampled_at: sampled_at.to_string(),
                interval_seconds: 0.5,
                pod_resources_at: None,
                gpus: utilization
                    .iter()
                    .map(|(_, uuid, percent)| GpuSample {
                        uuid: uuid.to_string(),
                        index: 0,
                        model_name: "NVIDIA A100-SXM4-80GB".into(),
                        utilization_percent: Some(*percent),
                        memory_utilization_percent: None,
                        fb_used_mib: None,
                        fb_free_mib: None,
                        timestamp: sampled_at.to_string(),
                        mig_devices: vec![],
                    })
                    .collect(),
                pods: utilization
                    .iter()
                    .map(|(pod, uuid, _)| ContainerGpus {
                        namespace: "ml".into(),
                        pod: pod.to_string(),
                        container: "triton".into(),
                        resource: "nvidia.com/gpu".into(),
                        device_ids: vec![uuid.to_string()],
                        gpus: vec![uuid.to_string()],
                        mig_devices: vec![],
                    })
                    .collect(),
            },
            sampled_at,
        }
    }

    #[test]
    fn pods_get_their_gpus_mean_and_pods_without_fresh_samples_none() {
        let pods = [
            pod("a", Some("gpu-0")),
            pod("b", Some("gpu-0")),
            pod("c", Some("gpu-stale")),
            pod("pending", None),
            pod("no-gpu", Some("gpu-0")),
        ];
        let samples = BTreeMap::from([(
            "gpu-0".to_owned(),
            node_samples(&[("a", "GPU-1", 73), ("a", "GPU-2", 40), ("b", "GPU-3", 10)]),
        )]);
        let values = gpu_utilization_values(&pods, &samples);
        let summary: Vec<(&str, f64, i64)> = values
            .iter()
            .map(|v| (v.pod.as_str(), v.value, v.window_seconds))
            .collect();
        assert_eq!(summary, [("a", 56.5, 1), ("b", 10.0, 1)]);
    }

    #[test]
    fn lists_have_each_version_shape() {
        let value = PodValue {
            namespace: "ml".into(),
            pod: "llm-0".into(),
            value: 73.0,
            timestamp: "2026-11-25T17:00:00.250Z".parse().unwrap(),
            window_seconds: 1,
        };
        assert_eq!(
            metric_value_list("v1beta2", GPU_UTILIZATION_METRIC, std::slice::from_ref(&value)),
            json!({"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {},
                   "items": [{"describedObject": {"kind": "Pod", "namespace": "ml", "name": "llm-0", "apiVersion": "v1"},
                              "metric": {"name": "gpu_utilization", "selector": null},
                              "timestamp": "2026-11-25T17:00:00Z", "windowSeconds": 1, "value": "73"}]})
        );
        let v1beta1 = metric_value_list("v1beta1", GPU_UTILIZATION_METRIC, &[value]);
        assert_eq!(v1beta1["items"][0]["metricName"], "gpu_utilization");
        assert_eq!(v1beta1["items"][0]["window"], 1);
    }

    /// The router with one pod in the cache, whose node has no agent.
    async fn router_with_pod(allowed_names: Vec<String>) -> Router {
        let (pods, mut writer) = kube::runtime::reflector::store::<Pod>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            (*pod("a", Some("gpu-0"))).clone(),
        ));
        router(Arc::new(ApiState {
            pods,
            samples: SampleSource::new(
                super::super::agents::AgentDirectory::from_flags(vec![]),
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(5),
            ),
            queue_time: QueueTimeSource::new(super::super::queue_time::Settings {
                endpoints: Default::default(),
                pod_ips: false,
                timeout: std::time::Duration::from_secs(1),
            }),
            tls: super::super::reload::for_tests(allowed_names).await,
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

    #[test]
    fn quantities_are_in_the_hpa_targets_unit() {
        assert_eq!(quantity(73.0), "73");
        assert_eq!(quantity(56.5), "56500m");
        assert_eq!(quantity(0.0), "0");
        assert_eq!(quantity(33.3333), "33333m");
    }
}
