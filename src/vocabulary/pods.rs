//! Questions every layer asks of a Pod: has it finished, is it ready, where does it run, does it
//! hold GPUs.

use k8s_openapi::api::core::v1::Pod;

use super::gpu::GPU_RESOURCE_PREFIX;

/// Succeeded or Failed: its containers will not run again, and its resources are free.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Marked for deletion: it may still run, but it is going away.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The kubelet reports the pod Ready (its readiness probe passes): the Service sends it traffic.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node the scheduler bound the pod to; `None` while it is Pending.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// Some container has an NVIDIA extended resource among its limits.
pub fn requests_gpus(pod: &Pod) -> bool {
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

    fn pod(value: serde_json::Value) -> Pod {
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
}
