//! GPUs: where a model's pods may run, what they ask for, and whether the cluster has room,
//! through the device plugin's extended resources or Dynamic Resource Allocation (`dra`).
//! Pure: callers pass in the nodes, pods, slices and claims they read.

mod capacity;
pub mod dra;
mod placement;

pub use capacity::*;
pub use placement::*;
