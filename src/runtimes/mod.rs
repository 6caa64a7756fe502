//! One module per inference runtime: its pinned image, command line, ports, the kubelet's
//! probes, where it expects the model, and where it reports queue time. How the operator asks a
//! runtime whether the model answers is `crate::model_readiness` (one client per runtime there).
//! Adding a runtime is adding a file here, one there, and a `Runtime` variant.

mod fastapi;
mod torchserve;
mod triton;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{EnvVar, GRPCAction, HTTPGetAction, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};

pub use self::{
    fastapi::FastapiPytorch,
    torchserve::{CONFIG_FILE as TORCHSERVE_CONFIG_FILE, Torchserve},
    triton::Triton,
};
use crate::vocabulary::{ArtifactShape, ModelLayout, OperatorImages, QueueTimeSeries, Runtime, Validated};

/// Where fetched models live inside every model pod.
pub const MODEL_ROOT: &str = "/models";
/// Where a runtime's generated configuration files are mounted.
pub const CONFIG_DIR: &str = "/etc/model-runtime";

/// A named container port of the runtime; the Service exposes the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPort {
    pub name: &'static str,
    pub port: i32,
}

/// The kubelet's probes for the runtime container.
#[derive(Debug, Clone, PartialEq)]
pub struct Probes {
    pub readiness: Probe,
    pub liveness: Probe,
    pub startup: Probe,
}

pub trait RuntimeProfile: Sync {
    fn runtime(&self) -> Runtime;
    /// The image used when `runtimeImage` is not given; always a pinned tag.
    fn default_image(&self, images: &OperatorImages, uses_gpu: bool) -> String;
    fn ports(&self) -> &'static [ServerPort];
    /// The ports the model's Service exposes to the cluster: what clients and scrapers use.
    /// Ports only the operator needs (a management API) stay on the pod.
    fn service_ports(&self) -> &'static [ServerPort] {
        self.ports()
    }
    /// The port clients send inference requests to (`status.endpoint`).
    fn inference_port(&self) -> ServerPort;
    /// The port the operator's model probe (`crate::model_readiness`) speaks to.
    fn probe_port(&self) -> ServerPort;
    /// Where the artifact goes, given its shape once fetched.
    fn layout(&self, model_name: &str, shape: &ArtifactShape) -> ModelLayout {
        default_layout(model_name, shape)
    }
    /// `command` and `args` of the runtime container (`runtimeArgs` are appended by the builder).
    /// An empty command keeps the image's entrypoint.
    fn command(&self, model: &Validated) -> (Vec<String>, Vec<String>);
    fn probes(&self) -> Probes;
    /// Runtime-specific environment, before the user's `env`.
    fn env(&self, _model: &Validated) -> Vec<EnvVar> {
        Vec::new()
    }
    /// Generated configuration files, mounted read-only under [`CONFIG_DIR`].
    fn config_files(&self, _model: &Validated) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// Whether the runtime needs a larger `/dev/shm` than a container's default 64 MiB.
    fn needs_shared_memory(&self) -> bool {
        false
    }
    /// Where the runtime reports time spent queued, for `inference-queue` scaling.
    fn queue_time(&self) -> Option<QueueTimeSeries> {
        None
    }
}

pub fn profile(runtime: Runtime) -> &'static dyn RuntimeProfile {
    match runtime {
        Runtime::Triton => &Triton,
        Runtime::Torchserve => &Torchserve,
        Runtime::FastapiPytorch => &FastapiPytorch,
    }
}

/// The profile of the runtime a validated model chose.
pub fn of(model: &Validated) -> &'static dyn RuntimeProfile {
    profile(model.runtime)
}

/// A directory goes to `/models/<model>`, a file keeps its name directly under `/models`.
fn default_layout(model_name: &str, shape: &ArtifactShape) -> ModelLayout {
    match shape {
        ArtifactShape::Directory => {
            let dir = format!("{MODEL_ROOT}/{model_name}");
            ModelLayout {
                fetch_dir: dir.clone(),
                file_name: None,
                model_path: dir,
            }
        }
        ArtifactShape::File { file_name } => ModelLayout {
            fetch_dir: MODEL_ROOT.to_owned(),
            file_name: None,
            model_path: format!("{MODEL_ROOT}/{file_name}"),
        },
    }
}

fn http_probe(path: &str, port: i32, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn grpc_health_probe(port: i32, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction { port, service: None }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Large models load for many minutes before the server answers at all: a startup window of
/// 30 minutes (180 × 10 s) keeps liveness from killing a pod that is still loading.
const STARTUP_PERIOD_SECONDS: i32 = 10;
const STARTUP_FAILURE_THRESHOLD: i32 = 180;
