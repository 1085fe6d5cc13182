//! berth's container engine. For now: the `[workloads.*]` sections of the
//! boot manifest, which the engine owns and `init` composes.

pub mod image;
pub mod manager;
pub mod units;
pub mod workload;

pub use workload::Workload;
pub mod api;
pub mod runtime;
