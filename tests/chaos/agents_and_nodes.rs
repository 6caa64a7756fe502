//! Node agents and GPU nodes lost under a running operator (issue 14). A metric the operator
//! cannot read fresh must be absent, never the last one it saw: the HPA then holds its scale,
//! where a stale or made-up value would move it. A GPU node that goes away takes its replicas'
//! GPUs with it: the model's `GPUCapacity` and replica counts must say so, and the replacements
//! land where GPUs remain.

use std::{
    cell::Cell,
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{Node, Pod},
};
use kube::{Api, ResourceExt, api::ListParams};
use model_operator::api::{ModelDeployment, conditions};
use serde_json::json;

use crate::{
    faults::FakeNodes,
    gpu_rig::{API_SERVICE_TURN, MAX_REPLICAS, Rig, SCALE_WAIT, model_yaml},
    support::{Operator, TestNamespace, cluster, cluster_dir, eventually},
};

/// How long a lost agent's or GPU's pods must go unserved: past the operator's
/// `--sample-max-age` (5 s in the rig), so a cached sample would have shown, and past two of the
/// HPA's syncs, so the HPA has acted on the gap.
fn hold_window() -> Duration {
    let text = std::fs::read_to_string(cluster_dir().join("hpa-sync-period")).unwrap_or_default();
    let text = text.trim();
    let sync = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse().ok().map(Duration::from_millis)
    } else if let Some(s) = text.strip_suffix('s') {
        s.parse().ok().map(Duration::from_secs_f64)
    } else {
        None
    };
    // The controller manager's default when the cluster does not say.
    let sync = sync.unwrap_or(Duration::from_secs(15));
    (sync * 2).max(Duration::from_secs(7))
}

/// Samples the Deployment's replicas and the HPA's desired replicas every 250 ms until stopped,
/// and keeps every sample that is not `expected`.
struct ScaleWatch {
    moves: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScaleWatch {
    fn start(rig: &Rig, expected: i32) -> Self {
        let moves = Arc::new(Mutex::new(Vec::new()));
        let seen = moves.clone();
        let (deployments, hpas) = (rig.ns.api::<Deployment>(), rig.ns.api::<HorizontalPodAutoscaler>());
        let name = rig.model.to_owned();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            loop {
                let replicas = deployments.get(&name).await.ok().and_then(|d| d.spec?.replicas);
                let desired = hpas
                    .get(&name)
                    .await
                    .ok()
                    .and_then(|h| h.status)
                    .map(|s| s.desired_replicas);
                // A failed read is no move; only a value that is there and differs counts.
                if replicas.is_some_and(|r| r != expected) || desired.is_some_and(|d| d != expected) {
                    seen.lock().unwrap().push(format!(
                        "+{:.1} s: Deployment {replicas:?}, HPA desired {desired:?}",
                        started.elapsed().as_secs_f64()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self { moves, task }
    }

    fn stop(self) -> Vec<String> {
        self.task.abort();
        self.moves.lock().unwrap().clone()
    }
}

/// One fault on one node's GPUs, seen through the custom metrics API: from the fault until the
/// affected pods are served nothing, then a window where they must stay unserved while the
/// others keep their values, then the repair until they are served `fresh` (and never anything
/// else: the value from before the fault would be a stale one).
struct Fault<'a> {
    rig: &'a Rig,
    affected: &'a BTreeSet<String>,
    others: &'a BTreeSet<String>,
}

impl Fault<'_> {
    fn affected_in(&self, served: &[(String, String)]) -> Vec<(String, String)> {
        served
            .iter()
            .filter(|(pod, _)| self.affected.contains(pod))
            .cloned()
            .collect()
    }

    /// From the fault until no affected pod is served a value.
    async fn until_unserved(&self, what: &str) -> Duration {
        let started = Instant::now();
        eventually(
            Duration::from_secs(15),
            &format!("{what}: no value for {:?}", self.affected),
            || async {
                let served = self.rig.try_served_values().await.ok()?;
                self.affected_in(&served).is_empty().then_some(())
            },
        )
        .await;
        started.elapsed()
    }

    /// For the whole window: no affected pod is ever served a value (the list or the single-pod
    /// form), and the other pods still are.
    async fn hold_unserved(&self, what: &str, window: Duration) {
        let deadline = Instant::now() + window;
        let (mut answers, mut others_served) = (0, 0);
        let one_affected = self.affected.first().unwrap();
        while Instant::now() < deadline {
            if let Ok(served) = self.rig.try_served_values().await {
                answers += 1;
                let stale = self.affected_in(&served);
                assert!(stale.is_empty(), "{what}: served {stale:?} for the affected pods");
                let names: BTreeSet<String> = served.into_iter().map(|(pod, _)| pod).collect();
                if self.others.is_subset(&names) {
                    others_served += 1;
                }
            }
            let single = self.rig.get_raw(&self.rig.pods_metric_path(one_affected)).await;
            match single {
                Err(kube::Error::Api(ref status)) if status.code == 404 => {}
                // The API server in between may fail a request; that serves no value either.
                Err(_) => {}
                Ok(answer) => panic!("{what}: the single-pod form served {one_affected}: {answer}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            answers > 0,
            "{what}: the custom metrics API never answered in {window:?}"
        );
        if !self.others.is_empty() {
            assert!(
                others_served * 2 > answers,
                "{what}: the pods on other nodes ({:?}) were served in only {others_served} of {answers} answers",
                self.others
            );
        }
    }

    /// From the repair until every affected pod is served `fresh`; any other value is stale.
    async fn until_served(&self, what: &str, fresh: &str) -> Duration {
        let started = Instant::now();
        eventually(
            Duration::from_secs(30),
            &format!("{what}: {:?} served {fresh} again", self.affected),
            || async {
                let served = self.rig.try_served_values().await.ok()?;
                let affected = self.affected_in(&served);
                let stale: Vec<_> = affected.iter().filter(|(_, value)| value != fresh).collect();
                assert!(stale.is_empty(), "{what}: served {stale:?}, not the fresh {fresh}");
                (affected.len() == self.affected.len()).then_some(())
            },
        )
        .await;
        started.elapsed()
    }
}

/// `llm` runs two replicas on the fake A100s at 48 % (the HPA's target is 50 %, within its
/// tolerance). One node's agent is SIGKILLed, later that node's NVML reports every GPU lost:
/// each time the API serves nothing for the pods on that node, the other node's pod keeps its
/// value, and the HPA keeps two replicas. Were the lost pods served a stale 48 the HPA would
/// hold as well, so the values are checked directly; were they served 0 it would scale in. When
/// the agent or NVML is back, the pods are served the value their GPUs now read.
#[tokio::test]
async fn a_lost_node_agent_or_failing_nvml_serves_no_value_and_the_hpa_holds() {
    let test_started = Instant::now();
    let _turn = API_SERVICE_TURN.lock().await;
    let mut rig = Rig::start("chaos-agents", 90).await;
    rig.ns
        .apply_model(&model_yaml())
        .await
        .expect("the ModelDeployment is accepted");
    // 90 % on one replica scales out to the maximum; 48 % on two then holds it there.
    eventually(SCALE_WAIT, "the HPA scales the Deployment out to 2", || async {
        (rig.deployment_replicas().await == Some(MAX_REPLICAS)).then_some(())
    })
    .await;
    rig.set_utilization(48);
    rig.wait_for_served_pods(MAX_REPLICAS as usize, "48").await;
    eventually(SCALE_WAIT, "the HPA reads gpu_utilization 48", || async {
        (rig.hpa_current_average().await.as_deref() == Some("48")).then_some(())
    })
    .await;

    // The scheduler usually spreads the two replicas; when it does not, both are affected and the
    // HPA gets no value at all, which it must hold through too.
    let pods = rig.running_pods().await;
    let node_of = |pod: &Pod| pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let lost_node = node_of(&pods[0]);
    let (affected, others): (Vec<&Pod>, Vec<&Pod>) = pods.iter().partition(|p| node_of(p) == lost_node);
    let affected: BTreeSet<String> = affected.into_iter().map(ResourceExt::name_any).collect();
    let others: BTreeSet<String> = others.into_iter().map(ResourceExt::name_any).collect();
    let index = rig.nodes.iter().position(|n| n.name == lost_node).unwrap();
    let window = hold_window();
    let watch = ScaleWatch::start(&rig, MAX_REPLICAS);

    // The agent killed; while it is down its GPUs move to 52 %, so a 48 after the restart would
    // be a value kept from before.
    rig.nodes[index].kill_agent();
    let fault = Fault {
        rig: &rig,
        affected: &affected,
        others: &others,
    };
    let what = format!("agent of {lost_node} killed");
    let gone = fault.until_unserved(&what).await;
    fault.hold_unserved(&what, window).await;
    rig.nodes[index].set_utilization(52);
    let restarted = Instant::now();
    rig.nodes[index].restart_agent();
    let fault = Fault {
        rig: &rig,
        affected: &affected,
        others: &others,
    };
    fault.until_served("agent restarted", "52").await;
    // From the restart, so the new process's start-up counts.
    let back = restarted.elapsed();
    println!(
        "chaos: node agent of {lost_node} killed → {} pod(s) served no value in {:.1} s (none for {:.0} s, 2 replicas held); restarted → fresh value back in {:.1} s",
        affected.len(),
        gone.as_secs_f64(),
        window.as_secs_f64(),
        back.as_secs_f64()
    );

    // NVML fails every call on the node's GPUs while the agent keeps running; when the GPUs read
    // again they read 44 %.
    rig.nodes[index].fail_gpus("gpuIsLost");
    let what = format!("NVML on {lost_node} failing");
    let gone = fault.until_unserved(&what).await;
    fault.hold_unserved(&what, window).await;
    rig.nodes[index].set_utilization(44);
    let back = fault.until_served("NVML back", "44").await;
    println!(
        "chaos: NVML on {lost_node} failing (gpuIsLost) → no value in {:.1} s (none for {:.0} s, 2 replicas held); NVML back → fresh value in {:.1} s",
        gone.as_secs_f64(),
        window.as_secs_f64(),
        back.as_secs_f64()
    );

    let moves = watch.stop();
    assert!(moves.is_empty(), "the HPA moved while values were missing: {moves:#?}");
    assert_eq!(
        rig.operator
            .get(&rig.operator.health_addr, "/readyz")
            .await
            .map(|(code, _)| code),
        Some(200),
        "the operator stays up and ready"
    );
    rig.teardown().await;
    println!(
        "chaos: agents and NVML case took {:.0} s",
        test_started.elapsed().as_secs_f64()
    );
}

/// The node case's own fake GPU nodes: a product no shared node has and a taint of their own, so
/// that only its model lands there and deleting them moves no other test's pods.
const NODE_PRODUCT: &str = "NVIDIA-L40S";
const NODE_TAINT: &str = "chaos.model-operator.dev/lost-gpu-nodes";
const NODES: usize = 4;
const GPUS_PER_NODE: u32 = 4;
const PLACED_MODEL: &str = "placed";
/// One replica per node (each takes a node's four GPUs), one node spare.
const PLACED_REPLICAS: usize = 3;

fn placed_model_yaml() -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata:
  name: {PLACED_MODEL}
spec:
  modelURI: s3://example-models/triton/placed/
  runtime: triton
  replicas: {PLACED_REPLICAS}
  gpu:
    count: {GPUS_PER_NODE}
    products: [{NODE_PRODUCT}]
  tolerations:
  - {{key: {NODE_TAINT}, operator: Exists, effect: NoSchedule}}
"
    )
}

/// A kwok node shaped as tests/cluster/nodes.yaml shapes the shared ones: kwok (managing every
/// node) makes it Ready and keeps the capacity written here.
fn gpu_node(index: usize) -> Node {
    let name = format!("chaos-l40s-{index}");
    let cidr = format!("10.244.{}.0/24", 200 + index);
    let resources = json!({"cpu": "48", "memory": "393216Mi", "pods": "110", "ephemeral-storage": "3800Gi",
                           "nvidia.com/gpu": GPUS_PER_NODE.to_string()});
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok", "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name, "node.kubernetes.io/instance-type": "g6e.12xlarge",
                "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": NODE_PRODUCT,
                "nvidia.com/gpu.memory": "46068", "nvidia.com/gpu.count": GPUS_PER_NODE.to_string(),
                "nvidia.com/gpu.replicas": "1", "nvidia.com/gpu.sharing-strategy": "none",
            },
        },
        "spec": {
            "podCIDR": cidr, "podCIDRs": [cidr],
            "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}, {"key": NODE_TAINT, "effect": "NoSchedule"}],
        },
        "status": {
            "addresses": [{"type": "InternalIP", "address": format!("10.1.0.{}", 200 + index)},
                          {"type": "Hostname", "address": name}],
            "capacity": resources, "allocatable": resources,
        },
    }))
    .unwrap()
}

/// The model's pods that are not being deleted, with the node each is bound to.
async fn placed_pods(ns: &TestNamespace) -> Vec<(String, Option<String>, Option<String>)> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={PLACED_MODEL}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let phase = p.status.as_ref().and_then(|s| s.phase.clone());
            (p.name_any(), node, phase)
        })
        .collect()
}

/// `(status, reason, message)` of the model's condition `type_`.
fn condition(model: &ModelDeployment, type_: &str) -> Option<(String, String, String)> {
    let found = model.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((found.status.clone(), found.reason.clone(), found.message.clone()))
}

/// Three replicas of four GPUs on four four-GPU nodes, one spare. Two of the nodes with a replica
/// are deleted at once: Kubernetes' pod garbage collector removes their pods (a node must stay
/// gone 40 s, checked every 20 s), one replacement runs on the spare node and the other finds no
/// node with room, and the model says so (`GPUCapacity` False, InsufficientGPUs; two ready
/// replicas, still Ready).
/// The nodes then come back: the waiting replica is placed on one and `GPUCapacity` turns True.
#[tokio::test]
async fn a_lost_gpu_node_moves_its_models_where_gpus_remain() {
    let test_started = Instant::now();
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "chaos-nodes").await;
    let nodes = FakeNodes::create(&client, (0..NODES).map(gpu_node).collect()).await;
    let mut operator = Operator::start(&ns.name, "nodes");
    ns.apply_model(&placed_model_yaml())
        .await
        .expect("the ModelDeployment is accepted");
    let models = ns.api::<ModelDeployment>();
    let capacity = || async {
        let model = models.get(PLACED_MODEL).await.ok()?;
        let ready = model.status.as_ref()?.ready_replicas;
        Some((condition(&model, conditions::GPU_CAPACITY)?, ready, model))
    };

    let placed = eventually(SCALE_WAIT, "three replicas run, one on each of three nodes", || async {
        let pods = placed_pods(&ns).await;
        let nodes: BTreeSet<String> = pods.iter().filter_map(|(_, node, _)| node.clone()).collect();
        let running = pods.iter().all(|(_, _, phase)| phase.as_deref() == Some("Running"));
        let ((status, _, _), ready, _) = capacity().await?;
        (pods.len() == PLACED_REPLICAS
            && nodes.len() == PLACED_REPLICAS
            && running
            && status == "True"
            && ready == Some(PLACED_REPLICAS as i32))
        .then_some(pods)
    })
    .await;
    let mut used: Vec<String> = placed.iter().filter_map(|(_, node, _)| node.clone()).collect();
    used.sort();
    let lost: Vec<String> = used[..2].to_vec();
    let spare = nodes.names().into_iter().find(|n| !used.contains(n)).unwrap();
    let before: BTreeSet<String> = placed.iter().map(|(pod, _, _)| pod.clone()).collect();

    let ((status, reason, message), ready, _) = capacity().await.unwrap();
    let said_before = format!("GPUCapacity {status} ({reason}): {message}; {ready:?} ready");
    let started = Instant::now();
    for name in &lost {
        nodes.delete(name).await;
    }
    // Until the garbage collector removes the lost nodes' pods, Kubernetes still counts them as
    // ready replicas; the waits note when the model's status first changes and when the pods
    // go, then wait for the end state.
    let status_followed: Cell<Option<Duration>> = Cell::new(None);
    let replacement_running: Cell<Option<Duration>> = Cell::new(None);
    let collected: Cell<Option<Duration>> = Cell::new(None);
    let (shortage, pending) = eventually(
        Duration::from_secs(150),
        "one replacement runs on the spare node, the other waits and GPUCapacity says why",
        || async {
            let ((status, reason, message), ready, model) = capacity().await?;
            let says = format!("GPUCapacity {status} ({reason}): {message}; {ready:?} ready");
            if status_followed.get().is_none() && says != said_before {
                status_followed.set(Some(started.elapsed()));
            }
            let pods = placed_pods(&ns).await;
            for (pod, node, _) in pods.iter().filter(|(pod, _, _)| !before.contains(pod)) {
                if let Some(node) = node {
                    assert!(
                        !lost.contains(node),
                        "the replacement {pod} was placed on the lost node {node}"
                    );
                }
            }
            let on_spare = pods.iter().any(|(pod, node, phase)| {
                !before.contains(pod) && node.as_deref() == Some(spare.as_str()) && phase.as_deref() == Some("Running")
            });
            if on_spare && replacement_running.get().is_none() {
                replacement_running.set(Some(started.elapsed()));
            }
            let pending: Vec<String> = pods
                .iter()
                .filter(|(_, node, _)| node.is_none())
                .map(|(pod, _, _)| pod.clone())
                .collect();
            let old_gone = pods
                .iter()
                .all(|(pod, node, _)| !before.contains(pod) || node.as_ref().is_some_and(|n| !lost.contains(n)));
            if old_gone && collected.get().is_none() {
                collected.set(Some(started.elapsed()));
            }
            (on_spare
                && old_gone
                && pending.len() == 1
                && status == "False"
                && reason == conditions::reasons::INSUFFICIENT_GPUS
                && ready == Some(PLACED_REPLICAS as i32 - 1))
            .then_some(((message, model), pending))
        },
    )
    .await;
    let shortage_at = started.elapsed();
    let (message, model) = shortage;
    for part in [
        format!("needs {GPUS_PER_NODE} × nvidia.com/gpu on {NODE_PRODUCT}"),
        "room for 0".into(),
        format!("{spare} has 0 of {GPUS_PER_NODE} free"),
    ] {
        assert!(message.contains(&part), "{part:?} in {message}");
    }
    let (ready, _, _) = condition(&model, conditions::READY).unwrap();
    assert_eq!(ready, "True", "two of three replicas still serve: {:#?}", model.status);
    let (_, available, _) = condition(&model, conditions::AVAILABLE).unwrap();
    assert_eq!(available, conditions::reasons::REDUCED_CAPACITY, "{:#?}", model.status);

    // The nodes rejoin: the waiting replica is placed on one of them.
    let rejoined = Instant::now();
    for name in &lost {
        nodes.recreate(name).await;
    }
    eventually(
        Duration::from_secs(60),
        "the waiting replica runs on a rejoined node and GPUCapacity is True",
        || async {
            let pods = placed_pods(&ns).await;
            let placed = pods.iter().find(|(pod, _, _)| *pod == pending[0])?;
            let on_rejoined =
                placed.1.as_ref().is_some_and(|n| lost.contains(n)) && placed.2.as_deref() == Some("Running");
            let ((status, _, _), ready, _) = capacity().await?;
            (on_rejoined && status == "True" && ready == Some(PLACED_REPLICAS as i32)).then_some(())
        },
    )
    .await;
    let recovered = rejoined.elapsed();
    let seconds =
        |at: &Cell<Option<Duration>>| at.get().map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!(
        "chaos: GPU nodes {lost:?} deleted under {PLACED_REPLICAS} replicas → the model's status first changed after {} (until then: {said_before}); their pods collected after {}; a replacement runs on {spare} after {}; GPUCapacity False (InsufficientGPUs), {}/{PLACED_REPLICAS} ready after {:.1} s; nodes back → {PLACED_REPLICAS}/{PLACED_REPLICAS} ready, GPUCapacity True in {:.1} s",
        seconds(&status_followed),
        seconds(&collected),
        seconds(&replacement_running),
        PLACED_REPLICAS - 1,
        shortage_at.as_secs_f64(),
        recovered.as_secs_f64()
    );

    operator.terminate();
    // The namespace's pods go while their nodes exist (kwok finishes their deletion), then the
    // nodes; a pod left on a deleted node would wait for the garbage collector.
    ns.delete().await;
    let pods: Api<Pod> = Api::all(client.clone());
    let names = nodes.names();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let left = pods.list(&ListParams::default()).await.map(|l| {
                l.items.iter().any(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some_and(|n| names.contains(n))
                })
            });
            if matches!(left, Ok(false)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    drop(nodes);
    println!(
        "chaos: GPU nodes case took {:.0} s",
        test_started.elapsed().as_secs_f64()
    );
}
