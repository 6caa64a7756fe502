//! GPUs through Dynamic Resource Allocation (`resource.k8s.io/v1`) with NVIDIA's DRA driver:
//! the CEL selectors a ResourceClaimTemplate carries for a model's `gpu:` block, the same
//! requirements checked here against the devices of the ResourceSlices (so that the capacity
//! pre-flight and `allocation: auto` agree with the scheduler), the free devices per node, and
//! which devices a replica's claim got.
//!
//! The driver's attributes: `type` (`gpu` | `mig`), `uuid`, `parentUUID` (MIG), `profile` (MIG),
//! `productName` (with spaces: `NVIDIA A100-SXM4-80GB`), `architecture`, `cudaComputeCapability`
//! (a version); the capacity `memory`. Device names are never parsed (the driver changed them).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    core::v1::Node,
    resource::v1::{Device, DeviceAttribute, ResourceClaim, ResourceSlice},
};

use super::capacity::NodeGpus;
use crate::vocabulary::{DRA_DRIVER, DRA_MIG_CLASS, DeviceRequirements, quantity_bytes};

/// The DRA request's name in the template, the pod's claim and the container's `claims`.
pub const CLAIM_REQUEST: &str = "gpu";

/// `(driver, pool, device)`: a device as allocation results name it.
pub type DeviceKey = (String, String, String);

impl DeviceRequirements {
    /// CEL selectors for the claim template's request, besides the DeviceClass's own. Every
    /// attribute is guarded with `has()`: a selector that reads a missing key aborts the
    /// allocation for the whole claim instead of skipping the device.
    pub fn cel_selectors(&self) -> Vec<String> {
        let attribute = |name: &str| format!("device.attributes['{DRA_DRIVER}'].{name}");
        let mut selectors = Vec::new();
        if let Some(profile) = &self.mig_profile {
            let profile_attribute = attribute("profile");
            selectors.push(format!(
                "has({profile_attribute}) && {profile_attribute} == '{profile}'"
            ));
        }
        if !self.products.is_empty() {
            // The GFD label spelling is the driver's productName with dashes for spaces.
            let name = attribute("productName");
            selectors.push(format!(
                "has({name}) && {name}.replace(' ', '-') in [{}]",
                quoted(&self.products)
            ));
        }
        if let Some(mib) = self.min_memory_mib {
            let memory = format!("device.capacity['{DRA_DRIVER}'].memory");
            selectors.push(format!("has({memory}) && {memory}.compareTo(quantity('{mib}Mi')) >= 0"));
        }
        if !self.architectures.is_empty() {
            let architecture = attribute("architecture");
            selectors.push(format!(
                "has({architecture}) && {architecture} in [{}]",
                quoted(&self.architectures)
            ));
        }
        if let Some((major, minor)) = self.min_compute_capability {
            let capability = attribute("cudaComputeCapability");
            selectors.push(format!(
                "has({capability}) && {capability}.compareTo(semver('{major}.{minor}.0')) >= 0"
            ));
        }
        selectors
    }

    /// Whether a device of a ResourceSlice meets the DeviceClass and every selector, as the
    /// scheduler would evaluate them.
    pub fn matches(&self, driver: &str, device: &Device) -> bool {
        if driver != DRA_DRIVER {
            return false;
        }
        let wanted_type = if self.device_class == DRA_MIG_CLASS {
            "mig"
        } else {
            "gpu"
        };
        if string_attribute(device, "type") != Some(wanted_type) {
            return false;
        }
        if let Some(profile) = &self.mig_profile
            && string_attribute(device, "profile") != Some(profile.as_str())
        {
            return false;
        }
        if !self.products.is_empty() {
            let Some(name) = string_attribute(device, "productName") else {
                return false;
            };
            if !self.products.contains(&name.replace(' ', "-")) {
                return false;
            }
        }
        if let Some(mib) = self.min_memory_mib {
            let memory = device
                .capacity
                .as_ref()
                .and_then(|capacity| capacity.get("memory").or_else(|| capacity.get(&qualified("memory"))))
                .and_then(|memory| quantity_bytes(&memory.value.0));
            if memory.is_none_or(|bytes| bytes < u64::try_from(mib).unwrap_or(u64::MAX).saturating_mul(1 << 20)) {
                return false;
            }
        }
        if !self.architectures.is_empty()
            && !string_attribute(device, "architecture").is_some_and(|a| self.architectures.iter().any(|w| w == a))
        {
            return false;
        }
        if let Some(least) = self.min_compute_capability {
            let have = attribute(device, "cudaComputeCapability")
                .and_then(|a| a.version.as_deref())
                .and_then(version_major_minor);
            if have.is_none_or(|have| have < least) {
                return false;
            }
        }
        true
    }

    /// One replica's demand in words: "2 × gpu.nvidia.com with productName NVIDIA-H100-80GB-HBM3,
    /// memory ≥ 40960 MiB".
    pub fn describe(&self, count: i32) -> String {
        let mut wanted = Vec::new();
        if let Some(profile) = &self.mig_profile {
            wanted.push(format!("profile {profile}"));
        }
        if !self.products.is_empty() {
            wanted.push(format!("productName {}", self.products.join(" or ")));
        }
        if let Some(mib) = self.min_memory_mib {
            wanted.push(format!("memory ≥ {mib} MiB"));
        }
        if !self.architectures.is_empty() {
            wanted.push(format!("architecture {}", self.architectures.join(" or ")));
        }
        if let Some((major, minor)) = self.min_compute_capability {
            wanted.push(format!("cudaComputeCapability ≥ {major}.{minor}"));
        }
        let mut text = format!("{count} × {} (DRA)", self.device_class);
        if !wanted.is_empty() {
            text.push_str(&format!(" with {}", wanted.join(", ")));
        }
        text
    }
}

fn quoted(values: &[String]) -> String {
    values.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ")
}

/// `gpu.nvidia.com/<name>`: an attribute (or capacity) name qualified with the driver's domain.
/// Unqualified names in a slice belong to the driver's domain too.
fn qualified(name: &str) -> String {
    format!("{DRA_DRIVER}/{name}")
}

fn attribute<'a>(device: &'a Device, name: &str) -> Option<&'a DeviceAttribute> {
    let attributes = device.attributes.as_ref()?;
    attributes.get(name).or_else(|| attributes.get(&qualified(name)))
}

fn string_attribute<'a>(device: &'a Device, name: &str) -> Option<&'a str> {
    attribute(device, name)?.string.as_deref()
}

/// `9.0.0` (a semantic version) as (9, 0).
fn version_major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The devices allocated to some claim, from the claims' `status.allocation`.
pub fn allocated_devices<'a>(claims: impl IntoIterator<Item = &'a ResourceClaim>) -> BTreeSet<DeviceKey> {
    claims
        .into_iter()
        .filter_map(|claim| claim.status.as_ref()?.allocation.as_ref()?.devices.as_ref())
        .flat_map(|devices| devices.results.iter().flatten())
        .map(|result| (result.driver.clone(), result.pool.clone(), result.device.clone()))
        .collect()
}

/// Per node, the devices of the slices that meet `wanted`, and how many of them are allocated,
/// as the capacity pre-flight counts GPUs: nodes without such devices are left out.
pub fn dra_nodes(
    wanted: &DeviceRequirements,
    slices: &[&ResourceSlice],
    allocated: &BTreeSet<DeviceKey>,
    nodes: &[&Node],
) -> Vec<NodeGpus> {
    let mut per_node: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for slice in slices {
        let spec = &slice.spec;
        let Some(node) = spec.node_name.as_deref() else {
            continue;
        };
        for device in spec.devices.iter().flatten() {
            if !wanted.matches(&spec.driver, device) {
                continue;
            }
            let entry = per_node.entry(node).or_default();
            entry.0 += 1;
            let key = (spec.driver.clone(), spec.pool.name.clone(), device.name.clone());
            if allocated.contains(&key) {
                entry.1 += 1;
            }
        }
    }
    nodes
        .iter()
        .filter_map(|node| {
            let (devices, in_use) = per_node.get(node.metadata.name.as_deref()?)?;
            let mut view = NodeGpus::with_requested(node, "", *in_use);
            view.allocatable = *devices;
            Some(view)
        })
        .collect()
}

/// Whether any slice offers a device that meets `wanted`: what `allocation: auto` asks.
pub fn offers_matching_devices(wanted: &DeviceRequirements, slices: &[&ResourceSlice]) -> bool {
    slices.iter().any(|slice| {
        slice.spec.node_name.is_some()
            && slice
                .spec
                .devices
                .iter()
                .flatten()
                .any(|device| wanted.matches(&slice.spec.driver, device))
    })
}

/// One device a replica's claim got, with the GPU's (or MIG device's) UUID where the slice
/// publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedGpu {
    pub pool: String,
    pub device: String,
    pub uuid: Option<String>,
}

/// The driver's devices allocated to `claim`, in the order of its results.
pub fn devices_of_claim(claim: &ResourceClaim, slices: &[&ResourceSlice]) -> Vec<AllocatedGpu> {
    let results = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .and_then(|d| d.results.as_ref());
    results
        .into_iter()
        .flatten()
        .filter(|result| result.driver == DRA_DRIVER)
        .map(|result| {
            let uuid = slices
                .iter()
                .filter(|slice| slice.spec.driver == result.driver && slice.spec.pool.name == result.pool)
                .flat_map(|slice| slice.spec.devices.iter().flatten())
                .find(|device| device.name == result.device)
                .and_then(|device| string_attribute(device, "uuid"))
                .map(str::to_owned);
            AllocatedGpu {
                pool: result.pool.clone(),
                device: result.device.clone(),
                uuid,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::vocabulary::DRA_GPU_CLASS;

    /// A slice as NVIDIA's DRA driver publishes it: two H100s on `dra-0`.
    fn h100_slice() -> ResourceSlice {
        let gpu = |index: i64| {
            json!({
                "name": format!("gpu-{index}"),
                "attributes": {
                    "type": {"string": "gpu"}, "uuid": {"string": format!("GPU-h100-{index}")},
                    "productName": {"string": "NVIDIA H100 80GB HBM3"}, "architecture": {"string": "Hopper"},
                    "cudaComputeCapability": {"version": "9.0.0"}, "index": {"int": index},
                },
                "capacity": {"memory": {"value": "80Gi"}},
            })
        };
        serde_json::from_value(json!({
            "metadata": {"name": "dra-0-gpu.nvidia.com"},
            "spec": {"driver": "gpu.nvidia.com", "nodeName": "dra-0",
                     "pool": {"name": "dra-0", "generation": 1, "resourceSliceCount": 1},
                     "devices": [gpu(0), gpu(1)]},
        }))
        .expect("fixture is a ResourceSlice")
    }

    /// Two 1g.10gb MIG devices of one A100 on `mig-0`, with qualified attribute names.
    fn mig_slice() -> ResourceSlice {
        let mig = |index: i64| {
            json!({
                "name": format!("gpu-0-mig-{index}"),
                "attributes": {
                    "gpu.nvidia.com/type": {"string": "mig"}, "uuid": {"string": format!("MIG-a100-{index}")},
                    "parentUUID": {"string": "GPU-a100"}, "profile": {"string": "1g.10gb"},
                    "productName": {"string": "NVIDIA A100-SXM4-80GB"}, "architecture": {"string": "Ampere"},
                    "cudaComputeCapability": {"version": "8.0.0"},
                },
                "capacity": {"memory": {"value": "10Gi"}},
            })
        };
        serde_json::from_value(json!({
            "metadata": {"name": "mig-0-gpu.nvidia.com"},
            "spec": {"driver": "gpu.nvidia.com", "nodeName": "mig-0",
                     "pool": {"name": "mig-0", "generation": 1, "resourceSliceCount": 1},
                     "devices": [mig(0), mig(1)]},
        }))
        .expect("fixture is a ResourceSlice")
    }

    fn whole_gpus() -> DeviceRequirements {
        DeviceRequirements {
            device_class: DRA_GPU_CLASS.into(),
            ..DeviceRequirements::default()
        }
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    #[test]
    fn selectors_say_in_cel_what_the_gpu_block_says() {
        let wanted = DeviceRequirements {
            products: vec!["NVIDIA-H100-80GB-HBM3".into()],
            min_memory_mib: Some(40960),
            architectures: vec!["Hopper".into()],
            min_compute_capability: Some((8, 0)),
            ..whole_gpus()
        };
        assert_eq!(
            wanted.cel_selectors(),
            [
                "has(device.attributes['gpu.nvidia.com'].productName) && device.attributes['gpu.nvidia.com'].productName.replace(' ', '-') in ['NVIDIA-H100-80GB-HBM3']",
                "has(device.capacity['gpu.nvidia.com'].memory) && device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40960Mi')) >= 0",
                "has(device.attributes['gpu.nvidia.com'].architecture) && device.attributes['gpu.nvidia.com'].architecture in ['Hopper']",
                "has(device.attributes['gpu.nvidia.com'].cudaComputeCapability) && device.attributes['gpu.nvidia.com'].cudaComputeCapability.compareTo(semver('8.0.0')) >= 0",
            ]
        );
        assert!(whole_gpus().cel_selectors().is_empty(), "the DeviceClass alone");
        let mig = DeviceRequirements {
            device_class: DRA_MIG_CLASS.into(),
            mig_profile: Some("1g.10gb".into()),
            ..DeviceRequirements::default()
        };
        assert_eq!(
            mig.cel_selectors(),
            [
                "has(device.attributes['gpu.nvidia.com'].profile) && device.attributes['gpu.nvidia.com'].profile == '1g.10gb'"
            ]
        );
    }

    #[test]
    fn devices_match_as_the_scheduler_would_select_them() {
        let slice = h100_slice();
        let h100 = &slice.spec.devices.as_ref().unwrap()[0];
        let driver = slice.spec.driver.as_str();
        let cases = [
            (whole_gpus(), true),
            (
                DeviceRequirements {
                    products: vec!["NVIDIA-H100-80GB-HBM3".into()],
                    ..whole_gpus()
                },
                true,
            ),
            (
                DeviceRequirements {
                    products: vec!["NVIDIA-A100-SXM4-80GB".into()],
                    ..whole_gpus()
                },
                false,
            ),
            (
                DeviceRequirements {
                    min_memory_mib: Some(81920),
                    ..whole_gpus()
                },
                true,
            ),
            (
                DeviceRequirements {
                    min_memory_mib: Some(81921),
                    ..whole_gpus()
                },
                false,
            ),
            (
                DeviceRequirements {
                    architectures: vec!["Ampere".into(), "Hopper".into()],
                    ..whole_gpus()
                },
                true,
            ),
            (
                DeviceRequirements {
                    architectures: vec!["Blackwell".into()],
                    ..whole_gpus()
                },
                false,
            ),
            (
                DeviceRequirements {
                    min_compute_capability: Some((9, 0)),
                    ..whole_gpus()
                },
                true,
            ),
            (
                DeviceRequirements {
                    min_compute_capability: Some((10, 0)),
                    ..whole_gpus()
                },
                false,
            ),
            (
                DeviceRequirements {
                    device_class: DRA_MIG_CLASS.into(),
                    ..whole_gpus()
                },
                false,
            ),
        ];
        for (wanted, expected) in cases {
            assert_eq!(wanted.matches(driver, h100), expected, "{wanted:?}");
        }
        assert!(
            !whole_gpus().matches("other.vendor.com", h100),
            "another driver's device"
        );

        let slice = mig_slice();
        let mig = &slice.spec.devices.as_ref().unwrap()[0];
        let profile = |p: &str| DeviceRequirements {
            device_class: DRA_MIG_CLASS.into(),
            mig_profile: Some(p.into()),
            ..DeviceRequirements::default()
        };
        assert!(
            profile("1g.10gb").matches(driver, mig),
            "qualified attribute names count too"
        );
        assert!(!profile("3g.40gb").matches(driver, mig));
        assert!(!whole_gpus().matches(driver, mig), "a MIG device is no whole GPU");
    }

    #[test]
    fn free_devices_per_node_leave_out_allocated_ones_and_nodes_without_matches() {
        let (h100, mig) = (h100_slice(), mig_slice());
        let claim: ResourceClaim = serde_json::from_value(json!({
            "metadata": {"name": "bert-0-gpu", "namespace": "ml"},
            "spec": {},
            "status": {"allocation": {"devices": {"results": [
                {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "dra-0", "device": "gpu-1"}]}}},
        }))
        .unwrap();
        let allocated = allocated_devices([&claim]);
        let (dra_node, mig_node, cpu_node) = (node("dra-0"), node("mig-0"), node("cpu-0"));
        let nodes = dra_nodes(
            &whole_gpus(),
            &[&h100, &mig],
            &allocated,
            &[&dra_node, &mig_node, &cpu_node],
        );
        assert_eq!(nodes.len(), 1, "{nodes:?}");
        assert_eq!(
            (nodes[0].name.as_str(), nodes[0].allocatable, nodes[0].free()),
            ("dra-0", 2, 1)
        );
        assert!(nodes[0].schedulable);

        assert!(offers_matching_devices(&whole_gpus(), &[&h100]));
        assert!(!offers_matching_devices(
            &DeviceRequirements {
                products: vec!["Tesla-T4".into()],
                ..whole_gpus()
            },
            &[&h100, &mig]
        ));

        assert_eq!(
            devices_of_claim(&claim, &[&h100, &mig]),
            [AllocatedGpu {
                pool: "dra-0".into(),
                device: "gpu-1".into(),
                uuid: Some("GPU-h100-1".into())
            }]
        );
    }

    #[test]
    fn the_demand_reads_as_the_spec_wrote_it() {
        let wanted = DeviceRequirements {
            products: vec!["NVIDIA-H100-80GB-HBM3".into()],
            min_memory_mib: Some(40960),
            ..whole_gpus()
        };
        assert_eq!(
            wanted.describe(2),
            "2 × gpu.nvidia.com (DRA) with productName NVIDIA-H100-80GB-HBM3, memory ≥ 40960 MiB"
        );
    }
}
