//! Harness for the protocol tests: finds the servers `make test-servers` installed, starts them
//! on free loopback ports in their own process groups (killed on drop), and runs the real
//! `model-operator probe` binary.

// Each test target uses a different part of this module.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

pub mod one_model;
use serde_json::Value;

/// Paths of the installed servers, from `~/.cache/model-operator/test-servers.env`.
pub struct TestServers {
    vars: HashMap<String, String>,
}

impl TestServers {
    /// Fails the test, never skips it, when the servers are not installed.
    pub fn installed() -> Self {
        let cache = std::env::var_os("MODEL_OPERATOR_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/model-operator")
            });
        let env_file = cache.join("test-servers.env");
        let text = std::fs::read_to_string(&env_file).unwrap_or_else(|err| {
            panic!(
                "the test servers are not installed ({}: {err}): run `make test-servers`",
                env_file.display()
            )
        });
        let vars: HashMap<String, String> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Self { vars }
    }

    /// A setting; fails with the fix when it is missing.
    pub fn value(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("test-servers.env has no {key}: run `make test-servers` (it rewrites the file)"))
    }

    /// An installed path; fails with the fix when it is missing.
    pub fn path(&self, key: &str) -> PathBuf {
        let path = PathBuf::from(self.value(key));
        assert!(
            path.exists(),
            "{key}={} does not exist: run `make test-servers` to install it",
            path.display()
        );
        path
    }
}

/// A free loopback port for a server a test starts. The port is released before the server
/// binds it (TorchServe's JVM takes seconds), so it is taken below Linux's ephemeral range
/// (32768 and up), where the kernel's own picks for outgoing connections and `:0` listeners
/// never land, and from a counter, so that two servers of one test run never get the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts at its own place in the range.
    let start = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) % SPAN;
        let port = u16::try_from(FIRST + offset).expect("below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// A server process in its own process group: dropping it kills the group (TorchServe's Java
/// frontend starts Python workers; Triton starts backend stubs), so nothing outlives the test.
pub struct ServerProcess {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    shutdown: Shutdown,
}

/// Who gets the polite SIGTERM before the group's SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// The server stops its own children (Triton and its python stubs, which must not be
    /// killed under it or their shared-memory regions stay in /dev/shm).
    MainProcess,
    /// Every process: the `torchserve` launcher does not pass SIGTERM on to its Java frontend.
    WholeGroup,
}

impl ServerProcess {
    pub fn spawn(name: &'static str, mut command: Command, log: PathBuf, shutdown: Shutdown) -> Self {
        use std::os::unix::process::CommandExt;
        let log_file = std::fs::File::create(&log).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("{name} does not start ({command:?}): {err}"));
        Self {
            name,
            child: Some(child),
            log,
            shutdown,
        }
    }

    /// The end of the server's output, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!(
            "--- last lines of {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    /// Stops the server: SIGTERM, then SIGKILL to the whole group after a grace period.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = Pid::from_raw(child.id() as i32);
        let _ = match self.shutdown {
            Shutdown::MainProcess => nix::sys::signal::kill(group, Signal::SIGTERM),
            Shutdown::WholeGroup => nix::sys::signal::killpg(group, Signal::SIGTERM),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Workers may outlive their parent; the group takes them too.
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The project's inference app (`inference/`, the fastapi-pytorch runtime) serving `model_name`
/// from `model_path` on loopback port `port`, waiting up to two minutes for the file to appear
/// before it loads it; its log is `uvicorn-MODEL_NAME.log` in `log_dir`.
pub fn inference_app(
    servers: &TestServers,
    log_dir: &Path,
    model_name: &str,
    model_path: &Path,
    port: u16,
) -> ServerProcess {
    let mut command = Command::new(servers.path("PYTHON"));
    command
        .args(["-m", "uvicorn", "--factory", "model_server.app:create_app_from_env"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("inference"))
        .env("MODEL_PATH", model_path)
        .env("MODEL_NAME", model_name)
        .env("MODEL_VERSION", "v1")
        .env("MODEL_WAIT_SECONDS", "120");
    ServerProcess::spawn(
        "uvicorn",
        command,
        log_dir.join(format!("uvicorn-{model_name}.log")),
        Shutdown::MainProcess,
    )
}

/// A Triton python-backend model for the protocol tests: FP32 `INPUT0` of 4 elements doubled into
/// `OUTPUT0`, one CPU instance.
pub const TRITON_DOUBLER_CONFIG: &str = r#"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"#;

/// Doubles its input; `LOAD_DELAY` seconds of `initialize` stand in for loading large weights.
pub const TRITON_DOUBLER_PY: &str = r#"
import time
import numpy as np
import triton_python_backend_utils as pb_utils

LOAD_DELAY = {delay}

class TritonPythonModel:
    def initialize(self, args):
        time.sleep(LOAD_DELAY)

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (data * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"#;

/// A Triton model `name` in `repo`: the doubler's configuration, `model_py` as its version 1.
/// A KServe-v2 `ModelInfer` of the doubler model (`TRITON_DOUBLER_PY`) named `adder`: one FP32
/// tensor `INPUT0` of shape [1, 4].
pub fn doubler_infer_request(values: [f32; 4]) -> model_operator::model_readiness::triton::kserve::ModelInferRequest {
    use model_operator::model_readiness::triton::kserve::{ModelInferRequest, model_infer_request::InferInputTensor};
    ModelInferRequest {
        model_name: "adder".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// The little-endian FP32 values of a raw output tensor.
pub fn raw_floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn write_triton_model(repo: &Path, name: &str, model_py: &str) {
    let version_dir = repo.join(name).join("1");
    std::fs::create_dir_all(&version_dir).unwrap();
    std::fs::write(repo.join(name).join("config.pbtxt"), TRITON_DOUBLER_CONFIG).unwrap();
    std::fs::write(version_dir.join("model.py"), model_py).unwrap();
}

/// A real tritonserver (CPU, python backend) on free loopback ports. Dropping it stops the
/// server and removes its python-backend regions from /dev/shm.
pub struct Triton {
    pub process: ServerProcess,
    pub grpc: String,
    pub http: String,
    pub metrics: String,
    /// Names this server's python-backend regions in /dev/shm, so that they can be removed.
    shm_prefix: String,
}

impl Drop for Triton {
    /// A stub that dies while loading (a broken model) can leave its region behind; /dev/shm
    /// is memory, so nothing of a test run may stay there.
    fn drop(&mut self) {
        self.process.stop();
        for entry in std::fs::read_dir("/dev/shm").into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&self.shm_prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Triton {
    /// Serves the repository `repo` with `extra_args` (model control); logs into `log_dir`.
    pub fn start(servers: &TestServers, repo: &Path, log_dir: &Path, extra_args: &[&str]) -> Self {
        let (http_port, grpc_port, metrics_port) = (free_port(), free_port(), free_port());
        let shm_prefix = format!("model-operator-test-{grpc_port}-");
        let mut command = Command::new(servers.path("TRITONSERVER"));
        command
            .arg(format!("--model-repository={}", repo.display()))
            .arg(format!(
                "--backend-directory={}",
                servers.path("TRITON_BACKENDS").display()
            ))
            .args(extra_args)
            .arg(format!("--http-port={http_port}"))
            .arg(format!("--grpc-port={grpc_port}"))
            .arg(format!("--metrics-port={metrics_port}"))
            .arg("--http-address=127.0.0.1")
            .arg("--grpc-address=127.0.0.1")
            // Inference metrics only: the GPU and CPU collectors have nothing to read here.
            .arg("--allow-metrics=true")
            .arg("--allow-gpu-metrics=false")
            .arg("--allow-cpu-metrics=false")
            .arg(format!("--backend-config=python,shm-region-prefix-name={shm_prefix}"))
            // The python backend stub links Debian's libpython3.11 and the wheel's libraries.
            .env("LD_LIBRARY_PATH", servers.value("TRITON_LD_LIBRARY_PATH"));
        let process = ServerProcess::spawn(
            "tritonserver",
            command,
            log_dir.join(format!("tritonserver-{grpc_port}.log")),
            Shutdown::MainProcess,
        );
        Triton {
            process,
            grpc: format!("127.0.0.1:{grpc_port}"),
            http: format!("http://127.0.0.1:{http_port}"),
            metrics: format!("127.0.0.1:{metrics_port}"),
            shm_prefix,
        }
    }

    /// Waits until the server answers `/v2/health/ready` (it loads start-up models first).
    pub async fn wait_until_ready(&self, timeout: Duration) {
        let url = format!("{}/v2/health/ready", self.http);
        wait_for("tritonserver ready", timeout, || async {
            match reqwest::get(&url).await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("{}\n{}", response.status(), self.process.log_tail())),
                Err(error) => Err(format!("{error}\n{}", self.process.log_tail())),
            }
        })
        .await
    }
}

/// What `model-operator probe -o json` said.
#[derive(Debug)]
pub struct CliProbe {
    pub exit_code: i32,
    pub json: Value,
    pub stderr: String,
}

impl CliProbe {
    pub fn reason(&self) -> &str {
        self.json["reason"].as_str().unwrap_or_default()
    }

    /// Asserts the exit status and reason, printing the whole answer when they differ.
    #[track_caller]
    pub fn assert_state(&self, exit_code: i32, reason: &str) {
        assert_eq!((self.exit_code, self.reason()), (exit_code, reason), "{:?}", self.json);
        assert_eq!(
            self.json["ready"],
            exit_code == 0,
            "exit status and `ready` disagree: {:?}",
            self.json
        );
    }
}

/// Runs the real binary: `model-operator probe --runtime R --endpoint E --model M -o json ...`.
pub async fn probe_cli(runtime: &str, endpoint: &str, model: &str, extra: &[&str]) -> CliProbe {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_model-operator"))
        .args([
            "probe",
            "--runtime",
            runtime,
            "--endpoint",
            endpoint,
            "--model",
            model,
            "-o",
            "json",
        ])
        .args(extra)
        .output()
        .await
        .expect("model-operator runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("probe printed no JSON ({err}): stdout {stdout:?}, stderr {stderr:?}"));
    CliProbe {
        exit_code: output.status.code().expect("probe exits normally"),
        json,
        stderr,
    }
}

/// Polls `check` until it yields a value or `timeout` passes; the last observation goes into
/// the panic message, so a failure says what the server was doing.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}; last: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs the test servers' Python, failing with its output.
pub fn run_python(python: &Path, script: &str, args: &[&str]) {
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes a TorchScript model computing y = 2x + 1 on one feature, the fixture both the
/// TorchServe and the FastAPI tests serve.
pub fn write_affine_model(python: &Path, path: &Path) {
    const SCRIPT: &str = r#"
import sys, torch
layer = torch.nn.Linear(1, 1)
with torch.no_grad():
    layer.weight.fill_(2.0)
    layer.bias.fill_(1.0)
torch.jit.save(torch.jit.script(layer), sys.argv[1])
"#;
    run_python(python, SCRIPT, &[path.to_str().unwrap()]);
}

/// Runs `probe_cli` until `accept` holds; a timeout panics with the last answer and the end of
/// the server's log. `target` is `[runtime, endpoint, model]`.
pub async fn probe_cli_until(
    what: &str,
    timeout: Duration,
    server: &ServerProcess,
    target: [&str; 3],
    extra: &[&str],
    accept: impl Fn(&CliProbe) -> bool,
) -> CliProbe {
    let [runtime, endpoint, model] = target;
    wait_for(what, timeout, || async {
        let probe = probe_cli(runtime, endpoint, model, extra).await;
        if accept(&probe) {
            Ok(probe)
        } else {
            Err(format!("{:?}\n{}", probe.json, server.log_tail()))
        }
    })
    .await
}

/// The operator's `inference_queue_duration_us` for one pod of `runtime` whose metrics endpoint
/// is `metrics_address`, read as the custom metrics API reads it: a baseline read, `load`
/// (requests to the real server), then a second read. Also returns the queue totals the second
/// read saw, to compare with.
pub async fn queue_time_around(
    runtime: &str,
    metrics_address: &str,
    load: impl Future<Output = ()>,
) -> (Vec<model_operator::vocabulary::PodValue>, String) {
    use model_operator::custom_metrics::queue_time::{QueueTimeSource, Settings};
    let endpoints = [(("ml".to_owned(), "model".to_owned()), metrics_address.to_owned())];
    let source = QueueTimeSource::new(Settings {
        endpoints: endpoints.into(),
        pod_ips: false,
        timeout: Duration::from_secs(5),
    });
    let pod: model_operator::vocabulary::cached::CachedPod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "model-0", "namespace": "ml", "uid": "uid-0",
                     "labels": {"model": "model", "mlops.sathvik.dev/runtime": runtime}},
    }))
    .unwrap();
    let pods = [std::sync::Arc::new(pod)];
    let baseline = source.values(&pods).await;
    assert!(baseline.is_empty(), "the first read is only a baseline: {baseline:?}");
    load.await;
    let values = source.values(&pods).await;
    let text = reqwest::get(format!("http://{metrics_address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (values, text)
}

/// The sum of every series of `metric` in Prometheus text (labels ignored), read naively, to
/// check the operator's reading against.
pub fn series_total(exposition: &str, metric: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")) || line.starts_with(&format!("{metric} ")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The node agent, the fake NVML library and the fake kubelet, built once per test binary by
/// the cargo that built it, into its own target directory.
pub struct NodeAgentBinaries {
    pub node_agent: PathBuf,
    pub nvml_lib: PathBuf,
    pub fake_kubelet: PathBuf,
}

pub fn node_agent_binaries() -> &'static NodeAgentBinaries {
    static BINARIES: std::sync::OnceLock<NodeAgentBinaries> = std::sync::OnceLock::new();
    BINARIES.get_or_init(|| {
        let operator = Path::new(env!("CARGO_BIN_EXE_model-operator"));
        let profile_dir = operator
            .parent()
            .expect("the operator binary is in a profile directory");
        let target_dir = profile_dir
            .parent()
            .expect("the profile directory is in a target directory");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--quiet",
                "-p",
                "node-agent",
                "-p",
                "fake-nvml",
                "-p",
                "fake-kubelet",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
            cargo.arg("--release");
        }
        let status = cargo
            .status()
            .expect("running cargo to build the node agent and its doubles");
        assert!(
            status.success(),
            "building node-agent, fake-nvml and fake-kubelet failed: {status}"
        );
        let binaries = NodeAgentBinaries {
            node_agent: profile_dir.join("node-agent"),
            nvml_lib: profile_dir.join("libnvidia_ml.so"),
            fake_kubelet: profile_dir.join("fake-kubelet-podresources"),
        };
        for path in [&binaries.node_agent, &binaries.nvml_lib, &binaries.fake_kubelet] {
            assert!(path.exists(), "{} was not built", path.display());
        }
        binaries
    })
}
