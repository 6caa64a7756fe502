//! `--follow-node`: the device plugin's part, played against a real API server. kwok's nodes
//! have no device plugin, so nothing else says which GPU a scheduled pod got; this loop hands
//! out the node's device IDs to the containers that request them, as the kubelet would. Devices
//! allocated through ResourceClaims need no handing out: the real scheduler allocated them, and
//! this loop reports each claim's allocation in the containers that name the claim.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{core::v1::Pod as KubePod, resource::v1::ResourceClaim};
use kube::{Api, Client, ResourceExt, api::ListParams};

use crate::{ClaimResources, Config, Container, Devices, DynamicResources, Pod};

pub struct Follow {
    pub client: Client,
    pub node: String,
    pub devices: Vec<String>,
    pub resource: String,
    pub interval: Duration,
}

/// (namespace, pod, container) → the device IDs it holds.
type Held = BTreeMap<(String, String, String), Vec<String>>;

/// (namespace, pod, container) → the claims it names, with their allocated devices.
type Claimed = BTreeMap<(String, String, String), Vec<DynamicResources>>;

/// (namespace, claim) → its allocation's results, once the scheduler has allocated it. An
/// allocation does not change while a pod holds the claim, so each claim is read until then only.
type Allocations = BTreeMap<(String, String), Vec<Allocated>>;

#[derive(Debug, Clone, PartialEq)]
struct Allocated {
    request: String,
    device: ClaimResources,
}

/// Lists the node's pods every interval until the process ends, publishing each new assignment.
pub async fn run(follow: Follow, current: Arc<Mutex<Arc<Config>>>) {
    let Follow {
        client,
        node,
        devices,
        resource,
        interval,
    } = follow;
    let pods: Api<KubePod> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut held = Held::new();
    let mut claimed = Claimed::new();
    let mut allocations = Allocations::new();
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let listed = match pods.list(&params).await {
            Ok(list) => list.items,
            Err(error) => {
                // Keep the last answer: a kubelet does not forget its pods when the API server blinks.
                eprintln!("fake-kubelet: listing the pods of {node}: {error}");
                continue;
            }
        };
        let before = held.clone();
        assign(&mut held, &listed, &resource, &devices);
        read_allocations(&client, &listed, &mut allocations).await;
        let claimed_before = std::mem::replace(&mut claimed, claimed_devices(&listed, &allocations));
        if held != before || claimed != claimed_before {
            eprintln!("fake-kubelet: {node} assignment: {held:?}, claims: {claimed:?}");
            let config = Arc::new(config_of(&held, &claimed, &resource, &devices));
            *current.lock().unwrap_or_else(|p| p.into_inner()) = config;
        }
    }
}

/// Pods that have not finished: the kubelet forgets the devices of the others.
fn not_finished(pod: &&KubePod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The name of the ResourceClaim behind each of the pod's claims: given in the spec, or generated
/// from a template and then named in the pod's status (not yet, while the claim controller has
/// not made it).
fn claim_names(pod: &KubePod) -> Vec<(String, String)> {
    let statuses = pod.status.as_ref().and_then(|s| s.resource_claim_statuses.as_ref());
    pod.spec
        .iter()
        .flat_map(|spec| spec.resource_claims.iter().flatten())
        .filter_map(|claim| {
            let object = claim.resource_claim_name.clone().or_else(|| {
                statuses?
                    .iter()
                    .find(|status| status.name == claim.name)?
                    .resource_claim_name
                    .clone()
            })?;
            Some((claim.name.clone(), object))
        })
        .collect()
}

/// Reads the claims of the node's pods not yet known allocated; forgets those no pod names.
async fn read_allocations(client: &Client, pods: &[KubePod], allocations: &mut Allocations) {
    let wanted: Vec<(String, String)> = pods
        .iter()
        .filter(not_finished)
        .flat_map(|pod| {
            let namespace = pod.namespace().unwrap_or_default();
            claim_names(pod)
                .into_iter()
                .map(move |(_, object)| (namespace.clone(), object))
        })
        .collect();
    allocations.retain(|key, _| wanted.contains(key));
    for (namespace, name) in wanted {
        if allocations.contains_key(&(namespace.clone(), name.clone())) {
            continue;
        }
        let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), &namespace);
        let claim = match claims.get_opt(&name).await {
            Ok(Some(claim)) => claim,
            Ok(None) => continue,
            Err(error) => {
                eprintln!("fake-kubelet: reading ResourceClaim {namespace}/{name}: {error}");
                continue;
            }
        };
        let Some(allocation) = claim.status.and_then(|s| s.allocation) else {
            continue;
        };
        let results = allocation.devices.and_then(|d| d.results).unwrap_or_default();
        let allocated = results
            .into_iter()
            .map(|result| Allocated {
                request: result.request,
                device: ClaimResources {
                    driver_name: result.driver,
                    pool_name: result.pool,
                    device_name: result.device,
                },
            })
            .collect();
        allocations.insert((namespace, name), allocated);
    }
}

/// Each container's claims (its `resources.claims`, narrowed to one request where it names one)
/// with the devices allocated to them.
fn claimed_devices(pods: &[KubePod], allocations: &Allocations) -> Claimed {
    let mut claimed = Claimed::new();
    for pod in pods.iter().filter(not_finished) {
        let namespace = pod.namespace().unwrap_or_default();
        let names = claim_names(pod);
        for container in pod.spec.iter().flat_map(|s| &s.containers) {
            let uses = container.resources.iter().flat_map(|r| r.claims.iter().flatten());
            for used in uses {
                let Some((_, object)) = names.iter().find(|(claim, _)| *claim == used.name) else {
                    continue;
                };
                let Some(allocated) = allocations.get(&(namespace.clone(), object.clone())) else {
                    continue;
                };
                // A request with subrequests (firstAvailable) is allocated as `<request>/<subrequest>`.
                let wanted = |request: &str| {
                    used.request.as_deref().is_none_or(|want| {
                        request == want || request.strip_prefix(want).is_some_and(|rest| rest.starts_with('/'))
                    })
                };
                let devices: Vec<ClaimResources> = allocated
                    .iter()
                    .filter(|a| wanted(&a.request))
                    .map(|a| a.device.clone())
                    .collect();
                if devices.is_empty() {
                    continue;
                }
                claimed
                    .entry((namespace.clone(), pod.name_any(), container.name.clone()))
                    .or_default()
                    .push(DynamicResources {
                        claim_name: object.clone(),
                        claim_namespace: namespace.clone(),
                        claim_resources: devices,
                    });
            }
        }
    }
    claimed
}

/// Frees the devices of containers whose pod finished or is gone, then gives free devices to
/// new containers that request `resource`, oldest pod first. A container that does not fit
/// gets nothing (the scheduler would not have placed it; logged).
fn assign(held: &mut Held, pods: &[KubePod], resource: &str, devices: &[String]) {
    let running: Vec<&KubePod> = pods.iter().filter(not_finished).collect();
    held.retain(|(namespace, name, _), _| {
        running
            .iter()
            .any(|p| p.namespace().as_deref() == Some(namespace.as_str()) && &p.name_any() == name)
    });
    let mut ordered = running;
    ordered.sort_by_key(|p| (p.creation_timestamp().map(|t| t.0), p.name_any()));
    for pod in ordered {
        let namespace = pod.namespace().unwrap_or_default();
        for container in pod.spec.iter().flat_map(|s| &s.containers) {
            let wanted = container
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|limits| limits.get(resource))
                .and_then(|q| q.0.parse::<usize>().ok())
                .unwrap_or(0);
            let key = (namespace.clone(), pod.name_any(), container.name.clone());
            if wanted == 0 || held.contains_key(&key) {
                continue;
            }
            let free: Vec<String> = devices
                .iter()
                .filter(|d| !held.values().flatten().any(|h| h == *d))
                .take(wanted)
                .cloned()
                .collect();
            if free.len() < wanted {
                eprintln!(
                    "fake-kubelet: {}/{} container {} wants {wanted} × {resource}, {} free",
                    key.0,
                    key.1,
                    key.2,
                    free.len()
                );
                continue;
            }
            held.insert(key, free);
        }
    }
}

fn config_of(held: &Held, claimed: &Claimed, resource: &str, devices: &[String]) -> Config {
    let mut containers: BTreeMap<&(String, String, String), Container> = BTreeMap::new();
    let container = |key: &(String, String, String)| Container {
        name: key.2.clone(),
        devices: vec![],
        dynamic_resources: vec![],
    };
    for (key, ids) in held {
        containers.entry(key).or_insert_with(|| container(key)).devices = vec![Devices {
            resource_name: resource.to_owned(),
            device_ids: ids.clone(),
        }];
    }
    for (key, claims) in claimed {
        containers
            .entry(key)
            .or_insert_with(|| container(key))
            .dynamic_resources = claims.clone();
    }
    let mut pods: BTreeMap<(String, String), Vec<Container>> = BTreeMap::new();
    for ((namespace, pod, _), container) in containers {
        pods.entry((namespace.clone(), pod.clone()))
            .or_default()
            .push(container);
    }
    Config {
        pods: pods
            .into_iter()
            .map(|((namespace, name), containers)| Pod {
                namespace,
                name,
                containers,
            })
            .collect(),
        allocatable: vec![Devices {
            resource_name: resource.to_owned(),
            device_ids: devices.to_vec(),
        }],
    }
}
