//! The project's FastAPI + PyTorch server (`inference/`): `POST /predict`, `/healthz`,
//! `/v2/health/ready`, `/v2/models/{name}` and `/metrics`, on 8000.

use super::{Probes, RuntimeProfile, STARTUP_FAILURE_THRESHOLD, STARTUP_PERIOD_SECONDS, ServerPort, http_probe};
use crate::vocabulary::{OperatorImages, QueueTimeSeries, Runtime, Validated};

const HTTP: ServerPort = ServerPort {
    name: "http",
    port: 8000,
};

pub struct FastapiPytorch;

impl RuntimeProfile for FastapiPytorch {
    fn runtime(&self) -> Runtime {
        Runtime::FastapiPytorch
    }

    fn default_image(&self, images: &OperatorImages, _uses_gpu: bool) -> String {
        images.fastapi_pytorch.clone()
    }

    fn ports(&self) -> &'static [ServerPort] {
        &[HTTP]
    }

    fn inference_port(&self) -> ServerPort {
        HTTP
    }

    fn probe_port(&self) -> ServerPort {
        HTTP
    }

    /// The image's entrypoint starts the server; it finds the model through `MODEL_PATH`.
    fn command(&self, _model: &Validated) -> (Vec<String>, Vec<String>) {
        (Vec::new(), Vec::new())
    }

    /// Readiness waits for the model (the app loads it in the background and answers 503 until
    /// then), so the Service never routes `/predict` to a pod that would refuse it; liveness and
    /// startup only ask whether the process answers, so a slow load is not a crash.
    fn probes(&self) -> Probes {
        Probes {
            readiness: http_probe("/v2/health/ready", HTTP.port, 5, 3),
            liveness: http_probe("/healthz", HTTP.port, 10, 3),
            startup: http_probe("/healthz", HTTP.port, STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        }
    }

    /// A histogram of how long each prediction waited for one of the server's worker threads;
    /// its `_sum` (seconds) and `_count` are the two totals.
    fn queue_time(&self) -> Option<QueueTimeSeries> {
        Some(QueueTimeSeries {
            port: HTTP.port,
            path: "/metrics",
            queued: "inference_queue_duration_seconds_sum",
            queued_unit_us: 1_000_000.0,
            requests: "inference_queue_duration_seconds_count",
        })
    }
}
