//! berth's PID 1: the boot manifest, the kernel module index and the pieces of
//! the boot sequence that can be tested without being PID 1.

pub mod manifest;
pub mod modindex;

pub mod cmdline;
pub mod discover;
pub mod event_loop;
pub mod hostmode;
pub mod http;
pub mod imds;
pub mod labels;
pub mod logger;
pub mod modules;
pub mod mounts;
pub mod powerbutton;
pub mod readiness;
pub mod reaper;
pub mod seed;
pub mod shutdown;
pub mod supervisor;
pub mod sysctl;
pub mod userdata;
