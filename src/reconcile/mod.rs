//! The reconcile pipeline, one module per step: `fetch` reads the children from the watch
//! caches, `validate` (pure) turns a `ModelDeployment` into the validated view every builder
//! reads, `build` (pure) renders the desired children, `apply` writes them with server-side
//! apply, `readiness` asks the runtimes whether the model answers, and `status` (pure) computes
//! what is written back. `crate::controller` runs it.

pub mod apply;
pub mod build;
pub mod fetch;
pub mod readiness;
pub mod status;
pub mod validate;
