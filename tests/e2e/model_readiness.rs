//! `Ready` means the model answers: the operator probes the real FastAPI runtime (`inference/`,
//! started with uvicorn on loopback, since the test cluster's pods have fake IPs) and the
//! ModelDeployment's status follows the model through down, loading, loaded and gone.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use model_operator::api::{ModelDeployment, Phase, conditions, conditions::reasons};

use crate::{
    servers::{TestServers, free_port, write_affine_model},
    support::{Operator, TestNamespace, cluster, eventually, example},
};

const SETTLE: Duration = Duration::from_secs(90);

/// `ModelReady`'s status and reason, once they are as wanted.
async fn model_ready_becomes(ns: &TestNamespace, status: &str, reason: &str) -> ModelDeployment {
    eventually(SETTLE, &format!("ModelReady is {status} ({reason})"), || async {
        let model = ns.api::<ModelDeployment>().get_opt("dummy-model").await.ok()??;
        let condition = model
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::MODEL_READY)?;
        (condition.status == status && condition.reason == reason).then_some(model)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_follows_the_model_in_the_real_runtime() {
    let servers = TestServers::installed();
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-model-ready").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _operator = Operator::start_with(
        &ns.name,
        "model-ready",
        &["--probe-endpoint", &format!("{}/dummy-model=127.0.0.1:{port}", ns.name)],
    );
    ns.apply_model(&example("dummy-model.yaml")).await.unwrap();

    // The pod is Ready to the kubelet, but nothing answers for the model: not Ready.
    model_ready_becomes(&ns, "False", reasons::SERVER_UNAVAILABLE).await;
    eventually(
        SETTLE,
        "the pod is ready, its model is not, and the phase says Deploying",
        || async {
            let status = ns.api::<ModelDeployment>().get("dummy-model").await.ok()?.status?;
            (status.ready_replicas == Some(1)
                && status.model_ready_replicas == Some(0)
                && status.phase == Some(Phase::Deploying))
            .then_some(())
        },
    )
    .await;

    // The runtime is up and loading: still not Ready, and the reason says so.
    let model_path = dir.path().join("model.pt");
    let mut app = crate::servers::inference_app(&servers, dir.path(), "dummy-model", &model_path, port);
    model_ready_becomes(&ns, "False", reasons::MODEL_LOADING).await;

    // The model loads: Ready, with the runtime's own description of the model.
    write_affine_model(&servers.path("PYTHON"), &model_path);
    model_ready_becomes(&ns, "True", reasons::MODEL_LOADED).await;
    let status = eventually(SETTLE, "the phase is Ready", || async {
        let status = ns.api::<ModelDeployment>().get("dummy-model").await.ok()?.status?;
        (status.phase == Some(Phase::Ready)).then_some(status)
    })
    .await;
    assert_eq!(status.model_ready_replicas, Some(1));
    assert_eq!(
        status.model.as_ref().map(|m| m.name.as_str()),
        Some("dummy-model"),
        "{status:#?}"
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.status == "True"),
        "{status:#?}"
    );

    // The model stops answering: ModelReady flips back, with a Warning Event.
    app.stop();
    let gone = model_ready_becomes(&ns, "False", reasons::SERVER_UNAVAILABLE).await;
    assert_eq!(gone.status.as_ref().unwrap().phase, Some(Phase::Deploying));
    let ready = gone
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::NOT_SERVING),
        "a model that stops answering is not Ready"
    );
    eventually(SETTLE, "a Warning Event reports the model gone", || async {
        let events = ns.api::<Event>().list(&ListParams::default()).await.ok()?;
        events
            .items
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reasons::SERVER_UNAVAILABLE))
            .then_some(())
    })
    .await;
    ns.delete().await;
}
