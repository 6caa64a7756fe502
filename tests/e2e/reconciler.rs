//! The reconciler against the local control plane: the real scheduler places GPU pods on kwok's
//! fake GPU nodes, the real garbage collector removes children, the real Job controller runs
//! validation Jobs.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::Job,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Event, Pod, Service},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
};
use model_operator::{
    api::{ModelDeployment, Phase, conditions},
    reconcile::{build::build, validate::check},
    vocabulary::OperatorImages,
};
use serde_json::Value;

use crate::support::{Operator, TestNamespace, cluster, eventually, example};

const SETTLE: Duration = Duration::from_secs(90);

async fn model(ns: &TestNamespace, name: &str) -> Option<ModelDeployment> {
    ns.api::<ModelDeployment>().get_opt(name).await.ok().flatten()
}

fn condition_of(model: &ModelDeployment, type_: &str) -> Option<(String, String, String)> {
    let c = model.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_for_phase(ns: &TestNamespace, name: &str, phase: Phase) -> ModelDeployment {
    eventually(
        SETTLE,
        &format!("md/{name} in {ns} is {phase}", ns = ns.name),
        || async {
            model(ns, name)
                .await
                .filter(|m| m.status.as_ref().and_then(|s| s.phase) == Some(phase))
        },
    )
    .await
}

async fn serving_pods(ns: &TestNamespace, name: &str) -> Vec<Pod> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/name={name},app.kubernetes.io/component=model-server"
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// What `render` would build for an example, in the test's namespace.
fn rendered(yaml: &str, namespace: &str) -> model_operator::reconcile::build::Desired {
    let mut object: Value = serde_yaml_ng::from_str(yaml).unwrap();
    object["metadata"]["namespace"] = Value::String(namespace.to_owned());
    build(&check(&object, &OperatorImages::default()).expect("examples are valid"))
}

#[tokio::test]
async fn examples_deploy_their_children_on_matching_gpu_nodes() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-examples").await;
    let operator = Operator::start(&ns.name, "examples");

    let examples = [
        ("dummy-model.yaml", "dummy-model", None),
        ("custom-model.yaml", "custom-model", None),
        ("triton-gpu-autoscaling.yaml", "resnet50-triton", Some("gpu-a100-")),
        ("torchserve-mig.yaml", "bert-torchserve", Some("gpu-mig-0")),
        ("time-sliced-t4.yaml", "sentiment-t4", Some("gpu-t4-0")),
    ];
    for (file, _, _) in &examples {
        ns.apply_model(&example(file))
            .await
            .unwrap_or_else(|e| panic!("{file} is accepted by the API server: {e}"));
    }

    for (file, name, node_prefix) in &examples {
        let ready = wait_for_phase(&ns, name, Phase::Ready).await;
        let status = ready.status.as_ref().unwrap();
        for type_ in conditions::ALL_TYPES {
            assert_eq!(
                condition_of(&ready, type_).map(|c| c.0).as_deref(),
                Some("True"),
                "{file}: {type_} in {status:#?}"
            );
        }
        assert_eq!(status.observed_generation, ready.metadata.generation, "{file}");
        assert!(
            status
                .endpoint
                .as_deref()
                .unwrap()
                .contains(&format!("{name}-service.{}.svc:", ns.name))
        );

        // The children carry exactly what `render` prints for the same file.
        let desired = rendered(&example(file), &ns.name);
        let deployment = ns.api::<Deployment>().get(name).await.unwrap();
        let want = desired
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        let have = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(have.containers[0].image, want.containers[0].image, "{file}");
        assert_eq!(have.containers[0].resources, want.containers[0].resources, "{file}");
        assert_eq!(have.containers[0].args, want.containers[0].args, "{file}");
        assert_eq!(have.tolerations, want.tolerations, "{file}");
        let owner = &deployment.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ModelDeployment", *name, Some(true))
        );
        let labels = deployment.labels();
        assert_eq!(
            labels.get("model").map(String::as_str),
            Some(*name),
            "the original's label"
        );
        assert_eq!(
            labels.get("app.kubernetes.io/managed-by").map(String::as_str),
            Some("model-operator")
        );
        let service = ns.api::<Service>().get(&format!("{name}-service")).await.unwrap();
        assert_eq!(
            service.spec.as_ref().unwrap().ports,
            desired.service.spec.as_ref().unwrap().ports,
            "{file}"
        );
        assert_eq!(
            ns.api::<HorizontalPodAutoscaler>()
                .get_opt(name)
                .await
                .unwrap()
                .is_some(),
            desired.hpa.is_some(),
            "{file}"
        );

        // The real scheduler put GPU replicas only on nodes with the right GPUs, and CPU-only
        // models on the one node without the GPU taint.
        let pods = serving_pods(&ns, name).await;
        assert!(!pods.is_empty(), "{file} has serving pods");
        for pod in &pods {
            let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap_or_default();
            match node_prefix {
                Some(prefix) => assert!(node.starts_with(prefix), "{file}: pod on {node}, wanted {prefix}*"),
                None => assert_eq!(node, "cpu-0", "{file}: a model without GPUs runs on the CPU node"),
            }
        }
    }

    // TorchServe's generated configuration and custom-model's validation Job exist too.
    assert!(
        ns.api::<ConfigMap>()
            .get_opt("bert-torchserve-runtime-config")
            .await
            .unwrap()
            .is_some()
    );
    let jobs = ns.api::<Job>().list(&ListParams::default()).await.unwrap();
    let job_names: Vec<_> = jobs.items.iter().map(|j| j.name_any()).collect();
    for name in ["custom-model", "sentiment-t4"] {
        assert_eq!(
            job_names
                .iter()
                .filter(|n| n.starts_with(&format!("{name}-validate-")))
                .count(),
            1,
            "{job_names:?}"
        );
    }

    let (code, metrics) = operator
        .get(&operator.metrics_addr, "/metrics")
        .await
        .expect("metrics answer");
    assert_eq!(code, 200);
    assert!(metrics.contains("model_deployments_created_total 5"), "{metrics}");
    assert!(
        metrics.contains("model_validations_total{status=\"success\"} 2"),
        "{metrics}"
    );
    let (code, _) = operator.get(&operator.health_addr, "/readyz").await.unwrap();
    assert_eq!(code, 200, "ready after the caches synced");

    // Events tell the story of each transition.
    // Events are published after the status they tell of, so they may trail it a little.
    eventually(
        Duration::from_secs(30),
        "Events tell of validation and serving",
        || async {
            let events = ns.api::<Event>().list(&ListParams::default()).await.ok()?;
            let reasons: BTreeSet<_> = events.items.iter().filter_map(|e| e.reason.clone()).collect();
            (reasons.contains(conditions::reasons::SERVING)
                && reasons.contains(conditions::reasons::VALIDATION_SUCCEEDED))
            .then_some(())
        },
    )
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn too_many_gpus_report_the_numbers_while_pods_stay_pending() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-capacity").await;
    let _operator = Operator::start(&ns.name, "capacity");
    ns.apply_model(
        r#"
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: llm-huge}
spec:
  modelURI: https://models.example/llm.tar.gz
  runtime: triton
  gpu: {count: 9, products: [NVIDIA-A100-SXM4-80GB]}
"#,
    )
    .await
    .unwrap();

    let pending = wait_for_phase(&ns, "llm-huge", Phase::Pending).await;
    let (status, reason, message) = condition_of(&pending, conditions::GPU_CAPACITY).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", conditions::reasons::INSUFFICIENT_GPUS)
    );
    for part in [
        "needs 9 × nvidia.com/gpu",
        "room for 0",
        "gpu-a100-0 has",
        "gpu-a100-1 has",
        "of 8 free",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    let pods = eventually(SETTLE, "the replica's pod exists", || async {
        Some(serving_pods(&ns, "llm-huge").await).filter(|p| !p.is_empty())
    })
    .await;
    assert!(
        pods.iter().all(|p| p.spec.as_ref().unwrap().node_name.is_none()),
        "no node has 9 GPUs, so the pod stays Pending"
    );
    ns.delete().await;
}

#[tokio::test]
async fn invalid_specs_are_refused_by_the_api_server_naming_the_field() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-invalid").await;
    let cases = [
        ("runtime: onnx", "spec.runtime"),
        ("runtime: triton\n  gpu: {count: 0}", "spec.gpu.count"),
        ("runtime: triton\n  gpu: {sharing: mig}", "spec.gpu.migProfile"),
        (
            "runtime: triton\n  autoscale: true\n  autoscaling: {minReplicas: 5, maxReplicas: 2}",
            "spec.autoscaling.minReplicas",
        ),
        (
            "runtime: fastapi-pytorch\n  autoscaling: {metric: gpu-utilization}",
            "spec.autoscaling.metric",
        ),
    ];
    for (i, (fields, field)) in cases.iter().enumerate() {
        let yaml = format!(
            "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: bad-{i}}}\nspec:\n  modelURI: https://models.example/m.pt\n  {fields}\n"
        );
        let error = ns.apply_model(&yaml).await.expect_err(&format!("refused: {fields}"));
        assert!(error.to_string().contains(field), "{field} named in: {error}");
    }
    let error = ns
        .apply_model("apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {name: bad-uri}\nspec:\n  modelURI: ftp://models/m.pt\n  runtime: triton\n")
        .await
        .expect_err("ftp is refused");
    assert!(error.to_string().contains("spec.modelURI"), "{error}");
    ns.delete().await;
}

const VERSIONED: &str = r#"
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: sentiment}
spec:
  modelURI: https://models.example/sentiment.pt
  runtime: fastapi-pytorch
  version: "{version}"
  validateScript: validate.py
  env: [{name: KWOK_JOB_RESULT, value: "{result}"}]
"#;

fn versioned(version: &str, validation: &str) -> String {
    VERSIONED.replace("{version}", version).replace("{result}", validation)
}

#[tokio::test]
async fn a_version_rolls_out_after_validation_and_a_failed_one_keeps_the_old_serving() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-versions").await;
    let operator = Operator::start(&ns.name, "versions");

    ns.apply_model(&versioned("v1", "succeed")).await.unwrap();
    let v1 = wait_for_phase(&ns, "sentiment", Phase::Ready).await;
    assert_eq!(v1.status.unwrap().version.as_deref(), Some("v1"));

    ns.apply_model(&versioned("v2", "succeed")).await.unwrap();
    eventually(SETTLE, "v2 serves", || async {
        let m = model(&ns, "sentiment").await?;
        let s = m.status?;
        (s.version.as_deref() == Some("v2") && s.phase == Some(Phase::Ready)).then_some(())
    })
    .await;
    let template_version = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap()["mlops.sathvik.dev/version"]
            .clone()
    };
    assert_eq!(
        template_version(&ns.api::<Deployment>().get("sentiment").await.unwrap()),
        "v2"
    );

    // v3's validation fails: the Deployment keeps v2 and its replicas, the status says why.
    ns.apply_model(&versioned("v3", "fail")).await.unwrap();
    let failed = wait_for_phase(&ns, "sentiment", Phase::Failed).await;
    let status = failed.status.as_ref().unwrap();
    let (_, reason, message) = condition_of(&failed, conditions::VALIDATED).unwrap();
    assert_eq!(reason, conditions::reasons::VALIDATION_FAILED);
    assert!(
        message.contains("sentiment-validate-") && message.contains("v3"),
        "{message}"
    );
    assert!(
        status.message.as_deref().unwrap().contains("version v2 keeps serving"),
        "{status:#?}"
    );
    assert_eq!(status.version.as_deref(), Some("v2"));
    let deployment = ns.api::<Deployment>().get("sentiment").await.unwrap();
    assert_eq!(template_version(&deployment), "v2");
    assert_eq!(deployment.status.as_ref().unwrap().available_replicas, Some(1));

    let (_, metrics) = operator.get(&operator.metrics_addr, "/metrics").await.unwrap();
    for line in [
        "model_validations_total{status=\"started\"} 3",
        "model_validations_total{status=\"success\"} 2",
        "model_validations_total{status=\"failure\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    eventually(
        Duration::from_secs(30),
        "a Warning Event reports the failed validation",
        || async {
            let events = ns.api::<Event>().list(&ListParams::default()).await.ok()?;
            events
                .items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some(conditions::reasons::VALIDATION_FAILED)
                })
                .then_some(())
        },
    )
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn deleting_the_model_removes_every_child() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-delete").await;
    let _operator = Operator::start(&ns.name, "delete");
    ns.apply_model(&example("triton-gpu-autoscaling.yaml")).await.unwrap();
    wait_for_phase(&ns, "resnet50-triton", Phase::Ready).await;
    assert!(
        ns.api::<HorizontalPodAutoscaler>()
            .get_opt("resnet50-triton")
            .await
            .unwrap()
            .is_some()
    );

    ns.api::<ModelDeployment>()
        .delete("resnet50-triton", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(SETTLE, "the garbage collector removed every child", || async {
        let deployments = ns
            .api::<Deployment>()
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        let services = ns.api::<Service>().list(&ListParams::default()).await.ok()?.items.len();
        let hpas = ns
            .api::<HorizontalPodAutoscaler>()
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        let pods = serving_pods(&ns, "resnet50-triton").await.len();
        (deployments + services + hpas + pods == 0).then_some(())
    })
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn autoscale_off_removes_the_hpa_and_fixes_the_replicas() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-prune").await;
    let _operator = Operator::start(&ns.name, "prune");
    let autoscaled = example("triton-gpu-autoscaling.yaml");
    ns.apply_model(&autoscaled).await.unwrap();
    wait_for_phase(&ns, "resnet50-triton", Phase::Ready).await;
    assert!(
        ns.api::<HorizontalPodAutoscaler>()
            .get_opt("resnet50-triton")
            .await
            .unwrap()
            .is_some()
    );

    let fixed = autoscaled.replace("autoscale: true", "autoscale: false\n  replicas: 2");
    ns.apply_model(&fixed).await.unwrap();
    eventually(SETTLE, "the HPA is gone and two replicas are ready", || async {
        let hpa = ns
            .api::<HorizontalPodAutoscaler>()
            .get_opt("resnet50-triton")
            .await
            .ok()?;
        let m = model(&ns, "resnet50-triton").await?;
        (hpa.is_none() && m.status?.ready.as_deref() == Some("2/2")).then_some(())
    })
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn a_restarted_operator_converges_without_duplicates() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-restart").await;
    let mut first = Operator::start(&ns.name, "restart-1");
    for file in ["dummy-model.yaml", "custom-model.yaml", "torchserve-mig.yaml"] {
        ns.apply_model(&example(file)).await.unwrap();
    }
    // Kill it mid-way: as soon as it has created anything.
    eventually(SETTLE, "the first operator created a child", || async {
        let deployments = ns.api::<Deployment>().list(&ListParams::default()).await.ok()?;
        let jobs = ns.api::<Job>().list(&ListParams::default()).await.ok()?;
        (!deployments.items.is_empty() || !jobs.items.is_empty()).then_some(())
    })
    .await;
    first.kill();

    let _second = Operator::start(&ns.name, "restart-2");
    for name in ["dummy-model", "custom-model", "bert-torchserve"] {
        wait_for_phase(&ns, name, Phase::Ready).await;
    }
    let deployments = ns.api::<Deployment>().list(&ListParams::default()).await.unwrap();
    let mut names: Vec<_> = deployments.items.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(names, ["bert-torchserve", "custom-model", "dummy-model"]);
    assert_eq!(
        ns.api::<Job>().list(&ListParams::default()).await.unwrap().items.len(),
        1,
        "one validation Job"
    );
    assert_eq!(
        ns.api::<Service>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    // Both operators built identical pod templates: each Deployment has a single ReplicaSet.
    let replica_sets = ns.api::<ReplicaSet>().list(&ListParams::default()).await.unwrap();
    assert_eq!(
        replica_sets.items.len(),
        3,
        "one ReplicaSet per Deployment: {:?}",
        replica_sets.items.iter().map(|r| r.name_any()).collect::<Vec<_>>()
    );
    ns.delete().await;
}

#[tokio::test]
async fn a_missing_lease_namespace_is_one_error_naming_the_way_out() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-no-lease-ns").await;
    let missing = format!("{}-absent", ns.name);
    let operator = Operator::start_with_lease(&ns.name, "no-lease-ns", &missing, &[]);
    ns.apply_model(&example("dummy-model.yaml")).await.unwrap();
    // The 4 s lease renews every 1.3 s: a few attempts, each refused for the namespace.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let errors: Vec<Value> = operator
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR, not one per renewal: {errors:#?}");
    let message = errors[0]["fields"]["message"].as_str().unwrap_or_default();
    for way_out in [
        format!("namespace {missing} does not exist"),
        "--lease-namespace".to_owned(),
        "--disable-leader-election".to_owned(),
        "kubectl create namespace".to_owned(),
    ] {
        assert!(message.contains(&way_out), "the message names {way_out:?}: {message}");
    }
    let model = model(&ns, "dummy-model").await.expect("the model exists");
    assert_eq!(model.status, None, "a replica without the Lease never reconciles");
    ns.delete().await;
}

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-leader").await;
    let leases: Api<Lease> = ns.api();
    let holder = |leases: Api<Lease>| async move {
        leases
            .get_opt("model-operator-leader")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };

    let mut leader = Operator::start(&ns.name, "leader-a");
    eventually(SETTLE, "leader-a holds the Lease", || async {
        (holder(leases.clone()).await.as_deref() == Some("leader-a")).then_some(())
    })
    .await;
    let standby = Operator::start(&ns.name, "standby-b");
    eventually(SETTLE, "standby-b's caches are synced", || async {
        let (code, _) = standby.get(&standby.health_addr, "/readyz").await?;
        (code == 200).then_some(())
    })
    .await;

    ns.apply_model(&example("dummy-model.yaml")).await.unwrap();
    wait_for_phase(&ns, "dummy-model", Phase::Ready).await;
    let reconciles = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("model_operator_reconcile_duration_seconds_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let (_, standby_metrics) = standby.get(&standby.metrics_addr, "/metrics").await.unwrap();
    assert_eq!(
        reconciles(&standby_metrics),
        0,
        "the standby reconciles nothing: {standby_metrics}"
    );
    assert!(standby_metrics.contains("model_operator_leader 0"));
    let (_, leader_metrics) = leader.get(&leader.metrics_addr, "/metrics").await.unwrap();
    assert!(reconciles(&leader_metrics) > 0 && leader_metrics.contains("model_operator_leader 1"));

    // The leader dies without stepping down; the standby takes over once the Lease expires and
    // acts on a change made while nobody led.
    leader.kill();
    ns.apply_model(&example("dummy-model.yaml").replace("version: v1", "version: v2"))
        .await
        .unwrap();
    eventually(SETTLE, "standby-b holds the Lease", || async {
        (holder(leases.clone()).await.as_deref() == Some("standby-b")).then_some(())
    })
    .await;
    eventually(SETTLE, "standby-b reconciled the change", || async {
        let m = model(&ns, "dummy-model").await?;
        (m.status?.observed_generation == m.metadata.generation).then_some(())
    })
    .await;
    let (_, standby_metrics) = standby.get(&standby.metrics_addr, "/metrics").await.unwrap();
    assert!(reconciles(&standby_metrics) > 0, "{standby_metrics}");
    ns.delete().await;
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_and_releases_the_lease() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-sigterm").await;
    let mut operator = Operator::start(&ns.name, "graceful");
    let leases: Api<Lease> = ns.api();
    eventually(SETTLE, "the operator holds the Lease", || async {
        leases
            .get_opt("model-operator-leader")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| h == "graceful")
    })
    .await;
    let status = operator.terminate().expect("exits within 15 s of SIGTERM");
    assert!(status.success(), "clean exit, log:\n{}", operator.log_text());
    let lease = leases.get("model-operator-leader").await.unwrap();
    assert_ne!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("graceful"),
        "a leader that stops steps down, so a standby need not wait out the Lease"
    );
    ns.delete().await;
}
