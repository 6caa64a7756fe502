//! The two cumulative totals a runtime reports its queue time in (the series each runtime uses
//! are `crate::runtimes`' `queue_time()`), read from its Prometheus text. Their growth between
//! two reads gives the mean wait per request over that interval.

use prometheus_parse::{Scrape, Value};

use crate::vocabulary::QueueTimeSeries;

/// The two cumulative totals at one read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueCounters {
    pub queued_us: f64,
    pub requests: f64,
}

impl QueueCounters {
    /// Mean microseconds queued per request from `earlier` to `self`; `None` when either total
    /// went down (the runtime restarted, so the interval means nothing). No requests in the
    /// interval means nothing waited: 0.
    pub fn mean_since(&self, earlier: &QueueCounters) -> Option<f64> {
        let queued_us = self.queued_us - earlier.queued_us;
        let requests = self.requests - earlier.requests;
        if queued_us < 0.0 || requests < 0.0 {
            return None;
        }
        Some(if requests == 0.0 { 0.0 } else { queued_us / requests })
    }
}

/// Why a runtime's metrics give no totals.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CountersError {
    #[error("not Prometheus text: {0}")]
    NotPrometheus(String),
    #[error("{series} is a histogram or summary, not a total")]
    NotATotal { series: &'static str },
    #[error("{series} is {value}")]
    NotFinite { series: &'static str, value: f64 },
}

/// The totals in a scrape of the runtime's endpoint. A runtime that has served nothing yet may
/// not list its series at all, so a missing series reads as 0; the error is for text that is not
/// Prometheus exposition or a series whose value is not a number.
pub fn read_counters(series: &QueueTimeSeries, exposition: &str) -> Result<QueueCounters, CountersError> {
    let lines = exposition.lines().map(|line| Ok(line.to_owned()));
    let scrape = Scrape::parse(lines).map_err(|error| CountersError::NotPrometheus(error.to_string()))?;
    let total = |name: &'static str| -> Result<f64, CountersError> {
        let mut sum = 0.0;
        for sample in scrape.samples.iter().filter(|s| s.metric == name) {
            let value = match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => return Err(CountersError::NotATotal { series: name }),
            };
            if !value.is_finite() {
                return Err(CountersError::NotFinite { series: name, value });
            }
            sum += value;
        }
        Ok(sum)
    };
    Ok(QueueCounters {
        queued_us: total(series.queued)? * series.queued_unit_us,
        requests: total(series.requests)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{runtimes::profile, vocabulary::Runtime};

    fn series(runtime: Runtime) -> QueueTimeSeries {
        profile(runtime).queue_time().expect("the runtime reports queue time")
    }

    /// Triton 2.51's /metrics after six requests to `adder` (trimmed).
    const TRITON: &str = r#"# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="adder",version="1"} 6
nv_inference_request_success{model="slow",version="1"} 2
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="adder",reason="OTHER",version="1"} 0
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="adder",version="1"} 867010
nv_inference_queue_duration_us{model="slow",version="1"} 132990
"#;

    /// TorchServe 0.12's /metrics (metrics_mode=prometheus): Java-style `,}` label lists.
    const TORCHSERVE: &str = r#"# HELP ts_inference_requests_total Total number of inference requests received
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="tiny",model_version="default",hostname="vm",} 6.0
# HELP ts_queue_latency_microseconds Cumulative queue duration in microseconds
# TYPE ts_queue_latency_microseconds counter
ts_queue_latency_microseconds{model_name="tiny",model_version="default",hostname="vm",} 6870193.459999999
# HELP QueueTime Queue time
# TYPE QueueTime gauge
QueueTime{Level="Host",Hostname="vm",} 1255.0
"#;

    /// The fastapi-pytorch runtime's histogram (prometheus_client).
    const FASTAPI: &str = r#"# HELP inference_queue_duration_seconds Time a prediction waited for a worker thread.
# TYPE inference_queue_duration_seconds histogram
inference_queue_duration_seconds_bucket{le="0.005"} 3.0
inference_queue_duration_seconds_bucket{le="+Inf"} 4.0
inference_queue_duration_seconds_count 4.0
inference_queue_duration_seconds_sum 0.25
# HELP inference_queue_duration_seconds_created Time a prediction waited for a worker thread.
# TYPE inference_queue_duration_seconds_created gauge
inference_queue_duration_seconds_created 1.7641e+09
"#;

    #[test]
    fn each_runtime_totals_every_model_it_serves() {
        assert_eq!(
            read_counters(&series(Runtime::Triton), TRITON),
            Ok(QueueCounters {
                queued_us: 1_000_000.0,
                requests: 8.0
            })
        );
        let torchserve = read_counters(&series(Runtime::Torchserve), TORCHSERVE).unwrap();
        assert_eq!(torchserve.requests, 6.0);
        assert!((torchserve.queued_us - 6_870_193.46).abs() < 0.01, "{torchserve:?}");
        assert_eq!(
            read_counters(&series(Runtime::FastapiPytorch), FASTAPI),
            Ok(QueueCounters {
                queued_us: 250_000.0,
                requests: 4.0
            })
        );
    }

    #[test]
    fn a_runtime_that_served_nothing_reads_as_zero() {
        let empty = read_counters(&series(Runtime::Triton), "# no models yet\n").unwrap();
        assert_eq!(
            empty,
            QueueCounters {
                queued_us: 0.0,
                requests: 0.0
            }
        );
    }

    #[test]
    fn the_mean_is_per_request_and_a_restart_gives_none() {
        let at = |queued_us, requests| QueueCounters { queued_us, requests };
        assert_eq!(at(1_000_000.0, 8.0).mean_since(&at(200_000.0, 4.0)), Some(200_000.0));
        assert_eq!(at(1_000.0, 8.0).mean_since(&at(1_000.0, 8.0)), Some(0.0), "idle");
        assert_eq!(at(10.0, 1.0).mean_since(&at(1_000.0, 8.0)), None, "restarted");
    }
}
