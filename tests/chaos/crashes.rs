//! The operator killed over and over while a large rollout is under way, and terminated in the
//! middle of a burst: afterwards every model is Ready with exactly one child of each kind it
//! should have, one ReplicaSet per Deployment (the template never churned), and no child
//! without its model.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        coordination::v1::Lease,
        core::v1::Service,
        networking::v1::{ServiceCIDR, ServiceCIDRSpec},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, PostParams},
};
use model_operator::api::{ModelDeployment, Phase};

use crate::{
    faults::{FakeNodes, Random, cpu_node, pods_gone, setting},
    support::{Operator, TestNamespace, cluster, eventually},
};

/// Requests to the API server in flight at once while applying the models.
const REQUESTS_AT_ONCE: usize = 16;
/// Short, so each crash costs little: a killed leader's Lease must run out before the next
/// process (same identity) may lead.
const LEASE: &str = "2s";

/// Every fifth model is validated first (a Job), every seventh autoscaled (an HPA).
fn model_yaml(i: u64) -> String {
    let mut yaml = format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: {}}}\nspec:\n  modelURI: https://models.example/m{i}.pt\n  runtime: fastapi-pytorch\n  resources:\n    requests: {{cpu: 10m, memory: 64Mi}}\n",
        model_name(i)
    );
    if validated(i) {
        yaml.push_str("  validateScript: validate.py\n");
    }
    if autoscaled(i) {
        yaml.push_str("  autoscale: true\n  autoscaling: {minReplicas: 1, maxReplicas: 2, metric: cpu, target: 70}\n");
    }
    yaml
}

fn model_name(i: u64) -> String {
    format!("m-{i}")
}

fn validated(i: u64) -> bool {
    i.is_multiple_of(5)
}

fn autoscaled(i: u64) -> bool {
    i.is_multiple_of(7)
}

/// The local cluster's Service range holds about 250 Services; a rollout of hundreds of models
/// needs more. Created once, left in place (it is the cluster's, like its nodes).
async fn more_service_addresses(client: &kube::Client) {
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    let extra = ServiceCIDR {
        metadata: ObjectMeta {
            name: Some("chaos-tier".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(vec!["10.0.16.0/20".into()]),
        }),
        status: None,
    };
    match cidrs.create(&PostParams::default(), &extra).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("creating the ServiceCIDR: {error}"),
    }
}

/// Objects of kind `K` in the namespace, by the UID of the ModelDeployment (or other owner)
/// that controls them; objects with no controller under the key "".
async fn by_owner<K>(ns: &TestNamespace) -> BTreeMap<String, Vec<String>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let list = ns.api::<K>().list_metadata(&ListParams::default()).await.unwrap();
    for object in list.items {
        let owner = object
            .metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid)
            .unwrap_or_default();
        owners
            .entry(owner)
            .or_default()
            .push(object.metadata.name.unwrap_or_default());
    }
    owners
}

/// Every model Ready at its generation.
async fn every_model_ready(ns: &TestNamespace, models: u64) -> bool {
    let Ok(list) = ns.api::<ModelDeployment>().list(&ListParams::default()).await else {
        return false;
    };
    list.items.len() as u64 == models
        && list.items.iter().all(|m| {
            let status = m.status.as_ref();
            status.and_then(|s| s.phase) == Some(Phase::Ready)
                && status.and_then(|s| s.observed_generation) == m.metadata.generation
        })
}

/// Exactly one child of each kind each model should have, one ReplicaSet per Deployment, and
/// no child whose owner is not one of the models.
async fn check_children(ns: &TestNamespace, models: u64) {
    let list = ns.api::<ModelDeployment>().list(&ListParams::default()).await.unwrap();
    let uids: BTreeMap<String, u64> = list
        .items
        .iter()
        .map(|m| {
            let i = m.name_any().trim_start_matches("m-").parse().unwrap();
            (m.uid().unwrap(), i)
        })
        .collect();
    assert_eq!(uids.len() as u64, models);
    for (kind, owners, should_have) in [
        (
            "Deployment",
            by_owner::<Deployment>(ns).await,
            (|_| true) as fn(u64) -> bool,
        ),
        ("Service", by_owner::<Service>(ns).await, |_| true),
        (
            "HorizontalPodAutoscaler",
            by_owner::<HorizontalPodAutoscaler>(ns).await,
            autoscaled,
        ),
        ("validation Job", by_owner::<Job>(ns).await, validated),
    ] {
        for (owner, names) in &owners {
            assert!(
                uids.contains_key(owner),
                "{kind}s {names:?} belong to no model (owner {owner:?})"
            );
        }
        for (uid, i) in &uids {
            let count = owners.get(uid).map_or(0, Vec::len);
            let expected = usize::from(should_have(*i));
            assert_eq!(
                count,
                expected,
                "{} has {count} {kind}s: {:?}",
                model_name(*i),
                owners.get(uid)
            );
        }
    }
    let deployments: BTreeSet<String> = ns
        .api::<Deployment>()
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|d| d.metadata.uid)
        .collect();
    let replica_sets = by_owner::<ReplicaSet>(ns).await;
    for uid in &deployments {
        let sets = replica_sets.get(uid).map_or(0, Vec::len);
        assert_eq!(sets, 1, "a Deployment has {sets} ReplicaSets: its template churned");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_crashes_during_a_rollout_leave_one_child_of_each_kind_per_model() {
    let models = setting("CHAOS_MODELS", 200);
    let kills = setting("CHAOS_KILLS", 20);
    let mut random = Random::from_env();
    let client = cluster().await;
    more_service_addresses(&client).await;
    // cpu-0 runs 110 pods; each model has one, a validated one a Job's pod too.
    let extra = (models as usize * 6 / 5).div_ceil(100);
    let nodes = FakeNodes::create(&client, (0..extra).map(cpu_node).collect()).await;
    let ns = TestNamespace::create(&client, "chaos-crashes").await;

    let started = Instant::now();
    let rollout = {
        let ns_name = ns.name.clone();
        let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns_name);
        tokio::spawn(async move {
            stream::iter(0..models)
                .for_each_concurrent(REQUESTS_AT_ONCE, |i| {
                    let api = api.clone();
                    async move {
                        let model: ModelDeployment = serde_yaml_ng::from_str(&model_yaml(i)).unwrap();
                        api.create(&PostParams::default(), &model)
                            .await
                            .unwrap_or_else(|e| panic!("creating {}: {e}", model_name(i)));
                    }
                })
                .await;
        })
    };
    let mut operator = Operator::start_with(&ns.name, "chaos-replica", &["--lease-duration", LEASE]);
    for _ in 0..kills {
        // Some kills land while the new process still waits out the dead one's Lease, most
        // while it writes.
        tokio::time::sleep(random.between(Duration::from_millis(500), Duration::from_millis(5000))).await;
        operator.kill();
        operator = Operator::start_with(&ns.name, "chaos-replica", &["--lease-duration", LEASE]);
    }
    let last_crash = Instant::now();
    rollout.await.expect("every model is created");
    eventually(Duration::from_secs(300), "every model is Ready", || async {
        every_model_ready(&ns, models).await.then_some(())
    })
    .await;
    let converged = last_crash.elapsed();
    check_children(&ns, models).await;
    println!(
        "chaos: {kills} SIGKILLs during a rollout of {models} models over {:.1?}: all Ready {converged:.1?} after the \
         last restart, one child of each kind per model, one ReplicaSet per Deployment",
        last_crash - started
    );
    drop(operator);
    let namespace = ns.name.clone();
    ns.delete().await;
    pods_gone(&client, &namespace).await;
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_a_burst_finishes_within_the_grace_period_and_releases_the_lease() {
    let models = 40;
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "chaos-sigterm").await;
    let mut operator = Operator::start(&ns.name, "first");
    eventually(Duration::from_secs(30), "the first replica leads", || async {
        let (_, text) = operator.get(&operator.metrics_addr, "/metrics").await?;
        text.lines().any(|line| line == "model_operator_leader 1").then_some(())
    })
    .await;
    stream::iter(0..models)
        .for_each_concurrent(REQUESTS_AT_ONCE, |i| {
            let ns = &ns;
            async move {
                ns.apply_model(&model_yaml(i)).await.unwrap();
            }
        })
        .await;
    // In the middle of the burst its reconciles cause.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let terminated = Instant::now();
    let status = operator.terminate().expect("the operator exits after SIGTERM");
    let exited_after = terminated.elapsed();
    assert!(status.success(), "a graceful exit: {status}");
    // The grace period is 5 s; the election's release and the servers' shutdown come after.
    assert!(exited_after < Duration::from_secs(10), "exited after {exited_after:?}");

    let lease = ns.api::<Lease>().get("model-operator-leader").await.unwrap();
    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert!(holder.is_empty(), "the Lease is released, not held by {holder:?}");

    // The next replica leads at once (no lease to wait out) and finishes the burst.
    let next = Operator::start(&ns.name, "second");
    let took_over = Instant::now();
    eventually(Duration::from_secs(3), "the next replica leads at once", || async {
        let (_, text) = next.get(&next.metrics_addr, "/metrics").await?;
        text.lines().any(|line| line == "model_operator_leader 1").then_some(())
    })
    .await;
    let led_after = took_over.elapsed();
    eventually(Duration::from_secs(180), "every model is Ready", || async {
        every_model_ready(&ns, models).await.then_some(())
    })
    .await;
    check_children(&ns, models).await;
    println!(
        "chaos: SIGTERM during a burst of {models} models: exited in {exited_after:.1?}, the Lease released; the \
         next replica led in {led_after:.1?} and every model was Ready {:.1?} after it started",
        took_over.elapsed()
    );
    ns.delete().await;
}
