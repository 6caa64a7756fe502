//! Report: publishes what a reconcile's [`Outcome`] says, as Prometheus metrics and Kubernetes
//! Events. Nothing here changes a child or a status.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType},
};
use tracing::{debug, warn};

use super::{Outcome, ReconcileError, status};
use crate::{
    api::ModelDeployment,
    telemetry::{EventPublisher, Metrics},
    vocabulary::{Runtime, names::CONTROLLER_NAME, per_model::forget_model},
};

/// events.k8s.io refuses a note longer than this many bytes, and with it the whole Event.
pub const EVENT_NOTE_LIMIT: usize = 1024;

/// `note` cut to fit an Event, at a character boundary, marked with an ellipsis; the condition
/// keeps the whole message.
fn fit_note(mut note: String) -> String {
    const ELLIPSIS: &str = "…";
    if note.len() <= EVENT_NOTE_LIMIT {
        return note;
    }
    let mut end = EVENT_NOTE_LIMIT - ELLIPSIS.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(ELLIPSIS);
    note
}

/// Events that may wait for their task at once.
const EVENT_QUEUE: usize = 4096;

pub struct Reporter {
    metrics: Metrics,
    events: Arc<EventPublisher>,
    /// Events wait here for their own task: a reconcile never waits on Event writes, which are
    /// news about what it did, not part of it (client-go's recorder is asynchronous too). A
    /// burst of a thousand new models publishes some five thousand Events; while the queue is
    /// full, the newest are dropped.
    queued: tokio::sync::mpsc::Sender<(Event, ObjectReference)>,
    /// What is kept per model, dropped when the model is gone ([`Reporter::forget`]).
    models: Mutex<HashMap<ModelKey, Kept>>,
}

/// One model's share of the report's state.
#[derive(Debug, Default)]
struct Kept {
    /// Deployments and validation verdicts already counted, by UID or Job: two reconciles in a
    /// row may both read the cache from before the first one's writes.
    counted: HashSet<String>,
    /// The runtime label of the model's gauge series.
    runtime: Option<Runtime>,
}

pub use crate::vocabulary::per_model::ModelKey;

impl Reporter {
    /// Events name this replica (`instance`, the pod name) as their source.
    pub fn new(client: Client, metrics: Metrics, instance: Option<String>) -> Self {
        let events = Arc::new(EventPublisher::new(client, CONTROLLER_NAME, instance));
        let (queued, mut queue) = tokio::sync::mpsc::channel::<(Event, ObjectReference)>(EVENT_QUEUE);
        let publisher = events.clone();
        tokio::spawn(async move {
            while let Some((event, regarding)) = queue.recv().await {
                if let Err(error) = publisher.publish(&event, &regarding).await {
                    warn!(%error, reason = %event.reason, "could not publish an Event");
                }
            }
        });
        Self {
            metrics,
            events,
            queued,
            models: Mutex::default(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts, sets gauges and publishes an Event per condition transition.
    pub async fn publish(&self, model: &ModelDeployment, outcome: &Outcome) {
        let Some(work) = outcome.reconciled_work() else {
            return;
        };
        let key = (outcome.namespace.clone(), outcome.name.clone());
        if let Some(uid) = &work.created_deployment
            && self.first_time(&key, format!("deployment/{uid}"))
        {
            self.metrics.deployments_created.inc();
        }
        if let Some(job) = &work.started_validation
            && self.first_time(&key, format!("started/{job}"))
        {
            self.metrics.validations.with_label_values(&["started"]).inc();
        }
        if let Some(verdict) = &work.validation_verdict
            && self.first_time(&key, format!("verdict/{}", verdict.job))
        {
            let label = if verdict.succeeded { "success" } else { "failure" };
            self.metrics.validations.with_label_values(&[label]).inc();
        }
        if let Some(reason) = work.apply_failure {
            self.metrics.reconcile_errors.with_label_values(&[reason]).inc();
        }
        if let Some(runtime) = work.runtime {
            let before = self.gauged_as(&key, runtime);
            if let Some(old) = before.filter(|old| *old != runtime) {
                // A runtime switch: the old runtime's series would report a stale value forever.
                self.remove_gauges(&key.0, &key.1, old);
            }
            let labels = [outcome.namespace.as_str(), outcome.name.as_str(), runtime.as_str()];
            let model_ready_replicas = work.status.model_ready_replicas.unwrap_or(0);
            self.metrics
                .model_ready
                .with_label_values(&labels)
                .set(i64::from(model_ready_replicas > 0));
            self.metrics
                .model_ready_replicas
                .with_label_values(&labels)
                .set(i64::from(model_ready_replicas));
        }
        if work.status_written {
            self.publish_transitions(model, work);
        }
    }

    /// Counts a failed reconcile by its fixed reason.
    pub fn failed(&self, error: &ReconcileError) {
        self.metrics.reconcile_errors.with_label_values(&[error.reason()]).inc();
    }

    fn publish_transitions(&self, model: &ModelDeployment, work: &super::Reconciled) {
        let reference = model.object_ref(&());
        for transition in status::transitions(work.previous.as_ref(), &work.status) {
            let event = Event {
                type_: if transition.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: transition.reason.clone(),
                note: Some(fit_note(format!(
                    "{} is {}: {}",
                    transition.type_, transition.status, transition.message
                ))),
                action: transition.type_.clone(),
                secondary: None,
            };
            if self.queued.try_send((event, reference.clone())).is_err() {
                debug!(reason = %transition.reason, "the Event queue is full; this Event is dropped");
            }
        }
    }

    /// True the first time `what` is seen for the model by this process.
    fn first_time(&self, model: &ModelKey, what: String) -> bool {
        self.models
            .lock()
            .expect("report lock")
            .entry(model.clone())
            .or_default()
            .counted
            .insert(what)
    }

    /// Records that the model's gauges carry `runtime`; returns the runtime they carried before.
    fn gauged_as(&self, model: &ModelKey, runtime: Runtime) -> Option<Runtime> {
        self.models
            .lock()
            .expect("report lock")
            .entry(model.clone())
            .or_default()
            .runtime
            .replace(runtime)
    }

    fn remove_gauges(&self, namespace: &str, name: &str, runtime: Runtime) {
        let labels = [namespace, name, runtime.as_str()];
        // A series that was never set is no error worth reporting.
        let _ = self.metrics.model_ready.remove_label_values(&labels);
        let _ = self.metrics.model_ready_replicas.remove_label_values(&labels);
    }

    /// Drops what is kept and exported for a model that is gone: its de-duplication entries and
    /// its gauge series, so `/metrics` stops reporting a deleted model's last value.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.events.forget(namespace, name);
        let kept = forget_model(&mut self.models.lock().expect("report lock"), namespace, name);
        if let Some(runtime) = kept.and_then(|kept| kept.runtime) {
            self.remove_gauges(namespace, name, runtime);
        }
    }

    /// Drops the Events too old to grow a series, for models that published nothing lately.
    pub fn prune(&self) {
        self.events.prune();
    }

    /// The models something is kept for.
    pub fn models(&self) -> BTreeSet<ModelKey> {
        self.models.lock().expect("report lock").keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_to_what_the_api_server_accepts() {
        assert_eq!(fit_note("short".into()), "short");
        let exact = "x".repeat(EVENT_NOTE_LIMIT);
        assert_eq!(fit_note(exact.clone()), exact);
        // Multi-byte characters straddling the limit are never split.
        let long = "GPU × ".repeat(400);
        let cut = fit_note(long);
        assert!(cut.len() <= EVENT_NOTE_LIMIT, "{} bytes", cut.len());
        assert!(cut.ends_with('…'), "{cut}");
    }
}
