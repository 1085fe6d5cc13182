//! Namespaces: which ones a container gets, joining a running container's
//! for `exec`, and bringing up `lo` in a new network namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};

use super::spec::Network;

/// Problems with namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// `/proc/<pid>/ns/<kind>` could not be opened.
    #[error("cannot open /proc/{pid}/ns/{kind}")]
    Open {
        /// The container's pid.
        pid: i32,
        /// `pid`, `mnt`, ...
        kind: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` failed.
    #[error("cannot join the container's {kind} namespace")]
    Join {
        /// `pid`, `mnt`, ...
        kind: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// `unshare(2)` failed.
    #[error("cannot create a new {kind} namespace")]
    Unshare {
        /// Which namespace.
        kind: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// `lo` could not be brought up.
    #[error("cannot bring up the loopback interface")]
    Loopback(#[source] Errno),
}

/// The namespaces a new container's init is cloned into (the cgroup
/// namespace is made later, after it has joined its cgroup, so that its
/// cgroup is the namespace's root).
pub fn clone_flags(network: Network) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if network == Network::Private {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// The namespaces an exec joins after the pid namespace, in order; the
/// mount namespace last, as it changes the root.
const JOIN_ORDER: &[(&str, CloneFlags)] = &[
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Open handles on a running container's namespaces.
#[derive(Debug)]
pub struct NamespaceFds {
    pid_ns: OwnedFd,
    others: Vec<(&'static str, CloneFlags, OwnedFd)>,
}

impl NamespaceFds {
    /// Opens the namespaces of process `pid`.
    pub fn open(pid: i32) -> Result<NamespaceFds, NamespaceError> {
        let open = |kind: &'static str| {
            File::open(format!("/proc/{pid}/ns/{kind}"))
                .map(OwnedFd::from)
                .map_err(|source| NamespaceError::Open { pid, kind, source })
        };
        let pid_ns = open("pid")?;
        let mut others = Vec::new();
        for &(kind, flag) in JOIN_ORDER {
            others.push((kind, flag, open(kind)?));
        }
        Ok(NamespaceFds { pid_ns, others })
    }

    /// The raw fds, to keep open across the fork.
    pub(crate) fn raw_fds(&self) -> Vec<i32> {
        std::iter::once(self.pid_ns.as_raw_fd())
            .chain(self.others.iter().map(|(_, _, fd)| fd.as_raw_fd()))
            .collect()
    }

    /// Joins the pid namespace: it applies to the children made after.
    pub(crate) fn join_pid(&self) -> Result<(), NamespaceError> {
        setns(self.pid_ns.as_fd(), CloneFlags::CLONE_NEWPID).map_err(|source| {
            NamespaceError::Join {
                kind: "pid",
                source,
            }
        })
    }

    /// Joins the others (cgroup, ipc, uts, net, then mnt). The process
    /// must be single-threaded and already in the container's cgroup.
    pub(crate) fn join_others(&self) -> Result<(), NamespaceError> {
        for (kind, flag, fd) in &self.others {
            setns(fd.as_fd(), *flag).map_err(|source| NamespaceError::Join { kind, source })?;
        }
        Ok(())
    }
}

/// Makes a new cgroup namespace rooted at the current cgroup.
pub(crate) fn unshare_cgroup() -> Result<(), NamespaceError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|source| NamespaceError::Unshare {
        kind: "cgroup",
        source,
    })
}

/// Sets `IFF_UP` on `lo` (what Docker's `none` network gives).
pub(crate) fn loopback_up() -> Result<(), NamespaceError> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let sock = Errno::result(sock).map_err(NamespaceError::Loopback)?;
    // SAFETY: `sock` is a fresh descriptor nobody else owns.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into
    // `req`, a live ifreq.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) };
    Errno::result(r).map_err(NamespaceError::Loopback)?;
    // SAFETY: the flags member of the union was just written by the kernel.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, a live ifreq.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) };
    Errno::result(r).map_err(NamespaceError::Loopback)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_network_keeps_the_hosts_netns() {
        assert!(clone_flags(Network::Private).contains(CloneFlags::CLONE_NEWNET));
        let host = clone_flags(Network::Host);
        assert!(!host.contains(CloneFlags::CLONE_NEWNET));
        assert!(host.contains(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS));
    }
}
