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
//!       {"name": "torchserve", "devices": [{"resourceName": "nvidia.com/gpu.shared", "deviceIds": ["GPU-…::2"]}]}]}
//!   ],
//!   "allocatable": [{"resourceName": "nvidia.com/gpu", "deviceIds": ["GPU-…"]}]
//! }
//! ```
//!
//! `fake-kubelet-podresources --socket /tmp/kubelet.sock --config pods.json`

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::Context;
use clap::Parser;
use node_agent::pod_resources::proto::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices, ContainerResources,
    GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest, ListPodResourcesResponse, PodResources,
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status, transport::Server};

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
    #[arg(long, env = "FAKE_KUBELET_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    pods: Vec<Pod>,
    #[serde(default)]
    allocatable: Vec<Devices>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Pod {
    namespace: String,
    name: String,
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Container {
    name: String,
    #[serde(default)]
    devices: Vec<Devices>,
}

#[derive(Debug, Clone, Deserialize)]
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
                    ..Default::default()
                })
                .collect(),
        }
    }
}

/// The file as last read, keyed by its modification time, size and inode: a rename brings a new
/// inode, and the modification time alone can repeat within the kernel's timestamp granularity.
type Cached = Option<((SystemTime, u64, u64), Arc<Config>)>;

struct Lister {
    config: PathBuf,
    cached: Mutex<Cached>,
}

impl Lister {
    /// The configuration as the file now reads; the previous one while it does not parse.
    fn config(&self) -> Arc<Config> {
        let mut cached = self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Ok(metadata) = std::fs::metadata(&self.config) else {
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
        match read_config(&self.config) {
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

async fn serve(Args { socket, config }: Args) -> anyhow::Result<()> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing the old {}", socket.display())),
    }
    let listener = UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    eprintln!(
        "fake-kubelet: serving PodResources v1 on {} from {}",
        socket.display(),
        config.display()
    );
    let lister = Lister {
        config,
        cached: Mutex::new(None),
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
