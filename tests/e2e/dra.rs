//! GPUs through Dynamic Resource Allocation on the local cluster: the fake nodes gpu-dra-h100-0
//! (4 × H100) and gpu-dra-mig-0 (7 × A100 1g.10gb) publish their GPUs only as ResourceSlices
//! (tests/cluster/dra-devices.yaml); the real scheduler allocates claims made from the
//! operator's ResourceClaimTemplates. The device-plugin nodes stay beside them, so `auto` is
//! tried on each kind.
//!
//! The tests that claim DRA devices take turns (`support::dra_devices`): the H100 node's four
//! GPUs are what the capacity checks count.

use std::time::Duration;

use k8s_openapi::api::{
    core::v1::Pod,
    resource::v1::{ResourceClaim, ResourceClaimTemplate},
};
use kube::{Api, ResourceExt, api::ListParams};
use model_operator::api::{GpuAllocation, ModelDeployment, Phase, conditions};

use crate::{
    dra_agent::{H100_NODE, h100_fake_gpus},
    gpu_rig::{API_SERVICE_TURN, GPU_METRIC, GpuNode, MAX_REPLICAS, MODEL, Rig, SCALE_WAIT, TARGET_PERCENT},
    support::{Operator, TestNamespace, cluster, dra_devices, eventually},
};

const SETTLE: Duration = Duration::from_secs(90);

fn model_yaml(name: &str, replicas: i32, gpu: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: {name}}}\nspec:\n  modelURI: https://models.example/{name}/\n  runtime: triton\n  replicas: {replicas}\n  gpu: {gpu}\n"
    )
}

async fn model(ns: &TestNamespace, name: &str) -> Option<ModelDeployment> {
    ns.api::<ModelDeployment>().get_opt(name).await.ok().flatten()
}

fn condition_of(model: &ModelDeployment, type_: &str) -> Option<(String, String, String)> {
    let c = model.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn serving_pods(ns: &TestNamespace, name: &str) -> Vec<Pod> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/name={name},app.kubernetes.io/component=model-server"
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// The model once its status says it is Ready with `devices` replicas' devices listed.
async fn ready_with_devices(ns: &TestNamespace, name: &str, replicas: usize) -> ModelDeployment {
    eventually(
        SETTLE,
        &format!("md/{name} Ready with {replicas} replicas' devices"),
        || async {
            model(ns, name).await.filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(Phase::Ready) && s.gpu_devices.len() == replicas)
            })
        },
    )
    .await
}

/// The devices the scheduler allocated to a pod's claim, as `pool/device`.
async fn allocated(ns: &TestNamespace, pod: &Pod) -> Vec<String> {
    let claim_name = pod
        .status
        .as_ref()
        .and_then(|s| s.resource_claim_statuses.as_ref())
        .and_then(|claims| claims.iter().find(|c| c.name == "gpu"))
        .and_then(|c| c.resource_claim_name.clone())
        .expect("the pod's claim is named in its status");
    let claim = ns.api::<ResourceClaim>().get(&claim_name).await.unwrap();
    claim
        .status
        .and_then(|s| s.allocation)
        .and_then(|a| a.devices)
        .and_then(|d| d.results)
        .unwrap_or_default()
        .into_iter()
        .map(|r| format!("{}/{}", r.pool, r.device))
        .collect()
}

#[tokio::test]
async fn a_dra_model_gets_a_claim_per_replica_its_devices_in_status_and_capacity_from_slices() {
    let _turn = dra_devices().await;
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-dra").await;
    let _operator = Operator::start(&ns.name, "dra");
    let gpu = "{allocation: dra, count: 2, architectures: [Hopper], minMemoryMiB: 40960}";
    ns.apply_model(&model_yaml("llm-dra", 2, gpu)).await.unwrap();

    let ready = ready_with_devices(&ns, "llm-dra", 2).await;
    let status = ready.status.as_ref().unwrap();
    assert_eq!(status.gpu_allocation, Some(GpuAllocation::Dra));
    let template_name = ns
        .api::<ResourceClaimTemplate>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(template_name.len(), 1, "one template for the model");
    assert_eq!(
        template_name[0].owner_references()[0].name,
        "llm-dra",
        "the model owns its template"
    );

    let pods = serving_pods(&ns, "llm-dra").await;
    let mut every_device = Vec::new();
    for pod in &pods {
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some("gpu-dra-h100-0"),
            "the only node with Hopper devices"
        );
        let devices = allocated(&ns, pod).await;
        assert_eq!(devices.len(), 2, "{devices:?}");
        let listed = status.gpu_devices.iter().find(|r| r.pod == pod.name_any()).unwrap();
        assert_eq!(listed.devices.len(), 2);
        for (device, shown) in devices.iter().zip(&listed.devices) {
            assert!(
                shown.starts_with(&format!("{device} (GPU-")),
                "{shown} names {device} and its UUID"
            );
        }
        every_device.extend(devices);
    }
    every_device.sort();
    every_device.dedup();
    assert_eq!(every_device.len(), 4, "each replica its own devices: {every_device:?}");
    println!(
        "DRA allocation: {}",
        status
            .gpu_devices
            .iter()
            .map(|r| format!("{} → {}", r.pod, r.devices.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let (capacity, _, message) = condition_of(&ready, conditions::GPU_CAPACITY).unwrap();
    assert_eq!(capacity, "True", "{message}");

    // A third replica: the node's four GPUs are held, so it waits, and the status says why.
    ns.apply_model(&model_yaml("llm-dra", 3, gpu)).await.unwrap();
    let short = eventually(SETTLE, "the capacity condition counts the claimed devices", || async {
        model(&ns, "llm-dra")
            .await
            .filter(|m| condition_of(m, conditions::GPU_CAPACITY).is_some_and(|c| c.0 == "False"))
    })
    .await;
    let (_, reason, message) = condition_of(&short, conditions::GPU_CAPACITY).unwrap();
    assert_eq!(reason, conditions::reasons::INSUFFICIENT_GPUS);
    for part in [
        "needs 2 × gpu.nvidia.com (DRA) with memory ≥ 40960 MiB, architecture Hopper",
        "room for 0",
        "gpu-dra-h100-0 has 0 of 4 free",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    println!("DRA capacity: {message}");

    // A different GPU request is a new template and new pods; the old template goes.
    ns.apply_model(&model_yaml(
        "llm-dra",
        1,
        "{allocation: dra, count: 1, architectures: [Hopper]}",
    ))
    .await
    .unwrap();
    let templates: Api<ResourceClaimTemplate> = ns.api();
    eventually(SETTLE, "only the new request's template is left", || async {
        let names: Vec<String> = templates
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .map(|t| t.name_any())
            .collect();
        (names.len() == 1 && names[0] != template_name[0].name_any()).then_some(())
    })
    .await;
    ready_with_devices(&ns, "llm-dra", 1).await;
    ns.delete().await;
}

#[tokio::test]
async fn auto_takes_dra_only_where_the_device_plugin_cannot_serve() {
    let _turn = dra_devices().await;
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-dra-auto").await;
    let _operator = Operator::start(&ns.name, "dra-auto");
    // (model, gpu block, allocation auto should pick, node it should land on)
    let cases = [
        (
            "on-a100",
            "{count: 1, products: [NVIDIA-A100-SXM4-80GB]}",
            GpuAllocation::DevicePlugin,
            "gpu-a100-",
        ),
        (
            "on-h100",
            "{count: 1, products: [NVIDIA-H100-80GB-HBM3]}",
            GpuAllocation::Dra,
            "gpu-dra-h100-0",
        ),
        (
            "on-mig",
            "{sharing: mig, migProfile: 1g.10gb}",
            GpuAllocation::DevicePlugin,
            "gpu-mig-0",
        ),
        (
            "on-ampere-mig",
            "{sharing: mig, migProfile: 1g.10gb, architectures: [Ampere]}",
            GpuAllocation::Dra,
            "gpu-dra-mig-0",
        ),
    ];
    for (name, gpu, _, _) in &cases {
        ns.apply_model(&model_yaml(name, 1, gpu)).await.unwrap();
    }
    for (name, gpu, allocation, node) in &cases {
        let ready = eventually(SETTLE, &format!("md/{name} Ready"), || async {
            model(&ns, name)
                .await
                .filter(|m| m.status.as_ref().is_some_and(|s| s.phase == Some(Phase::Ready)))
        })
        .await;
        let status = ready.status.as_ref().unwrap();
        assert_eq!(status.gpu_allocation, Some(*allocation), "{name}: {gpu}");
        let pods = serving_pods(&ns, name).await;
        let placed = pods[0].spec.as_ref().unwrap().node_name.clone().unwrap_or_default();
        assert!(placed.starts_with(node), "{name} on {placed}, expected {node}");
        let devices = if *allocation == GpuAllocation::Dra {
            eventually(SETTLE, &format!("md/{name} lists its devices"), || async {
                let m = model(&ns, name).await?;
                m.status
                    .filter(|s| !s.gpu_devices.is_empty())
                    .map(|s| s.gpu_devices[0].devices.join(", "))
            })
            .await
        } else {
            String::from("nvidia.com limits")
        };
        println!(
            "auto: {name} ({gpu}) → {} on {placed}: {devices}",
            allocation.spelling()
        );
    }
    ns.delete().await;
}

/// One DRA-claimed H100 per replica, between 1 and 2 replicas on the GPU utilisation the node
/// agent attributes to each pod through its claim.
fn autoscaled_dra_yaml() -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: {MODEL}}}\nspec:\n  modelURI: s3://example-models/triton/llm/\n  runtime: triton\n  gpu: {{allocation: dra, count: 1, architectures: [Hopper]}}\n  autoscale: true\n  autoscaling: {{minReplicas: 1, maxReplicas: {MAX_REPLICAS}, metric: gpu-utilization, target: {TARGET_PERCENT}, scaleDownStabilizationSeconds: 0}}\n"
    )
}

#[tokio::test]
async fn the_hpa_scales_a_dra_model_on_the_utilisation_of_its_claimed_gpus() {
    let _devices = dra_devices().await;
    let _api_service = API_SERVICE_TURN.lock().await;
    let client = cluster().await;
    let gpus = h100_fake_gpus(&client).await;
    let h100_agent =
        move |dir: &std::path::Path, utilization| vec![GpuNode::start_dra(dir, H100_NODE, gpus, utilization)];
    let rig = Rig::start_on("e2e-dra-hpa", 20, MODEL, GPU_METRIC, h100_agent, |_| Vec::new()).await;
    rig.ns.apply_model(&autoscaled_dra_yaml()).await.unwrap();

    rig.wait_for_served_pods(1, "20").await;
    eventually(SCALE_WAIT, "the HPA reads 20 % from the custom metrics API", || async {
        (rig.hpa_current_average().await.as_deref() == Some("20")).then_some(())
    })
    .await;
    rig.set_utilization(90);
    eventually(SCALE_WAIT, "the HPA scales the DRA model out to 2", || async {
        (rig.deployment_replicas().await == Some(MAX_REPLICAS)).then_some(())
    })
    .await;
    rig.wait_for_served_pods(2, "90").await;
    rig.set_utilization(10);
    eventually(SCALE_WAIT, "and back in to 1", || async {
        (rig.deployment_replicas().await == Some(1)).then_some(())
    })
    .await;
    rig.teardown().await;
}
