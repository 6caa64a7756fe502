//! Nothing of a deleted model stays in the operator: 1000 ModelDeployments are created and
//! deleted (in batches, since the local cluster's one CPU node runs 110 pods and its Service
//! range holds about 250), while one model stays throughout. Afterwards the operator's
//! `/metrics` holds no series of the deleted ones, the survivor's series are still there, and
//! the operator's resident memory returns to within 10 % of where it was before the first batch
//! (within SETTLE_WAIT: idle connections of the burst are closed after 90 s).
//! Needs the local cluster (`make bench-churn` starts it).

#[path = "../tests/support/mod.rs"]
mod servers;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::api::{DeleteParams, ListParams};
use model_operator::api::{ModelDeployment, Phase};
use support::{Operator, TestNamespace, cluster, eventually, memory_kib, rss_kib};

/// Models created and deleted in all (`BENCH_CHURN_MODELS` for fewer), and at once.
const MODELS: usize = 1000;
const BATCH: usize = 100;

fn models_to_churn() -> usize {
    std::env::var("BENCH_CHURN_MODELS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(MODELS)
        .div_ceil(BATCH)
        * BATCH
}
/// How much higher than at the start the operator's memory may end.
const RSS_TOLERANCE: f64 = 0.10;
/// The survivor, whose series must stay.
const SURVIVOR: &str = "survivor";
/// Requests to the API server in flight at once while creating or deleting a batch.
const REQUESTS_AT_ONCE: usize = 16;
/// How long after the churn the memory may take to come back: past the HTTP client's 90 s idle
/// timeout and the sweep's minute.
const SETTLE_WAIT: Duration = Duration::from_secs(180);
/// Long enough for a batch on two cores: 100 Deployments, ReplicaSets and pods.
const BATCH_WAIT: Duration = Duration::from_secs(300);

fn model_yaml(name: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: {name}}}\nspec:\n  modelURI: https://models.example/{name}.pt\n  runtime: fastapi-pytorch\n  resources:\n    requests: {{cpu: 10m, memory: 64Mi}}\n"
    )
}

/// The series of `/metrics` that carry a model's name label, for the names `matches` picks.
async fn model_series(operator: &Operator, matches: impl Fn(&str) -> bool) -> Vec<String> {
    let (_, text) = operator
        .get(&operator.metrics_addr, "/metrics")
        .await
        .expect("the operator serves /metrics");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split("name=\"")
                .skip(1)
                .any(|rest| rest.split('"').next().is_some_and(&matches))
        })
        .map(str::to_owned)
        .collect()
}

fn churned(name: &str) -> bool {
    name.starts_with("churn-")
}

async fn phase(ns: &TestNamespace, name: &str) -> Option<Phase> {
    ns.api::<ModelDeployment>().get_opt(name).await.ok()??.status?.phase
}

/// How many objects of kind `K` in the namespace belong to churned models (or are them).
async fn churned_of<K>(ns: &TestNamespace) -> Option<usize>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let list = ns.api::<K>().list_metadata(&ListParams::default()).await.ok()?;
    Some(
        list.items
            .iter()
            .filter(|object| object.metadata.name.as_deref().is_some_and(churned))
            .count(),
    )
}

/// What is left of the churned models in the namespace: ModelDeployments, Deployments and
/// Services (the garbage collector deletes the children after their owner).
async fn churned_objects(ns: &TestNamespace) -> Option<usize> {
    Some(
        churned_of::<ModelDeployment>(ns).await?
            + churned_of::<Deployment>(ns).await?
            + churned_of::<Service>(ns).await?,
    )
}

/// Creates `names` and waits until every one is Ready.
async fn create_all_ready(ns: &TestNamespace, names: &[String], what: &str) {
    let models = ns.api::<ModelDeployment>();
    stream::iter(names)
        .for_each_concurrent(REQUESTS_AT_ONCE, |name| async move {
            ns.apply_model(&model_yaml(name))
                .await
                .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        })
        .await;
    eventually(BATCH_WAIT, &format!("{what} is Ready"), || async {
        let list = models.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|m| churned(&m.metadata.name.clone().unwrap_or_default()))
            .filter(|m| m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready))
            .count();
        (ready == names.len()).then_some(())
    })
    .await;
}

/// Deletes `names` and waits until they and their children are gone.
async fn delete_all_gone(ns: &TestNamespace, names: &[String], what: &str) {
    let models = ns.api::<ModelDeployment>();
    stream::iter(names)
        .for_each_concurrent(REQUESTS_AT_ONCE, |name| {
            let models = &models;
            async move {
                models
                    .delete(name, &DeleteParams::background())
                    .await
                    .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
            }
        })
        .await;
    eventually(BATCH_WAIT, &format!("{what} and its children are gone"), || async {
        (churned_objects(ns).await == Some(0)).then_some(())
    })
    .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "bench-churn").await;
    let operator = Operator::start_with(&ns.name, "churn", &[]);
    let pid = operator.pid();
    ns.apply_model(&model_yaml(SURVIVOR))
        .await
        .expect("the survivor is accepted");
    eventually(BATCH_WAIT, "the survivor is Ready", || async {
        (phase(&ns, SURVIVOR).await == Some(Phase::Ready)).then_some(())
    })
    .await;
    // One model created and deleted before the start is measured: the code of every path the
    // churn takes (deletion, forgetting, garbage collection's events) is then paged in, and the
    // allocator holds its pools, so that what the end adds is state, not the binary's pages
    // touched for the first time.
    let warm_up = ["churn-warm-up".to_owned()];
    create_all_ready(&ns, &warm_up, "the warm-up model").await;
    delete_all_gone(&ns, &warm_up, "the warm-up model").await;
    // Settled: the caches hold the survivor's objects, the allocator its pools.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start_rss = rss_kib(pid);
    let start_parts = (memory_kib(pid, "RssAnon"), memory_kib(pid, "RssFile"));
    let mut peak_rss = start_rss;
    println!(
        "operator RSS at the start: {:.1} MiB ({:.1} MiB anonymous, {:.1} MiB of the binary's pages)",
        start_rss as f64 / 1024.0,
        start_parts.0 as f64 / 1024.0,
        start_parts.1 as f64 / 1024.0
    );

    let started = Instant::now();
    let models_total = models_to_churn();
    for batch in 0..models_total / BATCH {
        let names: Vec<String> = (0..BATCH).map(|i| format!("churn-{batch}-{i}")).collect();
        create_all_ready(&ns, &names, &format!("batch {batch}")).await;
        if batch == 0 {
            let series = model_series(&operator, churned).await;
            assert!(
                series.len() >= BATCH,
                "a live model has series of its own ({} found), so their absence later means something",
                series.len()
            );
        }
        peak_rss = peak_rss.max(rss_kib(pid));

        delete_all_gone(&ns, &names, &format!("batch {batch}")).await;
        println!(
            "batch {batch}: {} models created and deleted in {:.0?}, operator RSS {:.1} MiB",
            (batch + 1) * BATCH,
            started.elapsed(),
            rss_kib(pid) as f64 / 1024.0
        );
    }

    // The operator forgets a model when its watch sees the delete, and sweeps once a minute for
    // anything a reconcile in flight at that moment put back.
    let forgotten = Instant::now();
    eventually(
        Duration::from_secs(120),
        "no series of a deleted model is left",
        || async { model_series(&operator, churned).await.is_empty().then_some(()) },
    )
    .await;
    let forgotten = forgotten.elapsed();
    let survivor = model_series(&operator, |name| name == SURVIVOR).await;
    assert!(!survivor.is_empty(), "the survivor's series are still served");
    // At rest again. What a burst leaves behind for a while is not a model's: the HTTP client
    // keeps its idle connections to the API server (with their TLS and read buffers) for 90 s,
    // and the sweep forgets stragglers once a minute. So the memory is sampled until it is back
    // within the tolerance, or SETTLE_WAIT has passed.
    let at_rest = Instant::now();
    let limit_kib = (start_rss as f64 * (1.0 + RSS_TOLERANCE)) as u64;
    let mut end_rss = rss_kib(pid);
    while end_rss > limit_kib && at_rest.elapsed() < SETTLE_WAIT {
        tokio::time::sleep(Duration::from_secs(5)).await;
        end_rss = rss_kib(pid);
    }
    let settled_after = at_rest.elapsed();
    let end_parts = (memory_kib(pid, "RssAnon"), memory_kib(pid, "RssFile"));
    println!(
        "operator RSS at the end: {:.1} MiB anonymous, {:.1} MiB of the binary's pages",
        end_parts.0 as f64 / 1024.0,
        end_parts.1 as f64 / 1024.0
    );
    let growth = end_rss as f64 / start_rss as f64 - 1.0;
    println!(
        "model churn: {models_total} models created and deleted in {:.0?}; their series gone {:.1?} after the last \
         delete; operator RSS {:.1} MiB at the start, {:.1} MiB at the peak, {:.1} MiB at the end, {:.0?} after the \
         series were gone ({:+.1} %, limit {:+.0} %)",
        started.elapsed(),
        forgotten,
        start_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        end_rss as f64 / 1024.0,
        settled_after,
        growth * 100.0,
        RSS_TOLERANCE * 100.0,
    );
    ns.delete().await;
    assert!(
        growth <= RSS_TOLERANCE,
        "the operator ended {:.1} % above its starting memory",
        growth * 100.0
    );
}
