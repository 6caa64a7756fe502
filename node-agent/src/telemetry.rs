//! The agent's own health metrics, in one registry built by `run` and passed down, and its logs.

use std::time::Instant;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::snapshot::AgentState;

/// Counters the sampler and the pod-resources task bump; gauges set at each scrape.
#[derive(Clone)]
pub struct AgentMetrics {
    pub samples: IntCounter,
    pub device_read_errors: IntCounterVec,
    pub nvml_init_errors: IntCounter,
    pub nvml_up: IntGauge,
    pub gpus: IntGauge,
    pub sample_duration: Gauge,
    pub last_sample_age: Gauge,
    pub pod_resources_refreshes: IntCounter,
    pub pod_resources_refresh_errors: IntCounter,
    pub pod_resources_age: Gauge,
    pub unmatched_device_ids: IntGauge,
    pub resource_slice_reads: IntCounter,
    pub resource_slice_read_errors: IntCounter,
}

impl AgentMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            samples: IntCounter::new("node_agent_samples_total", "NVML sampling passes completed.")?,
            device_read_errors: IntCounterVec::new(
                Opts::new(
                    "node_agent_device_read_errors_total",
                    "GPUs skipped in a sampling pass because NVML failed to read them, by NVML index.",
                ),
                &["gpu"],
            )?,
            nvml_init_errors: IntCounter::new(
                "node_agent_nvml_init_errors_total",
                "Failed attempts to load and initialise NVML.",
            )?,
            nvml_up: IntGauge::new("node_agent_nvml_up", "1 while NVML is initialised and answering.")?,
            gpus: IntGauge::new("node_agent_gpus", "GPUs read cleanly in the last sampling pass.")?,
            sample_duration: Gauge::new(
                "node_agent_sample_duration_seconds",
                "How long the last sampling pass spent in NVML.",
            )?,
            last_sample_age: Gauge::new(
                "node_agent_last_sample_age_seconds",
                "Age of the GPU readings served; +Inf when there are none.",
            )?,
            pod_resources_refreshes: IntCounter::new(
                "node_agent_pod_resources_refreshes_total",
                "Successful kubelet PodResources List calls.",
            )?,
            pod_resources_refresh_errors: IntCounter::new(
                "node_agent_pod_resources_refresh_errors_total",
                "Failed kubelet PodResources List calls.",
            )?,
            pod_resources_age: Gauge::new(
                "node_agent_pod_resources_age_seconds",
                "Age of the pod attribution served; +Inf when there is none.",
            )?,
            unmatched_device_ids: IntGauge::new(
                "node_agent_unmatched_device_ids",
                "GPU device IDs the kubelet lists that match no GPU read in the last sample, and claimed DRA devices no ResourceSlice read describes.",
            )?,
            resource_slice_reads: IntCounter::new(
                "node_agent_resource_slice_reads_total",
                "Successful reads of this node's ResourceSlices (made only while DRA devices are claimed).",
            )?,
            resource_slice_read_errors: IntCounter::new(
                "node_agent_resource_slice_read_errors_total",
                "Failed reads of this node's ResourceSlices.",
            )?,
        };
        registry.register(Box::new(metrics.samples.clone()))?;
        registry.register(Box::new(metrics.device_read_errors.clone()))?;
        registry.register(Box::new(metrics.nvml_init_errors.clone()))?;
        registry.register(Box::new(metrics.nvml_up.clone()))?;
        registry.register(Box::new(metrics.gpus.clone()))?;
        registry.register(Box::new(metrics.sample_duration.clone()))?;
        registry.register(Box::new(metrics.last_sample_age.clone()))?;
        registry.register(Box::new(metrics.pod_resources_refreshes.clone()))?;
        registry.register(Box::new(metrics.pod_resources_refresh_errors.clone()))?;
        registry.register(Box::new(metrics.pod_resources_age.clone()))?;
        registry.register(Box::new(metrics.unmatched_device_ids.clone()))?;
        registry.register(Box::new(metrics.resource_slice_reads.clone()))?;
        registry.register(Box::new(metrics.resource_slice_read_errors.clone()))?;
        Ok(metrics)
    }

    /// The gauges that depend on the time of the scrape.
    pub fn observe_ages(&self, state: &AgentState, now: Instant) {
        let age =
            |then: Option<Instant>| then.map_or(f64::INFINITY, |t| now.saturating_duration_since(t).as_secs_f64());
        self.last_sample_age.set(age(state.sample().map(|s| s.taken)));
        self.pod_resources_age.set(age(state.pods().map(|p| p.fetched)));
    }
}

/// `text` followed by the error's causes that it does not already say, e.g. the dlopen message
/// behind NVML's libloading error, or the I/O error behind a gRPC transport failure.
pub fn with_causes(mut text: String, error: &(dyn std::error::Error + 'static)) -> String {
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
