//! GPU capacity pre-flight: before pods exist (or while some are Pending), compares what the
//! unscheduled replicas need with the free GPUs on the nodes they may use, so the user reads
//! "needs 2 × nvidia.com/gpu …; room for 1 …" instead of watching pods sit Pending.
//!
//! A replica fits only on one node with enough free GPUs for all of its `count`; free GPUs
//! scattered over nodes do not add up.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, Taint, Toleration};

use crate::vocabulary::cached::CachedPod;

use crate::{
    api::conditions::reasons,
    vocabulary::{
        GpuPlacement,
        pods::{is_finished, node_name},
    },
};

/// One node's view for a GPU resource.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeGpus {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Ready and not cordoned.
    pub schedulable: bool,
    pub allocatable: i64,
    /// Requested by pods bound to the node that have not finished.
    pub requested: i64,
}

impl NodeGpus {
    pub fn free(&self) -> i64 {
        (self.allocatable - self.requested).max(0)
    }

    /// Reads `resource` from a node and the pods bound to it.
    pub fn from_node<'a>(node: &Node, pods: impl IntoIterator<Item = &'a CachedPod>, resource: &str) -> Self {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let requested = pods
            .into_iter()
            .filter(|pod| node_name(pod) == Some(name))
            .filter(|pod| !is_finished(pod))
            .map(|pod| pod_request(pod, resource))
            .sum();
        Self::with_requested(node, resource, requested)
    }

    /// Reads `resource` from a node whose pods' requests were summed already (see
    /// [`requested_per_node`]), so that many nodes cost one pass over the pods.
    pub fn with_requested(node: &Node, resource: &str, requested: i64) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let status = node.status.as_ref();
        let allocatable = status
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(resource))
            .and_then(|q| q.0.parse().ok())
            .unwrap_or(0);
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let spec = node.spec.as_ref();
        let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        Self {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            schedulable: ready && !cordoned,
            allocatable,
            requested,
            name,
        }
    }
}

/// What the unfinished pods bound to each node request of `resource`, in one pass.
pub fn requested_per_node<'a>(pods: impl IntoIterator<Item = &'a CachedPod>, resource: &str) -> BTreeMap<String, i64> {
    let mut requested = BTreeMap::new();
    for pod in pods {
        if let Some(node) = node_name(pod).filter(|_| !is_finished(pod)) {
            let request = pod_request(pod, resource);
            if request > 0 {
                *requested.entry(node.to_owned()).or_insert(0) += request;
            }
        }
    }
    requested
}

/// Where the pods of one ModelDeployment may go, besides GPU labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodConstraints {
    pub node_selector: BTreeMap<String, String>,
    /// The user's `requiredDuringSchedulingIgnoredDuringExecution` node affinity, if any.
    pub required_affinity: Option<NodeSelector>,
    pub tolerations: Vec<Toleration>,
}

/// Kubernetes' node selector semantics: any term matches when all its requirements hold. An
/// empty term matches nothing, as the scheduler has it.
fn affinity_allows(selector: &NodeSelector, name: &str, labels: &BTreeMap<String, String>) -> bool {
    selector.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        (!expressions.is_empty() || !fields.is_empty())
            && expressions.iter().all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)))
            // `metadata.name` is the only field a node selector may name.
            && fields
                .iter()
                .all(|r| r.key == "metadata.name" && requirement_holds(r, Some(name)))
    })
}

fn requirement_holds(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |text: &str| text.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|w| w != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|w| number(w))), (Some(have), Some(bound)) if have > bound)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|w| number(w))), (Some(have), Some(bound)) if have < bound)
        }
        _ => false,
    }
}

/// The verdict, as a `GPUCapacity` condition would carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityReport {
    pub fits: bool,
    pub reason: &'static str,
    pub message: String,
}

/// How many nodes a capacity message names before it says "and N more".
const NODES_NAMED: usize = 5;

/// Whether `unscheduled` more replicas, each needing `placement.count` of `placement.resource`
/// on one node, fit on the acceptable nodes.
pub fn check_capacity(
    placement: &GpuPlacement,
    unscheduled: i32,
    constraints: &PodConstraints,
    nodes: &[NodeGpus],
) -> CapacityReport {
    let per_replica = i64::from(placement.count);
    let matching: Vec<&NodeGpus> = nodes
        .iter()
        .filter(|node| node.allocatable > 0 && node.schedulable)
        .filter(|node| placement.matches_node(&node.labels))
        .filter(|node| {
            constraints
                .node_selector
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
        })
        .filter(|node| {
            constraints
                .required_affinity
                .as_ref()
                .is_none_or(|selector| affinity_allows(selector, &node.name, &node.labels))
        })
        .filter(|node| {
            node.taints
                .iter()
                .all(|taint| tolerated(taint, &constraints.tolerations))
        })
        .collect();
    let demand = placement.describe();
    if matching.is_empty() {
        return CapacityReport {
            fits: false,
            reason: reasons::NO_MATCHING_NODES,
            message: format!(
                "needs {demand} per replica; none of the {} nodes offers it (schedulable, matching labels, taints tolerated)",
                nodes.len()
            ),
        };
    }
    let room: i64 = matching.iter().map(|node| node.free() / per_replica).sum();
    let free: i64 = matching.iter().map(|node| node.free()).sum();
    let nodes_text = |nodes: &[&NodeGpus]| {
        // The nodes with the most free GPUs first, and only a few of them: the message goes
        // into a condition and an Event, whose note the API server caps at 1 KiB.
        let mut by_free: Vec<&&NodeGpus> = nodes.iter().collect();
        by_free.sort_by(|a, b| b.free().cmp(&a.free()).then_with(|| a.name.cmp(&b.name)));
        let mut text = by_free
            .iter()
            .take(NODES_NAMED)
            .map(|n| format!("{} has {} of {} free", n.name, n.free(), n.allocatable))
            .collect::<Vec<_>>()
            .join(", ");
        if by_free.len() > NODES_NAMED {
            text.push_str(&format!(" and {} more", by_free.len() - NODES_NAMED));
        }
        text
    };
    if unscheduled == 0 {
        CapacityReport {
            fits: true,
            reason: reasons::GPUS_AVAILABLE,
            message: format!(
                "every replica has its {demand}; room for {room} more: {free} free on {} matching node(s)",
                matching.len()
            ),
        }
    } else if room >= i64::from(unscheduled) {
        CapacityReport {
            fits: true,
            reason: reasons::GPUS_AVAILABLE,
            message: format!(
                "{unscheduled} unscheduled replica(s) of {demand} fit: {free} free on {} matching node(s)",
                matching.len()
            ),
        }
    } else {
        CapacityReport {
            fits: false,
            reason: reasons::INSUFFICIENT_GPUS,
            message: format!(
                "needs {demand} for each of {unscheduled} unscheduled replica(s); room for {room}: {} ({} matching node(s), {free} free in all)",
                nodes_text(&matching),
                matching.len()
            ),
        }
    }
}

/// The report of a model at zero, from `report` for no unscheduled replica: it needs no GPU,
/// so it is never short of one (a phase `Pending` would say it waits for something); the
/// message says what it still holds (`stopping` replicas on their way out) and the room a
/// wake would find, or why a wake would wait for GPUs.
pub fn capacity_at_zero(report: CapacityReport, stopping: usize) -> CapacityReport {
    let holds = if stopping == 0 {
        "scaled to zero: the model holds no GPU".to_owned()
    } else {
        format!("scaled to zero: {stopping} replica(s) still stopping hold their GPUs until they are gone")
    };
    if report.fits {
        // "every replica has its …; room for …": at zero only the room is news.
        let room = report
            .message
            .split_once("; ")
            .map_or(report.message.as_str(), |(_, room)| room);
        CapacityReport {
            message: format!("{holds}; {room}"),
            ..report
        }
    } else {
        CapacityReport {
            fits: true,
            reason: reasons::SCALED_TO_ZERO,
            message: format!("{holds}; a wake would wait for GPUs: {}", report.message),
        }
    }
}

/// Kubernetes' toleration semantics for the taints that keep pods off a node.
fn tolerated(taint: &Taint, tolerations: &[Toleration]) -> bool {
    if taint.effect == "PreferNoSchedule" {
        return true;
    }
    tolerations.iter().any(|t| {
        let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(key) => key == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

/// A pod's effective request: the larger of its containers' sum and its largest init
/// container, as the scheduler counts it. A limit without a request counts as the request.
pub fn pod_request(pod: &CachedPod, resource: &str) -> i64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let of = |c: &crate::vocabulary::cached::CachedContainer| {
        c.resources
            .as_ref()
            .and_then(|r| {
                r.requests
                    .as_ref()
                    .and_then(|m| m.get(resource))
                    .or_else(|| r.limits.as_ref().and_then(|m| m.get(resource)))
            })
            .and_then(|q| q.0.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let containers: i64 = spec.containers.iter().map(of).sum();
    let init = spec.init_containers.iter().flatten().map(of).max().unwrap_or(0);
    containers.max(init)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GpuSpec;

    fn a100_node(name: &str, allocatable: i64, requested: i64) -> NodeGpus {
        NodeGpus {
            name: name.into(),
            labels: [("nvidia.com/gpu.product".to_owned(), "NVIDIA-A100-SXM4-80GB".to_owned())].into(),
            taints: vec![Taint {
                key: "nvidia.com/gpu".into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }],
            schedulable: true,
            allocatable,
            requested,
        }
    }

    fn cpu_node() -> NodeGpus {
        NodeGpus {
            name: "cpu-0".into(),
            labels: BTreeMap::new(),
            taints: vec![],
            schedulable: true,
            allocatable: 0,
            requested: 0,
        }
    }

    fn placement(yaml: &str) -> GpuPlacement {
        GpuPlacement::from_spec(&serde_yaml_ng::from_str::<GpuSpec>(yaml).unwrap())
    }

    fn gpu_constraints() -> PodConstraints {
        PodConstraints {
            tolerations: vec![GpuPlacement::toleration()],
            ..PodConstraints::default()
        }
    }

    #[test]
    fn replicas_fit_when_single_nodes_have_room() {
        let nodes = [a100_node("gpu-a100-0", 8, 4), a100_node("gpu-a100-1", 8, 0), cpu_node()];
        let report = check_capacity(
            &placement("count: 2\nproducts: [NVIDIA-A100-SXM4-80GB]"),
            3,
            &gpu_constraints(),
            &nodes,
        );
        assert!(report.fits, "{report:?}");
        assert_eq!(report.reason, "GPUsAvailable");
        assert!(
            report.message.contains("12 free on 2 matching node(s)"),
            "{}",
            report.message
        );
    }

    #[test]
    fn placed_replicas_report_the_room_left() {
        let nodes = [a100_node("gpu-a100-0", 8, 6), a100_node("gpu-a100-1", 8, 3)];
        let report = check_capacity(
            &placement("count: 2\nproducts: [NVIDIA-A100-SXM4-80GB]"),
            0,
            &gpu_constraints(),
            &nodes,
        );
        assert!(report.fits, "{report:?}");
        assert!(
            report.message.starts_with("every replica has its 2 × nvidia.com/gpu")
                && report.message.contains("room for 3 more: 7 free on 2 matching node(s)"),
            "{}",
            report.message
        );
    }

    #[test]
    fn scattered_free_gpus_do_not_add_up() {
        // 3 free GPUs in all, but no node has 2.
        let nodes = [
            a100_node("gpu-a100-0", 8, 7),
            a100_node("gpu-a100-1", 8, 7),
            a100_node("gpu-a100-2", 8, 7),
        ];
        let report = check_capacity(
            &placement("count: 2\nproducts: [NVIDIA-A100-SXM4-80GB]"),
            1,
            &gpu_constraints(),
            &nodes,
        );
        assert!(!report.fits, "{report:?}");
        assert_eq!(report.reason, "InsufficientGPUs");
        assert_eq!(
            report.message,
            "needs 2 × nvidia.com/gpu on NVIDIA-A100-SXM4-80GB for each of 1 unscheduled replica(s); room for 0: \
             gpu-a100-0 has 1 of 8 free, gpu-a100-1 has 1 of 8 free, gpu-a100-2 has 1 of 8 free (3 matching node(s), 3 free in all)"
        );
    }

    #[test]
    fn many_nodes_are_summed_up_with_the_freest_named() {
        let nodes: Vec<NodeGpus> = (0..200)
            .map(|n| a100_node(&format!("gpu-a100-node-pool-{n:03}"), 8, if n == 150 { 6 } else { 7 }))
            .collect();
        let report = check_capacity(
            &placement("count: 4\nproducts: [NVIDIA-A100-SXM4-80GB]"),
            1,
            &gpu_constraints(),
            &nodes,
        );
        assert!(!report.fits, "{report:?}");
        assert!(
            report.message.starts_with(
                "needs 4 × nvidia.com/gpu on NVIDIA-A100-SXM4-80GB for each of 1 unscheduled replica(s); room for 0: \
                 gpu-a100-node-pool-150 has 2 of 8 free, gpu-a100-node-pool-000 has 1 of 8 free"
            ),
            "{}",
            report.message
        );
        assert!(
            report
                .message
                .ends_with("and 195 more (200 matching node(s), 201 free in all)"),
            "{}",
            report.message
        );
        assert!(report.message.len() < 600, "{} bytes", report.message.len());
    }

    #[test]
    fn a_model_at_zero_is_never_short_of_gpus_and_says_what_a_wake_would_find() {
        let nodes = [a100_node("gpu-a100-0", 8, 6), cpu_node()];
        let room = capacity_at_zero(check_capacity(&placement("count: 2"), 0, &gpu_constraints(), &nodes), 0);
        assert_eq!((room.fits, room.reason), (true, "GPUsAvailable"), "{room:?}");
        assert_eq!(
            room.message,
            "scaled to zero: the model holds no GPU; room for 1 more: 2 free on 1 matching node(s)"
        );
        let nowhere = capacity_at_zero(
            check_capacity(&placement("products: [Tesla-T4]"), 0, &gpu_constraints(), &nodes),
            2,
        );
        assert_eq!((nowhere.fits, nowhere.reason), (true, "ScaledToZero"), "{nowhere:?}");
        assert!(
            nowhere.message.starts_with(
                "scaled to zero: 2 replica(s) still stopping hold their GPUs until they are gone; \
                 a wake would wait for GPUs: needs 1 × nvidia.com/gpu on Tesla-T4 per replica; none of the 2 nodes"
            ),
            "{}",
            nowhere.message
        );
    }

    #[test]
    fn no_matching_product_says_so() {
        let nodes = [a100_node("gpu-a100-0", 8, 0), cpu_node()];
        let report = check_capacity(&placement("products: [Tesla-T4]"), 1, &gpu_constraints(), &nodes);
        assert_eq!((report.fits, report.reason), (false, "NoMatchingNodes"), "{report:?}");
        assert!(
            report.message.contains("1 × nvidia.com/gpu on Tesla-T4") && report.message.contains("2 nodes"),
            "{}",
            report.message
        );
    }

    #[test]
    fn untolerated_taints_and_cordoned_nodes_are_not_counted() {
        let mut cordoned = a100_node("gpu-a100-1", 8, 0);
        cordoned.schedulable = false;
        let nodes = [a100_node("gpu-a100-0", 8, 0), cordoned];
        let report = check_capacity(&placement("count: 1"), 1, &PodConstraints::default(), &nodes);
        assert_eq!(
            report.reason, "NoMatchingNodes",
            "without the GPU toleration: {report:?}"
        );
        let report = check_capacity(&placement("count: 8"), 2, &gpu_constraints(), &nodes);
        assert_eq!(
            report.reason, "InsufficientGPUs",
            "the cordoned node is no room: {report:?}"
        );
    }

    #[test]
    fn node_selector_narrows_the_nodes() {
        let mut zoned = a100_node("gpu-a100-0", 8, 0);
        zoned.labels.insert("zone".into(), "a".into());
        let constraints = PodConstraints {
            node_selector: [("zone".to_owned(), "b".to_owned())].into(),
            ..gpu_constraints()
        };
        let report = check_capacity(&placement("count: 1"), 1, &constraints, &[zoned]);
        assert_eq!(report.reason, "NoMatchingNodes");
    }

    #[test]
    fn the_users_required_node_affinity_narrows_the_nodes() {
        let mut zone_a = a100_node("gpu-a100-0", 8, 0);
        zone_a.labels.insert("zone".into(), "a".into());
        let mut zone_b = a100_node("gpu-a100-1", 8, 6);
        zone_b.labels.insert("zone".into(), "b".into());
        let only = |yaml: &str| PodConstraints {
            required_affinity: Some(serde_yaml_ng::from_str(yaml).unwrap()),
            ..gpu_constraints()
        };
        let nodes = [zone_a, zone_b];
        let in_b = only("nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [b]}]}]");
        let report = check_capacity(&placement("count: 4"), 1, &in_b, &nodes);
        assert_eq!(report.reason, "InsufficientGPUs", "{report:?}");
        assert!(report.message.contains("gpu-a100-1 has 2 of 8 free"), "{report:?}");
        assert!(!report.message.contains("gpu-a100-0"), "{report:?}");
        // Terms are ORed; within a term, everything must hold.
        let either = only(
            "nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [c]}]}, {matchFields: [{key: metadata.name, operator: In, values: [gpu-a100-0]}]}]",
        );
        assert!(check_capacity(&placement("count: 4"), 1, &either, &nodes).fits);
        let neither = only(
            "nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: Exists}, {key: zone, operator: NotIn, values: [a, b]}]}]",
        );
        assert_eq!(
            check_capacity(&placement("count: 1"), 1, &neither, &nodes).reason,
            "NoMatchingNodes"
        );
    }

    #[test]
    fn node_selector_requirements_follow_the_scheduler() {
        let labels: BTreeMap<String, String> = [("gpus".to_owned(), "8".to_owned())].into();
        let holds = |operator: &str, values: &[&str], key: &str| {
            let requirement = NodeSelectorRequirement {
                key: key.to_owned(),
                operator: operator.to_owned(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            };
            requirement_holds(&requirement, labels.get(key).map(String::as_str))
        };
        assert!(holds("Gt", &["7"], "gpus") && !holds("Gt", &["8"], "gpus"));
        assert!(holds("Lt", &["9"], "gpus") && !holds("Lt", &["x"], "gpus"));
        assert!(holds("NotIn", &["4"], "gpus") && holds("NotIn", &["4"], "absent"));
        assert!(holds("DoesNotExist", &[], "absent") && !holds("Exists", &[], "absent"));
        assert!(!holds("Near", &["8"], "gpus"), "an unknown operator matches nothing");
    }

    #[test]
    fn node_usage_counts_unfinished_pods_bound_to_it() {
        let node: Node = serde_yaml_ng::from_str(
            "metadata: {name: gpu-a100-0}\nstatus:\n  allocatable: {nvidia.com/gpu: '8'}\n  conditions: [{type: Ready, status: 'True'}]\n",
        )
        .unwrap();
        let pod = |node: &str, phase: &str, gpus: &str| -> CachedPod {
            serde_yaml_ng::from_str(&format!(
                "spec:\n  nodeName: {node}\n  containers: [{{name: c, resources: {{limits: {{nvidia.com/gpu: '{gpus}'}}}}}}]\nstatus: {{phase: {phase}}}\n"
            ))
            .unwrap()
        };
        let pods = [
            pod("gpu-a100-0", "Running", "2"),
            pod("gpu-a100-0", "Succeeded", "4"),
            pod("gpu-a100-1", "Running", "3"),
            pod("gpu-a100-0", "Pending", "1"),
        ];
        let gpus = NodeGpus::from_node(&node, &pods, "nvidia.com/gpu");
        assert_eq!(
            (gpus.allocatable, gpus.requested, gpus.free(), gpus.schedulable),
            (8, 3, 5, true)
        );
    }
}
