//! Apply (writes): server-side apply of the desired children, in a fixed order, with one field
//! manager; removal of the optional children the spec no longer wants; the status write.

use std::fmt::Debug;

use k8s_openapi::{
    NamespaceResourceScope,
    api::{autoscaling::v2::HorizontalPodAutoscaler, batch::v1::Job},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::{
    build::Desired,
    fetch::Observed,
    last_applied::{LastApplied, desired_hash},
};
use crate::{
    api::{ModelDeployment, ModelDeploymentStatus},
    vocabulary::{cached::CachedDeployment, names::FIELD_MANAGER},
};

/// What failed while writing to the API server. `reason` is a fixed label for metrics/Events.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name} that the spec no longer wants: {source}")]
    Prune {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {name}: {source}")]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl ApplyError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "ApplyFailed",
            Self::Prune { .. } => "PruneFailed",
            Self::WriteStatus { .. } => "StatusWriteFailed",
        }
    }

    /// A conflict or a vanished object: the next watch event brings a fresher view.
    pub fn is_transient(&self) -> bool {
        matches!(self.source(), kube::Error::Api(status) if status.code == 409 || status.code == 404)
    }

    /// The API server refused the object as it was written (invalid, forbidden, too large):
    /// sending it again cannot help, only a change of the spec (or of RBAC) can.
    pub fn is_refusal(&self) -> bool {
        matches!(self.source(), kube::Error::Api(status) if matches!(status.code, 400 | 403 | 413 | 422))
    }

    /// The kind and name of the object the failure concerns.
    pub fn object(&self) -> (&str, &str) {
        match self {
            Self::Apply { kind, name, .. } | Self::Prune { kind, name, .. } => (kind, name),
            Self::WriteStatus { name, .. } => ("ModelDeployment", name),
        }
    }

    /// What the API server said, or why it could not be asked.
    pub fn api_message(&self) -> String {
        match self.source() {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        }
    }

    fn source(&self) -> &kube::Error {
        match self {
            Self::Apply { source, .. } | Self::Prune { source, .. } | Self::WriteStatus { source, .. } => source,
        }
    }
}

/// What the apply did, for the status and the metrics.
#[derive(Debug, Default)]
pub struct Applied {
    /// The Deployment as the API server returned it, when it was written this time (not when
    /// the cache showed it as last written).
    pub deployment: Option<CachedDeployment>,
    /// The Deployment did not exist before this apply.
    pub created_deployment: bool,
    /// The validation Job did not exist before this apply.
    pub started_validation: bool,
    /// A child written lately is not in the cache yet, so it was not written again: look again
    /// once the cache should show it ([`super::last_applied::UNCONFIRMED_TRUST`]).
    pub awaiting_cache: bool,
}

/// Applies configuration before the pods that mount it (and prunes it after they stop), the
/// validation Job before the Deployment it gates, the Deployment only when `rollout` allows its
/// version, and the HPA only once its target exists; the Service meanwhile. A child the cache
/// holds as this process last wrote it is not written again ([`LastApplied`]).
pub async fn apply(
    client: &Client,
    last: &LastApplied,
    model: (&str, &str),
    desired: &Desired,
    observed: &Observed,
    rollout: bool,
) -> Result<Applied, ApplyError> {
    let Desired {
        runtime_config,
        resource_claim_template,
        deployment,
        service,
        activator_slice,
        hpa,
        validation_job,
    } = desired;
    let mut applied = Applied::default();
    let writer = Writer {
        client,
        last,
        model,
        awaiting_cache: std::sync::atomic::AtomicBool::new(false),
    };

    // The Service depends on nothing else: it is written while the configuration, the Job and
    // the Deployment go one after the other, so a new model waits a round trip less.
    let in_order = async {
        if let Some(config) = runtime_config {
            writer
                .apply_unless_current(config, observed.runtime_config.as_deref())
                .await?;
        }
        if let Some(template) = resource_claim_template {
            // Its spec is immutable; a new request has a new name, so this only ever creates.
            writer
                .apply_unless_current(template, observed.claim_template.as_deref())
                .await?;
        }
        if let Some(job) = validation_job {
            // A finished Job is never re-applied: its template is immutable and its verdict final.
            if observed.validation_job.is_none() {
                applied.started_validation = writer.apply_unless_current(job, None::<&Job>).await?.is_some();
            }
        }
        if rollout {
            // Only when the apply leaves the replicas out: a model asleep at zero keeps them.
            let hpa_decides = deployment.spec.as_ref().is_some_and(|s| s.replicas.is_none());
            if let (Some(hpa), Some(current)) = (hpa, observed.deployment.as_deref())
                && observed.hpa.is_none()
                && hpa_decides
            {
                hand_replicas_to_the_hpa(client, current, hpa).await?;
            }
            applied.created_deployment = observed.deployment.is_none();
            applied.deployment = writer
                .apply_unless_current(deployment, observed.deployment.as_deref())
                .await?;
        }
        // A configuration the spec no longer wants goes only once no Deployment mounts it:
        // after the new template is applied, never while a rollout waits for its validation.
        if rollout || observed.deployment.is_none() {
            if runtime_config.is_none() {
                writer.prune(observed.runtime_config.as_deref()).await?;
            }
            // Claim templates of earlier GPU requests (or of DRA given up): claims already made
            // from them stay with their pods.
            let wanted = resource_claim_template.as_ref().map(ResourceExt::name_any);
            for old in &observed.claim_templates {
                if Some(old.name_any()) != wanted {
                    prune(client, Some(old.as_ref())).await?;
                }
            }
        }
        Ok(())
    };
    // Both of the Service's handovers overlap rather than leave a gap: the activator's slice
    // exists before the Service stops selecting the pods, and the Service selects them again
    // before the slice goes (while both count, the Service balances over both, and the
    // activator forwards what it gets).
    let service_write = async {
        match activator_slice {
            Some(slice) => {
                writer
                    .apply_unless_current(slice, observed.activator_slice.as_deref())
                    .await?;
                writer
                    .apply_unless_current(service, observed.service.as_deref())
                    .await?;
            }
            None => {
                writer
                    .apply_unless_current(service, observed.service.as_deref())
                    .await?;
                writer.prune(observed.activator_slice.as_deref()).await?;
            }
        }
        Ok::<_, ApplyError>(())
    };
    // Both run to the end, so that a Service written beside a refused Deployment is recorded.
    let (in_order, service_written) = futures::join!(in_order, service_write);
    in_order?;
    service_written?;
    let target_exists = applied.deployment.is_some() || observed.deployment.is_some();
    match hpa {
        Some(hpa) if target_exists => {
            writer.apply_unless_current(hpa, observed.hpa.as_deref()).await?;
        }
        Some(_) => {}
        None => writer.prune(observed.hpa.as_deref()).await?,
    }
    applied.awaiting_cache = writer.awaiting_cache.into_inner();
    Ok(applied)
}

/// Writes one model's children and remembers what each write returned.
struct Writer<'a> {
    client: &'a Client,
    last: &'a LastApplied,
    model: (&'a str, &'a str),
    awaiting_cache: std::sync::atomic::AtomicBool,
}

impl Writer<'_> {
    /// Server-side applies `desired` unless `cached` is what the last apply of the same desired
    /// object returned; the object the API server returned when it was written, in the form the
    /// cache keeps (`C`: the same kind as `K`, or a leaner type of that kind).
    async fn apply_unless_current<K, C>(&self, desired: &K, cached: Option<&C>) -> Result<Option<C>, ApplyError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + Debug,
        C: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let hash = desired_hash(desired);
        if self.last.is_current(self.model, hash, cached) {
            if cached.is_none() {
                self.awaiting_cache.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(None);
        }
        let written = server_side_apply(self.client, desired).await?;
        self.last.record(self.model, hash, &written);
        Ok(Some(written))
    }

    async fn prune<K>(&self, existing: Option<&K>) -> Result<(), ApplyError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
    {
        prune(self.client, existing).await?;
        self.last.forget_child::<K>(self.model);
        Ok(())
    }
}

/// The field manager that holds `spec.replicas` from the moment an HPA is asked for until the
/// HPA scales: the operator's own apply leaves the field out then, and would otherwise remove
/// it, dropping the Deployment to one replica until the HPA's first sync.
pub const REPLICAS_HANDOVER_MANAGER: &str = "model-operator-replicas-handover";

/// `autoscale` turned on for a serving Deployment: before the operator's apply stops naming
/// `spec.replicas`, another field manager takes it, at no fewer replicas than the Deployment
/// wants now (or the HPA's minimum), so that serving capacity never drops for the handover.
async fn hand_replicas_to_the_hpa(
    client: &Client,
    current: &CachedDeployment,
    hpa: &HorizontalPodAutoscaler,
) -> Result<(), ApplyError> {
    let now = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let minimum = hpa.spec.as_ref().and_then(|s| s.min_replicas).unwrap_or(1);
    let name = current.name_any();
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": current.namespace()},
        "spec": {"replicas": now.max(minimum)},
    });
    let api: Api<CachedDeployment> = Api::namespaced(client.clone(), &current.namespace().unwrap_or_default());
    api.patch(
        &name,
        &PatchParams::apply(REPLICAS_HANDOVER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| ApplyError::Apply {
        kind: "Deployment".to_owned(),
        name,
        source,
    })
}

async fn server_side_apply<K, C>(client: &Client, object: &K) -> Result<C, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + Debug,
    C: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let name = object.name_any();
    let api: Api<C> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .map_err(|source| ApplyError::Apply {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })
}

/// Deletes a child the spec stopped wanting (an HPA after `autoscale: false`, TorchServe's
/// configuration after a runtime change). Garbage collection would only remove it with the parent.
async fn prune<K>(client: &Client, existing: Option<&K>) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let Some(object) = existing else {
        return Ok(());
    };
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ApplyError::Prune {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        }),
    }
}

/// Writes the whole status with server-side apply on the status subresource; returns the
/// object as stored.
pub async fn write_status(
    client: &Client,
    model: &ModelDeployment,
    status: &ModelDeploymentStatus,
) -> Result<ModelDeployment, ApplyError> {
    let name = model.name_any();
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &model.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": ModelDeployment::api_version(&()),
        "kind": ModelDeployment::kind(&()),
        "status": status,
    });
    api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| ApplyError::WriteStatus { name, source })
}
