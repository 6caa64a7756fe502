//! What one reconcile found and did, as plain data: the report step publishes metrics and
//! Events from it, the process requeues by it, and tests assert on it.

use std::time::Duration;

use kube::ResourceExt;

use crate::{
    api::{ModelDeployment, ModelDeploymentStatus},
    vocabulary::Runtime,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub namespace: String,
    pub name: String,
    /// When to look again without a watch event; `None`: only on a change.
    pub requeue_after: Option<Duration>,
    pub work: Work,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Nothing was read or written.
    Skipped(Skipped),
    Reconciled(Box<Reconciled>),
}

/// Why a reconcile did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The watch caches have not listed yet; "not cached" would read as "does not exist".
    CachesNotSynced,
    /// Another replica holds the leader Lease; this one only keeps its caches warm.
    NotLeader,
    /// The model is being deleted; garbage collection removes its children.
    Deleting,
}

/// A reconcile that ran through.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    /// `None` for a spec that did not validate.
    pub runtime: Option<Runtime>,
    /// The status the model carried before.
    pub previous: Option<ModelDeploymentStatus>,
    /// The status computed now.
    pub status: ModelDeploymentStatus,
    /// Whether `status` was written (it differed from `previous`).
    pub status_written: bool,
    /// The UID of the Deployment this reconcile created.
    pub created_deployment: Option<String>,
    /// The validation Job this reconcile created.
    pub started_validation: Option<String>,
    /// A validation verdict this reconcile's status is the first to carry.
    pub validation_verdict: Option<ValidationVerdict>,
    /// Why the children could not be written, as the `Applied` condition's fixed reason.
    pub apply_failure: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationVerdict {
    pub job: String,
    pub succeeded: bool,
}

impl Outcome {
    pub fn skipped(model: &ModelDeployment, why: Skipped, requeue_after: Option<Duration>) -> Self {
        Self {
            namespace: model.namespace().unwrap_or_default(),
            name: model.name_any(),
            requeue_after,
            work: Work::Skipped(why),
        }
    }

    pub fn reconciled(model: &ModelDeployment, requeue_after: Option<Duration>, reconciled: Reconciled) -> Self {
        Self {
            namespace: model.namespace().unwrap_or_default(),
            name: model.name_any(),
            requeue_after,
            work: Work::Reconciled(Box::new(reconciled)),
        }
    }

    /// The reconcile's findings, unless it was skipped.
    pub fn reconciled_work(&self) -> Option<&Reconciled> {
        match &self.work {
            Work::Reconciled(reconciled) => Some(reconciled),
            Work::Skipped(_) => None,
        }
    }
}
