//! Pod attribution from the kubelet's PodResources v1 gRPC API on its unix socket, refreshed on
//! its own interval into the shared snapshot, so that scrapes never reach the kubelet. At the
//! default 10 s that is 0.1 calls a second against the kubelet's limit of 100 (burst 10), which
//! it shares with every other client on the node.
//!
//! A container's devices of NVIDIA's DRA driver (`dynamic_resources`, by claim) are described
//! through the node's ResourceSlices before each publish ([`SliceReader`]), so the rest of the
//! agent sees which NVML device each claimed device is.

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
    device_id::{NVIDIA_DRA_DRIVER, is_gpu_resource},
    resource_slices::{SliceDirectory, SliceReader},
    snapshot::{AgentState, Claim, ClaimedDevice, ContainerAllocation, PodAllocations},
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

/// The containers holding GPU resources or claimed devices of NVIDIA's DRA driver (not yet
/// described by a slice), sorted; other resources, other drivers and empty allocations dropped.
pub fn gpu_allocations(response: ListPodResourcesResponse) -> Vec<ContainerAllocation> {
    let mut allocations = Vec::new();
    for pod in response.pod_resources {
        for container in pod.containers {
            let holder = |resource, device_ids, claim| ContainerAllocation {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                container: container.name.clone(),
                resource,
                device_ids,
                claim,
            };
            for devices in container.devices {
                if !is_gpu_resource(&devices.resource_name) || devices.device_ids.is_empty() {
                    continue;
                }
                allocations.push(holder(devices.resource_name, devices.device_ids, None));
            }
            for claim in container.dynamic_resources {
                let devices: Vec<ClaimedDevice> = claim
                    .claim_resources
                    .into_iter()
                    .filter(|resource| resource.driver_name == NVIDIA_DRA_DRIVER)
                    .map(|resource| ClaimedDevice {
                        driver: resource.driver_name,
                        pool: resource.pool_name,
                        device: resource.device_name,
                        slice: None,
                    })
                    .collect();
                if devices.is_empty() {
                    continue;
                }
                let device_ids = devices.iter().map(|d| format!("{}/{}", d.pool, d.device)).collect();
                let claim = Claim {
                    namespace: claim.claim_namespace,
                    name: claim.claim_name,
                    devices,
                };
                allocations.push(holder(NVIDIA_DRA_DRIVER.to_owned(), device_ids, Some(claim)));
            }
        }
    }
    allocations.sort();
    allocations
}

/// Every claimed device of the allocations, as `(pool, device)`.
fn claimed_devices(allocations: &[ContainerAllocation]) -> impl Iterator<Item = (&str, &str)> {
    allocations
        .iter()
        .filter_map(|a| a.claim.as_ref())
        .flat_map(|claim| &claim.devices)
        .map(|device| (device.pool.as_str(), device.device.as_str()))
}

/// Says of each claimed device what the directory knows of it.
pub fn describe_claimed_devices(allocations: &mut [ContainerAllocation], directory: &SliceDirectory) {
    for claim in allocations.iter_mut().filter_map(|a| a.claim.as_mut()) {
        for device in &mut claim.devices {
            device.slice = directory.get(&device.pool, &device.device).cloned();
        }
    }
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
    pub slices: SliceReader,
}

impl PodResourcesRefresher {
    /// Refreshes until the task is dropped. Failures retry after 1 s, doubling up to the interval.
    pub async fn run(mut self) {
        let timeout = self.interval.min(Duration::from_secs(5));
        let mut client = PodResourcesListerClient::new(connect_lazy(self.socket.clone(), timeout));
        let mut retry: Option<Duration> = None;
        let mut last_failure: Option<String> = None;
        loop {
            let delay = match client.list(ListPodResourcesRequest {}).await {
                Ok(response) => {
                    let mut containers = gpu_allocations(response.into_inner());
                    let directory = self.slices.directory_for(claimed_devices(&containers)).await;
                    describe_claimed_devices(&mut containers, directory);
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

    fn claim_resource(driver: &str, device: &str) -> ClaimResource {
        ClaimResource {
            cdi_devices: vec![],
            driver_name: driver.into(),
            pool_name: "node-1".into(),
            device_name: device.into(),
        }
    }

    /// What the kubelet lists for a pod whose container holds two GPUs of claim `dra-gpu-x7k2p`
    /// (and a NIC of another driver in the same claim), and a sidecar that names no claim.
    fn dra_pod() -> PodResources {
        PodResources {
            name: "dra".into(),
            namespace: "ml".into(),
            containers: vec![
                ContainerResources {
                    name: "main".into(),
                    dynamic_resources: vec![DynamicResource {
                        claim_name: "dra-gpu-x7k2p".into(),
                        claim_namespace: "ml".into(),
                        claim_resources: vec![
                            claim_resource("gpu.nvidia.com", "gpu-0"),
                            claim_resource("nic.example.com", "eth-0"),
                            claim_resource("gpu.nvidia.com", "gpu-1"),
                        ],
                    }],
                    ..Default::default()
                },
                ContainerResources {
                    name: "sidecar".into(),
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn claimed_devices_of_nvidias_driver_are_kept_by_claim() {
        let allocations = gpu_allocations(ListPodResourcesResponse {
            pod_resources: vec![dra_pod()],
        });
        assert_eq!(allocations.len(), 1, "{allocations:#?}");
        let allocation = &allocations[0];
        assert_eq!(
            (allocation.container.as_str(), allocation.resource.as_str()),
            ("main", "gpu.nvidia.com")
        );
        assert_eq!(allocation.device_ids, ["node-1/gpu-0", "node-1/gpu-1"]);
        let claim = allocation.claim.as_ref().unwrap();
        assert_eq!((claim.namespace.as_str(), claim.name.as_str()), ("ml", "dra-gpu-x7k2p"));
        assert!(claim.devices.iter().all(|d| d.slice.is_none()));
    }

    #[test]
    fn claimed_devices_are_described_by_the_slice_directory() {
        let slice: k8s_openapi::api::resource::v1::ResourceSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-1-gpu.nvidia.com"},
            "spec": {"driver": "gpu.nvidia.com", "nodeName": "node-1",
                     "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1},
                     "devices": [{"name": "gpu-1", "attributes": {"type": {"string": "gpu"}, "uuid": {"string": "GPU-b"}}}]}
        }))
        .unwrap();
        let mut allocations = gpu_allocations(ListPodResourcesResponse {
            pod_resources: vec![dra_pod()],
        });
        assert_eq!(
            claimed_devices(&allocations).collect::<Vec<_>>(),
            [("node-1", "gpu-0"), ("node-1", "gpu-1")]
        );
        describe_claimed_devices(&mut allocations, &SliceDirectory::of(&[slice]));
        let devices = &allocations[0].claim.as_ref().unwrap().devices;
        assert_eq!(devices[0].slice, None);
        assert_eq!(
            devices[1].slice,
            Some(crate::snapshot::SliceDevice::Gpu { uuid: "GPU-b".into() })
        );
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
