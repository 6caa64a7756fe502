//! The custom metrics the operator serves for the HorizontalPodAutoscaler
//! (`custom.metrics.k8s.io`), by the names the HPA builder writes and the metrics API answers to,
//! and the values they carry.

use k8s_openapi::jiff::Timestamp;

/// Per-pod GPU utilisation (percent), from the node agents' samples of the GPUs a pod holds.
pub const GPU_UTILIZATION_METRIC: &str = "gpu_utilization";
/// Per-pod mean time requests waited in the runtime's queue (microseconds).
pub const QUEUE_TIME_METRIC: &str = "inference_queue_duration_us";
/// Every metric served for pods.
pub const POD_METRICS: [&str; 2] = [GPU_UTILIZATION_METRIC, QUEUE_TIME_METRIC];

/// One pod's value of one metric, as the metrics API serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodValue {
    pub namespace: String,
    pub pod: String,
    /// Percent for `gpu_utilization`, microseconds for `inference_queue_duration_us`.
    pub value: f64,
    pub timestamp: Timestamp,
    pub window_seconds: i64,
}

/// Where a runtime reports the time requests wait in its queue: two cumulative series on its
/// Prometheus endpoint, the total time queued and the number of requests that were queued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueTimeSeries {
    /// The container port of the runtime's Prometheus endpoint.
    pub port: i32,
    pub path: &'static str,
    /// Cumulative time requests spent queued, summed over every model and version.
    pub queued: &'static str,
    /// What one unit of `queued` is in microseconds.
    pub queued_unit_us: f64,
    /// Cumulative count of the requests whose wait `queued` adds up.
    pub requests: &'static str,
}
