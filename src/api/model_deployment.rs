//! `ModelDeployment`: one model, served by one runtime, on the GPUs it asks for.
//!
//! Field names and meanings of the original Go project are kept (`modelURI`, `runtime`,
//! `resources`, `validateScript`, `autoscale`, `version`, `runtimeImage`) so its YAML applies
//! unchanged; everything else is an optional extension. Doc comments here become
//! `kubectl explain` text, so they are written for users.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::{
    api::core::v1::{Affinity, EnvFromSource, EnvVar, ResourceRequirements, Toleration},
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{Condition, Time},
    },
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// The spec's enumerations are shared words (`crate::vocabulary`), defined there so that every
// layer can use them without importing the API.
pub use crate::vocabulary::{GpuAllocation, GpuSharing, Runtime, ScalingMetric};

/// Desired state of a served model.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mlops.sathvik.dev",
    version = "v1",
    kind = "ModelDeployment",
    plural = "modeldeployments",
    shortname = "md",
    category = "ml",
    namespaced,
    status = "ModelDeploymentStatus",
    // `kubectl scale md/NAME`, and autoscalers that target any scalable object (KEDA, an HPA of
    // the user's own), write `spec.replicas`; the selector finds the serving pods for their metrics.
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Runtime","type":"string","jsonPath":".spec.runtime"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.ready","description":"Replicas whose model answers, of those wanted"}"#,
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".spec.gpu.count","description":"GPUs per replica"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Idle","type":"date","jsonPath":".status.idle.since","priority":1,"description":"Since when the model has served no request (with autoscaling.scaleToZeroAfter)"}"#,
    // Children are named NAME-service and NAME-validate-<8 hex>; Job pods carry the Job's
    // name as a label value, which is limited to 63 characters.
    validation = Rule::new("size(self.metadata.name) <= 45").message("metadata.name must be at most 45 characters, so that the names of the Service and validation Job derived from it stay valid"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be lowercase letters, digits and '-', start with a letter and end with a letter or digit (no dots): it names the Service NAME-service, a DNS label"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.autoscaling) || !has(self.autoscaling.metric) || self.autoscaling.metric != 'gpu-utilization' || has(self.gpu)").message("autoscaling.metric gpu-utilization needs spec.gpu: a model without GPUs has no GPU utilisation to scale on").field_path(".autoscaling.metric"),
    validation = Rule::new("!has(self.autoscaling) || !has(self.autoscaling.metric) || self.autoscaling.metric != 'gpu-utilization' || !has(self.gpu) || !has(self.gpu.sharing) || self.gpu.sharing != 'mig'").message("autoscaling.metric gpu-utilization cannot be measured on a MIG slice (NVML reports none); use inference-queue or cpu").field_path(".autoscaling.metric"),
    validation = Rule::new("!has(self.gpu) || !has(self.resources) || ((!has(self.resources.limits) || !self.resources.limits.exists(k, k.startsWith('nvidia.com/'))) && (!has(self.resources.requests) || !self.resources.requests.exists(k, k.startsWith('nvidia.com/'))))").message("resources must not name nvidia.com/* resources when gpu is set: gpu.count sets them").field_path(".resources"),
    validation = Rule::new("!has(self.autoscaling) || !has(self.autoscaling.target) || (has(self.autoscaling.metric) && self.autoscaling.metric == 'inference-queue') || self.autoscaling.target <= 100").message("autoscaling.target is a percentage for gpu-utilization and cpu, so it must be between 1 and 100").field_path(".autoscaling.target"),
    validation = Rule::new("!self.autoscale || ((has(self.autoscaling) && has(self.autoscaling.metric)) ? self.autoscaling.metric != 'cpu' : has(self.gpu)) || (has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)").message("autoscaling on cpu needs resources.requests.cpu: the HPA scales on the share of the request in use").field_path(".resources.requests"),
    validation = Rule::new("self.runtime != 'triton' || !has(self.runtimeArgs) || !self.runtimeArgs.exists(a, a.matches('^--(model-repository|model-store|http-port|grpc-port|metrics-port|allow-http|allow-grpc|allow-metrics)(=.*)?$'))").message("runtimeArgs must not set --model-repository, --http-port, --grpc-port, --metrics-port or turn an endpoint off: the operator sets them, and its Service, probes and metrics rely on them").field_path(".runtimeArgs"),
    validation = Rule::new("self.runtime != 'torchserve' || !has(self.runtimeArgs) || !self.runtimeArgs.exists(a, a.matches('^--(model-store|ts-config|models|stop)(=.*)?$'))").message("runtimeArgs must not set --model-store, --ts-config, --models or --stop: the operator sets the model store, the configuration (addresses, token auth) and the model").field_path(".runtimeArgs"),
)]
#[schemars(transform = crate::api::pod_fields::bound_pod_fields)]
pub struct ModelDeploymentSpec {
    /// Where the model artifact lives: `https://…`, `http://…`, `s3://bucket/key`,
    /// `gs://bucket/key` or `pvc://claim/path`. A key ending in `/` is a prefix whose objects
    /// are all fetched; `.tar`, `.tar.gz` and `.tgz` archives are unpacked. An optional
    /// `#sha256=<hex>` suffix is verified after download. For Triton this is a model directory
    /// (config.pbtxt and numbered versions); for TorchServe a `.mar` archive.
    #[serde(rename = "modelURI")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.matches('^(https?|s3|gs|pvc)://[^/]+')").message("modelURI must be an http://, https://, s3://, gs:// or pvc:// URI with a host, bucket or claim"),
        validation = Rule::new("!self.startsWith('pvc://') || self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$')").message("a pvc:// modelURI must name a PersistentVolumeClaim (a DNS label) before the path: pvc://claim/path"),
    )]
    pub model_uri: String,

    /// Inference server that serves the model: `triton`, `torchserve` or `fastapi-pytorch`.
    pub runtime: Runtime,

    /// CPU and memory for the runtime container, as in a Pod. GPUs are asked for with
    /// `gpu`, not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Script run against the fetched model before a version is served, in the runtime image,
    /// with `MODEL_URI` and `MODEL_PATH` set. A relative path is looked up in the model
    /// directory first, then in the image. `.py` runs with python3, `.sh` with sh. Only when
    /// it succeeds is the Deployment moved to the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub validate_script: Option<String>,

    /// Scale replicas with a HorizontalPodAutoscaler, bounded and driven by `autoscaling`.
    #[serde(default)]
    pub autoscale: bool,

    /// Version label of the model. A change rolls the Deployment out (after validation, when
    /// `validateScript` is set); `status.version` is the version now serving.
    #[serde(default = "default_version")]
    #[schemars(length(min = 1, max = 63), pattern(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"))]
    pub version: String,

    /// Image that replaces the runtime's pinned default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), pattern(r"^\S+$"))]
    pub runtime_image: Option<String>,

    /// Name of the model inside the runtime (Triton repository entry, TorchServe model name).
    /// Defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))]
    pub model_name: Option<String>,

    /// Replicas when `autoscale` is false (with it, the HorizontalPodAutoscaler decides). Also
    /// written by `kubectl scale md/NAME` through the `/scale` subresource.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// GPUs each replica needs and where they may come from. Without it the model runs on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,

    /// Bounds, metric and target of the HorizontalPodAutoscaler when `autoscale` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Node labels the pods must match, merged with the GPU placement's own affinity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Extra tolerations; the `nvidia.com/gpu` NoSchedule toleration is added for GPU models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Pod affinity and anti-affinity, and node affinity terms combined with the GPU placement's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Environment of the runtime and model-fetch containers (and the validation script). A
    /// variable named here replaces the operator's variable of the same name. Take secrets from
    /// a Secret with `valueFrom.secretKeyRef`, never as a plain `value`: the spec is readable by
    /// whoever may read ModelDeployments. Object-store credentials belong in `modelCredentials`,
    /// which only the model fetch sees.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Whole ConfigMaps or Secrets as the runtime container's environment (`secretRef`,
    /// `configMapRef`), as in a Pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,

    /// A Secret with the model store's credentials, given to the model fetch alone (the init
    /// container, and the validation Job's fetch), not to the runtime unless
    /// `exposeToRuntime` says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_credentials: Option<ModelCredentials>,

    /// The most the fetched model may take on the node's disk: the size limit of the model
    /// volume, which the fetch also enforces while it downloads and unpacks. Default: the
    /// runtime's `resources.limits.ephemeral-storage` when set, else 100Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))").message("modelSizeLimit must be a positive quantity of bytes, such as 20Gi"))]
    pub model_size_limit: Option<Quantity>,

    /// Arguments appended to the runtime's command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_args: Vec<String>,
}

fn default_version() -> String {
    "v1".to_owned()
}

fn default_replicas() -> i32 {
    1
}

/// Where the model fetch finds the model store's credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelCredentials {
    /// A Secret in the model's namespace. Its keys become the fetch's environment (for S3,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
    /// `AWS_ENDPOINT`), and it is mounted at `/var/run/secrets/model-credentials`: a key
    /// `service-account.json` is the GCS service account, and a key `uri` is the URI to
    /// download (a presigned or `user:password@` URL of the object `modelURI` names), so that
    /// the credentials never appear in the ModelDeployment or the pod spec.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,

    /// Give the Secret to the runtime container as well (for a runtime that reads the store
    /// itself). Off by default: a model is code, and the runtime runs it.
    #[serde(default)]
    pub expose_to_runtime: bool,
}

/// GPUs for each replica.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.sharing != 'mig' || has(self.migProfile)").message("migProfile is required when sharing is mig, e.g. 1g.10gb").field_path(".migProfile"),
    validation = Rule::new("!has(self.migProfile) || self.sharing == 'mig'").message("migProfile may only be set when sharing is mig").field_path(".migProfile"),
    validation = Rule::new("self.allocation != 'device-plugin' || (!has(self.architectures) && !has(self.minComputeCapability))").message("architectures and minComputeCapability select DRA devices; the device plugin cannot honour them (use allocation dra or auto)").field_path(".allocation"),
    validation = Rule::new("self.allocation != 'dra' || self.sharing != 'time-sliced'").message("time-sliced sharing is the device plugin's; DRA gives whole GPUs or MIG devices (use allocation device-plugin or auto)").field_path(".sharing"),
)]
pub struct GpuSpec {
    /// GPUs (or MIG slices) per replica: the `nvidia.com/gpu` (or `nvidia.com/mig-<profile>`)
    /// limit.
    #[serde(default = "default_gpu_count")]
    #[schemars(range(min = 1, max = 64))]
    pub count: i32,

    /// Acceptable GPU products, as the `nvidia.com/gpu.product` node label spells them (e.g.
    /// `NVIDIA-A100-SXM4-80GB`, `Tesla-T4`). Time-sliced (`-SHARED`) and MIG (`-MIG-<profile>`)
    /// variants of a product are matched as well when `sharing` asks for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 63), pattern(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"))
    )]
    pub products: Vec<String>,

    /// Least memory per GPU in MiB, matched against the `nvidia.com/gpu.memory` node label
    /// (for MIG, the slice's `nvidia.com/mig-<profile>.memory`).
    #[serde(default, rename = "minMemoryMiB", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_memory_mib: Option<i64>,

    /// How the GPU is shared: `exclusive` (whole GPUs), `time-sliced` (device-plugin replicas)
    /// or `mig` (a Multi-Instance GPU slice; needs `migProfile`).
    #[serde(default)]
    pub sharing: GpuSharing,

    /// MIG profile such as `1g.10gb`; the pod then asks for `nvidia.com/mig-<profile>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[1-7]g\.[0-9]+gb$"))]
    pub mig_profile: Option<String>,

    /// How the GPUs are requested: `auto` (Dynamic Resource Allocation where the cluster's
    /// ResourceSlices publish GPUs that match, the device plugin otherwise; `status.gpuAllocation`
    /// says which), `device-plugin` (`nvidia.com/gpu` limits) or `dra` (a ResourceClaim per
    /// replica, NVIDIA's DRA driver's DeviceClasses `gpu.nvidia.com` / `mig.nvidia.com`).
    #[serde(default)]
    pub allocation: GpuAllocation,

    /// DRA only: acceptable GPU architectures as the DRA driver names them (`Ampere`, `Hopper`,
    /// `Blackwell`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        inner(length(min = 1, max = 32), pattern(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$"))
    )]
    pub architectures: Vec<String>,

    /// DRA only: least CUDA compute capability, `major.minor` (e.g. `8.0`), matched against the
    /// driver's `cudaComputeCapability`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]{1,2}\.[0-9]{1,2}$"))]
    pub min_compute_capability: Option<String>,
}

fn default_gpu_count() -> i32 {
    1
}

/// The HorizontalPodAutoscaler's bounds and what it scales on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not be greater than maxReplicas").field_path(".minReplicas"),
    validation = Rule::new("!has(self.scaleToZeroAfter) || self.minReplicas == 0").message("scaleToZeroAfter needs minReplicas: 0; with a minimum of one or more the model never goes to zero").field_path(".scaleToZeroAfter"),
    // The least idle time is MIN_SCALE_TO_ZERO_AFTER (reconcile/validate.rs), refused here so that
    // `kubectl apply` hears of it; a value that is no duration is the pattern's to refuse, not a
    // CEL evaluation error's.
    validation = Rule::new("!has(self.scaleToZeroAfter) || !self.scaleToZeroAfter.matches('^([0-9]+(ms|s|m|h))+$') || duration(self.scaleToZeroAfter) >= duration('2s')").message("scaleToZeroAfter must be at least 2s: the runtimes' request counts are read about once a second, and a shorter idle time would put a model with sparse traffic to sleep between two requests").field_path(".scaleToZeroAfter"),
    validation = Rule::new("!has(self.coldStartTimeout) || self.minReplicas == 0").message("coldStartTimeout needs minReplicas: 0: only a model that goes to zero has a cold start to wait for").field_path(".coldStartTimeout"),
)]
pub struct AutoscalingSpec {
    /// Fewest replicas. `0` lets the model go to zero once it has served no request for
    /// `scaleToZeroAfter` (the HPA itself then keeps at least one while the model serves); a
    /// request through the activator wakes it.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,

    /// Most replicas.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// What to scale on: `gpu-utilization` (the default with `gpu`; measured by the node agent),
    /// `cpu` (the default without), or `inference-queue` (the runtime's queue time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<ScalingMetric>,

    /// Target per replica: a percentage for `gpu-utilization` (default 70) and `cpu` (default
    /// 80), microseconds of queue time for `inference-queue` (default 50000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target: Option<i32>,

    /// Seconds the HPA waits before scaling down after load drops (Kubernetes' default is 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<i32>,

    /// With `minReplicas: 0`: how long the model must serve no request (its runtime's own
    /// request count unchanged) before it is scaled to zero and its GPUs are freed, as a
    /// duration such as `15m`, `90s` or `1h30m`. Default `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    pub scale_to_zero_after: Option<String>,

    /// With `minReplicas: 0`: the longest a request may wait at the activator for the model's
    /// cold start before it is answered `503` / `UNAVAILABLE` with a retry hint, as a duration
    /// such as `5m`. Default: the activator's `--cold-start-timeout` (5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    pub cold_start_timeout: Option<String>,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_max_replicas() -> i32 {
    4
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            metric: None,
            target: None,
            scale_down_stabilization_seconds: None,
            scale_to_zero_after: None,
            cold_start_timeout: None,
        }
    }
}

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// Coarse lifecycle: Pending, Validating, Deploying, Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// What is happening, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The model version now serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Replicas of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// The serving pods' label selector, as `kubectl get pods -l` takes it: what the `/scale`
    /// subresource reports to autoscalers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Replicas whose pods are Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Replicas whose model answers the runtime's model-readiness API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ready_replicas: Option<i32>,

    /// `modelReadyReplicas/replicas`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,

    /// In-cluster address of the model's Service (`NAME-service.NAMESPACE.svc:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The model as the runtime reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInfo>,

    /// How the GPUs are requested, `auto` resolved: `dra` (a ResourceClaim per replica) or
    /// `device-plugin` (`nvidia.com/gpu` limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_allocation: Option<GpuAllocation>,

    /// With DRA, the devices each replica's claim got, by pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["pod".into()]))]
    pub gpu_devices: Vec<ReplicaGpus>,

    /// Set while a model that may go to zero (`autoscaling.minReplicas: 0`) serves no request,
    /// and while it is at zero for that reason; cleared by the next request or its wake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleStatus>,

    /// Validated, GPUCapacity, Applied, ModelReady, Available and Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// A model without requests, and whether the operator scaled it to zero for that.
///
/// Written once when the model turns idle and once when it goes to zero, so a model at rest
/// costs no writes; kept in the status so that a restarted operator goes on with the same
/// clock instead of starting it again.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdleStatus {
    /// Since when the runtimes' request count has not changed.
    pub since: Time,
    /// That count, summed over the serving replicas: a different count later means the model
    /// served requests in between, however long ago this was written.
    pub requests: i64,
    /// When the operator scaled the model to zero for being idle; absent while it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled_to_zero_at: Option<Time>,
    /// The Deployment's `metadata.generation` once it was scaled to zero: a later generation
    /// that wants replicas again is a wake (the activator's, or anyone's `kubectl scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_generation: Option<i64>,
}

/// The DRA devices one replica holds.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaGpus {
    /// The replica's pod.
    pub pod: String,
    /// The ResourceClaim made for it.
    pub claim: String,
    /// `POOL/DEVICE` as the claim's allocation names them (the pool is the node, for NVIDIA's
    /// driver), with the GPU's or MIG device's UUID in parentheses where the slice publishes it.
    pub devices: Vec<String>,
}

/// Coarse lifecycle of a ModelDeployment, kept from the original project.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; nothing has run yet, or pods are waiting for capacity.
    Pending,
    /// The validation Job for a new version is running.
    Validating,
    /// The Deployment is rolling out or its model is loading.
    Deploying,
    /// Every wanted replica serves the model.
    Ready,
    /// No replica is wanted (`replicas: 0`, or idle for `autoscaling.scaleToZeroAfter`); a
    /// request through the activator wakes the model.
    ScaledToZero,
    /// Validation failed or the spec cannot be served; see `message` and conditions.
    Failed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Model metadata as reported by the runtime.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// Model name inside the runtime.
    pub name: String,
    /// Framework or backend (e.g. `onnxruntime_onnx`, `python`, `Torch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Versions the runtime has loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// Input tensors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<TensorInfo>,
    /// Output tensors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<TensorInfo>,
}

/// A model input or output tensor.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type, e.g. `FP32`.
    pub datatype: String,
    /// Dimensions; -1 is variable.
    #[serde(default)]
    pub shape: Vec<i64>,
}
