//! ResourceClaimTemplate `NAME-gpu-<hash>` (`resource.k8s.io/v1`), when the model's GPUs come
//! through Dynamic Resource Allocation: one request of `count` devices of NVIDIA's DeviceClass
//! (`gpu.nvidia.com`, or `mig.nvidia.com` for a MIG profile) with CEL selectors from the `gpu:`
//! block. Each replica gets its own claim from it (a shared claim would pin every replica to one
//! set of devices).
//!
//! A template's spec is immutable and a pod's claims are fixed at creation, so the name carries
//! a hash of the request: a changed `gpu:` block is a new template, a new pod template in the
//! Deployment, and so new pods; the old template is pruned once the Deployment stops naming it.

use k8s_openapi::api::resource::v1::{
    CELDeviceSelector, DeviceClaim, DeviceRequest, DeviceSelector, ExactDeviceRequest, ResourceClaimSpec,
    ResourceClaimTemplate, ResourceClaimTemplateSpec,
};
use sha2::{Digest, Sha256};

use super::object_meta;
use crate::{
    gpu::dra::CLAIM_REQUEST,
    vocabulary::{
        GpuPlacement, Validated,
        names::{COMPONENT_SERVER, claim_template_name},
    },
};

pub fn build(model: &Validated) -> Option<ResourceClaimTemplate> {
    let gpu = model.gpu.as_ref().filter(|gpu| gpu.uses_dra())?;
    let claim = claim_spec(gpu);
    Some(ResourceClaimTemplate {
        metadata: object_meta(model, template_name(&model.name, &claim), COMPONENT_SERVER),
        spec: ResourceClaimTemplateSpec {
            metadata: None,
            spec: claim,
        },
    })
}

/// The template's name for a model whose GPUs come through DRA; `None` otherwise.
pub fn name_for(model: &Validated) -> Option<String> {
    let gpu = model.gpu.as_ref().filter(|gpu| gpu.uses_dra())?;
    Some(template_name(&model.name, &claim_spec(gpu)))
}

fn claim_spec(gpu: &GpuPlacement) -> ResourceClaimSpec {
    let selectors: Vec<DeviceSelector> = gpu
        .devices
        .cel_selectors()
        .into_iter()
        .map(|expression| DeviceSelector {
            cel: Some(CELDeviceSelector { expression }),
        })
        .collect();
    ResourceClaimSpec {
        devices: Some(DeviceClaim {
            requests: Some(vec![DeviceRequest {
                name: CLAIM_REQUEST.to_owned(),
                exactly: Some(ExactDeviceRequest {
                    device_class_name: gpu.devices.device_class.clone(),
                    allocation_mode: Some("ExactCount".to_owned()),
                    count: Some(i64::from(gpu.count)),
                    selectors: (!selectors.is_empty()).then_some(selectors),
                    ..ExactDeviceRequest::default()
                }),
                first_available: None,
            }]),
            ..DeviceClaim::default()
        }),
    }
}

fn template_name(model: &str, claim: &ResourceClaimSpec) -> String {
    let digest = Sha256::digest(serde_json::to_vec(claim).expect("a claim spec serializes"));
    claim_template_name(model, &hex::encode(digest)[..8])
}
