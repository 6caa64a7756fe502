//! Leader election on a `coordination.k8s.io` Lease: only the holder reconciles and writes; a
//! standby keeps its caches warm and takes over once the holder stops renewing.
//!
//! Safe by construction, in three parts:
//! - Every write of the Lease carries the `resourceVersion` it was decided on, so of two
//!   candidates that both saw the Lease expire, the API server lets exactly one win.
//! - The leader's term ends `renew_deadline` after it *sent* its last successful renewal, on the
//!   monotonic clock ([`Term::Until`]); a standby takes over only after it has seen the Lease
//!   unchanged for a whole `lease_duration`, which is longer. The term ends by itself: a frozen
//!   or cut-off leader stops writing when its term is over, whether or not any task of the
//!   election has run since.
//! - Every write the reconcile driver and the report make goes through [`WriteGate`], which
//!   refuses it once the term is over, so a reconcile in flight stops before its next write.
//!
//! A replica that restarts with the same identity finds its name in the Lease but did not
//! renew it in this process, so it waits the Lease out like any other candidate (the old
//! process may be frozen, not gone). On shutdown a leader clears the holder so that a standby
//! takes over at its next retry.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::vocabulary::{Leadership, Term};

/// The election's settings, checked against each other when they are made.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub lease_name: String,
    pub holder_id: String,
    /// How long a Lease holds without renewal: a standby takes over after it.
    pub lease_duration: Duration,
    /// How long after its last successful renewal a leader stops writing.
    pub renew_deadline: Duration,
    /// How often the Lease is renewed (leader) or looked at (standby); also the timeout of
    /// each call to the API server for it.
    pub retry_period: Duration,
}

/// A flag value the election cannot work with, naming the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseSettingsError {
    #[error(
        "--lease-duration {0:?}: the Lease records whole seconds, so it must be a whole number of seconds, at least 1s"
    )]
    LeaseDuration(Duration),
    #[error(
        "--renew-deadline {renew_deadline:?} must be shorter than --lease-duration {lease_duration:?}: a leader must \
         stop writing before a standby may take over"
    )]
    RenewDeadline {
        renew_deadline: Duration,
        lease_duration: Duration,
    },
    #[error(
        "--retry-period {retry_period:?} must be at least {MIN_RETRY_PERIOD:?} (shorter is a busy loop against the API \
         server) and shorter than --renew-deadline {renew_deadline:?}, so that a leader can retry a failed renewal \
         before its deadline"
    )]
    RetryPeriod {
        retry_period: Duration,
        renew_deadline: Duration,
    },
}

/// The shortest retry period accepted.
const MIN_RETRY_PERIOD: Duration = Duration::from_millis(100);

impl LeaseSettings {
    /// Checks the durations; `renew_deadline` defaults to two thirds of the lease and
    /// `retry_period` to two fifteenths (15 s → 10 s and 2 s, client-go's defaults).
    pub fn new(
        namespace: String,
        lease_name: String,
        holder_id: String,
        lease_duration: Duration,
        renew_deadline: Option<Duration>,
        retry_period: Option<Duration>,
    ) -> Result<Self, LeaseSettingsError> {
        if lease_duration < Duration::from_secs(1) || lease_duration.subsec_nanos() != 0 {
            return Err(LeaseSettingsError::LeaseDuration(lease_duration));
        }
        let renew_deadline = renew_deadline.unwrap_or(lease_duration * 2 / 3);
        if renew_deadline >= lease_duration {
            return Err(LeaseSettingsError::RenewDeadline {
                renew_deadline,
                lease_duration,
            });
        }
        let retry_period = retry_period.unwrap_or(lease_duration * 2 / 15);
        if retry_period < MIN_RETRY_PERIOD || retry_period >= renew_deadline {
            return Err(LeaseSettingsError::RetryPeriod {
                retry_period,
                renew_deadline,
            });
        }
        Ok(Self {
            namespace,
            lease_name,
            holder_id,
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }
}

/// The Lease as a standby last saw it: a record that stays the same (same `resourceVersion`)
/// for its whole duration has expired. Measured on this replica's clock from when it first saw
/// that version, so clock skew between replicas does not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    resource_version: String,
    since: Instant,
}

/// What to do with the Lease as read.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Nobody holds it (released, or never held) or the holder let it expire: take it over.
    TakeOver,
    /// Someone holds it; it frees up in at most this long if they stop renewing.
    Wait { holder: String, free_in: Duration },
}

/// Decides on a Lease read at `now`, updating what was observed of it. Our own identity in the
/// holder counts as someone else's here: only a renewal made in this process is ours.
fn decide(lease: &Lease, observed: &mut Option<Observed>, default_duration: Duration, now: Instant) -> Decision {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.filter(|holder| !holder.is_empty());
    let Some(holder) = holder else {
        return Decision::TakeOver;
    };
    let resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
    let seen = match observed {
        Some(seen) if seen.resource_version == resource_version => seen.since,
        _ => {
            *observed = Some(Observed {
                resource_version,
                since: now,
            });
            now
        }
    };
    let duration = spec
        .lease_duration_seconds
        .and_then(|seconds| u64::try_from(seconds).ok())
        .filter(|seconds| *seconds > 0)
        .map_or(default_duration, Duration::from_secs);
    let unchanged_for = now.saturating_duration_since(seen);
    if unchanged_for >= duration {
        Decision::TakeOver
    } else {
        Decision::Wait {
            holder,
            free_in: duration - unchanged_for,
        }
    }
}

/// Why one round of the election did not end with this replica leading.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("another replica wrote the Lease first")]
    Conflict,
    #[error("the call to the API server took longer than {0:?}")]
    Timeout(Duration),
    #[error("the Lease's namespace does not exist")]
    NamespaceMissing,
    #[error(transparent)]
    Api(#[from] kube::Error),
}

fn classify(error: kube::Error) -> RoundError {
    match &error {
        kube::Error::Api(status) if status.code == 409 => RoundError::Conflict,
        _ => RoundError::Api(error),
    }
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The Lease as we last wrote it, while we lead: renewed with its `resourceVersion`.
    held: Option<Lease>,
    observed: Option<Observed>,
}

impl Elector {
    /// One call to the API server, cut off after the retry period.
    async fn call<T>(&self, call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, RoundError> {
        match tokio::time::timeout(self.settings.retry_period, call).await {
            Ok(result) => result.map_err(classify),
            Err(_) => Err(RoundError::Timeout(self.settings.retry_period)),
        }
    }

    fn stamped(&self, mut lease: Lease, acquiring: bool) -> Lease {
        let now = MicroTime(Timestamp::now());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if acquiring {
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(spec.holder_identity.is_some()));
            spec.acquire_time = Some(now.clone());
        }
        spec.holder_identity = Some(self.settings.holder_id.clone());
        spec.lease_duration_seconds = Some(i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX));
        spec.renew_time = Some(now);
        lease
    }

    /// Renews (leader) or tries to acquire (standby); `Ok(true)` when this replica holds the
    /// Lease as written in this round.
    async fn round(&mut self) -> Result<bool, RoundError> {
        if let Some(held) = self.held.clone() {
            // The resourceVersion of our last write: if anyone wrote since, this fails.
            let renewed = self.stamped(held, false);
            let name = self.settings.lease_name.clone();
            let written = self
                .call(self.api.replace(&name, &PostParams::default(), &renewed))
                .await?;
            self.held = Some(written);
            return Ok(true);
        }
        let name = self.settings.lease_name.clone();
        let current = self.call(self.api.get_opt(&name)).await?;
        let Some(current) = current else {
            let lease = self.stamped(
                Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: None,
                },
                true,
            );
            let created = match self.call(self.api.create(&PostParams::default(), &lease)).await {
                Err(RoundError::Api(kube::Error::Api(status))) if status.code == 404 => {
                    return Err(RoundError::NamespaceMissing);
                }
                other => other?,
            };
            self.held = Some(created);
            return Ok(true);
        };
        match decide(
            &current,
            &mut self.observed,
            self.settings.lease_duration,
            Instant::now(),
        ) {
            Decision::Wait { holder, free_in } => {
                debug!(%holder, ?free_in, lease = %self.settings.lease_name, "the Lease is held");
                Ok(false)
            }
            Decision::TakeOver => {
                let previous = current
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.clone())
                    .unwrap_or_default();
                let taken = self.stamped(current, true);
                let written = self
                    .call(self.api.replace(&name, &PostParams::default(), &taken))
                    .await?;
                info!(previous_holder = %previous, lease = %self.settings.lease_name, "took over the Lease");
                self.held = Some(written);
                Ok(true)
            }
        }
    }

    /// Clears the holder, so a standby need not wait the Lease out.
    async fn release(&mut self) -> Result<(), RoundError> {
        let Some(mut lease) = self.held.take() else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let name = self.settings.lease_name.clone();
        self.call(self.api.replace(&name, &PostParams::default(), &lease))
            .await?;
        Ok(())
    }
}

/// Runs the election until `shutdown` fires, publishing each term on the returned handle; on
/// shutdown a leader first stops writing, then clears the Lease.
pub fn spawn(
    client: Client,
    settings: LeaseSettings,
    mut shutdown: watch::Receiver<bool>,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (terms, leadership) = Leadership::channel(Term::Standby);
    let mut elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings,
        held: None,
        observed: None,
    };
    let term = leadership.clone();
    let task = tokio::spawn(async move {
        let LeaseSettings {
            lease_name,
            holder_id,
            namespace,
            renew_deadline,
            retry_period,
            ..
        } = elector.settings.clone();
        // Said once: repeating it every retry period would bury it.
        let mut told_namespace_missing = false;
        loop {
            // Leading is holding the Lease as this process last wrote it.
            let was_leading = elector.held.is_some();
            let sent = Instant::now();
            match elector.round().await {
                Ok(true) => {
                    terms.send_replace(Term::Until(sent + renew_deadline));
                    if !was_leading {
                        info!(holder = %holder_id, lease = %lease_name, "became the leader");
                    }
                }
                Ok(false) => {}
                Err(RoundError::NamespaceMissing) => {
                    if !told_namespace_missing {
                        error!(
                            lease = %lease_name,
                            namespace = %namespace,
                            "the leader Lease cannot be created: namespace {namespace} does not exist, so this \
                             replica will never reconcile. Create it (kubectl create namespace {namespace}), \
                             point --lease-namespace at an existing namespace, or run a single local replica \
                             with --disable-leader-election"
                        );
                        told_namespace_missing = true;
                    }
                }
                Err(RoundError::Conflict) if elector.held.is_some() => {
                    // Someone wrote the Lease we hold: only a replica that saw it expire does.
                    elector.held = None;
                    terms.send_replace(Term::Standby);
                    warn!(lease = %lease_name, "lost the leader Lease: another replica took it over");
                }
                Err(error) => {
                    if elector.held.is_some() {
                        warn!(%error, lease = %lease_name, "could not renew the leader Lease");
                    } else {
                        debug!(%error, lease = %lease_name, "could not acquire the leader Lease");
                    }
                }
            }
            // A leader whose renewals have failed up to its deadline stops; from then on it is a
            // candidate like any other and waits the Lease out before taking it again.
            if elector.held.is_some() && !term.is_leading() {
                elector.held = None;
                terms.send_replace(Term::Standby);
                warn!(
                    lease = %lease_name,
                    ?renew_deadline,
                    "stopped leading: the Lease was not renewed within the renew deadline"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(retry_period.saturating_sub(sent.elapsed())) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        if elector.held.is_some() {
            terms.send_replace(Term::Standby);
            match elector.release().await {
                Ok(()) => info!(lease = %lease_name, "stepped down as leader"),
                Err(error) => warn!(%error, lease = %lease_name, "could not release the leader Lease"),
            }
        }
    });
    (leadership, task)
}

/// Refuses every write (anything but GET) while this replica's term is not running; reads pass.
/// Layered on the client of the reconcile driver and the report, not on the election's own.
#[derive(Clone)]
pub struct WriteGate {
    leadership: Leadership,
}

impl WriteGate {
    pub fn new(leadership: Leadership) -> Self {
        Self { leadership }
    }
}

impl<S> tower::Layer<S> for WriteGate {
    type Service = GatedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GatedService {
            inner,
            leadership: self.leadership.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GatedService<S> {
    inner: S,
    leadership: Leadership,
}

/// A write refused because this replica is not (or no longer) the leader.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path} refused: this replica is not the leader")]
pub struct NotLeader {
    method: http::Method,
    path: String,
}

impl NotLeader {
    /// True when `error` or any error under it is a write the gate refused.
    pub fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut source = Some(error);
        while let Some(error) = source {
            if error.is::<NotLeader>() || error.is::<FencedOff>() {
                return true;
            }
            source = error.source();
        }
        false
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for GatedService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.method() != http::Method::GET && !self.leadership.is_leading() {
            let refused = NotLeader {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
            };
            return Box::pin(std::future::ready(Err(Box::new(refused) as BoxError)));
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests;
mod transport;

pub use self::transport::{FencedOff, writer_client};
