//! The HTTP side: `/metrics`, `/v1/samples`, `/healthz`, `/readyz`. Handlers only read the
//! snapshots the sampler and the pod-resources task publish.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Instant, SystemTime},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::{
    attribution::attribute,
    exposition,
    samples::{ContainerGpus, GpuSample, MigSample, NodeSamples, SAMPLES_PATH},
    snapshot::AgentState,
    telemetry::AgentMetrics,
};

pub struct HttpState {
    pub state: Arc<AgentState>,
    pub registry: Registry,
    pub metrics: AgentMetrics,
    /// The size of the last `/metrics` body, to size the next one's buffer in one allocation.
    last_metrics_len: AtomicUsize,
}

pub fn router(state: Arc<AgentState>, registry: Registry, metrics: AgentMetrics) -> Router {
    let http = Arc::new(HttpState {
        state,
        registry,
        metrics,
        last_metrics_len: AtomicUsize::new(4096),
    });
    Router::new()
        .route("/metrics", get(metrics_text))
        .route(SAMPLES_PATH, get(node_samples))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(http)
}

async fn metrics_text(State(http): State<Arc<HttpState>>) -> Response {
    let body = http.render_metrics(Instant::now());
    ([(CONTENT_TYPE, TextEncoder::new().format_type())], body).into_response()
}

async fn node_samples(State(http): State<Arc<HttpState>>) -> Response {
    match http.node_samples() {
        Some(samples) => Json(samples).into_response(),
        None => {
            let reason = http.state.readiness(Instant::now()).err().unwrap_or_default();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": reason })),
            )
                .into_response()
        }
    }
}

async fn readyz(State(http): State<Arc<HttpState>>) -> Response {
    match http.state.readiness(Instant::now()) {
        Ok(()) => "ok\n".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

impl HttpState {
    /// The GPU families from the latest snapshots, then the agent's own metrics.
    pub fn render_metrics(&self, now: Instant) -> String {
        let mut out = String::with_capacity(self.last_metrics_len.load(Ordering::Relaxed) + 1024);
        let sample = self.state.sample();
        let pods = self.state.pods();
        let allocations = pods.as_deref().map_or(&[][..], |p| &p.containers[..]);
        if let Some(sample) = sample.as_deref() {
            let attribution = attribute(Some(sample), allocations);
            exposition::encode(&mut out, &self.state.node, sample, &attribution);
            self.metrics.unmatched_device_ids.set(attribution.unmatched as i64);
        }
        self.metrics.observe_ages(&self.state, now);
        // Only an inconsistent registry fails to encode; the GPU families are served regardless.
        let _ = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        self.last_metrics_len.store(out.len(), Ordering::Relaxed);
        out
    }

    /// `None` until there is a sample to report.
    pub fn node_samples(&self) -> Option<NodeSamples> {
        let sample = self.state.sample()?;
        let pods = self.state.pods();
        let allocations = pods.as_deref().map_or(&[][..], |p| &p.containers[..]);
        let attribution = attribute(Some(&sample), allocations);
        let gpus = sample
            .gpus
            .iter()
            .map(|gpu| GpuSample {
                uuid: gpu.uuid.clone(),
                index: gpu.index,
                model_name: gpu.name.clone(),
                utilization_percent: gpu.utilization_gpu,
                memory_utilization_percent: gpu.utilization_memory,
                fb_used_mib: gpu.fb_used_mib,
                fb_free_mib: gpu.fb_free_mib,
                timestamp: rfc3339(gpu.read_at),
                mig_devices: gpu
                    .mig_devices
                    .iter()
                    .map(|mig| MigSample {
                        uuid: mig.uuid.clone(),
                        profile: mig.profile.clone(),
                        fb_used_mib: mig.fb_used_mib,
                        fb_free_mib: mig.fb_free_mib,
                    })
                    .collect(),
            })
            .collect();
        let containers = allocations
            .iter()
            .zip(&attribution.containers)
            .map(|(allocation, resolved)| ContainerGpus {
                namespace: allocation.namespace.clone(),
                pod: allocation.pod.clone(),
                container: allocation.container.clone(),
                resource: allocation.resource.clone(),
                device_ids: allocation.device_ids.clone(),
                gpus: resolved.gpus.iter().map(|uuid| uuid.to_string()).collect(),
                mig_devices: resolved.mig_devices.iter().map(|uuid| uuid.to_string()).collect(),
            })
            .collect();
        Some(NodeSamples {
            node: self.state.node.clone(),
            sampled_at: rfc3339(sample.taken_at),
            interval_seconds: self.state.interval.as_secs_f64(),
            pod_resources_at: pods.map(|p| rfc3339(p.fetched_at)),
            gpus,
            pods: containers,
        })
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
