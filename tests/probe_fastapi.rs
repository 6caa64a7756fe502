//! `model-operator probe --runtime fastapi-pytorch` against the project's own inference app
//! (`inference/`), started with uvicorn on loopback: loading, ready with metadata, a model it does
//! not serve, a model that fails to load, and the server gone.

mod support;

use std::{path::Path, time::Duration};

use model_operator::api::conditions::reasons;
use support::{
    CliProbe, ServerProcess, TestServers, free_port, inference_app, probe_cli, probe_cli_until, run_python,
    write_affine_model,
};

struct ModelServer {
    process: ServerProcess,
    endpoint: String,
}

fn start_app(servers: &TestServers, dir: &Path, model_path: &Path) -> ModelServer {
    let port = free_port();
    ModelServer {
        process: inference_app(servers, dir, "affine", model_path, port),
        endpoint: format!("127.0.0.1:{port}"),
    }
}

impl ModelServer {
    async fn probe(&self, model: &str) -> CliProbe {
        probe_cli("fastapi-pytorch", &self.endpoint, model, &[]).await
    }

    async fn probe_until(&self, what: &str, accept: impl Fn(&CliProbe) -> bool) -> CliProbe {
        let target = ["fastapi-pytorch", &self.endpoint, "affine"];
        probe_cli_until(what, Duration::from_secs(60), &self.process, target, &[], accept).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_model_loading_then_ready() {
    let servers = TestServers::installed();
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.pt");
    let mut app = start_app(&servers, dir.path(), &model_path);

    // The server answers while the model is not there yet: alive, not ready.
    let loading = app
        .probe_until("the app up and loading", |p| p.reason() == reasons::MODEL_LOADING)
        .await;
    assert_eq!(loading.exit_code, 1, "{:?}", loading.json);
    assert!(
        loading.json["message"]
            .as_str()
            .unwrap()
            .contains("waiting for MODEL_PATH"),
        "{:?}",
        loading.json
    );

    // The model arrives whole (written beside it, then renamed) and loads.
    let partial = dir.path().join("model.pt.partial");
    write_affine_model(&servers.path("PYTHON"), &partial);
    std::fs::rename(&partial, &model_path).unwrap();
    let ready = app.probe_until("the model loaded", |p| p.exit_code == 0).await;
    assert_eq!(ready.reason(), reasons::MODEL_LOADED, "{:?}", ready.json);
    assert_eq!(
        ready.json["model"],
        serde_json::json!({
            "name": "affine",
            "platform": "pytorch_torchscript",
            "versions": ["v1"],
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, -1]}],
            "outputs": [{"name": "predictions", "datatype": "FP32", "shape": [-1, -1]}],
        }),
        "{:?}",
        ready.json
    );

    // Ready means it answers: the original project's request gets the model's predictions.
    let http = reqwest::Client::new();
    let predicted = http
        .post(format!("http://{}/predict", app.endpoint))
        .header("content-type", "application/json")
        .body(r#"{"features": [[1.0], [2.0]]}"#)
        .send()
        .await
        .unwrap();
    assert!(predicted.status().is_success(), "{}", predicted.status());
    let body: serde_json::Value = serde_json::from_str(&predicted.text().await.unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"predictions": [[3.0], [5.0]]}));

    let other = app.probe("resnet").await;
    other.assert_state(1, reasons::MODEL_NOT_REGISTERED);
    assert!(
        other.json["message"].as_str().unwrap().contains("'affine'"),
        "{:?}",
        other.json
    );

    app.process.stop();
    let down = app.probe("affine").await;
    down.assert_state(1, reasons::SERVER_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_model_that_fails_to_load() {
    let servers = TestServers::installed();
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.pt");
    // A pickled state dict, not TorchScript: a common mistake the probe must name.
    run_python(
        &servers.path("PYTHON"),
        "import sys, torch; torch.save(torch.nn.Linear(1, 1).state_dict(), sys.argv[1])",
        &[model_path.to_str().unwrap()],
    );
    let app = start_app(&servers, dir.path(), &model_path);
    let failed = app
        .probe_until("the load failure reported", |p| {
            p.reason() == reasons::MODEL_LOAD_FAILED
        })
        .await;
    assert_eq!(failed.exit_code, 1, "{:?}", failed.json);
    let message = failed.json["message"].as_str().unwrap();
    assert!(
        message.contains(model_path.to_str().unwrap()) && message.contains("not a TorchScript model"),
        "{message}"
    );
}
