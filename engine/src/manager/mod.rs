//! berthd's container manager: creates, starts, stops and removes
//! containers, keeps their records on disk, writes their logs, applies
//! restart policies and health checks, and re-adopts the containers that
//! kept running while berthd was down.
//!
//! Layout under the root (`/var/lib/berth`):
//!
//! ```text
//! images/                        the image store
//! volumes/<name>/_data           named volumes (kept when containers go)
//! network/                       the bridge's address pool
//! containers/<id>/config.json    what was asked for (written once, by berthd)
//! containers/<id>/state.json     status, restarts, health (berthd)
//! containers/<id>/monitor.json   the current run: pids, exit (the monitor)
//! containers/<id>/launch.json    the resolved run (berthd, read by the monitor)
//! containers/<id>/<id>-json.log  Docker's json-file logs, rotated to .1, .2, ...
//! containers/<id>/fs/            upper/, work/, rootfs/ of the overlay
//! containers/<id>/net/           hosts and resolv.conf, bind-mounted
//! ```
//!
//! Each run of a container is owned by a small monitor process (see
//! [`monitor`]) that berthd starts by executing a program (berthd itself,
//! with the hidden first argument [`monitor::MONITOR_ARG`]), in its own
//! session: the monitor creates the container with the runtime (so the
//! container's PID 1 is the monitor's child), pumps its stdout and stderr
//! into the log files, waits for its exit and records it in
//! `monitor.json`. berthd and a starting monitor talk over a socket pair in
//! typed messages (`Created{pid}` → berthd wires the network → `Start` →
//! `Started{pid}`); afterwards berthd watches the monitor's pidfd, signals
//! the container through a pidfd, and reads the exit from `monitor.json`.
//! If berthd is killed, the monitors and containers keep running and
//! logging; a new berthd re-adopts them in [`Manager::open`].
//!
//! Restart policies and health checks are applied by berthd (a run is one
//! monitor; a restart is a new monitor), so they pause while berthd is
//! down and resume when it comes back.

pub mod logs;
pub mod monitor;
pub mod names;
pub mod state;
mod supervise;

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::image::{ImageError, ImageStore};
use crate::runtime::RuntimeError;
use crate::workload::{
    Healthcheck, NetworkMode, PortMapping, RestartPolicy, TmpfsMount, VolumeMount,
};

pub use logs::{LogEntry, LogOptions, LogStream, Stream};

/// Docker's default grace period between the stop signal and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default size at which a log file is rotated.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Default number of log files kept (the current one included).
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;

/// A container's id: 64 lowercase hex digits.
pub type ContainerId = String;

/// The manager's failures, each a sentence naming the container.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No container has this id, id prefix or name.
    #[error("no such container: {0}")]
    NotFound(String),
    /// The name is taken by another container.
    #[error("the container name \"{name}\" is already in use by container {id}")]
    NameInUse {
        /// The name.
        name: String,
        /// The container that has it.
        id: String,
    },
    /// The request conflicts with the container's state.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The image is not in the store.
    #[error("no such image: {0}")]
    ImageNotFound(String),
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The runtime failed (set-up, a missing cgroup controller, ...).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The network could not be wired.
    #[error("{0}")]
    Network(String),
    /// A file of the engine's state.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The container's process could not be started (a missing command is
    /// exit code 127, a command that cannot be executed 126).
    #[error("cannot start container {name}: {message}")]
    StartFailed {
        /// Container id.
        id: String,
        /// Container name.
        name: String,
        /// What the runtime said.
        message: String,
        /// Docker's exit code for the failure, when it has one.
        exit_code: Option<i32>,
    },
    /// The container's monitor process failed or vanished.
    #[error("{0}")]
    Monitor(String),
}

/// Where the console mirror of container logs goes (init: the console).
pub type ConsoleSink = Arc<Mutex<dyn io::Write + Send>>;

/// How the manager is set up.
#[derive(Clone)]
pub struct ManagerOptions {
    /// State root (`/var/lib/berth`).
    pub root: PathBuf,
    /// Runtime directory (`/run/berth`).
    pub run_dir: PathBuf,
    /// Parent of the containers' cgroups (`/sys/fs/cgroup/berth`); used
    /// only for containers that ask for limits or when it is a cgroup2 tree.
    pub cgroup_parent: PathBuf,
    /// The bridge for `network = "bridge"`; `None`: such containers fail
    /// to start, saying so.
    pub bridge: Option<netd::bridge::BridgeConfig>,
    /// The program run as a container's monitor, with [`monitor::MONITOR_ARG`]
    /// first; `None` = this executable (berthd), whose `main` must call
    /// [`monitor::dispatch`] first.
    pub monitor_program: Option<PathBuf>,
    /// Log rotation size in bytes.
    pub log_max_size: u64,
    /// Log files kept per container.
    pub log_max_files: u32,
    /// Mirror every container's log lines here, prefixed by its name.
    pub console_logs: Option<ConsoleSink>,
}

impl std::fmt::Debug for ManagerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerOptions")
            .field("root", &self.root)
            .field("run_dir", &self.run_dir)
            .field("cgroup_parent", &self.cgroup_parent)
            .field("bridge", &self.bridge)
            .field("monitor_program", &self.monitor_program)
            .field("log_max_size", &self.log_max_size)
            .field("log_max_files", &self.log_max_files)
            .field("console_logs", &self.console_logs.is_some())
            .finish()
    }
}

impl ManagerOptions {
    /// berthd's defaults under `root`: run dir `/run/berth`, cgroups under
    /// `/sys/fs/cgroup/berth`, the default bridge with its pool in
    /// `root/network`, logs rotated at 10 MB with 3 files.
    pub fn new(root: impl Into<PathBuf>) -> ManagerOptions {
        let root = root.into();
        ManagerOptions {
            bridge: Some(netd::bridge::BridgeConfig::new(root.join("network"))),
            root,
            run_dir: PathBuf::from("/run/berth"),
            cgroup_parent: PathBuf::from("/sys/fs/cgroup/berth"),
            monitor_program: None,
            log_max_size: DEFAULT_LOG_MAX_SIZE,
            log_max_files: DEFAULT_LOG_MAX_FILES,
            console_logs: None,
        }
    }
}

/// What `create` makes (`docker create`'s body, berth's manifest).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct CreateSpec {
    /// Unique name; generated when `None`.
    pub name: Option<String>,
    /// Image reference or id.
    pub image: String,
    /// Replaces the image's Cmd.
    pub cmd: Option<Vec<String>>,
    /// Replaces the image's Entrypoint (and drops its Cmd).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Replaces the image's WorkingDir.
    pub working_dir: Option<String>,
    /// `uid[:gid]` or `name[:group]`.
    pub user: Option<String>,
    /// Defaults to the id's first 12 characters.
    pub hostname: Option<String>,
    /// Published ports (bridge only).
    #[serde(with = "state::ports_serde")]
    pub ports: Vec<PortMapping>,
    /// Named volumes and binds.
    #[serde(with = "state::volumes_serde")]
    pub volumes: Vec<VolumeMount>,
    /// tmpfs mounts.
    #[serde(with = "state::tmpfs_serde")]
    pub tmpfs: Vec<TmpfsMount>,
    /// bridge, host or none.
    #[serde(with = "state::network_serde")]
    pub network: NetworkMode,
    /// Restart policy.
    #[serde(with = "state::restart_serde")]
    pub restart: RestartPolicy,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// Process limit.
    pub pids: Option<u32>,
    /// Read-only root.
    pub read_only: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Signal for `stop`; else the image's StopSignal, else SIGTERM.
    pub stop_signal: Option<i32>,
    /// Grace period for `stop` (default 10 s).
    pub stop_timeout: Option<Duration>,
    /// Health check.
    #[serde(with = "state::health_serde")]
    pub healthcheck: Option<Healthcheck>,
    /// Allocate a terminal (not supported yet: refused at create).
    pub tty: bool,
    /// Keep stdin open (not supported yet: refused at create).
    pub open_stdin: bool,
    /// Remove the container when it exits (and is not restarted).
    pub auto_remove: bool,
}

impl CreateSpec {
    /// The spec of a manifest workload, named `name`.
    pub fn from_workload(name: &str, w: &crate::Workload) -> CreateSpec {
        CreateSpec {
            name: Some(name.to_string()),
            image: w.image.0.clone(),
            cmd: w.command.clone(),
            entrypoint: w.entrypoint.clone(),
            env: w.env.iter().map(|(k, v)| format!("{}={v}", k.0)).collect(),
            working_dir: w.working_dir.as_ref().map(|p| p.0.clone()),
            user: w.user.as_ref().map(|u| match &u.group {
                Some(g) => format!("{}:{g}", u.user),
                None => u.user.clone(),
            }),
            hostname: Some(name.to_string()),
            ports: w.ports.clone(),
            volumes: w.volumes.clone(),
            tmpfs: w.tmpfs.clone(),
            network: w.network,
            restart: w.restart,
            memory: w.memory.map(|m| m.bytes()),
            cpus: w.cpus.map(|c| c.0),
            pids: w.pids.map(|p| p.0),
            read_only: w.read_only,
            labels: w.labels.clone(),
            stop_signal: w.stop_signal.map(|s| s.0),
            stop_timeout: w.stop_grace_period.map(|d| d.get()),
            healthcheck: w.healthcheck.clone(),
            tty: false,
            open_stdin: false,
            auto_remove: false,
        }
    }
}

/// A container's lifecycle state, as Docker names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, never started.
    Created,
    /// Its process runs.
    Running,
    /// Exited; waiting out the backoff before its restart.
    Restarting,
    /// Its process ended.
    Exited,
    /// Broken beyond use (e.g. its record was unreadable).
    Dead,
    /// Being removed.
    Removing,
}

impl Status {
    /// Docker's lowercase name (`running`, `exited`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
            Status::Dead => "dead",
            Status::Removing => "removing",
        }
    }
}

/// A health check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// No verdict yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` consecutive checks failed.
    Unhealthy,
}

impl HealthStatus {
    /// Docker's name (`starting`, `healthy`, `unhealthy`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One health check run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HealthLog {
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its exit code (-1: it could not run or timed out).
    pub exit_code: i32,
    /// The start of its output.
    pub output: String,
}

/// A container's health (only with a health check).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// The verdict.
    pub status: HealthStatus,
    /// Consecutive failed checks.
    pub failing_streak: u32,
    /// The last few checks, oldest first.
    pub log: Vec<HealthLog>,
}

/// What `inspect` shows of a container's state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ContainerState {
    /// Lifecycle state.
    pub status: Status,
    /// Its PID 1 in the host's pid namespace, while it runs.
    pub pid: Option<u32>,
    /// Exit code of the last run (128 + signal when killed).
    pub exit_code: Option<i32>,
    /// When the last run started.
    pub started_at: Option<SystemTime>,
    /// When the last run ended.
    pub finished_at: Option<SystemTime>,
    /// Whether the last run was OOM-killed.
    pub oom_killed: bool,
    /// Why the last start failed or the run ended abnormally.
    pub error: Option<String>,
    /// Health, with a health check.
    pub health: Option<Health>,
}

/// A container as `list` and `inspect` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// 64 hex digits.
    pub id: String,
    /// Unique name (without Docker's leading `/`).
    pub name: String,
    /// The image as asked for.
    pub image: String,
    /// The image's id (`sha256:...`).
    pub image_id: String,
    /// When it was created.
    pub created: SystemTime,
    /// What it was created with.
    pub spec: CreateSpec,
    /// Its state.
    pub state: ContainerState,
    /// Restarts done by its restart policy.
    pub restart_count: u32,
    /// Its address on the bridge while it runs.
    pub ip: Option<Ipv4Addr>,
    /// Its current log file.
    pub log_path: PathBuf,
    /// The resolved command line (entrypoint + cmd) of its last start.
    pub args: Vec<String>,
}

/// What `wait` waits for (Docker's `condition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitCondition {
    /// Until it is not running (at once if it is not).
    #[default]
    NotRunning,
    /// Until its next exit.
    NextExit,
    /// Until it is removed.
    Removed,
}

/// An `exec` into a running container.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecSpec {
    /// argv.
    pub cmd: Vec<String>,
    /// Added `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Overrides the container's user.
    pub user: Option<String>,
    /// Overrides the container's working directory.
    pub working_dir: Option<String>,
    /// Give the process a pipe on stdin ([`ExecHandle::stdin`]).
    pub stdin: bool,
    /// Give the process a terminal ([`ExecHandle::pty`]).
    pub tty: bool,
}

/// A running exec: its streams, and its exit.
#[derive(Debug)]
pub struct ExecHandle {
    process: crate::runtime::ExecProcess,
    /// Its stdin (with [`ExecSpec::stdin`] and no tty).
    pub stdin: Option<std::fs::File>,
    /// Its stdout (without a tty).
    pub stdout: Option<std::fs::File>,
    /// Its stderr (without a tty).
    pub stderr: Option<std::fs::File>,
    /// The terminal's master side (with a tty): read output, write input.
    pub pty: Option<std::fs::File>,
}

impl ExecHandle {
    /// Its pid in the host's pid namespace.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Waits for the exit; the exit code (128 + signal when killed).
    pub fn wait(&self) -> Result<i32, ManagerError> {
        Ok(self.process.wait()?.code)
    }

    /// Sends it a signal.
    pub fn kill(&self, signal: i32) -> Result<(), ManagerError> {
        Ok(self.process.kill(signal)?)
    }
}

/// The container manager, shared by berthd's API threads in an `Arc`.
pub struct Manager {
    inner: Arc<supervise::Inner>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("root", &self.inner.opts.root)
            .finish()
    }
}

impl Manager {
    /// Opens the state under `opts.root`, sets up the bridge (a failure is
    /// kept and reported by each bridge container's start), and re-adopts
    /// the containers: running ones are watched again, exits recorded while
    /// berthd was down are applied (restart policies included).
    pub fn open(opts: ManagerOptions) -> Result<Arc<Manager>, ManagerError> {
        let inner = supervise::Inner::open(opts)?;
        Ok(Arc::new(Manager { inner }))
    }

    /// Waits (up to `timeout`) until the console mirror (`console_logs`)
    /// has copied the last lines of every run that has ended; mirrors of
    /// running containers are not waited for. Whether it got them all.
    pub fn drain_console(&self, timeout: std::time::Duration) -> bool {
        self.inner.drain_console(timeout)
    }

    /// The image store (`root/images`).
    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    /// Layers (diff_ids) that containers use: pass to
    /// [`ImageStore::remove`] so `rmi` keeps them.
    pub fn layers_in_use(&self) -> std::collections::HashSet<crate::image::Digest> {
        self.inner.layers_in_use()
    }

    /// Why bridge containers cannot start, when the bridge failed to come up.
    pub fn bridge_error(&self) -> Option<String> {
        self.inner.bridge_error()
    }

    /// `docker create`: records a container; returns its id.
    pub fn create(&self, spec: CreateSpec) -> Result<ContainerId, ManagerError> {
        supervise::Inner::create(&self.inner, spec)
    }

    /// `docker start`; starting a running container does nothing.
    pub fn start(&self, id_or_name: &str) -> Result<(), ManagerError> {
        supervise::Inner::start(&self.inner, id_or_name)
    }

    /// `docker stop`: the stop signal, `timeout` (default: the container's
    /// or 10 s), then SIGKILL. The restart policy does not restart it.
    pub fn stop(&self, id_or_name: &str, timeout: Option<Duration>) -> Result<(), ManagerError> {
        supervise::Inner::stop(&self.inner, id_or_name, timeout)
    }

    /// `docker restart`: stop (if running), then start.
    pub fn restart(&self, id_or_name: &str, timeout: Option<Duration>) -> Result<(), ManagerError> {
        supervise::Inner::stop(&self.inner, id_or_name, timeout)?;
        supervise::Inner::start(&self.inner, id_or_name)
    }

    /// `docker kill -s`: a Conflict when it is not running.
    pub fn kill(&self, id_or_name: &str, signal: i32) -> Result<(), ManagerError> {
        supervise::Inner::kill(&self.inner, id_or_name, signal)
    }

    /// `docker rm [-f]`: a running container is a Conflict without `force`
    /// (with it, it is killed). Named volumes stay.
    pub fn remove(&self, id_or_name: &str, force: bool) -> Result<(), ManagerError> {
        supervise::Inner::remove(&self.inner, id_or_name, force)
    }

    /// `docker ps [-a]`, newest first.
    pub fn list(&self, all: bool) -> Vec<ContainerInfo> {
        self.inner.list(all)
    }

    /// `docker inspect`.
    pub fn inspect(&self, id_or_name: &str) -> Result<ContainerInfo, ManagerError> {
        self.inner.inspect(id_or_name)
    }

    /// `docker wait`: blocks until `condition`; the exit code.
    pub fn wait(&self, id_or_name: &str, condition: WaitCondition) -> Result<i32, ManagerError> {
        self.inner.wait(id_or_name, condition, None, None)
    }

    /// [`Manager::wait`] that gives up (with a Conflict) once `cancelled`
    /// says so, looked at a few times a second: for a waiter whose client
    /// can go away.
    pub fn wait_cancellable(
        &self,
        id_or_name: &str,
        condition: WaitCondition,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<i32, ManagerError> {
        self.inner
            .wait(id_or_name, condition, None, Some(cancelled))
    }

    /// [`Manager::wait`] for at most `timeout`: a Conflict when it passes.
    pub fn wait_timeout(
        &self,
        id_or_name: &str,
        condition: WaitCondition,
        timeout: Duration,
    ) -> Result<i32, ManagerError> {
        self.inner.wait(id_or_name, condition, Some(timeout), None)
    }

    /// `docker logs`: an iterator of entries; with `follow` it blocks for
    /// new ones and ends when the container stops.
    pub fn logs(&self, id_or_name: &str, opts: LogOptions) -> Result<LogStream, ManagerError> {
        supervise::Inner::logs(&self.inner, id_or_name, opts)
    }

    /// `docker attach` (output only): what the container writes from now
    /// on (everything it wrote before too, with `history`), until its run
    /// ends; made before `start`, it waits for the start.
    pub fn attach(
        &self,
        id_or_name: &str,
        stdout: bool,
        stderr: bool,
        history: bool,
    ) -> Result<LogStream, ManagerError> {
        supervise::Inner::attach(&self.inner, id_or_name, stdout, stderr, history)
    }

    /// `docker exec`: runs a process in the running container.
    pub fn exec(&self, id_or_name: &str, spec: ExecSpec) -> Result<ExecHandle, ManagerError> {
        self.inner.exec(id_or_name, spec)
    }
}
