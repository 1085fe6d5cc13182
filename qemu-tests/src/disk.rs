//! Disk images for guests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a disk image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `mkfs.ext4` could not be started.
    #[error("cannot run mkfs.ext4 (is e2fsprogs installed?)")]
    Spawn(#[source] std::io::Error),
    /// `mkfs.ext4` failed.
    #[error("mkfs.ext4 failed to make {path} ({status}): {stderr}")]
    Mkfs {
        /// The image being made.
        path: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        stderr: String,
    },
}

/// Makes a raw ext4 image at `image`, labelled `label`, of `size` (mke2fs
/// syntax, e.g. `8M`), holding a copy of `contents`:
/// `mkfs.ext4 -q -L LABEL -d CONTENTS IMAGE SIZE`.
pub fn ext4_from_dir(
    image: &Path,
    label: &str,
    contents: &Path,
    size: &str,
) -> Result<(), DiskError> {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-d"])
        .arg(contents)
        .arg(image)
        .arg(size)
        .output()
        .map_err(DiskError::Spawn)?;
    if !out.status.success() {
        return Err(DiskError::Mkfs {
            path: image.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_labelled_ext4_image() {
        let dir = tempfile::tempdir().unwrap();
        let contents = dir.path().join("c");
        std::fs::create_dir(&contents).unwrap();
        std::fs::write(contents.join("manifest.toml"), "[system]\n").unwrap();
        let img = dir.path().join("config.img");
        ext4_from_dir(&img, "berth-config", &contents, "8M").unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
        // The ext4 superblock starts at 1024; its volume name at offset 120.
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(&bytes[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        assert_eq!(&bytes[1024 + 120..1024 + 132], b"berth-config");
    }
}
