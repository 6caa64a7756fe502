//! GPUs: where a model's pods may run and what they ask for. Pure; the capacity check that
//! reads nodes builds on `GpuPlacement::matches_node`.

mod placement;

pub use placement::*;
