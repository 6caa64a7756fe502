//! Pod attribution from the kubelet's PodResources v1 gRPC API on its unix socket, refreshed on
//! its own interval into the shared snapshot, so that scrapes never reach the kubelet. At the
//! default 10 s that is 0.1 calls a second against the kubelet's limit of 100 (burst 10), which
//! it shares with every other client on the node.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;
use tracing::{debug, info, warn};

use crate::{
    device_id::is_gpu_resource,
    snapshot::{AgentState, ContainerAllocation, PodAllocations},
    telemetry::{AgentMetrics, with_causes},
};

/// Generated from `proto/podresources/v1/api.proto`: the client, and the server the fake kubelet uses.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("v1");
}

use proto::{ListPodResourcesRequest, ListPodResourcesResponse, pod_resources_lister_client::PodResourcesListerClient};

/// The last good answer is kept through this many refresh intervals of failures (a kubelet
/// restart), then dropped rather than attribute GPUs to pods that may be gone.
const STALE_AFTER_INTERVALS: u32 = 3;

/// The containers holding GPU resources, sorted; other resources and empty allocations dropped.
pub fn gpu_allocations(response: ListPodResourcesResponse) -> Vec<ContainerAllocation> {
    let mut allocations = Vec::new();
    for pod in response.pod_resources {
        for container in pod.containers {
            for devices in container.devices {
                if !is_gpu_resource(&devices.resource_name) || devices.device_ids.is_empty() {
                    continue;
                }
                allocations.push(ContainerAllocation {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    container: container.name.clone(),
                    resource: devices.resource_name,
                    device_ids: devices.device_ids,
                });
            }
        }
    }
    allocations.sort();
    allocations
}

/// A channel to the kubelet that connects on first use and reconnects after the kubelet restarts
/// (which recreates the socket). The URI is a placeholder: the connector dials the socket.
pub fn connect_lazy(socket: PathBuf, timeout: Duration) -> Channel {
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector_lazy(service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
}

pub struct PodResourcesRefresher {
    pub socket: PathBuf,
    pub interval: Duration,
    pub state: Arc<AgentState>,
    pub metrics: AgentMetrics,
}

impl PodResourcesRefresher {
    /// Refreshes until the task is dropped. Failures retry after 1 s, doubling up to the interval.
    pub async fn run(self) {
        let timeout = self.interval.min(Duration::from_secs(5));
        let mut client = PodResourcesListerClient::new(connect_lazy(self.socket.clone(), timeout));
        let mut retry: Option<Duration> = None;
        let mut last_failure: Option<String> = None;
        loop {
            let delay = match client.list(ListPodResourcesRequest {}).await {
                Ok(response) => {
                    let containers = gpu_allocations(response.into_inner());
                    if last_failure.take().is_some() || self.state.pods().is_none() {
                        info!(containers = containers.len(), "kubelet PodResources API answering");
                    }
                    self.metrics.pod_resources_refreshes.inc();
                    self.state.publish_pods(Some(PodAllocations {
                        containers,
                        fetched_at: SystemTime::now(),
                        fetched: Instant::now(),
                    }));
                    retry = None;
                    self.interval
                }
                Err(status) => {
                    self.metrics.pod_resources_refresh_errors.inc();
                    let reason = describe(&status);
                    if last_failure.as_ref() != Some(&reason) {
                        warn!(
                            socket = %self.socket.display(),
                            error = %reason,
                            "kubelet PodResources API unavailable: GPU metrics carry no pod labels until it answers; retrying"
                        );
                    } else {
                        debug!(error = %reason, "kubelet PodResources API still unavailable");
                    }
                    last_failure = Some(reason);
                    self.drop_stale_pods();
                    let delay = retry.map_or(Duration::from_secs(1), |d| d * 2).min(self.interval);
                    retry = Some(delay);
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    fn drop_stale_pods(&self) {
        let Some(pods) = self.state.pods() else { return };
        if pods.fetched.elapsed() > self.interval * STALE_AFTER_INTERVALS {
            warn!(
                age_seconds = pods.fetched.elapsed().as_secs(),
                "dropping pod attribution the kubelet has not confirmed for {STALE_AFTER_INTERVALS} refresh intervals"
            );
            self.state.publish_pods(None);
        }
    }
}

fn describe(status: &tonic::Status) -> String {
    with_causes(format!("{:?}: {}", status.code(), status.message()), status)
}

#[cfg(test)]
mod tests {
    use super::{proto::*, *};

    fn devices(resource: &str, ids: &[&str]) -> ContainerDevices {
        ContainerDevices {
            resource_name: resource.into(),
            device_ids: ids.iter().map(|id| id.to_string()).collect(),
            topology: None,
        }
    }

    fn container(name: &str, devices: Vec<ContainerDevices>) -> ContainerResources {
        ContainerResources {
            name: name.into(),
            devices,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_gpu_resources_only_sorted() {
        let response = ListPodResourcesResponse {
            pod_resources: vec![
                PodResources {
                    name: "zeta".into(),
                    namespace: "ml".into(),
                    containers: vec![container(
                        "main",
                        vec![
                            devices("nvidia.com/gpu.shared", &["GPU-a::1"]),
                            devices("example.com/fpga", &["fpga-0"]),
                        ],
                    )],
                },
                PodResources {
                    name: "alpha".into(),
                    namespace: "ml".into(),
                    containers: vec![
                        container("sidecar", vec![]),
                        container(
                            "main",
                            vec![
                                devices("nvidia.com/mig-1g.10gb", &["MIG-b"]),
                                devices("nvidia.com/gpu", &[]),
                            ],
                        ),
                    ],
                },
            ],
        };
        let allocations = gpu_allocations(response);
        let summary: Vec<(&str, &str, &str, Vec<String>)> = allocations
            .iter()
            .map(|a| {
                (
                    a.pod.as_str(),
                    a.container.as_str(),
                    a.resource.as_str(),
                    a.device_ids.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("alpha", "main", "nvidia.com/mig-1g.10gb", vec!["MIG-b".to_string()]),
                ("zeta", "main", "nvidia.com/gpu.shared", vec!["GPU-a::1".to_string()]),
            ]
        );
    }
}
