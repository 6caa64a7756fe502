//! Device IDs as the kubelet's PodResources API lists them, mapped onto what NVML reports.
//!
//! The NVIDIA device plugin names a whole GPU `GPU-<uuid>` and a MIG device `MIG-<uuid>` (NVML's
//! own UUIDs); with time-slicing or MPS each GPU is advertised several times as `<uuid>::<n>`
//! (k8s-device-plugin `internal/rm/devices.go`), and with `deviceIDStrategy: index` as the NVML
//! index. Anything else is not an NVIDIA GPU ID.
//!
//! A GPU allocated through a ResourceClaim (DRA) has no device ID: the kubelet names it by its
//! driver, pool and device, and only the node's ResourceSlice says which GPU that is
//! (`resource_slices`).

/// One device ID, normalised. Borrows from the kubelet's string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceId<'a> {
    /// A whole GPU or a time-slice/MPS replica of one: the GPU's NVML UUID, `GPU-…`.
    Gpu(&'a str),
    /// A MIG device: its NVML UUID, `MIG-…`.
    Mig(&'a str),
    /// A GPU named by its NVML index.
    Index(u32),
    /// Not a form this agent knows.
    Other(&'a str),
}

impl<'a> DeviceId<'a> {
    pub fn parse(id: &'a str) -> Self {
        let id = strip_replica(id);
        if id.starts_with("GPU-") {
            DeviceId::Gpu(id)
        } else if id.starts_with("MIG-") {
            DeviceId::Mig(id)
        } else if let Ok(index) = id.parse() {
            DeviceId::Index(index)
        } else {
            DeviceId::Other(id)
        }
    }
}

/// `GPU-x::3` → `GPU-x`; only a numeric suffix is a replica number.
fn strip_replica(id: &str) -> &str {
    match id.rsplit_once("::") {
        Some((device, replica)) if !replica.is_empty() && replica.bytes().all(|b| b.is_ascii_digit()) => device,
        _ => id,
    }
}

/// The DRA driver whose devices are NVIDIA GPUs and MIG devices (kubernetes-sigs/dra-driver-nvidia-gpu).
pub const NVIDIA_DRA_DRIVER: &str = "gpu.nvidia.com";

/// Whether an extended resource is one of the NVIDIA device plugin's GPU resources:
/// `nvidia.com/gpu`, its renamed shared form `nvidia.com/gpu.shared`, or a MIG profile
/// `nvidia.com/mig-<profile>` (mixed strategy).
pub fn is_gpu_resource(resource: &str) -> bool {
    resource
        .strip_prefix("nvidia.com/")
        .is_some_and(|name| name == "gpu" || name.starts_with("gpu.") || name.starts_with("mig-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_gpus_and_replicas_name_the_same_gpu() {
        let uuid = "GPU-8f6b2a10-5c3d-4e1f-9a7b-0c1d2e3f4a5b";
        assert_eq!(DeviceId::parse(uuid), DeviceId::Gpu(uuid));
        assert_eq!(DeviceId::parse(&format!("{uuid}::0")), DeviceId::Gpu(uuid));
        assert_eq!(DeviceId::parse(&format!("{uuid}::17")), DeviceId::Gpu(uuid));
    }

    #[test]
    fn mig_devices_keep_their_own_uuid() {
        let uuid = "MIG-4a5b6c7d-8e9f-5a0b-9c1d-2e3f4a5b6c7d";
        assert_eq!(DeviceId::parse(uuid), DeviceId::Mig(uuid));
        assert_eq!(DeviceId::parse(&format!("{uuid}::2")), DeviceId::Mig(uuid));
    }

    #[test]
    fn index_ids_and_unknown_forms() {
        assert_eq!(DeviceId::parse("3"), DeviceId::Index(3));
        assert_eq!(DeviceId::parse("3::1"), DeviceId::Index(3));
        assert_eq!(DeviceId::parse("fpga-0"), DeviceId::Other("fpga-0"));
        // A suffix that is not a replica number stays part of the ID.
        assert_eq!(DeviceId::parse("GPU-x::a"), DeviceId::Gpu("GPU-x::a"));
        assert_eq!(DeviceId::parse("GPU-x::"), DeviceId::Gpu("GPU-x::"));
    }

    #[test]
    fn gpu_resources() {
        for resource in [
            "nvidia.com/gpu",
            "nvidia.com/gpu.shared",
            "nvidia.com/mig-1g.10gb",
            "nvidia.com/mig-3g.40gb",
        ] {
            assert!(is_gpu_resource(resource), "{resource}");
        }
        for resource in [
            "nvidia.com/gpus",
            "example.com/gpu",
            "cpu",
            "nvidia.com/",
            "amd.com/gpu",
        ] {
            assert!(!is_gpu_resource(resource), "{resource}");
        }
    }
}
