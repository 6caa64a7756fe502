//! Which ModelDeployments a change to something else concerns: a serving pod its model, a freed
//! GPU or a node change the models short of GPUs, the activator's replicas the models it may
//! stand in for, a new leadership every model.

use crate::{
    api::{ModelDeployment, conditions},
    vocabulary::{
        Leadership,
        cached::CachedPod,
        pods::{is_finished, is_terminating, requests_gpus, served_model},
    },
};
use k8s_openapi::api::{core::v1::Node, resource::v1::ResourceClaim};
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

/// A serving pod changes its ModelDeployment's status; a GPU pod that finishes or goes away
/// frees GPUs that ModelDeployments short of them may now use.
pub fn models_affected_by_pod(pod: &CachedPod, models: &Store<ModelDeployment>) -> Vec<ObjectRef<ModelDeployment>> {
    if let Some((namespace, name)) = served_model(pod) {
        // The pod cache spans every namespace; only models this operator watches are its business.
        let model = ObjectRef::new(&name).within(&namespace);
        return if models.get(&model).is_some() {
            vec![model]
        } else {
            Vec::new()
        };
    }
    if requests_gpus(pod) && (is_terminating(pod) || is_finished(pod)) {
        models_short_of_gpus(models)
    } else {
        Vec::new()
    }
}

/// A node that changes (or goes away) concerns the models with pods on it, whose capacity and
/// readiness it changes, and the models short of GPUs, which it may let in.
pub fn models_affected_by_node(
    node: &Node,
    pods: &Store<CachedPod>,
    models: &Store<ModelDeployment>,
) -> Vec<ObjectRef<ModelDeployment>> {
    let node_name = node.name_any();
    let mut affected = models_short_of_gpus(models);
    for pod in pods.state() {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str()) {
            affected.extend(models_affected_by_pod(&pod, models));
        }
    }
    affected.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    affected.dedup();
    affected
}

/// A ResourceClaim made for a serving pod concerns that pod's model (the status names the
/// devices it got); any claim allocated or freed changes the DRA capacity others see.
pub fn models_affected_by_claim(
    claim: &ResourceClaim,
    pods: &Store<CachedPod>,
    models: &Store<ModelDeployment>,
) -> Vec<ObjectRef<ModelDeployment>> {
    let mut affected = models_short_of_gpus(models);
    let namespace = claim.namespace().unwrap_or_default();
    for owner in claim.owner_references().iter().filter(|o| o.kind == "Pod") {
        if let Some(pod) = pods.get(&ObjectRef::new(&owner.name).within(&namespace)) {
            affected.extend(models_affected_by_pod(&pod, models));
        }
    }
    affected.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    affected.dedup();
    affected
}

/// A ResourceSlice published, changed or withdrawn concerns every model with GPUs: where
/// `allocation: auto` lands and how many devices are free both follow the slices.
pub fn models_with_gpus(models: &Store<ModelDeployment>) -> Vec<ObjectRef<ModelDeployment>> {
    models
        .state()
        .iter()
        .filter(|model| model.spec.gpu.is_some())
        .map(|model| ObjectRef::from_obj(model.as_ref()))
        .collect()
}

/// The activator's replicas changed (its Service's EndpointSlices): the models whose Service
/// may point at it now, those with no replica that answers (at zero, or waking), follow.
pub fn models_without_answering_replicas(models: &Store<ModelDeployment>) -> Vec<ObjectRef<ModelDeployment>> {
    models
        .state()
        .iter()
        .filter(|model| {
            model
                .status
                .as_ref()
                .is_none_or(|status| status.model_ready_replicas.unwrap_or(0) == 0)
        })
        .map(|model| ObjectRef::from_obj(model.as_ref()))
        .collect()
}

/// ModelDeployments whose last status said the GPUs are missing: a node change may fix that.
pub fn models_short_of_gpus(models: &Store<ModelDeployment>) -> Vec<ObjectRef<ModelDeployment>> {
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

/// One item each time a term starts (not when one is renewed): the standby skipped every
/// event, so becoming the leader re-reconciles everything.
pub fn leadership_gained(leadership: Leadership) -> impl futures::Stream<Item = ()> + Send + 'static {
    let terms = leadership.changes();
    let previous = *terms.borrow();
    futures::stream::unfold((terms, previous), |(mut terms, mut previous)| async move {
        loop {
            terms.changed().await.ok()?;
            let term = *terms.borrow_and_update();
            let now = std::time::Instant::now();
            let started = term.is_leading_at(now) && !previous.is_leading_at(now);
            previous = term;
            if started {
                return Some(((), (terms, previous)));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    use super::*;
    use crate::vocabulary::names::{COMPONENT_SERVER, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY};

    fn store_of<K>(objects: Vec<K>) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    fn model(name: &str, short_of_gpus: bool) -> ModelDeployment {
        let status = if short_of_gpus { "False" } else { "True" };
        serde_json::from_value(json!({
            "apiVersion": "mlops.sathvik.dev/v1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {"modelURI": "s3://models/m", "runtime": "triton"},
            "status": {"conditions": [{"type": conditions::GPU_CAPACITY, "status": status, "reason": "r",
                                       "message": "m", "lastTransitionTime": "2026-12-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn serving_pod(model: &str, node: &str) -> CachedPod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{model}-pod"), "namespace": "ml", "labels": {
                LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT_SERVER, LABEL_NAME: model}},
            "spec": {"nodeName": node, "containers": []}
        }))
        .unwrap()
    }

    #[test]
    fn a_node_change_concerns_the_models_on_it_and_those_short_of_gpus() {
        let models = store_of(vec![
            model("on-the-node", false),
            model("elsewhere", false),
            model("waiting", true),
        ]);
        let pods = store_of(vec![
            serving_pod("on-the-node", "gpu-0"),
            serving_pod("elsewhere", "gpu-1"),
        ]);
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "gpu-0"}})).unwrap();
        let names: Vec<String> = models_affected_by_node(&node, &pods, &models)
            .into_iter()
            .map(|model| model.name)
            .collect();
        assert_eq!(names, ["on-the-node", "waiting"]);
    }
}
