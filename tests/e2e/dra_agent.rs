//! GPUs allocated through Dynamic Resource Allocation, end to end without the operator: a raw pod
//! claims devices from a ResourceClaimTemplate, the real scheduler allocates them from the
//! hand-written ResourceSlices of the DRA nodes (`tests/cluster/dra-devices.yaml`) and binds the
//! pod, the fake kubelet reports the claim's devices as PodResources `dynamic_resources`, and the
//! real node agent (fake NVML with the slices' UUIDs) maps them to its GPUs through the slices it
//! reads from the API server. Its `/metrics` must attribute the allocated GPUs (or MIG device) to
//! the pod with dcgm-exporter's `dra_*` labels, and `/v1/samples` the pod's GPU utilisation.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{
    core::v1::Pod,
    resource::v1::{DeviceAttribute, ResourceClaim, ResourceClaimTemplate, ResourceSlice},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use node_agent::samples::NodeSamples;
use serde_json::json;

use crate::{
    gpu_rig::{FakeGpu, GpuNode},
    support::{TestNamespace, cluster, dra_devices, eventually},
};

pub const H100_NODE: &str = "gpu-dra-h100-0";
const MIG_NODE: &str = "gpu-dra-mig-0";
const POD: &str = "dra-raw";
/// Other tests of the cluster tier claim these nodes' devices too: a pod may wait for them.
const WAIT: Duration = Duration::from_secs(120);

/// A device of a node's slice: its name and attributes.
type SliceDevice = (String, BTreeMap<String, DeviceAttribute>);

/// The devices the cluster's ResourceSlice for `node` publishes, in the slice's order.
async fn slice_devices(client: &Client, node: &str) -> Vec<SliceDevice> {
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let listed = slices
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .expect("listing the node's ResourceSlices");
    let devices: Vec<SliceDevice> = listed
        .items
        .into_iter()
        .flat_map(|slice| slice.spec.devices.unwrap_or_default())
        .map(|device| (device.name, device.attributes.unwrap_or_default()))
        .collect();
    assert!(
        !devices.is_empty(),
        "{node} has no ResourceSlice devices: is the cluster from before tests/cluster/dra-devices.yaml? (tests/cluster/up.sh applies it)"
    );
    devices
}

fn string<'a>(attributes: &'a BTreeMap<String, DeviceAttribute>, name: &str) -> &'a str {
    attributes[name].string.as_deref().unwrap()
}

/// The fake NVML's GPUs for the H100 DRA node: the UUIDs its slice publishes.
pub async fn h100_fake_gpus(client: &Client) -> Vec<FakeGpu> {
    slice_devices(client, H100_NODE)
        .await
        .iter()
        .map(|(_, attributes)| FakeGpu {
            uuid: string(attributes, "uuid").to_owned(),
            name: "NVIDIA H100 80GB HBM3",
            mig_devices: vec![],
        })
        .collect()
}

/// The template and the raw pod that claims from it, on `node`.
async fn create_claiming_pod(ns: &TestNamespace, node: &str, request: serde_json::Value) {
    let template: ResourceClaimTemplate = serde_json::from_value(json!({
        "metadata": {"name": "gpu"},
        "spec": {"spec": {"devices": {"requests": [request]}}},
    }))
    .unwrap();
    ns.api::<ResourceClaimTemplate>()
        .create(&PostParams::default(), &template)
        .await
        .expect("creating the ResourceClaimTemplate");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": POD},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "gpu"}],
            "containers": [
                {"name": "main", "image": "example.com/model-server", "resources": {"claims": [{"name": "gpu"}]}},
                // Names no claim: the kubelet reports no devices for it.
                {"name": "sidecar", "image": "example.com/sidecar"},
            ],
        },
    }))
    .unwrap();
    ns.api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .expect("creating the pod");
}

/// The pod's generated claim and the devices the scheduler allocated to it, once it runs.
async fn allocated_devices(ns: &TestNamespace, node: &str) -> (String, Vec<String>) {
    let pods = ns.api::<Pod>();
    let claims = ns.api::<ResourceClaim>();
    eventually(
        WAIT,
        &format!("{POD} runs on {node} with its claim allocated"),
        || async {
            let pod = pods.get(POD).await.ok()?;
            let status = pod.status?;
            (status.phase.as_deref() == Some("Running")).then_some(())?;
            assert_eq!(pod.spec?.node_name.as_deref(), Some(node));
            let claim = status
                .resource_claim_statuses?
                .into_iter()
                .next()?
                .resource_claim_name?;
            let results = claims.get(&claim).await.ok()?.status?.allocation?.devices?.results?;
            let devices = results
                .into_iter()
                .map(|result| {
                    assert_eq!((result.driver.as_str(), result.pool.as_str()), ("gpu.nvidia.com", node));
                    result.device
                })
                .collect();
            Some((claim, devices))
        },
    )
    .await
}

async fn get(address: &str, path: &str) -> Option<String> {
    let response = reqwest::get(format!("http://{address}{path}")).await.ok()?;
    response.status().is_success().then_some(())?;
    response.text().await.ok()
}

/// `/metrics` once it has a series of the pod.
async fn metrics_with_the_pod(node: &GpuNode, ns: &TestNamespace) -> String {
    let pod_label = format!(r#"namespace="{}",pod="{POD}""#, ns.name);
    eventually(WAIT, "the agent's series of the pod", || async {
        let metrics = get(&node.agent_address, "/metrics").await?;
        metrics.contains(&pod_label).then_some(metrics)
    })
    .await
}

async fn samples(node: &GpuNode) -> NodeSamples {
    let body = get(&node.agent_address, "/v1/samples")
        .await
        .expect("/v1/samples answers");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn claimed_whole_gpus_are_attributed_to_their_pod() {
    let _turn = dra_devices().await;
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "dra-gpus").await;
    let slice = slice_devices(&client, H100_NODE).await;
    let gpus = h100_fake_gpus(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let node = GpuNode::start_dra(dir.path(), H100_NODE, gpus, 64);

    create_claiming_pod(
        &ns,
        H100_NODE,
        json!({"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com", "count": 2}}),
    )
    .await;
    let (claim, devices) = allocated_devices(&ns, H100_NODE).await;
    assert_eq!(devices.len(), 2, "{devices:?}");
    eprintln!("dra: the scheduler allocated {devices:?} of {H100_NODE} to claim {claim}");

    let metrics = metrics_with_the_pod(&node, &ns).await;
    let pod_series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{") && l.contains(&format!(r#"pod="{POD}""#)))
        .collect();
    eprintln!(
        "dra: the agent's utilisation series of the pod:\n{}",
        pod_series.join("\n")
    );
    let mut expected = Vec::new();
    for device in &devices {
        let index = slice.iter().position(|(name, _)| name == device).unwrap();
        let uuid = string(&slice[index].1, "uuid");
        expected.push(format!(
            r#"DCGM_FI_DEV_GPU_UTIL{{gpu="{index}",UUID="{uuid}",modelName="NVIDIA H100 80GB HBM3",Hostname="{H100_NODE}",container="main",dra_claim_name="{claim}",dra_claim_namespace="{ns}",dra_device_name="{device}",dra_driver_name="gpu.nvidia.com",dra_pool_name="{H100_NODE}",namespace="{ns}",pod="{POD}"}} 64"#,
            ns = ns.name
        ));
    }
    expected.sort();
    let mut found: Vec<String> = pod_series.iter().map(|l| l.to_string()).collect();
    found.sort();
    assert_eq!(found, expected, "{metrics}");
    // Every GPU of the node is reported; the two not in the claim are free, or another test's
    // pod's (the DRA nodes are shared by the cluster tier).
    for index in 0..slice.len() {
        assert!(
            metrics.contains(&format!(r#"DCGM_FI_DEV_GPU_UTIL{{gpu="{index}","#)),
            "{metrics}"
        );
    }

    // What the operator's custom metrics API reads: the pod's GPU utilisation.
    let samples = samples(&node).await;
    assert_eq!(samples.pod_gpu_utilization(&ns.name, POD), Some(64.0), "{samples:#?}");
    let held = samples.pods.iter().find(|c| c.pod == POD).unwrap();
    assert_eq!(held.resource, "gpu.nvidia.com");
    assert_eq!(
        held.device_ids,
        devices.iter().map(|d| format!("{H100_NODE}/{d}")).collect::<Vec<_>>()
    );
    eprintln!("dra: /v1/samples of the pod: {held:?}");

    drop(node);
    ns.delete().await;
}

#[tokio::test]
async fn a_claimed_mig_device_is_attributed_to_its_pod() {
    let _turn = dra_devices().await;
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "dra-mig").await;
    let slice = slice_devices(&client, MIG_NODE).await;
    let parent = string(&slice[0].1, "parentUUID").to_owned();
    let gpus = vec![FakeGpu {
        uuid: parent.clone(),
        name: "NVIDIA A100-SXM4-80GB",
        mig_devices: slice
            .iter()
            .map(|(_, attributes)| string(attributes, "uuid").to_owned())
            .collect(),
    }];
    let dir = tempfile::tempdir().unwrap();
    let node = GpuNode::start_dra(dir.path(), MIG_NODE, gpus, 0);

    create_claiming_pod(
        &ns,
        MIG_NODE,
        json!({"name": "mig", "exactly": {"deviceClassName": "mig.nvidia.com", "selectors": [
            {"cel": {"expression": "device.attributes['gpu.nvidia.com'].profile == '1g.10gb'"}}]}}),
    )
    .await;
    let (claim, devices) = allocated_devices(&ns, MIG_NODE).await;
    let [device] = &devices[..] else {
        panic!("one MIG device allocated: {devices:?}")
    };
    eprintln!("dra: the scheduler allocated {device} of {MIG_NODE} to claim {claim}");
    let mig_uuid = string(&slice.iter().find(|(name, _)| name == device).unwrap().1, "uuid");

    let metrics = metrics_with_the_pod(&node, &ns).await;
    let pod_series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains(&format!(r#"pod="{POD}""#)))
        .collect();
    eprintln!("dra: the agent's series of the pod:\n{}", pod_series.join("\n"));
    let labels = format!(
        r#"gpu="0",UUID="{parent}",modelName="NVIDIA A100-SXM4-80GB",GPU_I_PROFILE="1g.10gb",MIG_UUID="{mig_uuid}",Hostname="{MIG_NODE}",container="main",dra_claim_name="{claim}",dra_claim_namespace="{ns}",dra_device_name="{device}",dra_driver_name="gpu.nvidia.com",dra_mig_device_uuid="{mig_uuid}",dra_mig_profile="1g.10gb",dra_pool_name="{MIG_NODE}",namespace="{ns}",pod="{POD}""#,
        ns = ns.name
    );
    // NVML reads a MIG device's memory only, so those are its series.
    assert_eq!(
        pod_series,
        [
            format!("DCGM_FI_DEV_FB_FREE{{{labels}}} 8832"),
            format!("DCGM_FI_DEV_FB_USED{{{labels}}} 1024")
        ],
        "{metrics}"
    );

    let samples = samples(&node).await;
    let held = samples.pods.iter().find(|c| c.pod == POD).unwrap();
    assert_eq!(
        (held.gpus.clone(), held.mig_devices.clone()),
        (vec![parent.clone()], vec![mig_uuid.to_owned()]),
        "{samples:#?}"
    );
    // A GPU in MIG mode has no utilisation reading, as with the device plugin's MIG devices.
    assert_eq!(samples.pod_gpu_utilization(&ns.name, POD), None);

    drop(node);
    ns.delete().await;
}
