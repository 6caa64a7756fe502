//! Fetch (reads only): what exists now for one ModelDeployment, read from the operator's watch
//! caches, never from the API server, so that a thousand ModelDeployments cost no list calls.

use std::sync::Arc;

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::Job,
    core::v1::{ConfigMap, Node, Pod, Service},
};
use kube::{
    Resource, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use super::build::pod_tolerations;
use crate::{
    api::ModelDeployment,
    gpu::{CapacityReport, NodeGpus, PodConstraints, check_capacity, requested_per_node},
    vocabulary::{
        Scaling, Validated,
        names::{
            COMPONENT_SERVER, COMPONENT_VALIDATION, LABEL_COMPONENT, LABEL_NAME, deployment_name, runtime_config_name,
            service_name,
        },
        pods::{is_finished, is_terminating, node_name},
    },
};

/// The watch caches the reconciler reads; the process (`crate::controller`) fills them.
/// Children are cached by the operator's `managed-by` label; nodes and pods in full, because GPU
/// capacity depends on every pod.
#[derive(Clone)]
pub struct Caches {
    pub models: Store<ModelDeployment>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub hpas: Store<HorizontalPodAutoscaler>,
    pub jobs: Store<Job>,
    pub config_maps: Store<ConfigMap>,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    /// The one namespace pods are cached from, when the operator watches only that one: GPUs
    /// that pods of other namespaces hold are then unseen, and the capacity message says so.
    pub pods_namespace: Option<String>,
}

/// The children of one ModelDeployment as they are now; only those it controls.
#[derive(Debug, Default)]
pub struct Observed {
    pub deployment: Option<Arc<Deployment>>,
    pub service: Option<Arc<Service>>,
    /// The model's validation Jobs, of this spec and of earlier ones.
    pub validation_jobs: Vec<Arc<Job>>,
    /// Of those, the Job of the current spec (`pick_validation_job`).
    pub validation_job: Option<Arc<Job>>,
    pub hpa: Option<Arc<HorizontalPodAutoscaler>>,
    pub runtime_config: Option<Arc<ConfigMap>>,
    /// The serving pods, for the capacity check and the model probes.
    pub pods: Vec<Arc<Pod>>,
    /// Every pod in the cache when this was observed: the capacity check sums GPU requests
    /// from it, so that one reconcile copies the pod cache once.
    pub cluster_pods: Vec<Arc<Pod>>,
}

impl Caches {
    /// Reads every child `model` may have, by the names the builders give them.
    pub fn observe(&self, model: &ModelDeployment) -> Observed {
        let name = model.name_any();
        let namespace = model.namespace().unwrap_or_default();
        let owner_uid = model.uid();
        let cluster_pods = self.pods.state();
        Observed {
            deployment: owned_child(
                &self.deployments,
                &namespace,
                &deployment_name(&name),
                owner_uid.as_deref(),
            ),
            service: owned_child(&self.services, &namespace, &service_name(&name), owner_uid.as_deref()),
            validation_jobs: self
                .jobs
                .state()
                .into_iter()
                .filter(|job| job.namespace().as_deref() == Some(namespace.as_str()))
                .filter(|job| {
                    let labels = job.labels();
                    labels.get(LABEL_NAME) == Some(&name)
                        && labels.get(LABEL_COMPONENT).map(String::as_str) == Some(COMPONENT_VALIDATION)
                })
                .filter(|job| controlled_by(job.meta(), owner_uid.as_deref()))
                .collect(),
            validation_job: None,
            hpa: owned_child(&self.hpas, &namespace, &deployment_name(&name), owner_uid.as_deref()),
            runtime_config: owned_child(
                &self.config_maps,
                &namespace,
                &runtime_config_name(&name),
                owner_uid.as_deref(),
            ),
            pods: cluster_pods
                .iter()
                .filter(|pod| pod.namespace().as_deref() == Some(namespace.as_str()))
                .filter(|pod| {
                    let labels = pod.labels();
                    labels.get(LABEL_NAME) == Some(&name)
                        && labels.get(LABEL_COMPONENT).map(String::as_str) == Some(COMPONENT_SERVER)
                })
                .cloned()
                .collect(),
            cluster_pods,
        }
    }

    /// The GPU pre-flight: do the replicas that have no node yet fit on the free GPUs of the
    /// nodes they may use? `None` when the model asks for no GPU.
    pub fn gpu_capacity(&self, model: &Validated, observed: &Observed) -> Option<CapacityReport> {
        let placement = model.gpu.as_ref()?;
        let wanted = observed
            .deployment
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(match &model.scaling {
                Scaling::Fixed { replicas } => *replicas,
                Scaling::Autoscaled(plan) => plan.min_replicas,
            });
        let live: Vec<&Pod> = observed
            .pods
            .iter()
            .map(Arc::as_ref)
            .filter(|pod| !is_terminating(pod) && !is_finished(pod))
            .collect();
        // A pod bound to a node that is gone or not Ready holds no GPU that serves: it counts
        // as waiting for one, so the status follows a lost node at once instead of when the
        // garbage collector (or the eviction after the taint's grace) removes the pod.
        let bound = live
            .iter()
            .filter(|pod| {
                node_name(pod).is_some_and(|node| {
                    self.nodes
                        .get(&ObjectRef::new(node))
                        .is_some_and(|node| node_is_ready(&node))
                })
            })
            .count();
        let pending = live.len() - bound;
        let unscheduled = (usize::try_from(wanted).unwrap_or(0).saturating_sub(bound)).max(pending);

        let requested = requested_per_node(observed.cluster_pods.iter().map(Arc::as_ref), &placement.resource);
        let nodes: Vec<NodeGpus> = self
            .nodes
            .state()
            .iter()
            .map(|node| {
                let used = requested.get(&node.name_any()).copied().unwrap_or(0);
                NodeGpus::with_requested(node, &placement.resource, used)
            })
            .collect();
        let constraints = PodConstraints {
            node_selector: model.node_selector.clone(),
            required_affinity: model
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|n| n.required_during_scheduling_ignored_during_execution.clone()),
            tolerations: pod_tolerations(model),
        };
        let mut report = check_capacity(
            placement,
            i32::try_from(unscheduled).unwrap_or(i32::MAX),
            &constraints,
            &nodes,
        );
        if let Some(namespace) = &self.pods_namespace {
            report.message.push_str(&format!(
                " (counting only pods of namespace {namespace}, the one the operator watches)"
            ));
        }
        Some(report)
    }
}

impl Observed {
    /// Picks the validation Job of the current spec, whose name the validated view carries.
    pub fn pick_validation_job(&mut self, job_name: Option<&str>) {
        self.validation_job = job_name.and_then(|name| {
            self.validation_jobs
                .iter()
                .find(|job| job.metadata.name.as_deref() == Some(name))
                .cloned()
        });
    }
}

/// A cached child by name, only if this ModelDeployment controls it: an object of the same
/// name that belongs to someone else is never adopted or changed.
fn owned_child<K>(store: &Store<K>, namespace: &str, name: &str, owner_uid: Option<&str>) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let child = store.get(&ObjectRef::new(name).within(namespace))?;
    controlled_by(child.meta(), owner_uid).then_some(child)
}

fn controlled_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, owner_uid: Option<&str>) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == owner_uid)
}

/// A node whose Ready condition is not False or Unknown (a node without conditions yet counts as
/// ready: the scheduler places pods there).
fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|ready| ready.status == "True")
}
