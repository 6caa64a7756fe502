//! Which ModelDeployments a change to something else concerns: a serving pod its model, a freed
//! GPU or a node change the models short of GPUs, a new leadership every model.

use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use tokio::sync::watch;

use crate::{
    api::{ModelDeployment, conditions},
    vocabulary::{
        names::{COMPONENT_SERVER, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY},
        pods::{is_finished, is_terminating, requests_gpus},
    },
};

/// A serving pod changes its ModelDeployment's status; a GPU pod that finishes or goes away
/// frees GPUs that ModelDeployments short of them may now use.
pub fn models_affected_by_pod(pod: &Pod, models: &Store<ModelDeployment>) -> Vec<ObjectRef<ModelDeployment>> {
    let labels = pod.labels();
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(LABEL_COMPONENT).map(String::as_str) == Some(COMPONENT_SERVER)
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
    if requests_gpus(pod) && (is_terminating(pod) || is_finished(pod)) {
        models_short_of_gpus(models)
    } else {
        Vec::new()
    }
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

/// One item each time `leader` turns true: the standby skipped every event, so becoming the
/// leader re-reconciles everything.
pub fn leadership_gained(leader: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(leader, |mut leader| async move {
        loop {
            leader.changed().await.ok()?;
            if *leader.borrow_and_update() {
                return Some(((), leader));
            }
        }
    })
}
