//! The `/scale` subresource: `kubectl scale md/NAME` (and any autoscaler that targets a scalable
//! object) sets the model's replicas, and reads back the replicas and the serving pods' selector,
//! through the real API server and the real kubectl.

use std::{process::Command, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::api::ListParams;
use model_operator::api::ModelDeployment;

use crate::support::{Operator, TestNamespace, cluster, cluster_dir, eventually, kubeconfig_path};

const SETTLE: Duration = Duration::from_secs(90);

fn kubectl_scale(namespace: &str, name: &str, replicas: u32) {
    let output = Command::new(cluster_dir().join("bin/kubectl"))
        .env("KUBECONFIG", kubeconfig_path())
        .args([
            "scale",
            "-n",
            namespace,
            &format!("md/{name}"),
            &format!("--replicas={replicas}"),
        ])
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl scale: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn deployment_replicas_become(ns: &TestNamespace, name: &str, replicas: i32) {
    eventually(SETTLE, &format!("deploy/{name} wants {replicas} replicas"), || async {
        let deployment = ns.api::<Deployment>().get_opt(name).await.ok()??;
        (deployment.spec?.replicas == Some(replicas)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn kubectl_scale_sets_the_models_replicas_and_the_scale_reports_its_pods() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-scale").await;
    let _operator = Operator::start(&ns.name, "scale");
    ns.apply_model(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: scaled}
spec:
  modelURI: https://models.example.com/scaled.pt
  runtime: fastapi-pytorch
",
    )
    .await
    .unwrap();
    deployment_replicas_become(&ns, "scaled", 1).await;

    kubectl_scale(&ns.name, "scaled", 3);
    let models = ns.api::<ModelDeployment>();
    assert_eq!(models.get("scaled").await.unwrap().spec.replicas, 3, "the spec took it");
    deployment_replicas_become(&ns, "scaled", 3).await;

    // What an autoscaler reads: the replicas running and a selector that finds exactly them.
    let scale = eventually(SETTLE, "the scale reports 3 replicas", || async {
        let scale = models.get_scale("scaled").await.ok()?;
        (scale.status.as_ref()?.replicas == 3).then_some(scale)
    })
    .await;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    let selector = scale.status.and_then(|s| s.selector).expect("the scale has a selector");
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 3, "{selector} selects the serving pods only");

    kubectl_scale(&ns.name, "scaled", 1);
    deployment_replicas_become(&ns, "scaled", 1).await;
    ns.delete().await;
}
