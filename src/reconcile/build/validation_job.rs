//! Job `NAME-validate-<hash>`: runs `validateScript` in the runtime image against the fetched
//! model before its version is served.

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    common_labels, object_meta,
    pod::{
        container_security_context, credentials_volume, fetch_init_container, model_env, model_mount, model_volume,
        pod_security_context, runtime_credentials_mount, runtime_env_from,
    },
};
use crate::vocabulary::{
    Validated,
    names::{COMPONENT_VALIDATION, LABEL_COMPONENT, LABEL_VERSION},
};

pub const VALIDATE_CONTAINER: &str = "validate";
/// A validation that runs longer than this has hung; the Job fails and the old version stays.
const ACTIVE_DEADLINE_SECONDS: i64 = 1800;

/// Finds the script (in the model first, then in the image) and runs it with the interpreter
/// its extension names.
const RUN_SCRIPT: &str = r#"set -eu
script="$VALIDATE_SCRIPT"
case "$script" in
  /*) ;;
  *) if [ -e "$MODEL_PATH/$script" ]; then script="$MODEL_PATH/$script"; fi ;;
esac
echo "validating $MODEL_URI ($MODEL_VERSION) with $script"
case "$script" in
  *.py) exec python3 "$script" ;;
  *.sh) exec sh "$script" ;;
  *) exec "$script" ;;
esac
"#;

pub fn build(model: &Validated) -> Option<Job> {
    let plan = model.validation.as_ref()?;
    let mut labels = common_labels(model);
    labels.insert(LABEL_COMPONENT.to_owned(), COMPONENT_VALIDATION.to_owned());
    labels.insert(LABEL_VERSION.to_owned(), model.version.clone());
    let mut metadata = object_meta(model, plan.job_name.clone(), COMPONENT_VALIDATION);
    metadata.labels = Some(labels.clone());

    let mut env = model_env(model, Vec::new());
    env.push(EnvVar {
        name: "VALIDATE_SCRIPT".to_owned(),
        value: Some(plan.script.clone()),
        value_from: None,
    });
    // Validation reads files; it takes no GPU, so that it never waits for one a serving
    // replica holds. Resources are the runtime's CPU and memory.
    let container = Container {
        name: VALIDATE_CONTAINER.to_owned(),
        image: Some(model.image.clone()),
        command: Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), RUN_SCRIPT.to_owned()]),
        env: Some(env),
        env_from: Some(runtime_env_from(model)).filter(|sources| !sources.is_empty()),
        resources: Some(model.resources.clone()),
        volume_mounts: Some(
            [model_mount(model)]
                .into_iter()
                .chain(runtime_credentials_mount(model))
                .collect(),
        ),
        security_context: Some(container_security_context(false)),
        ..Container::default()
    };
    Some(Job {
        metadata,
        spec: Some(JobSpec {
            // A script's verdict does not change on retry.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    init_containers: fetch_init_container(model).map(|c| vec![c]),
                    containers: vec![container],
                    volumes: Some(
                        [model_volume(model)]
                            .into_iter()
                            .chain(credentials_volume(model))
                            .collect(),
                    ),
                    node_selector: (!model.node_selector.is_empty()).then(|| model.node_selector.clone()),
                    tolerations: (!model.tolerations.is_empty()).then(|| model.tolerations.clone()),
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}
