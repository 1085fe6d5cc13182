//! The filesystems PID 1 mounts at boot and unmounts at shutdown.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where cgroup2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where the engine keeps its state: the `berth-data` disk, or a tmpfs.
pub const DATA_DIR: &str = "/var/lib/berth";

/// Where the initramfs is bound while it is moved over `/`.
const ROOT_BIND: &str = "/.berth-root";

/// Puts a bind mount of the initramfs over `/` and enters it, when `/` is
/// the kernel's own rootfs (ramfs or tmpfs): rootfs is the one mount with
/// no parent, and `pivot_root(2)` refuses to move a root that has none, so
/// without this no container could pivot into its rootfs. Same files, same
/// memory; only the mount changes. Returns whether it did anything. Runs
/// first, before anything else is mounted.
pub fn leave_rootfs() -> Result<bool, String> {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // linux/magic.h; nix names tmpfs's but not ramfs's.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let fs = statfs("/").map_err(|e| format!("cannot statfs /: {e}"))?;
    if fs.filesystem_type() != RAMFS_MAGIC && fs.filesystem_type() != TMPFS_MAGIC {
        return Ok(false);
    }
    let step = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("cannot {what}: {e}"));
    match std::fs::create_dir(ROOT_BIND) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {ROOT_BIND}: {e}")),
    }
    step(
        &format!("bind / on {ROOT_BIND}"),
        mount(
            Some("/"),
            ROOT_BIND,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    step(&format!("enter {ROOT_BIND}"), nix::unistd::chdir(ROOT_BIND))?;
    step(
        &format!("move {ROOT_BIND} to /"),
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
    )?;
    step("chroot into the moved root", nix::unistd::chroot("."))?;
    step("enter /", nix::unistd::chdir("/"))?;
    // The directory the bind sat on is visible (empty) in the new root.
    let _ = std::fs::remove_dir(ROOT_BIND);
    Ok(true)
}

/// A mount step that failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point could not be created.
    #[error("cannot create mount point {}", path.display())]
    Mkdir {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// mount(2) failed.
    #[error("cannot mount {fstype} on {}: {errno}", target.display())]
    Mount {
        /// Filesystem type.
        fstype: String,
        /// Mount point.
        target: PathBuf,
        /// The errno.
        errno: Errno,
    },
    /// A cgroup controller could not be enabled for children.
    #[error("cannot enable cgroup controller {controller} in {}", path.display())]
    Controller {
        /// The controller (`cpu`, `memory`, ...).
        controller: String,
        /// The `cgroup.subtree_control` file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One filesystem to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The source (`proc`, `tmpfs`, a device path...).
    pub source: String,
    /// The mount point.
    pub target: PathBuf,
    /// The filesystem type.
    pub fstype: String,
    /// mount(2) flags.
    pub flags: MsFlags,
    /// Filesystem options.
    pub data: String,
}

impl MountSpec {
    fn new(source: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) -> Self {
        Self {
            source: source.to_string(),
            target: PathBuf::from(target),
            fstype: fstype.to_string(),
            flags,
            data: data.to_string(),
        }
    }
}

/// The early mounts, in order (each parent before its children).
pub fn early_mounts() -> Vec<MountSpec> {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let noexec = common | MsFlags::MS_NOEXEC;
    vec![
        MountSpec::new("proc", "/proc", "proc", noexec, ""),
        MountSpec::new("sysfs", "/sys", "sysfs", noexec, ""),
        MountSpec::new(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            "mode=0755",
        ),
        MountSpec::new(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "mode=0620,ptmxmode=0666",
        ),
        MountSpec::new("shm", "/dev/shm", "tmpfs", common, "mode=1777"),
        MountSpec::new("run", "/run", "tmpfs", common, "mode=0755"),
        MountSpec::new("tmp", "/tmp", "tmpfs", common, "mode=1777"),
        MountSpec::new("cgroup2", CGROUP_ROOT, "cgroup2", noexec, ""),
    ]
}

/// Mounts one filesystem, creating the mount point. Already mounted (EBUSY)
/// counts as success so that a kernel that mounted `/dev` itself is fine.
pub fn mount_one(spec: &MountSpec) -> Result<(), MountError> {
    std::fs::create_dir_all(&spec.target).map_err(|source| MountError::Mkdir {
        path: spec.target.clone(),
        source,
    })?;
    let data = (!spec.data.is_empty()).then_some(spec.data.as_str());
    match mount(
        Some(spec.source.as_str()),
        &spec.target,
        Some(spec.fstype.as_str()),
        spec.flags,
        data,
    ) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(errno) => Err(MountError::Mount {
            fstype: spec.fstype.clone(),
            target: spec.target.clone(),
            errno,
        }),
    }
}

/// The `cgroup.subtree_control` words that enable every controller listed in
/// `cgroup.controllers` (`"cpu memory pids"` → `["+cpu", "+memory", "+pids"]`).
pub fn subtree_control_words(controllers: &str) -> Vec<String> {
    controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect()
}

/// Enables, for the children of the cgroup at `root`, every controller it has.
/// Returns the controllers enabled; each one that fails is a warning.
pub fn enable_controllers(root: &Path) -> (Vec<String>, Vec<MountError>) {
    let path = root.join("cgroup.subtree_control");
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let words = subtree_control_words(&controllers);
    if words.is_empty() || std::fs::write(&path, words.join(" ")).is_ok() {
        return (words, Vec::new());
    }
    // All at once failed: enable one by one, so one bad controller costs only itself.
    let mut enabled = Vec::new();
    let mut errors = Vec::new();
    for word in words {
        match std::fs::write(&path, &word) {
            Ok(()) => enabled.push(word),
            Err(source) => errors.push(MountError::Controller {
                controller: word.trim_start_matches('+').to_string(),
                path: path.clone(),
                source,
            }),
        }
    }
    (enabled, errors)
}

/// Mounts the data disk (ext4) at [`DATA_DIR`], or a tmpfs when there is none
/// or it cannot be mounted. Returns what was mounted, for the console.
pub fn mount_data(device: Option<&Path>) -> Result<String, MountError> {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if let Some(dev) = device {
        let spec = MountSpec {
            source: dev.display().to_string(),
            target: PathBuf::from(DATA_DIR),
            fstype: "ext4".to_string(),
            flags: common,
            data: String::new(),
        };
        match mount_one(&spec) {
            Ok(()) => return Ok(format!("{} (ext4)", dev.display())),
            Err(e) => log::warn!("{}; using a tmpfs instead", crate::logger::chain(&e)),
        }
    }
    mount_one(&MountSpec::new(
        "berth-data",
        DATA_DIR,
        "tmpfs",
        common,
        "mode=0755",
    ))?;
    Ok("tmpfs".to_string())
}

/// Mount points listed in a `/proc/self/mounts` text, in mount order.
pub fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

/// `/proc/mounts` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(&[a, b, c]) = bytes.get(i + 1..i + 4) {
                if [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d)) {
                    out.push(((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'));
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The order to unmount in: the reverse of mount order, never `/`.
pub fn unmount_order(points: &[PathBuf]) -> Vec<PathBuf> {
    let mut order: Vec<PathBuf> = points
        .iter()
        .rev()
        .filter(|p| p.as_path() != Path::new("/"))
        .cloned()
        .collect();
    // A path mounted twice is unmounted once; the later umount would fail.
    let mut seen = std::collections::BTreeSet::new();
    order.retain(|p| seen.insert(p.clone()));
    order
}

/// Unmounts everything but `/`, newest first. A busy filesystem is remounted
/// read-only (so its data is safe) and detached lazily.
pub fn unmount_all() {
    let text = match std::fs::read_to_string("/proc/self/mounts") {
        Ok(t) => t,
        Err(e) => {
            log::warn!("cannot read /proc/self/mounts: {e}; not unmounting");
            return;
        }
    };
    for point in unmount_order(&parse_mount_points(&text)) {
        if umount2(&point, MntFlags::empty()).is_ok() {
            log::debug!("unmounted {}", point.display());
            continue;
        }
        let ro = mount(
            None::<&str>,
            &point,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
        let lazy = umount2(&point, MntFlags::MNT_DETACH);
        log::debug!(
            "{} busy: read-only remount {:?}, lazy unmount {:?}",
            point.display(),
            ro,
            lazy
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_mounts_parents_first() {
        let m = early_mounts();
        let targets: Vec<&Path> = m.iter().map(|s| s.target.as_path()).collect();
        for (i, t) in targets.iter().enumerate() {
            for parent in t.ancestors().skip(1) {
                if let Some(j) = targets.iter().position(|x| x == &parent) {
                    assert!(j < i, "{} mounted before its parent", t.display());
                }
            }
        }
        assert!(targets.contains(&Path::new(CGROUP_ROOT)));
    }

    #[test]
    fn controllers_enabled_from_list() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(
            subtree_control_words("cpuset cpu io memory pids\n"),
            ["+cpuset", "+cpu", "+io", "+memory", "+pids"]
        );
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n")?;
        let (enabled, errors) = enable_controllers(dir.path());
        assert!(errors.is_empty());
        assert_eq!(enabled, ["+cpu", "+memory", "+pids"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgroup.subtree_control"))?,
            "+cpu +memory +pids"
        );
        Ok(())
    }

    #[test]
    fn unmounts_newest_first_and_unescapes() {
        let text = "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n\
                    cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n/dev/vdb /var/lib/my\\040data ext4 rw 0 0\n";
        let order = unmount_order(&parse_mount_points(text));
        assert_eq!(
            order,
            [
                PathBuf::from("/var/lib/my data"),
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/sys"),
                PathBuf::from("/proc"),
            ]
        );
    }
}
