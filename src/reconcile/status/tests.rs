//! Status tests: fixtures are the ModelDeployment, Deployment and Job as YAML, the way
//! `kubectl get -o yaml` shows them; failures print the computed status.

use k8s_openapi::{api::batch::v1::Job, jiff::Timestamp};
use serde_json::Value;

use super::*;
use crate::{
    api::ModelDeployment,
    gpu::CapacityReport,
    reconcile::validate::{check, validate},
    vocabulary::OperatorImages,
};

const TRITON: &str = r#"
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: resnet, namespace: ml, generation: 3, uid: 6a1f}
spec:
  modelURI: s3://models/resnet/
  runtime: triton
  version: "2"
  validateScript: check.py
  gpu: {count: 2}
"#;

fn validated(yaml: &str) -> Validated {
    let object: Value = serde_yaml_ng::from_str(yaml).expect("fixture is YAML");
    check(&object, &OperatorImages::default()).unwrap_or_else(|e| panic!("fixture should be valid: {e}"))
}

fn deployment(yaml: &str) -> CachedDeployment {
    serde_yaml_ng::from_str(yaml).expect("Deployment fixture")
}

/// Version 2 rolled out, both replicas ready and available.
const AVAILABLE_V2: &str = r#"
metadata: {name: resnet, namespace: ml}
spec:
  replicas: 2
  selector: {matchLabels: {app.kubernetes.io/name: resnet}}
  template:
    metadata: {labels: {mlops.sathvik.dev/version: "2"}}
status:
  replicas: 2
  readyReplicas: 2
  updatedReplicas: 2
  availableReplicas: 2
  conditions: [{type: Available, status: "True"}]
"#;

/// Version 1 serving on one replica that is still available.
const AVAILABLE_V1: &str = r#"
metadata: {name: resnet, namespace: ml}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: resnet}}
  template:
    metadata: {labels: {mlops.sathvik.dev/version: "1"}}
status:
  replicas: 1
  readyReplicas: 1
  updatedReplicas: 1
  availableReplicas: 1
  conditions: [{type: Available, status: "True"}]
"#;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn inputs<'a>(
    spec: &'a Validated,
    deployment: Option<&'a CachedDeployment>,
    validation: ValidationState,
) -> StatusInputs<'a> {
    StatusInputs {
        generation: Some(3),
        previous: None,
        spec: Ok(spec),
        validation,
        applied: ApplyState::Applied,
        deployment,
        capacity: None,
        model: ModelReadiness::from_pod_readiness(deployment),
        idle: None,
        idle_count_unreadable: false,
        now: at(0),
    }
}

fn condition<'a>(status: &'a ModelDeploymentStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#?}"))
}

fn succeeded() -> ValidationState {
    ValidationState::Succeeded {
        job: "resnet-validate-1".into(),
    }
}

#[test]
fn an_available_rolled_out_deployment_is_ready() {
    let spec = validated(TRITON);
    let deployment = deployment(AVAILABLE_V2);
    let status = compute(inputs(&spec, Some(&deployment), succeeded()));
    assert_eq!(status.phase, Some(Phase::Ready), "{status:#?}");
    assert_eq!(status.version.as_deref(), Some("2"));
    assert_eq!(status.ready.as_deref(), Some("2/2"));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(
        status.endpoint.as_deref(),
        Some("resnet-service.ml.svc:8001"),
        "Triton clients use gRPC"
    );
    for type_ in conditions::ALL_TYPES {
        assert_eq!(condition(&status, type_).status, "True", "{type_} in {status:#?}");
    }
    assert_eq!(
        condition(&status, conditions::MODEL_READY).reason,
        reasons::PODS_READY,
        "until a model probe answers, ModelReady says it comes from pod readiness"
    );
}

#[test]
fn a_running_validation_keeps_the_old_version_and_says_validating() {
    let spec = validated(TRITON);
    let old = deployment(AVAILABLE_V1);
    let running = ValidationState::Running {
        job: "resnet-validate-1".into(),
    };
    let status = compute(inputs(&spec, Some(&old), running));
    assert_eq!(status.phase, Some(Phase::Validating), "{status:#?}");
    assert_eq!(status.version.as_deref(), Some("1"), "version 1 still serves");
    let validated = condition(&status, conditions::VALIDATED);
    assert_eq!(
        (validated.status.as_str(), validated.reason.as_str()),
        ("Unknown", reasons::VALIDATION_RUNNING)
    );
    assert!(validated.message.contains("resnet-validate-1"), "{validated:?}");
    assert_eq!(condition(&status, conditions::READY).status, "True", "v1 keeps serving");
}

#[test]
fn a_failed_validation_is_failed_and_names_the_job_and_the_serving_version() {
    let spec = validated(TRITON);
    let old = deployment(AVAILABLE_V1);
    let failed = ValidationState::Failed {
        job: "resnet-validate-1".into(),
        reason: "BackoffLimitExceeded".into(),
        message: "Job has reached the specified backoff limit".into(),
    };
    let status = compute(inputs(&spec, Some(&old), failed));
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    let message = status.message.as_deref().unwrap();
    assert!(
        message.contains("resnet-validate-1")
            && message.contains("BackoffLimitExceeded")
            && message.contains("version 1 keeps serving"),
        "{message}"
    );
    assert_eq!(
        condition(&status, conditions::VALIDATED).reason,
        reasons::VALIDATION_FAILED
    );
    assert_eq!(status.version.as_deref(), Some("1"));
}

#[test]
fn missing_gpus_make_the_phase_pending_with_the_capacity_message() {
    let spec = validated(TRITON);
    let mut inputs = inputs(&spec, None, succeeded());
    inputs.capacity = Some(CapacityReport {
        fits: false,
        reason: reasons::INSUFFICIENT_GPUS,
        message: "needs 2 × nvidia.com/gpu for each of 1 unscheduled replica(s); room for 0".into(),
    });
    let status = compute(inputs);
    assert_eq!(status.phase, Some(Phase::Pending), "{status:#?}");
    assert!(
        status
            .message
            .as_deref()
            .unwrap()
            .starts_with("needs 2 × nvidia.com/gpu")
    );
    let capacity = condition(&status, conditions::GPU_CAPACITY);
    assert_eq!(
        (capacity.status.as_str(), capacity.reason.as_str()),
        ("False", reasons::INSUFFICIENT_GPUS)
    );
    assert_eq!(
        condition(&status, conditions::AVAILABLE).reason,
        reasons::DEPLOYMENT_NOT_CREATED
    );
}

#[test]
fn an_invalid_spec_fails_with_the_field_errors_and_keeps_the_serving_version() {
    let mut model: ModelDeployment = serde_yaml_ng::from_str(TRITON).unwrap();
    model.spec.model_uri = "ftp://models/resnet".into();
    let errors = validate(&model, &OperatorImages::default()).expect_err("ftp is refused");
    let previous = ModelDeploymentStatus {
        version: Some("1".into()),
        ..ModelDeploymentStatus::default()
    };
    let status = compute(StatusInputs {
        generation: Some(4),
        previous: Some(&previous),
        spec: Err(&errors),
        validation: ValidationState::NotRequired,
        applied: ApplyState::Applied,
        deployment: None,
        capacity: None,
        model: ModelReadiness::from_pod_readiness(None),
        idle: None,
        idle_count_unreadable: false,
        now: at(0),
    });
    assert_eq!(status.phase, Some(Phase::Failed));
    assert!(
        status.message.as_deref().unwrap().contains("spec.modelURI"),
        "{status:#?}"
    );
    assert_eq!(status.version.as_deref(), Some("1"));
    assert_eq!(condition(&status, conditions::VALIDATED).reason, reasons::SPEC_INVALID);
}

#[test]
fn transition_times_change_only_when_a_condition_flips() {
    let spec = validated(TRITON);
    let ready = deployment(AVAILABLE_V2);
    let first = compute(inputs(&spec, Some(&ready), succeeded()));

    let mut again = inputs(&spec, Some(&ready), succeeded());
    again.previous = Some(&first);
    again.now = at(60);
    let second = compute(again);
    assert_eq!(first, second, "nothing changed, so nothing is rewritten");

    let mut unavailable = deployment(AVAILABLE_V2);
    let status = unavailable.status.as_mut().unwrap();
    status.ready_replicas = Some(0);
    status.conditions.as_mut().unwrap()[0].status = "False".into();
    let mut flipped = inputs(&spec, Some(&unavailable), succeeded());
    flipped.previous = Some(&second);
    flipped.now = at(120);
    let third = compute(flipped);
    assert_eq!(
        condition(&third, conditions::AVAILABLE).last_transition_time.0,
        at(120),
        "Available flipped"
    );
    assert_eq!(
        condition(&third, conditions::VALIDATED).last_transition_time.0,
        at(0),
        "Validated held"
    );
    assert_eq!(third.phase, Some(Phase::Deploying));

    let news = transitions(Some(&second), &third);
    let available = news
        .iter()
        .find(|t| t.type_ == conditions::AVAILABLE)
        .expect("Available is news");
    assert!(available.warning, "losing availability is a warning: {news:#?}");
    assert!(
        news.iter().all(|t| t.type_ != conditions::VALIDATED),
        "unchanged conditions are no news: {news:#?}"
    );
}

#[test]
fn a_new_object_reports_problems_but_not_its_initial_false_conditions() {
    let spec = validated(TRITON);
    let status = compute(inputs(&spec, None, succeeded()));
    let news = transitions(None, &status);
    assert!(
        news.iter().all(|t| t.status == "True"),
        "a fresh object with no problem emits only good news: {news:#?}"
    );
}

#[test]
fn job_verdicts_are_read_from_its_conditions() {
    let job = |yaml: &str| -> Job { serde_yaml_ng::from_str(yaml).unwrap() };
    assert_eq!(
        ValidationState::of_job(&job("metadata: {name: j}\nstatus: {active: 1}")),
        ValidationState::Running { job: "j".into() }
    );
    assert_eq!(
        ValidationState::of_job(&job(
            "metadata: {name: j}\nstatus: {succeeded: 1, conditions: [{type: Complete, status: 'True'}]}"
        )),
        ValidationState::Succeeded { job: "j".into() }
    );
    let failed = ValidationState::of_job(&job(
        "metadata: {name: j}\nstatus: {failed: 1, conditions: [{type: Failed, status: 'True', reason: BackoffLimitExceeded, message: backoff}]}",
    ));
    assert_eq!(
        failed,
        ValidationState::Failed {
            job: "j".into(),
            reason: "BackoffLimitExceeded".into(),
            message: "backoff".into()
        }
    );
    assert!(!failed.allows_rollout());
    assert!(ValidationState::NotRequired.allows_rollout());
}

/// Version 2 scaling from one replica to two: one ready, the Deployment's own Available
/// condition False while the second starts (maxUnavailable 0).
const SCALING_UP_V2: &str = r#"
metadata: {name: resnet, namespace: ml}
spec:
  replicas: 2
  selector: {matchLabels: {app.kubernetes.io/name: resnet}}
  template:
    metadata: {labels: {mlops.sathvik.dev/version: "2"}}
status:
  replicas: 2
  readyReplicas: 1
  updatedReplicas: 2
  availableReplicas: 1
  conditions: [{type: Available, status: "False", reason: MinimumReplicasUnavailable}]
"#;

#[test]
fn scaling_up_is_reduced_capacity_and_never_turns_ready_false_or_warns() {
    let spec = validated(TRITON);
    let one = deployment(AVAILABLE_V1.replace("\"1\"", "\"2\"").as_str());
    let before = compute(inputs(&spec, Some(&one), succeeded()));
    assert_eq!(before.phase, Some(Phase::Ready), "{before:#?}");

    let scaling = deployment(SCALING_UP_V2);
    let mut during = inputs(&spec, Some(&scaling), succeeded());
    during.previous = Some(&before);
    during.now = at(30);
    let status = compute(during);
    let available = condition(&status, conditions::AVAILABLE);
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("True", reasons::REDUCED_CAPACITY),
        "{status:#?}"
    );
    assert!(
        available.message.starts_with("1 of 2 replica(s) ready"),
        "{}",
        available.message
    );
    let ready = condition(&status, conditions::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", reasons::SERVING)
    );
    assert_eq!(ready.last_transition_time.0, at(0), "Ready held through the scale-up");
    assert_eq!(status.phase, Some(Phase::Ready), "scaling is no rollout: {status:#?}");
    let news = transitions(Some(&before), &status);
    assert!(news.iter().all(|t| !t.warning), "no Warning for a scale-up: {news:#?}");
}

#[test]
fn a_rollout_keeps_ready_while_a_replica_of_the_serving_version_answers() {
    let spec = validated(TRITON);
    let serving = deployment(AVAILABLE_V1);
    let before = compute(inputs(&spec, Some(&serving), succeeded()));
    // Version 2 rolls out: the new pod is not ready yet, the old one still serves.
    let rolling = deployment(
        &AVAILABLE_V1
            .replace("version: \"1\"", "version: \"2\"")
            .replace("updatedReplicas: 1", "updatedReplicas: 1\n  unavailableReplicas: 1")
            .replace("replicas: 1\n  readyReplicas", "replicas: 2\n  readyReplicas"),
    );
    let mut during = inputs(&spec, Some(&rolling), succeeded());
    during.previous = Some(&before);
    let status = compute(during);
    assert_eq!(condition(&status, conditions::READY).status, "True", "{status:#?}");
    assert_eq!(
        status.phase,
        Some(Phase::Deploying),
        "a rollout is Deploying: {status:#?}"
    );
    assert!(
        transitions(Some(&before), &status).iter().all(|t| !t.warning),
        "{status:#?}"
    );
}

#[test]
fn a_model_that_stops_answering_turns_ready_false_with_warnings() {
    let spec = validated(TRITON);
    let serving = deployment(AVAILABLE_V2);
    let before = compute(inputs(&spec, Some(&serving), succeeded()));
    let mut silent = inputs(&spec, Some(&serving), succeeded());
    silent.previous = Some(&before);
    silent.model = ModelReadiness {
        ready_replicas: 0,
        reason: reasons::SERVER_UNAVAILABLE,
        message: "the model answers on 0 of 2 ready pod(s)".into(),
        model: None,
    };
    let status = compute(silent);
    let ready = condition(&status, conditions::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::NOT_SERVING)
    );
    let news = transitions(Some(&before), &status);
    for type_ in [conditions::MODEL_READY, conditions::READY] {
        assert!(
            news.iter().any(|t| t.type_ == type_ && t.warning),
            "{type_} going False warns: {news:#?}"
        );
    }
}

#[test]
fn a_new_model_on_its_way_to_serving_is_one_event_and_a_problem_solved_is_another() {
    let spec = validated(TRITON);
    let mut short = inputs(
        &spec,
        None,
        ValidationState::Running {
            job: "resnet-validate-1".into(),
        },
    );
    short.capacity = Some(CapacityReport {
        fits: false,
        reason: reasons::INSUFFICIENT_GPUS,
        message: "needs 2 × nvidia.com/gpu; room for 0".into(),
    });
    let pending = compute(short);
    let news = transitions(None, &pending);
    assert_eq!(
        news.iter().map(|t| (t.reason.as_str(), t.warning)).collect::<Vec<_>>(),
        [(reasons::INSUFFICIENT_GPUS, true)],
        "only the problem is news: {news:#?}"
    );

    let serving = deployment(AVAILABLE_V2);
    let mut arrived = inputs(&spec, Some(&serving), succeeded());
    arrived.previous = Some(&pending);
    arrived.capacity = Some(CapacityReport {
        fits: true,
        reason: reasons::GPUS_AVAILABLE,
        message: "2 × nvidia.com/gpu per replica fit".into(),
    });
    let ready = compute(arrived);
    let mut news: Vec<_> = transitions(Some(&pending), &ready)
        .into_iter()
        .map(|t| (t.type_, t.warning))
        .collect();
    news.sort();
    assert_eq!(
        news,
        [
            (conditions::GPU_CAPACITY.to_owned(), false),
            (conditions::READY.to_owned(), false),
            (conditions::VALIDATED.to_owned(), false),
        ],
        "the solved problem, the passed validation and the model serving; not Applied, Available or ModelReady"
    );
}

#[test]
fn the_scale_selector_names_the_serving_pods_in_kubectls_form() {
    let model = validated(TRITON);
    assert_eq!(
        label_selector(&model),
        "app.kubernetes.io/component=model-server,app.kubernetes.io/name=resnet"
    );
}

/// Version 2, scaled to zero: `count` pods still stopping.
fn scaled_to_zero(stopping: u32) -> CachedDeployment {
    deployment(&format!(
        r#"
metadata: {{name: resnet, namespace: ml}}
spec:
  replicas: 0
  template:
    metadata: {{labels: {{mlops.sathvik.dev/version: "2"}}}}
status:
  replicas: {stopping}
  updatedReplicas: {stopping}
"#
    ))
}

#[test]
fn a_model_at_zero_is_scaled_to_zero_not_deploying_and_says_how_it_wakes() {
    let spec = validated(TRITON);
    let idle = scaled_to_zero(0);
    let status = compute(inputs(&spec, Some(&idle), succeeded()));
    assert_eq!(status.phase, Some(Phase::ScaledToZero), "{status:#?}");
    assert_eq!(status.ready.as_deref(), Some("0/0"));
    for type_ in [conditions::AVAILABLE, conditions::MODEL_READY, conditions::READY] {
        let c = condition(&status, type_);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::SCALED_TO_ZERO),
            "{type_}"
        );
    }
    assert_eq!(
        status.message.as_deref(),
        Some("scaled to zero (replicas: 0); a request through the activator scales it to one")
    );

    let stopping = scaled_to_zero(2);
    let status = compute(inputs(&spec, Some(&stopping), succeeded()));
    assert_eq!(status.phase, Some(Phase::ScaledToZero));
    assert_eq!(
        status.message.as_deref(),
        Some("scaled to zero (replicas: 0); 2 replica(s) still stopping")
    );
}

#[test]
fn a_model_that_cannot_tell_whether_it_is_idle_stays_up_and_says_why() {
    let spec = validated(&TRITON.replace(
        "  gpu: {count: 2}\n",
        "  gpu: {count: 2}\n  autoscale: true\n  autoscaling: {minReplicas: 0, scaleToZeroAfter: 15m}\n",
    ));
    let deployment = deployment(AVAILABLE_V2);
    let status = compute(StatusInputs {
        idle_count_unreadable: true,
        ..inputs(&spec, Some(&deployment), succeeded())
    });
    let available = condition(&status, conditions::AVAILABLE);
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("True", "DeploymentAvailable")
    );
    assert_eq!(
        available.message,
        "2 of 2 replica(s) ready; it does not go to zero while its runtime's request count cannot be read (the operator's log says why)"
    );
    let readable = compute(inputs(&spec, Some(&deployment), succeeded()));
    assert_eq!(
        condition(&readable, conditions::AVAILABLE).message,
        "2 of 2 replica(s) ready"
    );
}

#[test]
fn a_model_the_operator_put_to_sleep_says_how_long_it_was_idle_and_keeps_its_mark() {
    let spec = validated(&TRITON.replace(
        "  gpu: {count: 2}\n",
        "  gpu: {count: 2}\n  autoscale: true\n  autoscaling: {minReplicas: 0, scaleToZeroAfter: 15m}\n",
    ));
    let asleep = scaled_to_zero(0);
    let mark = crate::api::IdleStatus {
        since: Time(at(0)),
        requests: 41,
        scaled_to_zero_at: Some(Time(at(900))),
        deployment_generation: Some(6),
    };
    let status = compute(StatusInputs {
        idle: Some(mark.clone()),
        ..inputs(&spec, Some(&asleep), succeeded())
    });
    assert_eq!(status.phase, Some(Phase::ScaledToZero), "{status:#?}");
    let message = status.message.clone().unwrap();
    assert!(
        message.starts_with("scaled to zero (no request for 15m (none since "),
        "{message}"
    );
    assert!(
        message.ends_with("a request through the activator scales it to one"),
        "{message}"
    );
    assert_eq!(status.idle, Some(mark), "the mark is kept for the wake and a restart");
}
