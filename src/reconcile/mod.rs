//! The reconcile pipeline, one module per step: `validate` (pure) turns a `ModelDeployment` into
//! the validated view every builder reads, and `build` (pure) renders the desired children.
//! The client-side steps (fetch, apply, status) build on these.

pub mod build;
pub mod validate;
