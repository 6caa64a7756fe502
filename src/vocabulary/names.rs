//! Names the operator writes and reads back: API groups, the labels on every child, the
//! children's names, and who the operator says it is.

use sha2::{Digest, Sha256};

/// API group of every custom resource this operator owns (`ModelDeployment`).
pub const API_GROUP: &str = "mlops.sathvik.dev";
/// The aggregated API the operator serves for the HorizontalPodAutoscaler.
pub const CUSTOM_METRICS_GROUP: &str = "custom.metrics.k8s.io";

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "model-operator";
/// The Controller's name in Events and logs.
pub const CONTROLLER_NAME: &str = "model-operator";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// The original project's label, kept so its selectors and dashboards keep working.
pub const LABEL_MODEL: &str = "model";
/// The model version a pod serves (or a validation Job checks).
pub const LABEL_VERSION: &str = "mlops.sathvik.dev/version";
/// The runtime's spec spelling (`triton`, `torchserve`, `fastapi-pytorch`).
pub const LABEL_RUNTIME: &str = "mlops.sathvik.dev/runtime";
/// `LABEL_MANAGED_BY`'s value on everything the operator creates.
pub const MANAGED_BY: &str = "model-operator";
/// `LABEL_COMPONENT` of the serving Deployment, its pods, Service, HPA and configuration.
pub const COMPONENT_SERVER: &str = "model-server";
/// `LABEL_COMPONENT` of the validation Job and its pod.
pub const COMPONENT_VALIDATION: &str = "validation";

/// The Deployment and the HPA carry the model's own name.
pub fn deployment_name(model_name: &str) -> String {
    model_name.to_owned()
}

/// The Service's name, as the original project named it.
pub fn service_name(model_name: &str) -> String {
    format!("{model_name}-service")
}

/// The EndpointSlice that points the model's Service at the activator while the model has no
/// replica that answers.
pub fn activator_slice_name(model_name: &str) -> String {
    format!("{}-activator", service_name(model_name))
}

/// Part of a model's Service selector while the activator takes its traffic: no pod carries
/// it, so the Service selects none and the activator's slice is its only endpoints. (A Service
/// without a selector would keep its last Endpoints, which the mirroring controller turns into
/// slices of pods that are gone.)
pub const LABEL_HELD_BY_ACTIVATOR: &str = "mlops.sathvik.dev/held-by-activator";

/// The label that ties an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Who manages an EndpointSlice: anything but the EndpointSlice controller's own value, which
/// would make that controller delete the slice of a Service without a selector.
pub const LABEL_ENDPOINTSLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// `LABEL_ENDPOINTSLICE_MANAGED_BY` on the operator's slices.
pub const ENDPOINTSLICE_MANAGER: &str = "model-operator.mlops.sathvik.dev";
/// The activator's ports (`model-operator activator`'s defaults, and its Service's): HTTP/1.1
/// and HTTP/2 alike on the first, gRPC on the second.
pub const ACTIVATOR_HTTP_PORT: i32 = 8012;
pub const ACTIVATOR_GRPC_PORT: i32 = 8013;

/// The ConfigMap holding the runtime's generated configuration files.
pub fn runtime_config_name(model_name: &str) -> String {
    format!("{model_name}-runtime-config")
}

/// `NAME-gpu-<8 hex of the DRA request>`: the ResourceClaimTemplate of a model whose GPUs come
/// through Dynamic Resource Allocation; a different request is a different template.
pub fn claim_template_name(model_name: &str, request_hash: &str) -> String {
    format!("{model_name}-gpu-{request_hash}")
}

/// `NAME-validate-<8 hex of sha256 of the verdict's inputs>`: the Job's name is its identity,
/// so anything that can change the verdict (version, URI, script, image, environment, ...)
/// makes a new Job, and an old verdict is never reused for it.
pub fn validation_job_name(model_name: &str, verdict_inputs: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for input in verdict_inputs {
        hasher.update(input.as_bytes());
        hasher.update([0]);
    }
    let digest = hex::encode(hasher.finalize());
    format!("{model_name}-validate-{}", &digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_job_name_changes_with_every_input() {
        let a = validation_job_name("bert", &["v1", "s3://m/bert.mar"]);
        assert!(
            a.starts_with("bert-validate-") && a.len() == "bert-validate-".len() + 8,
            "{a}"
        );
        assert_ne!(a, validation_job_name("bert", &["v2", "s3://m/bert.mar"]));
        assert_ne!(a, validation_job_name("bert", &["v1", "s3://m/bert2.mar"]));
        // Inputs are separated, so moving text between them is a change too.
        assert_ne!(a, validation_job_name("bert", &["v1s3://m/bert.mar", ""]));
        assert_eq!(a, validation_job_name("bert", &["v1", "s3://m/bert.mar"]));
    }

    #[test]
    fn children_are_named_as_the_original_project_named_them() {
        assert_eq!(deployment_name("dummy-model"), "dummy-model");
        assert_eq!(service_name("dummy-model"), "dummy-model-service");
        assert_eq!(runtime_config_name("bert"), "bert-runtime-config");
    }
}
