//! GPUs: where a model's pods may run, what they ask for, and whether the cluster has room.
//! Pure: callers pass in the nodes and pods they read.

mod capacity;
mod placement;

pub use capacity::*;
pub use placement::*;
