//! model-operator: deploys machine-learning models onto GPU nodes with Triton, TorchServe and a
//! FastAPI runtime. The binary is thin; everything lives here so tests can reach it.
//!
//! The modules, each importing only from those listed before it (`tests/module_layering.rs`
//! checks that no two import each other):
//!
//! - [`vocabulary`]: the shared words (the validated model view, names and labels of children,
//!   custom-metric names, pod helpers); imports nothing else of the crate.
//! - [`api`]: the `ModelDeployment` CRD, its conditions, and offline admission.
//! - [`gpu`]: GPU placement and the capacity pre-flight; [`runtimes`]: one profile per inference
//!   server; [`model_fetch`]: the init container that downloads a model; [`telemetry`]: metrics
//!   and logs; [`bounded_io`]: reads from peers, bounded in bytes.
//! - [`model_readiness`]: whether the model itself answers, per runtime; [`custom_metrics`]: the
//!   aggregated metrics API the HPA scales on (GPU utilisation, queue time); [`activator`]: holds
//!   a model's requests while it has no ready replica, and forwards them once it answers.
//! - [`reconcile`]: the driver, fetch → validate → build → apply → readiness → status, and the
//!   report step.
//! - [`controller`]: the process: caches, leader election, admin server, shutdown.
//! - [`cli`]: the subcommands.

pub mod vocabulary;

pub mod api;

pub mod bounded_io;
pub mod gpu;
pub mod model_fetch;
pub mod runtimes;
pub mod telemetry;

pub mod activator;
pub mod custom_metrics;
pub mod model_readiness;

pub mod reconcile;

pub mod controller;

pub mod cli;
