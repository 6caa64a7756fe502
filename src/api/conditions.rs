//! Condition types and reasons of `ModelDeploymentStatus`. Reasons are short fixed CamelCase
//! words (they label metrics and Events); the message carries the detail.

/// The spec passed the operator's checks and the current version's validation Job succeeded.
pub const VALIDATED: &str = "Validated";
/// The cluster has free GPUs for the replicas that are wanted.
pub const GPU_CAPACITY: &str = "GPUCapacity";
/// The runtime reports the model itself as loaded and answering.
pub const MODEL_READY: &str = "ModelReady";
/// The Deployment has its minimum of available replicas.
pub const AVAILABLE: &str = "Available";
/// The model is served: Available and ModelReady. `kubectl wait --for=condition=Ready` uses it.
pub const READY: &str = "Ready";

/// Every condition type, in the order they are reported.
pub const ALL_TYPES: [&str; 5] = [VALIDATED, GPU_CAPACITY, MODEL_READY, AVAILABLE, READY];

/// Reasons shared by several condition types.
pub mod reasons {
    pub const SPEC_INVALID: &str = "SpecInvalid";
    pub const VALIDATION_RUNNING: &str = "ValidationRunning";
    pub const VALIDATION_SUCCEEDED: &str = "ValidationSucceeded";
    pub const VALIDATION_FAILED: &str = "ValidationFailed";
    pub const NO_VALIDATION_SCRIPT: &str = "NoValidationScript";
    pub const NO_GPU_REQUESTED: &str = "NoGPURequested";
    pub const GPUS_AVAILABLE: &str = "GPUsAvailable";
    pub const INSUFFICIENT_GPUS: &str = "InsufficientGPUs";
    pub const NO_MATCHING_NODES: &str = "NoMatchingNodes";
    pub const DEPLOYMENT_NOT_CREATED: &str = "DeploymentNotCreated";
    pub const DEPLOYMENT_AVAILABLE: &str = "DeploymentAvailable";
    pub const DEPLOYMENT_UNAVAILABLE: &str = "DeploymentUnavailable";
    pub const MODEL_LOADED: &str = "ModelLoaded";
    pub const MODEL_LOADING: &str = "ModelLoading";
    pub const MODEL_NOT_REGISTERED: &str = "ModelNotRegistered";
    pub const SERVER_UNAVAILABLE: &str = "ServerUnavailable";
    /// ModelReady from the kubelet's readiness probes alone, before any model probe answered.
    pub const PODS_READY: &str = "PodsReady";
    pub const PODS_NOT_READY: &str = "PodsNotReady";
    /// The runtime knows the model but reports it not ready, without saying why.
    pub const MODEL_NOT_READY: &str = "ModelNotReady";
    /// The model was unloaded (Triton's repository API, or a failed reload).
    pub const MODEL_UNLOADED: &str = "ModelUnloaded";
    /// The runtime tried to load the model and gave up; the message carries its error.
    pub const MODEL_LOAD_FAILED: &str = "ModelLoadFailed";
    /// TorchServe has fewer READY workers than the model's minimum.
    pub const WORKERS_NOT_READY: &str = "WorkersNotReady";
    /// The runtime refused the probe's credentials (TorchServe token auth).
    pub const PROBE_UNAUTHORIZED: &str = "ProbeUnauthorized";
    /// The runtime did not answer the probe within its timeout.
    pub const PROBE_TIMEOUT: &str = "ProbeTimeout";
    /// The runtime answered something the probe does not understand.
    pub const PROBE_FAILED: &str = "ProbeFailed";
    pub const SERVING: &str = "Serving";
    pub const NOT_SERVING: &str = "NotServing";
}
