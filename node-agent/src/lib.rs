//! The GPU node agent: a DaemonSet on GPU nodes that reads every GPU through NVML, learns from the
//! kubelet which pods hold which GPUs, and serves both.
//!
//! - `/metrics`: dcgm-exporter's `DCGM_FI_DEV_*` families and labels, one series per GPU and pod
//!   holding it ([`exposition`]), then the agent's own `node_agent_*` health metrics ([`telemetry`]).
//! - `/v1/samples`: the compact JSON the operator's custom-metrics API reads ([`samples`]).
//! - `/healthz` (the process is up) and `/readyz` (NVML initialised and a fresh sample exists).
//!
//! Three independent loops meet in [`snapshot`]: the NVML [`sampler`] thread, the kubelet
//! [`pod_resources`] refresher, and the HTTP [`server`], which only reads snapshots, so a scrape
//! never waits on NVML or the kubelet. Without NVML or the kubelet's socket the agent stays up,
//! says why once in its log, and retries.
//!
//! With `default-features = false` only [`samples`] is built (serde alone), for the operator.

pub mod samples;

#[cfg(feature = "agent")]
pub mod attribution;
#[cfg(feature = "agent")]
mod cli;
#[cfg(feature = "agent")]
pub mod device_id;
#[cfg(feature = "agent")]
pub mod exposition;
#[cfg(feature = "agent")]
pub mod pod_resources;
#[cfg(feature = "agent")]
pub mod sampler;
#[cfg(feature = "agent")]
pub mod server;
#[cfg(feature = "agent")]
pub mod snapshot;
#[cfg(feature = "agent")]
pub mod telemetry;

#[cfg(feature = "agent")]
pub use cli::Args;
