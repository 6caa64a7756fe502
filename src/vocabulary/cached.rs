//! Kubernetes objects as the operator's caches keep them: the same kinds, paths and field names
//! as k8s-openapi's types, but only the fields some reader of a cache reads, so that a watch
//! event is decoded into a small value in the first place.
//!
//! A trimmed k8s-openapi value still takes its type's whole size, however many of its fields are
//! `None`: a `Deployment` is 2,424 bytes before any of its strings (its pod template's `PodSpec`
//! is inline), a `Pod` 2,248, against some 500 for the types here. At a thousand models that
//! difference is about 4 MiB of a budget of 40.
//!
//! Every type here is a `kube::Resource` of the kind it stands for (the same group, version,
//! kind and plural), so `Api<CachedDeployment>` watches and writes `deployments`: a server-side
//! apply of a whole desired `Deployment` returns a `CachedDeployment`. Unknown fields are
//! skipped when decoding, so a fixture or a response with the full object decodes too.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::apps::v1::{Deployment, DeploymentStatus},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::Resource;
use serde::{Deserialize, Serialize};

/// A Deployment as the reconcile reads it: identity, owners and generation (the ownership check
/// and the record of what was applied), its replicas and the labels of its pod template (which
/// version it serves), and its status (rollout progress, ready replicas).
#[derive(Resource, Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[resource(inherit = Deployment)]
pub struct CachedDeployment {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<CachedDeploymentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

/// `Deployment.spec`: the replicas it asks for and its pod template's metadata.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedDeploymentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub template: CachedPodTemplate,
}

/// `Deployment.spec.template`: its metadata's labels only (the version is read from them).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedPodTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<CachedLabels>,
}

/// The labels of an object's metadata; an `ObjectMeta` takes 360 bytes however empty.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedLabels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

impl From<&Deployment> for CachedDeployment {
    fn from(deployment: &Deployment) -> Self {
        Self {
            metadata: deployment.metadata.clone(),
            spec: deployment.spec.as_ref().map(|spec| CachedDeploymentSpec {
                replicas: spec.replicas,
                template: CachedPodTemplate {
                    metadata: spec.template.metadata.as_ref().map(|template| CachedLabels {
                        labels: template.labels.clone(),
                    }),
                },
            }),
            status: deployment.status.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_deployment_decodes_into_what_is_read_of_it_and_is_small() {
        let full = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "bert-deployment", "namespace": "ml", "uid": "d-1", "generation": 3,
                         "labels": {"app.kubernetes.io/name": "bert"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "bert"}},
                     "template": {"metadata": {"labels": {"mlops.sathvik.dev/version": "v2"}},
                                  "spec": {"containers": [{"name": "server", "image": "triton"}]}}},
            "status": {"readyReplicas": 1, "observedGeneration": 3},
        });
        let cached: CachedDeployment = serde_json::from_value(full.clone()).expect("a Deployment decodes");
        let typed: Deployment = serde_json::from_value(full).expect("the fixture is a Deployment");
        assert_eq!(cached, CachedDeployment::from(&typed), "decoded and converted alike");
        assert_eq!(cached.metadata.generation, Some(3));
        let spec = cached.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let template_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(template_labels["mlops.sathvik.dev/version"], "v2");
        assert_eq!(cached.status.as_ref().unwrap().ready_replicas, Some(1));
        assert!(
            size_of::<CachedDeployment>() * 3 < size_of::<Deployment>(),
            "{} bytes against {}",
            size_of::<CachedDeployment>(),
            size_of::<Deployment>()
        );
    }

    #[test]
    fn it_is_the_deployments_resource() {
        assert_eq!(CachedDeployment::kind(&()), "Deployment");
        assert_eq!(CachedDeployment::group(&()), "apps");
        assert_eq!(CachedDeployment::version(&()), "v1");
        assert_eq!(CachedDeployment::plural(&()), "deployments");
    }
}
