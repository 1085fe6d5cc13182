//! berth's network daemon and library. For now: the `[network]` section of
//! the boot manifest, which netd owns and `init` composes.

pub mod config;

pub use config::Config;
