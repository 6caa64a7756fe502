//! model-operator: deploys machine-learning models onto GPU nodes with Triton, TorchServe and a
//! FastAPI runtime. The binary is thin; everything lives here so tests can reach it.

pub mod api;
pub mod cli;
pub mod controller;
pub mod custom_metrics;
pub mod gpu;
pub mod model_fetch;
pub mod model_source;
pub mod probe;
pub mod reconcile;
pub mod runtimes;
pub mod settings;
