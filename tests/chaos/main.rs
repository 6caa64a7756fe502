//! The chaos tier (DESIGN.md §6): faults injected into the local control plane under a running
//! operator — crashes, the API server and etcd restarting, a frozen or cut-off leader, lost
//! node agents and nodes — and what must hold afterwards. Run by `make chaos` (part of
//! `make test`) one test at a time, since some cases restart the cluster's own processes. Each
//! case prints its convergence time; `CHAOS_MODELS`, `CHAOS_KILLS` scale it up by hand.

mod agents_and_nodes;
mod control_plane;
mod crashes;
mod faults;
/// The GPU autoscaling rig of the cluster tier: node agents on the fake NVML, the APIService.
#[path = "../e2e/gpu_rig.rs"]
mod gpu_rig;
mod leadership;
/// The protocol tier's harness, which the cluster tier's support uses.
#[path = "../support/mod.rs"]
mod servers;
#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;
