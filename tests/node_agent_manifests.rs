//! `config/node-agent/`: the DaemonSet and Service parse as their Kubernetes types with no field
//! the API server would drop, and keep the promises the node agent depends on.

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::Service,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, de::DeserializeOwned};

fn manifest<T: DeserializeOwned>(file: &str) -> T {
    let path = format!("{}/config/node-agent/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut unknown = Vec::new();
    let value: T = serde_ignored::deserialize(serde_yaml_ng::Deserializer::from_str(&text), |field| {
        unknown.push(field.to_string())
    })
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        unknown.is_empty(),
        "{path}: fields the API server would drop: {unknown:?}"
    );
    value
}

#[test]
fn the_daemonset_runs_on_gpu_nodes_with_least_privilege() {
    let daemonset: DaemonSet = manifest("daemonset.yaml");
    let pod = daemonset.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.node_selector.unwrap()["nvidia.com/gpu.present"], "true");
    let toleration = &pod.tolerations.unwrap()[0];
    assert_eq!(
        (
            toleration.key.as_deref(),
            toleration.operator.as_deref(),
            toleration.effect.as_deref()
        ),
        (Some("nvidia.com/gpu"), Some("Exists"), Some("NoSchedule"))
    );
    // Its token, for the ResourceSlices it reads (the grant: below).
    assert_eq!(pod.automount_service_account_token, Some(true));

    let container = &pod.containers[0];
    let node_name = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .unwrap();
    let field = node_name.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 9400);

    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(security.capabilities.as_ref().unwrap().add.is_none());
    assert_ne!(security.privileged, Some(true));

    let mount = &container.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/var/lib/kubelet/pod-resources", Some(true))
    );
    let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == mount.name).unwrap();
    assert_eq!(volume.host_path.unwrap().path, "/var/lib/kubelet/pod-resources");

    let resources = container.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "32Mi");
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "10m");
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe.as_ref().unwrap().http_get.as_ref().unwrap().path.clone().unwrap()
    };
    assert_eq!(probe_path(&container.readiness_probe), "/readyz");
    assert_eq!(probe_path(&container.liveness_probe), "/healthz");
}

#[test]
fn the_service_is_headless_with_the_metrics_port() {
    let service: Service = manifest("service.yaml");
    let spec = service.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("metrics"), 9400));
    assert_eq!(port.target_port, Some(IntOrString::String("metrics".into())));
    let daemonset: DaemonSet = manifest("daemonset.yaml");
    let pod_labels = daemonset.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    for (key, value) in spec.selector.unwrap() {
        assert_eq!(
            pod_labels.get(&key),
            Some(&value),
            "the selector matches the agent's pods"
        );
    }
}

#[test]
fn the_agent_has_its_own_service_account_without_a_token_by_default() {
    let account: k8s_openapi::api::core::v1::ServiceAccount = manifest("serviceaccount.yaml");
    assert_eq!(account.automount_service_account_token, Some(false));
    let daemonset: DaemonSet = manifest("daemonset.yaml");
    let pod = daemonset.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name, account.metadata.name);
}

/// What a document of a multi-document manifest is, as its Kubernetes type, with no unknown field.
fn documents<T: DeserializeOwned>(file: &str, kind: &str) -> Vec<T> {
    let path = format!("{}/config/node-agent/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| serde_yaml_ng::Value::deserialize(document).unwrap())
        .filter(|value| value["kind"].as_str() == Some(kind))
        .map(|value| serde_yaml_ng::from_value(value).unwrap_or_else(|e| panic!("{path}: {kind}: {e}")))
        .collect()
}

/// The one grant of the agent: reading ResourceSlices (DRA: which GPU a claimed device is).
#[test]
fn the_agent_may_only_read_resource_slices() {
    let roles: Vec<ClusterRole> = documents("rbac.yaml", "ClusterRole");
    let [role] = &roles[..] else {
        panic!("rbac.yaml has one ClusterRole: {roles:?}")
    };
    let rules = role.rules.as_deref().unwrap();
    let [rule] = rules else { panic!("one rule: {rules:?}") };
    assert_eq!(rule.api_groups.as_deref(), Some(&["resource.k8s.io".to_string()][..]));
    assert_eq!(rule.resources.as_deref(), Some(&["resourceslices".to_string()][..]));
    assert_eq!(rule.verbs, ["get", "list", "watch"]);
    assert!(rule.resource_names.is_none());

    let bindings: Vec<ClusterRoleBinding> = documents("rbac.yaml", "ClusterRoleBinding");
    let [binding] = &bindings[..] else {
        panic!("rbac.yaml has one ClusterRoleBinding: {bindings:?}")
    };
    assert_eq!(
        (binding.role_ref.kind.as_str(), Some(&binding.role_ref.name)),
        ("ClusterRole", role.metadata.name.as_ref())
    );
    let account: k8s_openapi::api::core::v1::ServiceAccount = manifest("serviceaccount.yaml");
    let subjects = binding.subjects.as_deref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            Some(&subjects[0].name),
            subjects[0].namespace.as_deref()
        ),
        (
            "ServiceAccount",
            account.metadata.name.as_ref(),
            Some("model-operator-system")
        )
    );
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/node-agent/kustomization.yaml");
    let kustomization: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert_eq!(
        resources,
        ["daemonset.yaml", "rbac.yaml", "service.yaml", "serviceaccount.yaml"]
    );
}
