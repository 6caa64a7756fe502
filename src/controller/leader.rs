//! Leader election on a `coordination.k8s.io` Lease: only the holder reconciles and writes; a
//! standby keeps its caches warm and takes over once the holder stops renewing for a lease
//! duration. The Lease is renewed every third of its duration, so two missed renewals are
//! survivable, and a leader that cannot renew within the duration stops writing on its own.

use std::time::{Duration, Instant};

use kube::Client;
use kube_leader_election::{Error as LeaseError, LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::telemetry::Metrics;

pub struct LeaseSettings {
    pub namespace: String,
    pub lease_name: String,
    pub holder_id: String,
    pub lease_duration: Duration,
}

/// Runs the election until `shutdown` fires, publishing leadership on the returned channel;
/// on shutdown a leader steps down so that a standby need not wait out the lease.
pub fn spawn(
    client: Client,
    settings: LeaseSettings,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (leader_tx, leader_rx) = watch::channel(false);
    let LeaseSettings {
        namespace,
        lease_name,
        holder_id,
        lease_duration,
    } = settings;
    let lock = LeaseLock::new(
        client,
        &namespace,
        LeaseLockParams {
            lease_name: lease_name.clone(),
            holder_id: holder_id.clone(),
            lease_ttl: lease_duration,
        },
    );
    let renew_every = lease_duration / 3;
    let task = tokio::spawn(async move {
        let mut last_renewed: Option<Instant> = None;
        // Said once: repeating it every renewal period would bury it.
        let mut told_namespace_missing = false;
        loop {
            let leading = match lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => {
                    last_renewed = Some(Instant::now());
                    true
                }
                Ok(LeaseLockResult::NotAcquired(lease)) => {
                    let holder = lease
                        .spec
                        .and_then(|s| s.holder_identity)
                        .unwrap_or_else(|| "nobody".to_owned());
                    if *leader_tx.borrow() {
                        warn!(%holder, lease = %lease_name, "lost the leader lease");
                    }
                    last_renewed = None;
                    false
                }
                Err(error) if namespace_missing(&error) => {
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
                    } else {
                        debug!(%error, lease = %lease_name, "the lease namespace is still missing");
                    }
                    false
                }
                Err(error) => {
                    warn!(%error, lease = %lease_name, "could not renew the leader lease");
                    // Keep leading only while the last renewal is younger than the lease.
                    last_renewed.is_some_and(|at| at.elapsed() < lease_duration)
                }
            };
            if leading != *leader_tx.borrow() {
                if leading {
                    info!(holder = %holder_id, lease = %lease_name, "became the leader");
                } else {
                    warn!(holder = %holder_id, lease = %lease_name, "standing by: not the leader");
                }
                metrics.leader.set(i64::from(leading));
                leader_tx.send_replace(leading);
            }
            tokio::select! {
                _ = tokio::time::sleep(renew_every) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        if *leader_tx.borrow() {
            leader_tx.send_replace(false);
            metrics.leader.set(0);
            match lock.step_down().await {
                Ok(()) => info!(lease = %lease_name, "stepped down as leader"),
                Err(error) => warn!(%error, lease = %lease_name, "could not release the leader lease"),
            }
        }
    });
    (leader_rx, task)
}

/// Creating the Lease failed with NotFound: its namespace does not exist (the Lease itself is
/// what is being created).
fn namespace_missing(error: &LeaseError) -> bool {
    matches!(error, LeaseError::CreateLease(kube::Error::Api(status)) if status.code == 404)
}
