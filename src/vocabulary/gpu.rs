//! GPU words: how a replica shares its GPU (`spec.gpu.sharing`), the resolved placement every
//! builder reads, and the NVIDIA names (resource, GFD labels, taint) the cluster uses. What a
//! placement asks of a node, and whether the cluster has room, is `crate::gpu`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whole GPUs (and time-sliced replicas) as advertised by the NVIDIA device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Every NVIDIA extended resource (`nvidia.com/gpu`, `nvidia.com/mig-<profile>`, ...) starts so.
pub const GPU_RESOURCE_PREFIX: &str = "nvidia.com/";
/// GFD label with the GPU product name; sharing adds `-SHARED` / `-MIG-<profile>` suffixes.
pub const PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// GFD label with each GPU's memory in MiB.
pub const MEMORY_LABEL: &str = "nvidia.com/gpu.memory";
/// The taint GPU node pools carry so that only GPU pods land there.
pub const GPU_TAINT_KEY: &str = "nvidia.com/gpu";

/// NVIDIA's DRA driver: the driver name of its ResourceSlices and the attribute domain.
pub const DRA_DRIVER: &str = "gpu.nvidia.com";
/// The driver's DeviceClasses: whole GPUs, and MIG devices.
pub const DRA_GPU_CLASS: &str = "gpu.nvidia.com";
pub const DRA_MIG_CLASS: &str = "mig.nvidia.com";

/// How a replica's GPUs are requested from the cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GpuAllocation {
    /// Dynamic Resource Allocation where the cluster publishes GPUs that match in
    /// ResourceSlices (NVIDIA's DRA driver), the device plugin otherwise.
    #[default]
    Auto,
    /// The NVIDIA device plugin's extended resources (`nvidia.com/gpu`, `nvidia.com/mig-*`).
    DevicePlugin,
    /// A ResourceClaim per replica from a ResourceClaimTemplate (`resource.k8s.io/v1`).
    Dra,
}

impl GpuAllocation {
    pub fn spelling(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::DevicePlugin => "device-plugin",
            Self::Dra => "dra",
        }
    }
}

/// How a replica's GPU is shared with other pods.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GpuSharing {
    /// Whole GPUs, used by this pod alone.
    #[default]
    Exclusive,
    /// Time-sliced replicas of a GPU advertised by the device plugin; compute is shared.
    TimeSliced,
    /// A Multi-Instance GPU slice with its own memory and compute.
    Mig,
}

/// Where and on what a replica runs, resolved from `spec.gpu` (`crate::gpu::placement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuPlacement {
    /// Extended resource name: `nvidia.com/gpu` or `nvidia.com/mig-<profile>`.
    pub resource: String,
    /// How many of `resource` each replica needs.
    pub count: i32,
    pub sharing: GpuSharing,
    /// Every spelling of the acceptable products that a node may carry; empty means any.
    pub products: Vec<String>,
    /// The label holding per-GPU (or per-slice) memory, and the least MiB wanted.
    pub min_memory: Option<(String, i64)>,
    /// What the spec asks for; the reconcile resolves `Auto` before it builds, from what the
    /// cluster publishes (`crate::gpu::dra`). Offline (`render`) `Auto` builds the device plugin's.
    pub allocation: GpuAllocation,
    /// What a DRA request asks of each device (the selectors), from the same spec.
    pub devices: DeviceRequirements,
}

/// A DRA request's selectors, in the words of NVIDIA's DRA driver attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRequirements {
    /// `gpu.nvidia.com` or `mig.nvidia.com`.
    pub device_class: String,
    /// The MIG profile (`1g.10gb`) a MIG device must have.
    pub mig_profile: Option<String>,
    /// Acceptable products in the GFD label spelling (`NVIDIA-A100-SXM4-80GB`); the driver's
    /// `productName` has spaces where the label has dashes.
    pub products: Vec<String>,
    /// Least device memory in MiB (the device's `memory` capacity).
    pub min_memory_mib: Option<i64>,
    /// Acceptable `architecture` attributes (`Hopper`, `Ampere`).
    pub architectures: Vec<String>,
    /// Least `cudaComputeCapability`, as (major, minor).
    pub min_compute_capability: Option<(u64, u64)>,
}
