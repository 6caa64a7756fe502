//! Two replicas, and the leader frozen (SIGSTOP past its lease) or cut off from the API server
//! (its connections dropped by a proxy): the standby takes over within the lease and a retry
//! period, the old leader never writes again before it knows it leads, the leader gauge is never
//! 1 on both (sampled every 250 ms), and the audit log shows no write of the old leader after
//! the new one's first.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use kube::api::{Patch, PatchParams};
use model_operator::api::{ModelDeployment, Phase};
use serde_json::json;

use crate::{
    faults::{ApiProxy, AuditedWrite, LeaderSampler, audited_writes, signal},
    support::{Operator, TestNamespace, cluster, eventually},
};

/// The e2e operators' lease (tests/e2e/support.rs passes `--lease-duration 4s`), and the renew
/// deadline that follows from it (two thirds).
const LEASE: Duration = Duration::from_secs(4);
const RENEW_DEADLINE: Duration = Duration::from_millis(2667);
const MODELS: usize = 3;
/// How long the old leader stays frozen or cut off: well past its lease.
const AWAY: Duration = Duration::from_secs(10);

/// Each replica reaches the API server through its own proxy from its own loopback address, so
/// the audit log tells their writes apart from each other's and the test's (127.0.0.1).
const OLD_LEADER_SOURCE: &str = "127.0.0.2";
const STANDBY_SOURCE: &str = "127.0.0.3";

fn model_yaml(name: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: {name}}}\nspec:\n  modelURI: https://models.example/{name}.pt\n  runtime: fastapi-pytorch\n  resources:\n    requests: {{cpu: 10m, memory: 64Mi}}\n"
    )
}

struct Replicas {
    ns: TestNamespace,
    old_leader: Operator,
    standby: Operator,
    old_leader_proxy: ApiProxy,
    _standby_proxy: ApiProxy,
}

async fn leads(operator: &Operator) -> bool {
    operator
        .get(&operator.metrics_addr, "/metrics")
        .await
        .is_some_and(|(_, text)| text.lines().any(|line| line == "model_operator_leader 1"))
}

/// The first replica leads, the second stands by, and the models are Ready.
async fn two_replicas(prefix: &str) -> Replicas {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, prefix).await;
    let old_leader_proxy = ApiProxy::start(OLD_LEADER_SOURCE.parse::<IpAddr>().unwrap(), "old-leader").await;
    let standby_proxy = ApiProxy::start(STANDBY_SOURCE.parse::<IpAddr>().unwrap(), "standby").await;
    let start = |identity: &str, proxy: &ApiProxy| {
        Operator::start_with_env(
            &ns.name,
            identity,
            &ns.name,
            &[],
            &[("KUBECONFIG", proxy.kubeconfig.as_os_str())],
        )
    };
    let old_leader = start("replica-a", &old_leader_proxy);
    eventually(Duration::from_secs(30), "replica-a leads", || async {
        leads(&old_leader).await.then_some(())
    })
    .await;
    let standby = start("replica-b", &standby_proxy);
    for i in 0..MODELS {
        ns.apply_model(&model_yaml(&format!("model-{i}"))).await.unwrap();
    }
    all_ready(&ns, Duration::from_secs(90)).await;
    Replicas {
        ns,
        old_leader,
        standby,
        old_leader_proxy,
        _standby_proxy: standby_proxy,
    }
}

async fn all_ready(ns: &TestNamespace, within: Duration) -> Duration {
    let started = Instant::now();
    eventually(within, "every model is Ready", || async {
        let list = ns.api::<ModelDeployment>().list(&Default::default()).await.ok()?;
        (list.items.len() == MODELS
            && list.items.iter().all(|m| {
                m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
                    && m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
            }))
        .then_some(())
    })
    .await;
    started.elapsed()
}

/// A spec change on every model: work for whichever replica leads (and, just before the
/// fault, reconciles in flight on the old leader).
async fn change_every_model(ns: &TestNamespace, round: usize) {
    for i in 0..MODELS {
        let patch = json!({"spec": {"env": [{"name": "CHAOS_ROUND", "value": round.to_string()}]}});
        ns.api::<ModelDeployment>()
            .patch(&format!("model-{i}"), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
}

/// What both fault cases check once the old leader is back: no sample with two leaders, and
/// every write of the old leader before the new leader's first.
fn check_one_writer_at_a_time(samples: &[(Duration, Vec<bool>)], writes: &[AuditedWrite], what: &str) {
    let both: Vec<_> = samples
        .iter()
        .filter(|(_, leading)| leading.iter().all(|l| *l))
        .collect();
    assert!(
        both.is_empty(),
        "{what}: the leader gauge was 1 on both replicas at {:?}",
        both.iter().map(|(at, _)| at).collect::<Vec<_>>()
    );
    assert!(
        samples.iter().any(|(_, leading)| leading.as_slice() == [false, true]),
        "{what}: the standby was seen leading"
    );
    let old: Vec<&AuditedWrite> = writes.iter().filter(|w| w.source == OLD_LEADER_SOURCE).collect();
    let new: Vec<&AuditedWrite> = writes.iter().filter(|w| w.source == STANDBY_SOURCE).collect();
    assert!(
        !old.is_empty(),
        "{what}: the old leader wrote while it led (else this proves nothing)"
    );
    let first_new = new
        .iter()
        .map(|w| w.received.as_str())
        .min()
        .unwrap_or_else(|| panic!("{what}: the new leader wrote"));
    let late: Vec<_> = old.iter().filter(|w| w.received.as_str() >= first_new).collect();
    assert!(
        late.is_empty(),
        "{what}: the old leader wrote after the new leader's first write at {first_new}: {late:#?}"
    );
}

async fn standby_takes_over(replicas: &Replicas, away_since: Instant, what: &str) -> Duration {
    eventually(Duration::from_secs(30), "the standby leads", || async {
        leads(&replicas.standby).await.then_some(())
    })
    .await;
    let took = away_since.elapsed();
    // The Lease must stay unchanged for its whole duration as the standby sees it, which it
    // looks at every retry period: the bound is the lease plus the renew period, and the
    // 250 ms sampling here and a loaded machine get a second more.
    let bound = LEASE + RENEW_DEADLINE + Duration::from_secs(1);
    assert!(
        took <= bound,
        "{what}: the standby took {took:?} to lead, more than {bound:?}"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_wakes_up_as_a_standby_and_never_writes_beside_the_new_one() {
    let replicas = two_replicas("chaos-frozen").await;
    let sampler = LeaderSampler::start(vec![
        replicas.old_leader.metrics_addr.clone(),
        replicas.standby.metrics_addr.clone(),
    ]);
    change_every_model(&replicas.ns, 1).await;
    let frozen = Instant::now();
    signal(replicas.old_leader.pid(), "STOP");
    let took = standby_takes_over(&replicas, frozen, "frozen leader").await;
    change_every_model(&replicas.ns, 2).await;
    let converged = all_ready(&replicas.ns, Duration::from_secs(60)).await;
    tokio::time::sleep(AWAY.saturating_sub(frozen.elapsed())).await;
    signal(replicas.old_leader.pid(), "CONT");
    // Awake with reconciles it had in flight; the new leader keeps writing meanwhile.
    change_every_model(&replicas.ns, 3).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    all_ready(&replicas.ns, Duration::from_secs(60)).await;
    let samples = sampler.stop().await;
    assert!(
        !leads(&replicas.old_leader).await,
        "the woken replica stands by while the new leader renews"
    );
    check_one_writer_at_a_time(&samples, &audited_writes(&replicas.ns.name), "frozen leader");
    println!(
        "chaos: leader frozen for {AWAY:?}: standby led after {took:.1?}, models converged {converged:.1?} later; \
         {} samples, never two leaders",
        samples.len()
    );
    replicas.ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_writing_before_the_standby_starts() {
    let replicas = two_replicas("chaos-partition").await;
    let sampler = LeaderSampler::start(vec![
        replicas.old_leader.metrics_addr.clone(),
        replicas.standby.metrics_addr.clone(),
    ]);
    change_every_model(&replicas.ns, 1).await;
    let cut = Instant::now();
    replicas.old_leader_proxy.cut();
    let took = standby_takes_over(&replicas, cut, "cut-off leader").await;
    change_every_model(&replicas.ns, 2).await;
    let converged = all_ready(&replicas.ns, Duration::from_secs(60)).await;
    tokio::time::sleep(AWAY.saturating_sub(cut.elapsed())).await;
    let connections_before_heal = replicas.old_leader_proxy.connections();
    replicas.old_leader_proxy.heal();
    change_every_model(&replicas.ns, 3).await;
    // Back on the network: it reconnects (reads) and finds the Lease taken.
    eventually(Duration::from_secs(30), "the old leader reconnects", || async {
        (replicas.old_leader_proxy.connections() > connections_before_heal).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    all_ready(&replicas.ns, Duration::from_secs(60)).await;
    let samples = sampler.stop().await;
    assert!(!leads(&replicas.old_leader).await, "the reconnected replica stands by");
    check_one_writer_at_a_time(&samples, &audited_writes(&replicas.ns.name), "cut-off leader");
    println!(
        "chaos: leader cut off for {AWAY:?}: standby led after {took:.1?}, models converged {converged:.1?} later; \
         {} samples, never two leaders",
        samples.len()
    );
    replicas.ns.delete().await;
}
