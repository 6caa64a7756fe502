//! What the operator tells its operators: Prometheus metrics (one registry, built in `run` and
//! passed down, no globals) and log lines.

mod logs;
mod metrics;

pub use self::{
    logs::{LogFormat, init_logs},
    metrics::Metrics,
};
