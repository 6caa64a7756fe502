//! Pure: renders the children of one `ModelDeployment` from its `Validated` view. One file per
//! owned kind; `Desired` gathers them so that `apply` destructures every field and a new kind
//! cannot be forgotten.

mod activator_slice;
mod deployment;
mod hpa;
mod pod;
mod resource_claim_template;
mod runtime_config;
mod service;
mod validation_job;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        core::v1::{ConfigMap, Service},
        discovery::v1::EndpointSlice,
        resource::v1::ResourceClaimTemplate,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Serialize;

pub use self::{
    activator_slice::build as build_activator_slice,
    deployment::{build as build_deployment, pod_tolerations},
    hpa::build as build_hpa,
    resource_claim_template::{build as build_resource_claim_template, name_for as claim_template_name_for},
    runtime_config::build as build_runtime_config,
    service::build as build_service,
    validation_job::build as build_validation_job,
};
use crate::vocabulary::{
    Validated,
    names::{COMPONENT_SERVER, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_MODEL, LABEL_NAME, MANAGED_BY},
};

/// Everything the operator owns for one ModelDeployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Desired {
    /// Generated runtime configuration (TorchServe's config.properties), when the runtime has any.
    pub runtime_config: Option<ConfigMap>,
    /// The ResourceClaimTemplate each replica's GPU claim is made from, when GPUs come through DRA.
    pub resource_claim_template: Option<ResourceClaimTemplate>,
    pub deployment: Deployment,
    pub service: Service,
    /// Points the Service at the activator while the model has no replica that answers.
    pub activator_slice: Option<EndpointSlice>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub validation_job: Option<Job>,
}

pub fn build(model: &Validated) -> Desired {
    let runtime_config = build_runtime_config(model);
    Desired {
        deployment: build_deployment(model, runtime_config.as_ref()),
        runtime_config,
        resource_claim_template: build_resource_claim_template(model),
        service: build_service(model),
        activator_slice: build_activator_slice(model),
        hpa: build_hpa(model),
        validation_job: build_validation_job(model),
    }
}

impl Desired {
    /// The objects in the order they are applied: configuration and the GPU claim template
    /// before the pods that use them, the validation Job before the Deployment it gates, the HPA
    /// after its target.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        let Desired {
            runtime_config,
            resource_claim_template,
            deployment,
            service,
            activator_slice,
            hpa,
            validation_job,
        } = self;
        let mut objects = Vec::new();
        objects.extend(runtime_config.iter().map(to_value));
        objects.extend(resource_claim_template.iter().map(to_value));
        objects.extend(validation_job.iter().map(to_value));
        objects.push(to_value(deployment));
        objects.push(to_value(service));
        objects.extend(activator_slice.iter().map(to_value));
        objects.extend(hpa.iter().map(to_value));
        objects
    }
}

fn to_value<K: Serialize + k8s_openapi::Resource>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("Kubernetes objects serialize to JSON");
    // k8s-openapi serializes apiVersion and kind; make sure they lead for readable output.
    if let serde_json::Value::Object(map) = &mut value {
        let mut ordered = serde_json::Map::new();
        ordered.insert("apiVersion".into(), K::API_VERSION.into());
        ordered.insert("kind".into(), K::KIND.into());
        for (key, field) in std::mem::take(map) {
            ordered.entry(key).or_insert(field);
        }
        *map = ordered;
    }
    value
}

/// Labels every child carries.
pub fn common_labels(model: &Validated) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), model.name.clone()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_MODEL.to_owned(), model.name.clone()),
    ])
}

/// The Deployment's (immutable) selector and the Service's: serving pods only, never the
/// validation Job's pods.
pub fn server_selector(model: &Validated) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), model.name.clone()),
        (LABEL_COMPONENT.to_owned(), COMPONENT_SERVER.to_owned()),
    ])
}

fn object_meta(model: &Validated, name: String, component: &str) -> ObjectMeta {
    let mut labels = common_labels(model);
    labels.insert(LABEL_COMPONENT.to_owned(), component.to_owned());
    ObjectMeta {
        name: Some(name),
        namespace: Some(model.namespace.clone()),
        labels: Some(labels),
        owner_references: model.owner.clone().map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests;
