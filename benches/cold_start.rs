//! A cold start on the local cluster, from the first request to a model at zero until its
//! answer, through the real operator and activator binaries, split where the time goes:
//!
//! - **scale-up**: the request reaches the activator, which asks for a replica (the model's
//!   `/scale`), and the operator writes the Deployment at one;
//! - **scheduling**: the ReplicaSet controller makes the pod and the scheduler binds it;
//! - **start and load**: the pod runs and its runtime (the real FastAPI app, started once the
//!   pod is bound, as its container would be) loads the model, until the operator's probe says
//!   it answers;
//! - **forward**: from the model answering to the client's answer.
//!
//! kwok's pods have made-up IPs, so both binaries reach the runtime on loopback through their
//! endpoint overrides. The activator's warm overhead and memory per held request are measured
//! on loopback by `benches/activator.rs`; `make bench-cold-start` runs both.

#[path = "../tests/support/mod.rs"]
mod servers;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use model_operator::api::ModelDeployment;
use servers::{TestServers, free_port, inference_app, one_model::http_client, one_model::predict_affine};
use support::{ActivatorProcess, Operator, TestNamespace, cluster, eventually};

const ROUNDS: usize = 5;
const SETTLE: Duration = Duration::from_secs(120);

fn model_at_zero(name: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: {name}}}\nspec:\n  modelURI: https://models.example.com/{name}.pt\n  runtime: fastapi-pytorch\n  modelName: affine\n  replicas: 0\n"
    )
}

/// When each step of one cold start was first seen.
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    deployment_wants_one: Option<Instant>,
    pod_bound: Option<Instant>,
    model_answers: Option<Instant>,
}

/// Watches the namespace's Deployments, pods and ModelDeployments, and notes the first time
/// each step of `name`'s cold start shows.
fn follow(ns: &TestNamespace, name: &str, marks: Arc<Mutex<Marks>>) -> tokio::task::JoinHandle<()> {
    let deployments = ns.api::<Deployment>();
    let pods = ns.api::<Pod>();
    let models: Api<ModelDeployment> = ns.api();
    let name = name.to_owned();
    tokio::spawn(async move {
        let config = watcher::Config::default();
        let deployments = watcher(deployments, config.clone()).applied_objects().map(|d| {
            d.ok().and_then(|d: Deployment| {
                (d.metadata.name.as_deref() == Some(name.as_str()) && d.spec.and_then(|s| s.replicas).unwrap_or(0) >= 1)
                    .then_some(0)
            })
        });
        let pods = watcher(pods, config.clone())
            .applied_objects()
            .map(|p| p.ok().and_then(|p: Pod| p.spec.and_then(|s| s.node_name).map(|_| 1)));
        let models = watcher(models, config).applied_objects().map(|m| {
            m.ok().and_then(|m: ModelDeployment| {
                (m.status.and_then(|s| s.model_ready_replicas).unwrap_or(0) >= 1).then_some(2)
            })
        });
        let mut all = std::pin::pin!(futures::stream::select(
            deployments,
            futures::stream::select(pods, models)
        ));
        while let Some(step) = all.next().await {
            let now = Instant::now();
            let mut marks = marks.lock().unwrap();
            let slot = match step {
                Some(0) => &mut marks.deployment_wants_one,
                Some(1) => &mut marks.pod_bound,
                Some(2) => &mut marks.model_answers,
                _ => continue,
            };
            slot.get_or_insert(now);
        }
    })
}

fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = TestServers::installed();
    let client = cluster().await;
    let mut rows = Vec::new();
    for round in 0..ROUNDS {
        let ns = TestNamespace::create(&client, "bench-cold").await;
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join("model.pt");
        servers::write_affine_model(&servers.path("PYTHON"), &model_path);
        let port = free_port();
        let runtime = format!("{}/cold=127.0.0.1:{port}", ns.name);
        let _operator = Operator::start_with(&ns.name, &format!("cold-op-{round}"), &["--probe-endpoint", &runtime]);
        let activator =
            ActivatorProcess::start(&ns.name, &format!("cold-act-{round}"), &["--model-endpoint", &runtime]);
        ns.apply_model(&model_at_zero("cold")).await.unwrap();
        eventually(SETTLE, "the model is at zero", || async {
            let model = ns.api::<ModelDeployment>().get_opt("cold").await.ok()??;
            (model.status?.phase == Some(model_operator::api::Phase::ScaledToZero)).then_some(())
        })
        .await;

        let marks = Arc::new(Mutex::new(Marks::default()));
        let watching = follow(&ns, "cold", marks.clone());
        // Let the watches list before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The runtime's container starts once the pod is bound, as the kubelet would start it.
        let runtime_for_pod = {
            let (marks, dir, model_path) = (marks.clone(), dir.path().to_path_buf(), model_path.clone());
            tokio::spawn(async move {
                eventually(SETTLE, "the pod is bound", || async {
                    marks.lock().unwrap().pod_bound.map(|_| ())
                })
                .await;
                inference_app(&TestServers::installed(), &dir, "affine", &model_path, port)
            })
        };
        let service = format!("cold-service.{}", ns.name);
        let url = format!("http://{service}:{}/predict", activator.http.port());
        let http = http_client(&service, activator.http, SETTLE);
        let sent = Instant::now();
        predict_affine(&http, &url, 3).await;
        let answered = Instant::now();
        let _app = runtime_for_pod.await.unwrap();
        watching.abort();
        let marks = *marks.lock().unwrap();
        let (Some(scaled), Some(bound), Some(answers)) =
            (marks.deployment_wants_one, marks.pod_bound, marks.model_answers)
        else {
            panic!("round {round}: a step was not seen: {marks:?}");
        };
        rows.push([
            answered - sent,
            scaled - sent,
            bound - scaled,
            answers - bound,
            answered.saturating_duration_since(answers),
        ]);
        drop(activator);
        ns.delete().await;
    }

    println!("cold start through the activator on the local cluster ({ROUNDS} rounds, fastapi-pytorch):");
    println!("| round | first request to answer | scale-up | scheduling | start and load | forward |");
    println!("|---|---|---|---|---|---|");
    for (round, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|d| ms(*d)).collect();
        println!("| {} | {} |", round + 1, cells.join(" | "));
    }
    let mut totals: Vec<Duration> = rows.iter().map(|row| row[0]).collect();
    totals.sort();
    println!("median first request to answer: {}", ms(totals[totals.len() / 2]));
}
