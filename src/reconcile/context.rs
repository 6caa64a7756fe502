//! What every reconcile shares: the client it writes with, the caches it reads, the prober, and
//! the process's two gates (caches synced, leadership), which the process sets.

use kube::Client;
use tokio::sync::watch;

use super::{
    fetch::Caches, idle::IdleClocks, last_applied::LastApplied, retry::ApplyRetries, written_status::WrittenStatus,
};
use crate::{
    custom_metrics::queue_time::QueueTimeSource,
    model_readiness::{EndpointResolver, ProbeSchedule, Prober},
    vocabulary::{Leadership, OperatorImages},
};

pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub images: OperatorImages,
    pub prober: Prober,
    pub endpoints: EndpointResolver,
    /// When to probe each model again (its backoff while silent).
    pub probe_schedule: ProbeSchedule,
    /// When to write each model's children again after a failure.
    pub apply_retries: ApplyRetries,
    /// What was last written for each child, so that an unchanged child is not written again.
    pub last_applied: LastApplied,
    /// The status last written for each model, while the cache has not caught up with it.
    pub written_status: WrittenStatus,
    /// Reads the runtimes' request counts, for models that may go to zero.
    pub request_counts: QueueTimeSource,
    /// The request count last seen for each busy model that may go to zero.
    pub idle_clocks: IdleClocks,
    /// Whether this replica's term as leader runs (always, without leader election). The
    /// client's writes are gated on it too; the driver checks it to skip work a standby
    /// would have thrown away.
    pub leader: Leadership,
    /// True once every watch cache has listed.
    pub caches_synced: watch::Receiver<bool>,
}

impl Context {
    pub fn is_leader(&self) -> bool {
        self.leader.is_leading()
    }

    pub fn caches_synced(&self) -> bool {
        *self.caches_synced.borrow()
    }

    /// Drops what the driver keeps for a model that is gone (probe backoff, apply retries, what
    /// was last written, its idle clock).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.probe_schedule.forget(namespace, name);
        self.apply_retries.forget(namespace, name);
        self.last_applied.forget(namespace, name);
        self.written_status.forget(namespace, name);
        self.idle_clocks.forget(namespace, name);
    }

    /// The models the driver keeps something for.
    pub fn models_kept(&self) -> Vec<(String, String)> {
        let mut models = self.probe_schedule.models();
        models.extend(self.apply_retries.models());
        models.extend(self.last_applied.models());
        models.extend(self.written_status.models());
        models.extend(self.idle_clocks.models());
        models
    }
}
