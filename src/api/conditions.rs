//! Condition types and reasons of `ModelDeploymentStatus`. Reasons are short fixed CamelCase
//! words (they label metrics and Events); the message carries the detail.

/// The spec passed the operator's checks and the current version's validation Job succeeded.
pub const VALIDATED: &str = "Validated";
/// The cluster has free GPUs for the replicas that are wanted.
pub const GPU_CAPACITY: &str = "GPUCapacity";
/// The children the current spec asks for are written: no name is taken by an object of
/// someone else, and the API server accepted every one.
pub const APPLIED: &str = "Applied";
/// The runtime reports the model itself as loaded and answering.
pub const MODEL_READY: &str = "ModelReady";
/// At least one replica of the Deployment is ready; the reason says whether all are.
pub const AVAILABLE: &str = "Available";
/// The model is served: ModelReady, at least one replica whose model answers. Scaling and
/// rollouts that keep one answering never turn it False. `kubectl wait --for=condition=Ready`
/// uses it.
pub const READY: &str = "Ready";

/// Every condition type, in the order they are reported.
pub const ALL_TYPES: [&str; 6] = [VALIDATED, GPU_CAPACITY, APPLIED, MODEL_READY, AVAILABLE, READY];

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
    /// Every child of the current spec is written as built.
    pub const CHILDREN_APPLIED: &str = "ChildrenApplied";
    /// A child's name is held by an object this model does not control; nothing is written.
    pub const NAME_TAKEN: &str = "NameTaken";
    /// The API server refused a child as built; the message carries its words.
    pub const CHILD_REJECTED: &str = "ChildRejected";
    /// Writing a child failed for another reason (the API server unreachable, overloaded, ...);
    /// retried with backoff.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const DEPLOYMENT_NOT_CREATED: &str = "DeploymentNotCreated";
    /// Every wanted replica is ready.
    pub const DEPLOYMENT_AVAILABLE: &str = "DeploymentAvailable";
    /// Some but not all wanted replicas are ready: scaling up, rolling out, or a replica lost.
    /// The model still serves.
    pub const REDUCED_CAPACITY: &str = "ReducedCapacity";
    /// No replica is ready.
    pub const DEPLOYMENT_UNAVAILABLE: &str = "DeploymentUnavailable";
    /// `replicas: 0`: no replica is wanted (by hand, `kubectl scale` or an autoscaler); a request
    /// through the activator scales the model to one.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
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
