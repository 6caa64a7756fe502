//! Validate (pure): turns a `ModelDeployment` into `Validated`, the resolved view every builder
//! reads (defaults filled, URI parsed, GPU placement and scaling decided), or says which fields
//! are wrong. The API server has already applied the CRD's schema and CEL rules to anything read
//! from a cluster; `check` applies them here too for objects read from files.

use std::time::Duration;

use kube::{Resource, ResourceExt};
use serde_json::Value;

use crate::{
    api::{
        ModelDeployment,
        admission::{self, FieldError, FieldErrors},
    },
    runtimes,
    vocabulary::{
        AutoscalingPlan, CredentialsPlan, GpuPlacement, GpuSharing, ModelSource, ModelUri, OperatorImages, Scaling,
        ScalingMetric, SizeLimit, Validated, ValidationPlan, is_quantity, names::validation_job_name, parse_duration,
        quantity_bytes,
    },
};

/// Default HPA targets when `autoscaling.target` is not given.
pub const DEFAULT_GPU_UTILIZATION_TARGET: i32 = 70;
pub const DEFAULT_CPU_UTILIZATION_TARGET: i32 = 80;
pub const DEFAULT_QUEUE_TIME_TARGET_US: i32 = 50_000;
/// The model volume's size limit when neither `modelSizeLimit` nor an ephemeral-storage limit
/// says otherwise: room for a 40-billion-parameter model in fp16, not for a whole node's disk.
pub const DEFAULT_MODEL_SIZE_LIMIT: &str = "100Gi";
/// How long a model with `minReplicas: 0` serves no request before it goes to zero, when
/// `scaleToZeroAfter` is not given.
pub const DEFAULT_SCALE_TO_ZERO_AFTER: Duration = Duration::from_secs(15 * 60);
/// The shortest `scaleToZeroAfter`: the idle check reads the runtimes' counts no more often
/// than every second, and a shorter window would put a model with steady but sparse traffic
/// to sleep between two requests.
pub const MIN_SCALE_TO_ZERO_AFTER: Duration = Duration::from_secs(2);

/// Admission (schema and CEL, as the API server applies them) followed by `validate`: for
/// objects that come from files rather than from the API server.
///
/// Both run whenever the object decodes, so a file with problems of both kinds hears of all of
/// them at once.
pub fn check(object: &Value, images: &OperatorImages) -> Result<Validated, FieldErrors> {
    let admission::Admission { model, mut errors } = admission::admit_all(object);
    let Some(model) = model else {
        return Err(FieldErrors(errors));
    };
    match validate(&model, images) {
        Ok(validated) if errors.is_empty() => Ok(validated),
        Ok(_) => Err(FieldErrors(errors)),
        Err(FieldErrors(more)) => {
            errors.extend(
                more.into_iter()
                    .filter(|error| !errors.contains(error))
                    .collect::<Vec<_>>(),
            );
            Err(FieldErrors(errors))
        }
    }
}

/// What the schema cannot say: the URI must parse, quantities must be quantities, and the
/// runtime must support the chosen scaling metric.
pub fn validate(model: &ModelDeployment, images: &OperatorImages) -> Result<Validated, FieldErrors> {
    let spec = &model.spec;
    let mut errors = Vec::new();
    let mut refuse = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_owned(),
            message,
        })
    };

    let name = model.name_any();
    let namespace = model.namespace().unwrap_or_else(|| "default".to_owned());
    let profile = runtimes::profile(spec.runtime);
    let model_name = spec.model_name.clone().unwrap_or_else(|| name.clone());

    let source = match ModelUri::parse(&spec.model_uri) {
        Ok(uri) if matches!(uri.source, ModelSource::File(_)) => {
            refuse(
                "spec.modelURI",
                "file:// names a path on the operator's machine, not in the pod; use http(s), s3, gs or pvc".into(),
            );
            None
        }
        Ok(uri) => Some(uri),
        Err(error) => {
            refuse("spec.modelURI", error.to_string());
            None
        }
    };

    let resources = spec.resources.clone().unwrap_or_default();
    for (kind, quantities) in [("limits", &resources.limits), ("requests", &resources.requests)] {
        for (resource, quantity) in quantities.iter().flatten() {
            if !is_quantity(&quantity.0) {
                refuse(
                    &format!("spec.resources.{kind}.{resource}"),
                    format!("{:?} is not a quantity (e.g. 500m, 2, 4Gi)", quantity.0),
                );
            }
        }
    }

    let gpu = spec.gpu.as_ref().map(GpuPlacement::from_spec);
    let scaling = if spec.autoscale {
        let autoscaling = spec.autoscaling.clone().unwrap_or_default();
        // NVML has no utilisation counter for a MIG slice, so MIG models default to CPU.
        let mig = gpu.as_ref().is_some_and(|g| g.sharing == GpuSharing::Mig);
        let metric = autoscaling.metric.unwrap_or(if gpu.is_some() && !mig {
            ScalingMetric::GpuUtilization
        } else {
            ScalingMetric::Cpu
        });
        if metric == ScalingMetric::GpuUtilization && mig {
            refuse(
                "spec.autoscaling.metric",
                "gpu-utilization cannot be measured on a MIG slice (NVML reports none); use inference-queue or cpu"
                    .into(),
            );
        }
        if metric == ScalingMetric::InferenceQueue && profile.queue_time().is_none() {
            refuse(
                "spec.autoscaling.metric",
                format!(
                    "runtime {} reports no queue time; use cpu or gpu-utilization",
                    spec.runtime
                ),
            );
        }
        if metric == ScalingMetric::GpuUtilization && gpu.is_none() {
            refuse("spec.autoscaling.metric", "gpu-utilization needs spec.gpu".into());
        }
        let target = autoscaling.target.unwrap_or(match metric {
            ScalingMetric::GpuUtilization => DEFAULT_GPU_UTILIZATION_TARGET,
            ScalingMetric::Cpu => DEFAULT_CPU_UTILIZATION_TARGET,
            ScalingMetric::InferenceQueue => DEFAULT_QUEUE_TIME_TARGET_US,
        });
        let scale_to_zero_after = (autoscaling.min_replicas == 0).then(|| {
            let written = autoscaling.scale_to_zero_after.as_deref();
            match written.map(parse_duration) {
                None => DEFAULT_SCALE_TO_ZERO_AFTER,
                Some(Ok(after)) if after >= MIN_SCALE_TO_ZERO_AFTER => after,
                Some(Ok(_)) => {
                    refuse(
                        "spec.autoscaling.scaleToZeroAfter",
                        format!(
                            "{:?} is shorter than the least idle time, {}: the runtimes' request counts are read about that often",
                            written.unwrap_or_default(),
                            humantime::format_duration(MIN_SCALE_TO_ZERO_AFTER)
                        ),
                    );
                    DEFAULT_SCALE_TO_ZERO_AFTER
                }
                Some(Err(message)) => {
                    refuse("spec.autoscaling.scaleToZeroAfter", message);
                    DEFAULT_SCALE_TO_ZERO_AFTER
                }
            }
        });
        if autoscaling.min_replicas > 0 && autoscaling.scale_to_zero_after.is_some() {
            refuse(
                "spec.autoscaling.scaleToZeroAfter",
                "needs minReplicas: 0; with a minimum of one or more the model never goes to zero".into(),
            );
        }
        if let Some(Err(message)) = autoscaling.cold_start_timeout.as_deref().map(parse_duration) {
            refuse("spec.autoscaling.coldStartTimeout", message);
        }
        Scaling::Autoscaled(AutoscalingPlan {
            min_replicas: autoscaling.min_replicas,
            max_replicas: autoscaling.max_replicas,
            metric,
            target,
            scale_down_stabilization_seconds: autoscaling.scale_down_stabilization_seconds,
            scale_to_zero_after,
        })
    } else {
        Scaling::Fixed {
            replicas: spec.replicas,
        }
    };

    let (Some(source), true) = (source, errors.is_empty()) else {
        return Err(FieldErrors(errors));
    };
    let layout = profile.layout(&model_name, &source.shape());
    let image = spec
        .runtime_image
        .clone()
        .unwrap_or_else(|| profile.default_image(images, gpu.is_some()));
    // Everything the validation Job's verdict can depend on: what is fetched and where it
    // lands, the script, the image it runs in, its environment and resources.
    let validation = spec.validate_script.clone().map(|script| {
        let env = serde_json::to_string(&spec.env).expect("env serializes");
        let resources = serde_json::to_string(&resources).expect("resources serialize");
        let credentials = spec.model_credentials.as_ref().map_or("", |c| c.secret_name.as_str());
        let inputs = [
            spec.version.as_str(),
            &spec.model_uri,
            credentials,
            &script,
            &image,
            spec.runtime.as_str(),
            &layout.model_path,
            &env,
            &resources,
        ];
        ValidationPlan {
            job_name: validation_job_name(&name, &inputs),
            script,
        }
    });

    let size_limit = match &source.source {
        ModelSource::Pvc { .. } => None,
        _ => {
            let quantity = spec
                .model_size_limit
                .as_ref()
                .map(|q| q.0.clone())
                .or_else(|| {
                    resources
                        .limits
                        .as_ref()
                        .and_then(|limits| limits.get("ephemeral-storage"))
                        .map(|q| q.0.clone())
                })
                .unwrap_or_else(|| DEFAULT_MODEL_SIZE_LIMIT.to_owned());
            // Admission checked the field; a limit from resources is checked there too.
            quantity_bytes(&quantity).map(|bytes| SizeLimit { quantity, bytes })
        }
    };
    let credentials = spec.model_credentials.as_ref().map(|c| CredentialsPlan {
        secret_name: c.secret_name.clone(),
        expose_to_runtime: c.expose_to_runtime,
    });

    Ok(Validated {
        owner: model.controller_owner_ref(&()),
        namespace,
        runtime: spec.runtime,
        model_name,
        version: spec.version.clone(),
        image,
        fetcher_image: images.fetcher.clone(),
        model_uri: spec.model_uri.clone(),
        source,
        size_limit,
        credentials,
        layout,
        resources,
        gpu,
        scaling,
        asleep: false,
        activator: None,
        validation,
        node_selector: spec.node_selector.clone(),
        tolerations: spec.tolerations.clone(),
        affinity: spec.affinity.clone(),
        env: spec.env.clone(),
        env_from: spec.env_from.clone(),
        runtime_args: spec.runtime_args.clone(),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_of(spec: &str) -> String {
        let script = if spec.contains("validateScript") {
            ""
        } else {
            "  validateScript: check.py\n"
        };
        let yaml = format!(
            "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: bert}}\nspec:\n  \
             modelURI: s3://m/bert.mar\n  runtime: torchserve\n{script}{spec}"
        );
        let object: Value = serde_yaml_ng::from_str(&yaml).expect("fixture is YAML");
        check(&object, &OperatorImages::default())
            .expect("fixture is valid")
            .validation
            .expect("validated")
            .job_name
    }

    #[test]
    fn the_validation_job_is_a_new_one_whenever_its_verdict_could_change() {
        let base = job_of("");
        assert_eq!(base, job_of(""), "the same spec, the same Job");
        for change in [
            "  version: v2\n",
            "  validateScript: check_harder.py\n",
            "  runtimeImage: registry.example.com/torchserve:0.12.1\n",
            "  env: [{name: THRESHOLD, value: '0.9'}]\n",
            "  resources: {limits: {memory: 1Gi}}\n",
            "  runtime: fastapi-pytorch\n",
        ] {
            assert_ne!(base, job_of(change), "{change}");
        }
        for same in ["  replicas: 3\n", "  modelName: bert-large\n"] {
            assert_eq!(base, job_of(same), "{same} cannot change a verdict");
        }
    }
}
