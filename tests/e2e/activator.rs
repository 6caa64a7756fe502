//! The activator binary (`model-operator activator`) on the local control plane, beside the
//! operator: a model at zero (`replicas: 0`) gets a real `POST /predict`; the activator holds it,
//! scales the model to one through its `/scale` subresource, waits until the operator's probe of
//! the real FastAPI runtime says the model answers, and forwards it. An activator killed while
//! it holds a request leaves its client with an error at once, not a hang. A model that may go
//! to zero (`autoscaling.minReplicas: 0`) stays up while it has traffic, goes to zero once its
//! runtime's request count stands still for `scaleToZeroAfter`, and the first request through
//! the activator wakes it (through its Deployment's `/scale`). With `--activator-service`, the
//! Service of a model at zero selects no pod and an EndpointSlice points it at the activator,
//! until the woken model answers.
//!
//! kwok's pods have made-up IPs, so the runtime is the FastAPI app on loopback, started once the
//! pod exists, and both the operator (`--probe-endpoint`) and the activator (`--model-endpoint`)
//! reach it there; the test sends to the activator itself, as the model's Service would.

use std::time::{Duration, Instant};

use crate::{
    servers::{
        TestServers, free_port, inference_app,
        one_model::{http_client, predict_affine},
        write_affine_model,
    },
    support::{ActivatorProcess, Operator, TestNamespace, cluster, eventually},
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, discovery::v1::EndpointSlice};
use kube::ResourceExt;
use model_operator::api::{ModelDeployment, Phase};

const SETTLE: Duration = Duration::from_secs(120);

fn model_at_zero(name: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  modelURI: https://models.example.com/{name}.pt
  runtime: fastapi-pytorch
  modelName: affine
  replicas: 0
"
    )
}

#[tokio::test]
async fn a_request_to_a_model_at_zero_scales_it_to_one_and_is_answered_once_the_model_answers() {
    let servers = TestServers::installed();
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-activator").await;
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.pt");
    write_affine_model(&servers.path("PYTHON"), &model_path);
    let port = free_port();
    let runtime = format!("{}/sleepy=127.0.0.1:{port}", ns.name);
    let _operator = Operator::start_with(&ns.name, "activator-op", &["--probe-endpoint", &runtime]);
    let activator = ActivatorProcess::start(&ns.name, "activator", &["--model-endpoint", &runtime]);
    ns.apply_model(&model_at_zero("sleepy")).await.unwrap();
    let deployments = ns.api::<Deployment>();
    eventually(SETTLE, "the model's Deployment exists with 0 replicas", || async {
        let deployment = deployments.get_opt("sleepy").await.ok()??;
        (deployment.spec?.replicas == Some(0)).then_some(())
    })
    .await;
    eventually(SETTLE, "the model says it is scaled to zero", || async {
        let model = ns.api::<ModelDeployment>().get_opt("sleepy").await.ok()??;
        (model.status?.phase == Some(Phase::ScaledToZero)).then_some(())
    })
    .await;

    // The runtime comes up once the model's pod exists, as the pod's container would.
    let runtime_for_pod = {
        let (deployments, dir, model_path) = (deployments.clone(), dir.path().to_path_buf(), model_path.clone());
        tokio::spawn(async move {
            eventually(SETTLE, "the model is scaled to one", || async {
                let deployment = deployments.get_opt("sleepy").await.ok()??;
                (deployment.status?.ready_replicas == Some(1)).then_some(())
            })
            .await;
            inference_app(&TestServers::installed(), &dir, "affine", &model_path, port)
        })
    };

    let service = format!("sleepy-service.{}", ns.name);
    let url = format!("http://{service}:{}/predict", activator.http.port());
    let asked = Instant::now();
    let http = http_client(&service, activator.http, SETTLE);
    let requests = (1..=3).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move { predict_affine(&http, &url, i).await }
    });
    futures::future::join_all(requests).await;
    let woke_in = asked.elapsed();
    let _app = runtime_for_pod.await.unwrap();

    let model = ns.api::<ModelDeployment>().get("sleepy").await.unwrap();
    assert_eq!(model.spec.replicas, 1, "the activator scaled it to one");
    assert!(
        model
            .managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("model-operator-activator")),
        "written under the activator's own field manager"
    );
    assert_eq!(model.status.and_then(|s| s.phase), Some(Phase::Ready));
    assert!(
        activator.log_text().contains("scaled it to 1"),
        "{}",
        activator.log_text()
    );
    eprintln!("answered through the activator {woke_in:.1?} after the first request");
    ns.delete().await;
}

#[tokio::test]
async fn an_activator_killed_while_holding_a_request_fails_it_at_once() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-activator-kill").await;
    // Its runtime never answers: nothing listens where the operator probes it.
    let nowhere = format!("{}/stuck=127.0.0.1:{}", ns.name, free_port());
    let _operator = Operator::start_with(&ns.name, "activator-kill-op", &["--probe-endpoint", &nowhere]);
    let mut activator = ActivatorProcess::start(&ns.name, "activator-kill", &["--model-endpoint", &nowhere]);
    ns.apply_model(&model_at_zero("stuck")).await.unwrap();
    let service = format!("stuck-service.{}", ns.name);
    let url = format!("http://{service}:{}/predict", activator.http.port());
    // The request stays held.
    let http = http_client(&service, activator.http, Duration::from_secs(60));
    let held = tokio::spawn(async move {
        let sent = Instant::now();
        let result = http.post(&url).body("{}").send().await;
        (result.map(|r| r.status()), sent.elapsed())
    });
    eventually(SETTLE, "the activator asked for a replica", || async {
        activator.log_text().contains("scaled it to 1").then_some(())
    })
    .await;
    let killed = Instant::now();
    activator.kill();
    let (result, _) = held.await.unwrap();
    let noticed = killed.elapsed();
    assert!(result.is_err(), "a held request's client sees an error: {result:?}");
    assert!(
        noticed < Duration::from_secs(5),
        "at once, not after its timeout: {noticed:?}"
    );
    ns.delete().await;
}

/// The FastAPI runtime serving the affine model on a free loopback port, running throughout
/// (kwok's pods are not real): its directory, its process and its port.
fn affine_runtime(servers: &TestServers) -> (tempfile::TempDir, crate::servers::ServerProcess, u16) {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.pt");
    write_affine_model(&servers.path("PYTHON"), &model_path);
    let port = free_port();
    let app = inference_app(servers, dir.path(), "affine", &model_path, port);
    (dir, app, port)
}

fn model_that_may_go_to_zero(name: &str, after: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  modelURI: https://models.example.com/{name}.pt
  runtime: fastapi-pytorch
  modelName: affine
  autoscale: true
  autoscaling: {{metric: inference-queue, minReplicas: 0, maxReplicas: 2, scaleToZeroAfter: {after}}}
"
    )
}

/// The model's status and its Deployment's wanted replicas.
async fn model_and_replicas(ns: &TestNamespace, name: &str) -> Option<(ModelDeployment, i32)> {
    let model = ns.api::<ModelDeployment>().get_opt(name).await.ok()??;
    let deployment = ns.api::<Deployment>().get_opt(name).await.ok()??;
    Some((model, deployment.spec?.replicas?))
}

fn is_asleep(model: &ModelDeployment) -> bool {
    model
        .status
        .as_ref()
        .and_then(|s| s.idle.as_ref())
        .is_some_and(|idle| idle.scaled_to_zero_at.is_some())
}

#[tokio::test]
async fn an_idle_model_goes_to_zero_by_itself_and_the_first_request_wakes_it() {
    const IDLE: Duration = Duration::from_secs(4);
    let servers = TestServers::installed();
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-idle").await;
    // What the operator reads is the runtime's own request count, on the same port.
    let (_dir, _app, port) = affine_runtime(&servers);
    let runtime = format!("{}/drowsy=127.0.0.1:{port}", ns.name);
    let mut operator = Operator::start_with(
        &ns.name,
        "idle-op",
        &["--probe-endpoint", &runtime, "--runtime-metrics-endpoint", &runtime],
    );
    let activator = ActivatorProcess::start(&ns.name, "idle-activator", &["--model-endpoint", &runtime]);
    ns.apply_model(&model_that_may_go_to_zero("drowsy", "4s"))
        .await
        .unwrap();
    eventually(SETTLE, "the model serves", || async {
        let (model, replicas) = model_and_replicas(&ns, "drowsy").await?;
        (model.status?.phase == Some(Phase::Ready) && replicas == 1).then_some(())
    })
    .await;

    // Traffic for three idle times: the model stays up.
    let direct = reqwest::Client::new();
    let busy_until = Instant::now() + IDLE * 3;
    let mut sent = 0;
    while Instant::now() < busy_until {
        sent += 1;
        predict_affine(&direct, &format!("http://127.0.0.1:{port}/predict"), sent).await;
        let (model, replicas) = model_and_replicas(&ns, "drowsy").await.unwrap();
        assert!(
            !is_asleep(&model) && replicas == 1,
            "a model with traffic went to zero: {:#?}",
            model.status
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // Then none. Once the idle mark is written, a restarted operator goes on with its clock.
    let quiet = Instant::now();
    let mark = eventually(SETTLE, "the idle mark is written", || async {
        let (model, _) = model_and_replicas(&ns, "drowsy").await?;
        model.status?.idle
    })
    .await;
    // SIGTERM: it steps down, so the next one leads at once (a crash would only add the Lease).
    operator.terminate();
    let operator = Operator::start_with(
        &ns.name,
        "idle-op-again",
        &["--probe-endpoint", &runtime, "--runtime-metrics-endpoint", &runtime],
    );
    let model = eventually(SETTLE, "the idle model goes to zero", || async {
        let (model, replicas) = model_and_replicas(&ns, "drowsy").await?;
        (is_asleep(&model) && replicas == 0 && model.status.as_ref()?.phase == Some(Phase::ScaledToZero))
            .then_some(model)
    })
    .await;
    let went_to_zero_in = quiet.elapsed();
    let status = model.status.unwrap();
    assert_eq!(
        status.idle.as_ref().map(|idle| (&idle.since, idle.requests)),
        Some((&mark.since, mark.requests)),
        "the restart kept the clock"
    );
    assert!(
        status.message.as_deref().unwrap().contains("no request for 4s"),
        "{status:#?}"
    );
    assert!(went_to_zero_in < IDLE + Duration::from_secs(10), "{went_to_zero_in:?}");
    eventually(SETTLE, "the HPA stands still at zero", || async {
        let hpa = ns
            .api::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>()
            .get_opt("drowsy")
            .await
            .ok()??;
        let conditions = hpa.status?.conditions?;
        conditions
            .iter()
            .any(|c| {
                c.type_ == "ScalingActive" && c.status == "False" && c.reason.as_deref() == Some("ScalingDisabled")
            })
            .then_some(())
    })
    .await;

    // The first request through the activator wakes it, and is answered.
    let service = format!("drowsy-service.{}", ns.name);
    let url = format!("http://{service}:{}/predict", activator.http.port());
    let asked = Instant::now();
    predict_affine(&http_client(&service, activator.http, SETTLE), &url, 7).await;
    let woke_in = asked.elapsed();
    let (model, replicas) = model_and_replicas(&ns, "drowsy").await.unwrap();
    assert_eq!(replicas, 1, "woken to one replica");
    assert!(!is_asleep(&model), "{:#?}", model.status);
    assert!(
        activator.log_text().contains("scaled it to 1"),
        "{}",
        activator.log_text()
    );

    // And once idle again, back to zero.
    eventually(SETTLE, "the model goes back to zero after the idle time", || async {
        let (model, replicas) = model_and_replicas(&ns, "drowsy").await?;
        (is_asleep(&model) && replicas == 0).then_some(())
    })
    .await;
    assert!(!operator.log_text().contains("panicked"), "{}", operator.log_text());
    eprintln!("went to zero {went_to_zero_in:.1?} after the last request; woken and answered in {woke_in:.1?}");
    ns.delete().await;
}

/// A model that may go to zero whose runtime's request count the operator cannot read (kwok's
/// pod IPs are not dialled, and no `--runtime-metrics-endpoint` names it) is never guessed idle:
/// it stays up past its idle time, and its status and the operator's log say why.
#[tokio::test]
async fn a_model_whose_request_count_cannot_be_read_stays_up_and_says_why() {
    const IDLE: Duration = Duration::from_secs(2);
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-unread").await;
    let operator = Operator::start(&ns.name, "unread-op");
    ns.apply_model(&model_that_may_go_to_zero("blind", "2s")).await.unwrap();
    let said = eventually(SETTLE, "Available says the request count cannot be read", || async {
        let (model, replicas) = model_and_replicas(&ns, "blind").await?;
        let status = model.status?;
        let available = status
            .conditions
            .iter()
            .find(|c| c.type_ == model_operator::api::conditions::AVAILABLE)?;
        (available.status == "True" && replicas == 1 && available.message.contains("does not go to zero"))
            .then(|| available.message.clone())
    })
    .await;
    // Three idle times later it still serves, and no idle clock was started.
    tokio::time::sleep(IDLE * 3).await;
    let (model, replicas) = model_and_replicas(&ns, "blind").await.unwrap();
    let status = model.status.unwrap();
    assert_eq!(replicas, 1, "{status:#?}");
    assert_eq!(status.phase, Some(Phase::Ready), "{status:#?}");
    assert_eq!(status.idle, None, "{status:#?}");
    let log = operator.log_text();
    let warned = log
        .lines()
        .filter(|line| line.contains("the request count cannot be read: the model does not go to zero"))
        .collect::<Vec<_>>();
    assert_eq!(warned.len(), 1, "said once at warn, then at debug: {log}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("have no address"),
        "{}",
        warned[0]
    );
    eprintln!("{said}");
    ns.delete().await;
}

/// A stand-in for the activator's Service as the EndpointSlice controller would list it: only
/// its slices matter to the operator, and their addresses are never dialled here.
async fn fake_activator_slice(ns: &TestNamespace, addresses: &[&str]) {
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "fake-activator-1", "labels": {"kubernetes.io/service-name": "fake-activator"}},
        "addressType": "IPv4",
        "endpoints": addresses.iter().map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8012}, {"name": "grpc", "port": 8013}],
    }))
    .unwrap();
    ns.api::<EndpointSlice>()
        .patch(
            "fake-activator-1",
            &kube::api::PatchParams::apply("e2e").force(),
            &kube::api::Patch::Apply(&slice),
        )
        .await
        .unwrap();
}

/// `kubectl scale md/NAME --replicas=N`, as the activator or an autoscaler writes it.
async fn scale_model(ns: &TestNamespace, name: &str, replicas: i32) {
    ns.api::<ModelDeployment>()
        .patch_scale(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

/// Whether the model's Service selects its pods, and the EndpointSlices of the Service that
/// hold addresses, with those addresses (what kube-proxy sends the Service's traffic to).
async fn service_traffic(ns: &TestNamespace, name: &str) -> Option<(bool, Vec<(String, Vec<String>)>)> {
    let service = ns.api::<Service>().get_opt(&format!("{name}-service")).await.ok()??;
    let selects = service
        .spec?
        .selector
        .is_some_and(|s| !s.contains_key("mlops.sathvik.dev/held-by-activator"));
    let slices = ns
        .api::<EndpointSlice>()
        .list(&kube::api::ListParams::default().labels(&format!("kubernetes.io/service-name={name}-service")))
        .await
        .ok()?;
    let slices = slices
        .items
        .into_iter()
        .map(|slice| {
            let addresses: Vec<String> = slice.endpoints.iter().flat_map(|e| e.addresses.clone()).collect();
            (slice.name_any(), addresses)
        })
        .filter(|(_, addresses)| !addresses.is_empty())
        .collect();
    Some((selects, slices))
}

#[tokio::test]
async fn a_model_at_zero_has_its_service_point_at_the_activator_until_its_model_answers_again() {
    let servers = TestServers::installed();
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-handover").await;
    let (_dir, _app, port) = affine_runtime(&servers);
    fake_activator_slice(&ns, &["10.1.2.3"]).await;
    let runtime = format!("{}/parked=127.0.0.1:{port}", ns.name);
    let activator_service = format!("{}/fake-activator", ns.name);
    let operator = Operator::start_with(
        &ns.name,
        "handover-op",
        &["--probe-endpoint", &runtime, "--activator-service", &activator_service],
    );
    ns.apply_model(&model_at_zero("parked")).await.unwrap();
    let to_the_activator = |addresses: &'static [&'static str]| {
        let ns = &ns;
        move || async move {
            let (selects, slices) = service_traffic(ns, "parked").await?;
            let expected = vec![(
                "parked-service-activator".to_owned(),
                addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            )];
            (!selects && slices == expected).then_some(())
        }
    };
    eventually(
        SETTLE,
        "the Service of the model at zero selects no pod and points at the activator alone",
        to_the_activator(&["10.1.2.3"]),
    )
    .await;
    let slice = ns.api::<EndpointSlice>().get("parked-service-activator").await.unwrap();
    let model = ns.api::<ModelDeployment>().get("parked").await.unwrap();
    assert_eq!(
        slice.owner_references()[0].uid,
        model.uid().unwrap(),
        "owned by the model, so it goes with it"
    );
    let ports: Vec<(Option<String>, Option<i32>)> =
        slice.ports.unwrap().into_iter().map(|p| (p.name, p.port)).collect();
    assert_eq!(ports, [(Some("http".into()), Some(8012))]);

    // The activator's replicas change: the model's slice follows.
    fake_activator_slice(&ns, &["10.1.2.3", "10.1.2.4"]).await;
    eventually(
        SETTLE,
        "the model's slice follows the activator's replicas",
        to_the_activator(&["10.1.2.3", "10.1.2.4"]),
    )
    .await;

    // Woken (as the activator would), the Service is the pods' again once the model answers.
    scale_model(&ns, "parked", 1).await;
    eventually(
        SETTLE,
        "the Service selects the pods again, and the slice is gone",
        || async {
            let model = ns.api::<ModelDeployment>().get_opt("parked").await.ok()??;
            let ready = model.status?.model_ready_replicas == Some(1);
            let (selects, slices) = service_traffic(&ns, "parked").await?;
            (ready && selects && slices.iter().all(|(name, _)| name != "parked-service-activator")).then_some(())
        },
    )
    .await;

    // And back to zero: the activator's again.
    scale_model(&ns, "parked", 0).await;
    eventually(
        SETTLE,
        "at zero again, the Service points at the activator",
        to_the_activator(&["10.1.2.3", "10.1.2.4"]),
    )
    .await;
    assert!(!operator.log_text().contains("forbidden"), "{}", operator.log_text());
    ns.delete().await;
}

#[tokio::test]
async fn a_grpc_inference_for_a_triton_model_at_zero_is_held_until_the_model_answers_then_answered() {
    use model_operator::model_readiness::triton::kserve::grpc_inference_service_client::GrpcInferenceServiceClient;
    let servers = TestServers::installed();
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-triton-zero").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    crate::servers::write_triton_model(
        &repo,
        "adder",
        &crate::servers::TRITON_DOUBLER_PY.replace("{delay}", "0"),
    );
    // Triton serves throughout (kwok's pods are not real); the model only counts as answering
    // once its pod exists and the operator's probe of it says so.
    let triton = crate::servers::Triton::start(&servers, &repo, dir.path(), &[]);
    triton.wait_until_ready(SETTLE).await;
    let http = triton.http.trim_start_matches("http://");
    let probe = format!("{}/adder={}", ns.name, triton.grpc);
    let to_http = format!("{}/adder={http}", ns.name);
    let _operator = Operator::start_with(&ns.name, "triton-zero-op", &["--probe-endpoint", &probe]);
    let activator = ActivatorProcess::start(
        &ns.name,
        "triton-zero-activator",
        &["--model-endpoint", &to_http, "--model-grpc-endpoint", &probe],
    );
    ns.apply_model(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: adder}
spec:
  modelURI: https://models.example.com/adder/
  runtime: triton
  replicas: 0
",
    )
    .await
    .unwrap();
    eventually(SETTLE, "the Triton model says it is scaled to zero", || async {
        let model = ns.api::<ModelDeployment>().get_opt("adder").await.ok()??;
        (model.status?.phase == Some(Phase::ScaledToZero)).then_some(())
    })
    .await;

    // One HTTP/2 connection to the activator's gRPC port, its `:authority` the model's Service.
    let grpc_port = activator.grpc_port();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .unwrap()
        .origin(format!("http://adder-service.{}.svc:8001", ns.name).parse().unwrap())
        .connect()
        .await
        .unwrap();
    let inference = |value: f32| {
        let mut client = GrpcInferenceServiceClient::new(channel.clone());
        async move {
            let request = crate::servers::doubler_infer_request([value, value + 1.0, 0.5, -1.0]);
            let response = client
                .model_infer(request)
                .await
                .unwrap_or_else(|status| panic!("inference of {value}: {status}"))
                .into_inner();
            let output = crate::servers::raw_floats(&response.raw_output_contents[0]);
            assert_eq!(
                output,
                [2.0 * value, 2.0 * value + 2.0, 1.0, -2.0],
                "inference of {value}"
            );
        }
    };
    let asked = Instant::now();
    futures::future::join_all((0..3u8).map(|i| inference(f32::from(i)))).await;
    let answered_in = asked.elapsed();
    let model = ns.api::<ModelDeployment>().get("adder").await.unwrap();
    assert_eq!(model.spec.replicas, 1, "the activator scaled it to one");
    assert_eq!(model.status.and_then(|s| s.model_ready_replicas), Some(1));
    eprintln!("three ModelInfer calls to a Triton model at zero answered in {answered_in:.1?}");
    ns.delete().await;
}
