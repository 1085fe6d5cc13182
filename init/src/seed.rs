//! Cloud seed disks: NoCloud (label `cidata`, `/user-data`) and OpenStack's
//! config drive (label `config-2`, `/openstack/latest/user_data`), as an
//! ISO9660 or FAT filesystem. At boot one is mounted read-only in a
//! directory under `/run`, the file read and the disk unmounted again.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::labels::Filesystem;

/// Largest user-data file read from a seed disk.
pub const MAX_USER_DATA: u64 = 1024 * 1024;

/// Where a seed disk is mounted while it is read.
pub const MOUNT_DIR: &str = "/run/berth/seed";

/// The kinds of seed disk, in the order they are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedKind {
    /// cloud-init's NoCloud data source.
    NoCloud,
    /// OpenStack's config drive.
    ConfigDrive,
}

impl SeedKind {
    /// Every kind, in lookup order.
    pub const ALL: [SeedKind; 2] = [SeedKind::NoCloud, SeedKind::ConfigDrive];

    /// The filesystem label that marks it (compared case-insensitively:
    /// FAT labels are usually upper case).
    pub fn label(self) -> &'static str {
        match self {
            SeedKind::NoCloud => "cidata",
            SeedKind::ConfigDrive => "config-2",
        }
    }

    /// Where the user-data is on it.
    pub fn user_data_path(self) -> &'static str {
        match self {
            SeedKind::NoCloud => "/user-data",
            SeedKind::ConfigDrive => "/openstack/latest/user_data",
        }
    }

    /// Whether a filesystem with this type and label is such a disk.
    pub fn matches(self, filesystem: Filesystem, label: &str) -> bool {
        filesystem != Filesystem::Ext4 && label.eq_ignore_ascii_case(self.label())
    }
}

impl fmt::Display for SeedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeedKind::NoCloud => "nocloud",
            SeedKind::ConfigDrive => "config-drive",
        })
    }
}

/// The kernel modules that mount `filesystem`: the filesystem and the
/// character sets its default mount options name.
pub fn modules_for(filesystem: Filesystem) -> &'static [&'static str] {
    match filesystem {
        Filesystem::Ext4 => &["ext4"],
        Filesystem::Iso9660 => &["isofs"],
        // vfat's defaults: codepage=437, iocharset=ascii (Debian's config).
        Filesystem::Vfat => &["vfat", "nls_cp437", "nls_ascii"],
    }
}

/// A seed disk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The mount point could not be made.
    #[error("cannot create {path}")]
    Mkdir {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// mount(2) failed.
    #[error("cannot mount {device} ({filesystem}) read-only at {target}")]
    Mount {
        /// The device.
        device: PathBuf,
        /// Its filesystem.
        filesystem: Filesystem,
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        errno: Errno,
    },
    /// The file could not be read.
    #[error("cannot read {path} on {device}")]
    Read {
        /// The device.
        device: PathBuf,
        /// The file, on the disk.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_USER_DATA`].
    #[error("{path} on {device} is larger than {MAX_USER_DATA} bytes")]
    TooLarge {
        /// The device.
        device: PathBuf,
        /// The file, on the disk.
        path: String,
    },
}

/// Reads one file from a seed disk; a seam so discovery is tested without
/// mounting.
pub trait SeedReader {
    /// The file at `path` on `device`, or `None` if it is not there.
    fn read(
        &mut self,
        device: &Path,
        filesystem: Filesystem,
        path: &str,
    ) -> Result<Option<Vec<u8>>, SeedError>;
}

/// The boot-time reader: mounts the disk read-only at [`MOUNT_DIR`] (after
/// `load_modules` loaded its filesystem), reads, unmounts.
pub struct MountingReader<F: FnMut(&[&str])> {
    /// Loads kernel modules by name.
    pub load_modules: F,
}

impl<F: FnMut(&[&str])> SeedReader for MountingReader<F> {
    fn read(
        &mut self,
        device: &Path,
        filesystem: Filesystem,
        path: &str,
    ) -> Result<Option<Vec<u8>>, SeedError> {
        (self.load_modules)(modules_for(filesystem));
        let target = PathBuf::from(MOUNT_DIR);
        std::fs::create_dir_all(&target).map_err(|source| SeedError::Mkdir {
            path: target.clone(),
            source,
        })?;
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(
            Some(device),
            &target,
            Some(filesystem.mount_type()),
            flags,
            None::<&str>,
        )
        .map_err(|errno| SeedError::Mount {
            device: device.to_path_buf(),
            filesystem,
            target: target.clone(),
            errno,
        })?;
        let result = read_capped(device, &target, path);
        if let Err(e) = umount2(&target, MntFlags::empty()) {
            log::warn!("cannot unmount {}: {e}", target.display());
        }
        let _ = std::fs::remove_dir(&target);
        result
    }
}

/// Reads `path` under `root` (a mounted seed disk), at most
/// [`MAX_USER_DATA`] bytes.
pub fn read_capped(device: &Path, root: &Path, path: &str) -> Result<Option<Vec<u8>>, SeedError> {
    let read_error = |source| SeedError::Read {
        device: device.to_path_buf(),
        path: path.to_string(),
        source,
    };
    let file = match std::fs::File::open(root.join(path.trim_start_matches('/'))) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_USER_DATA + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_USER_DATA {
        return Err(SeedError::TooLarge {
            device: device.to_path_buf(),
            path: path.to_string(),
        });
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_case_insensitively_on_iso_and_fat_only() {
        assert!(SeedKind::NoCloud.matches(Filesystem::Iso9660, "cidata"));
        assert!(SeedKind::NoCloud.matches(Filesystem::Vfat, "CIDATA"));
        assert!(SeedKind::ConfigDrive.matches(Filesystem::Vfat, "CONFIG-2"));
        assert!(!SeedKind::NoCloud.matches(Filesystem::Ext4, "cidata"));
        assert!(!SeedKind::ConfigDrive.matches(Filesystem::Iso9660, "cidata"));
    }

    #[test]
    fn reads_capped_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let dev = Path::new("/dev/sr0");
        std::fs::create_dir_all(dir.path().join("openstack/latest"))?;
        std::fs::write(dir.path().join("openstack/latest/user_data"), "[system]\n")?;
        assert_eq!(
            read_capped(dev, dir.path(), SeedKind::ConfigDrive.user_data_path())?,
            Some(b"[system]\n".to_vec())
        );
        assert_eq!(read_capped(dev, dir.path(), "/user-data")?, None);
        let size = usize::try_from(MAX_USER_DATA)? + 1;
        std::fs::write(dir.path().join("user-data"), vec![b'#'; size])?;
        let e = read_capped(dev, dir.path(), "/user-data").err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("/user-data on /dev/sr0 is larger than 1048576 bytes".into())
        );
        Ok(())
    }
}
