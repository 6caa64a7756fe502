//! `inference_queue_duration_us`: the mean time a request waited in a pod's runtime queue. The
//! runtimes report cumulative totals (`crate::runtimes::QueueTimeSeries`), so a value needs two
//! reads of the pod's metrics endpoint: each request to the API reads every pod once and
//! compares with an earlier read of the same pod kept here. The first read of a pod only sets
//! the baseline, so a new pod is absent until the HPA's next sync; a pod whose runtime cannot
//! be read is absent too, never given a made-up value.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::ResourceExt;
use tracing::{debug, warn};

use super::api::PodValue;
use crate::{
    api::Runtime,
    probe::{ModelEndpoints, host_port},
    reconcile::build::{LABEL_MODEL, LABEL_RUNTIME},
    runtimes::{QueueCounters, QueueTimeSeries, profile},
};

/// A baseline younger than this is only used when there is no older one: a window of a few
/// seconds holds too few requests to say much (the HPA asks every 15 s by default).
const MIN_WINDOW: Duration = Duration::from_secs(5);
/// Reads older than this are forgotten, and so are pods not read for this long.
const MAX_AGE: Duration = Duration::from_secs(300);
/// Reads kept per pod, however often the API is asked.
const MAX_READS: usize = 32;
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

/// One read of a pod's totals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Read {
    pub at: Instant,
    pub counters: QueueCounters,
}

/// The mean over the interval since the chosen baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mean {
    pub queue_us: f64,
    pub window: Duration,
}

/// A pod's earlier reads, oldest first.
#[derive(Debug, Default)]
pub struct PodReads {
    reads: VecDeque<Read>,
}

impl PodReads {
    /// Records `latest` and returns the mean since the newest earlier read at least
    /// [`MIN_WINDOW`] older (else the oldest earlier read). `None` on a pod's first read and
    /// after its runtime restarted (its totals went down), when `latest` becomes the baseline.
    pub fn record(&mut self, latest: Read) -> Option<Mean> {
        while self
            .reads
            .front()
            .is_some_and(|r| latest.at.duration_since(r.at) > MAX_AGE)
        {
            self.reads.pop_front();
        }
        let baseline = self
            .reads
            .iter()
            .rev()
            .find(|r| latest.at.duration_since(r.at) >= MIN_WINDOW)
            .or(self.reads.front())
            .copied();
        let mean = baseline.and_then(|base| {
            Some(Mean {
                queue_us: latest.counters.mean_since(&base.counters)?,
                window: latest.at.duration_since(base.at),
            })
        });
        if baseline.is_some() && mean.is_none() {
            self.reads.clear();
        }
        if self.reads.len() == MAX_READS {
            self.reads.pop_front();
        }
        self.reads.push_back(latest);
        mean
    }

    fn last_read(&self) -> Option<Instant> {
        self.reads.back().map(|r| r.at)
    }
}

/// Why a pod gets no queue time this time.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url}: {problem}")]
    Unreadable { url: String, problem: String },
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
            http: super::http_client(settings.timeout),
            overrides: settings.endpoints,
            pod_ips: settings.pod_ips,
            reads: Mutex::default(),
        }
    }

    /// Where `pod`'s runtime reports queue time: the override of its ModelDeployment, else its
    /// IP, on the port of the runtime its label names. `None` for pods of no known runtime,
    /// without an IP yet, or that the operator may not reach.
    pub fn target(&self, pod: &Pod) -> Option<Target> {
        let labels = pod.labels();
        // The builder writes the runtime's spec spelling into the label.
        let label = labels.get(LABEL_RUNTIME)?;
        let runtime = Runtime::ALL.into_iter().find(|r| r.as_str() == label)?;
        let series = profile(runtime).queue_time()?;
        let namespace = pod.namespace()?;
        let model = labels.get(LABEL_MODEL)?;
        let address = match self.overrides.get(&(namespace.clone(), model.clone())) {
            Some(address) => address.clone(),
            None if self.pod_ips => {
                let ip = pod.status.as_ref()?.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
                host_port(ip, series.port.port)
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
        let text = self
            .http
            .get(&target.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unreachable)?
            .text()
            .await
            .map_err(unreachable)?;
        target.series.read(&text).map_err(|problem| ReadError::Unreadable {
            url: target.url.clone(),
            problem,
        })
    }

    /// Each pod's mean queue time since an earlier read, for the pods that have one.
    pub async fn values(&self, pods: &[Arc<Pod>]) -> Vec<PodValue> {
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
    use crate::probe::parse_model_endpoints;

    fn totals(queued_us: f64, requests: f64) -> QueueCounters {
        QueueCounters { queued_us, requests }
    }

    /// Reads of one pod at the given seconds after `start`.
    fn read_at(start: Instant, seconds: u64, counters: QueueCounters) -> Read {
        Read {
            at: start + Duration::from_secs(seconds),
            counters,
        }
    }

    #[test]
    fn the_first_read_is_a_baseline_and_later_ones_average_since_it() {
        let start = Instant::now();
        let mut pod = PodReads::default();
        assert_eq!(pod.record(read_at(start, 0, totals(1_000.0, 10.0))), None);
        assert_eq!(
            pod.record(read_at(start, 15, totals(41_000.0, 20.0))),
            Some(Mean {
                queue_us: 4_000.0,
                window: Duration::from_secs(15)
            })
        );
        // Idle since: nothing waited.
        let idle = pod.record(read_at(start, 30, totals(41_000.0, 20.0))).unwrap();
        assert_eq!((idle.queue_us, idle.window), (0.0, Duration::from_secs(15)));
    }

    #[test]
    fn reads_closer_than_the_minimum_window_reach_back_further() {
        let start = Instant::now();
        let mut pod = PodReads::default();
        pod.record(read_at(start, 0, totals(0.0, 0.0)));
        pod.record(read_at(start, 10, totals(10_000.0, 10.0)));
        // Two seconds after the last read: the baseline is the one before, twelve seconds back.
        let mean = pod.record(read_at(start, 12, totals(50_000.0, 20.0))).unwrap();
        assert_eq!((mean.queue_us, mean.window), (2_500.0, Duration::from_secs(12)));
        // With only young reads, the oldest one serves.
        let mut young = PodReads::default();
        young.record(read_at(start, 0, totals(0.0, 0.0)));
        let mean = young.record(read_at(start, 2, totals(300.0, 3.0))).unwrap();
        assert_eq!((mean.queue_us, mean.window), (100.0, Duration::from_secs(2)));
    }

    #[test]
    fn a_restarted_runtime_starts_a_new_baseline_and_old_reads_expire() {
        let start = Instant::now();
        let mut pod = PodReads::default();
        pod.record(read_at(start, 0, totals(90_000.0, 90.0)));
        assert_eq!(
            pod.record(read_at(start, 15, totals(100.0, 1.0))),
            None,
            "totals went down"
        );
        let mean = pod.record(read_at(start, 30, totals(1_100.0, 2.0))).unwrap();
        assert_eq!((mean.queue_us, mean.window), (1_000.0, Duration::from_secs(15)));
        // Ten minutes later everything kept is too old: a baseline again.
        assert_eq!(pod.record(read_at(start, 630, totals(5_000.0, 5.0))), None);
    }

    #[test]
    fn reads_kept_per_pod_are_bounded() {
        let start = Instant::now();
        let mut pod = PodReads::default();
        for second in 0..100 {
            pod.record(read_at(start, second, totals(second as f64, second as f64)));
        }
        assert_eq!(pod.reads.len(), MAX_READS);
    }

    fn pod(runtime: &str, ip: Option<&str>) -> Pod {
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
        let url = |source: &QueueTimeSource, pod: &Pod| source.target(pod).map(|t| t.url);
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
        let error = parse_model_endpoints("runtime-metrics-endpoint", &["llm=127.0.0.1:8002".into()]).unwrap_err();
        assert!(
            error.starts_with("--runtime-metrics-endpoint \"llm=127.0.0.1:8002\""),
            "{error}"
        );
    }
}
