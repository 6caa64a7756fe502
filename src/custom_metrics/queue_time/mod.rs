//! `inference_queue_duration_us`: the mean time a request waited in a pod's runtime queue. The
//! runtimes report cumulative totals ([`runtime_counters`]), so a value needs two
//! reads of the pod's metrics endpoint: each request to the API reads every pod once and
//! compares with an earlier read of the same pod kept here. The first read of a pod only sets
//! the baseline, so a new pod is absent until the HPA's next sync; a pod whose runtime cannot
//! be read is absent too, never given a made-up value.

mod pod_reads;
pub mod runtime_counters;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::jiff::Timestamp;

use crate::vocabulary::cached::CachedPod;
use kube::ResourceExt;
use tracing::{debug, warn};

use self::{
    pod_reads::{MAX_AGE, PodReads, Read},
    runtime_counters::{CountersError, QueueCounters, read_counters},
};
use crate::{
    bounded_io::{BodyError, METRICS_BODY_LIMIT, body_within},
    runtimes::profile,
    vocabulary::{
        ModelEndpoints, PodValue, QueueTimeSeries, Runtime, host_port,
        names::{LABEL_MODEL, LABEL_RUNTIME},
    },
};

/// Pods read at once in one request.
const CONCURRENT_READS: usize = 32;

/// The flags that say where the runtimes' metrics endpoints are.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--runtime-metrics-endpoint`: one address for every pod of a ModelDeployment, for
    /// operators that cannot reach pod IPs.
    pub endpoints: ModelEndpoints,
    /// Read each pod at its IP (`--probe-pod-ips`).
    pub pod_ips: bool,
    pub timeout: Duration,
}

/// Why a pod gets no queue time this time.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url}: {source}")]
    TooMuch {
        url: String,
        #[source]
        source: BodyError,
    },
    #[error("{url}: {source}")]
    Unreadable {
        url: String,
        #[source]
        source: CountersError,
    },
}

/// Reads pods' runtime metrics and keeps each pod's earlier reads.
#[derive(Debug)]
pub struct QueueTimeSource {
    http: reqwest::Client,
    overrides: ModelEndpoints,
    pod_ips: bool,
    /// Keyed by pod UID, so a pod recreated under the same name starts afresh.
    reads: Mutex<HashMap<String, PodReads>>,
}

/// Where to read one pod: its runtime's series and the metrics URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub uid: String,
    pub namespace: String,
    pub pod: String,
    pub series: QueueTimeSeries,
    pub url: String,
}

impl QueueTimeSource {
    pub fn new(settings: Settings) -> Self {
        Self {
            http: crate::bounded_io::peer_client(settings.timeout),
            overrides: settings.endpoints,
            pod_ips: settings.pod_ips,
            reads: Mutex::default(),
        }
    }

    /// Where `pod`'s runtime reports queue time: the override of its ModelDeployment, else its
    /// IP, on the port of the runtime its label names. `None` for pods of no known runtime,
    /// without an IP yet, or that the operator may not reach.
    pub fn target(&self, pod: &CachedPod) -> Option<Target> {
        let labels = pod.labels();
        // The builder writes the runtime's spec spelling into the label.
        let label = labels.get(LABEL_RUNTIME)?;
        let runtime = Runtime::from_spelling(label)?;
        let series = profile(runtime).queue_time()?;
        let namespace = pod.namespace()?;
        let model = labels.get(LABEL_MODEL)?;
        let address = match self.overrides.get(&(namespace.clone(), model.clone())) {
            Some(address) => address.clone(),
            None if self.pod_ips => {
                let ip = pod.status.as_ref()?.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
                host_port(ip, series.port)
            }
            None => return None,
        };
        Some(Target {
            uid: pod.uid()?,
            namespace,
            pod: pod.name_any(),
            url: format!("http://{address}{}", series.path),
            series,
        })
    }

    async fn read(&self, target: &Target) -> Result<QueueCounters, ReadError> {
        let unreachable = |source| ReadError::Unreachable {
            url: target.url.clone(),
            source,
        };
        let response = self
            .http
            .get(&target.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unreachable)?;
        let body = body_within(response, METRICS_BODY_LIMIT)
            .await
            .map_err(|source| ReadError::TooMuch {
                url: target.url.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&body);
        read_counters(&target.series, &text).map_err(|source| ReadError::Unreadable {
            url: target.url.clone(),
            source,
        })
    }

    /// The requests the runtimes of `pods` have served in all, for the idle check of a model
    /// that may go to zero; an error, saying which pod and why, when one of them cannot be
    /// reached or read, since then what it served is unknown. Nothing is kept.
    pub async fn requests_served(&self, pods: &[Arc<CachedPod>]) -> Result<f64, String> {
        let mut targets = Vec::with_capacity(pods.len());
        for pod in pods {
            match self.target(pod) {
                Some(target) => targets.push(target),
                None => {
                    return Err(format!(
                        "pod {}: its runtime's metrics have no address (no pod IP, or --probe-pod-ips=false without a --runtime-metrics-endpoint for the model)",
                        pod.name_any()
                    ));
                }
            }
        }
        let reads: Vec<(String, Result<QueueCounters, ReadError>)> = stream::iter(targets)
            .map(|target| async move { (target.pod.clone(), self.read(&target).await) })
            .buffer_unordered(CONCURRENT_READS)
            .collect()
            .await;
        let mut served = 0.0;
        for (pod, read) in reads {
            match read {
                Ok(counters) => served += counters.requests,
                Err(error) => return Err(format!("pod {pod}: {error}")),
            }
        }
        Ok(served)
    }

    /// Each pod's mean queue time since an earlier read, for the pods that have one.
    pub async fn values(&self, pods: &[Arc<CachedPod>]) -> Vec<PodValue> {
        let targets: Vec<Target> = pods.iter().filter_map(|pod| self.target(pod)).collect();
        let reads: Vec<(Target, Result<QueueCounters, ReadError>, Instant)> = stream::iter(targets)
            .map(|target| async move {
                let result = self.read(&target).await;
                (target, result, Instant::now())
            })
            .buffer_unordered(CONCURRENT_READS)
            .collect()
            .await;
        let timestamp = Timestamp::now();
        let now = Instant::now();
        let mut history = self.reads.lock().expect("the reads lock is never held across a panic");
        history.retain(|_, pod| pod.last_read().is_some_and(|at| now.duration_since(at) <= MAX_AGE));
        let mut values: BTreeMap<String, PodValue> = BTreeMap::new();
        for (target, result, at) in reads {
            let counters = match result {
                Ok(counters) => counters,
                Err(error) => {
                    warn!(pod = %target.pod, namespace = %target.namespace, %error, "no queue time for this pod: its runtime metrics could not be read");
                    continue;
                }
            };
            let Some(mean) = history
                .entry(target.uid.clone())
                .or_default()
                .record(Read { at, counters })
            else {
                debug!(pod = %target.pod, "first read of this pod's queue time (or its runtime restarted): a baseline only");
                continue;
            };
            values.insert(
                target.pod.clone(),
                PodValue {
                    namespace: target.namespace,
                    pod: target.pod,
                    // Whole microseconds: finer than any HPA target.
                    value: mean.queue_us.round(),
                    timestamp,
                    window_seconds: mean.window.as_secs_f64().round().max(1.0) as i64,
                },
            );
        }
        values.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::vocabulary::parse_model_endpoints;

    fn pod(runtime: &str, ip: Option<&str>) -> CachedPod {
        serde_json::from_value(json!({
            "metadata": {"name": "llm-abc", "namespace": "ml", "uid": "u-1",
                         "labels": {"model": "llm", "mlops.sathvik.dev/runtime": runtime}},
            "status": {"podIP": ip},
        }))
        .unwrap()
    }

    fn source(endpoints: &[&str], pod_ips: bool) -> QueueTimeSource {
        let specs: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
        QueueTimeSource::new(Settings {
            endpoints: parse_model_endpoints("runtime-metrics-endpoint", &specs).unwrap(),
            pod_ips,
            timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn pods_are_read_on_their_runtimes_metrics_port_or_the_override() {
        let at_ips = source(&[], true);
        let url = |source: &QueueTimeSource, pod: &CachedPod| source.target(pod).map(|t| t.url);
        assert_eq!(
            url(&at_ips, &pod("triton", Some("10.1.2.3"))).as_deref(),
            Some("http://10.1.2.3:8002/metrics")
        );
        assert_eq!(
            url(&at_ips, &pod("torchserve", Some("fd00::7"))).as_deref(),
            Some("http://[fd00::7]:8082/metrics")
        );
        assert_eq!(
            url(&at_ips, &pod("fastapi-pytorch", Some("10.1.2.3"))).as_deref(),
            Some("http://10.1.2.3:8000/metrics")
        );
        assert_eq!(url(&at_ips, &pod("triton", None)), None, "no IP yet");
        assert_eq!(
            url(&at_ips, &pod("onnx", Some("10.1.2.3"))),
            None,
            "not a runtime of ours"
        );

        let overridden = source(&["ml/llm=127.0.0.1:18002"], false);
        assert_eq!(
            url(&overridden, &pod("triton", Some("10.1.2.3"))).as_deref(),
            Some("http://127.0.0.1:18002/metrics")
        );
        let unreachable = source(&["other/llm=127.0.0.1:18002"], false);
        assert_eq!(url(&unreachable, &pod("triton", Some("10.1.2.3"))), None);
    }

    #[test]
    fn a_malformed_override_names_the_flag() {
        let error = parse_model_endpoints("runtime-metrics-endpoint", &["llm=127.0.0.1:8002".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--runtime-metrics-endpoint \"llm=127.0.0.1:8002\""),
            "{error}"
        );
    }
}
