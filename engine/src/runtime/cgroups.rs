//! A container's cgroup v2 directory: created under the parent the caller
//! names, with the controllers its limits need enabled along the path, the
//! limits written, and removed (processes killed first) when dropped.
//!
//! Works on any directory tree that looks like cgroupfs, so the logic is
//! tested against a fake one in a temporary directory.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::spec::Resources;

/// The `cpu.max` period Docker uses (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Problems setting up or removing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The path is not inside a cgroup v2 hierarchy.
    #[error("{0} is not inside a cgroup v2 hierarchy (no cgroup.controllers above it)")]
    NotCgroup2(PathBuf),
    /// A limit needs a controller that the hierarchy does not offer.
    #[error(
        "cannot enforce the {limit} limit: the cgroup v2 controller \"{controller}\" is not \
         available in {path} (cgroup.controllers lists: {available}); on a hybrid cgroup \
         set-up it is bound to a cgroup v1 hierarchy"
    )]
    ControllerMissing {
        /// `memory`, `cpus` or `pids`.
        limit: &'static str,
        /// `memory`, `cpu` or `pids`.
        controller: &'static str,
        /// The cgroup whose `cgroup.controllers` lacks it.
        path: PathBuf,
        /// What it lists instead.
        available: String,
    },
    /// A cgroupfs file could not be read or written.
    #[error("cannot {action} {path}")]
    Io {
        /// `read`, `write` or `create`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Processes were still in the cgroup after `cgroup.kill`.
    #[error("cgroup {0} still holds processes 5s after cgroup.kill")]
    Busy(PathBuf),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_err("read", path))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

/// `cpu.max` for a number of CPUs: `"<quota> <period>"` in microseconds,
/// the quota rounded like Docker's NanoCPUs (at least 1000 µs, the kernel's minimum).
pub fn cpu_max(cpus: f64) -> String {
    let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
    format!("{quota} {CPU_PERIOD_US}")
}

/// The controllers `resources` need, with the name of the limit asking.
pub fn required_controllers(resources: &Resources) -> Vec<(&'static str, &'static str)> {
    let mut needed = Vec::new();
    if resources.memory.is_some() {
        needed.push(("memory", "memory"));
    }
    if resources.cpus.is_some() {
        needed.push(("cpus", "cpu"));
    }
    if resources.pids.is_some() {
        needed.push(("pids", "pids"));
    }
    needed
}

/// The files and values that carry `resources`.
pub fn limit_files(resources: &Resources) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    if let Some(m) = resources.memory {
        files.push(("memory.max", m.to_string()));
        // Docker's default --memory-swap is twice --memory: as much swap again.
        files.push(("memory.swap.max", m.to_string()));
    }
    if let Some(c) = resources.cpus {
        files.push(("cpu.max", cpu_max(c)));
    }
    if let Some(p) = resources.pids {
        files.push(("pids.max", p.to_string()));
    }
    files
}

fn is_cgroup_dir(path: &Path) -> bool {
    path.join("cgroup.controllers").is_file()
}

/// A container's cgroup; removed (after killing what is left in it) on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    removed: bool,
}

impl Cgroup {
    /// Creates the cgroup at `path` (and missing parents), enabling the
    /// controllers `resources` need in `cgroup.subtree_control` from the
    /// hierarchy's root down, and writes the limits. A limit whose
    /// controller is missing is an error: nothing is left behind.
    pub fn create(path: &Path, resources: &Resources) -> Result<Cgroup, CgroupError> {
        // The deepest existing ancestor, then the hierarchy root above it.
        let mut existing = path
            .parent()
            .ok_or_else(|| CgroupError::NotCgroup2(path.to_path_buf()))?;
        while !existing.exists() {
            existing = existing
                .parent()
                .ok_or_else(|| CgroupError::NotCgroup2(path.to_path_buf()))?;
        }
        if !is_cgroup_dir(existing) {
            return Err(CgroupError::NotCgroup2(path.to_path_buf()));
        }
        let mut chain: Vec<PathBuf> = vec![existing.to_path_buf()];
        while let Some(parent) = chain[0].parent().filter(|p| is_cgroup_dir(p)) {
            chain.insert(0, parent.to_path_buf());
        }
        let needed = required_controllers(resources);
        // Check before changing anything: the root must offer every controller.
        let root = &chain[0];
        let offered = read(&root.join("cgroup.controllers"))?;
        for &(limit, controller) in &needed {
            if !offered.split_whitespace().any(|c| c == controller) {
                return Err(CgroupError::ControllerMissing {
                    limit,
                    controller,
                    path: root.clone(),
                    available: offered.trim().to_string(),
                });
            }
        }
        // Enable along the existing chain, from the root down.
        for dir in &chain {
            enable(dir, &needed)?;
        }
        // Create the missing directories; each one passes the controllers on.
        let missing: Vec<&Path> = path
            .ancestors()
            .take_while(|p| *p != existing)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let mut cgroup = Cgroup {
            path: path.to_path_buf(),
            removed: true,
        };
        for dir in missing {
            match fs::create_dir(dir) {
                Ok(()) => {}
                // Another container starting at the same time may have
                // made a shared parent (berth/) first.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", dir)(e)),
            }
            if dir == path {
                cgroup.removed = false;
            } else {
                enable(dir, &needed)?;
            }
        }
        let available = read(&path.join("cgroup.controllers"))?;
        for &(limit, controller) in &needed {
            if !available.split_whitespace().any(|c| c == controller) {
                return Err(CgroupError::ControllerMissing {
                    limit,
                    controller,
                    path: path.to_path_buf(),
                    available: available.trim().to_string(),
                });
            }
        }
        for (file, value) in limit_files(resources) {
            let p = path.join(file);
            if file == "memory.swap.max" && !p.exists() {
                continue; // no swap accounting in this kernel
            }
            write(&p, &value)?;
        }
        Ok(cgroup)
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Kills what is left in the cgroup (`cgroup.kill`), waits until it is
    /// empty and removes the directory.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        remove_dir(&self.path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = remove_dir(&self.path) {
                log::warn!(target: "runtime", "{e}");
            }
        }
    }
}

fn enable(dir: &Path, needed: &[(&str, &'static str)]) -> Result<(), CgroupError> {
    if needed.is_empty() {
        return Ok(());
    }
    let control = dir.join("cgroup.subtree_control");
    let enabled = read(&control)?;
    for &(_, controller) in needed {
        if !enabled.split_whitespace().any(|c| c == controller) {
            write(&control, &format!("+{controller}"))?;
        }
    }
    Ok(())
}

/// How many times the kernel's OOM killer killed a process of the cgroup
/// at `path` (`oom_kill` in `memory.events`); 0 when it cannot tell.
pub fn oom_kills(path: &Path) -> u64 {
    fs::read_to_string(path.join("memory.events"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Kills the processes of a cgroup and removes it; a missing one is fine.
pub fn remove_dir(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    let kill = path.join("cgroup.kill");
    if kill.exists() {
        let _ = fs::write(&kill, "1");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if Instant::now() > deadline {
                    return Err(CgroupError::Busy(path.to_path_buf()));
                }
                // Killed processes leave the cgroup within milliseconds;
                // cgroup.events has no blocking read, so poll.
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("remove", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_like_docker() {
        assert_eq!(cpu_max(0.5), "50000 100000");
        assert_eq!(cpu_max(2.0), "200000 100000");
        assert_eq!(cpu_max(1.25), "125000 100000");
        assert_eq!(cpu_max(0.001), "1000 100000");
    }

    #[test]
    fn limit_files_for_each_resource() {
        let r = Resources {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(128),
        };
        assert_eq!(
            limit_files(&r),
            vec![
                ("memory.max", "67108864".to_string()),
                ("memory.swap.max", "67108864".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("pids.max", "128".to_string()),
            ]
        );
        assert!(limit_files(&Resources::default()).is_empty());
    }

    /// A fake cgroupfs root whose children see `controllers` (the fake
    /// does not propagate subtree_control: every level lists them).
    fn fake_root(dir: &Path, controllers: &str) -> PathBuf {
        let root = dir.join("cg");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("cgroup.controllers"), controllers).unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        root
    }

    #[test]
    fn missing_controller_is_an_explicit_error_and_nothing_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_root(tmp.path(), "hugetlb\n");
        let path = root.join("berth/c1");
        let err = Cgroup::create(
            &path,
            &Resources {
                memory: Some(1 << 20),
                ..Resources::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(&err, CgroupError::ControllerMissing { controller: "memory", available, .. } if available == "hugetlb"),
            "{err}"
        );
        assert!(err.to_string().contains("cannot enforce the memory limit"));
        assert!(!root.join("berth").exists());
    }

    #[test]
    fn not_a_cgroup_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Cgroup::create(&tmp.path().join("x/y"), &Resources::default()).unwrap_err();
        assert!(matches!(err, CgroupError::NotCgroup2(_)), "{err}");
    }

    #[test]
    fn enables_controllers_and_writes_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_root(tmp.path(), "cpu memory pids\n");
        let parent = root.join("berth");
        let path = parent.join("c1");
        // The fake kernel: each new directory gets its control files.
        fs::create_dir(&parent).unwrap();
        fs::write(parent.join("cgroup.controllers"), "cpu memory pids").unwrap();
        fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let r = Resources {
            memory: Some(1 << 20),
            cpus: Some(1.5),
            pids: Some(10),
        };
        let cg = Cgroup::create(&path, &r).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        assert_eq!(
            fs::read_to_string(path.join("cpu.max")).unwrap(),
            "150000 100000"
        );
        assert_eq!(fs::read_to_string(path.join("pids.max")).unwrap(), "10");
        assert_eq!(
            fs::read_to_string(path.join("memory.max")).unwrap(),
            "1048576"
        );
        // No memory.swap.max in this fake kernel: not written.
        assert!(!path.join("memory.swap.max").exists());
        // The fake directory holds files, so it cannot be rmdir'ed.
        std::mem::forget(cg);
    }
}
