//! Network namespaces: naming one, and running netlink work inside one.
//!
//! `setns(2)` changes the namespace of the calling thread only, and a
//! socket stays in the namespace it was created in. So every operation runs
//! on a short-lived worker thread of its own (never the caller's thread,
//! never a runtime the caller might own), which enters the host namespace
//! it was given, and opens sockets in a container's namespace by stepping
//! in and straight back out.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use nix::sched::{setns, CloneFlags};

use crate::netlink::{Netlink, NetlinkError};

/// A network namespace, by a process in it or by a file that pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsRef {
    /// The namespace of process `pid` (`/proc/PID/ns/net`).
    Pid(u32),
    /// A namespace file: `/run/netns/NAME`, a bind mount, `/proc/PID/ns/net`.
    Path(PathBuf),
}

impl NetnsRef {
    /// The file that names the namespace.
    pub fn path(&self) -> PathBuf {
        match self {
            NetnsRef::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            NetnsRef::Path(p) => p.clone(),
        }
    }

    /// Opens the namespace file (the open file keeps the namespace alive).
    pub fn open(&self) -> Result<File, NsError> {
        let path = self.path();
        File::open(&path).map_err(|source| NsError::Open { path, source })
    }
}

/// A namespace could not be opened or entered.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// The namespace file could not be opened.
    #[error("cannot open network namespace {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` failed.
    #[error("cannot enter the {which} network namespace")]
    Enter {
        /// "host", "container" or "worker's own".
        which: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The worker's Tokio runtime could not be built.
    #[error("cannot start the netlink worker's runtime")]
    Runtime(#[source] io::Error),
    /// The worker thread panicked.
    #[error("the netlink worker thread panicked")]
    Panicked,
}

fn enter(fd: BorrowedFd<'_>, which: &'static str) -> Result<(), NsError> {
    setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| NsError::Enter {
        which,
        source: io::Error::from(e),
    })
}

/// What a worker knows: its own namespace, to come back to.
#[derive(Debug)]
pub struct Worker {
    home: File,
}

impl Worker {
    /// Opens a netlink connection inside `ns` (the connection's driver runs
    /// on the worker's runtime, in this thread). The thread steps into `ns`
    /// only while the socket is created.
    pub fn connect_in(&self, ns: BorrowedFd<'_>) -> Result<Netlink, WorkerError> {
        enter(ns, "container")?;
        let conn = Netlink::connect();
        enter(self.home.as_fd(), "worker's own")?;
        Ok(conn?)
    }
}

/// A failure inside a worker: its namespaces or netlink.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Namespaces.
    #[error(transparent)]
    Ns(#[from] NsError),
    /// Netlink.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Runs `f` on a fresh thread that first enters `host` (or stays in the
/// caller's namespace when `None`), with a current-thread Tokio runtime for
/// rtnetlink. Returns what `f` returned.
pub fn run<T, E, F>(host: Option<BorrowedFd<'_>>, f: F) -> Result<T, E>
where
    T: Send,
    E: From<NsError> + Send,
    F: FnOnce(&Worker, &tokio::runtime::Runtime) -> Result<T, E> + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(fd) = host {
                enter(fd, "host")?;
            }
            let home = File::open("/proc/thread-self/ns/net").map_err(|source| NsError::Open {
                path: "/proc/thread-self/ns/net".into(),
                source,
            })?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(NsError::Runtime)?;
            f(&Worker { home }, &rt)
        })
        .join()
        .unwrap_or_else(|_| Err(NsError::Panicked.into()))
    })
}
