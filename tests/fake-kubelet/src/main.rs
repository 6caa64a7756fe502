//! A kubelet PodResources v1 server on a unix socket, for tests and demos where there is no
//! kubelet: `List`, `GetAllocatableResources` and `Get` answer from a JSON file that is read
//! again whenever its modification time or size changes (rename a new file over it to change
//! pods live). A missing file means no pods. Each call is logged on stderr.
//!
//! ```json
//! {
//!   "pods": [
//!     {"namespace": "ml", "name": "resnet-0", "containers": [
//!       {"name": "triton", "devices": [{"resourceName": "nvidia.com/gpu", "deviceIds": ["GPU-…"]}]}]},
//!     {"namespace": "ml", "name": "bert-0", "containers": [
//!       {"name": "torchserve", "devices": [{"resourceName": "nvidia.com/gpu.shared", "deviceIds": ["GPU-…::2"]}]}]},
//!     {"namespace": "ml", "name": "llm-0", "containers": [
//!       {"name": "triton", "dynamicResources": [{"claimName": "llm-0-gpu-x7k2p", "claimNamespace": "ml",
//!         "claimResources": [{"driverName": "gpu.nvidia.com", "poolName": "node-1", "deviceName": "gpu-0"}]}]}]}
//!   ],
//!   "allocatable": [{"resourceName": "nvidia.com/gpu", "deviceIds": ["GPU-…"]}]
//! }
//! ```
//!
//! `fake-kubelet-podresources --socket /tmp/kubelet.sock --config pods.json`
//!
//! With `--follow-node NODE --devices GPU-a,GPU-b,...` it plays the device plugin instead of
//! reading a file: it lists the pods the scheduler bound to NODE (through `KUBECONFIG`) every
//! `--follow-interval`, hands each container that requests `--resource` devices from the list
//! (keeping what a container already holds, freeing what finished or deleted pods held), and
//! answers with that. Each change of the assignment is logged. A pod with ResourceClaims gets, in
//! each container that names one in `resources.claims`, the devices the scheduler allocated to
//! that claim (its `status.allocation.devices.results`) as `dynamicResources`, as the kubelet
//! reports DRA devices; `--devices` may then be empty (a node whose GPUs are all DRA's).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Context;
use clap::Parser;
use node_agent::pod_resources::proto::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ClaimResource, ContainerDevices, ContainerResources,
    DynamicResource, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status, transport::Server};

mod follow;

#[derive(Debug, Parser)]
#[command(
    name = "fake-kubelet-podresources",
    about = "A kubelet PodResources v1 server answering from a JSON file"
)]
struct Args {
    /// The unix socket to serve on; an existing file there is replaced.
    #[arg(long, env = "FAKE_KUBELET_SOCKET")]
    socket: PathBuf,
    /// The JSON file of pods and allocatable devices.
    #[arg(long, env = "FAKE_KUBELET_CONFIG", required_unless_present = "follow_node")]
    config: Option<PathBuf>,
    /// Follow the pods bound to this node instead of reading --config.
    #[arg(long, env = "FAKE_KUBELET_FOLLOW_NODE", conflicts_with = "config")]
    follow_node: Option<String>,
    /// With --follow-node: the node's device IDs, handed out to containers in this order.
    #[arg(long, env = "FAKE_KUBELET_DEVICES", value_delimiter = ',')]
    devices: Vec<String>,
    /// With --follow-node: the extended resource whose requests get devices.
    #[arg(long, env = "FAKE_KUBELET_RESOURCE", default_value = "nvidia.com/gpu")]
    resource: String,
    /// With --follow-node: how often to list the node's pods.
    #[arg(long, env = "FAKE_KUBELET_FOLLOW_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    follow_interval: Duration,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    pods: Vec<Pod>,
    #[serde(default)]
    allocatable: Vec<Devices>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Pod {
    namespace: String,
    name: String,
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Container {
    name: String,
    #[serde(default)]
    devices: Vec<Devices>,
    #[serde(default)]
    dynamic_resources: Vec<DynamicResources>,
}

/// One ResourceClaim's devices in a container (PodResources `DynamicResource`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DynamicResources {
    claim_name: String,
    claim_namespace: String,
    claim_resources: Vec<ClaimResources>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimResources {
    driver_name: String,
    pool_name: String,
    device_name: String,
}

impl From<&DynamicResources> for DynamicResource {
    fn from(claim: &DynamicResources) -> Self {
        DynamicResource {
            claim_name: claim.claim_name.clone(),
            claim_namespace: claim.claim_namespace.clone(),
            claim_resources: claim
                .claim_resources
                .iter()
                .map(|device| ClaimResource {
                    cdi_devices: vec![],
                    driver_name: device.driver_name.clone(),
                    pool_name: device.pool_name.clone(),
                    device_name: device.device_name.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Devices {
    resource_name: String,
    device_ids: Vec<String>,
}

impl From<&Devices> for ContainerDevices {
    fn from(devices: &Devices) -> Self {
        ContainerDevices {
            resource_name: devices.resource_name.clone(),
            device_ids: devices.device_ids.clone(),
            topology: None,
        }
    }
}

impl From<&Pod> for PodResources {
    fn from(pod: &Pod) -> Self {
        PodResources {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            containers: pod
                .containers
                .iter()
                .map(|c| ContainerResources {
                    name: c.name.clone(),
                    devices: c.devices.iter().map(ContainerDevices::from).collect(),
                    dynamic_resources: c.dynamic_resources.iter().map(DynamicResource::from).collect(),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

/// The file as last read, keyed by its modification time, size and inode: a rename brings a new
/// inode, and the modification time alone can repeat within the kernel's timestamp granularity.
type Cached = Option<((SystemTime, u64, u64), Arc<Config>)>;

/// Where the answers come from.
enum Lister {
    /// A JSON file, read again when it changes.
    File { path: PathBuf, cached: Mutex<Cached> },
    /// The assignment the follow loop keeps current.
    Followed(Arc<Mutex<Arc<Config>>>),
}

impl Lister {
    fn config(&self) -> Arc<Config> {
        match self {
            Lister::File { path, cached } => file_config(path, cached),
            Lister::Followed(current) => current.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// The configuration as the file now reads; the previous one while it does not parse.
fn file_config(path: &Path, cached: &Mutex<Cached>) -> Arc<Config> {
    let mut cached = cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Ok(metadata) = std::fs::metadata(path) else {
        return Arc::new(Config::default());
    };
    let stamp = (
        metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        metadata.len(),
        metadata.ino(),
    );
    match &*cached {
        Some((seen, config)) if *seen == stamp => return config.clone(),
        _ => {}
    }
    match read_config(path) {
        Ok(config) => {
            let config = Arc::new(config);
            *cached = Some((stamp, config.clone()));
            config
        }
        Err(error) => {
            eprintln!("fake-kubelet: keeping the previous answer: {error:#}");
            cached.as_ref().map(|(_, c)| c.clone()).unwrap_or_default()
        }
    }
}

fn read_config(path: &Path) -> anyhow::Result<Config> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

#[tonic::async_trait]
impl PodResourcesLister for Lister {
    async fn list(&self, _: Request<ListPodResourcesRequest>) -> Result<Response<ListPodResourcesResponse>, Status> {
        let config = self.config();
        eprintln!("fake-kubelet: List: {} pods", config.pods.len());
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: config.pods.iter().map(PodResources::from).collect(),
        }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        let config = self.config();
        eprintln!(
            "fake-kubelet: GetAllocatableResources: {} resources",
            config.allocatable.len()
        );
        Ok(Response::new(AllocatableResourcesResponse {
            devices: config.allocatable.iter().map(ContainerDevices::from).collect(),
            ..Default::default()
        }))
    }

    async fn get(&self, request: Request<GetPodResourcesRequest>) -> Result<Response<GetPodResourcesResponse>, Status> {
        let GetPodResourcesRequest {
            pod_name,
            pod_namespace,
        } = request.into_inner();
        eprintln!("fake-kubelet: Get {pod_namespace}/{pod_name}");
        let config = self.config();
        let pod = config
            .pods
            .iter()
            .find(|p| p.name == pod_name && p.namespace == pod_namespace)
            .ok_or_else(|| Status::not_found(format!("pod {pod_namespace}/{pod_name} not found")))?;
        Ok(Response::new(GetPodResourcesResponse {
            pod_resources: Some(pod.into()),
        }))
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let Args {
        socket,
        config,
        follow_node,
        devices,
        resource,
        follow_interval,
    } = args;
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing the old {}", socket.display())),
    }
    let listener = UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    let lister = match (config, follow_node) {
        (Some(path), _) => {
            eprintln!(
                "fake-kubelet: serving PodResources v1 on {} from {}",
                socket.display(),
                path.display()
            );
            Lister::File {
                path,
                cached: Mutex::new(None),
            }
        }
        (None, Some(node)) => {
            let client = kube::Client::try_default()
                .await
                .context("--follow-node needs a cluster (KUBECONFIG or in-cluster)")?;
            eprintln!(
                "fake-kubelet: serving PodResources v1 on {} for the pods of node {node}, devices {}",
                socket.display(),
                devices.join(",")
            );
            let current = Arc::new(Mutex::new(Arc::new(Config::default())));
            tokio::spawn(follow::run(
                follow::Follow {
                    client,
                    node,
                    devices,
                    resource,
                    interval: follow_interval,
                },
                current.clone(),
            ));
            Lister::Followed(current)
        }
        (None, None) => anyhow::bail!("give --config FILE or --follow-node NODE"),
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    Server::builder()
        .add_service(PodResourcesListerServer::new(lister))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            tokio::select! {
                _ = shutdown => {}
                _ = terminate => {}
            }
        })
        .await
        .context("serving gRPC")?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fake-kubelet: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fake-kubelet: {error:#}");
            ExitCode::FAILURE
        }
    }
}
