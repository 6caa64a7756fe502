//! What each watch cache keeps of an object: only the fields some part of the operator reads,
//! so that memory follows what the operator needs rather than the size of the cluster's objects
//! (every pod of the cluster is cached for the GPU capacity check; a pod's env, volumes and
//! container statuses are most of it), and so that a change to a field nobody reads (a node's
//! heartbeat, a container's restart count) triggers no reconcile.
//!
//! Readers of the caches (`reconcile::fetch`, `model_readiness`, `custom_metrics`, the
//! triggers) read nothing that is dropped here; the tests below spell out what stays.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        core::v1::{ConfigMap, Node, NodeCondition, NodeSpec, NodeStatus, ResourceRequirements},
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kube::Resource;
use serde::Serialize;

use crate::{
    api::ModelDeployment,
    vocabulary::{
        GPU_RESOURCE_PREFIX,
        cached::{CachedContainer, CachedDeployment, CachedPod, CachedService},
        digest::json_hash,
        names::LABEL_VERSION,
    },
};

/// Where `kubectl apply` (client-side) keeps the last configuration it applied.
const KUBECTL_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Metadata every cache keeps: identity, labels, owners and deletion; never managed fields.
fn common(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
}

/// A pod, as the capacity check (node, GPU requests, phase), the probes and custom metrics
/// (labels, IP, readiness) and the triggers read it ([`CachedPod`] decodes nothing else).
pub fn pod(pod: &mut CachedPod) {
    common(&mut pod.metadata);
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    pod.metadata.finalizers = None;
    pod.metadata.generate_name = None;
    // A container that asks for no GPU adds nothing any reader sums, so only the
    // GPU-requesting ones stay (most pods keep none).
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers = std::mem::take(&mut spec.containers)
            .into_iter()
            .filter_map(gpu_requests_only)
            .collect();
        spec.init_containers = spec
            .init_containers
            .take()
            .map(|containers| containers.into_iter().filter_map(gpu_requests_only).collect::<Vec<_>>())
            .filter(|containers| !containers.is_empty());
    }
    if let Some(conditions) = pod.status.as_mut().and_then(|status| status.conditions.as_mut()) {
        conditions.retain(|c| c.type_ == "Ready");
    }
}

/// A container's name and its NVIDIA resources (requests and limits), nothing else of it; `None`
/// when it asks for no GPU.
fn gpu_requests_only(container: CachedContainer) -> Option<CachedContainer> {
    let gpus = |list: Option<BTreeMap<String, Quantity>>| {
        list.map(|list| {
            list.into_iter()
                .filter(|(name, _)| name.starts_with(GPU_RESOURCE_PREFIX))
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|list| !list.is_empty())
    };
    let resources = container.resources.map(|resources| ResourceRequirements {
        requests: gpus(resources.requests),
        limits: gpus(resources.limits),
        ..ResourceRequirements::default()
    });
    resources
        .filter(|r| r.requests.is_some() || r.limits.is_some())
        .map(|resources| CachedContainer {
            name: container.name,
            resources: Some(resources),
        })
}

/// A node, as the capacity check reads it: labels, taints, cordon, allocatable, readiness. The
/// heartbeat times of its conditions go, so that a heartbeat is no change.
pub fn node(node: &mut Node) {
    common(&mut node.metadata);
    node.metadata.annotations = None;
    node.spec = node.spec.take().map(|spec| NodeSpec {
        taints: spec.taints,
        unschedulable: spec.unschedulable,
        ..NodeSpec::default()
    });
    node.status = node.status.take().map(|status| NodeStatus {
        allocatable: status.allocatable,
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| NodeCondition {
                    type_: c.type_,
                    status: c.status,
                    ..NodeCondition::default()
                })
                .collect()
        }),
        ..NodeStatus::default()
    });
}

/// The operator's Deployment: its replicas, the version its template serves and its status
/// ([`CachedDeployment`] decodes nothing else). The annotations (the rollout's revision) change
/// with the generation the reconcile compares; the template's other labels are the operator's
/// own and never read back.
pub fn deployment(deployment: &mut CachedDeployment) {
    common(&mut deployment.metadata);
    deployment.metadata.annotations = None;
    if let Some(template) = deployment
        .spec
        .as_mut()
        .and_then(|spec| spec.template.metadata.as_mut())
    {
        template.labels = template
            .labels
            .take()
            .map(|labels| labels.into_iter().filter(|(key, _)| key == LABEL_VERSION).collect());
    }
}

/// The operator's validation Job: only its status (the verdict) is read.
pub fn job(job: &mut Job) {
    common(&mut job.metadata);
    if let Some(spec) = job.spec.as_mut() {
        spec.template.spec = None;
    }
}

/// The operator's runtime configuration: only whether it exists and whose it is is read.
pub fn config_map(config_map: &mut ConfigMap) {
    common(&mut config_map.metadata);
    config_map.data = None;
    config_map.binary_data = None;
}

/// The operator's HPA: its identity, owners and spec (is it the model's, is it as written; an
/// HPA has no `generation`, so the spec itself is compared). Its status changes with every
/// metrics read, so keeping it would also mean a reconcile every 15 s per autoscaled model.
pub fn hpa(hpa: &mut HorizontalPodAutoscaler) {
    common(&mut hpa.metadata);
    hpa.status = None;
}

/// A ModelDeployment, whole but for the copy of itself that `kubectl apply` keeps in an
/// annotation (as large as the spec; nothing reads it).
pub fn model_deployment(model: &mut ModelDeployment) {
    common(&mut model.metadata);
    if let Some(annotations) = model.metadata.annotations.as_mut() {
        annotations.remove(KUBECTL_LAST_APPLIED);
    }
    model.metadata.annotations = model.metadata.annotations.take().filter(|a| !a.is_empty());
}

/// The operator's Service: its identity, owners and version, and a digest of its spec in place
/// of the spec ([`CachedService`] says why).
pub fn service(service: &mut CachedService) {
    common(&mut service.metadata);
    service.spec_digest = service.spec.take().map(|spec| json_hash(&spec));
}

/// The operator's own EndpointSlice (pointing a Service at the activator): whether it exists,
/// as which object, is all the reconcile reads.
pub fn endpoint_slice(slice: &mut k8s_openapi::api::discovery::v1::EndpointSlice) {
    common(&mut slice.metadata);
    slice.endpoints = Vec::new();
    slice.ports = None;
}

/// Everything else (the DRA objects) is kept whole but for managed fields.
pub fn whole<K: Resource>(object: &mut K) {
    common(object.meta_mut());
}

/// A hash of what the cache keeps of an object, leaving out its `resourceVersion`: two events
/// with the same hash carry no change any reader could see.
pub fn content_hash<K: Resource + Serialize>(object: &mut K) -> u64 {
    let version = object.meta_mut().resource_version.take();
    let hash = json_hash(object);
    object.meta_mut().resource_version = version;
    hash
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        gpu::pod_request,
        vocabulary::pods::{is_finished, is_ready, is_terminating, node_name, requests_gpus},
    };

    /// A pod as the API server sends it, with everything a real one has.
    fn full_pod_json(restarts: i32) -> serde_json::Value {
        json!({
            "metadata": {
                "name": "bert-deployment-7d9f-abcde", "namespace": "ml", "uid": "p-1", "resourceVersion": "42",
                "deletionTimestamp": "2026-12-01T10:00:00Z",
                "labels": {"app.kubernetes.io/name": "bert", "app.kubernetes.io/component": "server"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bert-7d9f", "uid": "rs-1"}],
                "managedFields": [{"manager": "kubelet"}],
            },
            "spec": {
                "nodeName": "gpu-a100-0",
                "volumes": [{"name": "model", "emptyDir": {}}],
                "initContainers": [{"name": "fetch", "image": "fetcher", "resources": {"limits": {"cpu": "1"}}}],
                "containers": [{
                    "name": "server", "image": "triton", "env": [{"name": "A", "value": "b"}],
                    "resources": {"requests": {"cpu": "2", "nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2", "memory": "8Gi"}},
                }],
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            },
            "status": {
                "phase": "Running", "podIP": "10.244.1.7", "hostIP": "10.1.0.11",
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T09:00:00Z"},
                    {"type": "PodScheduled", "status": "True"},
                ],
                "containerStatuses": [{"name": "server", "image": "triton", "imageID": "", "ready": true, "restartCount": restarts}],
            },
        })
    }

    /// That pod as the cache decodes it, before the projection.
    fn full_pod(restarts: i32) -> CachedPod {
        serde_json::from_value(full_pod_json(restarts)).expect("fixture is a Pod")
    }

    #[test]
    fn a_pod_keeps_what_the_capacity_check_probes_and_metrics_read() {
        let full = full_pod(0);
        let mut kept = full.clone();
        pod(&mut kept);
        assert_eq!(kept.metadata.labels, full.metadata.labels);
        assert_eq!(kept.metadata.uid, full.metadata.uid);
        assert_eq!(kept.metadata.namespace, full.metadata.namespace);
        assert_eq!(node_name(&kept), node_name(&full));
        assert_eq!(is_ready(&kept), is_ready(&full));
        assert_eq!(is_finished(&kept), is_finished(&full));
        assert_eq!(is_terminating(&kept), is_terminating(&full));
        assert_eq!(requests_gpus(&kept), requests_gpus(&full));
        assert_eq!(pod_request(&kept, "nvidia.com/gpu"), 2);
        assert_eq!(kept.status.as_ref().unwrap().pod_ip.as_deref(), Some("10.244.1.7"));
        // What goes: the bulk of a pod (its volumes, env, images and container statuses are not
        // even decoded).
        let spec = kept.spec.as_ref().unwrap();
        assert!(spec.init_containers.is_none(), "the fetcher asks for no GPU");
        assert_eq!(spec.containers.len(), 1, "the server does");
        let mut cpu_only = full_pod(0);
        cpu_only.spec.as_mut().unwrap().containers[0].resources = None;
        pod(&mut cpu_only);
        assert!(cpu_only.spec.as_ref().unwrap().containers.is_empty());
        assert!(!requests_gpus(&cpu_only));
        assert!(kept.metadata.annotations.is_none() && kept.metadata.managed_fields.is_none());
        let full_size = serde_json::to_vec(&full_pod_json(0)).unwrap().len();
        let kept_size = serde_json::to_vec(&kept).unwrap().len();
        assert!(kept_size * 2 < full_size, "{kept_size} of {full_size} bytes kept");
    }

    #[test]
    fn a_change_nobody_reads_hashes_the_same_and_one_they_read_does_not() {
        let (mut before, mut restarted) = (full_pod(0), full_pod(3));
        restarted.metadata.resource_version = Some("43".into());
        pod(&mut before);
        pod(&mut restarted);
        assert_eq!(content_hash(&mut before), content_hash(&mut restarted));
        assert_eq!(restarted.metadata.resource_version.as_deref(), Some("43"), "put back");

        let mut unready = full_pod(0);
        unready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        pod(&mut unready);
        assert_ne!(content_hash(&mut before), content_hash(&mut unready));
    }

    fn full_node(heartbeat: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "gpu-a100-0", "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}], "unschedulable": true, "podCIDR": "10.244.1.0/24"},
            "status": {
                "allocatable": {"nvidia.com/gpu": "8", "cpu": "95500m"},
                "capacity": {"nvidia.com/gpu": "8"},
                "conditions": [
                    {"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat},
                    {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": heartbeat},
                ],
                "images": [{"names": ["registry/huge-image:1"], "sizeBytes": 1}],
                "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
                             "containerRuntimeVersion": "", "kubeletVersion": "", "kubeProxyVersion": "",
                             "operatingSystem": "linux", "architecture": "amd64"},
            },
        }))
        .expect("fixture is a Node")
    }

    #[test]
    fn a_node_keeps_what_the_capacity_check_reads_and_a_heartbeat_is_no_change() {
        let full = full_node("2026-12-01T10:00:00Z");
        let mut kept = full.clone();
        node(&mut kept);
        let before = crate::gpu::NodeGpus::with_requested(&full, "nvidia.com/gpu", 3);
        let after = crate::gpu::NodeGpus::with_requested(&kept, "nvidia.com/gpu", 3);
        assert_eq!(format!("{before:?}"), format!("{after:?}"));
        assert!(kept.status.as_ref().unwrap().images.is_none());
        assert!(kept.status.as_ref().unwrap().node_info.is_none());

        let mut later = full_node("2026-12-01T10:00:40Z");
        node(&mut later);
        assert_eq!(content_hash(&mut kept), content_hash(&mut later));
    }

    #[test]
    fn children_keep_their_status_and_drop_what_the_operator_wrote_itself() {
        let mut deployment_object: CachedDeployment = serde_json::from_value(json!({
            "metadata": {"name": "bert-deployment", "generation": 2},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "bert"}}, "template": {
                "metadata": {"labels": {"mlops.sathvik.dev/version": "v2", "app": "bert"},
                             "annotations": {"mlops.sathvik.dev/config-hash": "abc"}},
                "spec": {"containers": [{"name": "server", "image": "triton"}]}}},
            "status": {"readyReplicas": 2},
        }))
        .unwrap();
        deployment(&mut deployment_object);
        let spec = deployment_object.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let template = spec.template.metadata.as_ref().unwrap();
        assert_eq!(
            template.labels,
            Some(BTreeMap::from([(
                "mlops.sathvik.dev/version".to_owned(),
                "v2".to_owned()
            )])),
            "the version it serves, nothing else"
        );
        assert_eq!(deployment_object.status.as_ref().unwrap().ready_replicas, Some(2));

        let mut config: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "bert-config"}, "data": {"config.properties": "x"}}))
                .unwrap();
        config_map(&mut config);
        assert!(config.data.is_none());
    }

    #[test]
    fn a_model_drops_the_copy_kubectl_apply_keeps_and_nothing_else() {
        let applied = |annotations: serde_json::Value| -> ModelDeployment {
            serde_json::from_value(json!({
                "apiVersion": "mlops.sathvik.dev/v1", "kind": "ModelDeployment",
                "metadata": {"name": "bert", "namespace": "ml", "annotations": annotations},
                "spec": {"modelURI": "https://models.example/bert.pt", "runtime": "fastapi-pytorch"},
            }))
            .unwrap()
        };
        let mut only_kubectl = applied(json!({KUBECTL_LAST_APPLIED: "{\"spec\": {}}"}));
        model_deployment(&mut only_kubectl);
        assert!(only_kubectl.metadata.annotations.is_none());
        assert_eq!(only_kubectl.spec.model_uri, "https://models.example/bert.pt");

        let mut with_owner_notes = applied(json!({KUBECTL_LAST_APPLIED: "{}", "team.example/owner": "search"}));
        model_deployment(&mut with_owner_notes);
        assert_eq!(
            with_owner_notes.metadata.annotations,
            Some(BTreeMap::from([("team.example/owner".to_owned(), "search".to_owned())]))
        );
    }

    #[test]
    fn an_hpa_keeps_its_identity_and_a_metrics_read_is_no_change() {
        let hpa_at = |replicas: i32| -> HorizontalPodAutoscaler {
            serde_json::from_value(json!({
                "metadata": {"name": "bert-deployment", "uid": "h-1",
                             "ownerReferences": [{"apiVersion": "mlops.sathvik.dev/v1", "kind": "ModelDeployment",
                                                  "name": "bert", "uid": "m-1", "controller": true}]},
                "spec": {"maxReplicas": 4, "scaleTargetRef": {"kind": "Deployment", "name": "bert-deployment"}},
                "status": {"currentReplicas": replicas, "desiredReplicas": replicas},
            }))
            .unwrap()
        };
        let (mut quiet, mut busy) = (hpa_at(1), hpa_at(3));
        hpa(&mut quiet);
        hpa(&mut busy);
        assert!(quiet.metadata.owner_references.is_some() && quiet.spec.is_some());
        assert!(quiet.status.is_none());
        assert_eq!(content_hash(&mut quiet), content_hash(&mut busy));

        let mut edited = hpa_at(1);
        edited.spec.as_mut().unwrap().max_replicas = 8;
        hpa(&mut edited);
        assert_ne!(
            content_hash(&mut quiet),
            content_hash(&mut edited),
            "someone changed its spec"
        );
    }

    #[test]
    fn a_service_keeps_its_identity_and_a_digest_that_moves_with_its_spec() {
        let service_with = |selector: &str| -> CachedService {
            serde_json::from_value(json!({
                "metadata": {"name": "bert-service", "namespace": "ml", "uid": "s-1", "resourceVersion": "7",
                             "labels": {"app.kubernetes.io/managed-by": "model-operator"},
                             "ownerReferences": [{"apiVersion": "mlops.sathvik.dev/v1", "kind": "ModelDeployment",
                                                  "name": "bert", "uid": "m-1", "controller": true}]},
                "spec": {"selector": {"app.kubernetes.io/name": selector}, "clusterIP": "10.96.0.12",
                         "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]},
                "status": {"loadBalancer": {}},
            }))
            .unwrap()
        };
        let full = service_with("bert");
        let mut kept = full.clone();
        service(&mut kept);
        assert!(kept.spec.is_none() && kept.spec_digest.is_some());
        assert_eq!(kept.metadata.owner_references, full.metadata.owner_references);
        assert_eq!(kept.metadata.labels, full.metadata.labels);
        assert_eq!(kept.metadata.resource_version.as_deref(), Some("7"));

        let mut again = full.clone();
        again.metadata.resource_version = Some("8".into());
        service(&mut again);
        assert_eq!(content_hash(&mut kept), content_hash(&mut again), "nothing changed");

        let mut drifted = service_with("someone-else");
        service(&mut drifted);
        assert_ne!(
            content_hash(&mut kept),
            content_hash(&mut drifted),
            "someone changed its selector: the repair is triggered"
        );
    }
}
