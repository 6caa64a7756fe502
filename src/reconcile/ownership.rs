//! Ownership (reads): before anything is written, every child the spec wants must either be
//! this model's already or not exist. The watch caches only hold objects labelled as the
//! operator's, so a child missing from them is looked up by name: an object found there that
//! this model does not control (a user's Service `payments-service`, another controller's HPA)
//! is never written, adopted or deleted, and the model says whose it is.
//!
//! The read happens only for children the caches do not show as this model's: a new model, a
//! child deleted by hand, or a name someone else holds. A model at rest costs none.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    build::Desired,
    fetch::Observed,
    last_applied::{LastApplied, desired_hash},
};

/// An object that holds the name of one of this model's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignObject {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Who holds it, in words: its controller, or who manages it.
    pub holder: String,
}

impl ForeignObject {
    pub fn describe(&self) -> String {
        format!(
            "{} {}/{} already exists and belongs to {}",
            self.kind, self.namespace, self.name, self.holder
        )
    }
}

/// Why the names could not be checked.
#[derive(Debug, thiserror::Error)]
#[error("reading {kind} {name} to see whether its name is free: {source}")]
pub struct OwnershipError {
    pub kind: String,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// The objects holding the names of `desired` children that are not this model's, in the
/// order the children are applied. `owner_uid` is the model's UID; `rollout` says whether this
/// reconcile may write the Deployment ([`super::apply::apply`]).
///
/// Only the names this reconcile may write are read, and all of them when it starts the
/// validation Job, so that a taken name is reported before the Job runs. Reading the
/// Deployment's name on every reconcile of a validation in progress cost about one and a half
/// reads per validated model in a burst, for a name nothing was going to write.
pub async fn foreign_objects(
    client: &Client,
    last: &LastApplied,
    model: (&str, &str),
    desired: &Desired,
    observed: &Observed,
    owner_uid: &str,
    rollout: bool,
) -> Result<Vec<ForeignObject>, OwnershipError> {
    let Desired {
        runtime_config,
        resource_claim_template,
        deployment,
        service,
        activator_slice,
        hpa,
        validation_job,
    } = desired;
    let starts_validation = validation_job.is_some() && observed.validation_job.is_none();
    let writes_deployment = rollout || starts_validation;
    // The HPA is written once its target exists ([`super::apply::apply`]).
    let writes_hpa = writes_deployment || observed.deployment.is_some();
    // The reads are independent: sent at once, a new model waits for one round trip, not seven.
    let (config, template, job, deployment, service, slice, hpa) = futures::try_join!(
        optional(
            runtime_config.as_ref().filter(|_| observed.runtime_config.is_none()),
            |config| { unless_written_lately(client, last, model, config, owner_uid) }
        ),
        optional(
            resource_claim_template
                .as_ref()
                .filter(|_| observed.claim_template.is_none()),
            |template| { unless_written_lately(client, last, model, template, owner_uid) }
        ),
        optional(
            validation_job.as_ref().filter(|_| observed.validation_job.is_none()),
            |job| { unless_written_lately(client, last, model, job, owner_uid) }
        ),
        optional(
            Some(deployment).filter(|_| writes_deployment && observed.deployment.is_none()),
            |deployment| { unless_written_lately(client, last, model, deployment, owner_uid) }
        ),
        optional(Some(service).filter(|_| observed.service.is_none()), |service| {
            unless_written_lately(client, last, model, service, owner_uid)
        }),
        optional(
            activator_slice.as_ref().filter(|_| observed.activator_slice.is_none()),
            |slice| { unless_written_lately(client, last, model, slice, owner_uid) }
        ),
        optional(hpa.as_ref().filter(|_| writes_hpa && observed.hpa.is_none()), |hpa| {
            unless_written_lately(client, last, model, hpa, owner_uid)
        }),
    )?;
    Ok([config, template, job, deployment, service, slice, hpa]
        .into_iter()
        .flatten()
        .collect())
}

/// `check` of the child when there is one to check.
async fn optional<'a, K, F>(
    child: Option<&'a K>,
    check: impl FnOnce(&'a K) -> F,
) -> Result<Option<ForeignObject>, OwnershipError>
where
    F: std::future::Future<Output = Result<Option<ForeignObject>, OwnershipError>>,
{
    match child {
        Some(child) => check(child).await,
        None => Ok(None),
    }
}

/// As [`holder_of`], except for a child this process has just written under this name: it is
/// the model's whether or not the cache shows it yet, so the reconciles a burst of events brings
/// meanwhile read nothing.
async fn unless_written_lately<K>(
    client: &Client,
    last: &LastApplied,
    model: (&str, &str),
    wanted: &K,
    owner_uid: &str,
) -> Result<Option<ForeignObject>, OwnershipError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Serialize + Clone + Debug,
{
    if last.awaiting_cache::<K>(model, desired_hash(wanted)) {
        return Ok(None);
    }
    holder_of(client, wanted, owner_uid).await
}

/// The object of `wanted`'s name, if one exists that `owner_uid` does not control.
async fn holder_of<K>(client: &Client, wanted: &K, owner_uid: &str) -> Result<Option<ForeignObject>, OwnershipError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let namespace = wanted.namespace().unwrap_or_default();
    let name = wanted.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let existing = api.get_opt(&name).await.map_err(|source| OwnershipError {
        kind: K::kind(&()).into_owned(),
        name: name.clone(),
        source,
    })?;
    Ok(existing
        .filter(|object| !controlled_by(object.meta(), owner_uid))
        .map(|object| ForeignObject {
            kind: K::kind(&()).into_owned(),
            namespace,
            name,
            holder: holder(object.meta()),
        }))
}

fn controlled_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Its controller (`Deployment payments`), else the field managers that wrote it, else that
/// nothing claims it.
pub fn holder(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    if let Some(controller) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
    {
        return format!("its controller {} {}", controller.kind, controller.name);
    }
    let mut managers: Vec<&str> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref())
        .collect();
    managers.dedup();
    if managers.is_empty() {
        "no controller".to_owned()
    } else {
        format!("no controller; written by {}", managers.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    use super::*;

    fn meta(value: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_holder_is_named_by_its_controller_or_its_writers() {
        let owned = meta(json!({"name": "payments-service", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "payments", "uid": "u-1", "controller": true}]}));
        assert_eq!(holder(&owned), "its controller Deployment payments");
        assert!(controlled_by(&owned, "u-1") && !controlled_by(&owned, "u-2"));
        let applied = meta(json!({"name": "payments-service", "managedFields": [
            {"manager": "kubectl-client-side-apply", "operation": "Update"},
            {"manager": "kubectl-client-side-apply", "operation": "Update"},
            {"manager": "helm", "operation": "Update"}]}));
        assert_eq!(
            holder(&applied),
            "no controller; written by kubectl-client-side-apply, helm"
        );
        assert_eq!(holder(&meta(json!({"name": "x"}))), "no controller");
        let foreign = ForeignObject {
            kind: "Service".into(),
            namespace: "shop".into(),
            name: "payments-service".into(),
            holder: holder(&owned),
        };
        assert_eq!(
            foreign.describe(),
            "Service shop/payments-service already exists and belongs to its controller Deployment payments"
        );
    }
}
