//! The harness of the cluster tier: a client for the local control plane that `make cluster-up`
//! starts (real etcd, kube-apiserver, controller manager, scheduler; kwok's fake GPU nodes), a
//! random namespace per test, the operator binary as a child process, and bounded waits.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::Namespace, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use model_operator::api::ModelDeployment;
use serde_json::Value;

/// The field manager tests apply with, distinct from the operator's.
pub const TEST_MANAGER: &str = "e2e-test";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The state directory of the local cluster: `CLUSTER_DIR`, else the test tier's own cluster,
/// `.cluster-test` in the checkout (`make e2e` starts it; the demo's `.cluster` is left alone).
pub fn cluster_dir() -> PathBuf {
    std::env::var_os("CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cluster-test"))
}

/// The kubeconfig `make cluster-up` writes; `CLUSTER_DIR` moves it, as it moves the cluster.
pub fn kubeconfig_path() -> PathBuf {
    cluster_dir().join("kubeconfig")
}

/// A client for the local cluster, with the CRD installed. Fails (never skips) when the cluster
/// is not running, saying how to start it.
pub async fn cluster() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no local cluster: cannot read {} ({e}); start it with `make cluster-up`",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the local kubeconfig is usable");
    let client = Client::try_from(config).expect("a client for the local cluster");
    install_crd(&client).await;
    client
}

async fn install_crd(client: &Client) {
    let text = std::fs::read_to_string(repo_root().join("crds/modeldeployments.mlops.sathvik.dev.yaml"))
        .expect("the committed CRD");
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).expect("the CRD parses");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &crd.name_any(),
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| {
        panic!("cannot reach the local cluster or install the CRD ({e}); is `make cluster-up` running?")
    });
    eventually(Duration::from_secs(30), "the CRD is established", || {
        let api = api.clone();
        let name = crd.name_any();
        async move {
            let crd = api.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        }
    })
    .await;
}

/// A namespace with a random name; deleted (with everything in it) by `delete`.
pub struct TestNamespace {
    pub name: String,
    client: Client,
    deleted: bool,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let namespace: Namespace = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "labels": {"e2e": "model-operator"}}}),
        )
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        Self {
            name,
            client: client.clone(),
            deleted: false,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Applies a ModelDeployment written as YAML into this namespace, as `kubectl apply` would.
    pub async fn apply_model(&self, yaml: &str) -> Result<ModelDeployment, kube::Error> {
        let mut object: Value = serde_yaml_ng::from_str(yaml).expect("fixture is YAML");
        object["metadata"]["namespace"] = Value::String(self.name.clone());
        let name = object["metadata"]["name"]
            .as_str()
            .expect("fixture has a name")
            .to_owned();
        self.api::<ModelDeployment>()
            .patch(&name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&object))
            .await
    }

    pub async fn delete(mut self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
        self.deleted = true;
    }
}

impl Drop for TestNamespace {
    /// A test that panicked still gives its namespace back, so that its pods do not keep the
    /// fake nodes' GPUs from the tests after it. (No async in Drop: kubectl does it.)
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let kubectl = kubeconfig_path().with_file_name("bin").join("kubectl");
        let _ = Command::new(kubectl)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .env("KUBECONFIG", kubeconfig_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    hasher.finish() as u32
}

/// The operator binary, running against the local cluster for one namespace. Killed on drop.
pub struct Operator {
    child: Child,
    pub metrics_addr: String,
    pub health_addr: String,
    /// The custom metrics API (HTTPS); port 0 unless started to serve custom metrics.
    pub custom_metrics_addr: String,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `model-operator run` watching `namespace`, with its leader Lease there too, so
    /// tests running side by side never see each other's operators.
    pub fn start(namespace: &str, identity: &str) -> Self {
        Self::start_with(namespace, identity, &[])
    }

    /// Every port is picked by the kernel and read back from the operator's log.
    pub fn start_with(namespace: &str, identity: &str, extra_args: &[&str]) -> Self {
        Self::start_with_lease(namespace, identity, namespace, extra_args)
    }

    /// As `start_with`, with the leader Lease in `lease_namespace`.
    pub fn start_with_lease(namespace: &str, identity: &str, lease_namespace: &str, extra_args: &[&str]) -> Self {
        Self::start_with_env(namespace, identity, lease_namespace, extra_args, &[])
    }

    /// As `start_with_lease`, with more environment (a later `KUBECONFIG` replaces the
    /// cluster's: the chaos tier reaches the API server through a proxy it can cut).
    pub fn start_with_env(
        namespace: &str,
        identity: &str,
        lease_namespace: &str,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let log = std::env::temp_dir().join(format!("model-operator-e2e-{namespace}-{identity}.log"));
        let log_file = std::fs::File::create(&log).expect("operator log file");
        // Port 0 and the addresses from the log: ports picked here could be taken by another
        // test's operator before this one binds them.
        // `E2E_OPERATOR_BIN` runs another build (the release image's static musl binary, whose
        // allocator is the one production has); `E2E_OPERATOR_WRAPPER` runs it under a profiler
        // (`heaptrack -o FILE`).
        let binary =
            std::env::var("E2E_OPERATOR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_model-operator").to_owned());
        let wrapper = std::env::var("E2E_OPERATOR_WRAPPER").unwrap_or_default();
        let mut command = match wrapper.split_whitespace().collect::<Vec<_>>().split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let mut child = command
            .args(["--log-format", "json"])
            .arg("run")
            .args(["--watch-namespace", namespace])
            .args(["--lease-namespace", lease_namespace])
            .args(["--holder-id", identity])
            // Short, so takeovers are quick; a test may pass its own.
            .args(
                ["--lease-duration", "4s"]
                    .iter()
                    .filter(|_| !extra_args.contains(&"--lease-duration")),
            )
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--health-addr", "127.0.0.1:0"])
            // The test cluster's pod IPs are fake: the operator must never dial them. Tests
            // that probe a model point it at a loopback server with --probe-endpoint.
            .arg("--probe-pod-ips=false")
            .args(["--custom-metrics-addr", "127.0.0.1:0"])
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "info,model_operator=debug")
            .env("POD_NAME", identity)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("the operator binary starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (metrics_addr, health_addr, custom_metrics_addr) = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let listening = text
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| line["fields"]["message"] == "listening");
            if let Some(line) = listening {
                let field = |name: &str| line["fields"][name].as_str().unwrap_or_default().to_owned();
                break (
                    field("metrics_addr"),
                    field("health_addr"),
                    field("custom_metrics_addr"),
                );
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the operator exited ({status}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the operator did not start listening in 30 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            metrics_addr,
            health_addr,
            custom_metrics_addr,
            log,
        }
    }

    /// SIGKILL: the crash of a leader, with no chance to step down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for a graceful exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
        None
    }

    /// The process ID, to read its memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The text of one admin endpoint, or `None` while the operator is not answering.
    pub async fn get(&self, addr: &str, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
        let code = response.status().as_u16();
        Some((code, response.text().await.ok()?))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `probe` until it yields a value or `timeout` passes; then fails naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn example(name: &str) -> String {
    let path: &Path = &repo_root().join("examples").join(name);
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Samples a ModelDeployment's `Ready` condition every 200 ms until stopped, and keeps every
/// sample where it was not True: a watch on the contract that scaling and rollouts never turn
/// it False.
pub struct ReadyWatch {
    lapses: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    pub fn start(api: Api<ModelDeployment>, name: &str) -> Self {
        let lapses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lapses.clone();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(model) = api.get(&name).await {
                    let ready = model
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
                    if ready.as_ref().map(|(status, _, _)| status.as_str()) != Some("True") {
                        seen.lock().unwrap().push(format!("{ready:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { lapses, task }
    }

    /// Every sample where `Ready` was not True.
    pub fn stop(self) -> Vec<String> {
        self.task.abort();
        self.lapses.lock().unwrap().clone()
    }
}

/// The Warning Events in a namespace, as `reason: note`.
pub async fn warnings(ns: &TestNamespace) -> Vec<String> {
    ns.api::<k8s_openapi::api::core::v1::Event>()
        .list(&kube::api::ListParams::default())
        .await
        .map(|events| {
            events
                .items
                .into_iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// A process's resident memory in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    memory_kib(pid, "VmRSS")
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`).
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process is running");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// A client of an operator's custom metrics API that presents the front proxy's certificate, as
/// kube-apiserver does (the requests then name a user in X-Remote-User).
pub fn front_proxy_client(timeout: Duration) -> reqwest::Client {
    let pki = cluster_dir().join("pki");
    let mut pem = std::fs::read(pki.join("front-proxy-client.crt")).unwrap();
    pem.extend(std::fs::read(pki.join("front-proxy-client.key")).unwrap());
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .timeout(timeout)
        .no_proxy()
        .build()
        .unwrap()
}

/// The DRA nodes' devices are few (4 H100s, 7 MIG devices) and the capacity checks count them:
/// the tests that claim them take turns.
static DRA_DEVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn dra_devices() -> tokio::sync::MutexGuard<'static, ()> {
    DRA_DEVICES.lock().await
}

/// `model-operator activator` for one namespace, its ports read back from its log. Killed on drop.
pub struct ActivatorProcess {
    child: Child,
    pub http: SocketAddr,
    log: PathBuf,
}

impl ActivatorProcess {
    pub fn start(namespace: &str, identity: &str, extra_args: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("model-operator-e2e-{namespace}-{identity}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let binary =
            std::env::var("E2E_OPERATOR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_model-operator").to_owned());
        let mut child = Command::new(binary)
            .args(["--log-format", "json", "activator"])
            .args(["--watch-namespace", namespace])
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(["--health-addr", "127.0.0.1:0"])
            // The test cluster's pod IPs are made up: never dialled.
            .arg("--forward-to-pod-ips=false")
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "info,model_operator=debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("the activator starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let listening = text
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| line["fields"]["message"] == "activator listening");
            if let Some(line) = listening {
                break line["fields"]["http"].as_str().unwrap().parse().unwrap();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the activator exited ({status}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the activator did not listen in 30 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, http, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port of its gRPC listener, from the same log line as the HTTP one.
    pub fn grpc_port(&self) -> u16 {
        let text = self.log_text();
        let line = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["fields"]["message"] == "activator listening")
            .expect("the activator logged its addresses");
        let grpc: SocketAddr = line["fields"]["grpc"].as_str().unwrap().parse().unwrap();
        grpc.port()
    }
}

impl Drop for ActivatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
