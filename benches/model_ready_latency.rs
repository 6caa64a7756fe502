//! How long after a model finishes loading the operator reports it ready: the real FastAPI
//! runtime on loopback loads a model; the time from its readiness endpoint first answering 200
//! to the ModelDeployment's `ModelReady` turning True is measured, several times. Needs the local
//! cluster and the test servers (`make bench-readiness` starts and installs both).

#[path = "../tests/support/mod.rs"]
mod servers;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use model_operator::api::{ModelDeployment, conditions};
use servers::{TestServers, free_port, write_affine_model};
use support::{Operator, TestNamespace, cluster, eventually};

const ROUNDS: usize = 5;

fn model_yaml(name: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: {name}}}\nspec:\n  modelURI: https://models.example/{name}.pt\n  runtime: fastapi-pytorch\n"
    )
}

async fn model_ready(ns: &TestNamespace, name: &str) -> Option<String> {
    let model = ns.api::<ModelDeployment>().get_opt(name).await.ok()??;
    let condition = model
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == conditions::MODEL_READY)?;
    Some(format!("{}/{}", condition.status, condition.reason))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = TestServers::installed();
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "bench-ready").await;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let names: Vec<String> = (0..ROUNDS).map(|i| format!("latency-{i}")).collect();
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let overrides: Vec<String> = names
        .iter()
        .zip(&ports)
        .flat_map(|(name, port)| {
            [
                "--probe-endpoint".to_owned(),
                format!("{}/{name}=127.0.0.1:{port}", ns.name),
            ]
        })
        .collect();
    let args: Vec<&str> = overrides.iter().map(String::as_str).collect();
    let _operator = Operator::start_with(&ns.name, "bench", &args);

    let mut latencies = Vec::new();
    for (name, port) in names.iter().zip(&ports) {
        let model_path = dir.path().join(format!("{name}.pt"));
        let _app = servers::inference_app(&servers, dir.path(), name, &model_path, *port);
        ns.apply_model(&model_yaml(name)).await.expect("the model is accepted");
        eventually(
            Duration::from_secs(120),
            &format!("{name} is reported loading"),
            || async { (model_ready(&ns, name).await.as_deref() == Some("False/ModelLoading")).then_some(()) },
        )
        .await;

        write_affine_model(&servers.path("PYTHON"), &model_path);
        let ready_url = format!("http://127.0.0.1:{port}/v2/health/ready");
        let loaded_at = eventually(Duration::from_secs(60), "the runtime has loaded the model", || async {
            let response = http.get(&ready_url).send().await.ok()?;
            response.status().is_success().then(Instant::now)
        })
        .await;
        let reported_at = eventually(Duration::from_secs(120), "the operator reports it ready", || async {
            (model_ready(&ns, name).await.as_deref() == Some("True/ModelLoaded")).then(Instant::now)
        })
        .await;
        let latency = reported_at.saturating_duration_since(loaded_at);
        println!("{name}: ModelReady True {latency:.2?} after the runtime's readiness turned 200");
        latencies.push(latency);
    }
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "model ready latency over {ROUNDS} loads: min {:.2?}, median {:.2?}, mean {mean:.2?}, max {:.2?} \
         (bounded by the 2 s recheck while a model loads, plus one reconcile and the status write)",
        latencies[0],
        latencies[ROUNDS / 2],
        latencies[ROUNDS - 1]
    );
    ns.delete().await;
}
