//! The operator process: watch caches, leader election, the admin and custom-metrics servers,
//! shutdown on SIGTERM, and the kube-rs Controller that calls the reconcile driver
//! (`crate::reconcile`) and then its report step. Nothing here decides what a model's children
//! look like.

pub mod admin;
mod caches;
pub mod leader;
mod projections;
mod shutdown;
mod triggers;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures::{StreamExt, future};
use kube::{
    ResourceExt,
    runtime::{Controller, controller::Action},
};
use tracing::{Instrument, debug, error, info, info_span, warn};

pub use self::{
    admin::CachesSynced,
    leader::{LeaseSettings, LeaseSettingsError},
    shutdown::Shutdown,
};
use self::{
    caches::Watches,
    leader::NotLeader,
    triggers::{
        leadership_gained, models_affected_by_claim, models_affected_by_node, models_affected_by_pod, models_with_gpus,
        models_without_answering_replicas,
    },
};
use crate::{
    api::ModelDeployment,
    custom_metrics::{self, CustomMetricsServer, queue_time::QueueTimeSource},
    model_readiness::{EndpointResolver, ProbeSchedule, ProbeSettings, Prober},
    reconcile::{self, ReconcileError, report::Reporter},
    telemetry::{CountRequests, Metrics},
    vocabulary::{Leadership, OperatorImages},
};

/// How long in-flight reconciles may run on after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After a failed reconcile; conflicts clear with the next watch event, other errors retry.
const ERROR_REQUEUE: Duration = Duration::from_secs(5);

/// Everything `run` needs; the CLI fills it from flags.
pub struct Settings {
    pub images: OperatorImages,
    /// Namespace to watch; all namespaces when `None`.
    pub watch_namespace: Option<String>,
    /// Leader election; `None` runs as the only writer (development, single replica).
    pub lease: Option<LeaseSettings>,
    /// Reconciles that run at once.
    pub concurrency: u16,
    pub metrics_addr: SocketAddr,
    pub health_addr: SocketAddr,
    /// How the model probes are made (timeout, concurrency).
    pub probes: ProbeSettings,
    /// Where each pod's runtime is reached for the model probe.
    pub endpoints: EndpointResolver,
    pub custom_metrics: custom_metrics::Settings,
    /// The activator's Service, which takes a model's traffic while the model has no replica
    /// that answers; `None`: Services always select the pods.
    pub activator: Option<ActivatorService>,
}

/// A Service by namespace and name (`--activator-service NAMESPACE/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivatorService {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for ActivatorService {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
        }
    }
}

/// What the Controller's reconcile function needs: the driver's context and its report step.
struct Operator {
    context: reconcile::Context,
    reporter: Reporter,
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let Settings {
        images,
        watch_namespace,
        lease,
        concurrency,
        metrics_addr,
        health_addr,
        probes,
        endpoints,
        custom_metrics,
        activator,
    } = settings;
    let prober = Prober::new(probes)?;
    let config = kube::Config::infer()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}"))?;
    // Reads, the election's own Lease calls and the custom-metrics server's reviews go through
    // this client; the reconcile driver and the report write through `writer` below.
    let metrics = Metrics::new();
    let counted = CountRequests::new(metrics.kube_requests.clone());
    let client = kube::client::ClientBuilder::try_from(config.clone())?
        .with_layer(&counted)
        .build();
    let synced_flag = CachesSynced::default();
    let listeners = admin::bind(metrics_addr, health_addr).await?;
    let shutdown = Shutdown::on_signal();
    let (deleted_tx, deleted_rx) = futures::channel::mpsc::unbounded();

    let Watches {
        caches,
        models: model_stream,
        deployments,
        services,
        hpas,
        jobs,
        config_maps,
        pods,
        nodes,
        claim_templates,
        resource_slices,
        resource_claims,
        endpoint_slices,
        activator_slices,
    } = caches::start(
        &client,
        watch_namespace.as_deref(),
        caches::dra_served(&client).await,
        activator.as_ref(),
        deleted_tx,
    );
    // The custom-metrics API reads the same pod cache; it serves before the caches sync, when
    // an empty answer makes the HPA keep the current scale.
    // The idle check of models that may go to zero reads the same runtime counts.
    let request_counts = QueueTimeSource::new(custom_metrics.queue_time.clone());
    let custom_metrics = CustomMetricsServer::bind(custom_metrics, &client, caches.pods.clone()).await?;
    // The bound addresses, which differ from the flags' when those ask for port 0.
    info!(
        metrics_addr = %listeners.0.local_addr()?,
        health_addr = %listeners.1.local_addr()?,
        custom_metrics_addr = %custom_metrics.local_addr()?,
        "listening"
    );
    let caches_synced = caches::report_sync(caches.clone(), synced_flag.clone());

    let (leadership, election) = match lease {
        Some(lease) => {
            let (leadership, task) = leader::spawn(client.clone(), lease, shutdown.receiver());
            (leadership, Some(task))
        }
        None => (Leadership::always(), None),
    };
    metrics.track_leadership(leadership.clone());
    let became_leader = leadership_gained(leadership.clone());
    // Every write of the driver and the report is refused once this replica's term is over,
    // so a reconcile in flight when the Lease is lost stops before its next write.
    let writer = leader::writer_client(&config, leadership.clone(), counted)?;

    let models = caches.models.clone();
    let operator = Arc::new(Operator {
        reporter: Reporter::new(writer.clone(), metrics.clone(), std::env::var("POD_NAME").ok()),
        context: reconcile::Context {
            client: writer,
            caches,
            images,
            prober,
            endpoints,
            probe_schedule: ProbeSchedule::default(),
            apply_retries: reconcile::ApplyRetries::default(),
            last_applied: reconcile::LastApplied::default(),
            written_status: reconcile::WrittenStatus::default(),
            request_counts,
            idle_clocks: reconcile::IdleClocks::default(),
            leader: leadership,
            caches_synced,
        },
    });

    tokio::spawn(forget_deleted_models(operator.clone(), deleted_rx, shutdown.wait()));

    let pod_models = models.clone();
    let node_models = models.clone();
    let node_pods = operator.context.caches.pods.clone();
    let (claim_models, claim_pods, slice_models) =
        (models.clone(), operator.context.caches.pods.clone(), models.clone());
    let sleeping_models = models.clone();
    let controller = Controller::for_stream(model_stream, models)
        .owns_stream(deployments)
        .owns_stream(services)
        .owns_stream(hpas)
        .owns_stream(jobs)
        .owns_stream(config_maps)
        .owns_stream(claim_templates)
        .owns_stream(endpoint_slices)
        .watches_stream(activator_slices, move |_| {
            models_without_answering_replicas(&sleeping_models)
        })
        .watches_stream(resource_claims, move |claim| {
            models_affected_by_claim(&claim, &claim_pods, &claim_models)
        })
        .watches_stream(resource_slices, move |_| models_with_gpus(&slice_models))
        .watches_stream(pods, move |pod| models_affected_by_pod(&pod, &pod_models))
        .watches_stream(nodes, move |node| {
            models_affected_by_node(&node, &node_pods, &node_models)
        })
        .reconcile_all_on(became_leader)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown.wait())
        .run(reconcile_and_report, error_policy, operator)
        .for_each(|result| {
            if let Err(error) = result {
                debug!(%error, "reconcile did not finish");
            }
            future::ready(())
        });

    // A Controller stopped before its first list never finishes (its runner waits for the store
    // to be ready), so in-flight reconciles get a bounded grace period, not an unbounded one.
    let stop_after_grace = {
        let signal = shutdown.wait();
        async move {
            signal.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            warn!("reconciles still running after {SHUTDOWN_GRACE:?}; stopping anyway");
        }
    };
    let controller = async {
        tokio::select! {
            () = controller => {}
            () = stop_after_grace => {}
        }
    };
    let custom_metrics = custom_metrics.serve(shutdown.wait());
    let admin = admin::serve(listeners, metrics, synced_flag, || shutdown.wait());
    let ((), admin_result, ()) = tokio::join!(controller, admin, custom_metrics);
    if let Some(task) = election {
        let _ = task.await;
    }
    admin_result?;
    Ok(())
}

/// How often state kept for models is compared with the models that exist: a deletion the
/// watch did not report (it missed it across a re-list) is forgotten by then.
const FORGET_SWEEP: Duration = Duration::from_secs(60);

/// Drops what the driver and the report keep for each model that is gone: at once when the
/// watch reports a deletion, and by a sweep against the cache for deletions it did not report.
/// Without this the state, and the `model_operator_model_ready*` series, would only grow.
async fn forget_deleted_models(
    operator: Arc<Operator>,
    mut deleted: futures::channel::mpsc::UnboundedReceiver<(String, String)>,
    shutdown: impl Future<Output = ()>,
) {
    let forget = |namespace: &str, name: &str| {
        operator.context.forget(namespace, name);
        operator.reporter.forget(namespace, name);
        debug!(%namespace, %name, "forgot a deleted ModelDeployment");
    };
    let mut sweep = tokio::time::interval(FORGET_SWEEP);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            gone = deleted.next() => match gone {
                Some((namespace, name)) => forget(&namespace, &name),
                None => break,
            },
            _ = sweep.tick() => {
                operator.reporter.prune();
                let models = &operator.context.caches.models;
                let mut kept: Vec<(String, String)> = operator.context.models_kept();
                kept.extend(operator.reporter.models());
                kept.sort();
                kept.dedup();
                for (namespace, name) in kept {
                    let key = kube::runtime::reflector::ObjectRef::<ModelDeployment>::new(&name).within(&namespace);
                    if models.get(&key).is_none() && *operator.context.caches_synced.borrow() {
                        forget(&namespace, &name);
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
}

/// The Controller's reconcile: the driver, then its report, then the requeue it asked for.
async fn reconcile_and_report(model: Arc<ModelDeployment>, operator: Arc<Operator>) -> Result<Action, ReconcileError> {
    let span = info_span!(
        "reconcile",
        namespace = %model.namespace().unwrap_or_default(),
        name = %model.name_any()
    );
    async move {
        let started = std::time::Instant::now();
        let result = reconcile::reconcile(&model, &operator.context).await;
        // Skipped reconciles (not the leader, caches not listed) did no work worth timing.
        let label = match &result {
            Ok(outcome) if outcome.reconciled_work().is_none() => None,
            Ok(_) => Some("success"),
            Err(_) => Some("error"),
        };
        if let Some(label) = label {
            operator
                .reporter
                .metrics()
                .reconcile_duration
                .with_label_values(&[label])
                .observe(started.elapsed().as_secs_f64());
        }
        let outcome = result?;
        operator.reporter.publish(&model, &outcome).await;
        Ok(match outcome.requeue_after {
            Some(after) => Action::requeue(after),
            None => Action::await_change(),
        })
    }
    .instrument(span)
    .await
}

fn error_policy(model: Arc<ModelDeployment>, error: &ReconcileError, operator: Arc<Operator>) -> Action {
    if NotLeader::caused(error) {
        // The term ended mid-reconcile; the next leader reconciles everything when it starts.
        debug!(name = %model.name_any(), %error, "a write was refused: no longer the leader");
        return Action::await_change();
    }
    operator.reporter.failed(error);
    if error.is_transient() {
        debug!(name = %model.name_any(), %error, "reconcile raced another writer; retrying");
    } else {
        error!(name = %model.name_any(), reason = error.reason(), %error, "reconcile failed");
    }
    Action::requeue(ERROR_REQUEUE)
}
