//! The limit: the children the operator would write for each model, built by the operator's own
//! library, written by a plain parallel client with nothing else to do (no caches, no status, no
//! validation gate, no readiness), as many models at a time as the operator reconciles. What it
//! takes on this machine is the yardstick the operator's times are divided by.

use std::fmt::Debug;

use futures::{StreamExt, stream};
use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use model_operator::{api::ModelDeployment, reconcile::build::Desired};
use serde::{Serialize, de::DeserializeOwned};

use crate::mix;

/// Distinct from the operator's, so the limit's writes are never mistaken for its own.
const FIELD_MANAGER: &str = "bench-limit";

/// Writes every child of `models` (as the API server returned them, so that owner references
/// carry their UIDs and the garbage collector removes the children with them), `at_once`
/// models at a time, each model's children in the operator's order.
pub async fn write_children(client: &Client, models: &[ModelDeployment], at_once: usize) {
    stream::iter(models)
        .for_each_concurrent(at_once, |model| async move {
            let Desired {
                runtime_config,
                resource_claim_template,
                deployment,
                service,
                activator_slice,
                hpa,
                validation_job,
            } = mix::desired(model);
            if let Some(config) = runtime_config {
                apply(client, &config).await;
            }
            if let Some(template) = resource_claim_template {
                apply(client, &template).await;
            }
            if let Some(job) = validation_job {
                apply(client, &job).await;
            }
            apply(client, &deployment).await;
            if let Some(slice) = activator_slice {
                apply(client, &slice).await;
            }
            apply(client, &service).await;
            if let Some(hpa) = hpa {
                apply(client, &hpa).await;
            }
        })
        .await;
}

/// One server-side apply, as the operator writes each child.
async fn apply<K>(client: &Client, object: &K)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    api.patch(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("the limit applying {} {}: {e}", K::kind(&()), object.name_any()));
}
