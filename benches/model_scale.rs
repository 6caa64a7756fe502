//! The operator at scale: N ModelDeployments (`SCALE_MODELS`, default 1000; a mix of runtimes,
//! GPU and CPU, some autoscaled, some validated: `model_scale/mix.rs`) on the local cluster,
//! measured in one run beside the limit, the same children written by a plain parallel client
//! (`model_scale/limit.rs`), so that throughput is a ratio on this machine, not an absolute time.
//!
//! In order, each phase in a fresh namespace (the one before deleted and gone, so that its
//! garbage collection does not load the next):
//! 1. the limit: N models created, no operator watching; then their children written;
//! 2. burst: the operator running on an empty namespace (its memory there is the baseline), N
//!    models arrive; then, the same operator at rest for `SCALE_REST_SECONDS` (default 300):
//!    its API requests by verb (its own `model_operator_kube_requests_total`), writes the API
//!    server's audit log attributes to it, reconciles, CPU; then one model's spec changed;
//! 3. backlog: N models exist, then the operator starts.
//!
//! For each: time to every child written and to every model Ready (for the limit, to every
//! Deployment available), models/s and the ratio to the limit. Prints every figure, then fails
//! when a target (the constants below) is missed. Needs the local cluster (`make bench-scale`).

#[path = "../tests/support/mod.rs"]
mod servers;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code)]
mod support;
// The chaos tier's FakeNodes: extra kwok nodes, removed when dropped (also on a panic).
#[path = "../tests/chaos/faults.rs"]
#[allow(dead_code)]
mod faults;

// A bench's file is its crate's root, so its modules are found by path.
#[path = "model_scale/limit.rs"]
mod limit;
#[path = "model_scale/mix.rs"]
mod mix;
#[path = "model_scale/observe.rs"]
mod observe;
#[path = "model_scale/room.rs"]
mod room;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::Job,
    core::v1::{ConfigMap, Service},
    resource::v1::ResourceClaimTemplate,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use model_operator::api::{ModelDeployment, Phase};
use observe::{Arrivals, CpuReading, audit_log_end, audited_writes, cpu_time, samples};
use support::{Operator, TestNamespace, cluster, memory_kib};

/// Targets (the issue's, at N = 1000): the operator's writes per second at rest, its resident
/// memory at rest with N models, and its models/s to every child written as a share of the
/// limit's, in both the backlog and the burst.
const TARGET_REST_WRITES_PER_S: f64 = 0.1;
const TARGET_RSS_MIB: f64 = 40.0;
const TARGET_SHARE_OF_LIMIT: f64 = 0.8;

const DEFAULT_MODELS: usize = 1000;
const DEFAULT_REST_SECONDS: u64 = 300;
/// The operator's default `--concurrency` (reconciles at once): the limit writes as many models
/// at a time.
const RECONCILE_CONCURRENCY: usize = 16;
/// Model creates in flight at once (the bench's, in every phase).
const REQUESTS_AT_ONCE: usize = 16;
/// The operator's default lease, so that its renewals at rest are what production sends.
const LEASE_DURATION: &str = "15s";
/// How long the operator is left before its memory is read on an empty namespace, and after a
/// burst before the rest window opens (HPAs' first syncs, the last status writes).
const SETTLE: Duration = Duration::from_secs(20);
/// Verbs that write, as the operator's counter and the API server name them.
const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value} is not a whole number"))
        })
        .unwrap_or(default)
}

/// Generous for two cores: the controller manager creates the ReplicaSets and pods at its
/// default 20 requests/s.
fn phase_timeout(models: usize) -> Duration {
    Duration::from_secs((models as u64 * 2).max(300))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn model_ready(model: &ModelDeployment) -> bool {
    let status = model.status.as_ref();
    status.and_then(|s| s.phase) == Some(Phase::Ready)
        && status.and_then(|s| s.observed_generation) == model.metadata.generation
}

/// The limit's analogue of Ready: the Deployment's pods are available.
fn deployment_available(deployment: &Deployment) -> bool {
    let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    deployment.status.as_ref().is_some_and(|s| {
        s.available_replicas.unwrap_or(0) >= wanted && s.observed_generation == deployment.metadata.generation
    })
}

/// Watches on every kind of child a namespace's models have, and on their readiness.
struct Watches {
    children: Vec<(String, Arrivals)>,
    ready: Arrivals,
}

impl Watches {
    async fn start(client: &Client, namespace: &str, expected: &BTreeMap<String, usize>, ready: Arrivals) -> Self {
        let children = expected
            .keys()
            .map(|kind| {
                let arrivals = match kind.as_str() {
                    "ConfigMap" => Arrivals::children::<ConfigMap>(client, namespace),
                    "Job" => Arrivals::children::<Job>(client, namespace),
                    "Deployment" => Arrivals::children::<Deployment>(client, namespace),
                    "Service" => Arrivals::children::<Service>(client, namespace),
                    "HorizontalPodAutoscaler" => Arrivals::children::<HorizontalPodAutoscaler>(client, namespace),
                    "ResourceClaimTemplate" => Arrivals::children::<ResourceClaimTemplate>(client, namespace),
                    other => panic!("the operator builds a new kind of child, {other}: watch it here"),
                };
                (kind.clone(), arrivals)
            })
            .collect::<Vec<_>>();
        for (_, arrivals) in &children {
            arrivals.listed().await;
        }
        ready.listed().await;
        Self { children, ready }
    }

    /// How long after `since` the last child of each kind was written.
    async fn children_written(&self, expected: &BTreeMap<String, usize>, since: Instant, within: Duration) -> ByKind {
        let mut last = BTreeMap::new();
        for (kind, arrivals) in &self.children {
            let what = format!("every {kind} is written ({} expected)", expected[kind]);
            last.insert(kind.clone(), arrivals.all(expected[kind], since, within, &what).await);
        }
        ByKind(last)
    }
}

/// When the last child of each kind was written: shows which kind a phase waited for (a
/// validated model's Deployment and HPA wait for its Job to succeed).
struct ByKind(BTreeMap<String, Duration>);

impl ByKind {
    fn last(&self) -> Duration {
        self.0.values().max().copied().unwrap_or_default()
    }
}

impl std::fmt::Display for ByKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<String> = self.0.iter().map(|(kind, took)| format!("{kind} {took:.1?}")).collect();
        write!(f, "{}", kinds.join(", "))
    }
}

/// Times of one phase, from its start (the limit's first write, the operator's start, the
/// first model's create).
struct Throughput {
    children: Duration,
    ready: Duration,
}

impl Throughput {
    fn rate(models: usize, took: Duration) -> f64 {
        models as f64 / took.as_secs_f64().max(1e-3)
    }
}

/// Creates the models of the mix in `namespace`; the objects as the API server returned them.
async fn create_models(client: &Client, namespace: &str, models: usize) -> Vec<ModelDeployment> {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), namespace);
    stream::iter(0..models)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &mix::model(i, namespace))
                    .await
                    .unwrap_or_else(|e| panic!("creating {}: {e}", mix::name(i)))
            }
        })
        .buffer_unordered(REQUESTS_AT_ONCE)
        .collect()
        .await
}

async fn delete_namespace(client: &Client, ns: TestNamespace, within: Duration) {
    let name = ns.name.clone();
    ns.delete().await;
    room::namespace_gone(client, &name, within).await;
}

fn start_operator(namespace: &str, identity: &str) -> Operator {
    Operator::start_with(namespace, identity, &["--lease-duration", LEASE_DURATION])
}

async fn limit_phase(client: &Client, models: usize, expected: &BTreeMap<String, usize>) -> Throughput {
    let within = phase_timeout(models);
    let ns = TestNamespace::create(client, "scale-limit").await;
    let created = create_models(client, &ns.name, models).await;
    let watches = Watches::start(
        client,
        &ns.name,
        expected,
        Arrivals::when::<Deployment>(client, &ns.name, deployment_available),
    )
    .await;
    let cpu_from = CpuReading::now(None);
    let started = Instant::now();
    limit::write_children(client, &created, RECONCILE_CONCURRENCY).await;
    let by_kind = watches.children_written(expected, started, within).await;
    let children = by_kind.last();
    println!(
        "limit: CPU while the children were written: {}",
        CpuReading::now(None).since(&cpu_from)
    );
    let ready = watches
        .ready
        .all(models, started, within, "every Deployment of the limit is available")
        .await;
    println!(
        "limit: children of {models} models written in {children:.1?} ({by_kind}), every Deployment available in \
         {ready:.1?}"
    );
    drop(watches);
    delete_namespace(client, ns, within).await;
    Throughput { children, ready }
}

/// The burst, then the same operator at rest and one model changed.
struct BurstRun {
    throughput: Throughput,
    models_created: Duration,
    empty_kib: u64,
    after_burst_kib: u64,
    at_rest_kib: u64,
    peak_kib: u64,
    rest: Rest,
    change: Duration,
}

async fn burst_phase(
    client: &Client,
    models: usize,
    expected: &BTreeMap<String, usize>,
    rest_for: Duration,
) -> BurstRun {
    let within = phase_timeout(models);
    let ns = TestNamespace::create(client, "scale-burst").await;
    let operator = start_operator(&ns.name, "scale-burst");
    let pid = operator.pid();
    tokio::time::sleep(SETTLE).await;
    let empty_kib = memory_kib(pid, "VmRSS");
    let watches = Watches::start(
        client,
        &ns.name,
        expected,
        Arrivals::when::<ModelDeployment>(client, &ns.name, model_ready),
    )
    .await;
    // Read before the clock starts: the counters are a request to the operator.
    let (cpu_from, sent_before) = (CpuReading::now(Some(pid)), counters(&operator).await);
    let started = Instant::now();
    create_models(client, &ns.name, models).await;
    let models_created = started.elapsed();
    let by_kind = watches.children_written(expected, started, within).await;
    let children = by_kind.last();
    spent_on_children("burst", models, &cpu_from, Some(&sent_before), &operator).await;
    let ready = watches.ready.all(models, started, within, "every model is Ready").await;
    let after_burst_kib = memory_kib(pid, "VmRSS");
    println!(
        "burst: {models} models created in {models_created:.1?}, every child written in {children:.1?} ({by_kind}), \
         every model Ready in {ready:.1?}; operator RSS {:.1} MiB (empty {:.1} MiB)",
        mib(after_burst_kib),
        mib(empty_kib)
    );
    drop(watches);

    tokio::time::sleep(SETTLE).await;
    let rest = at_rest(&operator, &ns.name, rest_for).await;
    let at_rest_kib = memory_kib(pid, "VmRSS");
    let change = change_one_model(client, &ns.name, mix::plain(models), within).await;
    let peak_kib = memory_kib(pid, "VmHWM");
    drop(operator);
    delete_namespace(client, ns, within).await;
    BurstRun {
        throughput: Throughput { children, ready },
        models_created,
        empty_kib,
        after_burst_kib,
        at_rest_kib,
        peak_kib,
        rest,
        change,
    }
}

struct BacklogRun {
    throughput: Throughput,
    rss_kib: u64,
    peak_kib: u64,
}

async fn backlog_phase(client: &Client, models: usize, expected: &BTreeMap<String, usize>) -> BacklogRun {
    let within = phase_timeout(models);
    let ns = TestNamespace::create(client, "scale-backlog").await;
    create_models(client, &ns.name, models).await;
    let watches = Watches::start(
        client,
        &ns.name,
        expected,
        Arrivals::when::<ModelDeployment>(client, &ns.name, model_ready),
    )
    .await;
    let cpu_from = CpuReading::now(None);
    let started = Instant::now();
    let operator = start_operator(&ns.name, "scale-backlog");
    let by_kind = watches.children_written(expected, started, within).await;
    let children = by_kind.last();
    spent_on_children("backlog", models, &cpu_from, None, &operator).await;
    let ready = watches.ready.all(models, started, within, "every model is Ready").await;
    let rss_kib = memory_kib(operator.pid(), "VmRSS");
    let peak_kib = memory_kib(operator.pid(), "VmHWM");
    println!(
        "backlog: every child of {models} models written {children:.1?} after the operator started ({by_kind}), every \
         model Ready in {ready:.1?}; operator RSS {:.1} MiB, peak {:.1} MiB",
        mib(rss_kib),
        mib(peak_kib)
    );
    drop(watches);
    drop(operator);
    delete_namespace(client, ns, within).await;
    BacklogRun {
        throughput: Throughput { children, ready },
        rss_kib,
        peak_kib,
    }
}

/// The operator over a window at rest, every model Ready and nothing changing.
struct Rest {
    window: Duration,
    /// Requests per second by verb, leases apart; `None` when the operator has no request
    /// counter.
    requests_by_verb: Option<BTreeMap<String, f64>>,
    /// Its writes per second (every write verb), leases apart.
    writes_per_s: Option<f64>,
    lease_writes_per_s: Option<f64>,
    /// Writes the audit log attributes to the operator, `verb resource` → count.
    audited: BTreeMap<String, u64>,
    reconciles_per_s: f64,
    /// CPU time over wall time (1.0 is one core).
    cpu_share: f64,
}

impl Rest {
    fn audited_per_s(&self) -> f64 {
        self.audited.values().sum::<u64>() as f64 / self.window.as_secs_f64()
    }

    /// The figure the target is checked against: the larger of the operator's own count and
    /// the audit log's (which leaves Events out).
    fn writes_per_s(&self) -> f64 {
        self.writes_per_s.unwrap_or(0.0).max(self.audited_per_s())
    }
}

/// The operator's counters at one moment.
struct Counters {
    /// (verb, resource) → requests sent.
    requests: BTreeMap<(String, String), f64>,
    reconciles: f64,
}

async fn counters(operator: &Operator) -> Counters {
    let (_, text) = operator
        .get(&operator.metrics_addr, "/metrics")
        .await
        .expect("the operator serves /metrics");
    let requests = samples(&text, "model_operator_kube_requests_total")
        .into_iter()
        .map(|s| {
            let label = |name: &str| s.labels.get(name).cloned().unwrap_or_default();
            ((label("verb"), label("resource")), s.value)
        })
        .collect();
    let reconciles = samples(&text, "model_operator_reconcile_duration_seconds_count")
        .iter()
        .map(|s| s.value)
        .sum();
    Counters { requests, reconciles }
}

async fn at_rest(operator: &Operator, namespace: &str, window: Duration) -> Rest {
    let pid = operator.pid();
    let (before, cpu_before, audit_from) = (counters(operator).await, cpu_time(pid), audit_log_end());
    let opened = Instant::now();
    tokio::time::sleep(window).await;
    let (after, cpu_after, audit_to) = (counters(operator).await, cpu_time(pid), audit_log_end());
    let window = opened.elapsed();
    let seconds = window.as_secs_f64();

    let counted = !after.requests.is_empty();
    let mut by_verb: BTreeMap<String, f64> = BTreeMap::new();
    let (mut writes, mut lease_writes) = (0.0, 0.0);
    for ((verb, resource), value) in &after.requests {
        let sent = value - before.requests.get(&(verb.clone(), resource.clone())).unwrap_or(&0.0);
        let writing = WRITE_VERBS.contains(&verb.as_str());
        if resource == "leases" {
            lease_writes += if writing { sent } else { 0.0 };
            continue;
        }
        *by_verb.entry(verb.clone()).or_default() += sent / seconds;
        writes += if writing { sent } else { 0.0 };
    }
    Rest {
        window,
        requests_by_verb: counted.then_some(by_verb),
        writes_per_s: counted.then_some(writes / seconds),
        lease_writes_per_s: counted.then_some(lease_writes / seconds),
        audited: audited_writes(namespace, audit_from, audit_to),
        reconciles_per_s: (after.reconciles - before.reconciles) / seconds,
        cpu_share: (cpu_after - cpu_before).as_secs_f64() / seconds,
    }
}

/// Where a phase's time went until every child was written: CPU by process, and the operator's
/// requests per model by verb and resource (from `before`, or from its start).
async fn spent_on_children(
    phase: &str,
    models: usize,
    cpu_from: &CpuReading,
    before: Option<&Counters>,
    operator: &Operator,
) {
    let cpu = CpuReading::now(Some(operator.pid())).since(cpu_from);
    let after = counters(operator).await;
    let per_model: Vec<String> = after
        .requests
        .iter()
        .filter(|((_, resource), _)| resource != "leases")
        .filter_map(|(key, value)| {
            let sent = value - before.and_then(|b| b.requests.get(key)).unwrap_or(&0.0);
            // The caches' own lists and watches, a few in all, would print as 0.00.
            let each = sent / models as f64;
            (each >= 0.005).then(|| format!("{} {} {each:.2}", key.0, key.1))
        })
        .collect();
    let reconciles = after.reconciles - before.map_or(0.0, |b| b.reconciles);
    println!("{phase}: CPU while the children were written: {cpu}");
    println!(
        "{phase}: per model until then: {:.2} reconciles; requests {}",
        reconciles / models as f64,
        per_model.join(", ")
    );
}

/// Changes one model's environment; how long until its Deployment's pods are to have it.
async fn change_one_model(client: &Client, namespace: &str, model: usize, within: Duration) -> Duration {
    const VARIABLE: &str = "SCALE_BENCH_CHANGE";
    let name = mix::name(model);
    let models: Api<ModelDeployment> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"spec": {"env": [{"name": VARIABLE, "value": "1"}]}});
    let started = Instant::now();
    models
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("changing {name}: {e}"));
    loop {
        let deployment = deployments.get(&name).await.ok();
        let containers = deployment
            .and_then(|d| d.spec?.template.spec)
            .map(|pod| pod.containers)
            .unwrap_or_default();
        if containers
            .iter()
            .any(|c| c.env.iter().flatten().any(|e| e.name == VARIABLE))
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{name}'s Deployment never got the change");
        // Fine enough for a figure in tens of milliseconds, light on the API server.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn report(models: usize, limit: &Throughput, burst: &BurstRun, backlog: &BacklogRun) -> Vec<String> {
    let rate = |took: Duration| Throughput::rate(models, took);
    let ratio = |took: Duration, limit: Duration| limit.as_secs_f64() / took.as_secs_f64().max(1e-3);
    println!();
    println!("model scale: N = {models} ({})", mix::describe(models));
    println!("{:<28} {:>10} {:>10} {:>10}", "", "limit", "backlog", "burst");
    let row =
        |label: &str, cells: [String; 3]| println!("{label:<28} {:>10} {:>10} {:>10}", cells[0], cells[1], cells[2]);
    let seconds = |d: Duration| format!("{:.1}", d.as_secs_f64());
    let per_s = |d: Duration| format!("{:.1}", rate(d));
    let share = |d: Duration, l: Duration| format!("{:.2}", ratio(d, l));
    let (l, b, u) = (limit, &backlog.throughput, &burst.throughput);
    row(
        "every child written (s)",
        [seconds(l.children), seconds(b.children), seconds(u.children)],
    );
    row("  models/s", [per_s(l.children), per_s(b.children), per_s(u.children)]);
    row(
        "  ratio to the limit",
        [
            "1.00".into(),
            share(b.children, l.children),
            share(u.children, l.children),
        ],
    );
    row(
        "every model Ready (s) ¹",
        [seconds(l.ready), seconds(b.ready), seconds(u.ready)],
    );
    row("  models/s", [per_s(l.ready), per_s(b.ready), per_s(u.ready)]);
    row(
        "  ratio to the limit",
        ["1.00".into(), share(b.ready, l.ready), share(u.ready, l.ready)],
    );
    println!(
        "¹ for the limit: every Deployment available. Burst: the {models} models themselves created in {:.1?}",
        burst.models_created
    );

    let per_model_kib = (burst.at_rest_kib as f64 - burst.empty_kib as f64) / models as f64;
    println!(
        "memory (burst operator): RSS {:.1} MiB empty, {:.1} MiB after the burst, {:.1} MiB at rest, peak {:.1} MiB; \
         {per_model_kib:.1} KiB per model at rest above empty",
        mib(burst.empty_kib),
        mib(burst.after_burst_kib),
        mib(burst.at_rest_kib),
        mib(burst.peak_kib),
    );
    println!(
        "memory (backlog operator): RSS {:.1} MiB with every model Ready, peak {:.1} MiB",
        mib(backlog.rss_kib),
        mib(backlog.peak_kib)
    );

    let rest = &burst.rest;
    let by_verb = match &rest.requests_by_verb {
        Some(verbs) => verbs
            .iter()
            .map(|(verb, per_s)| format!("{verb} {per_s:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
        None => "n/a (the operator has no model_operator_kube_requests_total)".into(),
    };
    let or_na = |value: Option<f64>| value.map_or("n/a".into(), |v| format!("{v:.3}"));
    println!("at rest for {:.0?}:", rest.window);
    println!("  operator requests/s by verb, leases apart: {by_verb}");
    println!(
        "  operator writes/s: {} by its own count, {:.3} by the audit log ({:?}); lease writes/s {}",
        or_na(rest.writes_per_s),
        rest.audited_per_s(),
        rest.audited,
        or_na(rest.lease_writes_per_s),
    );
    println!(
        "  reconciles/s {:.2}, CPU {:.2} % of one core",
        rest.reconciles_per_s,
        rest.cpu_share * 100.0
    );
    println!(
        "change of one model among {models}: its Deployment updated in {:.0?}",
        burst.change
    );

    let mut missed = Vec::new();
    let mut check = |met: bool, what: String| {
        println!("target {}: {what}", if met { "met" } else { "MISSED" });
        if !met {
            missed.push(what);
        }
    };
    check(
        rest.writes_per_s() < TARGET_REST_WRITES_PER_S,
        format!(
            "writes at rest {:.3}/s < {TARGET_REST_WRITES_PER_S}/s",
            rest.writes_per_s()
        ),
    );
    check(
        mib(burst.at_rest_kib) <= TARGET_RSS_MIB,
        format!("RSS at rest {:.1} MiB <= {TARGET_RSS_MIB} MiB", mib(burst.at_rest_kib)),
    );
    for (phase, took) in [("backlog", b.children), ("burst", u.children)] {
        check(
            ratio(took, l.children) >= TARGET_SHARE_OF_LIMIT,
            format!(
                "{phase} children written at {:.2} of the limit's models/s >= {TARGET_SHARE_OF_LIMIT}",
                ratio(took, l.children)
            ),
        );
    }
    missed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let models = setting("SCALE_MODELS", DEFAULT_MODELS as u64) as usize;
    let rest_for = Duration::from_secs(setting("SCALE_REST_SECONDS", DEFAULT_REST_SECONDS));
    let client = cluster().await;
    room::more_service_addresses(&client).await;
    let nodes = room::nodes_for(&client, models).await;
    let expected = mix::children_by_kind(models);
    println!(
        "model scale: {models} models ({}); children {expected:?}",
        mix::describe(models)
    );

    let limit = limit_phase(&client, models, &expected).await;
    let burst = burst_phase(&client, models, &expected, rest_for).await;
    let backlog = backlog_phase(&client, models, &expected).await;
    let missed = report(models, &limit, &burst, &backlog);
    drop(nodes);
    if !missed.is_empty() {
        eprintln!("model scale: {} target(s) missed: {}", missed.len(), missed.join("; "));
        std::process::exit(1);
    }
}
