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
//! says why once in its log, and retries. GPUs allocated through ResourceClaims (DRA) are tied to
//! NVML's through the node's ResourceSlices ([`resource_slices`]), the one thing the agent reads
//! from the API server, and only while such a GPU is claimed.
//!
//! With `default-features = false` only [`samples`] is built (serde alone), for the operator.

// In layers, each using only the layers above it (`tests/module_layering.rs` checks this).

// What the operator reads too: built without the `agent` feature.
pub mod samples;

// Words: device IDs as the device plugin writes them, and the snapshot the loops share.
#[cfg(feature = "agent")]
pub mod device_id;
#[cfg(feature = "agent")]
pub mod snapshot;

// The agent's own health metrics, read from the snapshot.
#[cfg(feature = "agent")]
pub mod telemetry;

// Who holds which GPU, and the dcgm-compatible exposition of it.
#[cfg(feature = "agent")]
pub mod attribution;
#[cfg(feature = "agent")]
pub mod exposition;

// The node's ResourceSlices (DRA), which the kubelet refresher reads on demand.
#[cfg(feature = "agent")]
pub mod resource_slices;

// The three loops: the kubelet refresher, the NVML sampler, the HTTP server.
#[cfg(feature = "agent")]
pub mod pod_resources;
#[cfg(feature = "agent")]
pub mod sampler;
#[cfg(feature = "agent")]
pub mod server;

// The command line that starts them.
#[cfg(feature = "agent")]
mod cli;

#[cfg(feature = "agent")]
pub use cli::Args;
