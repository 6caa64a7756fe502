//! Room on the local cluster for thousands of pods and Services: the cluster's one CPU node runs
//! 110 pods and its Service range is a /24, so the run adds fake kwok nodes (removed at the end)
//! and a ServiceCIDR (left in place, as the cluster's own).

use std::time::Duration;

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node},
        networking::v1::{ServiceCIDR, ServiceCIDRSpec},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, api::PostParams};

use crate::{
    faults::{FakeNodes, KwokCpuNode, kwok_cpu_node},
    support::eventually,
};

/// Pods one extra node runs. kwok gives pods addresses from the node's pod CIDR, a /22 here.
const PODS_PER_NODE: usize = 1000;
/// Beside the models' pods: the validation Jobs' (one model in ten), and the previous phase's
/// pods that are still terminating.
const PODS_PER_MODEL: f64 = 1.2;
/// Room for 16k Services, apart from the chaos tier's 10.0.16.0/20 and the default 10.0.0.0/24.
const SERVICE_RANGE: &str = "10.0.64.0/18";
const SERVICE_CIDR_NAME: &str = "bench-scale";

/// Nodes enough for `models` models at a time; deleted when dropped.
pub async fn nodes_for(client: &Client, models: usize) -> FakeNodes {
    let count = (models as f64 * PODS_PER_MODEL / PODS_PER_NODE as f64).ceil() as usize;
    FakeNodes::create(client, (0..count.max(1)).map(cpu_node).collect()).await
}

/// A fake CPU node shaped as tests/cluster/nodes.yaml's cpu-0, with room for PODS_PER_NODE pods.
fn cpu_node(index: usize) -> Node {
    kwok_cpu_node(&KwokCpuNode {
        name: format!("scale-cpu-{index}"),
        pod_cidr: format!("10.248.{}.0/22", index * 4),
        address: format!("10.1.1.{}", 10 + index),
        instance_type: "m6i.metal",
        resources: serde_json::json!({
            "cpu": "256", "memory": "1024Gi", "pods": PODS_PER_NODE.to_string(), "ephemeral-storage": "1000Gi"
        }),
    })
}

/// Adds SERVICE_RANGE to the cluster's Service addresses, once, and waits until it is in use.
pub async fn more_service_addresses(client: &Client) {
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    let range = ServiceCIDR {
        metadata: ObjectMeta {
            name: Some(SERVICE_CIDR_NAME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(vec![SERVICE_RANGE.into()]),
        }),
        status: None,
    };
    match cidrs.create(&PostParams::default(), &range).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("creating the ServiceCIDR {SERVICE_CIDR_NAME}: {error}"),
    }
    eventually(Duration::from_secs(30), "the ServiceCIDR is Ready", || async {
        let range = cidrs.get(SERVICE_CIDR_NAME).await.ok()?;
        range
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// Waits until a deleted namespace is gone with everything in it, so that the next phase is
/// measured on a quiet cluster (no garbage collection under way) with its nodes' room back.
pub async fn namespace_gone(client: &Client, name: &str, within: Duration) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(within, &format!("namespace {name} is gone"), || async {
        matches!(namespaces.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
}
