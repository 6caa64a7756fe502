//! Apply (writes): server-side apply of the desired children, in a fixed order, with one field
//! manager; removal of the optional children the spec no longer wants; the status write.

use std::fmt::Debug;

use k8s_openapi::{NamespaceResourceScope, api::apps::v1::Deployment};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::{build::Desired, fetch::Observed};
use crate::{
    api::{ModelDeployment, ModelDeploymentStatus},
    vocabulary::names::FIELD_MANAGER,
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
        let source = match self {
            Self::Apply { source, .. } | Self::Prune { source, .. } | Self::WriteStatus { source, .. } => source,
        };
        matches!(source, kube::Error::Api(status) if status.code == 409 || status.code == 404)
    }
}

/// What the apply did, for the status and the metrics.
#[derive(Debug, Default)]
pub struct Applied {
    /// The Deployment as the API server returned it, when it was applied this time.
    pub deployment: Option<Deployment>,
    /// The Deployment did not exist before this apply.
    pub created_deployment: bool,
    /// The validation Job did not exist before this apply.
    pub started_validation: bool,
}

/// Applies configuration before the pods that mount it, the validation Job before the
/// Deployment it gates, the Deployment only when `rollout` allows its version, and the HPA only
/// once its target exists.
pub async fn apply(
    client: &Client,
    desired: &Desired,
    observed: &Observed,
    rollout: bool,
) -> Result<Applied, ApplyError> {
    let Desired {
        runtime_config,
        deployment,
        service,
        hpa,
        validation_job,
    } = desired;
    let mut applied = Applied::default();

    match runtime_config {
        Some(config) => {
            server_side_apply(client, config).await?;
        }
        None => prune(client, observed.runtime_config.as_deref()).await?,
    }
    if let Some(job) = validation_job {
        // A finished Job is never re-applied: its template is immutable and its verdict final.
        if observed.validation_job.is_none() {
            server_side_apply(client, job).await?;
            applied.started_validation = true;
        }
    }
    if rollout {
        applied.created_deployment = observed.deployment.is_none();
        applied.deployment = Some(server_side_apply(client, deployment).await?);
    }
    server_side_apply(client, service).await?;
    let target_exists = applied.deployment.is_some() || observed.deployment.is_some();
    match hpa {
        Some(hpa) if target_exists => {
            server_side_apply(client, hpa).await?;
        }
        Some(_) => {}
        None => prune(client, observed.hpa.as_deref()).await?,
    }
    Ok(applied)
}

async fn server_side_apply<K>(client: &Client, object: &K) -> Result<K, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
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

/// Writes the whole status with server-side apply on the status subresource.
pub async fn write_status(
    client: &Client,
    model: &ModelDeployment,
    status: &ModelDeploymentStatus,
) -> Result<(), ApplyError> {
    let name = model.name_any();
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &model.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": ModelDeployment::api_version(&()),
        "kind": ModelDeployment::kind(&()),
        "status": status,
    });
    api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map(|_| ())
        .map_err(|source| ApplyError::WriteStatus { name, source })
}
