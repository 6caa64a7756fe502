//! What the operator tells its operators: Prometheus metrics (one registry, built in `run` and
//! passed down, no globals), Kubernetes Events and log lines.

mod api_requests;
mod events;
mod logs;
mod metrics;

pub use self::{
    api_requests::{CountRequests, is_write},
    events::EventPublisher,
    logs::{LogFormat, init_logs},
    metrics::Metrics,
};
