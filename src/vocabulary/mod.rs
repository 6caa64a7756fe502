//! The words every layer of the operator shares, in one place: the validated view of a model
//! that every builder reads, the enumerations a spec chooses from, the names and labels of the
//! children, the custom metrics' names and value types, small helpers on pods and on the maps
//! kept per model, and whether this replica leads (which the election sets and every writer
//! reads).
//!
//! This module imports nothing else from the crate, so any module may import it without making
//! a cycle (`tests/module_layering.rs` checks the whole crate for cycles).

mod addresses;
pub mod cached;
mod custom_metric;
pub mod digest;
mod duration;
mod errors;
mod gpu;
mod images;
mod leadership;
mod model_uri;
pub mod names;
pub mod per_model;
pub mod pods;
mod quantity;
mod runtime;
mod validated;

pub use self::{
    addresses::{
        InvalidEndpoint, InvalidModelEndpoint, ModelEndpoints, host_port, parse_endpoint, parse_model_endpoints,
    },
    custom_metric::{GPU_UTILIZATION_METRIC, POD_METRICS, PodValue, QUEUE_TIME_METRIC, QueueTimeSeries},
    duration::parse_duration,
    errors::error_chain,
    gpu::{
        DRA_DRIVER, DRA_GPU_CLASS, DRA_MIG_CLASS, DeviceRequirements, GPU_RESOURCE, GPU_RESOURCE_PREFIX, GPU_TAINT_KEY,
        GpuAllocation, GpuPlacement, GpuSharing, MEMORY_LABEL, PRODUCT_LABEL,
    },
    images::{DEFAULT_FASTAPI_IMAGE, DEFAULT_FETCHER_IMAGE, IMAGE_TAG, OperatorImages},
    leadership::{Leadership, Term},
    model_uri::{
        ArtifactShape, CLUSTER_SCHEMES, ModelSource, ModelUri, ObjectStoreKind, UriError, is_archive, redact_text,
    },
    quantity::{is_quantity, quantity_bytes},
    runtime::Runtime,
    validated::{
        ActivatorEndpoints, AutoscalingPlan, CredentialsPlan, ModelLayout, Scaling, ScalingMetric, SizeLimit,
        Validated, ValidationPlan,
    },
};
