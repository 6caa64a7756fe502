//! The reconcile driver: one `ModelDeployment` brought to its desired state, one step per
//! module, read top to bottom in [`reconcile`]:
//!
//! 1. [`fetch`] (reads): the children that exist, from the watch caches;
//! 2. [`validate`] (pure): the spec resolved into `Validated`, or the fields that are wrong;
//!    then [`idle`]: whether a model that may go to zero is asleep, woken, or idle long enough,
//!    and [`traffic`]: whether its Service points at the pods or at the activator;
//! 3. [`build`] (pure): the desired children, one file per kind;
//! 4. [`apply`] (writes): every child's name checked to be free or this model's
//!    ([`ownership`]), then server-side apply in a fixed order, pruning what is no longer wanted;
//!    a failure is reported in the status and retried with backoff ([`retry`]);
//! 5. readiness (`crate::model_readiness`): does the model itself answer in each ready pod;
//! 6. [`status`] (pure, then one write): the status computed from all of the above.
//!
//! The driver returns an [`Outcome`], plain data saying what it found and did; [`report`]
//! publishes metrics and Events from it, and the process (`crate::controller`) requeues by it.

pub mod apply;
pub mod build;
mod context;
pub mod fetch;
pub mod idle;
mod last_applied;
mod outcome;
pub mod ownership;
pub mod report;
mod retry;
pub mod status;
pub mod traffic;
pub mod validate;
mod written_status;

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use std::time::Duration;
use tracing::{debug, warn};

use self::{
    apply::Applied,
    apply::ApplyError,
    idle::{Reading, Standing},
    status::{ApplyState, StatusInputs, ValidationState},
};
pub use self::{
    context::Context,
    fetch::{Caches, PodIndex, RequestedGpus},
    idle::IdleClocks,
    last_applied::LastApplied,
    outcome::{Outcome, Reconciled, Skipped, ValidationVerdict, Work},
    retry::ApplyRetries,
    written_status::WrittenStatus,
};
use crate::{
    api::{
        IdleStatus, ModelDeployment, ModelDeploymentStatus,
        conditions::{self, reasons},
    },
    model_readiness::{self, ModelReadiness},
    vocabulary::{
        Scaling, Validated,
        cached::CachedPod,
        pods::{is_ready, is_terminating},
    },
};

/// Without any event, every ModelDeployment is looked at again this often: a safety net for
/// a missed watch event, not how the operator normally reacts.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// A reconcile that arrives before the caches have listed comes back after this.
const CACHE_SYNC_RETRY: Duration = Duration::from_millis(500);
/// A model whose child's name someone else holds looks again this often: the caches do not see
/// that object go away.
const NAME_TAKEN_RECHECK: Duration = Duration::from_secs(30);

/// What a reconcile can fail with; `reason` is a fixed label for metrics and logs.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl ReconcileError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Apply(error) => error.reason(),
        }
    }

    /// A conflict or a vanished object: the next watch event brings a fresher view.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Apply(error) => error.is_transient(),
        }
    }
}

/// Reconciles one ModelDeployment: fetch → validate → build → apply → readiness → status.
pub async fn reconcile(model: &ModelDeployment, ctx: &Context) -> Result<Outcome, ReconcileError> {
    let result = reconcile_while_leading(model, ctx).await;
    // The term can end mid-reconcile (the Lease was lost, the replica was frozen): the client
    // refused every write after that, which is no failure of the model's, and what was decided
    // is the next leader's to redo.
    if !ctx.is_leader() {
        ctx.apply_retries
            .forget(&model.namespace().unwrap_or_default(), &model.name_any());
        return Ok(Outcome::skipped(model, Skipped::NotLeader, None));
    }
    result
}

async fn reconcile_while_leading(model: &ModelDeployment, ctx: &Context) -> Result<Outcome, ReconcileError> {
    // Until every cache has listed, "not in the cache" would read as "does not exist". The
    // reconcile must not wait here: a waiting reconcile holds a concurrency slot, and the
    // Controller stops polling the watches (and so the caches) while its slots are full.
    if !ctx.caches_synced() {
        return Ok(Outcome::skipped(
            model,
            Skipped::CachesNotSynced,
            Some(CACHE_SYNC_RETRY),
        ));
    }
    if !ctx.is_leader() {
        return Ok(Outcome::skipped(model, Skipped::NotLeader, None));
    }
    if model.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove every child.
        return Ok(Outcome::skipped(model, Skipped::Deleting, None));
    }
    // The status this process wrote last, when the cached object is older than that write.
    let lately_written = ctx.written_status.newer_than_cache(model);
    let previous = lately_written.as_ref().or(model.status.as_ref());
    let now = Timestamp::now();

    // 1. fetch
    let mut observed = ctx.caches.observe(model);

    // 2. validate
    let mut spec = match validate::validate(model, &ctx.images) {
        Ok(spec) => spec,
        Err(errors) => {
            let next = status::compute(StatusInputs {
                generation: model.metadata.generation,
                previous,
                spec: Err(&errors),
                validation: ValidationState::NotRequired,
                applied: ApplyState::Applied,
                deployment: None,
                capacity: None,
                model: ModelReadiness::from_pod_readiness(None),
                // The children stay as they are, and so does the idle clock.
                idle: previous.and_then(|p| p.idle.clone()),
                idle_count_unreadable: false,
                now,
            });
            let status_written = write_status_if_changed(ctx, model, previous, &next).await?;
            return Ok(Outcome::reconciled(
                model,
                Some(RESYNC_INTERVAL),
                Reconciled {
                    runtime: None,
                    previous: previous.cloned(),
                    status: next,
                    status_written,
                    created_deployment: None,
                    started_validation: None,
                    validation_verdict: None,
                    apply_failure: None,
                },
            ));
        }
    };

    // 2b. idle: asleep (the Deployment wants no replica), woken, or looked at
    let Idleness {
        mark: mut idle_mark,
        recheck: idle_recheck,
        count_unreadable,
    } = look_for_idleness(ctx, &mut spec, previous, &observed, now).await;

    // 2c. traffic: the activator's while the model has no replica that answers
    let activator = ctx.caches.activator_endpoints();
    let wants_zero = spec.asleep || matches!(spec.scaling, Scaling::Fixed { replicas: 0 });
    let to_activator = traffic::activator_takes_traffic(traffic::TrafficInputs {
        wants_zero,
        model_ready_replicas: previous.and_then(|p| p.model_ready_replicas).unwrap_or(0),
        handed_to_activator: observed.activator_slice.is_some(),
        activator_ready: activator.is_some(),
    });
    spec.activator = activator.filter(|_| to_activator);

    // 3. build, with `allocation: auto` resolved from what the cluster publishes
    if let Some(gpu) = spec.gpu.as_mut() {
        gpu.allocation = ctx.caches.resolve_allocation(gpu);
    }
    let desired = build::build(&spec);
    observed.pick_validation_job(spec.validation.as_ref().map(|plan| plan.job_name.as_str()));
    observed.pick_claim_template(build::claim_template_name_for(&spec).as_deref());

    // 4. apply: the validation Job gates the Deployment's rollout; the GPU pre-flight reads
    // what fetch saw, before any pod of this apply exists.
    let validation = match (&spec.validation, &observed.validation_job) {
        (None, _) => ValidationState::NotRequired,
        (Some(plan), None) => ValidationState::Running {
            job: plan.job_name.clone(),
        },
        (Some(_), Some(job)) => ValidationState::of_job(job),
    };
    let capacity = ctx.caches.gpu_capacity(&spec, &observed);
    let (applied, apply_state, apply_failure) = apply_children(ctx, model, &desired, &observed, &validation).await;
    let deployment = applied.deployment.as_ref().or(observed.deployment.as_deref());

    // 5. readiness: the runtimes' own word where the operator can reach them, else the kubelet's.
    let (readiness, recheck) = if deployment.is_some() && ctx.endpoints.reaches(&spec) {
        let (readiness, decisive) =
            model_readiness::probe_models(&ctx.prober, &ctx.endpoints, &spec, &observed.pods).await;
        let recheck = decisive.map(|outcome| ctx.probe_schedule.next(&spec.namespace, &spec.name, &outcome));
        (readiness, recheck)
    } else {
        (ModelReadiness::from_pod_readiness(deployment), None)
    };

    // Asleep only once the Deployment was written at zero; the generation it was written at
    // tells a later wake from a cache that has not caught up.
    let just_asleep = |m: &&mut IdleStatus| m.scaled_to_zero_at.is_some() && m.deployment_generation.is_none();
    if let Some(mark) = idle_mark.as_mut().filter(just_asleep) {
        match (&apply_state, applied.deployment.as_ref()) {
            (ApplyState::Applied, Some(written)) => mark.deployment_generation = written.metadata.generation,
            _ => mark.scaled_to_zero_at = None,
        }
    }

    // 6. status
    let retry = match &apply_state {
        ApplyState::Applied if applied.awaiting_cache => Some(last_applied::UNCONFIRMED_TRUST),
        ApplyState::Applied => None,
        ApplyState::NameTaken(_) => Some(NAME_TAKEN_RECHECK),
        ApplyState::Rejected { retry, .. } | ApplyState::Failed { retry, .. } => Some(retry.after),
    };
    let mut next = status::compute(StatusInputs {
        generation: model.metadata.generation,
        previous,
        spec: Ok(&spec),
        validation,
        applied: apply_state,
        deployment,
        capacity,
        model: readiness,
        idle: idle_mark,
        idle_count_unreadable: count_unreadable,
        now,
    });
    if let Some(gpu) = &spec.gpu {
        next.gpu_allocation = Some(gpu.allocation);
        if gpu.uses_dra() {
            next.gpu_devices = ctx.caches.replica_gpus(&observed);
        }
    }
    let status_written = write_status_if_changed(ctx, model, previous, &next).await?;

    let created_deployment = applied
        .deployment
        .as_ref()
        .filter(|_| applied.created_deployment)
        .and_then(|d| d.metadata.uid.clone());
    let started_validation = spec
        .validation
        .as_ref()
        .filter(|_| applied.started_validation)
        .map(|plan| plan.job_name.clone());
    let validation_verdict = spec
        .validation
        .as_ref()
        .and_then(|plan| validation_verdict(previous, &next, &plan.job_name));
    // Model probes are polled on their schedule (soon while loading, every 30 s once served,
    // so that a model that stops answering is noticed). Everything else ends with a change a
    // watch reports (a Job finishing, pods becoming ready, GPUs freed), so only the safety
    // resync is timed.
    let requeue = [recheck, retry, idle_recheck]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(RESYNC_INTERVAL)
        .min(RESYNC_INTERVAL);
    Ok(Outcome::reconciled(
        model,
        Some(requeue),
        Reconciled {
            runtime: Some(spec.runtime),
            previous: previous.cloned(),
            status: next,
            status_written,
            created_deployment,
            started_validation,
            validation_verdict,
            apply_failure,
        },
    ))
}

/// Step 4: the names checked, then the children written. A failure becomes the status's
/// `Applied` condition (with the API server's words) and a fixed reason for the metrics,
/// never a silent retry loop; what already runs is left as it is.
async fn apply_children(
    ctx: &Context,
    model: &ModelDeployment,
    desired: &build::Desired,
    observed: &fetch::Observed,
    validation: &ValidationState,
) -> (Applied, ApplyState, Option<&'static str>) {
    let namespace = model.namespace().unwrap_or_default();
    let name = model.name_any();
    let owner_uid = model.uid().unwrap_or_default();
    let foreign = match ownership::foreign_objects(
        &ctx.client,
        &ctx.last_applied,
        (&namespace, &name),
        desired,
        observed,
        &owner_uid,
        validation.allows_rollout(),
    )
    .await
    {
        Ok(foreign) => foreign,
        Err(error) => {
            let failure = ApplyState::Failed {
                kind: error.kind.clone(),
                name: error.name.clone(),
                message: error.source.to_string(),
                retry: ctx.apply_retries.failed(&namespace, &name),
            };
            return (Applied::default(), failure, Some(reasons::APPLY_FAILED));
        }
    };
    if !foreign.is_empty() {
        return (
            Applied::default(),
            ApplyState::NameTaken(foreign),
            Some(reasons::NAME_TAKEN),
        );
    }
    match apply::apply(
        &ctx.client,
        &ctx.last_applied,
        (&namespace, &name),
        desired,
        observed,
        validation.allows_rollout(),
    )
    .await
    {
        Ok(applied) => {
            ctx.apply_retries.forget(&namespace, &name);
            (applied, ApplyState::Applied, None)
        }
        Err(error) => {
            let (kind, child) = error.object();
            let (kind, child, message) = (kind.to_owned(), child.to_owned(), error.api_message());
            if error.is_refusal() {
                let state = ApplyState::Rejected {
                    kind,
                    name: child,
                    message,
                    retry: ctx.apply_retries.failed(&namespace, &name),
                };
                (Applied::default(), state, Some(reasons::CHILD_REJECTED))
            } else {
                let state = ApplyState::Failed {
                    kind,
                    name: child,
                    message,
                    retry: ctx.apply_retries.failed(&namespace, &name),
                };
                (Applied::default(), state, Some(reasons::APPLY_FAILED))
            }
        }
    }
}

/// What step 2b found.
struct Idleness {
    /// The status's idle mark.
    mark: Option<IdleStatus>,
    /// When to look again.
    recheck: Option<Duration>,
    /// The runtimes' request count could not be read at the last few looks, so the model does
    /// not go to zero; the status says so.
    count_unreadable: bool,
}

/// Step 2b, for a model that may go to zero: asleep, its Deployment is built at zero; awake and
/// serving, the runtimes' request counts are read and judged against its idle clock, and a
/// model idle for `scaleToZeroAfter` goes to zero in this very reconcile.
async fn look_for_idleness(
    ctx: &Context,
    spec: &mut Validated,
    previous: Option<&ModelDeploymentStatus>,
    observed: &fetch::Observed,
    now: Timestamp,
) -> Idleness {
    let (namespace, name) = (spec.namespace.clone(), spec.name.clone());
    let after = spec.scaling.scale_to_zero_after();
    let mark = previous.and_then(|p| p.idle.as_ref());
    let quiet = |mark, recheck| Idleness {
        mark,
        recheck,
        count_unreadable: false,
    };
    match idle::standing(after, mark, observed.deployment.as_deref()) {
        Standing::Never | Standing::Woken => {
            ctx.idle_clocks.set(&namespace, &name, None);
            ctx.idle_clocks.unreadable_looks(&namespace, &name, false);
            quiet(None, None)
        }
        Standing::Asleep(mark) => {
            spec.asleep = true;
            ctx.idle_clocks.unreadable_looks(&namespace, &name, false);
            quiet(Some(mark), None)
        }
        Standing::Awake(mark) => {
            let after = after.expect("a model that may go to zero has an idle time");
            let serving: Vec<std::sync::Arc<CachedPod>> = observed
                .pods
                .iter()
                .filter(|pod| is_ready(pod) && !is_terminating(pod))
                .cloned()
                .collect();
            let (reading, unreadable) = if serving.is_empty() {
                (Reading::NotServing, None)
            } else {
                match ctx.request_counts.requests_served(&serving).await {
                    Ok(requests) => (Reading::Requests(requests.round() as i64), None),
                    Err(why) => (Reading::Unknown, Some(why)),
                }
            };
            let looks = ctx
                .idle_clocks
                .unreadable_looks(&namespace, &name, unreadable.is_some());
            if let Some(why) = &unreadable {
                // Said once at warn, when the status starts saying it; the looks after at debug.
                if looks == idle::UNREADABLE_LOOKS_REPORTED {
                    warn!(model = %name, %namespace, %why, "the request count cannot be read: the model does not go to zero");
                } else {
                    debug!(model = %name, %namespace, %why, "the request count cannot be read: no idle verdict");
                }
            }
            let look = idle::look(
                after,
                mark.as_ref(),
                ctx.idle_clocks.get(&namespace, &name),
                reading,
                now,
            );
            ctx.idle_clocks.set(&namespace, &name, look.seen);
            spec.asleep = look.goes_to_zero();
            Idleness {
                mark: look.idle,
                recheck: Some(look.recheck),
                count_unreadable: looks >= idle::UNREADABLE_LOOKS_REPORTED,
            }
        }
    }
}

/// The status is written only when it differs from what the object carries (or what this
/// process wrote last, while the cache has not caught up): an unchanged model costs no write.
async fn write_status_if_changed(
    ctx: &Context,
    model: &ModelDeployment,
    previous: Option<&ModelDeploymentStatus>,
    next: &ModelDeploymentStatus,
) -> Result<bool, ApplyError> {
    if previous == Some(next) {
        return Ok(false);
    }
    let stored = apply::write_status(&ctx.client, model, next).await?;
    ctx.written_status.record(model, next, &stored);
    Ok(true)
}

/// The Job's verdict, when this status is the first to carry it: the `Validated` condition
/// leaving ValidationRunning for ValidationSucceeded or ValidationFailed.
fn validation_verdict(
    previous: Option<&ModelDeploymentStatus>,
    next: &ModelDeploymentStatus,
    job: &str,
) -> Option<ValidationVerdict> {
    let reason_of = |status: Option<&ModelDeploymentStatus>| {
        status.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == conditions::VALIDATED)
                .map(|c| c.reason.clone())
        })
    };
    let before = reason_of(previous);
    let after = reason_of(Some(next));
    if before.as_deref() != Some(conditions::reasons::VALIDATION_RUNNING) || before == after {
        return None;
    }
    let succeeded = match after.as_deref() {
        Some(conditions::reasons::VALIDATION_SUCCEEDED) => true,
        Some(conditions::reasons::VALIDATION_FAILED) => false,
        _ => return None,
    };
    Some(ValidationVerdict {
        job: job.to_owned(),
        succeeded,
    })
}

/// `namespace/name` of a model, for logs.
pub fn display_name(model: &ModelDeployment) -> String {
    format!("{}/{}", model.namespace().unwrap_or_default(), model.name_any())
}

#[cfg(test)]
mod tests;
