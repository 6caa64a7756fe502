//! The cluster tier (DESIGN.md §6, tier 3): the operator binary against a real control plane on
//! loopback. Run by `make e2e` (part of `make test`), which starts the cluster first; each test
//! works in its own random namespace with its own operator process.

/// The activator binary: a model at zero woken by its first request.
mod activator;
mod admission;
mod autoscaling;
/// The table of bad specs the offline admission test reads too.
#[path = "../support/bad_specs.rs"]
mod bad_specs;
/// GPUs through Dynamic Resource Allocation: claims, capacity from slices, `auto`.
mod dra;
/// GPUs allocated through DRA claims, attributed by the node agent (no operator).
mod dra_agent;
/// The GPU autoscaling rig (node agents on the fake NVML, the APIService), which the chaos tier
/// includes too.
mod gpu_rig;
mod handovers;
mod hostile_peers;
/// `kubectl scale md/NAME` through the `/scale` subresource.
mod kubectl_scale;
mod model_readiness;
mod ownership;
mod reconciler;
/// The protocol tier's harness: the real model servers `make test-servers` installs.
#[path = "../support/mod.rs"]
mod servers;
mod support;
