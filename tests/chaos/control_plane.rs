//! kube-apiserver, then etcd, killed and started again (same data, same certificates) under a
//! running operator: the same process resumes — its watches list again, its cache is not stale,
//! a model applied afterwards is Ready within 30 s, the custom-metrics API answers again — and it
//! never exits. Every control-plane upgrade or restart of a managed cluster does this.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{ResourceExt, api::DeleteParams};
use model_operator::api::{ModelDeployment, Phase};

use crate::{
    faults::{ClusterProcess, alive, api_server_ready},
    support::{Operator, TestNamespace, cluster, eventually, front_proxy_client},
};

/// What the issue asks of a model applied after the restart.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long each component stays down.
const DOWN_FOR: Duration = Duration::from_secs(3);

fn model_yaml(name: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: {name}}}\nspec:\n  modelURI: https://models.example/{name}.pt\n  runtime: fastapi-pytorch\n  resources:\n    requests: {{cpu: 10m, memory: 64Mi}}\n"
    )
}

async fn ready(ns: &TestNamespace, name: &str, within: Duration) -> Duration {
    let started = Instant::now();
    eventually(within, &format!("{name} is Ready"), || async {
        let model = ns.api::<ModelDeployment>().get(name).await.ok()?;
        let status = model.status?;
        (status.phase == Some(Phase::Ready) && status.observed_generation == model.metadata.generation).then_some(())
    })
    .await;
    started.elapsed()
}

async fn custom_metrics_answer(operator: &Operator, ns: &TestNamespace, http: &reqwest::Client) -> Option<()> {
    let url = format!(
        "https://{}/apis/custom.metrics.k8s.io/v1beta2/namespaces/{}/pods/%2A/gpu_utilization",
        operator.custom_metrics_addr, ns.name
    );
    let answer = http
        .get(url)
        .header("X-Remote-User", "chaos-admin")
        .header("X-Remote-Group", "system:masters")
        .send()
        .await
        .ok()?;
    (answer.status() == 200).then_some(())
}

/// Kills `component`, starts it again, and checks the operator came through: the Deployment of
/// `survivor`, deleted behind its back, is written again (its watch saw the delete), and
/// `fresh`, applied now, is Ready within 30 s.
async fn restart_under_the_operator(
    component: &'static str,
    operator: &Operator,
    ns: &TestNamespace,
    client: &kube::Client,
    survivor: &str,
    fresh: &str,
) {
    let http = front_proxy_client(Duration::from_secs(5));
    let killed = Instant::now();
    ClusterProcess::new(component).kill_and_restart(DOWN_FOR);
    let back = api_server_ready(client, Duration::from_secs(60)).await;

    let applied = Instant::now();
    ns.apply_model(&model_yaml(fresh))
        .await
        .expect("the API server takes a model again");
    // The operator's part: the Deployment written and the status with it.
    eventually(READY_WITHIN, "the fresh model's Deployment is written", || async {
        let model = ns.api::<ModelDeployment>().get(fresh).await.ok()?;
        let status = model.status?;
        ns.api::<Deployment>().get_opt(fresh).await.ok()??;
        (status.observed_generation == model.metadata.generation).then_some(())
    })
    .await;
    let written = applied.elapsed();
    let fresh_ready = ready(ns, fresh, Duration::from_secs(180)).await + written;

    let deployments = ns.api::<Deployment>();
    let old_uid = deployments.get(survivor).await.unwrap().uid();
    deployments.delete(survivor, &DeleteParams::background()).await.unwrap();
    let rewritten = Instant::now();
    eventually(READY_WITHIN, "the deleted Deployment is written again", || async {
        let deployment = deployments.get_opt(survivor).await.ok()??;
        (deployment.uid() != old_uid).then_some(())
    })
    .await;
    let rewritten = rewritten.elapsed();

    let answered = Instant::now();
    eventually(READY_WITHIN, "the custom metrics API answers again", || {
        custom_metrics_answer(operator, ns, &http)
    })
    .await;
    assert!(
        alive(operator.pid()),
        "the operator process kept running through the {component} restart:\n{}",
        operator.log_text()
    );
    println!(
        "chaos: {component} killed, down {DOWN_FOR:?}, ready again {back:.1?} after it was killed ({:.1?} in all); \
         a model applied then had its Deployment in {written:.1?} and was Ready in {fresh_ready:.1?}, a deleted Deployment written again in {rewritten:.1?}, \
         the custom metrics API answered {:.1?} later",
        killed.elapsed() - applied.elapsed(),
        answered.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_process_resumes_after_kube_apiserver_and_etcd_restart() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "chaos-control-plane").await;
    let log = std::ffi::OsStr::new("info,model_operator=debug,kube_runtime=debug,kube_client=debug");
    let operator = Operator::start_with_env(&ns.name, "survivor", &ns.name, &[], &[("RUST_LOG", log)]);
    ns.apply_model(&model_yaml("before")).await.unwrap();
    ready(&ns, "before", Duration::from_secs(60)).await;

    restart_under_the_operator("kube-apiserver", &operator, &ns, &client, "before", "after-apiserver").await;
    restart_under_the_operator("etcd", &operator, &ns, &client, "before", "after-etcd").await;

    // Every model still Ready, and the one process ran throughout.
    for name in ["before", "after-apiserver", "after-etcd"] {
        ready(&ns, name, READY_WITHIN).await;
    }
    assert!(alive(operator.pid()));
    ns.delete().await;
}
