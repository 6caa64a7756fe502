//! What this process last wrote for each child, so that a reconcile that finds a child as it
//! left it writes nothing: at rest, a thousand models cost no API writes.
//!
//! A child is written again only when
//! - the desired object differs from what was last applied (a hash of its serialization), or
//! - the cached object is not the one that write returned: someone else changed it (drift), it
//!   was deleted and created anew, or the cache has not caught up yet. The version compared is
//!   `metadata.generation` where the kind keeps one (Deployment, HPA: their status changes all
//!   the time, their spec only by a write), `resourceVersion` otherwise (Service, ConfigMap).
//!
//! Right after a write the watch cache may not hold the object yet. Until the cache has shown it
//! once (`confirmed`), and for at most [`UNCONFIRMED_TRUST`], the write counts as current, so the
//! reconciles a burst of events brings meanwhile neither read the name again (ownership) nor
//! write the child again; the driver looks again after that time, so a child deleted before
//! the cache ever showed it is written anew.
//!
//! Nothing is kept across restarts: a new process (or a new leader) applies every child once,
//! which also repairs whatever drifted while no operator ran; server-side apply makes those
//! writes no-ops on the server when nothing changed.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::Resource;
use serde::Serialize;

use crate::vocabulary::{
    digest::{json_hash, text_hash},
    per_model::forget_model,
};

/// The hash of a desired object, as it would be sent.
pub fn desired_hash<K: Serialize>(object: &K) -> u64 {
    json_hash(object)
}

/// How long a write the cache has not shown yet counts as current.
pub const UNCONFIRMED_TRUST: Duration = Duration::from_secs(10);

/// One write, in 48 bytes: the object's UID and version are kept as hashes, since they are only
/// ever compared with the cache's (a thousand models keep some four thousand of these).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    hash: u64,
    uid: u64,
    version: u64,
    /// The cache has shown this object (its UID) since it was written.
    confirmed: bool,
    at: Instant,
}

impl Written {
    /// Written from `hash`, and the cache has not caught up with it yet.
    fn awaiting_cache(&self, hash: u64) -> bool {
        self.hash == hash && !self.confirmed && self.at.elapsed() < UNCONFIRMED_TRUST
    }
}

/// Per model (namespace, name), per child kind: what the last successful apply returned.
#[derive(Debug, Default)]
pub struct LastApplied {
    models: Mutex<HashMap<(String, String), ChildrenWritten>>,
}

/// By kind. A model has at most six kinds of children: a short list is a fraction of the room
/// of a map (whose smallest allocation holds eight), and as quick to search.
#[derive(Debug, Default)]
struct ChildrenWritten(Vec<(u64, Written)>);

impl ChildrenWritten {
    fn get(&self, kind: u64) -> Option<&Written> {
        self.0.iter().find(|(k, _)| *k == kind).map(|(_, written)| written)
    }

    fn get_mut(&mut self, kind: u64) -> Option<&mut Written> {
        self.0.iter_mut().find(|(k, _)| *k == kind).map(|(_, written)| written)
    }

    fn insert(&mut self, kind: u64, written: Written) {
        match self.get_mut(kind) {
            Some(slot) => *slot = written,
            None => self.0.push((kind, written)),
        }
    }

    fn remove(&mut self, kind: u64) {
        self.0.retain(|(k, _)| *k != kind);
    }
}

/// The version a change by anyone moves: the generation if the kind keeps one. An HPA keeps
/// none, and its controller writes its status (so its `resourceVersion`) at every sync: its
/// version is a hash of what anyone but that controller writes, its metadata's labels,
/// annotations and owners and its spec.
fn version_of<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> Option<String> {
    let meta = object.meta();
    if let Some(generation) = meta.generation {
        return Some(format!("generation {generation}"));
    }
    if K::kind(&()) == "HorizontalPodAutoscaler" {
        let whole = serde_json::to_value(object).ok()?;
        let written = (
            &meta.labels,
            &meta.annotations,
            &meta.owner_references,
            whole.get("spec"),
        );
        return Some(format!("spec {}", desired_hash(&written)));
    }
    meta.resource_version.as_ref().map(|v| format!("resourceVersion {v}"))
}

impl LastApplied {
    /// True when `cached` is exactly what this process last wrote for `model`'s child of this
    /// kind, from a desired object with `hash`, or when that write is so recent that the cache
    /// does not show it yet: applying it again would change nothing.
    pub fn is_current<K: Resource<DynamicType = ()> + Serialize>(
        &self,
        model: (&str, &str),
        hash: u64,
        cached: Option<&K>,
    ) -> bool {
        let mut models = self.models.lock().expect("last applied lock");
        let Some(written) = models
            .get_mut(&(model.0.to_owned(), model.1.to_owned()))
            .and_then(|children| children.get_mut(kind_of::<K>()))
        else {
            return false;
        };
        let Some(cached) = cached else {
            return written.awaiting_cache(hash);
        };
        let same_object = cached.meta().uid.as_deref().map(text_hash) == Some(written.uid);
        written.confirmed |= same_object;
        written.hash == hash && same_object && version_of(cached).as_deref().map(text_hash) == Some(written.version)
    }

    /// Whether the child of this kind was written from `hash` so lately that the cache does not
    /// show it yet: its name is this model's, no need to read it.
    pub fn awaiting_cache<K: Resource<DynamicType = ()>>(&self, model: (&str, &str), hash: u64) -> bool {
        self.models
            .lock()
            .expect("last applied lock")
            .get(&(model.0.to_owned(), model.1.to_owned()))
            .and_then(|children| children.get(kind_of::<K>()))
            .is_some_and(|written| written.awaiting_cache(hash))
    }

    /// Remembers what an apply of a desired object with `hash` returned.
    pub fn record<K: Resource<DynamicType = ()> + Serialize>(&self, model: (&str, &str), hash: u64, returned: &K) {
        let (Some(uid), Some(version)) = (returned.meta().uid.as_deref().map(text_hash), version_of(returned)) else {
            return;
        };
        self.models
            .lock()
            .expect("last applied lock")
            .entry((model.0.to_owned(), model.1.to_owned()))
            .or_default()
            .insert(
                kind_of::<K>(),
                Written {
                    hash,
                    uid,
                    version: text_hash(&version),
                    confirmed: false,
                    at: Instant::now(),
                },
            );
    }

    /// The child of this kind was deleted (pruned): nothing of it is current any more.
    pub fn forget_child<K: Resource<DynamicType = ()>>(&self, model: (&str, &str)) {
        if let Some(children) = self
            .models
            .lock()
            .expect("last applied lock")
            .get_mut(&(model.0.to_owned(), model.1.to_owned()))
        {
            children.remove(kind_of::<K>());
        }
    }

    /// The model is gone (or its term as leader ended): every child is applied afresh next time.
    pub fn forget(&self, namespace: &str, name: &str) {
        forget_model(&mut self.models.lock().expect("last applied lock"), namespace, name);
    }

    /// The models something is remembered for.
    pub fn models(&self) -> Vec<(String, String)> {
        self.models.lock().expect("last applied lock").keys().cloned().collect()
    }
}

/// The kind's name, as a hash: kinds derived for the caches' lean types (`CachedDeployment`)
/// name theirs in an owned string, which a `&'static str` key could not hold apart.
fn kind_of<K: Resource<DynamicType = ()>>() -> u64 {
    text_hash(&K::kind(&()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
    use serde_json::json;

    use super::*;

    fn deployment(uid: &str, generation: i64, resource_version: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "bert-deployment", "namespace": "ml", "uid": uid,
                         "generation": generation, "resourceVersion": resource_version},
        }))
        .unwrap()
    }

    fn service(uid: &str, resource_version: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "bert-service", "namespace": "ml", "uid": uid, "resourceVersion": resource_version},
        }))
        .unwrap()
    }

    const BERT: (&str, &str) = ("ml", "bert");

    #[test]
    fn a_child_as_it_was_written_is_current_until_the_spec_or_someone_else_changes_it() {
        let last = LastApplied::default();
        let written = deployment("d-1", 3, "100");
        assert!(!last.is_current(BERT, 7, Some(&written)), "nothing written yet");
        last.record(BERT, 7, &written);
        assert!(last.is_current(BERT, 7, Some(&written)));
        // The Deployment controller updates the status: the generation stays.
        assert!(last.is_current(BERT, 7, Some(&deployment("d-1", 3, "140"))));
        assert!(!last.is_current(BERT, 8, Some(&written)), "the desired object changed");
        assert!(
            !last.is_current(BERT, 7, Some(&deployment("d-1", 4, "150"))),
            "someone edited the spec"
        );
        assert!(
            !last.is_current(BERT, 7, Some(&deployment("d-2", 1, "160"))),
            "deleted and created anew"
        );
        assert!(
            !last.is_current::<Deployment>(BERT, 7, None),
            "shown by the cache, then gone"
        );
        assert!(!last.is_current(("ml", "other"), 7, Some(&written)), "per model");
    }

    #[test]
    fn a_write_the_cache_does_not_show_yet_is_current_until_the_cache_shows_it() {
        let last = LastApplied::default();
        last.record(BERT, 7, &deployment("d-1", 1, "100"));
        assert!(last.awaiting_cache::<Deployment>(BERT, 7));
        assert!(last.is_current::<Deployment>(BERT, 7, None), "written a moment ago");
        assert!(
            !last.is_current::<Deployment>(BERT, 8, None),
            "but not for another spec"
        );
        assert!(last.is_current(BERT, 7, Some(&deployment("d-1", 1, "100"))));
        assert!(!last.awaiting_cache::<Deployment>(BERT, 7), "the cache showed it");
        assert!(
            !last.is_current::<Deployment>(BERT, 7, None),
            "so now its absence means it is gone"
        );
    }

    #[test]
    fn kinds_without_a_generation_compare_the_resource_version() {
        let last = LastApplied::default();
        last.record(BERT, 1, &service("s-1", "200"));
        assert!(last.is_current(BERT, 1, Some(&service("s-1", "200"))));
        assert!(!last.is_current(BERT, 1, Some(&service("s-1", "201"))));
        // Kinds are kept apart.
        assert!(!last.is_current(BERT, 1, Some(&deployment("s-1", 1, "200"))));
    }

    #[test]
    fn an_hpa_is_current_through_its_status_syncs_until_its_spec_changes() {
        use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
        let hpa = |resource_version: &str, max_replicas: i32, current: i32| -> HorizontalPodAutoscaler {
            serde_json::from_value(json!({
                "metadata": {"name": "bert-deployment", "namespace": "ml", "uid": "h-1",
                             "resourceVersion": resource_version},
                "spec": {"maxReplicas": max_replicas, "scaleTargetRef": {"kind": "Deployment", "name": "bert-deployment"}},
                "status": {"currentReplicas": current, "desiredReplicas": current},
            }))
            .unwrap()
        };
        let last = LastApplied::default();
        last.record(BERT, 1, &hpa("300", 4, 0));
        assert!(
            last.is_current(BERT, 1, Some(&hpa("307", 4, 2))),
            "the HPA controller's status writes are no drift"
        );
        assert!(
            !last.is_current(BERT, 1, Some(&hpa("308", 8, 2))),
            "someone changed its spec"
        );
    }

    #[test]
    fn forgetting_a_child_or_a_model_means_writing_it_again() {
        let last = LastApplied::default();
        last.record(BERT, 1, &service("s-1", "200"));
        last.record(BERT, 2, &deployment("d-1", 1, "201"));
        last.forget_child::<Service>(BERT);
        assert!(!last.is_current(BERT, 1, Some(&service("s-1", "200"))));
        assert!(last.is_current(BERT, 2, Some(&deployment("d-1", 1, "201"))));
        last.forget("ml", "bert");
        assert!(last.models().is_empty());
    }

    #[test]
    fn equal_objects_hash_equal_and_different_ones_do_not() {
        assert_eq!(desired_hash(&service("s", "1")), desired_hash(&service("s", "1")));
        assert_ne!(desired_hash(&service("s", "1")), desired_hash(&service("t", "1")));
    }

    #[test]
    fn the_caches_lean_types_are_kept_apart_by_their_kinds() {
        use crate::vocabulary::cached::{CachedDeployment, CachedService};
        let deployment: CachedDeployment = serde_json::from_value(json!({
            "metadata": {"name": "bert-deployment", "namespace": "ml", "uid": "d-1", "generation": 1}}))
        .unwrap();
        let service: CachedService = serde_json::from_value(json!({
            "metadata": {"name": "bert-service", "namespace": "ml", "uid": "s-1", "resourceVersion": "9"}}))
        .unwrap();
        let last = LastApplied::default();
        last.record(BERT, 1, &deployment);
        last.record(BERT, 2, &service);
        assert!(
            last.is_current(BERT, 1, Some(&deployment)),
            "the Service's record is not the Deployment's"
        );
        assert!(last.is_current(BERT, 2, Some(&service)));
    }
}
