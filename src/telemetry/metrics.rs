//! The operator's Prometheus metrics: one registry, built in `run` and passed down (no globals).
//! The original project's `model_deployments_created_total` and `model_validations_total` keep
//! their names so existing dashboards keep working.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::vocabulary::Leadership;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub deployments_created: IntCounter,
    /// `status` = started | success | failure.
    pub validations: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    /// `reason` = the error's fixed label.
    pub reconcile_errors: IntCounterVec,
    /// 1 when the model answers on at least one replica, per ModelDeployment.
    pub model_ready: IntGaugeVec,
    pub model_ready_replicas: IntGaugeVec,
    /// 1 while this replica's term as leader runs: set from the term at every scrape, so a
    /// replica that wakes from a freeze past its term never shows 1 beside the new leader.
    pub leader: prometheus::IntGauge,
    /// `verb`, `resource`: every request sent to the API server (`telemetry::CountRequests`).
    pub kube_requests: IntCounterVec,
    leadership: Arc<OnceLock<Leadership>>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let deployments_created = IntCounter::new(
            "model_deployments_created_total",
            "Deployments created for ModelDeployments",
        )
        .expect("valid metric");
        let validations = IntCounterVec::new(
            Opts::new("model_validations_total", "Validation Jobs by outcome"),
            &["status"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "model_operator_reconcile_duration_seconds",
                "Time one reconcile of a ModelDeployment took",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["outcome"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new("model_operator_reconcile_errors_total", "Failed reconciles by reason"),
            &["reason"],
        )
        .expect("valid metric");
        let model_ready = IntGaugeVec::new(
            Opts::new(
                "model_operator_model_ready",
                "1 when the model answers on at least one replica",
            ),
            &["namespace", "name", "runtime"],
        )
        .expect("valid metric");
        let model_ready_replicas = IntGaugeVec::new(
            Opts::new("model_operator_model_ready_replicas", "Replicas whose model answers"),
            &["namespace", "name", "runtime"],
        )
        .expect("valid metric");
        let leader = prometheus::IntGauge::new("model_operator_leader", "1 while this replica is the leader")
            .expect("valid metric");
        let kube_requests = IntCounterVec::new(
            Opts::new(
                "model_operator_kube_requests_total",
                "Requests the operator sent to the API server, by verb and resource",
            ),
            &["verb", "resource"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(deployments_created.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(validations.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(reconcile_errors.clone()),
            Box::new(model_ready.clone()),
            Box::new(model_ready_replicas.clone()),
            Box::new(leader.clone()),
            Box::new(kube_requests.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        // The original's label values exist from the start, so rate() works from the first scrape.
        for status in ["started", "success", "failure"] {
            validations.with_label_values(&[status]);
        }
        Self {
            registry,
            deployments_created,
            validations,
            reconcile_duration,
            reconcile_errors,
            model_ready,
            model_ready_replicas,
            leader,
            kube_requests,
            leadership: Arc::default(),
        }
    }

    /// Makes `model_operator_leader` follow `leadership` (once; later calls are ignored).
    pub fn track_leadership(&self, leadership: Leadership) {
        let _ = self.leadership.set(leadership);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Some(leadership) = self.leadership.get() {
            self.leader.set(i64::from(leadership.is_leading()));
        }
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding never fails");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
