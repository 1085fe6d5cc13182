//! Boot harness: runs berth images under QEMU and watches them from outside,
//! over the serial console and QMP.
//!
//! A boot test is a few lines:
//!
//! ```no_run
//! use std::time::Duration;
//! use qemu_tests::{Guest, SharedImage};
//!
//! static MINIMAL: SharedImage = SharedImage::new("minimal", "[system]\n", &[]);
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut guest = Guest::from_image(MINIMAL.get()?).boot()?;
//! guest.expect_console(r"berth: ready uptime_ms=\d+ workloads=0", Duration::from_secs(60))?;
//! guest.power_button()?;
//! guest.expect_console(r"berth: power off", Duration::from_secs(15))?;
//! guest.wait_exit(Duration::from_secs(15))?;
//! # Ok(())
//! # }
//! ```

pub mod accel;
pub mod console;
pub mod disk;
pub mod guest;
pub mod http;
pub mod image;
pub mod paths;
pub mod qmp;

pub use accel::Accel;
pub use console::{berth_lines, Matched};
pub use guest::{Firmware, Guest, GuestBuilder, GuestError, Media};
pub use image::{busybox_archive, Image, SharedImage};
