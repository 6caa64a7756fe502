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
}
