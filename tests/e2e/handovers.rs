//! Spec changes that hand something over keep what serves: autoscaling taking the replica
//! count, a runtime switch, a changed validation input, scaling and rollouts under a watch on
//! `Ready`.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, batch::v1::Job, core::v1::ConfigMap,
};
use kube::{ResourceExt, api::ListParams};
use model_operator::api::{ModelDeployment, Phase};

use crate::support::{Operator, ReadyWatch, TestNamespace, cluster, eventually, warnings};

const SETTLE: Duration = Duration::from_secs(90);

async fn phase_becomes(ns: &TestNamespace, name: &str, phase: Phase) -> ModelDeployment {
    eventually(SETTLE, &format!("md/{name} is {phase}"), || async {
        let model = ns.api::<ModelDeployment>().get_opt(name).await.ok()??;
        (model.status.as_ref()?.phase == Some(phase)).then_some(model)
    })
    .await
}

async fn ready_replicas(ns: &TestNamespace, name: &str, wanted: i32) {
    eventually(SETTLE, &format!("{wanted} ready replicas of {name}"), || async {
        let deployment = ns.api::<Deployment>().get_opt(name).await.ok()??;
        let status = deployment.status?;
        (status.ready_replicas == Some(wanted) && status.replicas == Some(wanted)).then_some(())
    })
    .await;
}

fn scaled_model(extra: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {{name: sentiment}}
spec:
  modelURI: https://models.example.com/sentiment.pt
  runtime: fastapi-pytorch
  resources: {{requests: {{cpu: 100m}}}}
{extra}"
    )
}

#[tokio::test]
async fn autoscale_on_keeps_the_serving_replicas_until_the_hpa_decides() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-handover").await;
    let _operator = Operator::start(&ns.name, "handover");
    ns.apply_model(&scaled_model("  replicas: 3\n")).await.unwrap();
    ready_replicas(&ns, "sentiment", 3).await;

    // The HPA takes over (on CPU, which this cluster cannot measure, so it holds its scale).
    ns.apply_model(&scaled_model(
        "  autoscale: true\n  autoscaling: {minReplicas: 1, maxReplicas: 5}\n",
    ))
    .await
    .unwrap();
    let deployments = ns.api::<Deployment>();
    let started = std::time::Instant::now();
    let mut fewest = i32::MAX;
    let mut hpa_seen = false;
    while started.elapsed() < Duration::from_secs(12) {
        if let Some(replicas) = deployments
            .get_opt("sentiment")
            .await
            .ok()
            .flatten()
            .and_then(|d| d.spec?.replicas)
        {
            fewest = fewest.min(replicas);
        }
        hpa_seen |= ns
            .api::<HorizontalPodAutoscaler>()
            .get_opt("sentiment")
            .await
            .ok()
            .flatten()
            .is_some();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hpa_seen, "the HPA was created");
    assert_eq!(
        fewest, 3,
        "the Deployment never wanted fewer than the 3 replicas serving"
    );
    ready_replicas(&ns, "sentiment", 3).await;
    ns.delete().await;
}

#[tokio::test]
async fn a_runtime_switch_prunes_what_the_old_runtime_needed() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-runtime-switch").await;
    let _operator = Operator::start(&ns.name, "runtime-switch");
    let model = |runtime: &str| {
        format!(
            "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {{name: bert}}
spec:
  modelURI: https://models.example.com/bert.mar
  runtime: {runtime}
"
        )
    };
    ns.apply_model(&model("torchserve")).await.unwrap();
    phase_becomes(&ns, "bert", Phase::Ready).await;
    let configs = ns.api::<ConfigMap>();
    assert!(configs.get_opt("bert-runtime-config").await.unwrap().is_some());

    ns.apply_model(&model("fastapi-pytorch")).await.unwrap();
    eventually(SETTLE, "TorchServe's configuration is pruned", || async {
        configs
            .get_opt("bert-runtime-config")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let deployment = ns.api::<Deployment>().get("bert").await.unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert!(
        pod.volumes.unwrap_or_default().iter().all(|v| v.config_map.is_none()),
        "nothing mounts it any more"
    );
    phase_becomes(&ns, "bert", Phase::Ready).await;
    ns.delete().await;
}

#[tokio::test]
async fn a_changed_validation_input_is_validated_again() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-revalidate").await;
    let _operator = Operator::start(&ns.name, "revalidate");
    let model = |image: &str| {
        format!(
            "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {{name: checked}}
spec:
  modelURI: https://models.example.com/checked.pt
  runtime: fastapi-pytorch
  validateScript: check.py
  runtimeImage: {image}
"
        )
    };
    let jobs = ns.api::<Job>();
    let job_names = || async {
        let mut names: Vec<String> = jobs
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(|j| j.name_any()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    ns.apply_model(&model("registry.example.com/fastapi-pytorch:1"))
        .await
        .unwrap();
    phase_becomes(&ns, "checked", Phase::Ready).await;
    let first = job_names().await;
    assert_eq!(first.len(), 1, "{first:?}");

    // Same version, another image: its verdict is not the first image's.
    ns.apply_model(&model("registry.example.com/fastapi-pytorch:2"))
        .await
        .unwrap();
    eventually(SETTLE, "a second validation Job runs for the new image", || async {
        (job_names().await.len() == 2).then_some(())
    })
    .await;
    eventually(SETTLE, "the new image rolls out once validated", || async {
        let deployment = ns.api::<Deployment>().get("checked").await.ok()?;
        let image = deployment.spec?.template.spec?.containers[0].image.clone()?;
        (image == "registry.example.com/fastapi-pytorch:2").then_some(())
    })
    .await;
    phase_becomes(&ns, "checked", Phase::Ready).await;
    ns.delete().await;
}

#[tokio::test]
async fn scaling_and_rollouts_keep_ready_true_without_warnings() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-no-flap").await;
    let _operator = Operator::start(&ns.name, "no-flap");
    ns.apply_model(&scaled_model("  replicas: 1\n")).await.unwrap();
    phase_becomes(&ns, "sentiment", Phase::Ready).await;

    let watch = ReadyWatch::start(ns.api::<ModelDeployment>(), "sentiment");
    // Scale up: two more replicas start while the first serves.
    ns.apply_model(&scaled_model("  replicas: 3\n")).await.unwrap();
    ready_replicas(&ns, "sentiment", 3).await;
    // Roll out a new version: old replicas serve until their successors are ready.
    ns.apply_model(&scaled_model("  replicas: 3\n  version: v2\n"))
        .await
        .unwrap();
    eventually(SETTLE, "v2 is rolled out and Ready", || async {
        let status = ns.api::<ModelDeployment>().get("sentiment").await.ok()?.status?;
        (status.version.as_deref() == Some("v2") && status.phase == Some(Phase::Ready)).then_some(())
    })
    .await;
    let lapses = watch.stop();
    assert!(lapses.is_empty(), "Ready was not True at: {lapses:#?}");
    let warnings = warnings(&ns).await;
    assert!(warnings.is_empty(), "no Warning Event: {warnings:#?}");
    ns.delete().await;
}
