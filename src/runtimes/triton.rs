//! NVIDIA Triton Inference Server: KServe v2 over HTTP (8000) and gRPC (8001), metrics on 8002.

use super::{
    MODEL_ROOT, Probes, RuntimeProfile, STARTUP_FAILURE_THRESHOLD, STARTUP_PERIOD_SECONDS, ServerPort,
    grpc_health_probe, http_probe,
};
use crate::vocabulary::{ArtifactShape, ModelLayout, OperatorImages, QueueTimeSeries, Runtime, Validated};

/// Triton 2.51 (NGC release 24.10), the server the protocol tests run against.
pub const TRITON_IMAGE: &str = "nvcr.io/nvidia/tritonserver:24.10-py3";

const HTTP: ServerPort = ServerPort {
    name: "http",
    port: 8000,
};
const GRPC: ServerPort = ServerPort {
    name: "grpc",
    port: 8001,
};
const METRICS: ServerPort = ServerPort {
    name: "metrics",
    port: 8002,
};

pub struct Triton;

impl RuntimeProfile for Triton {
    fn runtime(&self) -> Runtime {
        Runtime::Triton
    }

    fn default_image(&self, _images: &OperatorImages, _uses_gpu: bool) -> String {
        TRITON_IMAGE.to_owned()
    }

    fn ports(&self) -> &'static [ServerPort] {
        &[HTTP, GRPC, METRICS]
    }

    fn inference_port(&self) -> ServerPort {
        GRPC
    }

    /// KServe-v2 gRPC: `ModelReady`, `RepositoryIndex`, `ModelMetadata`.
    fn probe_port(&self) -> ServerPort {
        GRPC
    }

    /// Triton reads a model repository: `/models/<model>/config.pbtxt` and numbered versions.
    /// A single file (say `resnet.onnx`) becomes version 1 as `model.onnx`, and Triton
    /// completes the configuration itself for the backends that allow it.
    fn layout(&self, model_name: &str, shape: &ArtifactShape) -> ModelLayout {
        let model_dir = format!("{MODEL_ROOT}/{model_name}");
        match shape {
            ArtifactShape::Directory => ModelLayout {
                fetch_dir: model_dir.clone(),
                file_name: None,
                model_path: model_dir,
            },
            ArtifactShape::File { file_name } => {
                // The last extension names the format (`resnet50-v1.5.onnx` is ONNX); archives
                // (`.tar.gz`, `.tgz`) never get here, they unpack into a directory.
                let extension = std::path::Path::new(file_name)
                    .extension()
                    .and_then(|ext| ext.to_str())
                    .unwrap_or("bin");
                ModelLayout {
                    fetch_dir: format!("{model_dir}/1"),
                    file_name: Some(format!("model.{extension}")),
                    model_path: model_dir,
                }
            }
        }
    }

    fn command(&self, _model: &Validated) -> (Vec<String>, Vec<String>) {
        let args = [
            format!("--model-repository={MODEL_ROOT}"),
            format!("--http-port={}", HTTP.port),
            format!("--grpc-port={}", GRPC.port),
            format!("--metrics-port={}", METRICS.port),
        ];
        (vec!["tritonserver".to_owned()], args.into())
    }

    /// Readiness uses Triton's grpc.health.v1 service (SERVING iff the server is ready);
    /// liveness only asks whether the process is up, since an explicit model load makes the
    /// server briefly unready without anything being wrong.
    fn probes(&self) -> Probes {
        Probes {
            readiness: grpc_health_probe(GRPC.port, 5, 3),
            liveness: http_probe("/v2/health/live", HTTP.port, 10, 3),
            startup: http_probe(
                "/v2/health/live",
                HTTP.port,
                STARTUP_PERIOD_SECONDS,
                STARTUP_FAILURE_THRESHOLD,
            ),
        }
    }

    fn needs_shared_memory(&self) -> bool {
        // The Python backend passes tensors through /dev/shm.
        true
    }

    /// Triton counts the wait of successful requests only (failed ones never reach a model).
    fn queue_time(&self) -> Option<QueueTimeSeries> {
        Some(QueueTimeSeries {
            port: METRICS.port,
            path: "/metrics",
            queued: "nv_inference_queue_duration_us",
            queued_unit_us: 1.0,
            requests: "nv_inference_request_success",
        })
    }
}
