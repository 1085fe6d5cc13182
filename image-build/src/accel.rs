//! KVM or TCG. A nested KVM can accept `-accel kvm` and then hang, so `auto`
//! boots the kernel once under KVM with no initramfs: it panics (no root fs)
//! and, with `panic=-1 -no-reboot`, QEMU exits within a couple of seconds
//! when KVM works. No exit within [`PROBE_TIMEOUT`] means KVM hangs here.
//! The answer is cached per host boot (`accel-<boot_id>` in the cache).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::tools::{Tool, ToolError};

/// How long a working KVM may take to boot the kernel to its panic.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The accelerator could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    /// QEMU is missing.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The cache is unusable.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// The probe kernel is missing.
    #[error("probe kernel {0} does not exist")]
    MissingKernel(PathBuf),
    /// Running the probe failed.
    #[error("cannot run the KVM probe")]
    Probe(#[source] std::io::Error),
}

/// An accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Emulation.
    Tcg,
}

impl Accel {
    /// The name QEMU and the test harness use.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `-cpu` model to pair with it.
    pub fn cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// KVM if the probe boots, else TCG.
    Auto,
    /// KVM, unprobed.
    Kvm,
    /// TCG.
    Tcg,
}

/// Resolves `choice`, probing with `kernel` when it is `auto`.
pub fn choose(choice: Choice, kernel: &Path) -> Result<Accel, AccelError> {
    match choice {
        Choice::Kvm => Ok(Accel::Kvm),
        Choice::Tcg => Ok(Accel::Tcg),
        Choice::Auto => {
            let cache = crate::cache::dir()?;
            let key = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let file = cache.join(format!("accel-{key}"));
            match std::fs::read_to_string(&file).as_deref().map(str::trim) {
                Ok("kvm") => return Ok(Accel::Kvm),
                Ok("tcg") => return Ok(Accel::Tcg),
                _ => {}
            }
            let accel = probe(kernel)?;
            // Results from earlier host boots are stale.
            for old in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
                if old.file_name().to_string_lossy().starts_with("accel-") {
                    let _ = std::fs::remove_file(old.path());
                }
            }
            if !key.is_empty() {
                let _ = std::fs::write(&file, format!("{}\n", accel.name()));
            }
            Ok(accel)
        }
    }
}

/// Boots `kernel` under KVM and reports whether it reached its panic in time.
pub fn probe(kernel: &Path) -> Result<Accel, AccelError> {
    if !kernel.is_file() {
        return Err(AccelError::MissingKernel(kernel.to_path_buf()));
    }
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm_usable {
        return Ok(Accel::Tcg);
    }
    let mut child = Tool::Qemu
        .command()?
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-no-reboot", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(AccelError::Probe)?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| AccelError::Probe(std::io::Error::other("no stdout pipe")))?;
    // The pipe reaches EOF when QEMU exits; wait for that, bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let output = rx.recv_timeout(PROBE_TIMEOUT).ok();
    if output.is_none() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(AccelError::Probe)?;
    let panicked = output.is_some_and(|out| String::from_utf8_lossy(&out).contains("Kernel panic"));
    Ok(if status.success() && panicked {
        Accel::Kvm
    } else {
        Accel::Tcg
    })
}
