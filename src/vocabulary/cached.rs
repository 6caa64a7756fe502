//! Kubernetes objects as the operator's caches keep them: the same kinds, paths and field names
//! as k8s-openapi's types, but only the fields some reader of a cache reads, so that a watch
//! event is decoded into a small value in the first place.
//!
//! A trimmed k8s-openapi value still takes its type's whole size, however many of its fields are
//! `None`: a `Deployment` is 2,424 bytes before any of its strings (its pod template's `PodSpec`
//! is inline), a `Pod` 2,248, and the types here a third of that or less (their tests check it).
//! With them, and the leaner records beside them, an operator with a thousand models went from
//! 45.7 to 39.3 MiB at rest (`docs/scale.md`).
//!
//! Every type here is a `kube::Resource` of the kind it stands for (the same group, version,
//! kind and plural), so `Api<CachedDeployment>` watches and writes `deployments`: a server-side
//! apply of a whole desired `Deployment` returns a `CachedDeployment`. Unknown fields are
//! skipped when decoding, so a fixture or a response with the full object decodes too.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentStatus},
        core::v1::{Pod, PodResourceClaimStatus, ResourceRequirements, Service},
    },
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

/// For tests: what decoding keeps of a typed fixture.
#[cfg(test)]
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

/// A Service as the reconcile reads it: identity, owners and version (is it the model's, is it
/// as written). Its spec (ports, selector, cluster IPs) is decoded only to be digested by the
/// cache's projection and dropped: a Service keeps no `generation`, so the digest is what makes
/// an edit to its spec (drift) a change the cache shows, and the repair is triggered at once
/// rather than at the next resync.
#[derive(Resource, Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[resource(inherit = Service)]
pub struct CachedService {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec as sent, until the projection digests it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// A digest of the spec, set by the cache's projection (never part of what the API sends).
    #[serde(default, rename = "specDigest", skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<u64>,
}

/// A pod, of any owner, as the readers of the pod cache read it: the GPU capacity check (its
/// node, its containers' GPU requests, its phase), the model probes and custom metrics (labels,
/// IP, readiness), the DRA status (which claim each of its claims became) and the triggers.
#[derive(Resource, Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[resource(inherit = Pod)]
pub struct CachedPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<CachedPodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CachedPodStatus>,
}

/// `Pod.spec`: where it runs and its containers' resources.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<CachedContainer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<CachedContainer>>,
}

/// A container's name and resources; a k8s-openapi `Container` is 2,144 bytes however empty.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedContainer {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// `Pod.status`: its phase, IP, conditions and claims.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CachedPodCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_claim_statuses: Option<Vec<PodResourceClaimStatus>>,
}

/// A pod condition's type and status (its times and messages are nobody's business here).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedPodCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

/// For tests: what decoding keeps of a typed fixture.
#[cfg(test)]
impl From<&Pod> for CachedPod {
    fn from(pod: &Pod) -> Self {
        let containers = |list: &[k8s_openapi::api::core::v1::Container]| -> Vec<CachedContainer> {
            list.iter()
                .map(|c| CachedContainer {
                    name: c.name.clone(),
                    resources: c.resources.clone(),
                })
                .collect()
        };
        Self {
            metadata: pod.metadata.clone(),
            spec: pod.spec.as_ref().map(|spec| CachedPodSpec {
                node_name: spec.node_name.clone(),
                containers: containers(&spec.containers),
                init_containers: spec.init_containers.as_deref().map(containers),
            }),
            status: pod.status.as_ref().map(|status| CachedPodStatus {
                phase: status.phase.clone(),
                pod_ip: status.pod_ip.clone(),
                conditions: status.conditions.as_ref().map(|conditions| {
                    conditions
                        .iter()
                        .map(|c| CachedPodCondition {
                            type_: c.type_.clone(),
                            status: c.status.clone(),
                        })
                        .collect()
                }),
                resource_claim_statuses: status.resource_claim_statuses.clone(),
            }),
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

    #[test]
    fn a_pod_decodes_into_what_is_read_of_it_and_is_small() {
        let full = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bert-0", "namespace": "ml", "uid": "p-1", "labels": {"app.kubernetes.io/name": "bert"}},
            "spec": {"nodeName": "gpu-a100-0",
                     "containers": [{"name": "server", "image": "triton", "env": [{"name": "A", "value": "b"}],
                                     "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
                     "initContainers": [{"name": "fetch", "image": "fetcher"}],
                     "volumes": [{"name": "model", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.244.1.7", "hostIP": "10.1.0.11",
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T09:00:00Z"}],
                       "resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": "bert-0-gpu-x1"}]},
        });
        let cached: CachedPod = serde_json::from_value(full.clone()).expect("a Pod decodes");
        let typed: Pod = serde_json::from_value(full).expect("the fixture is a Pod");
        assert_eq!(cached, CachedPod::from(&typed), "decoded and converted alike");
        let spec = cached.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("gpu-a100-0"));
        assert_eq!(
            spec.containers[0].resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"].0,
            "2"
        );
        assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "fetch");
        let status = cached.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.7"));
        assert_eq!(status.conditions.as_ref().unwrap()[0].type_, "Ready");
        assert_eq!(
            status.resource_claim_statuses.as_ref().unwrap()[0]
                .resource_claim_name
                .as_deref(),
            Some("bert-0-gpu-x1")
        );
        assert!(
            size_of::<CachedPod>() * 3 < size_of::<Pod>(),
            "{} bytes against {}",
            size_of::<CachedPod>(),
            size_of::<Pod>()
        );
        assert_eq!(CachedPod::kind(&()), "Pod");
        assert_eq!(CachedPod::plural(&()), "pods");
    }

    #[test]
    fn a_service_decodes_into_its_identity_and_its_spec_to_digest() {
        let cached: CachedService = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "bert-service", "namespace": "ml", "uid": "s-1"},
            "spec": {"selector": {"app.kubernetes.io/name": "bert"}, "ports": [{"port": 8080}]},
            "status": {"loadBalancer": {}},
        }))
        .expect("a Service decodes");
        assert_eq!(cached.metadata.uid.as_deref(), Some("s-1"));
        assert_eq!(cached.spec.as_ref().unwrap()["ports"][0]["port"], 8080);
        assert_eq!(cached.spec_digest, None, "only the projection sets it");
        assert!(size_of::<CachedService>() * 2 < size_of::<Service>());
        assert_eq!(CachedService::plural(&()), "services");
    }
}
