//! What the sampler and the pod-resources refresher publish and what requests read: immutable
//! snapshots swapped atomically, so that a scrape never waits on NVML or on the kubelet.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};

/// One physical GPU as NVML reported it. `None` is a reading NVML does not support on this GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub utilization_gpu: Option<u32>,
    pub utilization_memory: Option<u32>,
    pub fb_used_mib: Option<u64>,
    pub fb_free_mib: Option<u64>,
    pub power_watts: Option<f64>,
    pub temperature_c: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    /// Empty unless the GPU is in MIG mode.
    pub mig_devices: Vec<MigReading>,
    pub read_at: SystemTime,
}

/// One MIG device: NVML reports its memory but not its utilisation.
#[derive(Debug, Clone, PartialEq)]
pub struct MigReading {
    pub uuid: String,
    /// From the device name, e.g. `1g.10gb` in `NVIDIA A100-SXM4-80GB MIG 1g.10gb`.
    pub profile: Option<String>,
    pub fb_used_mib: Option<u64>,
    pub fb_free_mib: Option<u64>,
}

/// Every GPU that read cleanly in one pass; a GPU that failed is absent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub gpus: Vec<GpuReading>,
    pub taken_at: SystemTime,
    pub taken: Instant,
}

/// One container's devices of one GPU resource, or of one ResourceClaim, as the kubelet listed them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerAllocation {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The extended resource (`nvidia.com/gpu`, …), or for a claim the DRA driver (`gpu.nvidia.com`).
    pub resource: String,
    /// As the device plugin names them; for a claim `<pool>/<device>`, one per claimed device.
    pub device_ids: Vec<String>,
    /// Set for devices allocated through a ResourceClaim (DRA).
    pub claim: Option<Claim>,
}

/// A ResourceClaim's devices of NVIDIA's DRA driver that the kubelet gave one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    /// In the order of the allocation's `device_ids`.
    pub devices: Vec<ClaimedDevice>,
}

/// One allocated device as the kubelet names it, with what the node's ResourceSlice says of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimedDevice {
    pub driver: String,
    pub pool: String,
    pub device: String,
    /// `None` while no ResourceSlice of the node has read this device (or the agent cannot read them).
    pub slice: Option<SliceDevice>,
}

/// A device of NVIDIA's DRA driver as its ResourceSlice describes it, reduced to the NVML UUIDs
/// that tie it to what the sampler reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SliceDevice {
    /// A whole GPU (`type: gpu`), by its `uuid` attribute.
    Gpu { uuid: String },
    /// A MIG device (`type: mig`): its own `uuid`, its GPU's `parentUUID`, its `profile`.
    Mig {
        uuid: String,
        parent_uuid: String,
        profile: Option<String>,
    },
}

/// The kubelet's last answer, GPU resources only, sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct PodAllocations {
    pub containers: Vec<ContainerAllocation>,
    pub fetched_at: SystemTime,
    pub fetched: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NvmlStatus {
    Starting,
    Up,
    /// Why NVML could not be loaded or initialised, or stopped answering.
    Unavailable(String),
}

/// The state shared by the sampler thread, the pod-resources task and the HTTP handlers.
pub struct AgentState {
    pub node: String,
    pub interval: Duration,
    sample: ArcSwapOption<Sample>,
    pods: ArcSwapOption<PodAllocations>,
    nvml: ArcSwap<NvmlStatus>,
}

impl AgentState {
    pub fn new(node: String, interval: Duration) -> Self {
        Self {
            node,
            interval,
            sample: ArcSwapOption::empty(),
            pods: ArcSwapOption::empty(),
            nvml: ArcSwap::from_pointee(NvmlStatus::Starting),
        }
    }

    pub fn sample(&self) -> Option<Arc<Sample>> {
        self.sample.load_full()
    }

    pub fn publish_sample(&self, sample: Sample) {
        self.sample.store(Some(Arc::new(sample)));
    }

    pub fn pods(&self) -> Option<Arc<PodAllocations>> {
        self.pods.load_full()
    }

    pub fn publish_pods(&self, pods: Option<PodAllocations>) {
        self.pods.store(pods.map(Arc::new));
    }

    pub fn nvml_status(&self) -> Arc<NvmlStatus> {
        self.nvml.load_full()
    }

    /// Anything but `Up` also withdraws the last sample: readings from a library that is gone
    /// would be served as if current.
    pub fn set_nvml_status(&self, status: NvmlStatus) {
        if status != NvmlStatus::Up {
            self.sample.store(None);
        }
        self.nvml.store(Arc::new(status));
    }

    /// A sample older than this means the sampler is stuck (an NVML call that does not return).
    pub fn stale_after(&self) -> Duration {
        (self.interval * 10).max(Duration::from_secs(10))
    }

    /// Ready once NVML is initialised and a fresh sample exists; otherwise why not.
    pub fn readiness(&self, now: Instant) -> Result<(), String> {
        match &*self.nvml_status() {
            NvmlStatus::Starting => return Err("NVML is not initialised yet".into()),
            NvmlStatus::Unavailable(reason) => return Err(format!("NVML unavailable: {reason}")),
            NvmlStatus::Up => {}
        }
        let Some(sample) = self.sample() else {
            return Err("no GPU sample yet".into());
        };
        let age = now.saturating_duration_since(sample.taken);
        if age > self.stale_after() {
            return Err(format!("the last GPU sample is {:.1}s old", age.as_secs_f64()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(taken: Instant) -> Sample {
        Sample {
            gpus: vec![],
            taken_at: SystemTime::now(),
            taken,
        }
    }

    #[test]
    fn ready_only_with_nvml_up_and_a_fresh_sample() {
        let state = AgentState::new("node".into(), Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(state.readiness(now), Err("NVML is not initialised yet".into()));
        state.set_nvml_status(NvmlStatus::Up);
        assert_eq!(state.readiness(now), Err("no GPU sample yet".into()));
        state.publish_sample(sample(now));
        assert_eq!(state.readiness(now), Ok(()));
        assert_eq!(
            state.readiness(now + Duration::from_secs(11)),
            Err("the last GPU sample is 11.0s old".into())
        );
    }

    #[test]
    fn losing_nvml_withdraws_the_sample() {
        let state = AgentState::new("node".into(), Duration::from_secs(1));
        state.set_nvml_status(NvmlStatus::Up);
        state.publish_sample(sample(Instant::now()));
        state.set_nvml_status(NvmlStatus::Unavailable("driver not loaded".into()));
        assert!(state.sample().is_none());
        assert_eq!(
            state.readiness(Instant::now()),
            Err("NVML unavailable: driver not loaded".into())
        );
    }
}
