//! `config/custom-metrics/`: the APIService, its Service and the RBAC parse as their Kubernetes
//! types with no field the API server would drop, and point at each other; the Prometheus
//! examples keep the label names the node agent exports.

use k8s_openapi::{
    api::{
        core::v1::Service,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

fn path(file: &str) -> String {
    format!("{}/config/custom-metrics/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Every document of a file as `T`, refusing fields `T` does not know.
fn documents<T: DeserializeOwned>(file: &str) -> Vec<T> {
    let path = path(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let mut unknown = Vec::new();
            let value: T = serde_ignored::deserialize(document, |field| unknown.push(field.to_string()))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                unknown.is_empty(),
                "{path}: fields the API server would drop: {unknown:?}"
            );
            value
        })
        .collect()
}

fn documents_of_kind<T: DeserializeOwned>(file: &str, kind: &str) -> Vec<T> {
    documents::<Value>(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| {
            let mut unknown = Vec::new();
            let value: T = serde_ignored::deserialize(d, |field| unknown.push(field.to_string())).unwrap();
            assert!(unknown.is_empty(), "{file} {kind}: unknown fields {unknown:?}");
            value
        })
        .collect()
}

#[test]
fn the_apiservice_points_at_the_operators_custom_metrics_port() {
    let [api_service]: [APIService; 1] = documents("apiservice.yaml").try_into().unwrap();
    assert_eq!(
        api_service.metadata.name.as_deref(),
        Some("v1beta2.custom.metrics.k8s.io")
    );
    let spec = api_service.spec.unwrap();
    assert_eq!(
        (spec.group.as_deref(), spec.version.as_deref()),
        (Some("custom.metrics.k8s.io"), Some("v1beta2"))
    );
    let reference = spec.service.unwrap();

    let [service]: [Service; 1] = documents("service.yaml").try_into().unwrap();
    assert_eq!(reference.name.as_deref(), service.metadata.name.as_deref());
    assert_eq!(reference.namespace.as_deref(), service.metadata.namespace.as_deref());
    let port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(reference.port, Some(port.port));
    // The operator's --custom-metrics-addr default.
    assert_eq!(port.target_port, Some(IntOrString::Int(6443)));
}

#[test]
fn rbac_grants_what_an_aggregated_api_server_needs() {
    let cluster_bindings: Vec<ClusterRoleBinding> = documents_of_kind("rbac.yaml", "ClusterRoleBinding");
    let bindings: Vec<RoleBinding> = documents_of_kind("rbac.yaml", "RoleBinding");
    let roles: Vec<Role> = documents_of_kind("rbac.yaml", "Role");
    let cluster_roles: Vec<ClusterRole> = documents_of_kind("rbac.yaml", "ClusterRole");
    assert_eq!(
        documents::<Value>("rbac.yaml").len(),
        cluster_bindings.len() + bindings.len() + roles.len() + cluster_roles.len()
    );

    let delegator = cluster_bindings
        .iter()
        .find(|b| b.role_ref.name == "system:auth-delegator")
        .expect("a system:auth-delegator binding");
    assert_eq!(delegator.subjects.as_ref().unwrap()[0].name, "model-operator");

    let reader = bindings
        .iter()
        .find(|b| b.role_ref.name == "extension-apiserver-authentication-reader")
        .expect("the extension-apiserver-authentication-reader binding");
    assert_eq!(reader.metadata.namespace.as_deref(), Some("kube-system"));

    let hpa = cluster_bindings
        .iter()
        .find(|b| {
            b.subjects
                .iter()
                .flatten()
                .any(|s| s.name == "horizontal-pod-autoscaler" && s.namespace.as_deref() == Some("kube-system"))
        })
        .expect("a binding for the HPA controller");
    let role = cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(hpa.role_ref.name.as_str()))
        .unwrap();
    let rule = &role.rules.as_ref().unwrap()[0];
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&["custom.metrics.k8s.io".to_owned()][..])
    );

    let endpoints = roles.iter().flat_map(|r| r.rules.iter().flatten()).any(|rule| {
        rule.resources.iter().flatten().any(|r| r == "endpointslices") && rule.verbs.iter().any(|v| v == "watch")
    });
    assert!(endpoints, "the operator watches the node agents' EndpointSlices");
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kustomization {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    namespace: Option<String>,
    resources: Vec<String>,
}

#[test]
fn kustomizations_list_files_that_exist() {
    for (file, namespace) in [
        ("kustomization.yaml", None),
        ("prometheus/kustomization.yaml", Some("model-operator-system")),
    ] {
        let [kustomization]: [Kustomization; 1] = documents(file).try_into().unwrap_or_else(|_| panic!("{file}"));
        // A namespace override would move the kube-system RoleBinding out of kube-system.
        assert_eq!(kustomization.namespace.as_deref(), namespace, "{file}");
        let dir = std::path::Path::new(&path(file)).parent().unwrap().to_owned();
        for resource in kustomization.resources {
            assert!(
                dir.join(&resource).exists(),
                "{file} lists {resource}, which does not exist"
            );
        }
    }
}

#[test]
fn prometheus_examples_keep_the_agents_label_names() {
    let [monitor]: [Value; 1] = documents("prometheus/servicemonitor.yaml").try_into().unwrap();
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["honorLabels"], true, "without it `pod` becomes `exported_pod`");
    assert_eq!(endpoint["port"], "metrics", "the node-agent Service's port name");

    let [scaled]: [Value; 1] = documents("prometheus/keda-scaledobject.example.yaml")
        .try_into()
        .unwrap();
    let query = scaled["spec"]["triggers"][0]["metadata"]["query"].as_str().unwrap();
    assert!(
        query.contains("DCGM_FI_DEV_GPU_UTIL{") && query.contains("pod=~"),
        "{query}"
    );

    let [adapter]: [Value; 1] = documents("prometheus/prometheus-adapter-rules.example.yaml")
        .try_into()
        .unwrap();
    let rules: Value = serde_yaml_ng::from_str(adapter["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let rule = &rules["rules"][0];
    assert_eq!(rule["name"]["as"], "gpu_utilization");
    assert_eq!(rule["resources"]["overrides"]["pod"]["resource"], "pod");
}
