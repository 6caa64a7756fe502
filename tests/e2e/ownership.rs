//! Objects of someone else's are never written, adopted or deleted, and what the API server
//! refuses reaches the status: on the local control plane, with the real garbage collector and
//! the real ResourceQuota admission.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ResourceQuota, Service},
};
use kube::{
    ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use model_operator::api::{ModelDeployment, Phase, conditions, conditions::reasons};
use serde_json::json;

use crate::support::{Operator, TestNamespace, cluster, eventually, warnings};

const SETTLE: Duration = Duration::from_secs(90);

fn fastapi_model(name: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  modelURI: https://models.example.com/{name}.pt
  runtime: fastapi-pytorch
"
    )
}

/// The `Applied` condition's status, reason and message, once `check` accepts them.
async fn applied_becomes(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    check: impl Fn(&str, &str, &str) -> bool,
) -> (String, String, String) {
    eventually(SETTLE, what, || async {
        let model = ns.api::<ModelDeployment>().get_opt(name).await.ok()??;
        let c = model
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == conditions::APPLIED)?;
        check(&c.status, &c.reason, &c.message).then_some((c.status, c.reason, c.message))
    })
    .await
}

async fn phase_becomes(ns: &TestNamespace, name: &str, phase: Phase) {
    eventually(SETTLE, &format!("md/{name} is {phase}"), || async {
        let model = ns.api::<ModelDeployment>().get_opt(name).await.ok()??;
        (model.status?.phase == Some(phase)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_foreign_service_is_never_touched_and_the_model_proceeds_once_it_is_gone() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-foreign").await;
    let _operator = Operator::start(&ns.name, "foreign");
    let services = ns.api::<Service>();
    // The payments team's Service, whose name a ModelDeployment `payments` would give its own.
    let theirs: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "payments-service"},
        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 80, "targetPort": 8443}]},
    }))
    .unwrap();
    services
        .patch(
            "payments-service",
            &PatchParams::apply("payments-team"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();
    let before = services.get("payments-service").await.unwrap();

    ns.apply_model(&fastapi_model("payments")).await.unwrap();
    let (_, _, message) = applied_becomes(&ns, "payments", "Applied is NameTaken", |status, reason, _| {
        status == "False" && reason == reasons::NAME_TAKEN
    })
    .await;
    assert!(
        message.starts_with(&format!(
            "Service {}/payments-service already exists and belongs to no controller; written by payments-team",
            ns.name
        )),
        "{message}"
    );
    phase_becomes(&ns, "payments", Phase::Failed).await;
    assert!(
        ns.api::<Deployment>().get_opt("payments").await.unwrap().is_none(),
        "nothing is written for the model"
    );
    let after = services.get("payments-service").await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "their Service is untouched"
    );
    assert!(after.owner_references().is_empty());
    // The Event is published after the status is written, so it may trail it a little.
    eventually(
        Duration::from_secs(30),
        "a Warning Event says the name is taken",
        || async {
            warnings(&ns)
                .await
                .iter()
                .any(|w| w.starts_with("NameTaken:"))
                .then_some(())
        },
    )
    .await;

    // Deleting the model deletes nothing of theirs.
    ns.api::<ModelDeployment>()
        .delete("payments", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(SETTLE, "the model is gone", || async {
        ns.api::<ModelDeployment>()
            .get_opt("payments")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = services.get("payments-service").await.unwrap();
    assert_eq!(
        still.resource_version(),
        before.resource_version(),
        "garbage collection spared it"
    );

    // Applied again, and their Service retired: the model proceeds on its own.
    ns.apply_model(&fastapi_model("payments")).await.unwrap();
    applied_becomes(&ns, "payments", "NameTaken again", |_, reason, _| {
        reason == reasons::NAME_TAKEN
    })
    .await;
    services
        .delete("payments-service", &DeleteParams::default())
        .await
        .unwrap();
    phase_becomes(&ns, "payments", Phase::Ready).await;
    let model = ns.api::<ModelDeployment>().get("payments").await.unwrap();
    let ours = services.get("payments-service").await.unwrap();
    assert_eq!(
        ours.owner_references().first().map(|r| r.uid.clone()),
        model.uid(),
        "the new Service is the model's"
    );
    ns.delete().await;
}

#[tokio::test]
async fn a_child_the_api_server_refuses_is_reported_with_its_words_and_retried() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-refused").await;
    // No Service may be created in this namespace.
    let quota: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "no-services"},
        "spec": {"hard": {"services": "0"}},
    }))
    .unwrap();
    let quotas = ns.api::<ResourceQuota>();
    quotas
        .patch("no-services", &PatchParams::apply("e2e-test"), &Patch::Apply(&quota))
        .await
        .unwrap();
    // Quota admission enforces what the quota controller has counted.
    eventually(SETTLE, "the quota is in force", || async {
        let quota = quotas.get("no-services").await.ok()?;
        quota.status?.hard?.contains_key("services").then_some(())
    })
    .await;
    let operator = Operator::start(&ns.name, "refused");
    ns.apply_model(&fastapi_model("refused")).await.unwrap();
    let (_, _, message) = applied_becomes(&ns, "refused", "Applied is ChildRejected", |status, reason, _| {
        status == "False" && reason == reasons::CHILD_REJECTED
    })
    .await;
    assert!(
        message.starts_with("the API server refused Service refused-service:") && message.contains("exceeded quota"),
        "the API server's own words: {message}"
    );
    let status = ns
        .api::<ModelDeployment>()
        .get("refused")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        status.observed_generation,
        Some(1),
        "the status describes this generation"
    );
    let metrics = eventually(SETTLE, "the failure is counted by its reason", || async {
        let (_, text) = operator.get(&operator.metrics_addr, "/metrics").await?;
        text.lines()
            .any(|l| l.starts_with("model_operator_reconcile_errors_total{reason=\"ChildRejected\"}"))
            .then_some(text)
    })
    .await;
    assert!(
        !metrics.contains("reason=\"ApplyFailed\""),
        "a refusal is no transient failure"
    );

    // The quota lifted: the next retry (backing off from 5 s) goes through.
    quotas.delete("no-services", &DeleteParams::default()).await.unwrap();
    phase_becomes(&ns, "refused", Phase::Ready).await;
    ns.delete().await;
}
