//! The faults the chaos tier injects, and what it reads afterwards: the cluster's own processes
//! killed and started again as they were, a TCP proxy between an operator and the API server
//! that can cut every connection, the API server's audit log (who wrote what, and when), and a
//! seeded random source so a failing run can be repeated.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::{
    ResourceExt,
    api::{DeleteParams, PostParams},
};
use serde_json::Value;
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};

use crate::support::{cluster_dir, eventually, kubeconfig_path};

/// A number from the environment (`CHAOS_MODELS` and friends), else `default`.
pub fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a whole number")),
        Err(_) => default,
    }
}

/// xorshift64*: enough randomness for when to kill, repeatable from the printed seed
/// (`CHAOS_SEED`).
pub struct Random(u64);

impl Random {
    pub fn from_env() -> Self {
        let seed = setting(
            "CHAOS_SEED",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        );
        println!("chaos: CHAOS_SEED={seed}");
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration between `low` and `high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_millis() as u64;
        low + Duration::from_millis(self.next() % span.max(1))
    }
}

/// One of the local cluster's processes (`etcd`, `kube-apiserver`, …), as `make cluster-up`
/// started it: its PID file under the cluster directory, its command line from /proc.
pub struct ClusterProcess {
    name: &'static str,
}

impl ClusterProcess {
    pub fn new(name: &'static str) -> Self {
        Self { name }
    }

    fn pid_file(&self) -> PathBuf {
        cluster_dir().join("pids").join(format!("{}.pid", self.name))
    }

    fn pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.pid_file())
            .unwrap_or_else(|e| panic!("{}: {e} (is the cluster running?)", self.pid_file().display()));
        text.trim().parse().expect("a PID")
    }

    /// SIGKILLs the process and starts it again with the same command line, working directory
    /// and log file, detached (in its own session, so it outlives the test and `make
    /// cluster-down` stops it as usual). Returns how long it was gone.
    pub fn kill_and_restart(&self, down_for: Duration) {
        let pid = self.pid();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the process is running");
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("its working directory");
        signal(pid, "KILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(Instant::now() < deadline, "{} ({pid}) outlived SIGKILL", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(down_for);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(cluster_dir().join("logs").join(format!("{}.log", self.name)))
            .expect("its log file");
        // setsid: its own session, as tests/cluster/lib.sh's start_detached does.
        let child = Command::new("setsid")
            .args(&argv)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("restarting {}: {e}", self.name));
        // setsid execs in place when the caller leads no process group, so the PID is the
        // process's own.
        std::fs::write(self.pid_file(), format!("{}\n", child.id())).expect("the PID file");
        // Not waited for here: reaped when the test process exits.
        std::mem::forget(child);
    }
}

pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Alive and not a zombie (an exited child not yet reaped counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next()))
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Waits until the API server answers `/readyz` again, and says how long that took.
pub async fn api_server_ready(client: &kube::Client, within: Duration) -> Duration {
    let started = Instant::now();
    eventually(within, "kube-apiserver is ready again", || async {
        let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
        client
            .request_text(request)
            .await
            .ok()
            .filter(|body| body == "ok")
            .map(|_| ())
    })
    .await;
    started.elapsed()
}

/// The API server's address from the cluster's kubeconfig.
pub fn api_server_addr() -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig_path()).expect("the kubeconfig");
    let server = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("server:"))
        .expect("a server in the kubeconfig")
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    server.parse().unwrap_or_else(|e| panic!("{server}: {e}"))
}

/// A TCP proxy in front of the API server for one operator. Its connections to the API server
/// come from `source` (another loopback address), so the audit log tells that operator's
/// requests apart. `cut` drops every open connection and refuses new ones until `heal`: a
/// network partition between that operator and the control plane.
pub struct ApiProxy {
    pub kubeconfig: PathBuf,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<AtomicU64>,
}

impl ApiProxy {
    pub async fn start(source: std::net::IpAddr, tag: &str) -> Self {
        let upstream = api_server_addr();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut downstream, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    drop(downstream);
                    continue;
                }
                counted.fetch_add(1, Ordering::Relaxed);
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let socket = TcpSocket::new_v4().unwrap();
                    socket.bind(SocketAddr::new(source, 0)).unwrap();
                    let Ok(mut upstream): Result<TcpStream, _> = socket.connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut downstream, &mut upstream) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        // The same cluster, through the proxy: the API server's certificate names 127.0.0.1.
        let kubeconfig = std::env::temp_dir().join(format!("chaos-kubeconfig-{tag}-{}", addr.port()));
        let text = std::fs::read_to_string(kubeconfig_path())
            .unwrap()
            .replace(&format!("https://{upstream}"), &format!("https://{addr}"));
        std::fs::write(&kubeconfig, text).unwrap();
        Self {
            kubeconfig,
            cut,
            task,
            connections,
        }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// One write the API server's audit log recorded (tests/cluster/audit-policy.yaml: writes at
/// Metadata level, no Leases or Events).
#[derive(Debug, Clone)]
// What a failure message shows of it; the checks read the source and the time.
#[allow(dead_code)]
pub struct AuditedWrite {
    pub source: String,
    pub verb: String,
    pub resource: String,
    pub name: String,
    pub code: i64,
    /// When the API server received it, as RFC 3339 text (sortable within one log).
    pub received: String,
}

/// The writes in `namespace` the audit log holds so far.
pub fn audited_writes(namespace: &str) -> Vec<AuditedWrite> {
    let path = cluster_dir().join("logs").join("audit.log");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the cluster runs without its audit log; restart it (make cluster-down, then the test again)",
            path.display()
        )
    });
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["objectRef"]["namespace"] == namespace)
        .filter(|event| event["stage"] == "ResponseComplete")
        .map(|event| AuditedWrite {
            source: event["sourceIPs"][0].as_str().unwrap_or_default().to_owned(),
            verb: event["verb"].as_str().unwrap_or_default().to_owned(),
            resource: format!(
                "{}{}",
                event["objectRef"]["resource"].as_str().unwrap_or_default(),
                event["objectRef"]["subresource"]
                    .as_str()
                    .map(|sub| format!("/{sub}"))
                    .unwrap_or_default()
            ),
            name: event["objectRef"]["name"].as_str().unwrap_or_default().to_owned(),
            code: event["responseStatus"]["code"].as_i64().unwrap_or_default(),
            received: event["requestReceivedTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
        .collect()
}

/// When a sample was taken (since the sampler started), and per operator whether it led.
pub type LeaderSample = (Duration, Vec<bool>);

/// Samples the `model_operator_leader` gauge of several operators every 250 ms until stopped;
/// an operator that does not answer (frozen, or gone) counts as not leading.
pub struct LeaderSampler {
    samples: Arc<std::sync::Mutex<Vec<LeaderSample>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderSampler {
    pub fn start(metrics_addrs: Vec<String>) -> Self {
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (samples.clone(), stop.clone());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .no_proxy()
            .build()
            .unwrap();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                let mut leading = Vec::new();
                for addr in &metrics_addrs {
                    let text = match client.get(format!("http://{addr}/metrics")).send().await {
                        Ok(response) => response.text().await.unwrap_or_default(),
                        Err(_) => String::new(),
                    };
                    leading.push(text.lines().any(|line| line == "model_operator_leader 1"));
                }
                kept.lock().unwrap().push((started.elapsed(), leading));
            }
        });
        Self { samples, stop, task }
    }

    /// Stops; the samples: time since the start, and per operator whether it said it leads.
    pub async fn stop(self) -> Vec<LeaderSample> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.samples.clone();
        let _ = self.task.await;
        samples.lock().unwrap().clone()
    }
}

/// Fake nodes a test adds to the shared cluster (kwok manages every node with its annotation):
/// created at the start and deleted when dropped, also when the test panics (kubectl, since
/// Drop cannot await), so that no node is left over for the next test.
pub struct FakeNodes {
    api: kube::Api<Node>,
    nodes: Vec<Node>,
}

impl FakeNodes {
    pub async fn create(client: &kube::Client, nodes: Vec<Node>) -> Self {
        let nodes = Self {
            api: kube::Api::all(client.clone()),
            nodes,
        };
        for name in nodes.names() {
            nodes.recreate(&name).await;
        }
        for name in nodes.names() {
            nodes.wait_ready(&name).await;
        }
        nodes
    }

    /// Creates `name` again from the same object, as a node that rejoins registers itself
    /// again; one left over from an earlier run is replaced.
    pub async fn recreate(&self, name: &str) {
        let node = self.nodes.iter().find(|n| n.name_any() == name).unwrap();
        let _ = self.api.delete(name, &DeleteParams::default()).await;
        eventually(Duration::from_secs(30), &format!("node {name} is created"), || async {
            self.api.create(&PostParams::default(), node).await.ok().map(drop)
        })
        .await;
    }

    pub async fn wait_ready(&self, name: &str) {
        eventually(Duration::from_secs(30), &format!("kwok makes {name} Ready"), || async {
            let node = self.api.get(name).await.ok()?;
            node.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await;
    }

    pub async fn delete(&self, name: &str) {
        self.api
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting node {name}: {e}"));
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(ResourceExt::name_any).collect()
    }
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        let _ = Command::new(cluster_dir().join("bin/kubectl"))
            .env("KUBECONFIG", kubeconfig_path())
            .args(["delete", "node", "--ignore-not-found", "--wait=false"])
            .args(self.names())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An extra fake CPU node, shaped as tests/cluster/nodes.yaml's cpu-0 but larger, for a rollout
/// beyond cpu-0's 110 pods.
pub fn cpu_node(index: usize) -> Node {
    kwok_cpu_node(&KwokCpuNode {
        name: format!("chaos-cpu-{index}"),
        pod_cidr: format!("10.244.{}.0/24", 220 + index),
        address: format!("10.1.0.{}", 220 + index),
        instance_type: "m6i.16xlarge",
        resources: serde_json::json!({"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "200Gi"}),
    })
}

/// What tells one fake kwok CPU node from another.
pub struct KwokCpuNode {
    pub name: String,
    pub pod_cidr: String,
    pub address: String,
    pub instance_type: &'static str,
    /// Its capacity, and as much allocatable.
    pub resources: serde_json::Value,
}

/// A kwok-managed CPU node as tests/cluster/nodes.yaml writes them (kwok makes it Ready).
pub fn kwok_cpu_node(node: &KwokCpuNode) -> Node {
    let KwokCpuNode {
        name,
        pod_cidr,
        address,
        instance_type,
        resources,
    } = node;
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                       "kubernetes.io/hostname": name, "node.kubernetes.io/instance-type": instance_type},
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
            "capacity": resources, "allocatable": resources,
        },
    }))
    .expect("a fake node's fields form a Node")
}

/// Waits (bounded) until no pod of `namespace` is left, so the nodes they ran on can go.
pub async fn pods_gone(client: &kube::Client, namespace: &str) {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), namespace);
    eventually(Duration::from_secs(120), "the namespace's pods are gone", || async {
        pods.list_metadata(&Default::default())
            .await
            .ok()
            .filter(|list| list.items.is_empty())
            .map(drop)
    })
    .await;
}
