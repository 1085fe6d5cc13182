//! berth's container runtime: runs one container from image layers, with
//! its own namespaces, an overlay root, a minimal `/dev`, Docker's default
//! capabilities, masked paths and cgroup v2 limits; stops it, reports its
//! exit as Docker does, and execs extra processes into it.
//!
//! The types carry the protocol:
//!
//! ```text
//! ContainerBuilder ──create()──▶ Created ──start()──▶ Container ──exec()──▶ ExecBuilder ──spawn()──▶ ExecProcess
//!                                  │ pid(): wire the network now
//! ```
//!
//! A [`Created`] container is fully set up (rootfs, mounts, user resolved)
//! and waits before `execve`; that is when the caller moves a veth into
//! its network namespace. Dropping a [`Created`] or [`Container`] kills
//! what is left and removes its cgroup; its mounts live in its own mount
//! namespace and vanish with it. The upper directory stays (`docker rm`
//! removes it: [`remove_state`]).
//!
//! ```no_run
//! # fn demo(layers: Vec<std::path::PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use engine::runtime::{resolve_process, ContainerBuilder, Overrides, Rootfs, Stdio};
//!
//! let process = resolve_process(None, &Overrides { cmd: vec!["sleep".into(), "60".into()], ..Default::default() }, "web")?;
//! let created = ContainerBuilder::new("web", Rootfs::new(layers, "/var/lib/berth/containers/web".into()), process)
//!     .hostname("web")
//!     .stdio(Stdio::null()?)
//!     .create()?;
//! // ... wire the bridge into /proc/{created.pid()}/ns/net ...
//! let container = created.start()?;
//! let status = container.stop(libc::SIGTERM, Duration::from_secs(10))?;
//! assert_eq!(status.code, 137); // sleep ignores SIGTERM as PID 1
//! # Ok(()) }
//! ```

pub mod caps;
pub mod cgroups;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod spec;
pub mod user;

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

pub use caps::{CapSet, DOCKER_DEFAULT};
pub use cgroups::{Cgroup, CgroupError};
pub use namespaces::{NamespaceError, NamespaceFds};
pub use process::{ChannelError, ExitStatus, Failure, FailureKind};
pub use rootfs::RootfsError;
pub use spec::{
    default_hostname, exec_process, resolve_process, Mount, Network, Overrides, ProcessSpec,
    Resources, SpecError,
};
pub use user::UserError;

use process::{
    ChildEnd, ExecContext, FromChild, InitContext, ParentEnd, Report, ReportRx, ReportTx, StdioFds,
    ToChild,
};

/// How long a child may take to set up before it is killed.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runtime failures, each naming the container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The process spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The rootfs cannot be made (checked before anything is started).
    #[error("container {id}: cannot prepare the root filesystem")]
    Rootfs {
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: RootfsError,
    },
    /// The state directory cannot be prepared.
    #[error("container {id}: cannot create {path}")]
    StateDir {
        /// Container id.
        id: String,
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Limits were asked for but no cgroup was given.
    #[error("container {id}: resource limits need a cgroup directory")]
    NoCgroup {
        /// Container id.
        id: String,
    },
    /// The cgroup cannot be made or limited.
    #[error("container {id}: cgroup set-up failed")]
    Cgroup {
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: CgroupError,
    },
    /// The namespaces of a running container cannot be opened.
    #[error("container {id}: cannot exec into it")]
    Namespace {
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: NamespaceError,
    },
    /// A process could not be made or signalled.
    #[error("container {id}: {what} failed")]
    Sys {
        /// Container id.
        id: String,
        /// `fork`, `pidfd_open`, `kill`, `waitpid`, ...
        what: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// The parent↔child channel failed.
    #[error("container {id}: lost contact with the container process")]
    Channel {
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: ChannelError,
    },
    /// The child reported a failure (set-up, user, command).
    #[error("container {id}: {}", .failure.message)]
    Child {
        /// Container id.
        id: String,
        /// What the child said.
        failure: Failure,
    },
    /// The child died without saying why.
    #[error("container {id}: the container process exited during set-up")]
    ChildVanished {
        /// Container id.
        id: String,
    },
    /// The process has already exited.
    #[error("container {id} is not running")]
    NotRunning {
        /// Container id.
        id: String,
    },
}

impl RuntimeError {
    /// Docker's exit code for a container that could not start: 127 when
    /// the command is missing, 126 when it cannot be executed.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            RuntimeError::Child { failure, .. } => match failure.kind {
                FailureKind::CommandNotFound => Some(127),
                FailureKind::CommandNotExecutable => Some(126),
                FailureKind::Setup | FailureKind::User => None,
            },
            _ => None,
        }
    }
}

/// A container's standard streams.
#[derive(Debug)]
pub struct Stdio(StdioFds);

impl Stdio {
    /// The caller's descriptors (pipes for the log writer, say); stdin is
    /// the container's `/dev/null` when `None`. Use close-on-exec fds.
    pub fn fds(stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd) -> Stdio {
        Stdio(StdioFds::Fds {
            stdin,
            stdout,
            stderr,
        })
    }

    /// Output to the host's `/dev/null`, no input.
    pub fn null() -> std::io::Result<Stdio> {
        let out = fs::OpenOptions::new().write(true).open("/dev/null")?;
        let err = out.try_clone()?;
        Ok(Stdio::fds(None, out.into(), err.into()))
    }

    /// A terminal made inside the container (`docker run -t`): its master
    /// side is handed back by [`Created::take_pty_master`] /
    /// [`ExecProcess::take_pty_master`].
    pub fn tty() -> Stdio {
        Stdio(StdioFds::Tty)
    }
}

/// The overlay root of a container: the image's layer directories
/// (bottom first, as [`crate::image::Image::layers`]) and the state
/// directory holding `upper/`, `work/` and the mount point `rootfs/`.
#[derive(Debug, Clone)]
pub struct Rootfs {
    layers: Vec<PathBuf>,
    state_dir: PathBuf,
}

impl Rootfs {
    /// The layers and the state directory.
    pub fn new(layers: Vec<PathBuf>, state_dir: PathBuf) -> Rootfs {
        Rootfs { layers, state_dir }
    }

    /// Where the container's writes land.
    pub fn upper_dir(&self) -> PathBuf {
        self.state_dir.join("upper")
    }

    fn work_dir(&self) -> PathBuf {
        self.state_dir.join("work")
    }

    fn merged_dir(&self) -> PathBuf {
        self.state_dir.join("rootfs")
    }
}

/// Removes a container's state directory (its writes included).
pub fn remove_state(state_dir: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(state_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Builds a new container (youki's `InitContainerBuilder`).
#[derive(Debug)]
pub struct ContainerBuilder {
    id: String,
    rootfs: Rootfs,
    process: ProcessSpec,
    hostname: String,
    network: Network,
    mounts: Vec<Mount>,
    read_only: bool,
    cgroup: Option<PathBuf>,
    resources: Resources,
    stdio: Option<Stdio>,
    setup_timeout: Duration,
}

impl ContainerBuilder {
    /// A container `id` running `process` on `rootfs`. Defaults: hostname
    /// = the id's first 12 characters, a private network namespace, no
    /// mounts, no cgroup, stdio to `/dev/null`.
    pub fn new(id: &str, rootfs: Rootfs, process: ProcessSpec) -> ContainerBuilder {
        ContainerBuilder {
            id: id.to_string(),
            rootfs,
            process,
            hostname: default_hostname(id),
            network: Network::Private,
            mounts: Vec::new(),
            read_only: false,
            cgroup: None,
            resources: Resources::default(),
            stdio: None,
            setup_timeout: DEFAULT_SETUP_TIMEOUT,
        }
    }

    /// The container's hostname (Docker: its name, or the id prefix).
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = hostname.to_string();
        self
    }

    /// Private (bridge/none) or the host's network namespace.
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Bind mounts, volume directories and tmpfs mounts.
    pub fn mounts(mut self, mounts: Vec<Mount>) -> Self {
        self.mounts = mounts;
        self
    }

    /// Mount the root read-only (`--read-only`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The container's cgroup directory (e.g. `/sys/fs/cgroup/berth/<id>`,
    /// created and removed by the runtime) and its limits.
    pub fn cgroup(mut self, path: PathBuf, resources: Resources) -> Self {
        self.cgroup = Some(path);
        self.resources = resources;
        self
    }

    /// The standard streams.
    pub fn stdio(mut self, stdio: Stdio) -> Self {
        self.stdio = Some(stdio);
        self
    }

    /// How long set-up may take before the container is killed.
    pub fn setup_timeout(mut self, timeout: Duration) -> Self {
        self.setup_timeout = timeout;
        self
    }

    /// Makes the container's process and sets everything up up to the
    /// `execve`, which waits for [`Created::start`].
    pub fn create(self) -> Result<Created, RuntimeError> {
        let id = self.id.clone();
        spec::check_hostname(&self.hostname)?;
        for m in &self.mounts {
            spec::clean_path(m.target())?;
        }
        // Fail early on what can be checked here.
        rootfs::overlay_data(
            &self.rootfs.layers,
            &self.rootfs.upper_dir(),
            &self.rootfs.work_dir(),
        )
        .map_err(|source| RuntimeError::Rootfs {
            id: id.clone(),
            source,
        })?;
        for dir in [
            self.rootfs.upper_dir(),
            self.rootfs.work_dir(),
            self.rootfs.merged_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(|source| RuntimeError::StateDir {
                id: id.clone(),
                path: dir.clone(),
                source,
            })?;
        }
        if self.resources.any() && self.cgroup.is_none() {
            return Err(RuntimeError::NoCgroup { id });
        }
        let cgroup = match &self.cgroup {
            Some(path) => Some(Cgroup::create(path, &self.resources).map_err(|source| {
                RuntimeError::Cgroup {
                    id: id.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let cgroup_procs = open_procs(&id, cgroup.as_ref())?;
        let stdio = match self.stdio {
            Some(s) => s,
            None => Stdio::null().map_err(|e| RuntimeError::Sys {
                id: id.clone(),
                what: "open /dev/null",
                source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?,
        };
        let upper = self.rootfs.upper_dir();
        let work = self.rootfs.work_dir();
        let merged = self.rootfs.merged_dir();
        let ctx = InitContext {
            process: &self.process,
            hostname: &self.hostname,
            network: self.network,
            rootfs: rootfs::Plan {
                layers: &self.rootfs.layers,
                upper: &upper,
                work: &work,
                merged: &merged,
                mounts: &self.mounts,
                cgroup: cgroup.is_some(),
            },
            read_only: self.read_only,
            cgroup_procs: cgroup_procs.as_ref(),
            stdio: &stdio.0,
        };
        let sys = |what| {
            let id = id.clone();
            move |source| RuntimeError::Sys { id, what, source }
        };
        let chan = |source| RuntimeError::Channel {
            id: id.clone(),
            source,
        };
        let (parent, child): (ParentEnd, ChildEnd) = process::channel().map_err(chan)?;
        let (reports, report_tx): (ReportRx, ReportTx) = process::channel().map_err(chan)?;
        let stage1 = process::spawn_init(&ctx, &child, &report_tx).map_err(sys("fork"))?;
        drop((child, report_tx, stdio, cgroup_procs));
        let pid = wait_forked(&id, &reports, stage1, self.setup_timeout)?;
        let pidfd = process::pidfd_open(pid).map_err(sys("pidfd_open"));
        let mut created = Created {
            handle: Handle {
                id: id.clone(),
                pid,
                pidfd: None,
                status: Mutex::new(None),
                cgroup: Mutex::new(cgroup),
                oom_kills: AtomicU64::new(0),
            },
            chan: parent,
            pty_master: None,
            process: self.process,
        };
        created.handle.pidfd = Some(pidfd?);
        created.pty_master = wait_ready(&id, &created.chan, self.setup_timeout)?;
        Ok(created)
    }
}

fn open_procs(id: &str, cgroup: Option<&Cgroup>) -> Result<Option<OwnedFd>, RuntimeError> {
    cgroup
        .map(|cg| {
            let path = cg.path().join("cgroup.procs");
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map(OwnedFd::from)
                .map_err(|source| RuntimeError::Cgroup {
                    id: id.to_string(),
                    source: CgroupError::Io {
                        action: "open",
                        path,
                        source,
                    },
                })
        })
        .transpose()
}

/// Reads stage 1's report and reaps it.
fn wait_forked(
    id: &str,
    reports: &ReportRx,
    stage1: i32,
    timeout: Duration,
) -> Result<i32, RuntimeError> {
    let got = reports.recv(Some(timeout));
    if got.is_err() {
        let _ = nix::sys::signal::kill(Pid::from_raw(stage1), nix::sys::signal::SIGKILL);
    }
    let _ = waitpid(Pid::from_raw(stage1), None);
    match got {
        Ok(Some((Report::Forked { pid }, _))) => Ok(pid),
        Ok(Some((Report::Failed(failure), _))) => Err(RuntimeError::Child {
            id: id.to_string(),
            failure,
        }),
        Ok(Some((Report::Exited(_), _))) | Ok(None) => {
            Err(RuntimeError::ChildVanished { id: id.to_string() })
        }
        Err(source) => Err(RuntimeError::Channel {
            id: id.to_string(),
            source,
        }),
    }
}

/// Waits for `Ready` (and the pty master before it).
fn wait_ready(
    id: &str,
    chan: &ParentEnd,
    timeout: Duration,
) -> Result<Option<OwnedFd>, RuntimeError> {
    let mut master = None;
    loop {
        match chan.recv(Some(timeout)) {
            Ok(Some((FromChild::Ready, _))) => return Ok(master),
            Ok(Some((FromChild::PtyMaster, fd))) => master = fd,
            Ok(Some((FromChild::Failed(failure), _))) => {
                return Err(RuntimeError::Child {
                    id: id.to_string(),
                    failure,
                })
            }
            Ok(None) => {
                return Err(RuntimeError::ChildVanished { id: id.to_string() });
            }
            Err(source) => {
                return Err(RuntimeError::Channel {
                    id: id.to_string(),
                    source,
                })
            }
        }
    }
}

/// Sends `Start` and waits for the exec (EOF) or its failure.
fn start_child(id: &str, chan: &ParentEnd) -> Result<(), RuntimeError> {
    let chan_err = |source| RuntimeError::Channel {
        id: id.to_string(),
        source,
    };
    chan.send(&ToChild::Start, None).map_err(chan_err)?;
    // execve is quick; a generous bound only guards against a wedged child.
    match chan.recv(Some(DEFAULT_SETUP_TIMEOUT)).map_err(chan_err)? {
        None => Ok(()),
        Some((FromChild::Failed(failure), _)) => Err(RuntimeError::Child {
            id: id.to_string(),
            failure,
        }),
        Some(_) => Err(RuntimeError::ChildVanished { id: id.to_string() }),
    }
}

/// The process side of a container: pid, pidfd, exit status, cgroup.
#[derive(Debug)]
struct Handle {
    id: String,
    pid: i32,
    pidfd: Option<OwnedFd>,
    status: Mutex<Option<ExitStatus>>,
    cgroup: Mutex<Option<Cgroup>>,
    /// The cgroup's OOM kills, read just before it was removed.
    oom_kills: AtomicU64,
}

impl Handle {
    fn status(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill(&self, signal: i32) -> Result<(), RuntimeError> {
        if self.status().is_some() {
            return Err(RuntimeError::NotRunning {
                id: self.id.clone(),
            });
        }
        let Some(pidfd) = &self.pidfd else {
            return Err(RuntimeError::NotRunning {
                id: self.id.clone(),
            });
        };
        match process::pidfd_send_signal(pidfd.as_fd(), signal) {
            Ok(()) => Ok(()),
            // Exited, not yet reaped.
            Err(Errno::ESRCH) => Err(RuntimeError::NotRunning {
                id: self.id.clone(),
            }),
            Err(source) => Err(RuntimeError::Sys {
                id: self.id.clone(),
                what: "kill",
                source,
            }),
        }
    }

    /// Waits up to `timeout` (forever when `None`) for the exit; reaps it,
    /// removes the cgroup, and remembers the status.
    fn wait(&self, timeout: Option<Duration>) -> Result<Option<ExitStatus>, RuntimeError> {
        if let Some(s) = self.status() {
            return Ok(Some(s));
        }
        if let Some(pidfd) = &self.pidfd {
            let exited = process::wait_readable(pidfd.as_fd(), timeout).map_err(|source| {
                RuntimeError::Sys {
                    id: self.id.clone(),
                    what: "poll on the pidfd",
                    source,
                }
            })?;
            if !exited {
                return Ok(None);
            }
        }
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = *status {
            return Ok(Some(s));
        }
        let flags = if self.pidfd.is_some() {
            Some(WaitPidFlag::WNOHANG)
        } else {
            None
        };
        loop {
            match waitpid(Pid::from_raw(self.pid), flags) {
                Ok(ws) => match ExitStatus::from_wait(ws) {
                    Some(s) => {
                        *status = Some(s);
                        break;
                    }
                    // Readable pidfd but not reapable yet: not ours to miss.
                    None if flags.is_some() => return Ok(None),
                    None => {}
                },
                Err(Errno::EINTR) => {}
                Err(source) => {
                    return Err(RuntimeError::Sys {
                        id: self.id.clone(),
                        what: "waitpid",
                        source,
                    })
                }
            }
        }
        drop(status);
        self.remove_cgroup();
        Ok(self.status())
    }

    fn remove_cgroup(&self) {
        let cgroup = self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(cg) = cgroup {
            self.oom_kills
                .store(cgroups::oom_kills(cg.path()), Ordering::SeqCst);
            if let Err(e) = cg.remove() {
                log::warn!(target: "runtime", "container {}: {}", self.id, process::chain(&e));
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.status().is_none() {
            let _ = self.kill(libc::SIGKILL);
            if self.pidfd.is_none() {
                let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), nix::sys::signal::SIGKILL);
            }
            let _ = self.wait(None);
        }
        self.remove_cgroup();
    }
}

/// A container set up and waiting to `execve` its process.
#[derive(Debug)]
pub struct Created {
    handle: Handle,
    chan: ParentEnd,
    pty_master: Option<OwnedFd>,
    process: ProcessSpec,
}

impl Created {
    /// The container's init, in the host's pid namespace: wire its network
    /// namespace (`/proc/<pid>/ns/net`) now.
    pub fn pid(&self) -> i32 {
        self.handle.pid
    }

    /// The master side of the container's terminal (with [`Stdio::tty`]).
    pub fn take_pty_master(&mut self) -> Option<OwnedFd> {
        self.pty_master.take()
    }

    /// Lets the process drop its privileges and `execve`.
    pub fn start(self) -> Result<Container, RuntimeError> {
        start_child(&self.handle.id, &self.chan)?;
        Ok(Container {
            handle: self.handle,
            process: self.process,
        })
    }
}

/// A started container.
#[derive(Debug)]
pub struct Container {
    handle: Handle,
    process: ProcessSpec,
}

impl Container {
    /// The container's id.
    pub fn id(&self) -> &str {
        &self.handle.id
    }

    /// Its init, in the host's pid namespace.
    pub fn pid(&self) -> i32 {
        self.handle.pid
    }

    /// The process it runs.
    pub fn process(&self) -> &ProcessSpec {
        &self.process
    }

    /// Sends `signal` to its init (`docker kill -s`). PID 1 of a pid
    /// namespace only gets the signals it has a handler for, like Docker's.
    pub fn kill(&self, signal: i32) -> Result<(), RuntimeError> {
        self.handle.kill(signal)
    }

    /// Waits for the exit.
    pub fn wait(&self) -> Result<ExitStatus, RuntimeError> {
        self.handle
            .wait(None)?
            .ok_or_else(|| RuntimeError::ChildVanished {
                id: self.handle.id.clone(),
            })
    }

    /// Waits at most `timeout`; `None` if it still runs.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>, RuntimeError> {
        self.handle.wait(Some(timeout))
    }

    /// The exit status if it has exited (reaping it), without blocking.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, RuntimeError> {
        self.handle.wait(Some(Duration::ZERO))
    }

    /// `docker stop`: `signal`, then SIGKILL after `grace`; the exit status.
    pub fn stop(&self, signal: i32, grace: Duration) -> Result<ExitStatus, RuntimeError> {
        if let Some(s) = self.handle.status() {
            return Ok(s);
        }
        match self.handle.kill(signal) {
            Ok(()) | Err(RuntimeError::NotRunning { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Some(s) = self.handle.wait(Some(grace))? {
            return Ok(s);
        }
        match self.handle.kill(libc::SIGKILL) {
            Ok(()) | Err(RuntimeError::NotRunning { .. }) => {}
            Err(e) => return Err(e),
        }
        self.wait()
    }

    /// Whether the kernel's OOM killer killed a process of the container's
    /// cgroup (known once it was waited for, as the cgroup goes then).
    pub fn oom_killed(&self) -> bool {
        self.handle.oom_kills.load(Ordering::SeqCst) > 0
    }

    /// What an exec into this container needs (also after a re-adoption).
    pub fn exec_target(&self) -> ExecTarget {
        ExecTarget {
            id: self.handle.id.clone(),
            pid: self.handle.pid,
            cgroup: self
                .handle
                .cgroup
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|c| c.path().to_path_buf()),
            process: self.process.clone(),
        }
    }

    /// Starts building an exec of `args` into this container.
    pub fn exec(&self, args: Vec<String>) -> ExecBuilder {
        ExecBuilder::new(self.exec_target(), args)
    }
}

/// A running container as an exec sees it.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    /// Container id.
    pub id: String,
    /// Its init, in the host's pid namespace.
    pub pid: i32,
    /// Its cgroup directory.
    pub cgroup: Option<PathBuf>,
    /// Its process (env, user and workdir defaults).
    pub process: ProcessSpec,
}

/// Builds an exec into a running container (youki's `TenantContainerBuilder`).
#[derive(Debug)]
pub struct ExecBuilder {
    target: ExecTarget,
    args: Vec<String>,
    env: Vec<String>,
    user: Option<String>,
    workdir: Option<String>,
    stdio: Option<Stdio>,
}

impl ExecBuilder {
    /// Runs `args` in `target`, with its env, user and workdir.
    pub fn new(target: ExecTarget, args: Vec<String>) -> ExecBuilder {
        ExecBuilder {
            target,
            args,
            env: Vec::new(),
            user: None,
            workdir: None,
            stdio: None,
        }
    }

    /// `-e`: added to (and overriding) the container's env.
    pub fn env(mut self, env: Vec<String>) -> Self {
        self.env = env;
        self
    }

    /// `-u`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    /// `-w`.
    pub fn workdir(mut self, workdir: &str) -> Self {
        self.workdir = Some(workdir.to_string());
        self
    }

    /// The standard streams (default `/dev/null`).
    pub fn stdio(mut self, stdio: Stdio) -> Self {
        self.stdio = Some(stdio);
        self
    }

    /// Starts the process in the container's namespaces and cgroup.
    pub fn spawn(self) -> Result<ExecProcess, RuntimeError> {
        let id = self.target.id.clone();
        let tty = matches!(self.stdio, Some(Stdio(StdioFds::Tty)));
        let process = exec_process(
            &self.target.process,
            self.args,
            &self.env,
            self.user,
            self.workdir,
            tty,
        )?;
        let namespaces =
            NamespaceFds::open(self.target.pid).map_err(|source| RuntimeError::Namespace {
                id: id.clone(),
                source,
            })?;
        let cgroup_procs = match &self.target.cgroup {
            Some(path) => {
                let path = path.join("cgroup.procs");
                Some(
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map(OwnedFd::from)
                        .map_err(|source| RuntimeError::Cgroup {
                            id: id.clone(),
                            source: CgroupError::Io {
                                action: "open",
                                path,
                                source,
                            },
                        })?,
                )
            }
            None => None,
        };
        let stdio = match self.stdio {
            Some(s) => s,
            None => Stdio::null().map_err(|e| RuntimeError::Sys {
                id: id.clone(),
                what: "open /dev/null",
                source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?,
        };
        let ctx = ExecContext {
            process: &process,
            namespaces: &namespaces,
            cgroup_procs: cgroup_procs.as_ref(),
            stdio: &stdio.0,
        };
        let chan = |source| RuntimeError::Channel {
            id: id.clone(),
            source,
        };
        let (parent, child): (ParentEnd, ChildEnd) = process::channel().map_err(chan)?;
        let (reports, report_tx): (ReportRx, ReportTx) = process::channel().map_err(chan)?;
        let monitor =
            process::spawn_exec(&ctx, &child, &report_tx).map_err(|source| RuntimeError::Sys {
                id: id.clone(),
                what: "fork",
                source,
            })?;
        drop((child, report_tx, stdio, cgroup_procs, namespaces));
        let mut exec = ExecProcess {
            id: id.clone(),
            monitor,
            pid: 0,
            pidfd: None,
            reports,
            status: Mutex::new(None),
            pty_master: None,
            monitor_reaped: AtomicBool::new(false),
        };
        let got = exec.reports.recv(Some(DEFAULT_SETUP_TIMEOUT));
        match got {
            Ok(Some((Report::Forked { pid }, _))) => exec.pid = pid,
            Ok(Some((Report::Failed(failure), _))) => {
                exec.reap_monitor();
                return Err(RuntimeError::Child { id, failure });
            }
            Ok(_) => {
                exec.reap_monitor();
                return Err(RuntimeError::ChildVanished { id });
            }
            Err(source) => {
                let _ = nix::sys::signal::kill(Pid::from_raw(monitor), nix::sys::signal::SIGKILL);
                exec.reap_monitor();
                return Err(RuntimeError::Channel { id, source });
            }
        }
        // The process waits for Start, so the pid cannot have been reused.
        exec.pidfd = process::pidfd_open(exec.pid).ok();
        exec.pty_master = wait_ready(&id, &parent, DEFAULT_SETUP_TIMEOUT)?;
        start_child(&id, &parent)?;
        Ok(exec)
    }
}

/// A process exec'd into a container. Dropping it kills it if it runs.
#[derive(Debug)]
pub struct ExecProcess {
    id: String,
    /// Stage 1, the process's reaper.
    monitor: i32,
    pid: i32,
    pidfd: Option<OwnedFd>,
    reports: ReportRx,
    status: Mutex<Option<ExitStatus>>,
    pty_master: Option<OwnedFd>,
    monitor_reaped: AtomicBool,
}

impl ExecProcess {
    /// The process, in the host's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The master side of its terminal (with [`Stdio::tty`]).
    pub fn take_pty_master(&mut self) -> Option<OwnedFd> {
        self.pty_master.take()
    }

    /// Sends it a signal.
    pub fn kill(&self, signal: i32) -> Result<(), RuntimeError> {
        let not_running = || RuntimeError::NotRunning {
            id: self.id.clone(),
        };
        if self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Err(not_running());
        }
        let pidfd = self.pidfd.as_ref().ok_or_else(not_running)?;
        process::pidfd_send_signal(pidfd.as_fd(), signal).map_err(|source| match source {
            Errno::ESRCH => not_running(),
            source => RuntimeError::Sys {
                id: self.id.clone(),
                what: "kill",
                source,
            },
        })
    }

    /// Waits for the exit.
    pub fn wait(&self) -> Result<ExitStatus, RuntimeError> {
        self.wait_timeout_inner(None)?
            .ok_or_else(|| RuntimeError::ChildVanished {
                id: self.id.clone(),
            })
    }

    /// Waits at most `timeout`; `None` if it still runs.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>, RuntimeError> {
        self.wait_timeout_inner(Some(timeout))
    }

    fn wait_timeout_inner(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<ExitStatus>, RuntimeError> {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = *status {
            return Ok(Some(s));
        }
        match self.reports.recv(timeout) {
            Ok(Some((Report::Exited(s), _))) => {
                *status = Some(s);
                drop(status);
                self.reap_monitor();
                Ok(Some(s))
            }
            Ok(Some((Report::Failed(failure), _))) => {
                self.reap_monitor();
                Err(RuntimeError::Child {
                    id: self.id.clone(),
                    failure,
                })
            }
            Ok(_) => {
                self.reap_monitor();
                Err(RuntimeError::ChildVanished {
                    id: self.id.clone(),
                })
            }
            Err(ChannelError::Timeout(_)) => Ok(None),
            Err(source) => Err(RuntimeError::Channel {
                id: self.id.clone(),
                source,
            }),
        }
    }

    fn reap_monitor(&self) {
        if self.monitor_reaped.swap(true, Ordering::SeqCst) {
            return;
        }
        while let Err(Errno::EINTR) = waitpid(Pid::from_raw(self.monitor), None) {}
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        let done = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !done {
            let _ = self.kill(libc::SIGKILL);
            if self.wait().is_err() && !self.monitor_reaped.load(Ordering::SeqCst) {
                let _ =
                    nix::sys::signal::kill(Pid::from_raw(self.monitor), nix::sys::signal::SIGKILL);
                self.reap_monitor();
            }
        }
    }
}
