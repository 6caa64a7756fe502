//! Pieces shared by the serving pods and the validation Job's pod: the model-fetch init
//! container, the model volume, the model environment and the security contexts.

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, PersistentVolumeClaimVolumeSource,
        PodSecurityContext, ResourceRequirements, SeccompProfile, SecretEnvSource, SecretVolumeSource, SecurityContext,
        Volume, VolumeMount,
    },
    apimachinery::pkg::api::resource::Quantity,
};

use crate::{
    runtimes::MODEL_ROOT,
    vocabulary::{ModelSource, Validated},
};

pub const MODEL_VOLUME: &str = "model-store";
pub const FETCH_CONTAINER: &str = "model-fetch";
/// The volume of the `modelCredentials` Secret, and where the containers that get it see it.
pub const CREDENTIALS_VOLUME: &str = "model-credentials";
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/model-credentials";
/// Runtimes and our images run as this user; NGC's Triton and TorchServe images define it.
const RUNTIME_UID: i64 = 1000;

/// The model's volume: an emptyDir the init container fills, or the user's claim.
pub fn model_volume(model: &Validated) -> Volume {
    match &model.source.source {
        ModelSource::Pvc { claim, .. } => Volume {
            name: MODEL_VOLUME.to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        },
        // A size limit, so that a model larger than meant (or an archive that unpacks without
        // end) is an evicted pod, not a full node disk; the fetch enforces it as it writes too.
        _ => Volume {
            name: MODEL_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: model.size_limit.as_ref().map(|limit| Quantity(limit.quantity.clone())),
            }),
            ..Volume::default()
        },
    }
}

/// The `modelCredentials` Secret as a volume, when the spec names one.
pub fn credentials_volume(model: &Validated) -> Option<Volume> {
    let plan = model.credentials.as_ref()?;
    Some(Volume {
        name: CREDENTIALS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(plan.secret_name.clone()),
            // Readable by the container's user only.
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    })
}

fn credentials_mount() -> VolumeMount {
    VolumeMount {
        name: CREDENTIALS_VOLUME.to_owned(),
        mount_path: CREDENTIALS_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn credentials_env_from(model: &Validated) -> Option<EnvFromSource> {
    let plan = model.credentials.as_ref()?;
    Some(EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: plan.secret_name.clone(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    })
}

/// What the runtime (and the validation script) gets besides `env`: the spec's `envFrom`, and
/// the credentials when `exposeToRuntime` asks for them.
pub fn runtime_env_from(model: &Validated) -> Vec<EnvFromSource> {
    let mut sources = model.env_from.clone();
    if model.credentials.as_ref().is_some_and(|c| c.expose_to_runtime) {
        sources.extend(credentials_env_from(model));
    }
    sources
}

/// The credentials' mount for the runtime container, when `exposeToRuntime` asks for it.
pub fn runtime_credentials_mount(model: &Validated) -> Option<VolumeMount> {
    model
        .credentials
        .as_ref()
        .filter(|c| c.expose_to_runtime)
        .map(|_| credentials_mount())
}

/// `modelURI` as every container but the fetch sees it: without a password or query values.
pub fn shown_model_uri(model: &Validated) -> String {
    if model.source.has_credentials() {
        model.source.to_string()
    } else {
        model.model_uri.clone()
    }
}

/// How a container sees the model: the whole store, or the claim's path at the model path.
pub fn model_mount(model: &Validated) -> VolumeMount {
    match &model.source.source {
        ModelSource::Pvc { path, .. } => VolumeMount {
            name: MODEL_VOLUME.to_owned(),
            mount_path: model.layout.model_path.clone(),
            sub_path: (!path.is_empty()).then(|| path.clone()),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        _ => VolumeMount {
            name: MODEL_VOLUME.to_owned(),
            mount_path: MODEL_ROOT.to_owned(),
            ..VolumeMount::default()
        },
    }
}

/// The init container that downloads the model; none for a claim, which is mounted instead.
pub fn fetch_init_container(model: &Validated) -> Option<Container> {
    if matches!(model.source.source, ModelSource::Pvc { .. }) {
        return None;
    }
    let mut args = vec!["fetch".to_owned()];
    // The user's env (a region, an endpoint), less the names the fetch sets itself.
    let mut env: Vec<EnvVar> = model
        .env
        .iter()
        .filter(|e| !["MODEL_URI", "MODEL_CREDENTIALS_DIR"].contains(&e.name.as_str()))
        .cloned()
        .collect();
    if model.source.has_credentials() {
        // Not an argument, which `ps` and every pod description show: the fetch reads it from
        // its environment, and nothing else gets it.
        env.push(EnvVar {
            name: "MODEL_URI".to_owned(),
            value: Some(model.model_uri.clone()),
            value_from: None,
        });
    } else {
        args.extend(["--uri".to_owned(), model.model_uri.clone()]);
    }
    args.extend(["--dest".to_owned(), model.layout.fetch_dir.clone()]);
    if let Some(file_name) = &model.layout.file_name {
        args.extend(["--file-name".to_owned(), file_name.clone()]);
    }
    if let Some(limit) = &model.size_limit {
        args.extend(["--size-limit".to_owned(), limit.bytes.to_string()]);
    }
    let mut mounts = vec![model_mount(model)];
    if model.credentials.is_some() {
        mounts.push(credentials_mount());
        env.push(EnvVar {
            name: "MODEL_CREDENTIALS_DIR".to_owned(),
            value: Some(CREDENTIALS_DIR.to_owned()),
            value_from: None,
        });
    }
    Some(Container {
        name: FETCH_CONTAINER.to_owned(),
        image: Some(model.fetcher_image.clone()),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        env_from: credentials_env_from(model).map(|source| vec![source]),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_owned(), Quantity("100m".into())),
                    ("memory".to_owned(), Quantity("64Mi".into())),
                ]
                .into(),
            ),
            limits: Some([("memory".to_owned(), Quantity("512Mi".into()))].into()),
            ..ResourceRequirements::default()
        }),
        security_context: Some(container_security_context(true)),
        ..Container::default()
    })
}

/// `MODEL_*` variables, then the runtime's, then the user's: a user variable replaces one of
/// ours with the same name, in place.
pub fn model_env(model: &Validated, runtime_env: Vec<EnvVar>) -> Vec<EnvVar> {
    let plain = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    };
    let mut env = vec![
        plain("MODEL_NAME", &model.model_name),
        plain("MODEL_VERSION", &model.version),
        plain("MODEL_URI", &shown_model_uri(model)),
        plain("MODEL_PATH", &model.layout.model_path),
    ];
    if model.gpu.is_none() {
        // GPU nodes' container runtime hands every GPU to a container whose image sets
        // NVIDIA_VISIBLE_DEVICES=all (Triton's does) unless told otherwise.
        env.push(plain("NVIDIA_VISIBLE_DEVICES", "void"));
    } else {
        // The device plugin picks the GPUs; these say what the container runtime mounts and how
        // CUDA numbers them. Without `compute` an image that does not set it itself (a plain
        // Python base, like the fastapi runtime's) gets no libcuda; PCI order makes CUDA's
        // device 0 the same GPU as NVML's (and the node agent's) index 0.
        env.push(plain("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"));
        env.push(plain("CUDA_DEVICE_ORDER", "PCI_BUS_ID"));
    }
    env.extend(runtime_env);
    for user in &model.env {
        match env.iter_mut().find(|e| e.name == user.name) {
            Some(existing) => *existing = user.clone(),
            None => env.push(user.clone()),
        }
    }
    env
}

pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUNTIME_UID),
        run_as_group: Some(RUNTIME_UID),
        fs_group: Some(RUNTIME_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// Restricted Pod Security Standard. Runtimes keep a writable root file system: Triton and
/// TorchServe write logs and caches to their home directories.
pub fn container_security_context(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        read_only_root_filesystem: Some(read_only_root),
        ..SecurityContext::default()
    }
}
