//! The `ModelDeployment` API (`mlops.sathvik.dev/v1`): the CRD types, their schema and CEL rules,
//! the condition vocabulary, and the offline admission check that `render` uses.

pub mod admission;
pub mod conditions;
mod model_deployment;

pub use model_deployment::*;

/// API group of every custom resource this operator owns.
pub const GROUP: &str = "mlops.sathvik.dev";
