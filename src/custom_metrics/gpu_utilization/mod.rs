//! `gpu_utilization`: each pod's mean utilisation over the GPUs it holds, from the samples of its
//! node's agent ([`node_agents`]), pulled per request so a value is never older than the
//! agent's own interval plus one round trip.

pub mod node_agents;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use futures::future;
use k8s_openapi::jiff::Timestamp;

use crate::vocabulary::cached::CachedPod;
use kube::ResourceExt;
use tracing::{debug, warn};

use self::node_agents::{FreshSamples, SampleSource, SamplesError};
use crate::vocabulary::{PodValue, pods::node_name};

/// The utilisation of every pod in `pods` whose node agent has a fresh sample of its GPUs.
pub async fn values(source: &SampleSource, pods: &[Arc<CachedPod>]) -> Vec<PodValue> {
    let samples = fetch_nodes(source, pods).await;
    pod_values(pods, &samples)
}

/// The samples of every node that runs one of `pods`, asked for all at once; nodes whose agent
/// failed are absent (and logged), so their pods get no value.
async fn fetch_nodes(source: &SampleSource, pods: &[Arc<CachedPod>]) -> BTreeMap<String, FreshSamples> {
    let nodes: BTreeSet<&str> = pods.iter().filter_map(|p| node_name(p)).collect();
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
pub fn pod_values(pods: &[Arc<CachedPod>], samples: &BTreeMap<String, FreshSamples>) -> Vec<PodValue> {
    let mut values: Vec<PodValue> = pods
        .iter()
        .filter_map(|pod| {
            let fresh = samples.get(node_name(pod)?)?;
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

#[cfg(test)]
mod tests {
    use node_agent::samples::{ContainerGpus, GpuSample, NodeSamples};
    use serde_json::json;

    use super::*;

    fn pod(name: &str, node: Option<&str>) -> Arc<CachedPod> {
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
        let values = pod_values(&pods, &samples);
        let summary: Vec<(&str, f64, i64)> = values
            .iter()
            .map(|v| (v.pod.as_str(), v.value, v.window_seconds))
            .collect();
        assert_eq!(summary, [("a", 56.5, 1), ("b", 10.0, 1)]);
    }
}
