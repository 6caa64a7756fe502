//! The watch caches: one reflector per kind, each filled by its own task, and the wait for all
//! of them to list once (until then `/readyz` says 503 and reconciles do nothing).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        core::v1::{ConfigMap, Node},
        discovery::v1::EndpointSlice,
        resource::v1::{ResourceClaim, ResourceClaimTemplate, ResourceSlice},
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::{ActivatorService, admin::CachesSynced, projections};
use crate::{
    api::ModelDeployment,
    reconcile::{Caches, PodIndex, RequestedGpus},
    vocabulary::{
        cached::{CachedDeployment, CachedPod, CachedService},
        digest::text_hash,
        names::{
            ENDPOINTSLICE_MANAGER, LABEL_ENDPOINTSLICE_MANAGED_BY, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, MANAGED_BY,
        },
        per_model,
    },
};

/// A watch event stream that triggers reconciles.
pub type Triggers<K> = futures::channel::mpsc::UnboundedReceiver<Result<K, watcher::Error>>;

/// The caches and the event streams the Controller is built from.
pub struct Watches {
    pub caches: Caches,
    pub models: Triggers<ModelDeployment>,
    pub deployments: Triggers<CachedDeployment>,
    pub services: Triggers<CachedService>,
    pub hpas: Triggers<HorizontalPodAutoscaler>,
    pub jobs: Triggers<Job>,
    pub config_maps: Triggers<ConfigMap>,
    pub pods: Triggers<CachedPod>,
    pub nodes: Triggers<Node>,
    pub claim_templates: Triggers<ResourceClaimTemplate>,
    pub resource_slices: Triggers<ResourceSlice>,
    pub resource_claims: Triggers<ResourceClaim>,
    pub endpoint_slices: Triggers<EndpointSlice>,
    pub activator_slices: Triggers<EndpointSlice>,
}

/// Whether the cluster serves `resource.k8s.io/v1` (Dynamic Resource Allocation, GA in 1.34):
/// without it the DRA caches stay empty (and count as listed), and every model uses the device
/// plugin.
pub async fn dra_served(client: &Client) -> bool {
    match client.list_api_group_resources("resource.k8s.io/v1").await {
        Ok(resources) => resources.resources.iter().any(|r| r.name == "resourceslices"),
        Err(error) => {
            info!(%error, "resource.k8s.io/v1 is not served: GPUs only through the device plugin");
            false
        }
    }
}

/// Starts every watch: ModelDeployments, the operator's children and pods in `namespace` (all
/// when `None`; a namespaced install may read no further), nodes everywhere, and the
/// EndpointSlices of the activator's Service when there is one. Each ModelDeployment a watch
/// reports deleted is sent to `deleted` as (namespace, name).
pub fn start(
    client: &Client,
    namespace: Option<&str>,
    dra: bool,
    activator: Option<&ActivatorService>,
    deleted: futures::channel::mpsc::UnboundedSender<(String, String)>,
) -> Watches {
    let children = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let models_api: Api<ModelDeployment> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let (models, model_stream) = reflect(
        models_api,
        watcher::Config::default(),
        projections::model_deployment,
        move |event: &watcher::Event<ModelDeployment>| {
            if let watcher::Event::Delete(model) = event {
                let _ = deleted.unbounded_send((model.namespace().unwrap_or_default(), model.name_any()));
            }
        },
    );
    let (deployments, deployment_stream) = reflect(
        in_scope(client, namespace),
        children.clone(),
        projections::deployment,
        ignore,
    );
    let (services, service_stream) = reflect(
        in_scope(client, namespace),
        children.clone(),
        projections::service,
        ignore,
    );
    let (hpas, hpa_stream) = reflect(in_scope(client, namespace), children.clone(), projections::hpa, ignore);
    let (jobs, job_stream) = reflect(in_scope(client, namespace), children.clone(), projections::job, ignore);
    let (config_maps, config_map_stream) = reflect(
        in_scope(client, namespace),
        children.clone(),
        projections::config_map,
        ignore,
    );
    // Selected by the slice's own managed-by label: the EndpointSlice controller copies a
    // Service's labels (the operator's among them) onto the slices it makes for the pods.
    let (endpoint_slices, endpoint_slice_stream) = reflect(
        in_scope(client, namespace),
        watcher::Config::default().labels(&format!("{LABEL_ENDPOINTSLICE_MANAGED_BY}={ENDPOINTSLICE_MANAGER}")),
        projections::endpoint_slice,
        ignore,
    );
    let (activator_slices, activator_slice_stream) = served_or_empty(activator.is_some(), || {
        let activator = activator.expect("watched only with an activator");
        reflect(
            Api::namespaced(client.clone(), &activator.namespace),
            watcher::Config::default().labels(&format!("{LABEL_SERVICE_NAME}={}", activator.name)),
            projections::whole,
            ignore,
        )
    });
    let (claim_templates, claim_template_stream) = served_or_empty(dra, || {
        reflect(in_scope(client, namespace), children, projections::whole, ignore)
    });
    let (resource_slices, resource_slice_stream) = served_or_empty(dra, || {
        reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            projections::whole,
            ignore,
        )
    });
    let (resource_claims, resource_claim_stream) = served_or_empty(dra, || {
        reflect(
            in_scope(client, namespace),
            watcher::Config::default(),
            projections::whole,
            ignore,
        )
    });
    let (device_classes, _) = served_or_empty(dra, || {
        reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            projections::whole,
            ignore,
        )
    });
    let pod_index = PodIndex::default();
    let (pods, pod_stream) = reflect(
        in_scope(client, namespace),
        watcher::Config::default(),
        projections::pod,
        {
            let pod_index = pod_index.clone();
            move |event: &watcher::Event<CachedPod>| pod_index.follow(event)
        },
    );
    let (nodes, node_stream) = reflect(
        Api::all(client.clone()),
        watcher::Config::default(),
        projections::node,
        ignore,
    );
    Watches {
        caches: Caches {
            models,
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
            device_classes,
            endpoint_slices,
            activator_slices,
            pods_namespace: namespace.map(str::to_owned),
            pod_index,
            requested_gpus: RequestedGpus::default(),
        },
        models: model_stream,
        deployments: deployment_stream,
        services: service_stream,
        hpas: hpa_stream,
        jobs: job_stream,
        config_maps: config_map_stream,
        pods: pod_stream,
        nodes: node_stream,
        claim_templates: claim_template_stream,
        resource_slices: resource_slice_stream,
        resource_claims: resource_claim_stream,
        endpoint_slices: endpoint_slice_stream,
        activator_slices: activator_slice_stream,
    }
}

/// A cache where its source exists (the DRA API is served, an activator is installed); an empty
/// one that counts as listed where it does not.
fn served_or_empty<K>(served: bool, watch: impl FnOnce() -> (Store<K>, Triggers<K>)) -> (Store<K>, Triggers<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    if served {
        return watch();
    }
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // No sender: the trigger stream ends at once, which the Controller takes as a quiet watch.
    let (_, triggers) = futures::channel::mpsc::unbounded();
    (store, triggers)
}

/// Waits (in its own task) until every cache has listed once, then flips `/readyz` and the
/// reconcile gate; says every 10 s which caches are still waiting.
pub fn report_sync(caches: Caches, ready: CachesSynced) -> watch::Receiver<bool> {
    let (synced_tx, synced_rx) = watch::channel(false);
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
            claim_templates,
            resource_slices,
            resource_claims,
            device_classes,
            endpoint_slices,
            activator_slices,
            pods_namespace: _,
            pod_index: _,
            requested_gpus: _,
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
            ("resourceclaimtemplates", claim_templates.wait_until_ready().boxed()),
            ("resourceslices", resource_slices.wait_until_ready().boxed()),
            ("resourceclaims", resource_claims.wait_until_ready().boxed()),
            ("deviceclasses", device_classes.wait_until_ready().boxed()),
            ("endpointslices", endpoint_slices.wait_until_ready().boxed()),
            ("activator endpointslices", activator_slices.wait_until_ready().boxed()),
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
                        ready.set();
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
    synced_rx
}

/// For caches whose events only the Controller needs.
fn ignore<K>(_: &watcher::Event<K>) {}

/// `K` in one namespace, or in all when `None`.
fn in_scope<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A watch of `api` into a cache that keeps what `project` leaves of each object, calling
/// `follow` with every event after the cache applied it. The Controller gets the objects that
/// changed in a way the cache shows (their projection's hash moved) and every deleted one.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    project: fn(&mut K),
    follow: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, Triggers<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let reflector = watching_anew_after_failures(api, config)
        .default_backoff()
        .modify(project)
        .reflect(writer);
    // The cache is kept by its own task, so that it fills whatever the Controller does: the
    // Controller polls its triggers only as its scheduler asks, and a cache that waits on it
    // can wait on a reconcile that waits on the cache. Events reach the Controller through an
    // unbounded channel; it drains it continuously, so the channel holds only a burst.
    //
    // Only objects reach the Controller, never the watch's errors: the Controller backs off its
    // whole trigger stream on each error it is given (exponentially, up to 30 s, reset only
    // after two quiet minutes), so the burst of errors an API server restart causes would stop
    // every reconcile for half a minute. The watch here retries with its own backoff.
    let (events, triggers) = futures::channel::mpsc::unbounded();
    let mut changes = ChangeFilter::default();
    tokio::spawn(reflector.for_each(move |event| {
        match event {
            Ok(event) => {
                follow(&event);
                // A closed channel means the Controller has stopped; the cache keeps serving reads.
                if let Some(object) = changes.changed(event) {
                    let _ = events.unbounded_send(Ok(object));
                }
            }
            Err(error) => debug!(%error, "watch error; retrying"),
        }
        future::ready(())
    }));
    (store, triggers)
}

/// Which watch events carry a change the cache shows: a heartbeat, a status field nobody reads
/// or a write that changed nothing triggers no reconcile. A (re)list passes every object, as
/// kube's Controller expects; a deletion always passes.
#[derive(Default)]
struct ChangeFilter {
    /// The projection's hash of each object seen, by a hash of its UID: 16 bytes an object
    /// rather than a copy of the UID's 36 (the cache itself holds the UID).
    seen: HashMap<u64, u64>,
}

impl ChangeFilter {
    fn changed<K: Resource + Serialize>(&mut self, event: watcher::Event<K>) -> Option<K> {
        match event {
            watcher::Event::Init => {
                self.seen.clear();
                None
            }
            watcher::Event::InitDone => {
                per_model::shrink_if_sparse(&mut self.seen);
                None
            }
            watcher::Event::InitApply(mut object) => {
                let hash = projections::content_hash(&mut object);
                self.seen.insert(uid_key(&object), hash);
                Some(object)
            }
            watcher::Event::Apply(mut object) => {
                let hash = projections::content_hash(&mut object);
                (self.seen.insert(uid_key(&object), hash) != Some(hash)).then_some(object)
            }
            watcher::Event::Delete(object) => {
                self.seen.remove(&uid_key(&object));
                // After a burst came and went, the room for it is given back.
                per_model::shrink_if_sparse(&mut self.seen);
                Some(object)
            }
        }
    }
}

/// A hash of an object's UID; two UIDs of one kind colliding in 64 bits would cost one
/// reconcile skipped or one made in vain, never a wrong write.
fn uid_key<K: Resource>(object: &K) -> u64 {
    text_hash(object.meta().uid.as_deref().unwrap_or_default())
}

/// kube-runtime's watcher, started anew (a fresh list, then a watch) whenever its watch stream
/// fails. kube-runtime 4.2 keeps reading a watch stream after it failed, and a connection the API
/// server dropped mid-body (it was restarted) fails on every read from then on: the watcher
/// backs off up to 30 s between reads of the dead stream and never watches again, so the cache
/// stops changing while the process looks healthy. A new watcher lists again, and the reflector
/// swaps the whole cache in when that list is complete, so nothing stale is left.
fn watching_anew_after_failures<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    type Watch<K> = futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;
    futures::stream::unfold(None::<Watch<K>>, move |current| {
        let (api, config) = (api.clone(), config.clone());
        async move {
            let mut watch = current.unwrap_or_else(|| watcher(api, config).boxed());
            let item = watch.next().await?;
            let failed = matches!(item, Err(watcher::Error::WatchFailed(_)));
            if failed {
                warn!("a watch stream failed; listing and watching anew");
            }
            Some((item, (!failed).then_some(watch)))
        }
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn config_map(uid: &str, version: &str, data: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("config-{uid}")),
                uid: Some(uid.to_owned()),
                resource_version: Some(version.to_owned()),
                ..ObjectMeta::default()
            },
            data: Some([("key".to_owned(), data.to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    fn passed(filter: &mut ChangeFilter, event: watcher::Event<ConfigMap>) -> bool {
        filter.changed(event).is_some()
    }

    #[test]
    fn only_a_change_the_cache_shows_passes_and_every_list_and_delete_does() {
        let mut filter = ChangeFilter::default();
        assert!(!passed(&mut filter, watcher::Event::Init));
        assert!(passed(
            &mut filter,
            watcher::Event::InitApply(config_map("a", "1", "x"))
        ));
        assert!(!passed(&mut filter, watcher::Event::InitDone));
        assert!(
            !passed(&mut filter, watcher::Event::Apply(config_map("a", "2", "x"))),
            "a new resourceVersion alone is no change"
        );
        assert!(passed(&mut filter, watcher::Event::Apply(config_map("a", "3", "y"))));
        assert!(
            passed(&mut filter, watcher::Event::Apply(config_map("b", "4", "y"))),
            "another object with the same content is news"
        );
        assert!(passed(&mut filter, watcher::Event::Delete(config_map("a", "5", "y"))));
        assert!(
            passed(&mut filter, watcher::Event::Apply(config_map("a", "6", "y"))),
            "forgotten once deleted"
        );
        // A relist passes everything again, as kube's Controller expects.
        assert!(!passed(&mut filter, watcher::Event::Init));
        assert!(passed(
            &mut filter,
            watcher::Event::InitApply(config_map("b", "4", "y"))
        ));
    }

    #[test]
    fn the_room_of_a_burst_is_given_back_once_it_is_gone() {
        let mut filter = ChangeFilter::default();
        for i in 0..1000 {
            filter.changed(watcher::Event::Apply(config_map(&format!("uid-{i}"), "1", "x")));
        }
        let full = filter.seen.capacity();
        for i in 0..1000 {
            filter.changed(watcher::Event::Delete(config_map(&format!("uid-{i}"), "2", "x")));
        }
        assert!(filter.seen.is_empty());
        assert!(
            filter.seen.capacity() < full / 8,
            "{} of {full}",
            filter.seen.capacity()
        );
    }
}
