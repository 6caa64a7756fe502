//! What the metrics API writes, typed: the discovery documents and `metav1.Status` from
//! k8s-openapi, and `MetricValueList` in both served versions, shaped after
//! `k8s.io/metrics/pkg/apis/custom_metrics/{v1beta1,v1beta2}/types.go` (k8s-openapi has no
//! custom-metrics types).

use k8s_openapi::{
    api::core::v1::ObjectReference,
    apimachinery::pkg::apis::meta::v1::{
        APIGroup, APIGroupList, APIResource, APIResourceList, GroupVersionForDiscovery, ListMeta, Status,
    },
    jiff::Timestamp,
};
use serde::Serialize;

use crate::vocabulary::{POD_METRICS, PodValue, names::CUSTOM_METRICS_GROUP};

/// Newest first: the preferred version leads.
pub const VERSIONS: [&str; 2] = ["v1beta2", "v1beta1"];

/// A served version of the API, parsed from the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1beta2,
    V1beta1,
}

impl ApiVersion {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "v1beta2" => Some(Self::V1beta2),
            "v1beta1" => Some(Self::V1beta1),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1beta2 => "v1beta2",
            Self::V1beta1 => "v1beta1",
        }
    }
}

fn group_version(version: &str) -> GroupVersionForDiscovery {
    GroupVersionForDiscovery {
        group_version: format!("{CUSTOM_METRICS_GROUP}/{version}"),
        version: version.to_owned(),
    }
}

/// `GET /apis/custom.metrics.k8s.io`.
pub fn api_group() -> APIGroup {
    APIGroup {
        name: CUSTOM_METRICS_GROUP.to_owned(),
        versions: VERSIONS.iter().map(|v| group_version(v)).collect(),
        preferred_version: Some(group_version(VERSIONS[0])),
        server_address_by_client_cidrs: None,
    }
}

/// `GET /apis` in its legacy (non-aggregated) form.
pub fn api_group_list() -> APIGroupList {
    APIGroupList {
        groups: vec![api_group()],
    }
}

/// `GET /apis/custom.metrics.k8s.io/{version}`: every pod metric, readable with `get`.
pub fn api_resource_list(version: ApiVersion) -> APIResourceList {
    APIResourceList {
        group_version: format!("{CUSTOM_METRICS_GROUP}/{}", version.as_str()),
        resources: POD_METRICS
            .iter()
            .map(|metric| APIResource {
                name: format!("pods/{metric}"),
                singular_name: String::new(),
                namespaced: true,
                kind: "MetricValueList".to_owned(),
                verbs: vec!["get".to_owned()],
                ..APIResource::default()
            })
            .collect(),
    }
}

/// A `metav1.Status` failure.
pub fn failure(code: u16, reason: &str, message: &str) -> Status {
    Status {
        code: Some(i32::from(code)),
        message: Some(message.to_owned()),
        reason: Some(reason.to_owned()),
        status: Some("Failure".to_owned()),
        metadata: ListMeta::default(),
        details: None,
    }
}

/// `MetricValueList` of either version.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueList<Item> {
    kind: &'static str,
    api_version: String,
    metadata: ListMeta,
    items: Vec<Item>,
}

/// v1beta2's `MetricValue`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueV1beta2 {
    described_object: ObjectReference,
    metric: MetricIdentifier,
    timestamp: String,
    window_seconds: i64,
    value: String,
}

/// v1beta2's `MetricIdentifier`; the operator's metrics take no metric selector.
#[derive(Debug, Serialize)]
pub struct MetricIdentifier {
    name: String,
    selector: Option<()>,
}

/// v1beta1's `MetricValue`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueV1beta1 {
    described_object: ObjectReference,
    metric_name: String,
    timestamp: String,
    window: i64,
    value: String,
    selector: Option<()>,
}

/// The list of `metric` for `values`, in the shape of `version`, as JSON.
pub fn metric_value_list(version: ApiVersion, metric: &str, values: &[PodValue]) -> serde_json::Value {
    let described = |v: &PodValue| ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(v.pod.clone()),
        namespace: Some(v.namespace.clone()),
        ..ObjectReference::default()
    };
    fn list<Item>(version: ApiVersion, items: Vec<Item>) -> MetricValueList<Item> {
        MetricValueList {
            kind: "MetricValueList",
            api_version: format!("{CUSTOM_METRICS_GROUP}/{}", version.as_str()),
            metadata: ListMeta::default(),
            items,
        }
    }
    let json = match version {
        ApiVersion::V1beta2 => serde_json::to_value(list(
            version,
            values
                .iter()
                .map(|v| MetricValueV1beta2 {
                    described_object: described(v),
                    metric: MetricIdentifier {
                        name: metric.to_owned(),
                        selector: None,
                    },
                    timestamp: timestamp(v.timestamp),
                    window_seconds: v.window_seconds,
                    value: quantity(v.value),
                })
                .collect::<Vec<_>>(),
        )),
        ApiVersion::V1beta1 => serde_json::to_value(list(
            version,
            values
                .iter()
                .map(|v| MetricValueV1beta1 {
                    described_object: described(v),
                    metric_name: metric.to_owned(),
                    timestamp: timestamp(v.timestamp),
                    window: v.window_seconds,
                    value: quantity(v.value),
                    selector: None,
                })
                .collect::<Vec<_>>(),
        )),
    };
    json.expect("metric values serialize to JSON")
}

/// RFC 3339 to the second, as `metav1.Time` is written.
fn timestamp(at: Timestamp) -> String {
    format!("{at:.0}")
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
    use serde_json::json;

    use super::*;
    use crate::vocabulary::GPU_UTILIZATION_METRIC;

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
            metric_value_list(
                ApiVersion::V1beta2,
                GPU_UTILIZATION_METRIC,
                std::slice::from_ref(&value)
            ),
            json!({"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {},
                   "items": [{"describedObject": {"kind": "Pod", "namespace": "ml", "name": "llm-0", "apiVersion": "v1"},
                              "metric": {"name": "gpu_utilization", "selector": null},
                              "timestamp": "2026-11-25T17:00:00Z", "windowSeconds": 1, "value": "73"}]})
        );
        let v1beta1 = metric_value_list(ApiVersion::V1beta1, GPU_UTILIZATION_METRIC, &[value]);
        assert_eq!(v1beta1["items"][0]["metricName"], "gpu_utilization");
        assert_eq!(v1beta1["items"][0]["window"], 1);
        assert_eq!(v1beta1["items"][0]["selector"], json!(null));
    }

    #[test]
    fn discovery_documents_carry_their_kinds() {
        let list = serde_json::to_value(api_group_list()).unwrap();
        assert_eq!(list["kind"], "APIGroupList");
        assert_eq!(
            list["groups"][0]["preferredVersion"]["groupVersion"],
            "custom.metrics.k8s.io/v1beta2"
        );
        let resources = serde_json::to_value(api_resource_list(ApiVersion::V1beta1)).unwrap();
        assert_eq!(resources["kind"], "APIResourceList");
        assert_eq!(resources["groupVersion"], "custom.metrics.k8s.io/v1beta1");
        assert_eq!(
            resources["resources"][1],
            json!({"name": "pods/inference_queue_duration_us", "singularName": "", "namespaced": true,
                   "kind": "MetricValueList", "verbs": ["get"]})
        );
        let status = serde_json::to_value(failure(404, "NotFound", "gone")).unwrap();
        assert_eq!(
            (&status["kind"], &status["code"], &status["status"]),
            (&json!("Status"), &json!(404), &json!("Failure"))
        );
    }

    #[test]
    fn quantities_are_in_the_hpa_targets_unit() {
        assert_eq!(quantity(73.0), "73");
        assert_eq!(quantity(56.5), "56500m");
        assert_eq!(quantity(0.0), "0");
        assert_eq!(quantity(33.3333), "33333m");
    }
}
