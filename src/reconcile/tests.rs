//! Driver tests through a mock API server (kube-rs controller-rs's tier): the reconcile runs
//! against a `Client` whose every request this file answers, in the order the driver must make
//! them, so a test fails on a request too many, too few or out of order. Fixtures are the
//! ModelDeployments a user writes, as YAML.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::{Client, client::Body, runtime::reflector};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_test::mock::{self, Handle};

use super::*;
use crate::{
    api::conditions::reasons,
    custom_metrics::queue_time::QueueTimeSource,
    model_readiness::{EndpointResolver, ProbeSchedule, ProbeSettings, Prober},
    telemetry::Metrics,
    vocabulary::{Leadership, OperatorImages},
};

/// The original project's `dummy-model`, as the API server stores it.
const DUMMY: &str = r#"
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: dummy-model, namespace: ml, uid: 4c1d-uid, generation: 1}
spec:
  modelURI: https://example.com/dummy_model.pt
  runtime: fastapi-pytorch
"#;

/// A version that must pass its validation Job before it serves.
const VALIDATED: &str = r#"
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: bert, namespace: ml, uid: 7e2a-uid, generation: 2}
spec:
  modelURI: s3://models/bert.mar
  runtime: torchserve
  version: v2
  validateScript: check.py
"#;

/// Admitted by the schema, refused by the operator: a path on the operator's own machine.
const LOCAL_FILE: &str = r#"
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: local, namespace: ml, uid: 11aa-uid, generation: 1}
spec:
  modelURI: file:///tmp/model.pt
  runtime: fastapi-pytorch
"#;

/// Fails a test that waits longer than any of these exchanges can take, instead of hanging.
async fn within<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("the exchange with the mock API server finished")
}

/// The validation Job name the operator gives a model.
fn job_name(model: &ModelDeployment) -> String {
    validate::validate(model, &OperatorImages::default())
        .expect("a valid fixture")
        .validation
        .expect("a validateScript")
        .job_name
}

fn model(yaml: &str) -> ModelDeployment {
    serde_yaml_ng::from_str(yaml).expect("fixture is a ModelDeployment")
}

/// A context whose caches are empty (listed, nothing in them), with the gates as given.
fn context(client: Client, leader: bool, caches_synced: bool) -> Context {
    let (models, _) = reflector::store();
    let (deployments, _) = reflector::store();
    let (services, _) = reflector::store();
    let (hpas, _) = reflector::store();
    let (jobs, _) = reflector::store();
    let (config_maps, _) = reflector::store();
    let (pods, _) = reflector::store();
    let (nodes, _) = reflector::store();
    Context {
        client,
        caches: Caches {
            models,
            deployments,
            services,
            hpas,
            jobs,
            config_maps,
            pods,
            nodes,
            claim_templates: reflector::store().0,
            resource_slices: reflector::store().0,
            resource_claims: reflector::store().0,
            device_classes: reflector::store().0,
            endpoint_slices: reflector::store().0,
            activator_slices: reflector::store().0,
            pods_namespace: None,
            pod_index: PodIndex::default(),
            requested_gpus: RequestedGpus::default(),
        },
        images: OperatorImages::default(),
        prober: Prober::new(ProbeSettings::default()).expect("a prober"),
        // The pods of these tests have no IPs: readiness is the kubelet's word.
        endpoints: EndpointResolver::new(&[], false).expect("no overrides"),
        probe_schedule: ProbeSchedule::default(),
        apply_retries: ApplyRetries::default(),
        last_applied: LastApplied::default(),
        written_status: WrittenStatus::default(),
        request_counts: QueueTimeSource::new(Default::default()),
        idle_clocks: IdleClocks::default(),
        leader: if leader {
            Leadership::always()
        } else {
            Leadership::standby()
        },
        caches_synced: watch::channel(caches_synced).1,
    }
}

/// The API server's side of the mock: answers one expected request at a time.
struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request as the operator sent it.
struct Received {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

impl ApiServer {
    fn new() -> (Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), Self(handle))
    }

    /// Waits (bounded) for the next request, checks its method and path, and answers `reply`
    /// of what was sent with status `code`.
    async fn expect(&mut self, method: Method, path: &str, code: u16, reply: impl FnOnce(&Value) -> Value) -> Received {
        let (request, respond) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .unwrap_or_else(|| panic!("the client hung up; expected {method} {path}"));
        let received_method = request.method().clone();
        let received_path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request.into_body().collect_bytes().await.expect("a request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        assert_eq!(
            (&received_method, received_path.as_str()),
            (&method, path),
            "unexpected request, body: {body:#}"
        );
        let answer = reply(&body);
        respond.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).expect("JSON")))
                .expect("a response"),
        );
        Received {
            method: received_method,
            path: received_path,
            query,
            body,
        }
    }

    /// A server-side apply by the operator's field manager, answered with the object as stored
    /// (a UID added).
    async fn expect_apply(&mut self, path: &str) -> Received {
        let received = self
            .expect(Method::PATCH, path, 200, |sent| {
                let mut stored = sent.clone();
                stored["metadata"]["uid"] =
                    json!(format!("uid-of-{}", sent["metadata"]["name"].as_str().unwrap_or("")));
                stored
            })
            .await;
        assert!(
            received.query.contains("fieldManager=model-operator") && received.query.contains("force=true"),
            "{} {}?{}: every write is a forced apply by the one field manager",
            received.method,
            received.path,
            received.query
        );
        received
    }

    /// The status write: a forced apply on the status subresource, answered with `model`
    /// carrying what was sent.
    async fn expect_status_write(&mut self, model: &ModelDeployment) -> Received {
        let path = format!(
            "/apis/mlops.sathvik.dev/v1/namespaces/{}/modeldeployments/{}/status",
            model.namespace().unwrap_or_default(),
            model.name_any()
        );
        let stored = serde_json::to_value(model).expect("a ModelDeployment serializes");
        let received = self
            .expect(Method::PATCH, &path, 200, |sent| {
                let mut stored = stored;
                stored["status"] = sent["status"].clone();
                stored
            })
            .await;
        assert!(
            received.query.contains("fieldManager=model-operator") && received.query.contains("force=true"),
            "{}?{}: the status is a forced apply by the one field manager",
            received.path,
            received.query
        );
        received
    }

    /// A read of a child's name, answered "not found": the name is free.
    async fn expect_absent(&mut self, path: &str) {
        let received = self
            .expect(Method::GET, path, 404, |_| {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                       "reason": "NotFound", "message": "not found"})
            })
            .await;
        assert_eq!(received.body, Value::Null);
    }

    /// Nothing more is asked of the API server once the client is gone.
    async fn expect_nothing_more(mut self) {
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await {
            panic!("one request too many: {} {}", request.method(), request.uri());
        }
    }
}

fn condition<'a>(
    status: &'a ModelDeploymentStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#?}"))
}

#[tokio::test]
async fn a_new_model_gets_its_names_checked_then_deployment_service_and_one_status_write() {
    let (client, mut api) = ApiServer::new();
    let ctx = context(client, true, true);
    let model = model(DUMMY);
    let script = async {
        // The caches hold none of its children: each name is read first, and is free.
        api.expect_absent("/apis/apps/v1/namespaces/ml/deployments/dummy-model")
            .await;
        api.expect_absent("/api/v1/namespaces/ml/services/dummy-model-service")
            .await;
        let deployment = api
            .expect_apply("/apis/apps/v1/namespaces/ml/deployments/dummy-model")
            .await;
        assert_eq!(deployment.body["kind"], "Deployment");
        assert_eq!(
            deployment.body["metadata"]["ownerReferences"][0]["uid"], "4c1d-uid",
            "the model owns its Deployment"
        );
        let service = api
            .expect_apply("/api/v1/namespaces/ml/services/dummy-model-service")
            .await;
        assert_eq!(service.body["spec"]["ports"][0]["port"], 8000);
        let status = api.expect_status_write(&model).await;
        assert_eq!(status.body["status"]["phase"], "Deploying", "{:#}", status.body);
        api
    };
    let (outcome, api) = within(async { tokio::join!(reconcile(&model, &ctx), script) }).await;
    drop(ctx);
    api.expect_nothing_more().await;

    let outcome = outcome.expect("the reconcile succeeds");
    let work = outcome.reconciled_work().expect("reconciled");
    assert_eq!(work.created_deployment.as_deref(), Some("uid-of-dummy-model"));
    assert!(work.status_written);
    assert_eq!(work.runtime, Some(crate::vocabulary::Runtime::FastapiPytorch));
    assert_eq!(work.apply_failure, None);
    assert_eq!(
        condition(&work.status, conditions::APPLIED).reason,
        reasons::CHILDREN_APPLIED
    );
    assert_eq!(
        condition(&work.status, conditions::AVAILABLE).reason,
        reasons::DEPLOYMENT_UNAVAILABLE
    );
    assert_eq!(outcome.requeue_after, Some(RESYNC_INTERVAL));
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let (client, mut api) = ApiServer::new();
    let ctx = context(client, true, true);
    let first = model(DUMMY);
    let script = async {
        api.expect_absent("/apis/apps/v1/namespaces/ml/deployments/dummy-model")
            .await;
        api.expect_absent("/api/v1/namespaces/ml/services/dummy-model-service")
            .await;
        api.expect_apply("/apis/apps/v1/namespaces/ml/deployments/dummy-model")
            .await;
        api.expect_apply("/api/v1/namespaces/ml/services/dummy-model-service")
            .await;
        api.expect_status_write(&first).await;
        api
    };
    let (outcome, mut api) = within(async { tokio::join!(reconcile(&first, &ctx), script) }).await;
    let written = outcome.unwrap().reconciled_work().unwrap().status.clone();

    // The same model, now carrying the status the first reconcile wrote.
    let mut second = model(DUMMY);
    second.status = Some(written);
    let script = async {
        api.expect_absent("/apis/apps/v1/namespaces/ml/deployments/dummy-model")
            .await;
        api.expect_absent("/api/v1/namespaces/ml/services/dummy-model-service")
            .await;
        api.expect_apply("/apis/apps/v1/namespaces/ml/deployments/dummy-model")
            .await;
        api.expect_apply("/api/v1/namespaces/ml/services/dummy-model-service")
            .await;
        api
    };
    let (outcome, api) = within(async { tokio::join!(reconcile(&second, &ctx), script) }).await;
    drop(ctx);
    api.expect_nothing_more().await;
    let work = outcome.unwrap();
    let work = work.reconciled_work().unwrap();
    assert!(!work.status_written, "{:#?}", work.status);
}

#[tokio::test]
async fn a_version_awaiting_validation_gets_its_job_and_no_deployment_and_then_costs_no_request() {
    let (client, mut api) = ApiServer::new();
    let mut ctx = context(client, true, true);
    let (config_maps, mut config_map_cache) = reflector::store();
    let (services, mut service_cache) = reflector::store();
    let (jobs, mut job_cache) = reflector::store();
    ctx.caches.config_maps = config_maps;
    ctx.caches.services = services;
    ctx.caches.jobs = jobs;
    let model = model(VALIDATED);
    let job_name = job_name(&model);
    let config_path = "/api/v1/namespaces/ml/configmaps/bert-runtime-config";
    let service_path = "/api/v1/namespaces/ml/services/bert-service";
    let job_path = format!("/apis/batch/v1/namespaces/ml/jobs/{job_name}");
    let script = async {
        // Starting the Job, every name is read: a taken one is reported before the Job runs.
        for path in [
            config_path.to_owned(),
            job_path.clone(),
            "/apis/apps/v1/namespaces/ml/deployments/bert".to_owned(),
            service_path.to_owned(),
        ] {
            api.expect_absent(&path).await;
        }
        // Configuration first, then the Job that gates the Deployment; the Deployment waits.
        // The Service goes beside them.
        let config = api
            .expect(Method::PATCH, config_path, 200, |sent| stored(sent, None))
            .await;
        let service = api
            .expect(Method::PATCH, service_path, 200, |sent| stored(sent, None))
            .await;
        let job = api
            .expect(Method::PATCH, &job_path, 200, |sent| stored(sent, Some(1)))
            .await;
        assert_eq!(job.body["spec"]["backoffLimit"], 0);
        let status = api.expect_status_write(&model).await;
        assert_eq!(status.body["status"]["phase"], "Validating", "{:#}", status.body);
        (api, config.body, service.body, job.body, status.body)
    };
    let (outcome, (api, config, service, job, status)) =
        within(async { tokio::join!(reconcile(&model, &ctx), script) }).await;
    let outcome = outcome.unwrap();
    let work = outcome.reconciled_work().unwrap();
    assert_eq!(work.started_validation.as_deref(), Some(job_name.as_str()));
    assert_eq!(work.created_deployment, None);
    assert_eq!(
        condition(&work.status, conditions::VALIDATED).reason,
        reasons::VALIDATION_RUNNING
    );

    // The watches bring back what was written, and the Job's pod runs: the reconciles its
    // events bring read no name (nothing is written until the Job passes) and write nothing.
    config_map_cache.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
        serde_json::from_value(stored(&config, None)).unwrap(),
    ));
    service_cache.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
        serde_json::from_value(stored(&service, None)).unwrap(),
    ));
    let mut running = stored(&job, Some(1));
    running["status"] = json!({"active": 1});
    job_cache.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
        serde_json::from_value(running).unwrap(),
    ));
    let mut validating = model.clone();
    validating.status = serde_json::from_value(status["status"].clone()).unwrap();
    let outcome = within(reconcile(&validating, &ctx))
        .await
        .expect("reconciled while validating");
    let work = outcome.reconciled_work().expect("reconciled");
    assert!(!work.status_written, "{:#?}", work.status);
    drop(ctx);
    api.expect_nothing_more().await;
}

#[tokio::test]
async fn a_name_held_by_someone_else_is_never_written_and_the_status_says_whose() {
    let (client, mut api) = ApiServer::new();
    let ctx = context(client, true, true);
    let model = model(DUMMY);
    let script = async {
        api.expect_absent("/apis/apps/v1/namespaces/ml/deployments/dummy-model")
            .await;
        // A Service of that name that the payments team applied with kubectl.
        api.expect(
            Method::GET,
            "/api/v1/namespaces/ml/services/dummy-model-service",
            200,
            |_| {
                json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "dummy-model-service", "namespace": "ml", "uid": "svc-uid",
                                "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}]},
                   "spec": {"selector": {"app": "payments"}, "ports": [{"port": 80}]}})
            },
        )
        .await;
        let status = api.expect_status_write(&model).await;
        assert_eq!(status.body["status"]["phase"], "Failed", "{:#}", status.body);
        api
    };
    let (outcome, api) = within(async { tokio::join!(reconcile(&model, &ctx), script) }).await;
    drop(ctx);
    api.expect_nothing_more().await;
    let outcome = outcome.unwrap();
    let work = outcome.reconciled_work().unwrap();
    let applied = condition(&work.status, conditions::APPLIED);
    assert_eq!(
        (applied.status.as_str(), applied.reason.as_str()),
        ("False", reasons::NAME_TAKEN)
    );
    assert!(
        applied.message.starts_with(
            "Service ml/dummy-model-service already exists and belongs to no controller; written by kubectl-client-side-apply"
        ),
        "{}",
        applied.message
    );
    assert_eq!(work.apply_failure, Some(reasons::NAME_TAKEN));
    assert_eq!(work.created_deployment, None);
    assert_eq!(
        outcome.requeue_after,
        Some(NAME_TAKEN_RECHECK),
        "it looks again for the name to come free"
    );
}

#[tokio::test]
async fn an_invalid_spec_writes_only_its_status() {
    let (client, mut api) = ApiServer::new();
    let ctx = context(client, true, true);
    let model = model(LOCAL_FILE);
    let script = async {
        let status = api.expect_status_write(&model).await;
        let message = status.body["status"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains("spec.modelURI"),
            "the message names the field: {message}"
        );
        api
    };
    let (outcome, api) = within(async { tokio::join!(reconcile(&model, &ctx), script) }).await;
    drop(ctx);
    api.expect_nothing_more().await;
    let outcome = outcome.unwrap();
    let work = outcome.reconciled_work().unwrap();
    assert_eq!(work.runtime, None);
    assert_eq!(condition(&work.status, conditions::READY).reason, reasons::SPEC_INVALID);
}

/// The Deployment's name is free, the API server refuses the Deployment as built (and takes the
/// Service).
async fn refuse_the_deployment(api: &mut ApiServer) {
    let path = "/apis/apps/v1/namespaces/ml/deployments/dummy-model";
    api.expect_absent(path).await;
    api.expect_absent("/api/v1/namespaces/ml/services/dummy-model-service")
        .await;
    api.expect(Method::PATCH, path, 422, |_| {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422, "reason": "Invalid",
               "message": "Deployment.apps \"dummy-model\" is invalid: spec.template.spec.containers[0].env[0].name: Invalid value"})
    })
    .await;
    // The Service does not wait for the Deployment.
    api.expect_apply("/api/v1/namespaces/ml/services/dummy-model-service")
        .await;
}

#[tokio::test]
async fn a_refused_child_reaches_the_status_with_the_api_servers_words_and_backs_off() {
    let (client, mut api) = ApiServer::new();
    let ctx = context(client, true, true);
    let model = model(DUMMY);
    let script = async {
        refuse_the_deployment(&mut api).await;
        let status = api.expect_status_write(&model).await;
        assert_eq!(status.body["status"]["phase"], "Failed", "{:#}", status.body);
        api
    };
    let (outcome, mut api) = within(async { tokio::join!(reconcile(&model, &ctx), script) }).await;
    let outcome = outcome.expect("a refused child is a status, not a failed reconcile");
    let work = outcome.reconciled_work().unwrap();
    let applied = condition(&work.status, conditions::APPLIED);
    assert_eq!(
        (applied.status.as_str(), applied.reason.as_str()),
        ("False", reasons::CHILD_REJECTED)
    );
    assert!(
        applied.message
            == "the API server refused Deployment dummy-model: Deployment.apps \"dummy-model\" is invalid: \
                spec.template.spec.containers[0].env[0].name: Invalid value",
        "{}",
        applied.message
    );
    assert_eq!(
        work.apply_failure,
        Some(reasons::CHILD_REJECTED),
        "counted by its reason"
    );
    assert_eq!(outcome.requeue_after, Some(Duration::from_secs(5)));

    // Refused again at once (a watch event of its Deployment's, not the retry): the status
    // already says so, and the retry scheduled stands, neither earlier nor later.
    let mut again = model.clone();
    again.status = Some(work.status.clone());
    let script = async {
        refuse_the_deployment(&mut api).await;
        api
    };
    let (outcome, api) = within(async { tokio::join!(reconcile(&again, &ctx), script) }).await;
    drop(ctx);
    api.expect_nothing_more().await;
    let outcome = outcome.unwrap();
    assert!(!outcome.reconciled_work().unwrap().status_written);
    let requeue = outcome.requeue_after.unwrap();
    assert!(
        requeue <= Duration::from_secs(5) && requeue > Duration::from_secs(4),
        "{requeue:?}"
    );
}

#[tokio::test]
async fn a_standby_and_an_unsynced_cache_write_nothing() {
    let (client, api) = ApiServer::new();
    let standby = context(client.clone(), false, true);
    let outcome = reconcile(&model(DUMMY), &standby).await.unwrap();
    assert_eq!(outcome.work, Work::Skipped(Skipped::NotLeader));
    assert_eq!(
        outcome.requeue_after, None,
        "the standby waits for leadership, not a timer"
    );

    let unsynced = context(client, true, false);
    let outcome = reconcile(&model(DUMMY), &unsynced).await.unwrap();
    assert_eq!(outcome.work, Work::Skipped(Skipped::CachesNotSynced));
    assert_eq!(outcome.requeue_after, Some(CACHE_SYNC_RETRY));
    drop((standby, unsynced));
    api.expect_nothing_more().await;
}

#[tokio::test]
async fn the_report_publishes_a_warning_event_per_condition_of_a_refused_spec() {
    let (client, mut api) = ApiServer::new();
    let ctx = context(client.clone(), true, true);
    let model = model(LOCAL_FILE);
    let script = async {
        api.expect_status_write(&model).await;
        api
    };
    let (outcome, mut api) = within(async { tokio::join!(reconcile(&model, &ctx), script) }).await;
    let outcome = outcome.unwrap();

    let reporter = report::Reporter::new(client, Metrics::new(), Some("operator-0".into()));
    let script = async {
        // Every condition turns False for SpecInvalid, a problem reason: one Warning each.
        let mut notes = Vec::new();
        for _ in conditions::ALL_TYPES {
            let event = api
                .expect(
                    Method::POST,
                    "/apis/events.k8s.io/v1/namespaces/ml/events",
                    201,
                    Value::clone,
                )
                .await;
            assert_eq!(event.body["type"], "Warning", "{:#}", event.body);
            assert_eq!(event.body["reason"], "SpecInvalid");
            assert_eq!(event.body["reportingInstance"], "operator-0");
            let note = event.body["note"].as_str().unwrap_or_default().to_owned();
            assert!(note.len() <= report::EVENT_NOTE_LIMIT, "{} bytes", note.len());
            notes.push(note);
        }
        assert!(
            notes[0].starts_with("Validated is False: the spec is invalid"),
            "{notes:#?}"
        );
        api
    };
    let ((), api) = within(async { tokio::join!(reporter.publish(&model, &outcome), script) }).await;
    drop((ctx, reporter));
    api.expect_nothing_more().await;
}

/// The stored object a server-side apply returns: the sent one with a UID, a generation where
/// the kind keeps one, and a resourceVersion, as the API server adds them.
fn stored(sent: &Value, generation: Option<i64>) -> Value {
    let mut stored = sent.clone();
    stored["metadata"]["uid"] = json!(format!("uid-of-{}", sent["metadata"]["name"].as_str().unwrap_or("")));
    stored["metadata"]["resourceVersion"] = json!("100");
    if let Some(generation) = generation {
        stored["metadata"]["generation"] = json!(generation);
    }
    stored
}

#[tokio::test]
async fn a_model_whose_children_are_as_written_costs_no_request_and_a_drifted_child_is_rewritten() {
    let (client, mut api) = ApiServer::new();
    let mut ctx = context(client, true, true);
    let (deployments, mut deployment_cache) = reflector::store();
    let (services, mut service_cache) = reflector::store();
    ctx.caches.deployments = deployments;
    ctx.caches.services = services;
    let first = model(DUMMY);
    let script = async {
        api.expect_absent("/apis/apps/v1/namespaces/ml/deployments/dummy-model")
            .await;
        api.expect_absent("/api/v1/namespaces/ml/services/dummy-model-service")
            .await;
        let deployment = api
            .expect(
                Method::PATCH,
                "/apis/apps/v1/namespaces/ml/deployments/dummy-model",
                200,
                |sent| stored(sent, Some(1)),
            )
            .await;
        let service = api
            .expect(
                Method::PATCH,
                "/api/v1/namespaces/ml/services/dummy-model-service",
                200,
                |sent| stored(sent, None),
            )
            .await;
        let status = api.expect_status_write(&first).await;
        (api, deployment.body, service.body, status.body)
    };
    let (outcome, (mut api, deployment, service, status)) =
        within(async { tokio::join!(reconcile(&first, &ctx), script) }).await;
    outcome.expect("the first reconcile succeeds");

    // The watches bring back what was written.
    let deployment: crate::vocabulary::cached::CachedDeployment =
        serde_json::from_value(stored(&deployment, Some(1))).unwrap();
    let service: crate::vocabulary::cached::CachedService = serde_json::from_value(stored(&service, None)).unwrap();
    deployment_cache.apply_watcher_event(&kube::runtime::watcher::Event::Apply(deployment.clone()));
    service_cache.apply_watcher_event(&kube::runtime::watcher::Event::Apply(service));
    let mut at_rest = first.clone();
    at_rest.status = serde_json::from_value(status["status"].clone()).unwrap();
    let outcome = within(reconcile(&at_rest, &ctx)).await.expect("reconciled at rest");
    let work = outcome.reconciled_work().expect("reconciled");
    assert!(!work.status_written);

    // Someone scales the Deployment by hand: its generation moves, and it alone is applied again.
    let mut edited = deployment;
    edited.metadata.generation = Some(2);
    edited.spec.as_mut().unwrap().replicas = Some(5);
    deployment_cache.apply_watcher_event(&kube::runtime::watcher::Event::Apply(edited));
    let script = async {
        let put_back = api
            .expect(
                Method::PATCH,
                "/apis/apps/v1/namespaces/ml/deployments/dummy-model",
                200,
                |sent| stored(sent, Some(3)),
            )
            .await;
        assert_eq!(put_back.body["spec"]["replicas"], 1, "the spec's replica count");
        api
    };
    let (outcome, api) = within(async { tokio::join!(reconcile(&at_rest, &ctx), script) }).await;
    outcome.expect("the drift is repaired");
    drop(ctx);
    api.expect_nothing_more().await;
}

/// A model that may go to zero, put to sleep by the operator with its Deployment at generation 4.
const ASLEEP: &str = r#"
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: drowsy, namespace: ml, uid: 5d0e-uid, generation: 1}
spec:
  modelURI: https://example.com/drowsy.pt
  runtime: fastapi-pytorch
  autoscale: true
  autoscaling: {metric: inference-queue, minReplicas: 0, scaleToZeroAfter: 10m}
status:
  phase: ScaledToZero
  idle:
    since: "2026-12-04T05:00:00Z"
    requests: 12
    scaledToZeroAt: "2026-12-04T05:10:00Z"
    deploymentGeneration: 4
"#;

/// The model's Deployment in the cache, as a wake left it: a later generation wanting a replica.
fn woken_deployment() -> crate::vocabulary::cached::CachedDeployment {
    serde_json::from_value(json!({
        "metadata": {"name": "drowsy", "namespace": "ml", "generation": 5, "uid": "d-uid",
                     "ownerReferences": [{"apiVersion": "mlops.sathvik.dev/v1", "kind": "ModelDeployment",
                                          "name": "drowsy", "uid": "5d0e-uid", "controller": true}]},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": {"mlops.sathvik.dev/version": "v1"}}}},
    }))
    .expect("a Deployment")
}

#[tokio::test]
async fn a_woken_model_hands_its_replicas_back_to_the_hpa_and_its_idle_mark_is_cleared() {
    let (client, mut api) = ApiServer::new();
    let mut ctx = context(client, true, true);
    let (deployments, mut writer) = reflector::store();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(woken_deployment()));
    ctx.caches.deployments = deployments;
    let model = model(ASLEEP);
    let script = async {
        api.expect_absent("/api/v1/namespaces/ml/services/drowsy-service").await;
        api.expect_absent("/apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/drowsy")
            .await;
        // Its replica count goes to the HPA's keeping before the operator's apply leaves it out.
        api.expect(
            Method::PATCH,
            "/apis/apps/v1/namespaces/ml/deployments/drowsy",
            200,
            |sent| sent.clone(),
        )
        .await;
        api.expect_apply("/api/v1/namespaces/ml/services/drowsy-service").await;
        let deployment = api.expect_apply("/apis/apps/v1/namespaces/ml/deployments/drowsy").await;
        assert_eq!(
            deployment.body["spec"].get("replicas"),
            None,
            "awake, the HPA owns the replicas: {:#}",
            deployment.body
        );
        api.expect_apply("/apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/drowsy")
            .await;
        let status = api.expect_status_write(&model).await;
        assert_eq!(
            status.body["status"].get("idle"),
            None,
            "the wake clears the idle mark: {:#}",
            status.body
        );
        api
    };
    let (outcome, api) = within(async { tokio::join!(reconcile(&model, &ctx), script) }).await;
    drop(ctx);
    api.expect_nothing_more().await;
    let work = outcome.expect("the reconcile succeeds");
    let work = work.reconciled_work().expect("reconciled");
    assert_eq!(work.status.idle, None);
}

#[tokio::test]
async fn an_asleep_model_keeps_its_deployment_at_zero_without_reading_any_runtime() {
    let (client, mut api) = ApiServer::new();
    let mut ctx = context(client, true, true);
    let mut at_zero = woken_deployment();
    at_zero.metadata.generation = Some(4);
    at_zero.spec.as_mut().unwrap().replicas = Some(0);
    let (deployments, mut writer) = reflector::store();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(at_zero));
    ctx.caches.deployments = deployments;
    let model = model(ASLEEP);
    let script = async {
        api.expect_absent("/api/v1/namespaces/ml/services/drowsy-service").await;
        api.expect_absent("/apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/drowsy")
            .await;
        // No handover of the replicas to the HPA, which would wake it: the apply keeps them at 0.
        let deployment = api.expect_apply("/apis/apps/v1/namespaces/ml/deployments/drowsy").await;
        assert_eq!(deployment.body["spec"]["replicas"], 0, "{:#}", deployment.body);
        api.expect_apply("/api/v1/namespaces/ml/services/drowsy-service").await;
        api.expect_apply("/apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/drowsy")
            .await;
        let status = api.expect_status_write(&model).await;
        assert_eq!(
            status.body["status"]["idle"]["deploymentGeneration"], 4,
            "{:#}",
            status.body
        );
        assert_eq!(status.body["status"]["phase"], "ScaledToZero", "{:#}", status.body);
        api
    };
    let (outcome, api) = within(async { tokio::join!(reconcile(&model, &ctx), script) }).await;
    drop(ctx);
    api.expect_nothing_more().await;
    let outcome = outcome.expect("the reconcile succeeds");
    assert_eq!(
        outcome.requeue_after,
        Some(RESYNC_INTERVAL),
        "asleep, nothing is polled: the wake comes as a Deployment event"
    );
}
