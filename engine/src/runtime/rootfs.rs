//! The container's root filesystem: an overlay of the image layers with one
//! upper directory per container, the kernel filesystems (`/proc`, a
//! read-only `/sys`, a minimal `/dev`), the caller's mounts, `pivot_root`,
//! and Docker's masked and read-only paths.
//!
//! Mount targets inside the image are resolved with `openat2(2)`
//! `RESOLVE_IN_ROOT`, so a symlink in an image can never point a mount at
//! the host; the mount is then made on the `/proc/self/fd/N` of the target.
//!
//! The option strings and plans are pure functions; the functions that
//! mount run in the container's own mount namespace (see `process.rs`),
//! so everything mounted disappears with the container.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fchmodat, makedev, mkdirat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, symlinkat};

use super::spec::Mount;

/// The largest mount option string the kernel takes (one page, with its NUL).
pub const MOUNT_DATA_MAX: usize = 4095;

/// Docker's masked paths: a directory gets an empty read-only tmpfs, a
/// file gets `/dev/null` bound over it.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The device nodes of the minimal `/dev`: name, major, minor (all 0666).
pub const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The symlinks of the minimal `/dev`.
pub const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Everything `/dev` holds, sorted: the devices, the symlinks, `pts` and `shm`.
pub fn dev_entries() -> Vec<&'static str> {
    let mut all: Vec<&str> = DEVICES
        .iter()
        .map(|d| d.0)
        .chain(DEV_SYMLINKS.iter().map(|s| s.0))
        .chain(["pts", "shm"])
        .collect();
    all.sort_unstable();
    all
}

/// Problems building the root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// No layers to mount.
    #[error("the image has no layers to mount")]
    NoLayers,
    /// The overlay option string does not fit in a page.
    #[error(
        "the image has too many layers for overlayfs: {layers} layers make a \
         {len}-byte option string, and the kernel takes at most {MOUNT_DATA_MAX} bytes"
    )]
    TooManyLayers {
        /// Number of layers.
        layers: usize,
        /// Length of the shortest option string we could make.
        len: usize,
    },
    /// A mount failed.
    #[error("cannot mount {what} on {target}{hint}")]
    Mount {
        /// What was mounted (`overlay`, `proc`, a host path, ...).
        what: String,
        /// The path in the container (or on the host for the overlay).
        target: String,
        /// A hint for likely causes, or empty.
        hint: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// A path in the container could not be opened or created.
    #[error("cannot {action} {path} in the container")]
    Path {
        /// `open`, `create`, `make the device`, ...
        action: &'static str,
        /// The path in the container.
        path: String,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// `pivot_root` (or leaving the old root) failed.
    #[error("cannot pivot_root into {0}")]
    PivotRoot(PathBuf, #[source] Errno),
}

/// The overlayfs option string, and the directory to `chdir` to first
/// when it uses paths relative to the layers' common parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayData {
    /// `lowerdir=...,upperdir=...,workdir=...`.
    pub data: String,
    /// Set when `lowerdir` is relative to this directory.
    pub chdir: Option<PathBuf>,
}

/// Escapes the characters overlayfs splits options and layers on.
pub fn escape_overlay_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Builds the overlay options for `layers` (bottom first, as the image
/// store lists them; overlayfs wants the top first). When absolute paths
/// do not fit in a page and all layers share a parent directory (as in
/// the image store), the layers are named relative to it instead; beyond
/// that it is a clear error.
pub fn overlay_data(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<OverlayData, RootfsError> {
    if layers.is_empty() {
        return Err(RootfsError::NoLayers);
    }
    let make = |lower: Vec<String>| {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            escape_overlay_path(upper),
            escape_overlay_path(work)
        )
    };
    let data = make(
        layers
            .iter()
            .rev()
            .map(|l| escape_overlay_path(l))
            .collect(),
    );
    if data.len() <= MOUNT_DATA_MAX {
        return Ok(OverlayData { data, chdir: None });
    }
    let parent = layers[0].parent().filter(|p| {
        layers
            .iter()
            .all(|l| l.parent() == Some(p) && l.file_name().is_some())
    });
    let Some(parent) = parent else {
        return Err(RootfsError::TooManyLayers {
            layers: layers.len(),
            len: data.len(),
        });
    };
    let relative = make(
        layers
            .iter()
            .rev()
            .filter_map(|l| l.file_name())
            .map(|n| escape_overlay_path(Path::new(n)))
            .collect(),
    );
    if relative.len() > MOUNT_DATA_MAX {
        return Err(RootfsError::TooManyLayers {
            layers: layers.len(),
            len: relative.len(),
        });
    }
    Ok(OverlayData {
        data: relative,
        chdir: Some(parent.to_path_buf()),
    })
}

/// tmpfs options for a caller's tmpfs mount (Docker's default mode is 1777).
pub fn tmpfs_data(size: Option<u64>, mode: Option<u32>) -> String {
    let mut data = format!("mode={:o}", mode.unwrap_or(0o1777));
    if let Some(size) = size {
        data.push_str(&format!(",size={size}"));
    }
    data
}

/// The caller's mounts in the order to mount them: parents before
/// children (fewer path components first), otherwise as given.
pub fn mount_order(mounts: &[Mount]) -> Vec<&Mount> {
    let mut sorted: Vec<&Mount> = mounts.iter().collect();
    sorted.sort_by_key(|m| Path::new(m.target()).components().count());
    sorted
}

/// What the mount target should be when it has to be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn path_err<'a>(action: &'static str, path: &'a str) -> impl FnOnce(Errno) -> RootfsError + 'a {
    move |source| RootfsError::Path {
        action,
        path: path.to_string(),
        source,
    }
}

fn open_in_root(root: BorrowedFd<'_>, rel: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, if rel.is_empty() { "." } else { rel }, how)
}

/// Opens `path` (absolute, in the container) inside `root`, creating it
/// and its missing parents (as `kind` for the last component); symlinks
/// are followed but never leave `root`: a dangling one gets its target
/// created inside `root`, as runc's `MkdirAll` in the root does.
pub(crate) fn ensure_in_root(
    root: BorrowedFd<'_>,
    path: &str,
    kind: Kind,
) -> Result<OwnedFd, RootfsError> {
    ensure_depth(root, path, kind, 0)
}

/// Symlinks followed while creating, like the kernel's MAXSYMLINKS.
const MAX_SYMLINKS: u32 = 40;

fn ensure_depth(
    root: BorrowedFd<'_>,
    path: &str,
    kind: Kind,
    depth: u32,
) -> Result<OwnedFd, RootfsError> {
    let rel = path.trim_start_matches('/');
    match open_in_root(root, rel) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(path_err("open", path)(e)),
    }
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let mut done = String::new();
    for (i, part) in parts.iter().enumerate() {
        let next = if done.is_empty() {
            part.to_string()
        } else {
            format!("{done}/{part}")
        };
        let last = i + 1 == parts.len();
        let part_kind = if last { kind } else { Kind::Dir };
        match open_in_root(root, &next) {
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let parent = open_in_root(root, &done).map_err(path_err("open", path))?;
                if let Ok(target) = nix::fcntl::readlinkat(&parent, *part) {
                    // A dangling symlink: make what it points to, in the root.
                    if depth >= MAX_SYMLINKS {
                        return Err(path_err("resolve", path)(Errno::ELOOP));
                    }
                    let target = target.to_string_lossy().into_owned();
                    let full = if target.starts_with('/') {
                        target
                    } else {
                        format!("/{done}/{target}")
                    };
                    let cleaned = super::spec::clean_path(&full)
                        .map_err(|_| path_err("resolve", path)(Errno::EINVAL))?;
                    ensure_depth(root, &cleaned, part_kind, depth + 1)?;
                } else {
                    let made = if part_kind == Kind::File {
                        nix::fcntl::openat(
                            &parent,
                            *part,
                            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                            Mode::from_bits_truncate(0o644),
                        )
                        .map(drop)
                    } else {
                        mkdirat(&parent, *part, Mode::from_bits_truncate(0o755))
                    };
                    match made {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(path_err("create", path)(e)),
                    }
                }
            }
            Err(e) => return Err(path_err("open", path)(e)),
        }
        done = next;
    }
    open_in_root(root, rel).map_err(path_err("open", path))
}

fn mount_err<'a>(
    what: &'a str,
    target: &'a str,
    hint: &'static str,
) -> impl FnOnce(Errno) -> RootfsError + 'a {
    move |source| RootfsError::Mount {
        what: what.to_string(),
        target: target.to_string(),
        hint,
        source,
    }
}

/// Mounts a filesystem on `path` inside `root` (created as a directory).
fn mount_fs(
    root: BorrowedFd<'_>,
    path: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    let target = ensure_in_root(root, path, Kind::Dir)?;
    mount(
        Some(fstype),
        fd_path(&target).as_str(),
        Some(fstype),
        flags,
        data,
    )
    .map_err(mount_err(fstype, path, ""))
}

/// What [`setup`] mounts.
pub(crate) struct Plan<'a> {
    pub layers: &'a [PathBuf],
    pub upper: &'a Path,
    pub work: &'a Path,
    pub merged: &'a Path,
    pub mounts: &'a [Mount],
    /// Mount a read-only cgroup2 at /sys/fs/cgroup (the container has a cgroup namespace).
    pub cgroup: bool,
}

/// Builds the root filesystem at `plan.merged`: run in the container's
/// new mount namespace, before [`pivot`].
pub(crate) fn setup(plan: &Plan<'_>) -> Result<(), RootfsError> {
    let none: Option<&str> = None;
    // Nothing mounted from here on may propagate back to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(mount_err(
        "private propagation",
        "/",
        "",
    ))?;

    let overlay = overlay_data(plan.layers, plan.upper, plan.work)?;
    let merged = plan.merged.to_string_lossy();
    if let Some(dir) = &overlay.chdir {
        chdir(dir.as_path()).map_err(|e| RootfsError::Mount {
            what: "overlay".into(),
            target: dir.display().to_string(),
            hint: " (cannot enter the layers' directory)",
            source: e,
        })?;
    }
    mount(
        Some("overlay"),
        plan.merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(overlay.data.as_str()),
    )
    .map_err(|e| RootfsError::Mount {
        what: "overlay".into(),
        target: merged.to_string(),
        hint: if e == Errno::ENODEV {
            " (is the overlay module loaded?)"
        } else {
            ""
        },
        source: e,
    })?;
    let root = nix::fcntl::open(
        plan.merged,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(path_err("open", "/"))?;
    let root = root.as_fd();

    let nosuid_noexec_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs(root, "/proc", "proc", nosuid_noexec_nodev, None)?;
    mount_fs(
        root,
        "/sys",
        "sysfs",
        nosuid_noexec_nodev | MsFlags::MS_RDONLY,
        None,
    )?;
    if plan.cgroup {
        mount_fs(
            root,
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_noexec_nodev | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    setup_dev(root)?;

    for m in mount_order(plan.mounts) {
        match m {
            Mount::Bind {
                source,
                target,
                read_only,
            } => {
                let kind = if source.is_dir() {
                    Kind::Dir
                } else {
                    Kind::File
                };
                let what = source.display().to_string();
                let fd = ensure_in_root(root, target, kind)?;
                mount(
                    Some(source.as_path()),
                    fd_path(&fd).as_str(),
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none,
                )
                .map_err(mount_err(&what, target, ""))?;
                if *read_only {
                    // Re-open: the old fd names what is under the new mount.
                    let fd = ensure_in_root(root, target, kind)?;
                    mount(
                        none,
                        fd_path(&fd).as_str(),
                        none,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                        none,
                    )
                    .map_err(mount_err(
                        &what,
                        target,
                        " (read-only remount)",
                    ))?;
                }
            }
            Mount::Tmpfs { target, size, mode } => {
                let data = tmpfs_data(*size, *mode);
                mount_fs(root, target, "tmpfs", nosuid_noexec_nodev, Some(&data))?;
            }
        }
    }
    Ok(())
}

fn setup_dev(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    mount_fs(
        root,
        "/dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    let dev = ensure_in_root(root, "/dev", Kind::Dir)?;
    // O_PATH fds do not serve *at(2) calls that create; open the directory.
    let dev = nix::fcntl::openat(
        &dev,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(path_err("open", "/dev"))?;
    for &(name, major, minor) in DEVICES {
        let path = format!("/dev/{name}");
        mknodat(
            &dev,
            name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(path_err("make the device", &path))?;
        // Not subject to the umask, which mknod is.
        fchmodat(
            &dev,
            name,
            Mode::from_bits_truncate(0o666),
            FchmodatFlags::NoFollowSymlink,
        )
        .map_err(path_err("chmod", &path))?;
    }
    for &(name, to) in DEV_SYMLINKS {
        symlinkat(to, &dev, name).map_err(path_err("create", name))?;
    }
    for dir in ["pts", "shm"] {
        mkdirat(&dev, dir, Mode::from_bits_truncate(0o755))
            .map_err(path_err("create", "/dev/pts or /dev/shm"))?;
    }
    mount_fs(
        root,
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_fs(
        root,
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        Some("mode=1777,size=65536k"),
    )?;
    Ok(())
}

/// Makes `merged` the root (`pivot_root(".", ".")` and a lazy unmount of
/// the old root, as runc does) and enters it.
pub(crate) fn pivot(merged: &Path) -> Result<(), RootfsError> {
    let err = |e| RootfsError::PivotRoot(merged.to_path_buf(), e);
    chdir(merged).map_err(err)?;
    pivot_root(".", ".").map_err(err)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
    chdir("/").map_err(err)
}

/// After [`pivot`]: masks and write-protects Docker's paths, and makes
/// the root read-only when asked.
pub(crate) fn finish(read_only_root: bool) -> Result<(), RootfsError> {
    let none: Option<&str> = None;
    for &path in MASKED_PATHS {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if meta.is_dir() {
            mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, none)
                .map_err(mount_err("an empty tmpfs", path, " (masking)"))?;
        } else {
            mount(Some("/dev/null"), path, none, MsFlags::MS_BIND, none).map_err(mount_err(
                "/dev/null",
                path,
                " (masking)",
            ))?;
        }
    }
    for &path in READONLY_PATHS {
        match mount(
            Some(path),
            path,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(mount_err(path, path, " (read-only bind)")(e)),
        }
        mount(
            none,
            path,
            none,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            none,
        )
        .map_err(mount_err(path, path, " (read-only remount)"))?;
    }
    if read_only_root {
        mount(
            none,
            "/",
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            none,
        )
        .map_err(mount_err("the root", "/", " (read-only remount)"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lists_layers_top_first() {
        let layers = vec![PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        let d = overlay_data(&layers, Path::new("/s/upper"), Path::new("/s/work")).unwrap();
        assert_eq!(
            d.data,
            "lowerdir=/l/top:/l/bottom,upperdir=/s/upper,workdir=/s/work"
        );
        assert_eq!(d.chdir, None);
    }

    #[test]
    fn overlay_paths_are_escaped() {
        assert_eq!(
            escape_overlay_path(Path::new("/a:b,c\\d")),
            "/a\\:b\\,c\\\\d"
        );
    }

    #[test]
    fn many_layers_go_relative_then_fail_clearly() {
        let store = "/var/lib/berth/images/layers";
        let hex = |i: usize| format!("{i:064x}");
        let layers: Vec<PathBuf> = (0..50)
            .map(|i| PathBuf::from(format!("{store}/{}", hex(i))))
            .collect();
        let d = overlay_data(&layers, Path::new("/s/upper"), Path::new("/s/work")).unwrap();
        assert_eq!(d.chdir.as_deref(), Some(Path::new(store)));
        assert!(d
            .data
            .starts_with(&format!("lowerdir={}:{}", hex(49), hex(48))));
        assert!(d.data.len() <= MOUNT_DATA_MAX);

        let layers: Vec<PathBuf> = (0..70)
            .map(|i| PathBuf::from(format!("{store}/{}", hex(i))))
            .collect();
        let err = overlay_data(&layers, Path::new("/s/upper"), Path::new("/s/work")).unwrap_err();
        assert!(
            matches!(err, RootfsError::TooManyLayers { layers: 70, .. }),
            "{err}"
        );

        // Scattered layers cannot be made relative.
        let layers: Vec<PathBuf> = (0..60)
            .map(|i| PathBuf::from(format!("/x{i}/{}", hex(i))))
            .collect();
        assert!(overlay_data(&layers, Path::new("/u"), Path::new("/w")).is_err());
        assert!(matches!(
            overlay_data(&[], Path::new("/u"), Path::new("/w")),
            Err(RootfsError::NoLayers)
        ));
    }

    #[test]
    fn targets_resolve_inside_the_root_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../outside/x", root.join("etc/rel")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let fd = nix::fcntl::open(
            &root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        ensure_in_root(fd.as_fd(), "/abs/a/b", Kind::Dir).unwrap();
        ensure_in_root(fd.as_fd(), "/etc/rel/file", Kind::File).unwrap();
        ensure_in_root(fd.as_fd(), "/plain/dir", Kind::Dir).unwrap();
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert!(inside.join("a/b").is_dir());
        assert!(root.join("outside/x/file").is_file());
        assert!(root.join("plain/dir").is_dir());
        assert!(!outside.exists());
        let err = ensure_in_root(fd.as_fd(), "/loop/x", Kind::Dir).unwrap_err();
        assert!(err.to_string().contains("/loop/x"), "{err}");
    }

    #[test]
    fn tmpfs_options() {
        assert_eq!(tmpfs_data(None, None), "mode=1777");
        assert_eq!(
            tmpfs_data(Some(1 << 20), Some(0o700)),
            "mode=700,size=1048576"
        );
    }

    #[test]
    fn mounts_parents_first() {
        let m = |t: &str| Mount::Tmpfs {
            target: t.into(),
            size: None,
            mode: None,
        };
        let mounts = vec![m("/a/b/c"), m("/x"), m("/a/b"), m("/a")];
        let order: Vec<&str> = mount_order(&mounts).iter().map(|m| m.target()).collect();
        assert_eq!(order, vec!["/x", "/a", "/a/b", "/a/b/c"]);
    }

    #[test]
    fn dev_is_minimal() {
        assert_eq!(
            dev_entries(),
            vec![
                "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
                "tty", "urandom", "zero"
            ]
        );
    }
}
