//! Questions every layer asks of a Pod: has it finished, is it ready, where does it run, does it
//! hold GPUs.

use super::cached::CachedPod;
use kube::ResourceExt;

use super::{
    gpu::GPU_RESOURCE_PREFIX,
    names::{COMPONENT_SERVER, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY},
};

/// The namespace and name of the ModelDeployment a pod serves, when the operator made it to
/// serve one: read from its labels, which a ReplicaSet's pods keep for life.
pub fn served_model(pod: &CachedPod) -> Option<(String, String)> {
    let labels = pod.labels();
    let ours = labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(LABEL_COMPONENT).map(String::as_str) == Some(COMPONENT_SERVER);
    let model = labels.get(LABEL_NAME).filter(|_| ours)?;
    Some((pod.namespace()?, model.clone()))
}

/// Succeeded or Failed: its containers will not run again, and its resources are free.
pub fn is_finished(pod: &CachedPod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Marked for deletion: it may still run, but it is going away.
pub fn is_terminating(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The kubelet reports the pod Ready (its readiness probe passes): the Service sends it traffic.
pub fn is_ready(pod: &CachedPod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node the scheduler bound the pod to; `None` while it is Pending.
pub fn node_name(pod: &CachedPod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// Some container has an NVIDIA extended resource among its limits.
pub fn requests_gpus(pod: &CachedPod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| {
                c.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .is_some_and(|limits| limits.keys().any(|k| k.starts_with(GPU_RESOURCE_PREFIX)))
            })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(value: serde_json::Value) -> CachedPod {
        serde_json::from_value(value).expect("fixture is a Pod")
    }

    #[test]
    fn phases_conditions_and_nodes_are_read_as_kubernetes_writes_them() {
        let running = pod(json!({
            "metadata": {"name": "a"},
            "spec": {"nodeName": "gpu-0", "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }));
        assert!(!is_finished(&running) && is_ready(&running) && !is_terminating(&running));
        assert_eq!(node_name(&running), Some("gpu-0"));
        assert!(requests_gpus(&running));

        let pending = pod(json!({
            "metadata": {"name": "b", "deletionTimestamp": "2026-11-25T17:00:00Z"},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]},
            "status": {"phase": "Failed", "conditions": [{"type": "Ready", "status": "False"}]},
        }));
        assert!(is_finished(&pending) && !is_ready(&pending) && is_terminating(&pending));
        assert_eq!(node_name(&pending), None);
        assert!(!requests_gpus(&pending));
    }

    #[test]
    fn a_pod_serves_a_model_only_when_the_operator_labelled_it_as_a_server() {
        let labels = |managed_by: &str, component: &str| {
            pod(json!({"metadata": {"name": "p", "namespace": "ml", "labels": {
                LABEL_MANAGED_BY: managed_by, LABEL_COMPONENT: component, LABEL_NAME: "resnet"}}}))
        };
        assert_eq!(
            served_model(&labels(MANAGED_BY, COMPONENT_SERVER)),
            Some(("ml".to_string(), "resnet".to_string()))
        );
        assert_eq!(
            served_model(&labels("helm", COMPONENT_SERVER)),
            None,
            "another owner's pod"
        );
        assert_eq!(
            served_model(&labels(MANAGED_BY, "model-validation")),
            None,
            "a validation pod"
        );
    }
}
