//! `model-operator probe --runtime torchserve` against a real TorchServe 0.12 (Java frontend,
//! Python workers on Debian's CPU PyTorch) on loopback: not registered, registered with workers
//! still loading, READY, the minWorkers rule, and token auth.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use model_operator::api::conditions::reasons;
use support::{
    CliProbe, ServerProcess, Shutdown, TestServers, free_port, probe_cli, probe_cli_until, queue_time_around,
    series_total, wait_for, write_affine_model,
};

/// A handler whose workers take LOAD_SECONDS to load (long enough for several probes to see
/// it), then serve the TorchScript model on a JSON list of rows.
const HANDLER: &str = r#"
import json
import time

import torch
from ts.torch_handler.base_handler import BaseHandler

class SlowLoadingHandler(BaseHandler):
    LOAD_SECONDS = 4

    def initialize(self, context):
        time.sleep(self.LOAD_SECONDS)
        super().initialize(context)

    def preprocess(self, data):
        body = data[0].get("data") or data[0].get("body")
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        return torch.tensor(body, dtype=torch.float32)

    def postprocess(self, output):
        return [output.tolist()]
"#;

struct Torchserve {
    process: ServerProcess,
    management: String,
    inference: String,
    metrics: String,
    dir: PathBuf,
    worker_port: u16,
}

/// Most workers a test starts (two of version 1.0, one of 2.0); each has a socket
/// /tmp/.ts.sock.<worker_port + n>, numbered in the order they start.
const MAX_WORKERS: u16 = 3;

impl Drop for Torchserve {
    /// Workers killed with their frontend leave their Unix sockets in /tmp (TorchServe puts them
    /// there whatever TMPDIR says).
    fn drop(&mut self) {
        self.process.stop();
        for n in 0..MAX_WORKERS {
            let _ = std::fs::remove_file(format!("/tmp/.ts.sock.{}", self.worker_port + n));
        }
    }
}

/// Archives the affine TorchScript model with the slow handler as version `version` of model
/// `tiny`, stored as `store/<file_name>`.
fn archive_model(servers: &TestServers, dir: &Path, store: &Path, version: &str, file_name: &str) {
    let model = dir.join("affine.pt");
    if !model.exists() {
        write_affine_model(&servers.path("PYTHON"), &model);
    }
    let handler = dir.join("slow_handler.py");
    std::fs::write(&handler, HANDLER).unwrap();
    // The archiver always writes <model name>.mar; each archive gets its own export directory.
    let export = dir.join(format!("export-{version}"));
    std::fs::create_dir_all(&export).unwrap();
    let output = Command::new(servers.path("TORCH_MODEL_ARCHIVER"))
        .args(["--model-name", "tiny", "--version", version, "--serialized-file"])
        .arg(&model)
        .arg("--handler")
        .arg(&handler)
        .arg("--export-path")
        .arg(&export)
        // The archiver stages files in $TMPDIR/<model name>, which parallel tests would share.
        .env("TMPDIR", dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "torch-model-archiver failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(export.join("tiny.mar"), store.join(file_name)).unwrap();
}

fn start_torchserve(servers: &TestServers, dir: &Path, token_auth: bool) -> Torchserve {
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    archive_model(servers, dir, &store, "1.0", "tiny.mar");
    let (management_port, inference_port, metrics_port, worker_port) =
        (free_port(), free_port(), free_port(), free_port());
    // Distinct ports for everything TorchServe opens, so that servers of parallel tests never
    // meet (workers talk to the frontend on /tmp/.ts.sock.<initial_worker_port + n>).
    let config = format!(
        "inference_address=http://127.0.0.1:{inference}\n\
         management_address=http://127.0.0.1:{management_port}\n\
         metrics_address=http://127.0.0.1:{metrics}\n\
         grpc_inference_port={grpc_inference}\n\
         grpc_management_port={grpc_management}\n\
         initial_worker_port={worker}\n\
         enable_model_api=true\n\
         disable_token_authorization={disabled}\n\
         default_workers_per_model=1\n\
         disable_system_metrics=true\n\
         metrics_mode=prometheus\n\
         model_store={store}\n",
        inference = inference_port,
        metrics = metrics_port,
        grpc_inference = free_port(),
        grpc_management = free_port(),
        worker = worker_port,
        disabled = !token_auth,
        store = store.display(),
    );
    let config_path = dir.join("config.properties");
    std::fs::write(&config_path, config).unwrap();
    let mut command = Command::new(servers.path("TORCHSERVE"));
    command
        .args(["--start", "--foreground", "--ncs", "--ts-config"])
        .arg(&config_path)
        .arg("--model-store")
        .arg(&store)
        // TorchServe writes logs/ and key_file.json into its working directory.
        .current_dir(dir)
        // TorchServe refuses to start while another instance's pid file sits in the temp dir.
        .env("TMPDIR", dir)
        .env("LOG_LOCATION", dir.join("logs"))
        .env("METRICS_LOCATION", dir.join("logs"));
    let process = ServerProcess::spawn("torchserve", command, dir.join("torchserve.log"), Shutdown::WholeGroup);
    Torchserve {
        process,
        management: format!("127.0.0.1:{management_port}"),
        inference: format!("127.0.0.1:{inference_port}"),
        metrics: format!("127.0.0.1:{metrics_port}"),
        dir: dir.to_owned(),
        worker_port,
    }
}

impl Torchserve {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.management)
    }

    /// Waits for the management API, which opens after the JVM starts (seconds).
    async fn wait_for_management(&self, http: &reqwest::Client, token: Option<&str>) {
        wait_for("TorchServe management API", Duration::from_secs(90), || async {
            let mut request = http.get(self.url("/models"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("{}\n{}", response.status(), self.process.log_tail())),
                Err(err) => Err(format!("{err}\n{}", self.process.log_tail())),
            }
        })
        .await
    }

    async fn probe(&self, extra: &[&str]) -> CliProbe {
        probe_cli("torchserve", &self.management, "tiny", extra).await
    }

    /// Probes until `accept` holds, failing with the last answer and the server's log.
    async fn probe_until(&self, what: &str, accept: impl Fn(&CliProbe) -> bool) -> CliProbe {
        let target = ["torchserve", &self.management, "tiny"];
        probe_cli_until(what, Duration::from_secs(90), &self.process, target, &[], accept).await
    }
}

/// The operator's `inference-queue` reading of TorchServe: six predictions at once on one worker
/// queue behind each other, and the mean the operator serves is TorchServe's own
/// `ts_queue_latency_microseconds` per request over the same interval.
async fn queue_time_is_read_from_the_metrics_endpoint(torchserve: &Torchserve, http: &reqwest::Client) {
    let metrics_text = || async {
        let url = format!("http://{}/metrics", torchserve.metrics);
        http.get(url).send().await.unwrap().text().await.unwrap()
    };
    let mut before = String::new();
    let load = async {
        before = metrics_text().await;
        let predict = format!("http://{}/predictions/tiny", torchserve.inference);
        let requests = (0..6).map(|_| http.post(&predict).body("[[1.0]]").send());
        for response in futures::future::join_all(requests).await {
            assert!(response.unwrap().status().is_success());
        }
    };
    let (values, after) = queue_time_around("torchserve", &torchserve.metrics, load).await;
    let growth = |metric| series_total(&after, metric) - series_total(&before, metric);
    assert_eq!(growth("ts_inference_requests_total"), 6.0, "{before}\n{after}");
    let expected = (growth("ts_queue_latency_microseconds") / 6.0).round();
    assert_eq!(values.len(), 1, "{values:?}");
    assert_eq!(values[0].value, expected, "{before}\n{after}");
    assert!(
        values[0].value > 0.0,
        "six predictions at once on one worker wait: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torchserve_registration_workers_and_readiness() {
    let servers = TestServers::installed();
    let dir = tempfile::tempdir().unwrap();
    let mut torchserve = start_torchserve(&servers, dir.path(), false);
    let http = reqwest::Client::new();
    torchserve.wait_for_management(&http, None).await;

    let unregistered = torchserve.probe(&[]).await;
    unregistered.assert_state(1, reasons::MODEL_NOT_REGISTERED);

    // Registered without waiting: the worker starts and spends LOAD_SECONDS in its handler.
    let register = http
        .post(torchserve.url("/models?url=tiny.mar&initial_workers=1&synchronous=false"))
        .send()
        .await
        .unwrap();
    assert!(
        register.status().is_success(),
        "register: {}",
        register.text().await.unwrap()
    );
    let loading = torchserve
        .probe_until("a worker seen loading", |p| p.reason() == reasons::WORKERS_NOT_READY)
        .await;
    assert_eq!(loading.exit_code, 1, "{:?}", loading.json);
    assert!(
        loading.json["message"]
            .as_str()
            .unwrap()
            .contains("0 of 1 workers READY"),
        "{:?}",
        loading.json
    );

    let ready = torchserve.probe_until("the model READY", |p| p.exit_code == 0).await;
    assert_eq!(ready.reason(), reasons::MODEL_LOADED, "{:?}", ready.json);
    assert_eq!(ready.json["model"]["name"], "tiny");
    assert_eq!(ready.json["model"]["versions"], serde_json::json!(["1.0"]));
    let predicted = http
        .post(format!("http://{}/predictions/tiny", torchserve.inference))
        .body("[[1.0]]")
        .send()
        .await
        .unwrap();
    assert!(
        predicted.status().is_success(),
        "a READY model answers: {}",
        predicted.status()
    );
    let prediction: serde_json::Value = serde_json::from_str(&predicted.text().await.unwrap()).unwrap();
    assert_eq!(prediction, serde_json::json!([[3.0]]), "y = 2x + 1");
    queue_time_is_read_from_the_metrics_endpoint(&torchserve, &http).await;

    // The worker rule: with minWorkers 2, one READY worker is not enough until the second loads.
    let scale = http
        .put(torchserve.url("/models/tiny?min_worker=2&max_worker=2&synchronous=false"))
        .send()
        .await
        .unwrap();
    assert!(scale.status().is_success(), "scale: {}", scale.text().await.unwrap());
    let one_of_two = torchserve
        .probe_until("one of two workers READY", |p| p.reason() == reasons::WORKERS_NOT_READY)
        .await;
    assert!(
        one_of_two.json["message"]
            .as_str()
            .unwrap()
            .contains("1 of 2 workers READY, at least 2 needed (minWorkers 2)"),
        "{:?}",
        one_of_two.json
    );
    let both = torchserve.probe_until("both workers READY", |p| p.exit_code == 0).await;
    assert!(
        both.json["message"].as_str().unwrap().contains("2 of 2 workers READY"),
        "{:?}",
        both.json
    );

    // With two versions registered, the ModelDeployment version picks the one of that name;
    // any other version means TorchServe's default, the first registered.
    archive_model(&servers, dir.path(), &dir.path().join("store"), "2.0", "tiny-2.0.mar");
    let register_v2 = http
        .post(torchserve.url("/models?url=tiny-2.0.mar&initial_workers=1&synchronous=true"))
        .send()
        .await
        .unwrap();
    assert!(
        register_v2.status().is_success(),
        "register 2.0: {}",
        register_v2.text().await.unwrap()
    );
    let message = |probe: &CliProbe| probe.json["message"].as_str().unwrap().to_owned();
    let v2 = torchserve.probe(&["--model-version", "2.0"]).await;
    v2.assert_state(0, reasons::MODEL_LOADED);
    assert!(
        message(&v2).contains("version 2.0: 1 of 1 workers READY"),
        "{:?}",
        v2.json
    );
    assert_eq!(
        v2.json["model"]["versions"],
        serde_json::json!(["1.0", "2.0"]),
        "{:?}",
        v2.json
    );
    for default in [&[][..], &["--model-version", "v1"][..]] {
        let probe = torchserve.probe(default).await;
        probe.assert_state(0, reasons::MODEL_LOADED);
        assert!(
            message(&probe).contains("version 1.0: 2 of 2 workers READY"),
            "{:?}",
            probe.json
        );
    }

    torchserve.process.stop();
    let down = torchserve.probe(&[]).await;
    down.assert_state(1, reasons::SERVER_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torchserve_token_auth_needs_the_management_key() {
    let servers = TestServers::installed();
    let dir = tempfile::tempdir().unwrap();
    let torchserve = start_torchserve(&servers, dir.path(), true);
    let key_file = torchserve.dir.join("key_file.json");
    let http = reqwest::Client::new();
    let key = wait_for("key_file.json", Duration::from_secs(90), || async {
        let text = std::fs::read_to_string(&key_file).map_err(|err| err.to_string())?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|err| err.to_string())?;
        json["management"]["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| text.clone())
    })
    .await;
    torchserve.wait_for_management(&http, Some(&key)).await;

    let without = torchserve.probe(&[]).await;
    without.assert_state(1, reasons::PROBE_UNAUTHORIZED);
    assert!(
        without.json["message"].as_str().unwrap().contains("--token"),
        "{:?}",
        without.json
    );

    let wrong = torchserve.probe(&["--token", "not-the-key"]).await;
    assert_eq!(wrong.reason(), reasons::PROBE_UNAUTHORIZED, "{:?}", wrong.json);

    // With TorchServe's own key file the probe gets through to the model question.
    let with_key = torchserve.probe(&["--token-file", key_file.to_str().unwrap()]).await;
    with_key.assert_state(1, reasons::MODEL_NOT_REGISTERED);
}
