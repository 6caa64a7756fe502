//! `--follow-node`: the device plugin's part, played against a real API server. kwok's nodes
//! have no device plugin, so nothing else says which GPU a scheduled pod got; this loop hands
//! out the node's device IDs to the containers that request them, as the kubelet would.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::{Api, Client, ResourceExt, api::ListParams};

use crate::{Config, Container, Devices, Pod};

pub struct Follow {
    pub client: Client,
    pub node: String,
    pub devices: Vec<String>,
    pub resource: String,
    pub interval: Duration,
}

/// (namespace, pod, container) → the device IDs it holds.
type Held = BTreeMap<(String, String, String), Vec<String>>;

/// Lists the node's pods every interval until the process ends, publishing each new assignment.
pub async fn run(follow: Follow, current: Arc<Mutex<Arc<Config>>>) {
    let Follow {
        client,
        node,
        devices,
        resource,
        interval,
    } = follow;
    let pods: Api<KubePod> = Api::all(client);
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut held = Held::new();
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
        if held != before {
            eprintln!("fake-kubelet: {node} assignment: {held:?}");
            let config = Arc::new(config_of(&held, &resource, &devices));
            *current.lock().unwrap_or_else(|p| p.into_inner()) = config;
        }
    }
}

/// Frees the devices of containers whose pod finished or is gone, then gives free devices to
/// new containers that request `resource`, oldest pod first. A container that does not fit
/// gets nothing (the scheduler would not have placed it; logged).
fn assign(held: &mut Held, pods: &[KubePod], resource: &str, devices: &[String]) {
    let running: Vec<&KubePod> = pods
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
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

fn config_of(held: &Held, resource: &str, devices: &[String]) -> Config {
    let mut pods: BTreeMap<(String, String), Vec<Container>> = BTreeMap::new();
    for ((namespace, pod, container), ids) in held {
        pods.entry((namespace.clone(), pod.clone()))
            .or_default()
            .push(Container {
                name: container.clone(),
                devices: vec![Devices {
                    resource_name: resource.to_owned(),
                    device_ids: ids.clone(),
                }],
            });
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
