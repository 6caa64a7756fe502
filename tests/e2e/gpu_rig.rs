//! The GPU autoscaling rig, shared by the cluster tier (`autoscaling.rs`) and the chaos tier
//! (`tests/chaos/agents_and_nodes.rs`): kube-apiserver proxies `custom.metrics.k8s.io` to the
//! operator (an APIService whose Service is an ExternalName of 127.0.0.1, since nothing routes
//! cluster IPs here), the operator reads the node agents' samples, and the real HPA controller
//! scales the Deployment. Each fake A100 node gets the real node-agent binary with the fake NVML
//! (utilisation, and failures, set by the test) and a fake kubelet that hands the node's GPUs to
//! the pods the real scheduler bound there.
//!
//! The APIService `v1beta2.custom.metrics.k8s.io` is cluster-wide: every test that starts a rig
//! holds [`API_SERVICE_TURN`] first.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod},
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::support::{Operator, TEST_MANAGER, TestNamespace, cluster, cluster_dir, eventually, kubeconfig_path};

const API_SERVICE: &str = "v1beta2.custom.metrics.k8s.io";
const METRICS_SERVICE: &str = "custom-metrics";
pub const A100_NODES: [&str; 2] = ["gpu-a100-0", "gpu-a100-1"];
const GPUS_PER_NODE: usize = 8;
pub const MODEL: &str = "llm";
pub const GPU_METRIC: &str = "gpu_utilization";
pub const TARGET_PERCENT: u32 = 50;
pub const MAX_REPLICAS: i32 = 2;
pub const SCALE_WAIT: Duration = Duration::from_secs(120);

/// The APIService is cluster-wide: the tests that register it take turns.
pub static API_SERVICE_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One A100 per replica; scales between 1 and 2 on GPU utilisation around 50 %, with no
/// scale-down stabilisation so the test sees the scale-in at once. Two replicas at most keeps
/// the test's share of the cluster's sixteen A100s small beside the other tests.
pub fn model_yaml() -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata:
  name: {MODEL}
spec:
  modelURI: s3://example-models/triton/llm/
  runtime: triton
  gpu:
    count: 1
    products: [NVIDIA-A100-SXM4-80GB]
  autoscale: true
  autoscaling:
    minReplicas: 1
    maxReplicas: {MAX_REPLICAS}
    metric: gpu-utilization
    target: {TARGET_PERCENT}
    scaleDownStabilizationSeconds: 0
"
    )
}

/// A child process with its output in a file; killed when dropped.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(command: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Self { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} exited with {status}:\n{}", self.log());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GPU the fake NVML reports; MIG devices (1g.10gb, the only profile the cluster's nodes
/// have) put it in MIG mode.
#[derive(Debug, Clone)]
pub struct FakeGpu {
    pub uuid: String,
    pub name: &'static str,
    pub mig_devices: Vec<String>,
}

/// A fake GPU node's agent side: its GPUs (eight A100s, or a DRA node's) whose utilisation (or
/// failure) the test sets.
pub struct GpuNode {
    pub name: &'static str,
    gpus: Vec<FakeGpu>,
    dir: PathBuf,
    nvml_lib: PathBuf,
    nvml_config: PathBuf,
    socket: PathBuf,
    /// Where the agent listens; a restarted agent listens here again, as a DaemonSet pod behind
    /// the same endpoint would.
    pub agent_address: String,
    _kubelet: Process,
    /// Whether the agent gets the cluster's kubeconfig, for the ResourceSlices of a DRA node.
    reads_slices: bool,
    /// `None` while the agent is killed.
    agent: Option<Process>,
    agent_starts: u32,
}

fn device_ids(node_index: usize) -> Vec<String> {
    (0..GPUS_PER_NODE)
        .map(|gpu| format!("GPU-{node_index:08x}-a100-4000-8000-{gpu:012x}"))
        .collect()
}

fn a100_gpus(node_index: usize) -> Vec<FakeGpu> {
    device_ids(node_index)
        .into_iter()
        .map(|uuid| FakeGpu {
            uuid,
            name: "NVIDIA A100-SXM4-80GB",
            mig_devices: vec![],
        })
        .collect()
}

/// The fake NVML's state: every GPU at `utilization`, or failing every call with `fail` (an NVML
/// error name, `gpuIsLost` for a GPU fallen off the bus).
fn nvml_json(gpus: &[FakeGpu], utilization: u32, fail: Option<&str>) -> Value {
    let devices: Vec<Value> = gpus
        .iter()
        .map(|gpu| match fail {
            Some(error) => json!({"uuid": gpu.uuid, "fail": error}),
            None => {
                let mig_devices: Vec<Value> = gpu
                    .mig_devices
                    .iter()
                    .map(|uuid| {
                        json!({"uuid": uuid, "name": format!("{} MIG 1g.10gb", gpu.name),
                                       "memoryTotalMiB": 9856, "memoryUsedMiB": 1024})
                    })
                    .collect();
                json!({"uuid": gpu.uuid, "name": gpu.name, "utilizationGpu": utilization,
                       "utilizationMemory": utilization / 2, "memoryTotalMiB": 81920, "memoryUsedMiB": 20480,
                       "migDevices": mig_devices})
            }
        })
        .collect();
    json!({"driverVersion": "550.54.15", "devices": devices})
}

/// Through a temporary file renamed over the target, as the fake NVML expects.
fn write_json(path: &Path, value: &Value) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Where a node's GPUs come from: the device plugin (the fake kubelet hands out its device IDs),
/// or DRA (the scheduler allocates the node's ResourceSlice devices; the agent reads the slices).
enum Allocation {
    DevicePlugin(Vec<String>),
    Dra,
}

impl GpuNode {
    /// One of the A100 nodes, its eight GPUs handed out by the device plugin.
    pub fn start(dir: &Path, node_index: usize, utilization: u32) -> Self {
        let devices = Allocation::DevicePlugin(device_ids(node_index));
        Self::start_node(dir, A100_NODES[node_index], a100_gpus(node_index), devices, utilization)
    }

    /// A node whose GPUs exist only as ResourceSlices (`tests/cluster/dra-devices.yaml`): `gpus`
    /// carry the slices' UUIDs. The agent gets the cluster's kubeconfig to read the slices.
    /// (The cluster tier's `dra_agent.rs` uses it; the chaos tier, which includes this file, not.)
    #[allow(dead_code)]
    pub fn start_dra(dir: &Path, name: &'static str, gpus: Vec<FakeGpu>, utilization: u32) -> Self {
        Self::start_node(dir, name, gpus, Allocation::Dra, utilization)
    }

    fn start_node(
        dir: &Path,
        name: &'static str,
        gpus: Vec<FakeGpu>,
        allocation: Allocation,
        utilization: u32,
    ) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let binaries = crate::servers::node_agent_binaries();
        let nvml_lib = dir.join("libnvidia-ml.so.1");
        std::fs::copy(&binaries.nvml_lib, &nvml_lib).unwrap();
        let nvml_config = dir.join("nvml.json");
        write_json(&nvml_config, &nvml_json(&gpus, utilization, None));

        let socket = dir.join("kubelet.sock");
        let mut kubelet_command = Command::new(&binaries.fake_kubelet);
        kubelet_command
            .arg("--socket")
            .arg(&socket)
            .args(["--follow-node", name, "--follow-interval", "300ms"])
            .env("KUBECONFIG", kubeconfig_path());
        let reads_slices = match allocation {
            Allocation::DevicePlugin(devices) => {
                kubelet_command.arg("--devices").arg(devices.join(","));
                false
            }
            Allocation::Dra => true,
        };
        let mut kubelet = Process::spawn(&mut kubelet_command, dir.join("kubelet.log"));
        let started = Instant::now();
        while !socket.exists() {
            kubelet.assert_running("the fake kubelet");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no kubelet socket:\n{}",
                kubelet.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        let mut node = Self {
            name,
            gpus,
            reads_slices,
            dir,
            nvml_lib,
            nvml_config,
            socket,
            agent_address: String::new(),
            _kubelet: kubelet,
            agent: None,
            agent_starts: 0,
        };
        node.agent_address = node.start_agent("127.0.0.1:0");
        node
    }

    /// Starts the node agent listening on `listen` and returns the address it serves on.
    fn start_agent(&mut self, listen: &str) -> String {
        let binaries = crate::servers::node_agent_binaries();
        self.agent_starts += 1;
        let mut command = Command::new(&binaries.node_agent);
        command
            .env("FAKE_NVML_CONFIG", &self.nvml_config)
            .env("RUST_LOG", "info")
            .arg("--nvml-lib")
            .arg(&self.nvml_lib)
            .arg("--pod-resources-socket")
            .arg(&self.socket)
            .args(["--listen", listen, "--node-name", self.name, "--log-format", "json"])
            .args(["--interval", "500ms", "--pod-resources-interval", "500ms"]);
        if self.reads_slices {
            command
                .env("KUBECONFIG", kubeconfig_path())
                .args(["--resource-slices-interval", "1s"]);
        }
        let mut agent = Process::spawn(&mut command, self.dir.join(format!("agent-{}.log", self.agent_starts)));
        let started = Instant::now();
        let address = loop {
            agent.assert_running("the node agent");
            let address = agent.log().lines().find_map(|line| {
                let line: Value = serde_json::from_str(line).ok()?;
                let message = line["fields"]["message"].as_str()?;
                message
                    .starts_with("serving")
                    .then(|| line["fields"]["address"].as_str().map(str::to_owned))?
            });
            if let Some(address) = address {
                break address;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the agent does not listen:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.agent = Some(agent);
        address
    }

    /// Every GPU of the node at `percent`, readable again if it was failing.
    pub fn set_utilization(&self, percent: u32) {
        write_json(&self.nvml_config, &nvml_json(&self.gpus, percent, None));
    }
}

/// The faults the chaos tier injects (`tests/chaos/agents_and_nodes.rs`); the cluster tier's
/// tests leave them unused.
#[allow(dead_code)]
impl GpuNode {
    /// SIGKILL: the agent's pod lost, with no chance to say goodbye.
    pub fn kill_agent(&mut self) {
        drop(self.agent.take());
    }

    /// A new agent process on the address the operator already knows.
    pub fn restart_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent of {} is still running", self.name);
        let address = self.agent_address.clone();
        let served = self.start_agent(&address);
        assert_eq!(served, address, "the restarted agent of {} moved", self.name);
    }

    /// Every NVML call on the node's GPUs fails with `error` (an NVML error name).
    pub fn fail_gpus(&self, error: &str) {
        write_json(&self.nvml_config, &nvml_json(&self.gpus, 0, Some(error)));
    }
}

/// Registers the APIService for the test's operator and deletes it on drop (also when the test
/// panics): an APIService left pointing at a stopped server makes discovery partial and blocks
/// every namespace deletion in the cluster. A registration found at the start (`make demo`'s) is
/// taken over and not put back, for the same reason: its server may be gone by then.
struct ApiServiceRegistration;

impl ApiServiceRegistration {
    async fn register(client: &Client, namespace: &str, port: u16) -> Self {
        let api: Api<APIService> = Api::all(client.clone());
        if let Some(found) = api.get_opt(API_SERVICE).await.expect("reading the APIService") {
            eprintln!(
                "taking over {API_SERVICE} (was {:?}); run `make demo` again afterwards",
                found.spec.and_then(|s| s.service)
            );
        }
        let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": METRICS_SERVICE, "namespace": namespace},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        }))
        .unwrap();
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), namespace)
            .patch(
                METRICS_SERVICE,
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(&service),
            )
            .await
            .expect("creating the ExternalName Service");
        let api_service = json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": API_SERVICE},
            "spec": {"group": "custom.metrics.k8s.io", "version": "v1beta2",
                     "service": {"name": METRICS_SERVICE, "namespace": namespace, "port": port},
                     "insecureSkipTLSVerify": true, "groupPriorityMinimum": 100, "versionPriority": 200},
        });
        api.patch(
            API_SERVICE,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&api_service),
        )
        .await
        .expect("registering the APIService");
        Self
    }
}

impl Drop for ApiServiceRegistration {
    fn drop(&mut self) {
        // Drop cannot await; kubectl does the same synchronously.
        let _ = Command::new(cluster_dir().join("bin/kubectl"))
            .env("KUBECONFIG", kubeconfig_path())
            .args([
                "delete",
                "apiservice",
                API_SERVICE,
                "--ignore-not-found",
                "--wait=false",
            ])
            .stdout(Stdio::null())
            .status();
    }
}

/// Everything the scaling scenario needs, in one namespace.
pub struct Rig {
    /// The ModelDeployment scaled, and the custom metric it scales on.
    pub model: &'static str,
    pub metric: &'static str,
    pub client: Client,
    pub ns: TestNamespace,
    pub nodes: Vec<GpuNode>,
    pub operator: Operator,
    registration: Option<ApiServiceRegistration>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// A rig for [`model_yaml`]'s model, every GPU at `utilization` %.
    pub async fn start(prefix: &str, utilization: u32) -> Self {
        Self::start_with(prefix, utilization, MODEL, GPU_METRIC, |_| Vec::new()).await
    }

    /// A rig for `model`, scaled on `metric`; `operator_args` gets the namespace and returns more
    /// flags for the operator.
    pub async fn start_with(
        prefix: &str,
        utilization: u32,
        model: &'static str,
        metric: &'static str,
        operator_args: impl FnOnce(&str) -> Vec<String>,
    ) -> Self {
        let a100_nodes = |dir: &Path, utilization| {
            (0..A100_NODES.len())
                .map(|index| GpuNode::start(dir, index, utilization))
                .collect()
        };
        Self::start_on(prefix, utilization, model, metric, a100_nodes, operator_args).await
    }

    /// As [`Rig::start_with`], with the node agents `nodes` starts (in the rig's directory,
    /// every GPU at `utilization` %) instead of the A100 nodes'.
    pub async fn start_on(
        prefix: &str,
        utilization: u32,
        model: &'static str,
        metric: &'static str,
        nodes: impl FnOnce(&Path, u32) -> Vec<GpuNode>,
        operator_args: impl FnOnce(&str) -> Vec<String>,
    ) -> Self {
        let client = cluster().await;
        let ns = TestNamespace::create(&client, prefix).await;
        let more_args = operator_args(&ns.name);
        let dir = tempfile::tempdir().unwrap();
        let nodes = nodes(dir.path(), utilization);
        let endpoints = nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.agent_address))
            .collect::<Vec<_>>()
            .join(",");
        // No CA flag: the operator reads the front proxy's CA from the cluster, as in production.
        let mut args = vec![
            "--agent-endpoints",
            &endpoints,
            "--agent-timeout",
            "1s",
            "--sample-max-age",
            "5s",
        ];
        args.extend(more_args.iter().map(String::as_str));
        let operator = Operator::start_with(&ns.name, "autoscaling", &args);
        let port: u16 = operator
            .custom_metrics_addr
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let registration = ApiServiceRegistration::register(&client, &ns.name, port).await;
        let rig = Self {
            model,
            metric,
            client,
            ns,
            nodes,
            operator,
            registration: Some(registration),
            _dir: dir,
        };
        let api: Api<APIService> = Api::all(rig.client.clone());
        eventually(Duration::from_secs(60), "the APIService is Available", || async {
            let found = api.get(API_SERVICE).await.ok()?;
            let conditions = found.status?.conditions?;
            conditions
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
                .then_some(())
        })
        .await;
        rig
    }

    pub fn set_utilization(&self, percent: u32) {
        for node in &self.nodes {
            node.set_utilization(percent);
        }
    }

    /// `kubectl get --raw PATH` through the API server (and so through the aggregator).
    pub async fn get_raw(&self, path: &str) -> Result<Value, kube::Error> {
        let request = http::Request::get(path).body(Vec::new()).unwrap();
        let text = self.client.request_text(request).await?;
        Ok(serde_json::from_str(&text).expect("the API answers JSON"))
    }

    pub fn pods_metric_path(&self, pod: &str) -> String {
        format!(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{}/pods/{pod}/{}?labelSelector=app.kubernetes.io%2Fname%3D{}",
            self.ns.name, self.metric, self.model
        )
    }

    /// The pod names and values the API serves for the model's pods; none when the request fails.
    pub async fn served_values(&self) -> Vec<(String, String)> {
        self.try_served_values().await.unwrap_or_default()
    }

    /// As [`Self::served_values`], telling a failed request from an answer without values.
    pub async fn try_served_values(&self) -> Result<Vec<(String, String)>, kube::Error> {
        let list = self.get_raw(&self.pods_metric_path("%2A")).await?;
        Ok(list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                (
                    item["describedObject"]["name"].as_str().unwrap().to_owned(),
                    item["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect())
    }

    pub async fn running_pods(&self) -> Vec<Pod> {
        self.ns
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={}", self.model)))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect()
    }

    pub async fn hpa(&self) -> Option<HorizontalPodAutoscaler> {
        self.ns
            .api::<HorizontalPodAutoscaler>()
            .get_opt(self.model)
            .await
            .ok()
            .flatten()
    }

    pub async fn deployment_replicas(&self) -> Option<i32> {
        let deployment = self.ns.api::<Deployment>().get_opt(self.model).await.ok().flatten()?;
        deployment.spec?.replicas
    }

    /// The HPA's current average, as it last read it from the custom metrics API.
    pub async fn hpa_current_average(&self) -> Option<String> {
        let status = self.hpa().await?.status?;
        let metric = status.current_metrics?.into_iter().next()?;
        Some(metric.pods?.current.average_value?.0)
    }

    /// The model deployed with `replicas` pods running and served a value each.
    pub async fn wait_for_served_pods(&self, replicas: usize, value: &str) {
        eventually(
            SCALE_WAIT,
            &format!(
                "{replicas} running pods of {} are served {} {value}",
                self.model, self.metric
            ),
            || async {
                let running = self.running_pods().await.len();
                let served = self.served_values().await;
                (running == replicas && served.len() == replicas && served.iter().all(|(_, v)| v == value))
                    .then_some(())
            },
        )
        .await;
    }

    pub async fn teardown(mut self) {
        // The APIService goes before the namespace (see ApiServiceRegistration).
        drop(self.registration.take());
        self.operator.terminate();
        self.ns.delete().await;
    }
}
