//! The node's ResourceSlices of NVIDIA's DRA driver, read from the API server: the only place that
//! says which GPU a device allocated through a ResourceClaim is. The kubelet names such a device
//! by driver, pool and device (`gpu-0`, `gpu-0-mig-1g10gb-3`, names nobody should parse); the
//! slice's `uuid` attribute (and for a MIG device `parentUUID`) is the NVML UUID the sampler reads.
//!
//! The slices are read only when the kubelet lists a claimed device the agent does not know yet,
//! or the last read is older than [`MAX_AGE_INTERVALS`] reads apart, and never more often than
//! once per `min_interval`; each read (connecting included) is bounded by a timeout. A node
//! without DRA devices never calls the API server, so there the agent needs no RBAC and no token.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::resource::v1::{Device, DeviceAttribute, ResourceSlice};
use kube::{Api, Client, api::ListParams};
use tracing::{debug, info, warn};

use crate::{
    device_id::NVIDIA_DRA_DRIVER,
    snapshot::SliceDevice,
    telemetry::{AgentMetrics, with_causes},
};

/// A directory this many `min_interval`s old is read again at the next claimed device, known or
/// not: a MIG layout can change under the same device names.
pub const MAX_AGE_INTERVALS: u32 = 10;

/// What the node's slices say of each device of NVIDIA's driver, by pool and device name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceDirectory {
    pools: BTreeMap<String, BTreeMap<String, SliceDevice>>,
}

impl SliceDirectory {
    /// The devices of NVIDIA's driver that say which NVML device they are; devices of other
    /// drivers, of an unknown `type`, or without their UUIDs are left out.
    pub fn of(slices: &[ResourceSlice]) -> Self {
        let mut pools: BTreeMap<String, BTreeMap<String, SliceDevice>> = BTreeMap::new();
        for slice in slices.iter().filter(|s| s.spec.driver == NVIDIA_DRA_DRIVER) {
            let devices = pools.entry(slice.spec.pool.name.clone()).or_default();
            for device in slice.spec.devices.iter().flatten() {
                if let Some(described) = slice_device(device) {
                    devices.insert(device.name.clone(), described);
                }
            }
        }
        Self { pools }
    }

    pub fn get(&self, pool: &str, device: &str) -> Option<&SliceDevice> {
        self.pools.get(pool)?.get(device)
    }

    pub fn device_count(&self) -> usize {
        self.pools.values().map(BTreeMap::len).sum()
    }
}

fn slice_device(device: &Device) -> Option<SliceDevice> {
    let attributes = device.attributes.as_ref()?;
    // A driver may write its own attributes unqualified (NVIDIA's does) or qualified by its name.
    let string = |name: &str| {
        let value: &DeviceAttribute = attributes
            .get(name)
            .or_else(|| attributes.get(&format!("{NVIDIA_DRA_DRIVER}/{name}")))?;
        value.string.clone()
    };
    match string("type")?.as_str() {
        "gpu" => Some(SliceDevice::Gpu { uuid: string("uuid")? }),
        "mig" => Some(SliceDevice::Mig {
            uuid: string("uuid")?,
            parent_uuid: string("parentUUID")?,
            profile: string("profile"),
        }),
        _ => None,
    }
}

/// Reads the slices of one node on demand and keeps the last good [`SliceDirectory`].
pub struct SliceReader {
    node: String,
    min_interval: Duration,
    timeout: Duration,
    metrics: AgentMetrics,
    /// Made at the first read: in-cluster configuration or `KUBECONFIG`.
    client: Option<Client>,
    directory: SliceDirectory,
    last_attempt: Option<Instant>,
    last_read: Option<Instant>,
    last_failure: Option<String>,
}

impl SliceReader {
    pub fn new(node: String, min_interval: Duration, metrics: AgentMetrics) -> Self {
        Self {
            node,
            min_interval,
            timeout: min_interval.min(Duration::from_secs(5)),
            metrics,
            client: None,
            directory: SliceDirectory::default(),
            last_attempt: None,
            last_read: None,
            last_failure: None,
        }
    }

    /// The directory for these claimed `(pool, device)`s, read again first when one of them is
    /// unknown or the directory is old, unless the last attempt was less than `min_interval` ago.
    pub async fn directory_for<'d>(
        &mut self,
        claimed: impl IntoIterator<Item = (&'d str, &'d str)>,
    ) -> &SliceDirectory {
        let mut any = false;
        let mut unknown = false;
        for (pool, device) in claimed {
            any = true;
            unknown |= self.directory.get(pool, device).is_none();
        }
        let old = self
            .last_read
            .is_none_or(|read| read.elapsed() > self.min_interval * MAX_AGE_INTERVALS);
        let may_read = self.last_attempt.is_none_or(|at| at.elapsed() >= self.min_interval);
        if any && (unknown || old) && may_read {
            self.read().await;
        }
        &self.directory
    }

    async fn read(&mut self) {
        self.last_attempt = Some(Instant::now());
        let outcome = match tokio::time::timeout(self.timeout, self.list()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match outcome {
            Ok(slices) => {
                self.directory = SliceDirectory::of(&slices);
                self.last_read = Some(Instant::now());
                self.metrics.resource_slice_reads.inc();
                if self.last_failure.take().is_some() || self.metrics.resource_slice_reads.get() == 1 {
                    info!(
                        node = %self.node,
                        slices = slices.len(),
                        devices = self.directory.device_count(),
                        "read this node's ResourceSlices: GPUs allocated through DRA claims are attributed to their pods"
                    );
                }
            }
            Err(reason) => {
                self.metrics.resource_slice_read_errors.inc();
                if self.last_failure.as_ref() != Some(&reason) {
                    warn!(
                        node = %self.node,
                        error = %reason,
                        retry_seconds = self.min_interval.as_secs_f64(),
                        "cannot read this node's ResourceSlices: GPUs allocated through DRA claims carry no pod labels until it can (device-plugin GPUs are unaffected); retrying"
                    );
                } else {
                    debug!(error = %reason, "this node's ResourceSlices are still unreadable");
                }
                self.last_failure = Some(reason);
            }
        }
    }

    async fn list(&mut self) -> Result<Vec<ResourceSlice>, String> {
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let client = connect(self.timeout).await?;
                self.client = Some(client.clone());
                client
            }
        };
        // The API server selects on both fields (the kubelet lists its node's slices this way).
        let params =
            ListParams::default().fields(&format!("spec.nodeName={},spec.driver={NVIDIA_DRA_DRIVER}", self.node));
        let listed = Api::<ResourceSlice>::all(client)
            .list(&params)
            .await
            .map_err(|error| with_causes(error.to_string(), &error))?;
        Ok(listed.items)
    }
}

async fn connect(timeout: Duration) -> Result<Client, String> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|error| with_causes(format!("no API server configuration: {error}"), &error))?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    Client::try_from(config).map_err(|error| with_causes(error.to_string(), &error))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice as the API server answers it, shaped as NVIDIA's driver publishes one.
    fn slice(json: &str) -> ResourceSlice {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    const WHOLE_GPUS: &str = r#"{
        "metadata": {"name": "node-1-gpu.nvidia.com"},
        "spec": {"driver": "gpu.nvidia.com", "nodeName": "node-1",
                 "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1},
                 "devices": [
            {"name": "gpu-0", "attributes": {"type": {"string": "gpu"}, "uuid": {"string": "GPU-aaaa"},
                                              "productName": {"string": "NVIDIA H100 80GB HBM3"}, "index": {"int": 0}},
             "capacity": {"memory": {"value": "80Gi"}}},
            {"name": "gpu-1", "attributes": {"gpu.nvidia.com/type": {"string": "gpu"},
                                              "gpu.nvidia.com/uuid": {"string": "GPU-bbbb"}}},
            {"name": "gpu-2", "attributes": {"type": {"string": "gpu"}}},
            {"name": "vfio-0", "attributes": {"type": {"string": "vfio"}, "uuid": {"string": "GPU-cccc"}}}
        ]}}"#;

    const MIG_DEVICES: &str = r#"{
        "metadata": {"name": "node-1-mig"},
        "spec": {"driver": "gpu.nvidia.com", "nodeName": "node-1",
                 "pool": {"name": "node-1-mig", "generation": 3, "resourceSliceCount": 1},
                 "devices": [
            {"name": "gpu-0-mig-1g10gb-0", "attributes": {"type": {"string": "mig"}, "uuid": {"string": "MIG-1111"},
                                                          "parentUUID": {"string": "GPU-dddd"}, "profile": {"string": "1g.10gb"}}},
            {"name": "gpu-0-mig-orphan", "attributes": {"type": {"string": "mig"}, "uuid": {"string": "MIG-2222"}}}
        ]}}"#;

    const OTHER_DRIVER: &str = r#"{
        "metadata": {"name": "node-1-nic"},
        "spec": {"driver": "nic.example.com", "nodeName": "node-1",
                 "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1},
                 "devices": [{"name": "gpu-3", "attributes": {"type": {"string": "gpu"}, "uuid": {"string": "GPU-nic"}}}]}}"#;

    #[test]
    fn whole_gpus_map_to_their_uuid_qualified_or_not() {
        let directory = SliceDirectory::of(&[slice(WHOLE_GPUS)]);
        assert_eq!(
            directory.get("node-1", "gpu-0"),
            Some(&SliceDevice::Gpu {
                uuid: "GPU-aaaa".into()
            })
        );
        assert_eq!(
            directory.get("node-1", "gpu-1"),
            Some(&SliceDevice::Gpu {
                uuid: "GPU-bbbb".into()
            })
        );
        // No UUID, or a type this agent cannot read: not a device it can attribute.
        assert_eq!(directory.get("node-1", "gpu-2"), None);
        assert_eq!(directory.get("node-1", "vfio-0"), None);
        assert_eq!(directory.device_count(), 2);
    }

    #[test]
    fn mig_devices_map_to_their_own_uuid_and_their_gpu() {
        let directory = SliceDirectory::of(&[slice(WHOLE_GPUS), slice(MIG_DEVICES)]);
        assert_eq!(
            directory.get("node-1-mig", "gpu-0-mig-1g10gb-0"),
            Some(&SliceDevice::Mig {
                uuid: "MIG-1111".into(),
                parent_uuid: "GPU-dddd".into(),
                profile: Some("1g.10gb".into()),
            })
        );
        // Without parentUUID the GPU behind it is unknown.
        assert_eq!(directory.get("node-1-mig", "gpu-0-mig-orphan"), None);
        // Pools keep device names apart.
        assert_eq!(directory.get("node-1", "gpu-0-mig-1g10gb-0"), None);
    }

    #[test]
    fn other_drivers_are_ignored() {
        let directory = SliceDirectory::of(&[slice(OTHER_DRIVER), slice(WHOLE_GPUS)]);
        assert_eq!(directory.get("node-1", "gpu-3"), None);
        assert_eq!(directory.device_count(), 2);
    }

    #[tokio::test]
    async fn nothing_is_read_while_no_device_is_claimed() {
        let registry = prometheus::Registry::new();
        let metrics = AgentMetrics::register(&registry).unwrap();
        let mut reader = SliceReader::new("node-1".into(), Duration::from_secs(30), metrics.clone());
        assert_eq!(reader.directory_for([]).await, &SliceDirectory::default());
        assert_eq!(
            metrics.resource_slice_reads.get() + metrics.resource_slice_read_errors.get(),
            0
        );
    }
}
