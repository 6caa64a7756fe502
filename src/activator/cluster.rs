//! What the activator knows of the cluster, from two watches:
//!
//! - the ModelDeployments: which Service is whose, the runtime (its ports), whether the model is
//!   at zero and why, and whether one of its replicas' model answers
//!   (`status.modelReadyReplicas`, the operator's own probe: a Ready pod alone is not enough);
//! - the serving pods: the address of a Ready one to forward to.
//!
//! Asking for a replica depends on who put the model at zero:
//! - the user or their autoscaler (`spec.replicas: 0`): `spec.replicas` set to 1 through the
//!   ModelDeployment's `/scale` subresource, as any autoscaler does;
//! - the operator, for being idle (`status.idle.scaledToZeroAt`): its Deployment's `/scale` set
//!   to 1, which the operator takes as the wake, handing the replicas back to the HPA.
//!
//! A model that is merely starting is already coming: its requests just wait.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{ModelKey, Models, Route, Upstream, host::ServiceHost};
use crate::{
    api::ModelDeployment,
    runtimes,
    vocabulary::{
        Runtime,
        cached::CachedPod,
        names::{COMPONENT_SERVER, LABEL_COMPONENT, LABEL_NAME, deployment_name, service_name},
        parse_duration, pods,
    },
};

/// At most one request for a replica per model this often, however many requests wait.
const WAKE_INTERVAL: Duration = Duration::from_secs(5);
/// The field manager of the activator's writes (the `/scale` subresources).
pub const FIELD_MANAGER: &str = "model-operator-activator";

/// Addresses that stand in for a model's pods (`--model-endpoint`), where pods' IPs cannot be
/// reached (outside a cluster, or on the test tier's made-up kwok IPs).
#[derive(Debug, Clone, Default)]
pub struct EndpointOverrides {
    pub http: BTreeMap<ModelKey, SocketAddr>,
    pub grpc: BTreeMap<ModelKey, SocketAddr>,
}

/// How the activator's view of the cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Watch one namespace, or all.
    pub namespace: Option<String>,
    pub overrides: EndpointOverrides,
    /// Forward to pods' IPs (off where they cannot be reached: models without an override then
    /// never count as answering here).
    pub pod_ips: bool,
    /// How long a request may wait for a model's cold start.
    pub cold_start_timeout: Duration,
}

/// One model as the activator follows it.
struct Followed {
    ready: watch::Sender<Option<Upstream>>,
    last_wake: Option<Instant>,
}

/// The models of the cluster, as [`Models`] for the activator.
pub struct ClusterModels {
    client: Client,
    settings: ClusterSettings,
    models: Store<ModelDeployment>,
    /// The Ready serving pods of each model, by pod name, and their IPs.
    ready_pods: Mutex<ReadyPods>,
    /// Service name → the models (in any namespace) that have it.
    services: Mutex<HashMap<String, BTreeSet<ModelKey>>>,
    followed: Mutex<HashMap<ModelKey, Followed>>,
    synced: AtomicBool,
}

impl ClusterModels {
    /// Starts both watches; the returned future keeps the view current and runs until the
    /// watches end (never, in practice: they retry).
    pub fn start(client: Client, settings: ClusterSettings) -> (Arc<Self>, impl Future<Output = ()> + Send) {
        let (models, model_writer) = reflector::store();
        let (model_api, pod_api): (Api<ModelDeployment>, Api<CachedPod>) = match &settings.namespace {
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let this = Arc::new(Self {
            client,
            settings,
            models,
            ready_pods: Mutex::new(ReadyPods::default()),
            services: Mutex::new(HashMap::new()),
            followed: Mutex::new(HashMap::new()),
            synced: AtomicBool::new(false),
        });
        let model_events = watcher(model_api, watcher::Config::default())
            .default_backoff()
            .modify(|model: &mut ModelDeployment| model.managed_fields_mut().clear())
            .reflect(model_writer)
            .map(|event| event.map(|e| Change::from_model(&e)));
        let server_pods = watcher::Config::default().labels(&format!("{LABEL_COMPONENT}={COMPONENT_SERVER}"));
        let pod_view = this.clone();
        let pod_events = watcher(pod_api, server_pods)
            .default_backoff()
            .map(move |event| event.map(|e| pod_view.ready_pods.lock().expect("ready pods lock").apply(e)));
        let view = this.clone();
        let driver = async move {
            let mut events = std::pin::pin!(stream::select(model_events, pod_events));
            while let Some(event) = events.next().await {
                match event {
                    Ok(change) => view.apply(change),
                    Err(error) => debug!(%error, "activator watch error (retrying)"),
                }
            }
        };
        (this, driver)
    }

    /// Both watches have listed once: routes and readiness are the cluster's.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    fn apply(&self, change: Change) {
        match change {
            Change::Model(key) => {
                self.index(&key);
                self.refresh(&key);
            }
            Change::Pod(key) => self.refresh(&key),
            Change::Nothing => {}
            Change::Relisted => {
                let keys: Vec<ModelKey> = self.models.state().iter().map(|m| key_of(m)).collect();
                self.services.lock().expect("services lock").clear();
                for key in &keys {
                    self.index(key);
                }
                let followed: Vec<ModelKey> = self.followed.lock().expect("followed lock").keys().cloned().collect();
                for key in followed.iter().chain(&keys) {
                    self.refresh(key);
                }
                let synced = self.models.wait_until_ready().now_or_never().is_some()
                    && self.ready_pods.lock().expect("ready pods lock").listed;
                if synced && !self.synced.swap(true, Ordering::Relaxed) {
                    info!(models = keys.len(), "activator caches synced");
                }
            }
        }
    }

    /// Keeps the Service index in step with the model's presence.
    fn index(&self, key: &ModelKey) {
        let service = service_name(&key.name);
        let exists = self.model(key).is_some();
        let mut services = self.services.lock().expect("services lock");
        if exists {
            services.entry(service).or_default().insert(key.clone());
        } else if let Some(models) = services.get_mut(&service) {
            models.remove(key);
            if models.is_empty() {
                services.remove(&service);
            }
        }
    }

    fn model(&self, key: &ModelKey) -> Option<Arc<ModelDeployment>> {
        self.models
            .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
    }

    /// Recomputes where the model answers, for the requests waiting on it.
    fn refresh(&self, key: &ModelKey) {
        let model = self.model(key);
        let upstream = model.as_deref().and_then(|model| self.upstream(key, model));
        let mut followed = self.followed.lock().expect("followed lock");
        if model.is_none() {
            // Gone: dropping the sender tells the held requests.
            followed.remove(key);
            return;
        }
        if let Some(entry) = followed.get(key) {
            entry.ready.send_if_modified(|current| {
                let changed = *current != upstream;
                *current = upstream;
                changed
            });
        }
    }

    /// A Ready pod's address, once the operator's probe says one of the model's replicas answers.
    fn upstream(&self, key: &ModelKey, model: &ModelDeployment) -> Option<Upstream> {
        let answers = model
            .status
            .as_ref()
            .and_then(|s| s.model_ready_replicas)
            .is_some_and(|n| n > 0);
        if !answers {
            return None;
        }
        let overrides = &self.settings.overrides;
        if let Some(http) = overrides.http.get(key) {
            return Some(Upstream {
                http: *http,
                grpc: overrides.grpc.get(key).copied(),
            });
        }
        if !self.settings.pod_ips {
            return None;
        }
        let ip = self.ready_pods.lock().expect("ready pods lock").first(key)?;
        let (http, grpc) = forwarded_ports(model.spec.runtime);
        let at = |port: i32| u16::try_from(port).ok().map(|port| SocketAddr::new(ip, port));
        Some(Upstream {
            http: at(http?)?,
            grpc: grpc.and_then(at),
        })
    }

    /// The model's readiness channel, made when a request first asks for it.
    fn follow(&self, key: &ModelKey) -> watch::Receiver<Option<Upstream>> {
        let mut followed = self.followed.lock().expect("followed lock");
        if let Some(entry) = followed.get(key) {
            return entry.ready.subscribe();
        }
        let upstream = self.model(key).and_then(|model| self.upstream(key, &model));
        let (ready, receiver) = watch::channel(upstream);
        followed.insert(key.clone(), Followed { ready, last_wake: None });
        receiver
    }
}

impl Models for ClusterModels {
    fn route(&self, host: &ServiceHost) -> Result<Route, String> {
        let candidates: Vec<ModelKey> = self
            .services
            .lock()
            .expect("services lock")
            .get(&host.service)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let key = choose(host, &candidates, self.is_synced())?;
        let cold_start_timeout = self.model(&key).map_or(self.settings.cold_start_timeout, |model| {
            cold_start_timeout(&model, self.settings.cold_start_timeout)
        });
        Ok(Route {
            ready: self.follow(&key),
            model: key,
            cold_start_timeout,
        })
    }

    fn wake(&self, key: &ModelKey) {
        let Some(model) = self.model(key) else {
            return;
        };
        let Some(wake) = wake_for(&model) else {
            // Starting already, or the HPA's (which never goes below one).
            return;
        };
        {
            let mut followed = self.followed.lock().expect("followed lock");
            let Some(entry) = followed.get_mut(key) else {
                return;
            };
            if entry.last_wake.is_some_and(|at| at.elapsed() < WAKE_INTERVAL) {
                return;
            }
            entry.last_wake = Some(Instant::now());
        }
        let (client, key) = (self.client.clone(), key.clone());
        tokio::spawn(async move {
            let patch = json!({"spec": {"replicas": 1}});
            let params = PatchParams::apply(FIELD_MANAGER);
            let written = match wake {
                Wake::ModelScale => Api::<ModelDeployment>::namespaced(client, &key.namespace)
                    .patch_scale(&key.name, &params, &Patch::Merge(&patch))
                    .await
                    .map(drop),
                Wake::DeploymentScale => Api::<Deployment>::namespaced(client, &key.namespace)
                    .patch_scale(&deployment_name(&key.name), &params, &Patch::Merge(&patch))
                    .await
                    .map(drop),
            };
            match written {
                Ok(()) => info!(model = %key, ?wake, "requests are waiting for a model at zero: scaled it to 1"),
                Err(error) => {
                    warn!(model = %key, ?wake, %error, "could not scale the model to 1 for its waiting requests")
                }
            }
        });
    }
}

/// How a model at zero is asked for a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The user's `spec.replicas: 0`: the ModelDeployment's `/scale`.
    ModelScale,
    /// Asleep for being idle: the Deployment's `/scale`, which the operator takes as the wake.
    DeploymentScale,
}

/// How to wake `model`; `None` for a model that is not at zero (it is starting, or serves).
fn wake_for(model: &ModelDeployment) -> Option<Wake> {
    let asleep = model
        .status
        .as_ref()
        .and_then(|status| status.idle.as_ref())
        .is_some_and(|idle| idle.scaled_to_zero_at.is_some());
    if asleep {
        Some(Wake::DeploymentScale)
    } else if !model.spec.autoscale && model.spec.replicas == 0 {
        Some(Wake::ModelScale)
    } else {
        None
    }
}

/// The longest a request for `model` may wait: its `autoscaling.coldStartTimeout`, else the
/// flag's. The API server checked the field's form; one that still does not read is the flag's.
fn cold_start_timeout(model: &ModelDeployment, default: Duration) -> Duration {
    model
        .spec
        .autoscaling
        .as_ref()
        .and_then(|autoscaling| autoscaling.cold_start_timeout.as_deref())
        .and_then(|text| parse_duration(text).ok())
        .unwrap_or(default)
}

/// The one model a host can mean, among those with its Service name; the words for the client
/// when there is none or more than one.
fn choose(host: &ServiceHost, candidates: &[ModelKey], synced: bool) -> Result<ModelKey, String> {
    let matching: Vec<&ModelKey> = candidates
        .iter()
        .filter(|key| host.namespace.as_deref().is_none_or(|ns| ns == key.namespace))
        .collect();
    match matching.as_slice() {
        [key] => Ok((*key).clone()),
        [] if !synced => Err("the activator is still listing the cluster's ModelDeployments; try again shortly".into()),
        [] => Err(format!("no ModelDeployment has the Service {host}")),
        several => {
            let namespaces: Vec<&str> = several.iter().map(|k| k.namespace.as_str()).collect();
            Err(format!(
                "the Service {} exists in namespaces {}: send the request to {}.NAMESPACE",
                host.service,
                namespaces.join(", "),
                host.service
            ))
        }
    }
}

/// What a watch event changed, for the models it concerns.
enum Change {
    Model(ModelKey),
    /// A serving pod of the model came, went, or turned Ready or not.
    Pod(ModelKey),
    /// A watch listed anew: everything may have changed.
    Relisted,
    Nothing,
}

impl Change {
    fn from_model(event: &watcher::Event<ModelDeployment>) -> Self {
        match event {
            watcher::Event::Apply(model) | watcher::Event::Delete(model) => Self::Model(key_of(model)),
            watcher::Event::InitDone => Self::Relisted,
            watcher::Event::Init | watcher::Event::InitApply(_) => Self::Nothing,
        }
    }
}

/// The Ready serving pods per model, kept from the pod watch's events (a full cache of pods
/// would hold far more than an IP each).
#[derive(Default)]
struct ReadyPods {
    by_model: HashMap<ModelKey, BTreeMap<String, IpAddr>>,
    /// What a relist has seen so far, swapped in when it is done.
    relisting: Option<HashMap<ModelKey, BTreeMap<String, IpAddr>>>,
    listed: bool,
}

impl ReadyPods {
    fn apply(&mut self, event: watcher::Event<CachedPod>) -> Change {
        match event {
            watcher::Event::Apply(pod) => {
                let Some(key) = model_of(&pod) else {
                    return Change::Nothing;
                };
                let models = &mut self.by_model;
                match ready_ip(&pod) {
                    Some(ip) => models.entry(key.clone()).or_default().insert(pod.name_any(), ip),
                    None => remove(models, &key, &pod.name_any()),
                };
                Change::Pod(key)
            }
            watcher::Event::Delete(pod) => {
                let Some(key) = model_of(&pod) else {
                    return Change::Nothing;
                };
                remove(&mut self.by_model, &key, &pod.name_any());
                Change::Pod(key)
            }
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                Change::Nothing
            }
            watcher::Event::InitApply(pod) => {
                if let (Some(key), Some(ip), Some(relisting)) =
                    (model_of(&pod), ready_ip(&pod), self.relisting.as_mut())
                {
                    relisting.entry(key).or_default().insert(pod.name_any(), ip);
                }
                Change::Nothing
            }
            watcher::Event::InitDone => {
                self.by_model = self.relisting.take().unwrap_or_default();
                self.listed = true;
                Change::Relisted
            }
        }
    }

    /// The first Ready pod of the model, by name.
    fn first(&self, key: &ModelKey) -> Option<IpAddr> {
        self.by_model.get(key)?.values().next().copied()
    }
}

fn remove(models: &mut HashMap<ModelKey, BTreeMap<String, IpAddr>>, key: &ModelKey, pod: &str) -> Option<IpAddr> {
    let pods = models.get_mut(key)?;
    let removed = pods.remove(pod);
    if pods.is_empty() {
        models.remove(key);
    }
    removed
}

fn model_of(pod: &CachedPod) -> Option<ModelKey> {
    Some(ModelKey {
        namespace: pod.namespace()?,
        name: pod.labels().get(LABEL_NAME)?.clone(),
    })
}

/// A Ready, not terminating pod's IP.
fn ready_ip(pod: &CachedPod) -> Option<IpAddr> {
    if !pods::is_ready(pod) || pods::is_terminating(pod) {
        return None;
    }
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn key_of(model: &ModelDeployment) -> ModelKey {
    ModelKey {
        namespace: model.namespace().unwrap_or_default(),
        name: model.name_any(),
    }
}

/// The runtime's HTTP and gRPC ports (by their names on the model's Service): where the
/// activator forwards each listener's requests.
fn forwarded_ports(runtime: Runtime) -> (Option<i32>, Option<i32>) {
    let profile = runtimes::profile(runtime);
    let port = |name: &str| profile.service_ports().iter().find(|p| p.name == name).map(|p| p.port);
    (port("http"), port("grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(namespace: &str, name: &str) -> ModelKey {
        ModelKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn host(service: &str, namespace: Option<&str>) -> ServiceHost {
        ServiceHost {
            service: service.into(),
            namespace: namespace.map(str::to_owned),
        }
    }

    #[test]
    fn a_short_name_finds_the_only_model_and_an_ambiguous_one_asks_for_the_namespace() {
        let both = [key("ml", "bert"), key("search", "bert")];
        assert_eq!(
            choose(&host("bert-service", Some("ml")), &both, true),
            Ok(key("ml", "bert"))
        );
        assert_eq!(
            choose(&host("bert-service", None), &both[..1], true),
            Ok(key("ml", "bert"))
        );
        assert_eq!(
            choose(&host("bert-service", None), &both, true),
            Err(
                "the Service bert-service exists in namespaces ml, search: send the request to bert-service.NAMESPACE"
                    .into()
            )
        );
        assert_eq!(
            choose(&host("bert-service", Some("prod")), &both, true),
            Err("no ModelDeployment has the Service bert-service.prod".into())
        );
        assert!(
            choose(&host("bert-service", Some("prod")), &both, false)
                .unwrap_err()
                .contains("still listing")
        );
    }

    fn pod(name: &str, ready: bool, ip: &str) -> CachedPod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "labels": {LABEL_NAME: "bert", LABEL_COMPONENT: COMPONENT_SERVER}},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn model(spec: serde_json::Value, status: serde_json::Value) -> ModelDeployment {
        let mut spec = spec;
        spec["modelURI"] = json!("https://models.example.com/m.pt");
        spec["runtime"] = json!("fastapi-pytorch");
        serde_json::from_value(json!({
            "apiVersion": "mlops.sathvik.dev/v1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ml"},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_model_is_woken_through_whoever_put_it_at_zero() {
        let user_zero = model(json!({"replicas": 0}), json!({}));
        assert_eq!(wake_for(&user_zero), Some(Wake::ModelScale));
        let idle_at_zero = model(
            json!({"autoscale": true, "autoscaling": {"minReplicas": 0}}),
            json!({"idle": {"since": "2026-12-04T05:00:00Z", "requests": 7,
                            "scaledToZeroAt": "2026-12-04T05:15:00Z", "deploymentGeneration": 4}}),
        );
        assert_eq!(wake_for(&idle_at_zero), Some(Wake::DeploymentScale));
        let idle_but_serving = model(
            json!({"autoscale": true, "autoscaling": {"minReplicas": 0}}),
            json!({"idle": {"since": "2026-12-04T05:00:00Z", "requests": 7}}),
        );
        assert_eq!(wake_for(&idle_but_serving), None, "it serves: nothing to wake");
        assert_eq!(wake_for(&model(json!({"replicas": 2}), json!({}))), None);
    }

    #[test]
    fn a_models_own_cold_start_bound_wins_over_the_flag() {
        let flag = Duration::from_secs(300);
        let own = model(
            json!({"autoscale": true, "autoscaling": {"minReplicas": 0, "coldStartTimeout": "45s"}}),
            json!({}),
        );
        assert_eq!(cold_start_timeout(&own, flag), Duration::from_secs(45));
        assert_eq!(cold_start_timeout(&model(json!({}), json!({})), flag), flag);
    }

    #[test]
    fn only_ready_pods_are_forwarded_to_and_a_relist_replaces_what_was_seen() {
        let mut pods = ReadyPods::default();
        let bert = key("ml", "bert");
        assert!(
            matches!(pods.apply(watcher::Event::Apply(pod("bert-b", false, "10.0.0.2"))), Change::Pod(k) if k == bert)
        );
        assert_eq!(pods.first(&bert), None, "not Ready");
        pods.apply(watcher::Event::Apply(pod("bert-b", true, "10.0.0.2")));
        pods.apply(watcher::Event::Apply(pod("bert-a", true, "10.0.0.1")));
        assert_eq!(
            pods.first(&bert),
            Some("10.0.0.1".parse().unwrap()),
            "the first by name"
        );
        pods.apply(watcher::Event::Delete(pod("bert-a", true, "10.0.0.1")));
        assert_eq!(pods.first(&bert), Some("10.0.0.2".parse().unwrap()));

        // A relist that no longer sees bert-b, but a new pod.
        pods.apply(watcher::Event::Init);
        pods.apply(watcher::Event::InitApply(pod("bert-c", true, "10.0.0.3")));
        assert_eq!(
            pods.first(&bert),
            Some("10.0.0.2".parse().unwrap()),
            "until the relist is done"
        );
        assert!(matches!(pods.apply(watcher::Event::InitDone), Change::Relisted));
        assert_eq!(pods.first(&bert), Some("10.0.0.3".parse().unwrap()));
        assert!(pods.listed);
    }
}
