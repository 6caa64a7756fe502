//! Fetch (reads only): what exists now for one ModelDeployment, read from the operator's watch
//! caches, never from the API server, so that a thousand ModelDeployments cost no list calls.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
};

use k8s_openapi::api::{
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::Job,
    core::v1::{ConfigMap, Node},
    discovery::v1::EndpointSlice,
    resource::v1::{DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice},
};
use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use super::build::pod_tolerations;
use crate::{
    api::ModelDeployment,
    api::ReplicaGpus,
    gpu::{CapacityReport, NodeGpus, PodConstraints, capacity_at_zero, check_capacity, dra, requested_per_node},
    vocabulary::{
        ActivatorEndpoints, GpuAllocation, GpuPlacement, Scaling, Validated,
        cached::{CachedDeployment, CachedPod, CachedService},
        names::{
            COMPONENT_VALIDATION, LABEL_COMPONENT, LABEL_NAME, activator_slice_name, deployment_name,
            runtime_config_name, service_name,
        },
        per_model::{ModelKey, shrink_if_sparse},
        pods::{is_finished, is_terminating, node_name, served_model},
    },
};

/// The watch caches the reconciler reads; the process (`crate::controller`) fills them.
/// Children are cached by the operator's `managed-by` label; nodes and every pod, because GPU
/// capacity depends on every pod (`crate::controller` keeps only the fields that are read).
#[derive(Clone)]
pub struct Caches {
    pub models: Store<ModelDeployment>,
    pub deployments: Store<CachedDeployment>,
    pub services: Store<CachedService>,
    pub hpas: Store<HorizontalPodAutoscaler>,
    pub jobs: Store<Job>,
    pub config_maps: Store<ConfigMap>,
    pub pods: Store<CachedPod>,
    pub nodes: Store<Node>,
    /// The operator's ResourceClaimTemplates (by its label), and what DRA publishes: every
    /// ResourceSlice, ResourceClaim and DeviceClass (empty where `resource.k8s.io/v1` is not served).
    pub claim_templates: Store<ResourceClaimTemplate>,
    pub resource_slices: Store<ResourceSlice>,
    pub resource_claims: Store<ResourceClaim>,
    pub device_classes: Store<DeviceClass>,
    /// The operator's EndpointSlices (the activator's handovers), by their managed-by label,
    /// without their endpoints.
    pub endpoint_slices: Store<EndpointSlice>,
    /// The EndpointSlices of the activator's Service (`--activator-service`); empty, and no
    /// handover, without an activator.
    pub activator_slices: Store<EndpointSlice>,
    /// The one namespace pods are cached from, when the operator watches only that one: GPUs
    /// that pods of other namespaces hold are then unseen, and the capacity message says so.
    pub pods_namespace: Option<String>,
    /// The serving pods of each model, kept beside the pod cache.
    pub pod_index: PodIndex,
    /// What the pods on each node request of a GPU resource, summed once per change of the pods.
    pub requested_gpus: RequestedGpus,
}

/// The children of one ModelDeployment as they are now; only those it controls.
#[derive(Debug, Default)]
pub struct Observed {
    pub deployment: Option<Arc<CachedDeployment>>,
    pub service: Option<Arc<CachedService>>,
    /// The EndpointSlice that points the Service at the activator.
    pub activator_slice: Option<Arc<EndpointSlice>>,
    /// The model's validation Jobs, of this spec and of earlier ones.
    pub validation_jobs: Vec<Arc<Job>>,
    /// Of those, the Job of the current spec (`pick_validation_job`).
    pub validation_job: Option<Arc<Job>>,
    pub hpa: Option<Arc<HorizontalPodAutoscaler>>,
    pub runtime_config: Option<Arc<ConfigMap>>,
    /// The model's ResourceClaimTemplates, of this GPU request and of earlier ones.
    pub claim_templates: Vec<Arc<ResourceClaimTemplate>>,
    /// Of those, the one the spec wants now (`pick_claim_template`).
    pub claim_template: Option<Arc<ResourceClaimTemplate>>,
    /// The serving pods, for the capacity check and the model probes.
    pub pods: Vec<Arc<CachedPod>>,
}

impl Caches {
    /// Reads every child `model` may have, by the names the builders give them.
    pub fn observe(&self, model: &ModelDeployment) -> Observed {
        let name = model.name_any();
        let namespace = model.namespace().unwrap_or_default();
        let owner_uid = model.uid();
        Observed {
            deployment: owned_child(
                &self.deployments,
                &namespace,
                &deployment_name(&name),
                owner_uid.as_deref(),
            ),
            service: owned_child(&self.services, &namespace, &service_name(&name), owner_uid.as_deref()),
            activator_slice: owned_child(
                &self.endpoint_slices,
                &namespace,
                &activator_slice_name(&name),
                owner_uid.as_deref(),
            ),
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
            claim_templates: self
                .claim_templates
                .state()
                .into_iter()
                .filter(|template| template.namespace().as_deref() == Some(namespace.as_str()))
                .filter(|template| template.labels().get(LABEL_NAME) == Some(&name))
                .filter(|template| controlled_by(template.meta(), owner_uid.as_deref()))
                .collect(),
            claim_template: None,
            pods: self
                .pod_index
                .pod_names(&namespace, &name)
                .iter()
                .filter_map(|pod| self.pods.get(&ObjectRef::new(pod).within(&namespace)))
                .collect(),
        }
    }

    /// The activator's ready addresses, from its Service's EndpointSlices: IPv4 where it has
    /// any (a slice holds one family), else IPv6. `None` without an activator, or while none of
    /// its replicas is ready.
    pub fn activator_endpoints(&self) -> Option<ActivatorEndpoints> {
        ready_activator_addresses(&self.activator_slices.state())
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
        let live: Vec<&CachedPod> = observed
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

        let nodes: Vec<NodeGpus> = if placement.uses_dra() {
            // Devices of the slices that meet the request, less those some claim holds.
            let slices = self.resource_slices.state();
            let claims = self.resource_claims.state();
            let allocated = dra::allocated_devices(claims.iter().map(Arc::as_ref));
            let nodes = self.nodes.state();
            dra::dra_nodes(
                &placement.devices,
                &slices.iter().map(Arc::as_ref).collect::<Vec<_>>(),
                &allocated,
                &nodes.iter().map(Arc::as_ref).collect::<Vec<_>>(),
            )
        } else {
            let requested = self
                .requested_gpus
                .per_node(&placement.resource, &self.pods, &self.pod_index);
            self.nodes
                .state()
                .iter()
                .map(|node| {
                    let used = requested.get(&node.name_any()).copied().unwrap_or(0);
                    NodeGpus::with_requested(node, &placement.resource, used)
                })
                .collect()
        };
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
        if wanted == 0 {
            report = capacity_at_zero(report, live.len());
        }
        if let Some(namespace) = &self.pods_namespace {
            report.message.push_str(&format!(
                " (counting only pods of namespace {namespace}, the one the operator watches)"
            ));
        }
        Some(report)
    }
}

/// The operator's serving pods by model (namespace, name), kept from the pod cache's events, so
/// that a reconcile finds its model's pods without copying the pod cache. A relist builds a
/// fresh index and swaps it in when the list is complete, as the reflector does with its store.
#[derive(Clone, Default)]
pub struct PodIndex {
    state: Arc<RwLock<PodIndexState>>,
}

#[derive(Default)]
struct PodIndexState {
    by_model: HashMap<ModelKey, PodNames>,
    relisting: Option<HashMap<ModelKey, PodNames>>,
    /// Counts every pod event: what was computed from the pods is stale when it moved.
    changes: u64,
}

impl PodIndex {
    /// Follows one event of the pod cache's watch (after the cache applied it).
    pub fn follow(&self, event: &watcher::Event<CachedPod>) {
        let mut state = self.state.write().expect("pod index lock");
        state.changes = state.changes.wrapping_add(1);
        match event {
            watcher::Event::Init => state.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(relisting), Some((model, pod))) = (state.relisting.as_mut(), serving_pod_of(pod)) {
                    relisting.entry(model).or_default().insert(pod);
                }
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = state.relisting.take() {
                    state.by_model = fresh;
                }
            }
            watcher::Event::Apply(pod) => {
                if let Some((model, pod)) = serving_pod_of(pod) {
                    state.by_model.entry(model).or_default().insert(pod);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some((model, pod)) = serving_pod_of(pod)
                    && let Some(pods) = state.by_model.get_mut(&model)
                {
                    pods.remove(&pod);
                    if pods.is_empty() {
                        state.by_model.remove(&model);
                        shrink_if_sparse(&mut state.by_model);
                    }
                }
            }
        }
    }

    /// The names of the serving pods of one model.
    pub fn pod_names(&self, namespace: &str, model: &str) -> Vec<String> {
        let state = self.state.read().expect("pod index lock");
        state
            .by_model
            .get(&(namespace.to_owned(), model.to_owned()))
            .map(|pods| pods.0.clone())
            .unwrap_or_default()
    }

    /// How many pod events there were so far.
    pub fn changes(&self) -> u64 {
        self.state.read().expect("pod index lock").changes
    }
}

/// A model's serving pods' names, sorted: a model has a few, and a `BTreeSet`'s first node
/// alone holds room for eleven.
#[derive(Default)]
struct PodNames(Vec<String>);

impl PodNames {
    fn insert(&mut self, name: String) {
        if let Err(at) = self.0.binary_search(&name) {
            self.0.insert(at, name);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(at) = self.0.binary_search_by(|n| n.as_str().cmp(name)) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The model a pod serves (see `served_model`) and the pod's name.
fn serving_pod_of(pod: &CachedPod) -> Option<(ModelKey, String)> {
    Some((served_model(pod)?, pod.name_any()))
}

/// The GPU requests of the pods on each node, per GPU resource, computed from the pod cache at
/// most once per change of it: a thousand models checking capacity at rest cost one pass.
#[derive(Clone, Default)]
pub struct RequestedGpus {
    computed: Arc<Mutex<HashMap<String, Summed>>>,
}

/// The sums as of a count of pod events (`PodIndex::changes`).
type Summed = (u64, Arc<PerNode>);

/// A GPU resource's requests summed per node name.
type PerNode = BTreeMap<String, i64>;

impl RequestedGpus {
    pub fn per_node(&self, resource: &str, pods: &Store<CachedPod>, index: &PodIndex) -> Arc<PerNode> {
        let changes = index.changes();
        let mut computed = self.computed.lock().expect("requested GPUs lock");
        if let Some((at, requested)) = computed.get(resource)
            && *at == changes
        {
            return requested.clone();
        }
        let requested = Arc::new(requested_per_node(pods.state().iter().map(Arc::as_ref), resource));
        computed.insert(resource.to_owned(), (changes, requested.clone()));
        requested
    }
}

impl Caches {
    /// `allocation: auto` resolved. A spec that asks for what only DRA can select
    /// (architectures, compute capability) gets DRA. Otherwise DRA needs the driver's
    /// DeviceClass and a ResourceSlice device that meets the request (free or not, so that the
    /// choice does not flip as claims come and go), and where both could serve the device plugin
    /// keeps the model: a cluster moving to DRA moves a model once its device-plugin nodes are
    /// gone, not when the first DRA node appears holding a fraction of the GPUs.
    pub fn resolve_allocation(&self, gpu: &GpuPlacement) -> GpuAllocation {
        if gpu.allocation != GpuAllocation::Auto {
            return gpu.allocation;
        }
        // The device plugin's labels cannot express these: only DRA can honour them, and the
        // capacity condition says so when the cluster has no such device.
        let only_dra_can_select = !gpu.devices.architectures.is_empty() || gpu.devices.min_compute_capability.is_some();
        if only_dra_can_select {
            return GpuAllocation::Dra;
        }
        let class_exists = self
            .device_classes
            .get(&ObjectRef::new(&gpu.devices.device_class))
            .is_some();
        let slices = self.resource_slices.state();
        let dra_offers = class_exists
            && dra::offers_matching_devices(&gpu.devices, &slices.iter().map(Arc::as_ref).collect::<Vec<_>>());
        if !dra_offers {
            return GpuAllocation::DevicePlugin;
        }
        let device_plugin_offers = self.nodes.state().iter().any(|node| {
            let view = NodeGpus::with_requested(node, &gpu.resource, 0);
            view.allocatable > 0 && gpu.matches_node(&view.labels)
        });
        if device_plugin_offers {
            GpuAllocation::DevicePlugin
        } else {
            GpuAllocation::Dra
        }
    }

    /// The devices each serving pod's claim got, by pod name (DRA only).
    pub fn replica_gpus(&self, observed: &Observed) -> Vec<ReplicaGpus> {
        let slices = self.resource_slices.state();
        let slices: Vec<&ResourceSlice> = slices.iter().map(Arc::as_ref).collect();
        let mut replicas: Vec<ReplicaGpus> = observed
            .pods
            .iter()
            .filter_map(|pod| {
                let namespace = pod.namespace()?;
                let claim_name = pod
                    .status
                    .as_ref()?
                    .resource_claim_statuses
                    .iter()
                    .flatten()
                    .find(|c| c.name == dra::CLAIM_REQUEST)?
                    .resource_claim_name
                    .clone()?;
                let claim = self
                    .resource_claims
                    .get(&ObjectRef::new(&claim_name).within(&namespace))?;
                let devices = dra::devices_of_claim(&claim, &slices)
                    .into_iter()
                    .map(|gpu| match gpu.uuid {
                        Some(uuid) => format!("{}/{} ({uuid})", gpu.pool, gpu.device),
                        None => format!("{}/{}", gpu.pool, gpu.device),
                    })
                    .collect::<Vec<_>>();
                (!devices.is_empty()).then(|| ReplicaGpus {
                    pod: pod.name_any(),
                    claim: claim_name,
                    devices,
                })
            })
            .collect();
        replicas.sort_by(|a, b| a.pod.cmp(&b.pod));
        replicas
    }
}

impl Observed {
    /// Picks the claim template of the current GPU request, whose name the builder gives it.
    pub fn pick_claim_template(&mut self, template_name: Option<&str>) {
        self.claim_template = template_name.and_then(|name| {
            self.claim_templates
                .iter()
                .find(|template| template.metadata.name.as_deref() == Some(name))
                .cloned()
        });
    }

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

/// The ready addresses of the activator's slices, of one family: IPv4 where there are any.
fn ready_activator_addresses(slices: &[Arc<EndpointSlice>]) -> Option<ActivatorEndpoints> {
    let ready = |family: &str| -> Vec<String> {
        let mut addresses: Vec<String> = slices
            .iter()
            .filter(|slice| slice.address_type == family)
            .flat_map(|slice| slice.endpoints.iter())
            // An endpoint without conditions counts as ready, as kube-proxy counts it.
            .filter(|endpoint| endpoint.conditions.as_ref().is_none_or(|c| c.ready.unwrap_or(true)))
            .flat_map(|endpoint| endpoint.addresses.iter().cloned())
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    };
    ["IPv4", "IPv6"].into_iter().find_map(|family| {
        let addresses = ready(family);
        (!addresses.is_empty()).then(|| ActivatorEndpoints {
            address_type: family.to_owned(),
            addresses,
        })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(family: &str, endpoints: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(json!({"addressType": family, "endpoints": endpoints})).expect("a slice"))
    }

    #[test]
    fn the_activators_ready_addresses_are_gathered_from_its_slices_one_family() {
        let slices = [
            slice(
                "IPv4",
                json!([
                    {"addresses": ["10.0.0.9"], "conditions": {"ready": true}},
                    {"addresses": ["10.0.0.8"], "conditions": {"ready": false}},
                ]),
            ),
            slice(
                "IPv4",
                json!([{"addresses": ["10.0.0.7"]}, {"addresses": ["10.0.0.9"]}]),
            ),
            slice(
                "IPv6",
                json!([{"addresses": ["fd00::7"], "conditions": {"ready": true}}]),
            ),
        ];
        assert_eq!(
            ready_activator_addresses(&slices),
            Some(ActivatorEndpoints {
                address_type: "IPv4".into(),
                addresses: vec!["10.0.0.7".into(), "10.0.0.9".into()],
            }),
            "ready ones, once each, IPv4 first"
        );
        assert_eq!(
            ready_activator_addresses(&slices[2..]).map(|e| e.address_type),
            Some("IPv6".into())
        );
        let none_ready = [slice(
            "IPv4",
            json!([{"addresses": ["10.0.0.8"], "conditions": {"ready": false}}]),
        )];
        assert_eq!(ready_activator_addresses(&none_ready), None, "no handover to no one");
        assert_eq!(ready_activator_addresses(&[]), None);
    }

    fn serving(model: &str, pod: &str) -> CachedPod {
        serde_json::from_value(json!({"metadata": {"name": pod, "namespace": "ml", "labels": {
            "app.kubernetes.io/managed-by": "model-operator",
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/name": model,
        }}}))
        .expect("a pod")
    }

    #[test]
    fn the_pod_index_follows_the_watch_and_a_relist_replaces_it() {
        let index = PodIndex::default();
        index.follow(&watcher::Event::Apply(serving("bert", "bert-b")));
        index.follow(&watcher::Event::Apply(serving("bert", "bert-a")));
        index.follow(&watcher::Event::Apply(serving("bert", "bert-b")));
        index.follow(&watcher::Event::Apply(serving("gpt", "gpt-a")));
        assert_eq!(index.pod_names("ml", "bert"), ["bert-a", "bert-b"], "sorted, once each");
        index.follow(&watcher::Event::Delete(serving("bert", "bert-a")));
        assert_eq!(index.pod_names("ml", "bert"), ["bert-b"]);
        index.follow(&watcher::Event::Delete(serving("gpt", "gpt-a")));
        assert!(index.pod_names("ml", "gpt").is_empty());
        assert!(
            !index
                .state
                .read()
                .unwrap()
                .by_model
                .contains_key(&("ml".to_owned(), "gpt".to_owned()))
        );

        index.follow(&watcher::Event::Init);
        index.follow(&watcher::Event::InitApply(serving("gpt", "gpt-c")));
        assert_eq!(
            index.pod_names("ml", "bert"),
            ["bert-b"],
            "the old index serves until the list is done"
        );
        index.follow(&watcher::Event::InitDone);
        assert!(index.pod_names("ml", "bert").is_empty());
        assert_eq!(index.pod_names("ml", "gpt"), ["gpt-c"]);
        assert_eq!(index.changes(), 9);
    }
}
