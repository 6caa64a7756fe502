//! Deployment `NAME`: the runtime container with its command, ports, probes and GPU placement,
//! fed by the model-fetch init container.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, PodResourceClaim,
            PodSpec, PodTemplateSpec, ResourceClaim, Toleration, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use sha2::{Digest, Sha256};

use super::{
    common_labels, object_meta,
    pod::{
        container_security_context, credentials_volume, fetch_init_container, model_env, model_mount, model_volume,
        pod_security_context, runtime_credentials_mount, runtime_env_from,
    },
    resource_claim_template, server_selector,
};
use crate::{
    gpu::{dra::CLAIM_REQUEST, merge_node_requirements},
    runtimes::{self, CONFIG_DIR},
    vocabulary::{
        GpuPlacement, Scaling, Validated,
        names::{COMPONENT_SERVER, LABEL_RUNTIME, LABEL_VERSION, deployment_name},
    },
};

pub const SERVER_CONTAINER: &str = "model-server";
/// Changes when the runtime configuration does, so that pods restart to read it.
pub const CONFIG_HASH_ANNOTATION: &str = "mlops.sathvik.dev/runtime-config-hash";
const SHM_VOLUME: &str = "dshm";
const CONFIG_VOLUME: &str = "runtime-config";
/// Model rollouts are slow (download, then load); a rollout counts as stuck only after the
/// startup probe's whole window.
const PROGRESS_DEADLINE_SECONDS: i32 = 1800;

pub fn build(model: &Validated, runtime_config: Option<&ConfigMap>) -> Deployment {
    let mut pod_labels = common_labels(model);
    pod_labels.extend(server_selector(model));
    pod_labels.insert(LABEL_VERSION.to_owned(), model.version.clone());
    pod_labels.insert(LABEL_RUNTIME.to_owned(), model.runtime.to_string());

    let annotations =
        runtime_config.map(|config| BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_owned(), config_hash(config))]));

    let replicas = match &model.scaling {
        // Idle long enough: no replica, and the HPA, whose target is at zero, stands still.
        _ if model.asleep => Some(0),
        Scaling::Fixed { replicas } => Some(*replicas),
        // The HPA owns the replica count; leaving the field out keeps apply from resetting it.
        Scaling::Autoscaled(_) => None,
    };

    let profile = runtimes::of(model);
    let mut volumes = vec![model_volume(model)];
    volumes.extend(credentials_volume(model));
    let mut mounts = vec![model_mount(model)];
    mounts.extend(runtime_credentials_mount(model));
    if profile.needs_shared_memory() {
        volumes.push(Volume {
            name: SHM_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: None,
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: SHM_VOLUME.to_owned(),
            mount_path: "/dev/shm".to_owned(),
            ..VolumeMount::default()
        });
    }
    if let Some(config) = runtime_config {
        volumes.push(Volume {
            name: CONFIG_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config.metadata.name.clone().unwrap_or_default(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: CONFIG_VOLUME.to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let (command, mut args) = profile.command(model);
    args.extend(model.runtime_args.iter().cloned());
    let probes = profile.probes();
    let server = Container {
        name: SERVER_CONTAINER.to_owned(),
        image: Some(model.image.clone()),
        command: (!command.is_empty()).then_some(command),
        args: (!args.is_empty()).then_some(args),
        ports: Some(
            profile
                .ports()
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.to_owned()),
                    container_port: p.port,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        env: Some(model_env(model, profile.env(model))),
        env_from: Some(runtime_env_from(model)).filter(|sources| !sources.is_empty()),
        resources: Some(runtime_resources(model)),
        readiness_probe: Some(probes.readiness),
        liveness_probe: Some(probes.liveness),
        startup_probe: Some(probes.startup),
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context(false)),
        ..Container::default()
    };

    let tolerations = pod_tolerations(model);
    let requirements = model
        .gpu
        .as_ref()
        .map(GpuPlacement::node_requirements)
        .unwrap_or_default();

    Deployment {
        metadata: object_meta(model, deployment_name(&model.name), COMPONENT_SERVER),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(server_selector(model)),
                match_expressions: None,
            },
            // Never drop a serving replica before its successor has loaded the model.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    init_containers: fetch_init_container(model).map(|c| vec![c]),
                    containers: vec![server],
                    volumes: Some(volumes),
                    node_selector: (!model.node_selector.is_empty()).then(|| model.node_selector.clone()),
                    tolerations: (!tolerations.is_empty()).then_some(tolerations),
                    affinity: merge_node_requirements(model.affinity.clone(), requirements),
                    // Each replica's own claim, made from the model's template (DRA only).
                    resource_claims: resource_claim_template::name_for(model).map(|template| {
                        vec![PodResourceClaim {
                            name: CLAIM_REQUEST.to_owned(),
                            resource_claim_template_name: Some(template),
                            resource_claim_name: None,
                        }]
                    }),
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The user's CPU and memory plus the GPU resource, as limit and equal request.
/// The GPU taint's toleration (when GPUs are requested) and the user's: what the serving pods
/// tolerate, and so what the GPU capacity check lets them use.
pub fn pod_tolerations(model: &Validated) -> Vec<Toleration> {
    let mut tolerations = Vec::new();
    if model.gpu.is_some() {
        tolerations.push(GpuPlacement::toleration());
    }
    tolerations.extend(model.tolerations.iter().cloned());
    tolerations
}

/// With DRA the container names the pod's claim instead of an extended-resource limit.
fn runtime_resources(model: &Validated) -> k8s_openapi::api::core::v1::ResourceRequirements {
    let mut resources = model.resources.clone();
    if model.gpu.as_ref().is_some_and(GpuPlacement::uses_dra) {
        resources.claims = Some(vec![ResourceClaim {
            name: CLAIM_REQUEST.to_owned(),
            request: None,
        }]);
    } else if let Some(gpu) = &model.gpu {
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .extend(gpu.resource_quantities());
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .extend(gpu.resource_quantities());
    }
    resources
}

fn config_hash(config: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (file, content) in config.data.iter().flatten() {
        hasher.update(file.as_bytes());
        hasher.update([0]);
        hasher.update(content.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}
