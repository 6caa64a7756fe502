//! The operator process: watch caches, the kube-rs Controller running the reconcile pipeline
//! (`fetch → validate → build → apply → status`), leader election and the admin server.

pub mod admin;
pub mod leader;
pub mod metrics;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        core::v1::{ConfigMap, Node, Pod, Service},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, info_span, warn};

pub use self::{admin::Readiness, leader::LeaseSettings, metrics::Metrics};
use crate::{
    api::{ModelDeployment, ModelDeploymentStatus, conditions},
    custom_metrics::{self, CustomMetricsServer},
    probe::{ProbeSettings, Prober, recheck_after},
    reconcile::{
        apply::{self, ApplyError},
        build::{self, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY},
        fetch::Caches,
        readiness::{self, EndpointResolver},
        status::{self, ModelReadiness, StatusInputs, ValidationState},
        validate,
    },
    settings::OperatorImages,
};

/// The Controller's name in Events and logs.
pub const CONTROLLER_NAME: &str = "model-operator";
/// Without any event, every ModelDeployment is looked at again this often: a safety net for
/// a missed watch event, not how the operator normally reacts.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// How long in-flight reconciles may run on after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A reconcile that arrives before the caches have listed comes back after this.
const CACHE_SYNC_RETRY: Duration = Duration::from_millis(500);
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
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub images: OperatorImages,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub prober: Prober,
    pub endpoints: EndpointResolver,
    /// Consecutive reconciles whose model probe found a replica silent, per ModelDeployment:
    /// the probe backs off on it, and forgets it once every replica answers.
    probe_streaks: Mutex<HashMap<ObjectRef<ModelDeployment>, u32>>,
    /// Deployments and validation verdicts already counted in the metrics, by UID or Job: two
    /// reconciles in a row may both read the cache from before the first one's writes.
    counted: Mutex<HashSet<String>>,
    leader: watch::Receiver<bool>,
    caches_synced: watch::Receiver<bool>,
}

impl Context {
    /// True the first time `key` is seen by this process.
    fn first_time(&self, key: String) -> bool {
        self.counted.lock().expect("counted lock").insert(key)
    }

    /// Counts a silent probe towards the backoff, or resets it, and says when to probe again.
    fn next_probe(&self, model: &ModelDeployment, outcome: &crate::probe::ProbeOutcome) -> Duration {
        let mut streaks = self.probe_streaks.lock().expect("probe streaks lock");
        let key = ObjectRef::from_obj(model);
        if outcome.ready {
            streaks.remove(&key);
            recheck_after(outcome, 0)
        } else {
            let streak = streaks.entry(key).or_insert(0);
            let delay = recheck_after(outcome, *streak);
            *streak = streak.saturating_add(1);
            delay
        }
    }
}

/// What a reconcile can fail with; `reason` labels metrics.
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
    } = settings;
    let prober = Prober::new(probes)?;
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}"))?;
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let listeners = admin::bind(metrics_addr, health_addr).await?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        shutdown_tx.send_replace(true);
    });
    let shutdown = {
        let rx = shutdown_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }
    };

    let children = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let (models, model_stream) =
        cache::<ModelDeployment>(&client, watch_namespace.as_deref(), watcher::Config::default());
    let (deployments, deployment_stream) = cache::<Deployment>(&client, watch_namespace.as_deref(), children.clone());
    let (services, service_stream) = cache::<Service>(&client, watch_namespace.as_deref(), children.clone());
    let (hpas, hpa_stream) = cache::<HorizontalPodAutoscaler>(&client, watch_namespace.as_deref(), children.clone());
    let (jobs, job_stream) = cache::<Job>(&client, watch_namespace.as_deref(), children.clone());
    let (config_maps, config_map_stream) = cache::<ConfigMap>(&client, watch_namespace.as_deref(), children);
    // Every pod and node counts toward GPU capacity, whoever owns them.
    let (pods, pod_stream) = cache::<Pod>(&client, None, watcher::Config::default());
    let (nodes, node_stream) = cache_cluster::<Node>(&client);
    // The custom-metrics API reads the same pod cache; it serves before the caches sync, when
    // an empty answer makes the HPA keep the current scale.
    let custom_metrics = CustomMetricsServer::bind(custom_metrics, &client, pods.clone()).await?;
    // The bound addresses, which differ from the flags' when those ask for port 0.
    info!(
        metrics_addr = %listeners.0.local_addr()?,
        health_addr = %listeners.1.local_addr()?,
        custom_metrics_addr = %custom_metrics.local_addr()?,
        "listening"
    );
    let caches = Caches {
        models: models.clone(),
        deployments,
        services,
        hpas,
        jobs,
        config_maps,
        pods,
        nodes,
    };

    let (synced_tx, caches_synced) = watch::channel(false);
    {
        let caches = caches.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let Caches {
                models,
                deployments,
                services,
                hpas,
                jobs,
                config_maps,
                pods,
                nodes,
            } = caches;
            let waits = [
                ("modeldeployments", models.wait_until_ready().boxed()),
                ("deployments", deployments.wait_until_ready().boxed()),
                ("services", services.wait_until_ready().boxed()),
                ("horizontalpodautoscalers", hpas.wait_until_ready().boxed()),
                ("jobs", jobs.wait_until_ready().boxed()),
                ("configmaps", config_maps.wait_until_ready().boxed()),
                ("pods", pods.wait_until_ready().boxed()),
                ("nodes", nodes.wait_until_ready().boxed()),
            ];
            let waiting: Arc<Mutex<Vec<&str>>> = Arc::new(Mutex::new(waits.iter().map(|(name, _)| *name).collect()));
            let all = future::join_all(waits.into_iter().map(|(name, wait)| {
                let waiting = waiting.clone();
                async move {
                    let listed = wait.await.is_ok();
                    waiting.lock().expect("waiting lock").retain(|w| *w != name);
                    if !listed {
                        error!(cache = name, "the watch ended before its first list");
                    }
                    listed
                }
            }));
            tokio::pin!(all);
            loop {
                tokio::select! {
                    listed = &mut all => {
                        if listed.iter().all(|ok| *ok) {
                            info!("watch caches synced");
                            readiness.set_ready();
                            synced_tx.send_replace(true);
                        }
                        break;
                    }
                    () = tokio::time::sleep(Duration::from_secs(10)) => {
                        let waiting = waiting.lock().expect("waiting lock").clone();
                        warn!(?waiting, "watch caches not synced after 10 s more");
                    }
                }
            }
        });
    }

    let (leader, election) = match lease {
        Some(lease) => {
            let (leader, task) = leader::spawn(client.clone(), lease, metrics.clone(), shutdown_rx.clone());
            (leader, Some(task))
        }
        None => {
            metrics.leader.set(1);
            (watch::channel(true).1, None)
        }
    };
    // Becoming the leader re-reconciles everything: the standby skipped its events.
    let became_leader = leadership_gained(leader.clone());

    let context = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_owned(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client,
        caches,
        images,
        metrics: metrics.clone(),
        prober,
        endpoints,
        probe_streaks: Mutex::default(),
        counted: Mutex::default(),
        leader,
        caches_synced,
    });

    let pod_models = models.clone();
    let node_models = models.clone();
    let controller = Controller::for_stream(model_stream, models)
        .owns_stream(deployment_stream)
        .owns_stream(service_stream)
        .owns_stream(hpa_stream)
        .owns_stream(job_stream)
        .owns_stream(config_map_stream)
        .watches_stream(pod_stream, move |pod| models_affected_by_pod(&pod, &pod_models))
        .watches_stream(node_stream, move |_node| models_short_of_gpus(&node_models))
        .reconcile_all_on(became_leader)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown())
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            if let Err(error) = result {
                debug!(%error, "reconcile did not finish");
            }
            future::ready(())
        });

    // A Controller stopped before its first list never finishes (its runner waits for the store
    // to be ready), so in-flight reconciles get a bounded grace period, not an unbounded one.
    let stop_after_grace = {
        let signal = shutdown();
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
    let custom_metrics = custom_metrics.serve(shutdown());
    let admin = admin::serve(listeners, metrics, readiness, shutdown);
    let ((), admin_result, ()) = tokio::join!(controller, admin, custom_metrics);
    if let Some(task) = election {
        let _ = task.await;
    }
    admin_result?;
    Ok(())
}

/// A reflector-backed watch of `K` in one namespace or all, whose events trigger reconciles
/// and whose store the reconciler reads. Managed fields are dropped: nobody reads them and
/// they are a large part of every object.
fn cache<K>(
    client: &Client,
    namespace: Option<&str>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let api: Api<K> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    reflect(api, config)
}

fn cache_cluster<K>(
    client: &Client,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K: Resource<Scope = k8s_openapi::ClusterResourceScope>,
{
    reflect(Api::all(client.clone()), watcher::Config::default())
}

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let reflector = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .touched_objects();
    // The cache is kept by its own task, so that it fills whatever the Controller does: the
    // Controller polls its triggers only as its scheduler asks, and a cache that waits on it
    // can wait on a reconcile that waits on the cache. Events reach the Controller through an
    // unbounded channel; it drains it continuously, so the channel holds only a burst.
    let (events, triggers) = futures::channel::mpsc::unbounded();
    tokio::spawn(reflector.for_each(move |event| {
        // A closed channel means the Controller has stopped; the cache keeps serving reads.
        let _ = events.unbounded_send(event);
        future::ready(())
    }));
    (store, triggers)
}

/// A serving pod changes its ModelDeployment's status; a GPU pod that finishes or goes away
/// frees GPUs that ModelDeployments short of them may now use.
fn models_affected_by_pod(pod: &Pod, models: &Store<ModelDeployment>) -> Vec<ObjectRef<ModelDeployment>> {
    let labels = pod.labels();
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(LABEL_COMPONENT).map(String::as_str) == Some(build::COMPONENT_SERVER)
        && let (Some(name), Some(namespace)) = (labels.get(LABEL_NAME), pod.namespace())
    {
        // The pod cache spans every namespace; only models this operator watches are its business.
        let model = ObjectRef::new(name).within(&namespace);
        return if models.get(&model).is_some() {
            vec![model]
        } else {
            Vec::new()
        };
    }
    let holds_gpus = pod.spec.as_ref().is_some_and(|spec| {
        spec.containers.iter().any(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|limits| limits.keys().any(|k| k.starts_with("nvidia.com/")))
        })
    });
    let released = pod.metadata.deletion_timestamp.is_some() || crate::gpu::is_finished(pod);
    if holds_gpus && released {
        models_short_of_gpus(models)
    } else {
        Vec::new()
    }
}

/// ModelDeployments whose last status said the GPUs are missing: a node change may fix that.
fn models_short_of_gpus(models: &Store<ModelDeployment>) -> Vec<ObjectRef<ModelDeployment>> {
    models
        .state()
        .iter()
        .filter(|model| {
            model.status.as_ref().is_some_and(|status| {
                status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == conditions::GPU_CAPACITY && c.status == "False")
            })
        })
        .map(|model| ObjectRef::from_obj(model.as_ref()))
        .collect()
}

/// One item each time `leader` turns true.
fn leadership_gained(leader: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(leader, |mut leader| async move {
        loop {
            leader.changed().await.ok()?;
            if *leader.borrow_and_update() {
                return Some(((), leader));
            }
        }
    })
}

async fn reconcile(model: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let span = info_span!(
        "reconcile",
        namespace = %model.namespace().unwrap_or_default(),
        name = %model.name_any()
    );
    async move {
        // Until every cache has listed, "not in the cache" would read as "does not exist". The
        // reconcile must not wait here: a waiting reconcile holds a concurrency slot, and the
        // Controller stops polling the watches (and so the caches) while its slots are full.
        if !*ctx.caches_synced.borrow() {
            return Ok(Action::requeue(CACHE_SYNC_RETRY));
        }
        if !*ctx.leader.borrow() {
            return Ok(Action::await_change());
        }
        if model.meta().deletion_timestamp.is_some() {
            // Owner references let the garbage collector remove every child.
            return Ok(Action::await_change());
        }
        let started = std::time::Instant::now();
        let result = reconcile_model(&model, &ctx).await;
        let outcome = if result.is_ok() { "success" } else { "error" };
        ctx.metrics
            .reconcile_duration
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        result
    }
    .instrument(span)
    .await
}

async fn reconcile_model(model: &ModelDeployment, ctx: &Context) -> Result<Action, ReconcileError> {
    let previous = model.status.as_ref();
    let now = Timestamp::now();
    // When to ask the runtimes again; `None` when no model was probed.
    let mut recheck = None;
    let validated = validate::validate(model, &ctx.images);
    let next = match &validated {
        Err(errors) => status::compute(StatusInputs {
            generation: model.metadata.generation,
            previous,
            spec: Err(errors),
            validation: ValidationState::NotRequired,
            deployment: None,
            capacity: None,
            model: ModelReadiness::from_pod_readiness(None),
            now,
        }),
        Ok(spec) => {
            let desired = build::build(spec);
            let config_name = desired.runtime_config.as_ref().map(|c| c.name_any());
            let observed = ctx.caches.observe(spec, config_name.as_deref());
            let validation = match (&spec.validation, &observed.validation_job) {
                (None, _) => ValidationState::NotRequired,
                (Some(plan), None) => ValidationState::Running {
                    job: plan.job_name.clone(),
                },
                (Some(_), Some(job)) => ValidationState::of_job(job),
            };
            let capacity = ctx.caches.gpu_capacity(spec, &observed);
            let applied = apply::apply(&ctx.client, &desired, &observed, validation.allows_rollout()).await?;
            let created = applied.deployment.as_ref().filter(|_| applied.created_deployment);
            if let Some(uid) = created.and_then(|d| d.metadata.uid.clone())
                && ctx.first_time(format!("deployment/{uid}"))
            {
                ctx.metrics.deployments_created.inc();
            }
            if let Some(plan) = spec.validation.as_ref().filter(|_| applied.started_validation)
                && ctx.first_time(format!("started/{}/{}", spec.namespace, plan.job_name))
            {
                ctx.metrics.validations.with_label_values(&["started"]).inc();
            }
            let deployment = applied.deployment.as_ref().or(observed.deployment.as_deref());
            let readiness = if deployment.is_some() && ctx.endpoints.reaches(spec) {
                let (readiness, decisive) =
                    readiness::probe_models(&ctx.prober, &ctx.endpoints, spec, &observed.pods).await;
                recheck = decisive.map(|outcome| ctx.next_probe(model, &outcome));
                readiness
            } else {
                ModelReadiness::from_pod_readiness(deployment)
            };
            let next = status::compute(StatusInputs {
                generation: model.metadata.generation,
                previous,
                spec: Ok(spec),
                validation,
                deployment,
                capacity,
                model: readiness,
                now,
            });
            let labels = [spec.namespace.as_str(), spec.name.as_str(), spec.runtime.as_str()];
            let model_ready_replicas = next.model_ready_replicas.unwrap_or(0);
            ctx.metrics
                .model_ready
                .with_label_values(&labels)
                .set(i64::from(model_ready_replicas > 0));
            ctx.metrics
                .model_ready_replicas
                .with_label_values(&labels)
                .set(i64::from(model_ready_replicas));
            next
        }
    };

    if let Ok(spec) = &validated {
        count_validation_outcome(previous, &next, spec, ctx);
    }
    if previous != Some(&next) {
        apply::write_status(&ctx.client, model, &next).await?;
        publish_transitions(model, previous, &next, &ctx.recorder).await;
    }
    // Model probes are polled on the Prober's schedule (soon while loading, every 30 s once
    // served, so that a model that stops answering is noticed). Everything else ends with a
    // change a watch reports (a Job finishing, pods becoming ready, GPUs freed), so only the
    // safety resync is timed.
    Ok(Action::requeue(recheck.unwrap_or(RESYNC_INTERVAL).min(RESYNC_INTERVAL)))
}

/// `model_validations_total{status=success|failure}` counts the Validated condition leaving
/// ValidationRunning, once per Job verdict.
fn count_validation_outcome(
    previous: Option<&ModelDeploymentStatus>,
    next: &ModelDeploymentStatus,
    spec: &validate::Validated,
    ctx: &Context,
) {
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
        return;
    }
    let outcome = match after.as_deref() {
        Some(conditions::reasons::VALIDATION_SUCCEEDED) => "success",
        Some(conditions::reasons::VALIDATION_FAILED) => "failure",
        _ => return,
    };
    let Some(plan) = &spec.validation else { return };
    if ctx.first_time(format!("verdict/{}/{}", spec.namespace, plan.job_name)) {
        ctx.metrics.validations.with_label_values(&[outcome]).inc();
    }
}

async fn publish_transitions(
    model: &ModelDeployment,
    previous: Option<&ModelDeploymentStatus>,
    next: &ModelDeploymentStatus,
    recorder: &Recorder,
) {
    let reference = model.object_ref(&());
    for transition in status::transitions(previous, next) {
        let event = Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.clone(),
            note: Some(format!(
                "{} is {}: {}",
                transition.type_, transition.status, transition.message
            )),
            action: transition.type_.clone(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &reference).await {
            warn!(%error, reason = %transition.reason, "could not publish an Event");
        }
    }
}

fn error_policy(model: Arc<ModelDeployment>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&[error.reason()]).inc();
    let transient = matches!(error, ReconcileError::Apply(e) if e.is_transient());
    if transient {
        debug!(name = %model.name_any(), %error, "reconcile raced another writer; retrying");
    } else {
        error!(name = %model.name_any(), reason = error.reason(), %error, "reconcile failed");
    }
    Action::requeue(ERROR_REQUEUE)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
