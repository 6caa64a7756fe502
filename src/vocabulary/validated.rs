//! `Validated`: one ModelDeployment resolved once (defaults filled, URI parsed, GPU placement and
//! scaling decided), the view every builder, probe and status computation reads instead of the
//! raw spec. `crate::reconcile::validate` makes it.

use std::{collections::BTreeMap, fmt, time::Duration};

use k8s_openapi::{
    api::core::v1::{Affinity, EnvFromSource, EnvVar, ResourceRequirements, Toleration},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{gpu::GpuPlacement, model_uri::ModelUri, runtime::Runtime};

/// Everything the builders need, resolved once.
#[derive(Clone)]
pub struct Validated {
    pub name: String,
    pub namespace: String,
    /// Controller reference to the ModelDeployment; absent for objects never stored (render).
    pub owner: Option<OwnerReference>,
    pub runtime: Runtime,
    pub model_name: String,
    pub version: String,
    pub image: String,
    pub fetcher_image: String,
    /// `modelURI` as written, checksum fragment included (the fetcher verifies it). It may
    /// carry credentials: only the fetch container gets it, everything else `source`'s redacted
    /// display.
    pub model_uri: String,
    pub source: ModelUri,
    /// The model volume's size limit, as the emptyDir takes it and in bytes for the fetch;
    /// `None` for a claim, which is mounted as it is.
    pub size_limit: Option<SizeLimit>,
    /// The Secret with the model store's credentials, for the fetch (and the runtime if asked).
    pub credentials: Option<CredentialsPlan>,
    pub layout: ModelLayout,
    /// The user's CPU and memory; the GPU resource is added from `gpu`.
    pub resources: ResourceRequirements,
    pub gpu: Option<GpuPlacement>,
    pub scaling: Scaling,
    /// Not from the spec: the reconcile sets it for a model it scaled to zero for being idle
    /// (`status.idle`), so that the Deployment wants no replica until a request wakes it.
    pub asleep: bool,
    /// Not from the spec either: while the model has no replica that answers and an activator
    /// is installed, the reconcile sets the activator's addresses, and the Service's traffic
    /// goes to them instead of to the pods.
    pub activator: Option<ActivatorEndpoints>,
    pub validation: Option<ValidationPlan>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Option<Affinity>,
    pub env: Vec<EnvVar>,
    pub env_from: Vec<EnvFromSource>,
    pub runtime_args: Vec<String>,
}

/// The activator's ready addresses, from its Service's EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivatorEndpoints {
    /// `IPv4` or `IPv6`, as an EndpointSlice's `addressType` says.
    pub address_type: String,
    pub addresses: Vec<String>,
}

/// How much the fetched model may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeLimit {
    /// As written (`100Gi`), for the emptyDir's `sizeLimit`.
    pub quantity: String,
    pub bytes: u64,
}

/// The Secret the model fetch reads credentials from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsPlan {
    pub secret_name: String,
    pub expose_to_runtime: bool,
}

impl fmt::Debug for Validated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validated")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("runtime", &self.runtime)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Where the fetcher writes the artifact and where the runtime reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLayout {
    /// Directory the fetcher writes into.
    pub fetch_dir: String,
    /// Name the fetcher gives a single-file artifact, when the runtime needs a fixed one.
    pub file_name: Option<String>,
    /// The model file or directory the runtime is pointed at (`MODEL_PATH`).
    pub model_path: String,
}

/// How many replicas serve, and who decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scaling {
    Fixed { replicas: i32 },
    Autoscaled(AutoscalingPlan),
}

/// The HorizontalPodAutoscaler's bounds, metric and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoscalingPlan {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub metric: ScalingMetric,
    pub target: i32,
    pub scale_down_stabilization_seconds: Option<i32>,
    /// With `minReplicas: 0`: how long without a request before the model goes to zero.
    pub scale_to_zero_after: Option<Duration>,
}

impl Scaling {
    /// How long the model may be idle before it goes to zero; `None` when it never does.
    pub fn scale_to_zero_after(&self) -> Option<Duration> {
        match self {
            Self::Autoscaled(plan) => plan.scale_to_zero_after,
            Self::Fixed { .. } => None,
        }
    }
}

/// A metric the HorizontalPodAutoscaler can scale on.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ScalingMetric {
    /// Average GPU utilisation (percent) of the GPUs each pod holds.
    GpuUtilization,
    /// Average CPU utilisation (percent of the CPU request).
    Cpu,
    /// Average time requests wait in the runtime's queue (microseconds).
    InferenceQueue,
}

/// The validation Job for the spec's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationPlan {
    pub script: String,
    /// `crate::vocabulary::names::validation_job_name` of the spec.
    pub job_name: String,
}
