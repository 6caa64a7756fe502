//! The activator's Prometheus metrics, served at its `/metrics`: what became of each request,
//! how many are held now, and how long the held ones waited. No per-model labels: a model's
//! series would outlive it.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// What became of a request: forwarded at once, forwarded after a wait, or a refusal's reason.
pub const FORWARDED: &str = "Forwarded";
pub const FORWARDED_AFTER_HOLD: &str = "ForwardedAfterHold";

pub struct ActivatorMetrics {
    registry: Registry,
    /// `outcome` = [`FORWARDED`], [`FORWARDED_AFTER_HOLD`], or a refusal's reason.
    pub requests: IntCounterVec,
    /// Requests waiting for their model now, across models: set from the gates' own counts
    /// when the metrics are encoded.
    pub held: IntGauge,
    /// How long each held request waited until it was forwarded or refused.
    pub hold_seconds: Histogram,
}

impl Default for ActivatorMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "model_operator_activator_requests_total",
                "Requests the activator took, by what became of them",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let held = IntGauge::new(
            "model_operator_activator_held_requests",
            "Requests waiting for a model with no ready replica",
        )
        .expect("valid metric");
        let hold_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "model_operator_activator_hold_seconds",
                "How long a held request waited for its model",
            )
            .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(held.clone()),
            Box::new(hold_seconds.clone()),
        ] {
            registry.register(collector).expect("metric registered once");
        }
        Self {
            registry,
            requests,
            held,
            hold_seconds,
        }
    }
}

impl ActivatorMetrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the exposition is UTF-8")
    }
}
