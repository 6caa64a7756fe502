//! Status (pure): computes a ModelDeployment's status from what the reconcile observed and applied.
//! Conditions keep their `lastTransitionTime` unless their status flips; the phase, message and
//! counts are derived from the conditions, so they can never disagree with them.

use k8s_openapi::{
    api::batch::v1::Job,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use super::{build, ownership::ForeignObject, retry::Retry};
use crate::{
    api::{
        IdleStatus, ModelDeploymentStatus, Phase,
        admission::FieldErrors,
        conditions::{self, reasons},
    },
    gpu::CapacityReport,
    model_readiness::ModelReadiness,
    runtimes,
    vocabulary::{
        Validated,
        cached::CachedDeployment,
        names::{LABEL_VERSION, service_name},
    },
};

/// Where the version's validation Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationState {
    /// The spec has no `validateScript`.
    NotRequired,
    /// The Job is created (or about to be) and has not finished.
    Running {
        job: String,
    },
    Succeeded {
        job: String,
    },
    Failed {
        job: String,
        reason: String,
        message: String,
    },
}

impl ValidationState {
    /// The Job's verdict; `None` for a Job that has not been created yet.
    pub fn of_job(job: &Job) -> Self {
        let name = job.metadata.name.clone().unwrap_or_default();
        let status = job.status.as_ref();
        let finished = |kind: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|conditions| conditions.iter().find(|c| c.type_ == kind && c.status == "True"))
        };
        if let Some(failed) = finished("Failed") {
            return Self::Failed {
                job: name,
                reason: failed.reason.clone().unwrap_or_else(|| "JobFailed".to_owned()),
                message: failed.message.clone().unwrap_or_default(),
            };
        }
        if finished("Complete").is_some() || status.and_then(|s| s.succeeded).unwrap_or(0) > 0 {
            return Self::Succeeded { job: name };
        }
        Self::Running { job: name }
    }

    /// Whether the spec's version may be rolled out to the Deployment.
    pub fn allows_rollout(&self) -> bool {
        matches!(self, Self::NotRequired | Self::Succeeded { .. })
    }
}

/// Whether the children of the current spec are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyState {
    /// Every child the spec wants is written as built.
    Applied,
    /// Names held by objects this model does not control; nothing was written.
    NameTaken(Vec<ForeignObject>),
    /// The API server refused a child as built; tried again (a quota may be lifted) per `retry`.
    Rejected {
        kind: String,
        name: String,
        message: String,
        retry: Retry,
    },
    /// Writing failed for another reason; tried again per `retry`.
    Failed {
        kind: String,
        name: String,
        message: String,
        retry: Retry,
    },
}

/// Everything the status is computed from.
#[derive(Debug)]
pub struct StatusInputs<'a> {
    pub generation: Option<i64>,
    pub previous: Option<&'a ModelDeploymentStatus>,
    pub spec: Result<&'a Validated, &'a FieldErrors>,
    pub validation: ValidationState,
    pub applied: ApplyState,
    /// The Deployment as last applied or observed; `None` before the first rollout.
    pub deployment: Option<&'a CachedDeployment>,
    /// The GPU pre-flight verdict; `None` when no GPU is requested.
    pub capacity: Option<CapacityReport>,
    pub model: ModelReadiness,
    /// The idle mark of a model that may go to zero (`crate::reconcile::idle`).
    pub idle: Option<IdleStatus>,
    /// A model that may go to zero whose runtimes' request count cannot be read: it stays up,
    /// and `Available` says why.
    pub idle_count_unreadable: bool,
    pub now: Timestamp,
}

/// The whole status, as it will be written.
pub fn compute(inputs: StatusInputs<'_>) -> ModelDeploymentStatus {
    let StatusInputs {
        generation,
        previous,
        spec,
        validation,
        applied,
        deployment,
        capacity,
        model,
        idle,
        idle_count_unreadable,
        now,
    } = inputs;
    let previous_conditions = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let mut conditions = Conditions {
        list: Vec::new(),
        previous: previous_conditions,
        generation,
        now,
    };

    let validated = match spec {
        Ok(validated) => validated,
        Err(errors) => {
            let message = format!("the spec is invalid: {errors}");
            conditions.set(conditions::VALIDATED, false, reasons::SPEC_INVALID, &message);
            for kind in [
                conditions::GPU_CAPACITY,
                conditions::APPLIED,
                conditions::MODEL_READY,
                conditions::AVAILABLE,
                conditions::READY,
            ] {
                conditions.set(
                    kind,
                    false,
                    reasons::SPEC_INVALID,
                    "nothing is deployed for an invalid spec",
                );
            }
            return ModelDeploymentStatus {
                phase: Some(Phase::Failed),
                message: Some(message),
                version: previous.and_then(|p| p.version.clone()),
                observed_generation: generation,
                conditions: conditions.list,
                ..previous.cloned().unwrap_or_default()
            };
        }
    };

    match &validation {
        ValidationState::NotRequired => conditions.set(
            conditions::VALIDATED,
            true,
            reasons::NO_VALIDATION_SCRIPT,
            "the spec is valid; no validateScript is set",
        ),
        ValidationState::Running { job } => conditions.set_unknown(
            conditions::VALIDATED,
            reasons::VALIDATION_RUNNING,
            &format!("Job {job} is validating version {}", validated.version),
        ),
        ValidationState::Succeeded { job } => conditions.set(
            conditions::VALIDATED,
            true,
            reasons::VALIDATION_SUCCEEDED,
            &format!("Job {job} validated version {}", validated.version),
        ),
        ValidationState::Failed { job, reason, message } => conditions.set(
            conditions::VALIDATED,
            false,
            reasons::VALIDATION_FAILED,
            &format!(
                "Job {job} failed to validate version {} ({reason}{}{message})",
                validated.version,
                if message.is_empty() { "" } else { ": " }
            ),
        ),
    }

    match &capacity {
        None => conditions.set(
            conditions::GPU_CAPACITY,
            true,
            reasons::NO_GPU_REQUESTED,
            "the model requests no GPU",
        ),
        Some(report) => conditions.set(conditions::GPU_CAPACITY, report.fits, report.reason, &report.message),
    }

    match &applied {
        ApplyState::Applied => conditions.set(
            conditions::APPLIED,
            true,
            reasons::CHILDREN_APPLIED,
            "every child of this spec is written",
        ),
        ApplyState::NameTaken(foreign) => conditions.set(
            conditions::APPLIED,
            false,
            reasons::NAME_TAKEN,
            &format!(
                "{}; nothing is written until {} away or the ModelDeployment is renamed",
                foreign
                    .iter()
                    .map(ForeignObject::describe)
                    .collect::<Vec<_>>()
                    .join("; "),
                if foreign.len() == 1 { "it goes" } else { "they go" }
            ),
        ),
        ApplyState::Rejected {
            kind, name, message, ..
        } => conditions.set(
            conditions::APPLIED,
            false,
            reasons::CHILD_REJECTED,
            &format!("the API server refused {kind} {name}: {message}"),
        ),
        ApplyState::Failed {
            kind,
            name,
            message,
            retry,
        } => conditions.set(
            conditions::APPLIED,
            false,
            reasons::APPLY_FAILED,
            &format!(
                "writing {kind} {name} failed: {message}; trying again in {}",
                humantime::format_duration(retry.backoff)
            ),
        ),
    }

    let deployment_status = deployment.and_then(|d| d.status.as_ref());
    let replicas = deployment_status.and_then(|s| s.replicas).unwrap_or(0);
    let ready_replicas = deployment_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let wanted = deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let serving_version = deployment.and_then(serving_version);

    // Capacity and service are told apart: a Deployment scaling up or rolling out has fewer
    // ready replicas than wanted for a while, which is reduced capacity (Available stays True,
    // its reason says so), not an outage. Only no ready replica at all is unavailable.
    // Scaled to zero: nothing is wanted, so nothing missing is a fault.
    let at_zero = deployment.is_some() && wanted == 0;
    let why_zero = match (idle.as_ref(), validated.scaling.scale_to_zero_after()) {
        (Some(mark), Some(after)) if mark.scaled_to_zero_at.is_some() => format!(
            "no request for {} (none since {})",
            humantime::format_duration(after),
            mark.since.0.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        _ => "replicas: 0".to_owned(),
    };
    let zero_message = if replicas > 0 {
        format!("scaled to zero ({why_zero}); {replicas} replica(s) still stopping")
    } else {
        format!("scaled to zero ({why_zero}); a request through the activator scales it to one")
    };
    if deployment.is_none() {
        conditions.set(
            conditions::AVAILABLE,
            false,
            reasons::DEPLOYMENT_NOT_CREATED,
            "the Deployment is created once the version is validated",
        );
    } else if at_zero {
        conditions.set(conditions::AVAILABLE, false, reasons::SCALED_TO_ZERO, &zero_message);
    } else if ready_replicas > 0 {
        // A model that may go to zero and cannot tell whether it is idle stays up: said here,
        // since it is about how many replicas it keeps.
        let stays_up = if idle_count_unreadable {
            "; it does not go to zero while its runtime's request count cannot be read (the operator's log says why)"
        } else {
            ""
        };
        let (reason, message) = if ready_replicas >= wanted {
            (
                reasons::DEPLOYMENT_AVAILABLE,
                format!("{ready_replicas} of {wanted} replica(s) ready{stays_up}"),
            )
        } else {
            (
                reasons::REDUCED_CAPACITY,
                format!(
                    "{ready_replicas} of {wanted} replica(s) ready; the others are starting or being replaced{stays_up}"
                ),
            )
        };
        conditions.set(conditions::AVAILABLE, true, reason, &message);
    } else {
        conditions.set(
            conditions::AVAILABLE,
            false,
            reasons::DEPLOYMENT_UNAVAILABLE,
            &format!("{ready_replicas} of {wanted} replica(s) ready"),
        );
    }

    // Ready means the model answers: one replica whose model answers serves, however many
    // others are starting.
    let ready = deployment.is_some() && model.ready_replicas > 0;
    if at_zero && !ready {
        conditions.set(conditions::MODEL_READY, false, reasons::SCALED_TO_ZERO, &zero_message);
    } else {
        conditions.set(conditions::MODEL_READY, ready, model.reason, &model.message);
    }
    let ready_message = if ready {
        format!(
            "version {} serves on {} of {wanted} replica(s)",
            serving_version.as_deref().unwrap_or(&validated.version),
            model.ready_replicas
        )
    } else if deployment.is_none() {
        "nothing is deployed yet".to_owned()
    } else {
        "no replica's model answers yet".to_owned()
    };
    let (ready_reason, ready_message) = match () {
        () if ready => (reasons::SERVING, ready_message),
        () if at_zero => (reasons::SCALED_TO_ZERO, zero_message.clone()),
        () => (reasons::NOT_SERVING, ready_message),
    };
    conditions.set(conditions::READY, ready, ready_reason, &ready_message);

    let rolled_out = serving_version.as_deref() == Some(validated.version.as_str())
        && deployment_status.and_then(|s| s.updated_replicas).unwrap_or(0) >= wanted
        && replicas <= wanted;
    let keeps_serving = |text: String| {
        format!(
            "{text}{}",
            serving_version
                .as_deref()
                .map(|v| format!("; version {v} keeps serving"))
                .unwrap_or_default()
        )
    };
    let (phase, message) = match (&validation, &capacity) {
        _ if applied != ApplyState::Applied => (Phase::Failed, keeps_serving(conditions.message(conditions::APPLIED))),
        (ValidationState::Failed { .. }, _) => (
            Phase::Failed,
            format!(
                "{}{}",
                conditions.message(conditions::VALIDATED),
                serving_version
                    .as_deref()
                    .map(|v| format!("; version {v} keeps serving"))
                    .unwrap_or_default()
            ),
        ),
        (ValidationState::Running { .. }, _) => (Phase::Validating, conditions.message(conditions::VALIDATED)),
        (_, Some(report)) if !report.fits => (Phase::Pending, report.message.clone()),
        _ if at_zero && !ready => (Phase::ScaledToZero, zero_message),
        _ if ready && rolled_out => (Phase::Ready, ready_message),
        _ if ready_replicas == 0 => (Phase::Deploying, conditions.message(conditions::AVAILABLE)),
        _ if ready => (
            Phase::Deploying,
            format!("rolling out version {}; {ready_message}", validated.version),
        ),
        _ => (Phase::Deploying, conditions.message(conditions::MODEL_READY)),
    };

    ModelDeploymentStatus {
        phase: Some(phase),
        message: Some(message),
        version: serving_version.or_else(|| previous.and_then(|p| p.version.clone())),
        observed_generation: generation,
        replicas: Some(replicas),
        selector: Some(label_selector(validated)),
        ready_replicas: Some(ready_replicas),
        model_ready_replicas: Some(model.ready_replicas),
        ready: Some(format!("{}/{}", model.ready_replicas, wanted)),
        endpoint: Some(endpoint(validated)),
        model: model.model.or_else(|| previous.and_then(|p| p.model.clone())),
        // Set by the driver from the caches (DRA claims are not among these inputs).
        gpu_allocation: None,
        gpu_devices: Vec::new(),
        idle,
        conditions: conditions.list,
    }
}

/// The version the Deployment's pod template carries: what serves, or is rolling out.
pub fn serving_version(deployment: &CachedDeployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get(LABEL_VERSION)
        .cloned()
}

/// The serving pods' labels as a selector string (`key=value,…`, keys in order), the form the
/// `/scale` subresource's `labelSelectorPath` must point at.
pub fn label_selector(model: &Validated) -> String {
    build::server_selector(model)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `NAME-service.NAMESPACE.svc:PORT`, the in-cluster address clients send inference to.
pub fn endpoint(model: &Validated) -> String {
    format!(
        "{}.{}.svc:{}",
        service_name(&model.name),
        model.namespace,
        runtimes::of(model).inference_port().port
    )
}

/// Builds the condition list, carrying each `lastTransitionTime` over while the status holds.
struct Conditions<'a> {
    list: Vec<Condition>,
    previous: &'a [Condition],
    generation: Option<i64>,
    now: Timestamp,
}

impl Conditions<'_> {
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        self.push(type_, if status { "True" } else { "False" }, reason, message);
    }

    fn set_unknown(&mut self, type_: &str, reason: &str, message: &str) {
        self.push(type_, "Unknown", reason, message);
    }

    fn push(&mut self, type_: &str, status: &str, reason: &str, message: &str) {
        let last_transition_time = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        self.list.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation: self.generation,
            last_transition_time,
        });
    }

    fn message(&self, type_: &str) -> String {
        self.list
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    }
}

/// A condition whose status or reason differs from before: what Events report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// A change users should look at: a condition that went False, or validation failing.
    pub warning: bool,
}

/// The transitions worth an Event: every problem and every loss (Warnings), and of the good
/// news only what a user waits for: the model serving (`Ready`), a validation passing, and a
/// problem warned about before going away. A new model's steps on the way to `Ready` (children
/// applied, Deployment available, model loaded) are in its status; an Event each would be half
/// of the API requests a burst of new models costs.
pub fn transitions(previous: Option<&ModelDeploymentStatus>, next: &ModelDeploymentStatus) -> Vec<Transition> {
    let before = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    next.conditions
        .iter()
        .filter_map(|c| {
            let was = before.iter().find(|b| b.type_ == c.type_);
            if was.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
                return None;
            }
            let was_true = was.is_some_and(|b| b.status == "True");
            // A fresh object starts with most conditions False: that is no news, a problem is.
            if c.status != "True" && !was_true && !is_problem(&c.reason) {
                return None;
            }
            let was_problem = was.is_some_and(|b| b.status != "True" && is_problem(&b.reason));
            let awaited = c.type_ == conditions::READY || c.reason == reasons::VALIDATION_SUCCEEDED;
            if c.status == "True" && !awaited && !was_problem {
                return None;
            }
            Some(Transition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                warning: c.status == "False" && (was_true || is_problem(&c.reason)),
            })
        })
        .collect()
}

fn is_problem(reason: &str) -> bool {
    [
        reasons::SPEC_INVALID,
        reasons::VALIDATION_FAILED,
        reasons::INSUFFICIENT_GPUS,
        reasons::NO_MATCHING_NODES,
        reasons::NAME_TAKEN,
        reasons::CHILD_REJECTED,
        reasons::APPLY_FAILED,
    ]
    .contains(&reason)
}

#[cfg(test)]
mod tests;
