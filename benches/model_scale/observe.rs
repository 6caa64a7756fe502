//! What a scale run reads: when objects first appeared in a namespace (watches, so the times do
//! not depend on a polling interval and cost the API server no repeated lists), the operator's
//! `/metrics` counters, its memory and CPU from /proc, and the API server's audit log.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::support::{cluster_dir, eventually};

/// Objects of one kind in a namespace, each with the moment a watch first showed it meeting a
/// condition.
pub struct Arrivals {
    first_seen: Arc<Mutex<HashMap<String, Instant>>>,
    listed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Arrivals {
    /// Objects of kind `K` (their metadata only) that a ModelDeployment controls.
    pub fn children<K>(client: &Client, namespace: &str) -> Self
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let api: Api<PartialObjectMeta<K>> = Api::namespaced(client.clone(), namespace);
        Self::start(watcher::watcher(api, watcher::Config::default()), |child| {
            child
                .owner_references()
                .iter()
                .any(|owner| owner.kind == "ModelDeployment" && owner.controller == Some(true))
        })
    }

    /// Objects of kind `K`, whole, once `condition` holds for them.
    pub fn when<K>(client: &Client, namespace: &str, condition: fn(&K) -> bool) -> Self
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        Self::start(watcher::watcher(api, watcher::Config::default()), condition)
    }

    fn start<T, S>(events: S, condition: impl Fn(&T) -> bool + Send + 'static) -> Self
    where
        T: Resource + Send + 'static,
        S: Stream<Item = Result<watcher::Event<T>, watcher::Error>> + Send + 'static,
    {
        let first_seen = Arc::new(Mutex::new(HashMap::new()));
        let listed = Arc::new(AtomicBool::new(false));
        let (seen, done) = (first_seen.clone(), listed.clone());
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events.default_backoff());
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) if condition(&object) => {
                        seen.lock()
                            .unwrap()
                            .entry(object.name_any())
                            .or_insert_with(Instant::now);
                    }
                    Ok(watcher::Event::InitDone) => done.store(true, Ordering::Relaxed),
                    _ => {}
                }
            }
        });
        Self {
            first_seen,
            listed,
            task,
        }
    }

    /// Waits until the watch has listed, so that what arrives from now on is timed as it comes.
    pub async fn listed(&self) {
        eventually(Duration::from_secs(30), "a watch has listed", || async {
            self.listed.load(Ordering::Relaxed).then_some(())
        })
        .await;
    }

    pub fn count(&self) -> usize {
        self.first_seen.lock().unwrap().len()
    }

    /// Waits until `count` objects have arrived; how long after `since` the last one did.
    pub async fn all(&self, count: usize, since: Instant, within: Duration, what: &str) -> Duration {
        eventually(within, what, || async { (self.count() >= count).then_some(()) }).await;
        let seen = self.first_seen.lock().unwrap();
        let last = seen.values().max().copied().unwrap_or(since);
        last.saturating_duration_since(since)
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One sample of a Prometheus text exposition: its labels and value.
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of the series `name` (exactly: `name_count` is another series).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            Some(Sample {
                labels: parse_labels(labels),
                value: value.split_whitespace().next()?.parse().ok()?,
            })
        })
        .collect()
}

/// `a="x",b="y"`; the operator's label values carry no quotes or commas.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.trim().to_owned(), value.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

/// CPU time the process has used (user and system), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    try_cpu_time(pid).expect("the operator is running")
}

fn try_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces: the state
    // first, so utime and stime (fields 14 and 15 of proc(5)) are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .expect("/proc/PID/stat")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second()))
}

/// The local cluster's processes, as `tests/cluster/up.sh` names their PID files.
const CLUSTER_PROCESSES: [&str; 5] = [
    "kube-apiserver",
    "etcd",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

/// CPU time used so far by each process that shares the machine with a phase: the cluster's and,
/// where one runs, the operator. Two readings apart say where a phase's time went: a phase
/// bound by the API server's CPU is not made faster by fewer round trips, only by less work.
pub struct CpuReading(BTreeMap<&'static str, Duration>);

impl CpuReading {
    pub fn now(operator: Option<u32>) -> Self {
        let pids = cluster_dir().join("pids");
        let mut used: BTreeMap<&'static str, Duration> = CLUSTER_PROCESSES
            .iter()
            .filter_map(|&name| {
                let pid = std::fs::read_to_string(pids.join(format!("{name}.pid"))).ok()?;
                Some((name, try_cpu_time(pid.trim().parse().ok()?)?))
            })
            .collect();
        if let Some(used_by_operator) = operator.and_then(try_cpu_time) {
            used.insert("operator", used_by_operator);
        }
        Self(used)
    }

    /// `process 1.2 s, …` from `earlier` to this reading, largest first.
    pub fn since(&self, earlier: &CpuReading) -> String {
        let mut spent: Vec<(&str, Duration)> = self
            .0
            .iter()
            .map(|(&name, &now)| {
                (
                    name,
                    now.saturating_sub(earlier.0.get(name).copied().unwrap_or_default()),
                )
            })
            .collect();
        spent.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
        let parts: Vec<String> = spent
            .iter()
            .map(|(name, took)| format!("{name} {:.1} s", took.as_secs_f64()))
            .collect();
        parts.join(", ")
    }
}

/// Asked of `getconf` once: a CPU reading reads six processes, and a phase's boundary is no place
/// to start six more.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    });
    *TICKS
}

fn audit_log() -> std::path::PathBuf {
    cluster_dir().join("logs").join("audit.log")
}

/// How far the audit log has been written: where a window of it starts or ends.
pub fn audit_log_end() -> u64 {
    std::fs::metadata(audit_log()).map(|m| m.len()).unwrap_or(0)
}

/// The cluster's own components, by the user agent they send; every other writer in a bench
/// namespace is the operator or the bench.
const COMPONENT_AGENTS: [&str; 3] = ["kube-controller-manager/", "kube-scheduler/", "kwok/"];

/// The writes the audit log recorded in `namespace` between two of its ends, by whoever is not
/// one of the cluster's components, as `verb resource` → count. Leases and Events are not
/// audited (tests/cluster/audit-policy.yaml).
pub fn audited_writes(namespace: &str, from: u64, to: u64) -> BTreeMap<String, u64> {
    let bytes = std::fs::read(audit_log()).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the cluster runs without its audit log; restart it",
            audit_log().display()
        )
    });
    // A log rotated in the window starts over: then only what the new one holds is counted.
    let from = if (from as usize) <= bytes.len() {
        from as usize
    } else {
        0
    };
    let to = (to as usize).clamp(from, bytes.len());
    let mut writes = BTreeMap::new();
    for line in String::from_utf8_lossy(&bytes[from..to]).lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let agent = event["userAgent"].as_str().unwrap_or_default();
        if event["objectRef"]["namespace"] != namespace
            || event["stage"] != "ResponseComplete"
            || COMPONENT_AGENTS.iter().any(|component| agent.starts_with(component))
        {
            continue;
        }
        let resource = match event["objectRef"]["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", event["objectRef"]["resource"].as_str().unwrap_or_default()),
            None => event["objectRef"]["resource"].as_str().unwrap_or_default().to_owned(),
        };
        *writes
            .entry(format!("{} {resource}", event["verb"].as_str().unwrap_or_default()))
            .or_default() += 1;
    }
    writes
}
