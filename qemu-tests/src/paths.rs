//! Where the harness finds binaries and puts images and logs.

use std::path::PathBuf;

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().map_or(crate_dir.clone(), PathBuf::from)
}

/// The cargo target directory: `$CARGO_TARGET_DIR` when set, else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
}

/// Where the static boot binaries (`berth-build`, `berth-init`, ...) live:
/// `$BERTH_BIN_DIR`, else `<workspace>/target/x86_64-unknown-linux-musl/release`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("BERTH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_dir()
                .join("target")
                .join("x86_64-unknown-linux-musl")
                .join("release")
        })
}

/// The `berth-build` executable in [`bin_dir`].
pub fn berth_build() -> PathBuf {
    bin_dir().join("berth-build")
}

/// Where each guest's whole console is saved: `<target>/qemu-tests-logs`.
pub fn logs_dir() -> PathBuf {
    target_dir().join("qemu-tests-logs")
}

/// Where built test images go: `<target>/qemu-tests-images`.
pub fn images_dir() -> PathBuf {
    target_dir().join("qemu-tests-images")
}

/// What to tell someone whose boot binaries are missing.
pub const BUILD_HINT: &str = "run `make test`, which builds them, or build them with \
`cargo build --release --target x86_64-unknown-linux-musl -p init -p image-build` \
and point BERTH_BIN_DIR at the directory holding them";
