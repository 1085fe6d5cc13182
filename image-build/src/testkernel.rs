//! Finds the real Debian kernel the tests run against: `$BERTH_KERNEL_DIR`
//! (an extracted `linux-image-*.deb`), else the newest one `berth-build`
//! extracted into its cache. `make test` fetches it first (`berth-build
//! kernel`), so a missing kernel fails the test instead of skipping it.

use std::path::PathBuf;

/// The root of an extracted kernel package (holds `boot/` and `lib/modules/`).
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_KERNEL_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("BERTH_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/berth")))
        .unwrap_or_default();
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache.join("kernels"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("boot").is_dir())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no kernel for the tests: set BERTH_KERNEL_DIR to an extracted linux-image .deb \
             or run `berth-build kernel` to fetch one into {}",
            cache.display()
        )
    })
}

/// `lib/modules/<release>` of that kernel.
pub fn modules_dir() -> PathBuf {
    let base = root().join("lib/modules");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", base.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("kernel").is_dir())
        .collect();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("no lib/modules/<release>/kernel under {}", base.display()))
}

/// `boot/vmlinuz-<release>` of that kernel.
pub fn vmlinuz() -> PathBuf {
    let release = modules_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    root().join("boot").join(format!("vmlinuz-{release}"))
}
