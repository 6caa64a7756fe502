//! `model-operator probe --runtime triton` against a real tritonserver (2.51, CPU, python
//! backend) on loopback, in every state the operator must tell apart: loading, ready with its
//! metadata, failed to load, unloaded through the repository API, unknown, and server down.

mod support;

use std::{path::Path, time::Duration};

use model_operator::{
    api::{Runtime, conditions::reasons},
    model_readiness::{ProbeSettings, ProbeTarget, Prober},
};
use support::{
    TRITON_DOUBLER_PY, TestServers, Triton, probe_cli, probe_cli_until, queue_time_around, series_total,
    write_triton_model,
};

/// Long enough to be seen loading by several probes, short enough for a quick test.
const SLOW_LOAD_SECONDS: u32 = 6;

const BROKEN_PY: &str = r#"
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights.bin is corrupt")

    def execute(self, requests):
        return []
"#;

fn start_triton(servers: &TestServers, dir: &Path) -> Triton {
    let repo = dir.join("models");
    write_triton_model(&repo, "adder", &TRITON_DOUBLER_PY.replace("{delay}", "0"));
    write_triton_model(
        &repo,
        "slow",
        &TRITON_DOUBLER_PY.replace("{delay}", &SLOW_LOAD_SECONDS.to_string()),
    );
    write_triton_model(&repo, "broken", BROKEN_PY);
    // Explicit mode: only `adder` loads at start; the test loads and unloads the others
    // through the repository API, as an operator-driven rollout would.
    Triton::start(
        servers,
        &repo,
        dir,
        &["--model-control-mode=explicit", "--load-model=adder"],
    )
}

/// The operator's `inference-queue` reading of Triton: eight requests at once to a model with one
/// instance queue behind each other, and the mean the operator serves is Triton's own
/// `nv_inference_queue_duration_us` per successful request.
async fn queue_time_is_read_from_the_metrics_endpoint(triton: &Triton) {
    let http = reqwest::Client::new();
    let infer = format!("{}/v2/models/adder/infer", triton.http);
    let body =
        serde_json::json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]});
    let load = async {
        let requests = (0..8).map(|_| {
            http.post(&infer)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
        });
        for response in futures::future::join_all(requests).await {
            let response = response.unwrap();
            assert!(response.status().is_success(), "infer: {}", response.status());
        }
    };
    let (values, text) = queue_time_around("triton", &triton.metrics, load).await;
    let requests = series_total(&text, "nv_inference_request_success");
    assert_eq!(requests, 8.0, "nothing else ran inferences before: {text}");
    let expected = (series_total(&text, "nv_inference_queue_duration_us") / requests).round();
    assert_eq!(values.len(), 1, "{values:?}");
    assert_eq!(values[0].value, expected, "{text}");
    assert!(
        values[0].value > 0.0,
        "eight requests at once on one instance wait: {text}"
    );
}

/// Triton's HTTP repository API; `load` answers only once loading has finished.
async fn repository(http: &reqwest::Client, triton: &Triton, model: &str, action: &str) -> reqwest::Response {
    http.post(format!("{}/v2/repository/models/{model}/{action}", triton.http))
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST {action} {model}: {err}\n{}", triton.process.log_tail()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_model_states() {
    let servers = TestServers::installed();
    let dir = tempfile::tempdir().unwrap();
    let mut triton = start_triton(&servers, dir.path());
    let grpc = triton.grpc.clone();

    // Ready with its metadata once the server is up (Triton loads start-up models before it
    // opens its ports, so until then the probe sees nothing listening).
    let adder_target = ["triton", &grpc, "adder"];
    let adder = probe_cli_until(
        "adder ready",
        Duration::from_secs(60),
        &triton.process,
        adder_target,
        &[],
        |p| p.exit_code == 0,
    )
    .await;
    assert_eq!(adder.reason(), reasons::MODEL_LOADED, "{:?}", adder.json);
    let model = &adder.json["model"];
    assert_eq!(model["name"], "adder", "{:?}", adder.json);
    assert_eq!(model["versions"], serde_json::json!(["1"]), "{:?}", adder.json);
    assert_eq!(
        model["inputs"],
        serde_json::json!([{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}]),
        "{:?}",
        adder.json
    );
    assert_eq!(
        model["outputs"],
        serde_json::json!([{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 4]}]),
        "{:?}",
        adder.json
    );
    assert_eq!(model["platform"], "python", "{:?}", adder.json);

    // A numeric ModelDeployment version is Triton's version; one that does not exist is not ready.
    let version_1 = probe_cli("triton", &grpc, "adder", &["--model-version", "1"]).await;
    assert_eq!(version_1.exit_code, 0, "{:?}", version_1.json);
    let version_7 = probe_cli("triton", &grpc, "adder", &["--model-version", "7"]).await;
    assert_eq!(version_7.exit_code, 1, "{:?}", version_7.json);
    assert_eq!(version_7.reason(), reasons::MODEL_NOT_READY, "{:?}", version_7.json);
    // "v1" is not a Triton version number: the version policy's version answers.
    let v1 = probe_cli("triton", &grpc, "adder", &["--model-version", "v1"]).await;
    assert_eq!(v1.exit_code, 0, "{:?}", v1.json);

    queue_time_is_read_from_the_metrics_endpoint(&triton).await;

    let unknown = probe_cli("triton", &grpc, "resnet", &[]).await;
    unknown.assert_state(1, reasons::MODEL_NOT_REGISTERED);

    // Not ready while a slow model loads, then ready.
    let http = reqwest::Client::new();
    let load = {
        let http = http.clone();
        let url = format!("{}/v2/repository/models/slow/load", triton.http);
        tokio::spawn(async move { http.post(url).send().await.map(|r| r.status()) })
    };
    let slow_target = ["triton", &grpc, "slow"];
    let within_load = Duration::from_secs(SLOW_LOAD_SECONDS as u64);
    let loading = probe_cli_until(
        "slow seen loading",
        within_load,
        &triton.process,
        slow_target,
        &[],
        |p| p.reason() == reasons::MODEL_LOADING,
    )
    .await;
    assert_eq!(loading.exit_code, 1, "{:?}", loading.json);
    assert!(loading.json["model"].is_null(), "{:?}", loading.json);
    let load_status = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        load_status.is_success(),
        "loading slow: {load_status}\n{}",
        triton.process.log_tail()
    );
    let slow = probe_cli("triton", &grpc, "slow", &[]).await;
    slow.assert_state(0, reasons::MODEL_LOADED);
    assert_eq!(slow.json["model"]["name"], "slow");

    // The library's Prober agrees with the command, for several models at once.
    let prober = Prober::new(ProbeSettings::default()).unwrap();
    let target = |model: &str| ProbeTarget {
        runtime: Runtime::Triton,
        endpoint: grpc.clone(),
        model_name: model.to_owned(),
        version: None,
    };
    let outcomes = prober
        .probe_all(&[target("adder"), target("slow"), target("broken")])
        .await;
    let summary: Vec<(bool, &str)> = outcomes.iter().map(|o| (o.ready, o.reason)).collect();
    assert_eq!(
        summary,
        [
            (true, reasons::MODEL_LOADED),
            (true, reasons::MODEL_LOADED),
            (false, reasons::MODEL_UNLOADED)
        ],
        "{outcomes:#?}"
    );

    // Unloaded through the repository API: not ready, although Triton's server-wide readiness
    // stays true.
    let unload = repository(&http, &triton, "slow", "unload").await;
    assert!(unload.status().is_success(), "unload: {}", unload.status());
    // UNLOADING comes first, with the same reason; wait for the end of it.
    let unloaded = probe_cli_until(
        "slow unloaded",
        Duration::from_secs(30),
        &triton.process,
        slow_target,
        &[],
        |p| p.reason() == reasons::MODEL_UNLOADED && p.json["message"].as_str().unwrap().contains("has unloaded"),
    )
    .await;
    assert_eq!(unloaded.exit_code, 1, "{:?}", unloaded.json);
    let server_ready = http
        .get(format!("{}/v2/health/ready", triton.http))
        .send()
        .await
        .unwrap();
    let server_status = server_ready.status();
    let index = http
        .post(format!("{}/v2/repository/index", triton.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        server_status.is_success(),
        "Triton's own readiness after an unload: {server_status}; index {index}"
    );
    let still = probe_cli("triton", &grpc, "adder", &[]).await;
    assert_eq!(still.exit_code, 0, "{:?}", still.json);

    // A model whose load fails says why.
    let failed_load = repository(&http, &triton, "broken", "load").await;
    assert!(
        !failed_load.status().is_success(),
        "broken loaded?\n{}",
        triton.process.log_tail()
    );
    let broken = probe_cli("triton", &grpc, "broken", &[]).await;
    broken.assert_state(1, reasons::MODEL_LOAD_FAILED);
    assert!(
        broken.json["message"]
            .as_str()
            .unwrap()
            .contains("weights.bin is corrupt"),
        "{:?}",
        broken.json
    );

    // Server down: nothing listens.
    triton.process.stop();
    let down = probe_cli("triton", &grpc, "adder", &[]).await;
    down.assert_state(1, reasons::SERVER_UNAVAILABLE);
}
