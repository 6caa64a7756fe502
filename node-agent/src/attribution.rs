//! Joins the kubelet's device allocations with NVML's GPUs: which containers hold each GPU and
//! each MIG device, and which physical GPUs each container's device IDs stand for. A device the
//! device plugin gave is named by its ID; one allocated through a ResourceClaim (DRA) by the
//! NVML UUIDs its ResourceSlice gives it (`ClaimedDevice::slice`).

use crate::{
    device_id::DeviceId,
    snapshot::{Claim, ClaimedDevice, ContainerAllocation, GpuReading, Sample, SliceDevice},
};

/// A container holding a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    /// Set when the container holds the device through a ResourceClaim.
    pub claimed: Option<ClaimHold<'a>>,
}

/// Which claim, and which of its devices, a holder holds a device through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimHold<'a> {
    pub claim: &'a Claim,
    pub device: &'a ClaimedDevice,
}

/// The physical GPUs and MIG devices behind one container allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedDevices<'a> {
    /// GPU UUIDs, each once: replica suffixes stripped, MIG devices and indices resolved.
    pub gpus: Vec<&'a str>,
    pub mig_devices: Vec<&'a str>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution<'a> {
    /// Per GPU of the sample, in order: the containers holding it whole or a time slice of it.
    pub gpus: Vec<Vec<Holder<'a>>>,
    /// Per GPU, per MIG device of it, in order.
    pub mig_devices: Vec<Vec<Vec<Holder<'a>>>>,
    /// Per allocation, in order.
    pub containers: Vec<ResolvedDevices<'a>>,
    /// Device IDs that match no GPU or MIG device of the sample (for one, a GPU that failed to
    /// read), and claimed devices that no ResourceSlice read so far describes.
    pub unmatched: usize,
}

/// Holders keep the allocations' order (sorted by namespace, pod, container) and appear once per
/// device however many replicas of it they hold.
pub fn attribute<'a>(sample: Option<&'a Sample>, allocations: &'a [ContainerAllocation]) -> Attribution<'a> {
    let gpus = sample.map_or(&[][..], |s| &s.gpus[..]);
    let mut join = Join {
        gpus,
        attribution: Attribution {
            gpus: vec![Vec::new(); gpus.len()],
            mig_devices: gpus.iter().map(|g| vec![Vec::new(); g.mig_devices.len()]).collect(),
            containers: Vec::with_capacity(allocations.len()),
            unmatched: 0,
        },
    };
    for allocation in allocations {
        let holder = Holder {
            namespace: &allocation.namespace,
            pod: &allocation.pod,
            container: &allocation.container,
            claimed: None,
        };
        let mut resolved = ResolvedDevices::default();
        match &allocation.claim {
            None => {
                for id in &allocation.device_ids {
                    join.device_id(&mut resolved, id, holder);
                }
            }
            Some(claim) => {
                for device in &claim.devices {
                    let holder = Holder {
                        claimed: Some(ClaimHold { claim, device }),
                        ..holder
                    };
                    join.claimed_device(&mut resolved, device, holder);
                }
            }
        }
        join.attribution.containers.push(resolved);
    }
    join.attribution
}

/// The attribution being built, and the sample's GPUs it indexes.
struct Join<'a> {
    gpus: &'a [GpuReading],
    attribution: Attribution<'a>,
}

impl<'a> Join<'a> {
    fn device_id(&mut self, resolved: &mut ResolvedDevices<'a>, id: &'a str, holder: Holder<'a>) {
        match DeviceId::parse(id) {
            DeviceId::Gpu(uuid) => self.whole_gpu(resolved, uuid, holder),
            DeviceId::Index(index) => match self.gpus.iter().position(|g| g.index == index) {
                Some(g) => {
                    push_once(&mut resolved.gpus, &self.gpus[g].uuid);
                    push_once(&mut self.attribution.gpus[g], holder);
                }
                None => self.attribution.unmatched += 1,
            },
            DeviceId::Mig(uuid) => self.mig_device(resolved, uuid, holder),
            DeviceId::Other(_) => self.attribution.unmatched += 1,
        }
    }

    /// The slice names the MIG device's GPU too, so that GPU is resolved even when the MIG
    /// device is absent from the sample (a device plugin's MIG ID alone cannot say which GPU).
    fn claimed_device(&mut self, resolved: &mut ResolvedDevices<'a>, device: &'a ClaimedDevice, holder: Holder<'a>) {
        match &device.slice {
            Some(SliceDevice::Gpu { uuid }) => self.whole_gpu(resolved, uuid, holder),
            Some(SliceDevice::Mig { uuid, parent_uuid, .. }) => {
                push_once(&mut resolved.gpus, parent_uuid);
                self.mig_device(resolved, uuid, holder);
            }
            None => self.attribution.unmatched += 1,
        }
    }

    fn whole_gpu(&mut self, resolved: &mut ResolvedDevices<'a>, uuid: &'a str, holder: Holder<'a>) {
        push_once(&mut resolved.gpus, uuid);
        match self.gpus.iter().position(|g| g.uuid == uuid) {
            Some(g) => push_once(&mut self.attribution.gpus[g], holder),
            None => self.attribution.unmatched += 1,
        }
    }

    fn mig_device(&mut self, resolved: &mut ResolvedDevices<'a>, uuid: &'a str, holder: Holder<'a>) {
        push_once(&mut resolved.mig_devices, uuid);
        let found = self.gpus.iter().enumerate().find_map(|(g, gpu)| {
            let m = gpu.mig_devices.iter().position(|m| m.uuid == uuid)?;
            Some((g, m))
        });
        match found {
            Some((g, m)) => {
                push_once(&mut resolved.gpus, &self.gpus[g].uuid);
                push_once(&mut self.attribution.mig_devices[g][m], holder);
            }
            None => self.attribution.unmatched += 1,
        }
    }
}

fn push_once<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::snapshot::MigReading;

    pub(crate) fn reading(index: u32, uuid: &str) -> GpuReading {
        GpuReading {
            index,
            uuid: uuid.into(),
            name: "NVIDIA A100-SXM4-80GB".into(),
            utilization_gpu: Some(10 * index),
            utilization_memory: Some(5),
            fb_used_mib: Some(1000),
            fb_free_mib: Some(80000),
            power_watts: Some(61.5),
            temperature_c: Some(40),
            sm_clock_mhz: Some(1410),
            mig_devices: vec![],
            read_at: SystemTime::UNIX_EPOCH,
        }
    }

    pub(crate) fn mig(uuid: &str) -> MigReading {
        MigReading {
            uuid: uuid.into(),
            profile: Some("1g.10gb".into()),
            fb_used_mib: Some(10),
            fb_free_mib: Some(9974),
        }
    }

    pub(crate) fn allocation(pod: &str, resource: &str, ids: &[&str]) -> ContainerAllocation {
        ContainerAllocation {
            namespace: "ml".into(),
            pod: pod.into(),
            container: "main".into(),
            resource: resource.into(),
            device_ids: ids.iter().map(|id| id.to_string()).collect(),
            claim: None,
        }
    }

    pub(crate) fn sample() -> Sample {
        let mut mig_gpu = reading(2, "GPU-c");
        mig_gpu.utilization_gpu = None;
        mig_gpu.mig_devices = vec![mig("MIG-c1"), mig("MIG-c2")];
        Sample {
            gpus: vec![reading(0, "GPU-a"), reading(1, "GPU-b"), mig_gpu],
            taken_at: SystemTime::UNIX_EPOCH,
            taken: Instant::now(),
        }
    }

    fn holder(pod: &str) -> Holder<'_> {
        Holder {
            namespace: "ml",
            pod,
            container: "main",
            claimed: None,
        }
    }

    #[test]
    fn exclusive_time_sliced_and_mig_holders() {
        let sample = sample();
        let allocations = [
            allocation("exclusive", "nvidia.com/gpu", &["GPU-a"]),
            allocation("shared-1", "nvidia.com/gpu.shared", &["GPU-b::1", "GPU-b::3"]),
            allocation("shared-2", "nvidia.com/gpu.shared", &["GPU-b::2"]),
            allocation("sliced", "nvidia.com/mig-1g.10gb", &["MIG-c2"]),
        ];
        let attribution = attribute(Some(&sample), &allocations);
        assert_eq!(
            attribution.gpus,
            vec![
                vec![holder("exclusive")],
                vec![holder("shared-1"), holder("shared-2")],
                vec![]
            ]
        );
        assert_eq!(
            attribution.mig_devices,
            vec![vec![], vec![], vec![vec![], vec![holder("sliced")]]]
        );
        assert_eq!(
            attribution.containers,
            vec![
                ResolvedDevices {
                    gpus: vec!["GPU-a"],
                    mig_devices: vec![]
                },
                ResolvedDevices {
                    gpus: vec!["GPU-b"],
                    mig_devices: vec![]
                },
                ResolvedDevices {
                    gpus: vec!["GPU-b"],
                    mig_devices: vec![]
                },
                ResolvedDevices {
                    gpus: vec!["GPU-c"],
                    mig_devices: vec!["MIG-c2"]
                },
            ]
        );
        assert_eq!(attribution.unmatched, 0);
    }

    #[test]
    fn index_ids_resolve_through_the_sample() {
        let sample = sample();
        let allocations = [allocation("by-index", "nvidia.com/gpu", &["1", "7"])];
        let attribution = attribute(Some(&sample), &allocations);
        assert_eq!(attribution.gpus[1], vec![holder("by-index")]);
        assert_eq!(attribution.containers[0].gpus, vec!["GPU-b"]);
        assert_eq!(attribution.unmatched, 1);
    }

    #[test]
    fn ids_of_absent_devices_keep_their_gpu_but_attribute_nothing() {
        let sample = sample();
        let allocations = [allocation(
            "on-failed-gpu",
            "nvidia.com/gpu",
            &["GPU-failed::0", "MIG-gone"],
        )];
        let attribution = attribute(Some(&sample), &allocations);
        assert!(attribution.gpus.iter().all(Vec::is_empty));
        assert_eq!(
            attribution.containers[0],
            ResolvedDevices {
                gpus: vec!["GPU-failed"],
                mig_devices: vec!["MIG-gone"]
            }
        );
        assert_eq!(attribution.unmatched, 2);
    }

    /// A pool's device as the kubelet lists it, with what the node's slice says of it.
    pub(crate) fn claimed(device: &str, slice: Option<SliceDevice>) -> ClaimedDevice {
        ClaimedDevice {
            driver: "gpu.nvidia.com".into(),
            pool: "node-1".into(),
            device: device.into(),
            slice,
        }
    }

    pub(crate) fn whole(uuid: &str) -> Option<SliceDevice> {
        Some(SliceDevice::Gpu { uuid: uuid.into() })
    }

    pub(crate) fn mig_of(parent: &str, uuid: &str) -> Option<SliceDevice> {
        Some(SliceDevice::Mig {
            uuid: uuid.into(),
            parent_uuid: parent.into(),
            profile: Some("1g.10gb".into()),
        })
    }

    /// One container's share of the claim `<pod>-gpu`, as the node agent's refresher builds it.
    pub(crate) fn claim_allocation(pod: &str, devices: Vec<ClaimedDevice>) -> ContainerAllocation {
        ContainerAllocation {
            namespace: "ml".into(),
            pod: pod.into(),
            container: "main".into(),
            resource: "gpu.nvidia.com".into(),
            device_ids: devices.iter().map(|d| format!("{}/{}", d.pool, d.device)).collect(),
            claim: Some(Claim {
                namespace: "ml".into(),
                name: format!("{pod}-gpu"),
                devices,
            }),
        }
    }

    #[test]
    fn claimed_gpus_are_held_through_their_slice_uuids() {
        let sample = sample();
        let allocations = [claim_allocation(
            "dra",
            vec![claimed("gpu-0", whole("GPU-a")), claimed("gpu-1", whole("GPU-b"))],
        )];
        let attribution = attribute(Some(&sample), &allocations);
        let claim = allocations[0].claim.as_ref().unwrap();
        let held = |device| Holder {
            claimed: Some(ClaimHold {
                claim,
                device: &claim.devices[device],
            }),
            ..holder("dra")
        };
        assert_eq!(attribution.gpus, vec![vec![held(0)], vec![held(1)], vec![]]);
        assert_eq!(attribution.containers[0].gpus, vec!["GPU-a", "GPU-b"]);
        assert_eq!(attribution.unmatched, 0);
    }

    #[test]
    fn a_claimed_mig_device_is_held_and_resolves_to_its_parent() {
        let sample = sample();
        let allocations = [
            claim_allocation("sliced", vec![claimed("gpu-2-mig-1", mig_of("GPU-c", "MIG-c2"))]),
            // Its GPU comes from the slice even when NVML does not list the MIG device (yet).
            claim_allocation("new-layout", vec![claimed("gpu-2-mig-9", mig_of("GPU-c", "MIG-c9"))]),
        ];
        let attribution = attribute(Some(&sample), &allocations);
        let claim = allocations[0].claim.as_ref().unwrap();
        assert_eq!(
            attribution.mig_devices[2],
            vec![
                vec![],
                vec![Holder {
                    claimed: Some(ClaimHold {
                        claim,
                        device: &claim.devices[0]
                    }),
                    ..holder("sliced")
                }]
            ]
        );
        assert!(attribution.gpus.iter().all(Vec::is_empty), "{:?}", attribution.gpus);
        assert_eq!(
            attribution.containers,
            vec![
                ResolvedDevices {
                    gpus: vec!["GPU-c"],
                    mig_devices: vec!["MIG-c2"]
                },
                ResolvedDevices {
                    gpus: vec!["GPU-c"],
                    mig_devices: vec!["MIG-c9"]
                },
            ]
        );
        assert_eq!(attribution.unmatched, 1);
    }

    #[test]
    fn claimed_devices_no_slice_describes_attribute_nothing() {
        let sample = sample();
        let allocations = [claim_allocation(
            "unknown",
            vec![claimed("gpu-7", None), claimed("gpu-0", whole("GPU-gone"))],
        )];
        let attribution = attribute(Some(&sample), &allocations);
        assert!(attribution.gpus.iter().all(Vec::is_empty));
        assert_eq!(attribution.containers[0].gpus, vec!["GPU-gone"]);
        assert_eq!(attribution.unmatched, 2);
    }

    #[test]
    fn no_sample_still_normalises() {
        let allocations = [allocation("p", "nvidia.com/gpu", &["GPU-a::4"])];
        let attribution = attribute(None, &allocations);
        assert!(attribution.gpus.is_empty());
        assert_eq!(attribution.containers[0].gpus, vec!["GPU-a"]);
    }
}
