//! The wire format of `GET /v1/samples`, the node agent's answer to "which GPUs does each pod
//! hold, and how busy are they": what the operator's custom-metrics API reads to serve
//! `pods/*/gpu_utilization`. This module depends on serde alone; depend on `node-agent` with
//! `default-features = false` to get it without NVML, gRPC or HTTP.
//!
//! ```json
//! {
//!   "node": "gpu-node-1",
//!   "sampledAt": "2025-01-01T10:00:00.120Z",
//!   "intervalSeconds": 1.0,
//!   "podResourcesAt": "2025-01-01T09:59:55.002Z",
//!   "gpus": [
//!     {"uuid": "GPU-8f6b…", "index": 0, "modelName": "NVIDIA A100-SXM4-80GB",
//!      "utilizationPercent": 87, "memoryUtilizationPercent": 41,
//!      "fbUsedMiB": 40960, "fbFreeMiB": 40000, "timestamp": "2025-01-01T10:00:00.118Z"},
//!     {"uuid": "GPU-1c2d…", "index": 1, "modelName": "NVIDIA A100-SXM4-80GB",
//!      "fbUsedMiB": 2048, "fbFreeMiB": 78000, "timestamp": "2025-01-01T10:00:00.119Z",
//!      "migDevices": [{"uuid": "MIG-4a5b…", "profile": "1g.10gb", "fbUsedMiB": 1024, "fbFreeMiB": 8960}]}
//!   ],
//!   "pods": [
//!     {"namespace": "ml", "pod": "resnet-7d9f-x2", "container": "triton", "resource": "nvidia.com/gpu",
//!      "deviceIds": ["GPU-8f6b…"], "gpus": ["GPU-8f6b…"]},
//!     {"namespace": "ml", "pod": "bert-0", "container": "torchserve", "resource": "nvidia.com/mig-1g.10gb",
//!      "deviceIds": ["MIG-4a5b…"], "gpus": ["GPU-1c2d…"], "migDevices": ["MIG-4a5b…"]}
//!   ]
//! }
//! ```
//!
//! - `gpus` holds one entry per GPU read in the last sample; a GPU that failed to read is absent.
//!   A reading NVML does not support on that GPU (utilisation on a MIG-enabled GPU, power on some
//!   boards) is left out rather than reported as 0.
//! - `pods` holds one entry per container and GPU resource, from the kubelet's PodResources API:
//!   `deviceIds` as the kubelet lists them (`GPU-<uuid>::<n>` for time-sliced replicas), `gpus`
//!   the physical GPUs behind them (replica suffixes stripped, MIG devices resolved to their parent),
//!   `migDevices` the MIG devices among them. Several containers may share a time-sliced GPU: each
//!   then sees the whole GPU's utilisation. NVML has no utilisation for a MIG device.
//! - Devices a container holds through a DRA ResourceClaim of NVIDIA's driver come as one entry per
//!   container and claim, `resource` `gpu.nvidia.com` and `deviceIds` `<pool>/<device>` as the
//!   kubelet names them; `gpus` and `migDevices` come from the node's ResourceSlices (the device's
//!   `uuid`, a MIG device's `parentUUID`), and stay empty while no slice read describes the device.
//! - Times are RFC 3339 in UTC. `podResourcesAt` is absent while the kubelet has not answered.
//! - Before the first sample (or while NVML is unavailable) the endpoint answers 503.

use serde::{Deserialize, Serialize};

/// Where the agent serves [`NodeSamples`].
pub const SAMPLES_PATH: &str = "/v1/samples";

/// Everything the agent knows about one node's GPUs and who holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSamples {
    pub node: String,
    pub sampled_at: String,
    pub interval_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_resources_at: Option<String>,
    pub gpus: Vec<GpuSample>,
    pub pods: Vec<ContainerGpus>,
}

/// The latest reading of one physical GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuSample {
    pub uuid: String,
    pub index: u32,
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_utilization_percent: Option<u32>,
    #[serde(rename = "fbUsedMiB", default, skip_serializing_if = "Option::is_none")]
    pub fb_used_mib: Option<u64>,
    #[serde(rename = "fbFreeMiB", default, skip_serializing_if = "Option::is_none")]
    pub fb_free_mib: Option<u64>,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig_devices: Vec<MigSample>,
}

/// One MIG device of a GPU in MIG mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigSample {
    pub uuid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(rename = "fbUsedMiB", default, skip_serializing_if = "Option::is_none")]
    pub fb_used_mib: Option<u64>,
    #[serde(rename = "fbFreeMiB", default, skip_serializing_if = "Option::is_none")]
    pub fb_free_mib: Option<u64>,
}

/// The GPU devices of one resource held by one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGpus {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub resource: String,
    pub device_ids: Vec<String>,
    pub gpus: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig_devices: Vec<String>,
}

impl NodeSamples {
    /// The mean GPU utilisation, in percent, of the distinct GPUs that any container of the pod
    /// holds; `None` when the pod holds no GPU with a utilisation reading on this node.
    pub fn pod_gpu_utilization(&self, namespace: &str, pod: &str) -> Option<f64> {
        let mut held: Vec<&str> = self
            .pods
            .iter()
            .filter(|c| c.namespace == namespace && c.pod == pod)
            .flat_map(|c| c.gpus.iter().map(String::as_str))
            .collect();
        held.sort_unstable();
        held.dedup();
        let readings: Vec<u32> = held
            .iter()
            .filter_map(|uuid| self.gpus.iter().find(|g| g.uuid == *uuid)?.utilization_percent)
            .collect();
        if readings.is_empty() {
            return None;
        }
        Some(readings.iter().map(|&u| f64::from(u)).sum::<f64>() / readings.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(uuid: &str, utilization: Option<u32>) -> GpuSample {
        GpuSample {
            uuid: uuid.into(),
            index: 0,
            model_name: "NVIDIA A100-SXM4-80GB".into(),
            utilization_percent: utilization,
            memory_utilization_percent: None,
            fb_used_mib: Some(1),
            fb_free_mib: Some(2),
            timestamp: "2025-01-01T00:00:00Z".into(),
            mig_devices: vec![],
        }
    }

    fn holder(pod: &str, container: &str, gpus: &[&str]) -> ContainerGpus {
        ContainerGpus {
            namespace: "ml".into(),
            pod: pod.into(),
            container: container.into(),
            resource: "nvidia.com/gpu".into(),
            device_ids: gpus.iter().map(|g| format!("{g}::1")).collect(),
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
            mig_devices: vec![],
        }
    }

    fn node(gpus: Vec<GpuSample>, pods: Vec<ContainerGpus>) -> NodeSamples {
        NodeSamples {
            node: "n".into(),
            sampled_at: "2025-01-01T00:00:00Z".into(),
            interval_seconds: 1.0,
            pod_resources_at: None,
            gpus,
            pods,
        }
    }

    #[test]
    fn pod_utilization_averages_distinct_gpus_across_containers() {
        let samples = node(
            vec![gpu("GPU-a", Some(80)), gpu("GPU-b", Some(20)), gpu("GPU-c", Some(0))],
            vec![
                holder("p", "one", &["GPU-a", "GPU-b"]),
                holder("p", "two", &["GPU-a"]),
                holder("q", "x", &["GPU-c"]),
            ],
        );
        assert_eq!(samples.pod_gpu_utilization("ml", "p"), Some(50.0));
        assert_eq!(samples.pod_gpu_utilization("ml", "q"), Some(0.0));
        assert_eq!(samples.pod_gpu_utilization("ml", "absent"), None);
    }

    #[test]
    fn gpus_without_a_reading_are_ignored() {
        let samples = node(
            vec![gpu("GPU-a", None), gpu("GPU-b", Some(30))],
            vec![
                holder("p", "c", &["GPU-a", "GPU-b", "GPU-failed"]),
                holder("m", "c", &["GPU-a"]),
            ],
        );
        assert_eq!(samples.pod_gpu_utilization("ml", "p"), Some(30.0));
        assert_eq!(samples.pod_gpu_utilization("ml", "m"), None);
    }

    #[test]
    fn wire_names_are_the_documented_ones() {
        let samples = node(vec![gpu("GPU-a", Some(5))], vec![holder("p", "c", &["GPU-a"])]);
        let json = serde_json::to_value(&samples).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "node": "n", "sampledAt": "2025-01-01T00:00:00Z", "intervalSeconds": 1.0,
                "gpus": [{"uuid": "GPU-a", "index": 0, "modelName": "NVIDIA A100-SXM4-80GB",
                          "utilizationPercent": 5, "fbUsedMiB": 1, "fbFreeMiB": 2,
                          "timestamp": "2025-01-01T00:00:00Z"}],
                "pods": [{"namespace": "ml", "pod": "p", "container": "c", "resource": "nvidia.com/gpu",
                          "deviceIds": ["GPU-a::1"], "gpus": ["GPU-a"]}]
            })
        );
        let back: NodeSamples = serde_json::from_value(json).unwrap();
        assert_eq!(back, samples);
    }
}
