//! The manager's body: the table of containers, starting a run through a
//! monitor, watching it, restart policies with backoff, health checks,
//! and re-adoption on open.
//!
//! Locks: `Inner::table` (ids and names) is taken before a container's
//! `op` (one lifecycle operation at a time: start, stop, remove, a policy
//! restart), which is taken before its `live` state. Threads that wait
//! (watchers, restart timers, health checks, `wait`) only take `live`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as StdStdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use netd::bridge::{AttachRequest, Bridge, NetnsRef, Port, Proto};

use super::logs::{LogOptions, LogStream};
use super::monitor::{self, FromMonitor, ToMonitor, MONITOR_ARG};
use super::names::{self, Lookup};
use super::state::{
    process_alive, process_start_time, read_json, write_json, ContainerConfig, ExitRecord, Launch,
    LaunchMount, MonitorRecord, StateRecord,
};
use super::{
    ContainerInfo, ContainerState, CreateSpec, ExecHandle, ExecSpec, Health, HealthLog,
    HealthStatus, ManagerError, ManagerOptions, Status, WaitCondition, DEFAULT_STOP_TIMEOUT,
};
use crate::image::{Digest, ImageError, ImageStore};
use crate::runtime::process::{pidfd_open, pidfd_send_signal, wait_readable};
use crate::runtime::{resolve_process, ExecBuilder, ExecTarget, Overrides, ProcessSpec, Stdio};
use crate::workload::{NetworkMode, Protocol, RestartPolicy, VolumeSource};

/// First restart delay; doubled each restart.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest restart delay (Docker's).
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run this long resets the backoff.
pub const STABLE_RUN: Duration = Duration::from_secs(10);
/// How long a monitor may take to set a container up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a cancellable wait checks whether its waiter went away.
const CANCEL_POLL: Duration = Duration::from_millis(250);
/// Health check results kept.
const HEALTH_LOG: usize = 5;
/// Output kept per health check.
const HEALTH_OUTPUT: usize = 4096;

pub(super) struct Inner {
    pub(super) opts: ManagerOptions,
    pub(super) images: ImageStore,
    bridge: Result<Bridge, String>,
    table: Mutex<Table>,
    /// Console mirrors still copying a run's log, by container and run
    /// (see `drain_console`).
    mirrors: Arc<(Mutex<Vec<MirrorOf>>, Condvar)>,
    me: Weak<Inner>,
}

/// A console mirror's container and run (its `starts`).
type MirrorOf = (Arc<Ctr>, u64);

#[derive(Default)]
struct Table {
    by_id: BTreeMap<String, Arc<Ctr>>,
    names: BTreeMap<String, String>,
}

struct Ctr {
    config: ContainerConfig,
    dir: PathBuf,
    op: Mutex<()>,
    live: Mutex<Live>,
    cv: Condvar,
}

struct Live {
    rec: StateRecord,
    run: Option<Run>,
    ip: Option<Ipv4Addr>,
    process: Option<ProcessSpec>,
    cgroup: Option<PathBuf>,
    /// Exits seen, for `wait(NextExit)`.
    exits: u64,
    /// Runs started, so per-run threads know when theirs is over.
    starts: u64,
    /// Bumped by manual start/stop/remove: cancels a pending policy restart.
    gen: u64,
    backoff: Duration,
    removed: bool,
}

struct Run {
    container_pid: u32,
    pidfd: OwnedFd,
    started: Instant,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ManagerError {
    let path = path.to_path_buf();
    move |source| ManagerError::Io {
        action,
        path,
        source,
    }
}

impl Ctr {
    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.config.id))
    }

    fn save(&self, live: &Live) {
        if live.removed {
            return;
        }
        if let Err(e) = write_json(&self.dir.join("state.json"), &live.rec) {
            log::warn!(target: "manager", "container {}: {}", self.config.id, chain(&e));
        }
    }

    fn running(live: &Live) -> bool {
        live.run.is_some()
    }

    /// Waits up to `timeout` while `cond` holds (every change of `live`
    /// is announced on `cv`); whether it still holds.
    fn wait_while(&self, timeout: Duration, mut cond: impl FnMut(&Live) -> bool) -> bool {
        let live = lock(&self.live);
        if timeout.is_zero() || !cond(&live) {
            return cond(&live);
        }
        match self.cv.wait_timeout_while(live, timeout, |l| cond(l)) {
            Ok((live, _)) => cond(&live),
            Err(poisoned) => cond(&poisoned.into_inner().0),
        }
    }
}

impl Inner {
    pub(super) fn open(opts: ManagerOptions) -> Result<Arc<Inner>, ManagerError> {
        let containers = opts.root.join("containers");
        for d in [&opts.root, &containers, &opts.root.join("volumes")] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        let images = ImageStore::open(&opts.root.join("images"))?;
        let bridge = match &opts.bridge {
            Some(cfg) => Bridge::ensure(cfg.clone()).map_err(|e| {
                let msg = format!("the bridge network is not available: {}", chain(&e));
                log::warn!(target: "manager", "{msg}");
                msg
            }),
            None => Err("no bridge network is configured".to_string()),
        };
        let inner = Arc::new_cyclic(|me| Inner {
            opts,
            images,
            bridge,
            table: Mutex::new(Table::default()),
            mirrors: Arc::default(),
            me: me.clone(),
        });
        inner.adopt_all(&containers)?;
        Ok(inner)
    }

    fn arc(&self) -> Option<Arc<Inner>> {
        self.me.upgrade()
    }

    pub(super) fn bridge_error(&self) -> Option<String> {
        self.bridge.as_ref().err().cloned()
    }

    pub(super) fn layers_in_use(&self) -> HashSet<Digest> {
        lock(&self.table)
            .by_id
            .values()
            .flat_map(|c| c.config.diff_ids.iter())
            .filter_map(|d| {
                d.strip_prefix("sha256:")
                    .and_then(|h| Digest::from_hex(h).ok())
            })
            .collect()
    }

    fn find(&self, key: &str) -> Result<Arc<Ctr>, ManagerError> {
        let table = lock(&self.table);
        let ids: Vec<&str> = table.by_id.keys().map(String::as_str).collect();
        match names::lookup(&table.names, &ids, key) {
            Lookup::Found(id) => table
                .by_id
                .get(&id)
                .cloned()
                .ok_or_else(|| ManagerError::NotFound(key.to_string())),
            Lookup::NotFound => Err(ManagerError::NotFound(key.to_string())),
            Lookup::Ambiguous(n) => Err(ManagerError::InvalidArgument(format!(
                "container reference \"{key}\" is ambiguous: it matches {n} containers"
            ))),
        }
    }

    // ---- create ------------------------------------------------------------

    pub(super) fn create(this: &Arc<Inner>, spec: CreateSpec) -> Result<String, ManagerError> {
        if spec.tty || spec.open_stdin {
            return Err(ManagerError::InvalidArgument(
                "a terminal or an open stdin for the container's own process is not supported; use exec -i/-t".into(),
            ));
        }
        if spec.network != NetworkMode::Bridge && !spec.ports.is_empty() {
            return Err(ManagerError::InvalidArgument(
                "published ports need the bridge network".into(),
            ));
        }
        let limits: Vec<&str> = [
            ("memory", spec.memory.is_some()),
            ("cpus", spec.cpus.is_some()),
            ("pids", spec.pids.is_some()),
        ]
        .iter()
        .filter_map(|(name, asked)| asked.then_some(*name))
        .collect();
        // Refused here rather than at start, so no container is left behind.
        if !limits.is_empty() && !on_cgroup2(&this.opts.cgroup_parent) {
            return Err(ManagerError::InvalidArgument(format!(
                "cannot enforce the {} limit: {} is not on a cgroup v2 hierarchy, which berth \
                 needs for limits (this host has cgroup v1 or a hybrid set-up)",
                limits.join(" and "),
                this.opts.cgroup_parent.display()
            )));
        }
        if let Some(h) = &spec.hostname {
            crate::runtime::spec::check_hostname(h)
                .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
        }
        for m in spec
            .volumes
            .iter()
            .map(|v| v.target.as_str())
            .chain(spec.tmpfs.iter().map(|t| t.target.as_str()))
        {
            crate::runtime::spec::clean_path(m)
                .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
        }
        let image = this.images.resolve(&spec.image).map_err(|e| match e {
            ImageError::NotFound(r) => ManagerError::ImageNotFound(r),
            e => ManagerError::Image(e),
        })?;
        // Check that the command resolves now, as Docker does at create.
        let image_config = image.config.config().as_ref();
        resolve_process(image_config, &overrides(&spec), "check")
            .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
        let image_stop_signal = image_config
            .and_then(|c| c.stop_signal().as_deref())
            .and_then(|s| s.parse::<crate::workload::Signal>().ok())
            .map(|s| s.0);
        let id = names::new_id().map_err(io_err("read", Path::new("/dev/urandom")))?;
        let mut table = lock(&this.table);
        let name = match &spec.name {
            Some(n) => {
                let n = names::check_name(n).map_err(ManagerError::InvalidArgument)?;
                if let Some(other) = table.names.get(&n) {
                    return Err(ManagerError::NameInUse {
                        name: n,
                        id: other.clone(),
                    });
                }
                n
            }
            None => names::generate_name(&id, |n| table.names.contains_key(n)),
        };
        let dir = this.opts.root.join("containers").join(&id);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // The log exists from creation, so an attach made before the start
        // holds it open and reads every line even if the container is gone
        // (auto-removed) by the time the reader gets to it.
        let log = dir.join(format!("{id}-json.log"));
        fs::File::create(&log).map_err(io_err("create", &log))?;
        let config = ContainerConfig {
            id: id.clone(),
            name: name.clone(),
            created: SystemTime::now(),
            image_id: image.id.to_string(),
            diff_ids: image.diff_ids.iter().map(ToString::to_string).collect(),
            image_stop_signal,
            spec,
        };
        let rec = StateRecord::default();
        let saved = write_json(&dir.join("config.json"), &config)
            .and_then(|()| write_json(&dir.join("state.json"), &rec));
        if let Err(e) = saved {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        let ctr = Arc::new(Ctr::new(config, dir, rec));
        table.names.insert(name, id.clone());
        table.by_id.insert(id.clone(), ctr);
        Ok(id)
    }

    // ---- start -------------------------------------------------------------

    pub(super) fn start(this: &Arc<Inner>, key: &str) -> Result<(), ManagerError> {
        let ctr = this.find(key)?;
        let _op = lock(&ctr.op);
        {
            let mut live = lock(&ctr.live);
            if live.removed || live.rec.status == Status::Removing {
                return Err(ManagerError::Conflict(format!(
                    "container {} is being removed",
                    ctr.config.name
                )));
            }
            if Ctr::running(&live) {
                return Ok(());
            }
            live.gen += 1;
            live.rec.manually_stopped = false;
            live.rec.restart_count = 0;
            live.backoff = BACKOFF_START;
        }
        this.launch(&ctr)
    }

    /// One run: monitor, network, start; then the watcher.
    fn launch(&self, ctr: &Arc<Ctr>) -> Result<(), ManagerError> {
        let result = self.launch_inner(ctr);
        if let Err(e) = &result {
            let mut live = lock(&ctr.live);
            live.rec.error = Some(chain(e));
            if let ManagerError::StartFailed {
                exit_code: Some(code),
                ..
            } = e
            {
                live.rec.exit_code = Some(*code);
            }
            if live.rec.status != Status::Created {
                live.rec.status = Status::Exited;
                live.rec.finished_at = Some(SystemTime::now());
            }
            ctr.save(&live);
            ctr.cv.notify_all();
        }
        result
    }

    fn launch_inner(&self, ctr: &Arc<Ctr>) -> Result<(), ManagerError> {
        let cfg = &ctr.config;
        let spec = &cfg.spec;
        let id = &cfg.id;
        if spec.network == NetworkMode::Bridge {
            if let Err(why) = &self.bridge {
                return Err(ManagerError::Network(format!(
                    "cannot start container {}: {why}",
                    cfg.name
                )));
            }
        }
        let image = resolve_image_id(&self.images, &cfg.image_id).map_err(|e| match e {
            ImageError::NotFound(r) => ManagerError::ImageNotFound(r),
            e => ManagerError::Image(e),
        })?;
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| crate::runtime::default_hostname(id));
        let process = resolve_process(image.config.config().as_ref(), &overrides(spec), &hostname)
            .map_err(|e| ManagerError::InvalidArgument(e.to_string()))?;
        let mounts = self.mounts(ctr)?;
        let cgroup = self.cgroup_for(spec, id);
        let monitor_path = ctr.dir.join("monitor.json");
        match fs::remove_file(&monitor_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove", &monitor_path)(e))
            }
            _ => {}
        }
        let launch = Launch {
            id: id.clone(),
            layers: image.layers.clone(),
            fs_dir: ctr.dir.join("fs"),
            process: process.clone(),
            hostname: hostname.clone(),
            host_network: spec.network == NetworkMode::Host,
            mounts,
            read_only: spec.read_only,
            cgroup: cgroup.clone(),
            memory: spec.memory,
            cpus: spec.cpus,
            pids: spec.pids,
            log_path: ctr.log_path(),
            log_max_size: self.opts.log_max_size,
            log_max_files: self.opts.log_max_files,
            monitor_path: monitor_path.clone(),
        };
        let launch_path = ctr.dir.join("launch.json");
        write_json(&launch_path, &launch)?;

        let (mut ours, theirs) =
            UnixStream::pair().map_err(io_err("make a socket pair for", &ctr.dir))?;
        let mut child = self.spawn_monitor(ctr, &launch_path, theirs)?;
        ours.set_read_timeout(Some(SETUP_TIMEOUT))
            .map_err(io_err("set a timeout on the monitor socket of", &ctr.dir))?;
        let mut reader = BufReader::new(
            ours.try_clone()
                .map_err(io_err("clone the monitor socket of", &ctr.dir))?,
        );
        let lost = |e: String| {
            ManagerError::Monitor(format!("container {}: the monitor failed: {e}", cfg.name))
        };
        let failed = |message: String, exit_code: Option<i32>| ManagerError::StartFailed {
            id: id.clone(),
            name: cfg.name.clone(),
            message,
            exit_code,
        };
        let abort = |child: &mut Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        let pid = match monitor::recv::<FromMonitor>(&mut reader) {
            Ok(Some(FromMonitor::Created { pid })) => pid,
            Ok(Some(FromMonitor::Failed { message, exit_code })) => {
                let _ = child.wait();
                return Err(failed(message, exit_code));
            }
            Ok(other) => {
                abort(&mut child);
                return Err(lost(format!(
                    "unexpected answer {other:?} (see {}/monitor.log)",
                    ctr.dir.display()
                )));
            }
            Err(e) => {
                abort(&mut child);
                return Err(lost(e.to_string()));
            }
        };
        let ip = match (spec.network, &self.bridge) {
            (NetworkMode::Bridge, Ok(bridge)) => {
                let req = AttachRequest {
                    container_id: id.clone(),
                    name: cfg.name.clone(),
                    aliases: [hostname.clone(), crate::runtime::default_hostname(id)]
                        .into_iter()
                        .filter(|a| *a != cfg.name)
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    netns: NetnsRef::Pid(pid),
                    ports: spec.ports.iter().map(port).collect(),
                    dns: Vec::new(),
                    etc_dir: Some(ctr.dir.join("net")),
                };
                match bridge.attach(&req) {
                    Ok(a) => Some(a.ip),
                    Err(e) => {
                        let _ = monitor::send(&mut ours, &ToMonitor::Abort);
                        abort(&mut child);
                        let _ = bridge.detach(id);
                        return Err(ManagerError::Network(format!(
                            "cannot attach container {} to the bridge: {}",
                            cfg.name,
                            chain(&e)
                        )));
                    }
                }
            }
            _ => None,
        };
        let detach = || {
            if ip.is_some() {
                self.detach(ctr);
            }
        };
        // Nothing the container writes can be stamped earlier than this.
        let before_start = SystemTime::now();
        if let Err(e) = monitor::send(&mut ours, &ToMonitor::Start) {
            abort(&mut child);
            detach();
            return Err(lost(e.to_string()));
        }
        let started_at = match monitor::recv::<FromMonitor>(&mut reader) {
            Ok(Some(FromMonitor::Started { started_at, .. })) => started_at,
            Ok(Some(FromMonitor::Failed { message, exit_code })) => {
                let _ = child.wait();
                detach();
                return Err(failed(message, exit_code));
            }
            Ok(other) => {
                abort(&mut child);
                detach();
                return Err(lost(format!("unexpected answer {other:?}")));
            }
            Err(e) => {
                abort(&mut child);
                detach();
                return Err(lost(e.to_string()));
            }
        };
        let pidfd = match pidfd_open(pid as i32) {
            Ok(fd) => fd,
            Err(e) => {
                // It exited already: the watcher records it.
                log::debug!(target: "manager", "container {id}: pidfd_open: {e}");
                match pidfd_open(child.id() as i32) {
                    Ok(fd) => fd,
                    Err(e) => return Err(lost(format!("pidfd_open: {e}"))),
                }
            }
        };
        let starts = {
            let mut live = lock(&ctr.live);
            live.rec.status = Status::Running;
            live.rec.started_at = Some(started_at);
            live.rec.exit_code = Some(0);
            live.rec.error = None;
            live.rec.oom_killed = false;
            live.rec.args = process.args.clone();
            live.rec.ip = ip;
            live.rec.health = spec.healthcheck.as_ref().map(|_| Health {
                status: HealthStatus::Starting,
                failing_streak: 0,
                log: Vec::new(),
            });
            live.ip = ip;
            live.process = Some(process);
            live.cgroup = cgroup;
            live.run = Some(Run {
                container_pid: pid,
                pidfd,
                started: Instant::now(),
            });
            live.starts += 1;
            ctr.save(&live);
            ctr.cv.notify_all();
            live.starts
        };
        self.spawn_run_threads(ctr, Watch::Child(child), starts, Some(before_start));
        Ok(())
    }

    fn spawn_monitor(
        &self,
        ctr: &Ctr,
        launch_path: &Path,
        theirs: UnixStream,
    ) -> Result<Child, ManagerError> {
        let program = match &self.opts.monitor_program {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(io_err("find the executable", Path::new("/proc/self/exe")))?,
        };
        let log_path = ctr.dir.join("monitor.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err("open", &log_path))?;
        let fd: OwnedFd = theirs.into();
        let raw = fd.as_raw_fd();
        let mut cmd = Command::new(&program);
        cmd.arg(MONITOR_ARG)
            .arg(launch_path)
            .stdin(StdStdio::null())
            .stdout(StdStdio::null())
            .stderr(log);
        // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if raw == monitor::CONTROL_FD {
                    if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, monitor::CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            ManagerError::Monitor(format!(
                "cannot run the monitor {} for container {}: {e}",
                program.display(),
                ctr.config.name
            ))
        })?;
        drop(fd);
        Ok(child)
    }

    fn cgroup_for(&self, spec: &CreateSpec, id: &str) -> Option<PathBuf> {
        let limits = spec.memory.is_some() || spec.cpus.is_some() || spec.pids.is_some();
        let parent = &self.opts.cgroup_parent;
        // Without limits a cgroup is only used where cgroup v2 is there to
        // take it (not on a hybrid host's tmpfs).
        (limits || on_cgroup2(parent)).then(|| parent.join(id))
    }

    fn mounts(&self, ctr: &Ctr) -> Result<Vec<LaunchMount>, ManagerError> {
        let spec = &ctr.config.spec;
        let mut out = Vec::new();
        let etc = |name: &str| Path::new("/etc").join(name);
        match spec.network {
            NetworkMode::Bridge => {
                let net = ctr.dir.join("net");
                fs::create_dir_all(&net).map_err(io_err("create", &net))?;
                for f in [netd::bridge::hosts::HOSTS, netd::bridge::hosts::RESOLV_CONF] {
                    let p = net.join(f);
                    if !p.exists() {
                        fs::write(&p, "").map_err(io_err("create", &p))?;
                    }
                    out.push(LaunchMount::Bind {
                        source: p,
                        target: etc(f).to_string_lossy().into_owned(),
                        read_only: false,
                    });
                }
            }
            NetworkMode::Host => {
                for f in ["hosts", "resolv.conf"] {
                    if etc(f).is_file() {
                        out.push(LaunchMount::Bind {
                            source: etc(f),
                            target: etc(f).to_string_lossy().into_owned(),
                            read_only: true,
                        });
                    }
                }
            }
            NetworkMode::None => {}
        }
        for v in &spec.volumes {
            let source = match &v.source {
                VolumeSource::Named(name) => {
                    let p = self.opts.root.join("volumes").join(name).join("_data");
                    fs::create_dir_all(&p).map_err(io_err("create the volume", &p))?;
                    p
                }
                VolumeSource::Bind(path) => {
                    let p = PathBuf::from(path);
                    if !p.exists() {
                        // Docker's -v creates a missing source directory.
                        fs::create_dir_all(&p).map_err(io_err("create the bind source", &p))?;
                    }
                    p
                }
            };
            out.push(LaunchMount::Bind {
                source,
                target: v.target.clone(),
                read_only: v.read_only,
            });
        }
        for t in &spec.tmpfs {
            out.push(LaunchMount::Tmpfs {
                target: t.target.clone(),
                size: t.size.map(|s| s.bytes()),
                mode: t.mode,
            });
        }
        Ok(out)
    }

    fn detach(&self, ctr: &Ctr) {
        if ctr.config.spec.network != NetworkMode::Bridge {
            return;
        }
        if let Ok(b) = &self.bridge {
            if let Err(e) = b.detach(&ctr.config.id) {
                log::warn!(target: "manager", "container {}: cannot detach it from the bridge: {}", ctr.config.name, chain(&e));
            }
        }
    }

    // ---- watching a run --------------------------------------------------------

    /// `since`: when the run was started (its console mirror begins
    /// there); `None` for a re-adopted run, mirrored from now on.
    fn spawn_run_threads(
        &self,
        ctr: &Arc<Ctr>,
        watch: Watch,
        starts: u64,
        since: Option<SystemTime>,
    ) {
        let Some(me) = self.arc() else { return };
        {
            let me = me.clone();
            let ctr = ctr.clone();
            std::thread::spawn(move || me.watch(&ctr, watch));
        }
        if ctr.config.spec.healthcheck.is_some() {
            let me = me.clone();
            let ctr = ctr.clone();
            std::thread::spawn(move || me.health_loop(&ctr, starts));
        }
        if let Some(sink) = &self.opts.console_logs {
            let sink = sink.clone();
            let ctr = ctr.clone();
            let mirrors = self.mirrors.clone();
            lock(&mirrors.0).push((ctr.clone(), starts));
            let files = self.opts.log_max_files;
            std::thread::spawn(move || {
                mirror(&ctr, sink, files, starts, since);
                lock(&mirrors.0).retain(|(c, s)| !(Arc::ptr_eq(c, &ctr) && *s == starts));
                mirrors.1.notify_all();
            });
        }
    }

    /// Waits (up to `timeout`) for the console mirrors of runs that have
    /// ended to copy their last lines, so that a daemon about to exit does
    /// not cut off what its stopped containers said last. Mirrors of runs
    /// still going are not waited for. Returns whether all of them ended.
    pub(super) fn drain_console(&self, timeout: Duration) -> bool {
        let ended = |m: &mut Vec<MirrorOf>| {
            m.iter().any(|(c, starts)| {
                let live = lock(&c.live);
                !(live.starts == *starts && Ctr::running(&live))
            })
        };
        let (mirrors, cv) = &*self.mirrors;
        let (mut m, _) = cv
            .wait_timeout_while(lock(mirrors), timeout, ended)
            .unwrap_or_else(|p| p.into_inner());
        !ended(&mut m)
    }

    /// Waits for the run's monitor to exit, then records the exit.
    fn watch(&self, ctr: &Arc<Ctr>, watch: Watch) {
        match watch {
            Watch::Child(mut child) => {
                let _ = child.wait();
            }
            Watch::Pid(pid) => {
                // A pid that is already gone has nothing left to wait for.
                if let Ok(fd) = pidfd_open(pid as i32) {
                    while let Ok(false) = wait_readable(fd.as_fd(), None) {}
                }
            }
        }
        let exit = match read_json::<MonitorRecord>(&ctr.dir.join("monitor.json")) {
            Ok(Some(MonitorRecord { exit: Some(e), .. })) => e,
            other => ExitRecord {
                code: 255,
                signal: None,
                finished_at: SystemTime::now(),
                error: Some(format!(
                    "the monitor of container {} ended without recording the exit ({})",
                    ctr.config.name,
                    match other {
                        Err(e) => chain(&e),
                        _ => format!("see {}", ctr.dir.join("monitor.log").display()),
                    }
                )),
                oom_killed: false,
            },
        };
        self.on_exit(ctr, exit);
    }

    fn on_exit(&self, ctr: &Arc<Ctr>, exit: ExitRecord) {
        let name = &ctr.config.name;
        if exit.oom_killed {
            log::warn!(target: "manager", "container {name}: out of memory: the kernel's OOM killer ended it (exit code {})", exit.code);
        } else if let Some(e) = &exit.error {
            log::warn!(target: "manager", "container {name}: {e}");
        } else {
            log::info!(target: "manager", "container {name} exited with code {}", exit.code);
        }
        let policy = ctr.config.spec.restart;
        let (restart, delay, gen) = {
            let mut live = lock(&ctr.live);
            let ran = live.run.take().map(|r| r.started.elapsed());
            live.rec.status = Status::Exited;
            live.rec.exit_code = Some(exit.code);
            live.rec.finished_at = Some(exit.finished_at);
            live.rec.error = exit.error.clone();
            live.rec.oom_killed = exit.oom_killed;
            live.rec.ip = None;
            live.ip = None;
            live.exits += 1;
            if ran.is_some_and(|r| r >= STABLE_RUN) {
                live.backoff = BACKOFF_START;
            }
            let restart = !live.removed
                && should_restart(
                    policy,
                    live.rec.manually_stopped,
                    exit.code,
                    live.rec.restart_count,
                );
            let delay = live.backoff;
            if restart {
                live.rec.status = Status::Restarting;
                live.backoff = (live.backoff * 2).min(BACKOFF_MAX);
            }
            ctr.save(&live);
            ctr.cv.notify_all();
            (restart, delay, live.gen)
        };
        self.detach(ctr);
        if restart {
            self.restart_after(ctr, delay, gen);
        } else if ctr.config.spec.auto_remove {
            if let Some(me) = self.arc() {
                let id = ctr.config.id.clone();
                std::thread::spawn(move || match Inner::remove(&me, &id, true) {
                    Ok(()) | Err(ManagerError::NotFound(_)) => {}
                    Err(e) => {
                        log::warn!(target: "manager", "cannot auto-remove container {id}: {}", chain(&e))
                    }
                });
            }
        }
    }

    /// A policy restart after `delay`, unless a manual operation (or
    /// removal) bumped `gen` meanwhile.
    fn restart_after(&self, ctr: &Arc<Ctr>, delay: Duration, gen: u64) {
        let Some(me) = self.arc() else { return };
        let ctr = ctr.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + delay;
            {
                let mut live = lock(&ctr.live);
                loop {
                    if live.gen != gen || live.removed {
                        return;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    live = ctr
                        .cv
                        .wait_timeout(live, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            let _op = lock(&ctr.op);
            {
                let mut live = lock(&ctr.live);
                if live.gen != gen || live.removed || Ctr::running(&live) {
                    return;
                }
                live.rec.restart_count += 1;
            }
            if let Err(e) = me.launch(&ctr) {
                log::warn!(target: "manager", "container {}: restart failed: {}", ctr.config.name, chain(&e));
            }
        });
    }

    // ---- stop, kill, remove ------------------------------------------------

    pub(super) fn stop(
        this: &Arc<Inner>,
        key: &str,
        timeout: Option<Duration>,
    ) -> Result<(), ManagerError> {
        let ctr = this.find(key)?;
        let _op = lock(&ctr.op);
        this.stop_locked(&ctr, timeout, true)
    }

    fn stop_locked(
        &self,
        ctr: &Ctr,
        timeout: Option<Duration>,
        graceful: bool,
    ) -> Result<(), ManagerError> {
        let spec = &ctr.config.spec;
        let signal = spec
            .stop_signal
            .or(ctr.config.image_stop_signal)
            .unwrap_or(libc::SIGTERM);
        let grace = timeout
            .or(spec.stop_timeout)
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        let mut live = lock(&ctr.live);
        live.gen += 1;
        live.rec.manually_stopped = true;
        if live.rec.status == Status::Restarting {
            live.rec.status = Status::Exited;
        }
        ctr.save(&live);
        ctr.cv.notify_all();
        if !Ctr::running(&live) {
            return Ok(());
        }
        let exits = live.exits;
        let send = |live: &Live, sig: i32| {
            if let Some(run) = &live.run {
                // ESRCH: exited already; the watcher records it.
                let _ = pidfd_send_signal(run.pidfd.as_fd(), sig);
            }
        };
        if graceful {
            send(&live, signal);
            let deadline = Instant::now() + grace;
            while live.exits == exits {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                live = ctr
                    .cv
                    .wait_timeout(live, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if live.exits == exits {
            send(&live, libc::SIGKILL);
            let deadline = Instant::now() + SETUP_TIMEOUT;
            while live.exits == exits {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ManagerError::Monitor(format!(
                        "container {} did not exit {}s after SIGKILL",
                        ctr.config.name,
                        SETUP_TIMEOUT.as_secs()
                    )));
                }
                live = ctr
                    .cv
                    .wait_timeout(live, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        Ok(())
    }

    pub(super) fn kill(this: &Arc<Inner>, key: &str, signal: i32) -> Result<(), ManagerError> {
        let ctr = this.find(key)?;
        if !(1..=64).contains(&signal) {
            return Err(ManagerError::InvalidArgument(format!(
                "invalid signal {signal}"
            )));
        }
        let live = lock(&ctr.live);
        let Some(run) = &live.run else {
            return Err(ManagerError::Conflict(format!(
                "container {} is not running",
                ctr.config.name
            )));
        };
        match pidfd_send_signal(run.pidfd.as_fd(), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(ManagerError::Monitor(format!(
                "cannot send signal {signal} to container {}: {e}",
                ctr.config.name
            ))),
        }
    }

    pub(super) fn remove(this: &Arc<Inner>, key: &str, force: bool) -> Result<(), ManagerError> {
        let ctr = this.find(key)?;
        let _op = lock(&ctr.op);
        {
            let live = lock(&ctr.live);
            if live.removed {
                return Err(ManagerError::NotFound(key.to_string()));
            }
            let busy = Ctr::running(&live) || live.rec.status == Status::Restarting;
            if busy && !force {
                return Err(ManagerError::Conflict(format!(
                    "cannot remove container {}: it is running; stop it first or force the removal",
                    ctr.config.name
                )));
            }
        }
        this.stop_locked(&ctr, None, false)?;
        {
            let mut live = lock(&ctr.live);
            live.rec.status = Status::Removing;
            ctr.save(&live);
        }
        this.detach(&ctr);
        let result = crate::runtime::remove_state(&ctr.dir).map_err(io_err("remove", &ctr.dir));
        {
            let mut table = lock(&this.table);
            table.by_id.remove(&ctr.config.id);
            if table.names.get(&ctr.config.name) == Some(&ctr.config.id) {
                table.names.remove(&ctr.config.name);
            }
        }
        let mut live = lock(&ctr.live);
        live.removed = true;
        live.gen += 1;
        ctr.cv.notify_all();
        result
    }

    // ---- queries -----------------------------------------------------------

    pub(super) fn list(&self, all: bool) -> Vec<ContainerInfo> {
        let ctrs: Vec<Arc<Ctr>> = lock(&self.table).by_id.values().cloned().collect();
        let mut out: Vec<ContainerInfo> = ctrs
            .iter()
            .map(|c| info(c))
            .filter(|i| all || matches!(i.state.status, Status::Running | Status::Restarting))
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        out
    }

    pub(super) fn inspect(&self, key: &str) -> Result<ContainerInfo, ManagerError> {
        Ok(info(self.find(key)?.as_ref()))
    }

    pub(super) fn wait(
        &self,
        key: &str,
        cond: WaitCondition,
        timeout: Option<Duration>,
        cancelled: Option<&dyn Fn() -> bool>,
    ) -> Result<i32, ManagerError> {
        let ctr = self.find(key)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut live = lock(&ctr.live);
        let exits = live.exits;
        loop {
            let done = match cond {
                WaitCondition::NotRunning => !Ctr::running(&live),
                WaitCondition::NextExit => live.exits != exits || live.removed,
                WaitCondition::Removed => live.removed,
            };
            if done {
                return Ok(live.rec.exit_code.unwrap_or(0));
            }
            if cancelled.is_some_and(|c| c()) {
                return Err(ManagerError::Conflict(format!(
                    "the wait for container {} was cancelled",
                    ctr.config.name
                )));
            }
            // A cancellable wait looks at `cancelled` a few times a second.
            let deadline = match (deadline, cancelled) {
                (None, Some(_)) => Some(Instant::now() + CANCEL_POLL),
                (d, _) => d,
            };
            live = match deadline {
                None => ctr.cv.wait(live).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() && timeout.is_some() {
                        return Err(ManagerError::Conflict(format!(
                            "container {} did not reach the wait condition in time",
                            ctr.config.name
                        )));
                    }
                    ctr.cv
                        .wait_timeout(live, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    pub(super) fn logs(
        this: &Arc<Inner>,
        key: &str,
        opts: LogOptions,
    ) -> Result<LogStream, ManagerError> {
        if !opts.stdout && !opts.stderr {
            return Err(ManagerError::InvalidArgument(
                "choose at least one stream (stdout or stderr)".into(),
            ));
        }
        Self::open_log(this, key, opts, false)
    }

    /// The container's log; a follower keeps reading while it runs (or is
    /// between restarts), and with `until_started` also before its start.
    fn open_log(
        this: &Arc<Inner>,
        key: &str,
        opts: LogOptions,
        until_started: bool,
    ) -> Result<LogStream, ManagerError> {
        let ctr = this.find(key)?;
        let path = ctr.log_path();
        let watched = ctr.clone();
        let still_running = Box::new(move |wait| {
            watched.wait_while(wait, |live| {
                !live.removed
                    && ((until_started && live.rec.status == Status::Created)
                        || Ctr::running(live)
                        || live.rec.status == Status::Restarting)
            })
        });
        LogStream::open(&path, this.opts.log_max_files, opts, still_running)
            .map_err(io_err("read the log", &path))
    }

    /// The output of the container's next run: like a following
    /// [`Inner::logs`] from the current end of the log (from its start
    /// with `history`), but a container not
    /// started yet counts as running, so an attach made before `start`
    /// waits for the output instead of ending at once.
    pub(super) fn attach(
        this: &Arc<Inner>,
        key: &str,
        stdout: bool,
        stderr: bool,
        history: bool,
    ) -> Result<LogStream, ManagerError> {
        let opts = LogOptions {
            follow: true,
            tail: if history { None } else { Some(0) },
            stdout: stdout || !stderr,
            stderr: stderr || !stdout,
            ..LogOptions::default()
        };
        Self::open_log(this, key, opts, true)
    }

    pub(super) fn exec(&self, key: &str, spec: ExecSpec) -> Result<ExecHandle, ManagerError> {
        let ctr = self.find(key)?;
        let target = exec_target(&ctr)?;
        if spec.cmd.is_empty() {
            return Err(ManagerError::InvalidArgument("exec needs a command".into()));
        }
        let mut b = ExecBuilder::new(target, spec.cmd.clone()).env(spec.env.clone());
        if let Some(u) = &spec.user {
            b = b.user(u);
        }
        if let Some(w) = &spec.working_dir {
            b = b.workdir(w);
        }
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ManagerError::Io {
                action: "make a pipe for",
                path: PathBuf::from(format!("exec in {}", ctr.config.name)),
                source: e.into(),
            })
        };
        let (mut stdin, mut stdout, mut stderr) = (None, None, None);
        if spec.tty {
            b = b.stdio(Stdio::tty());
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let inp = if spec.stdin {
                let (r, w) = pipe()?;
                stdin = Some(fs::File::from(w));
                Some(r)
            } else {
                None
            };
            stdout = Some(fs::File::from(out_r));
            stderr = Some(fs::File::from(err_r));
            b = b.stdio(Stdio::fds(inp, out_w, err_w));
        }
        let mut process = b.spawn()?;
        let pty = process.take_pty_master().map(fs::File::from);
        Ok(ExecHandle {
            process,
            stdin,
            stdout,
            stderr,
            pty,
        })
    }

    // ---- health checks -----------------------------------------------------

    fn health_loop(&self, ctr: &Arc<Ctr>, starts: u64) {
        let Some(hc) = ctr.config.spec.healthcheck.clone() else {
            return;
        };
        let interval = hc.interval.get().max(Duration::from_millis(10));
        let started = Instant::now();
        let start_period = hc.start_period.map(|p| p.get()).unwrap_or_default();
        loop {
            {
                let deadline = Instant::now() + interval;
                let mut live = lock(&ctr.live);
                loop {
                    if live.starts != starts || !Ctr::running(&live) || live.removed {
                        return;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    live = ctr
                        .cv
                        .wait_timeout(live, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            let result = self.health_check(ctr, &hc.command, hc.timeout.get());
            let mut live = lock(&ctr.live);
            if live.starts != starts || live.removed {
                return;
            }
            let in_start_period = started.elapsed() < start_period;
            let Some(h) = live.rec.health.as_mut() else {
                return;
            };
            if result.exit_code == 0 {
                h.status = HealthStatus::Healthy;
                h.failing_streak = 0;
            } else if !in_start_period || h.status != HealthStatus::Starting {
                h.failing_streak += 1;
                if h.failing_streak >= hc.retries.max(1) {
                    h.status = HealthStatus::Unhealthy;
                }
            }
            h.log.push(result);
            if h.log.len() > HEALTH_LOG {
                h.log.remove(0);
            }
            ctr.save(&live);
            ctr.cv.notify_all();
        }
    }

    fn health_check(&self, ctr: &Ctr, command: &[String], timeout: Duration) -> HealthLog {
        let start = SystemTime::now();
        let done = |exit_code: i32, output: String| HealthLog {
            start,
            end: SystemTime::now(),
            exit_code,
            output,
        };
        // Docker: ["CMD-SHELL", "..."] runs through /bin/sh -c, ["CMD", ...] directly.
        let args: Vec<String> = match command.first().map(String::as_str) {
            Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), command[1..].join(" ")],
            Some("CMD") => command[1..].to_vec(),
            _ => command.to_vec(),
        };
        let target = match exec_target(ctr) {
            Ok(t) => t,
            Err(e) => return done(-1, chain(&e)),
        };
        let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return done(-1, format!("cannot make a pipe: {e}")),
        };
        let w2 = match w.try_clone() {
            Ok(w2) => w2,
            Err(e) => return done(-1, format!("cannot make a pipe: {e}")),
        };
        let process = match ExecBuilder::new(target, args)
            .stdio(Stdio::fds(None, w, w2))
            .spawn()
        {
            Ok(p) => p,
            Err(e) => return done(-1, chain(&e)),
        };
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = fs::File::from(r)
                .take(HEALTH_OUTPUT as u64)
                .read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        });
        let code = match process.wait_timeout(timeout) {
            Ok(Some(s)) => s.code,
            Ok(None) => {
                let _ = process.kill(libc::SIGKILL);
                let _ = process.wait();
                drop(process);
                let _ = reader.join();
                return done(-1, format!("health check timed out after {timeout:?}"));
            }
            Err(e) => return done(-1, chain(&e)),
        };
        drop(process);
        let output = reader.join().unwrap_or_default();
        done(code, output)
    }

    // ---- re-adoption -------------------------------------------------------

    fn adopt_all(&self, containers: &Path) -> Result<(), ManagerError> {
        let entries = fs::read_dir(containers).map_err(io_err("list", containers))?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let config = match read_json::<ContainerConfig>(&dir.join("config.json")) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    log::warn!(target: "manager", "skipping {}: {}", dir.display(), chain(&e));
                    continue;
                }
            };
            let rec = match read_json::<StateRecord>(&dir.join("state.json")) {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => {
                    log::warn!(target: "manager", "container {}: {}", config.name, chain(&e));
                    StateRecord {
                        status: Status::Dead,
                        error: Some(chain(&e)),
                        ..StateRecord::default()
                    }
                }
            };
            found.push(Arc::new(Ctr::new(config, dir, rec)));
        }
        {
            let mut table = lock(&self.table);
            for c in &found {
                table
                    .names
                    .insert(c.config.name.clone(), c.config.id.clone());
                table.by_id.insert(c.config.id.clone(), c.clone());
            }
        }
        for ctr in found {
            self.adopt(&ctr);
        }
        Ok(())
    }

    fn adopt(&self, ctr: &Arc<Ctr>) {
        let monitor = read_json::<MonitorRecord>(&ctr.dir.join("monitor.json"))
            .ok()
            .flatten();
        let launch = read_json::<Launch>(&ctr.dir.join("launch.json"))
            .ok()
            .flatten();
        let status = lock(&ctr.live).rec.status;
        match monitor {
            Some(m) if m.exit.is_none() => {
                let alive = process_alive(m.monitor_pid)
                    && process_start_time(m.monitor_pid) == Some(m.monitor_start);
                let pidfd = alive
                    .then(|| pidfd_open(m.container_pid as i32).ok())
                    .flatten();
                match pidfd {
                    Some(pidfd) => {
                        let starts = {
                            let mut live = lock(&ctr.live);
                            live.rec.status = Status::Running;
                            live.rec.started_at = Some(m.started_at);
                            live.ip = live.rec.ip;
                            live.process = launch.as_ref().map(|l| l.process.clone());
                            live.cgroup = launch.as_ref().and_then(|l| l.cgroup.clone());
                            live.run = Some(Run {
                                container_pid: m.container_pid,
                                pidfd,
                                started: Instant::now()
                                    - SystemTime::now()
                                        .duration_since(m.started_at)
                                        .unwrap_or_default(),
                            });
                            live.starts += 1;
                            if let Some(h) = live.rec.health.as_mut() {
                                h.status = HealthStatus::Starting;
                            }
                            ctr.save(&live);
                            live.starts
                        };
                        log::info!(target: "manager", "re-adopted running container {}", ctr.config.name);
                        self.spawn_run_threads(ctr, Watch::Pid(m.monitor_pid), starts, None);
                    }
                    None => {
                        lock(&ctr.live).run = None;
                        self.on_exit(
                            ctr,
                            ExitRecord {
                                code: 255,
                                signal: None,
                                finished_at: SystemTime::now(),
                                error: Some(format!(
                                    "container {} and its monitor were gone when berthd started (was the machine restarted?)",
                                    ctr.config.name
                                )),
                                oom_killed: false,
                            },
                        );
                    }
                }
            }
            Some(MonitorRecord {
                exit: Some(exit), ..
            }) if status == Status::Running => {
                // It exited while berthd was down.
                self.on_exit(ctr, exit);
            }
            _ => {
                let (restart, gen) = {
                    let mut live = lock(&ctr.live);
                    if status == Status::Running {
                        live.rec.status = Status::Exited;
                    }
                    let policy = ctr.config.spec.restart;
                    // Docker restarts `always` (and `unless-stopped` that
                    // were not stopped by hand) when the daemon starts; a
                    // pending policy restart resumes.
                    let restart = status == Status::Restarting
                        || (status == Status::Exited
                            && match policy {
                                RestartPolicy::Always => true,
                                RestartPolicy::UnlessStopped => !live.rec.manually_stopped,
                                _ => false,
                            });
                    if restart {
                        live.rec.status = Status::Restarting;
                    }
                    ctr.save(&live);
                    (restart, live.gen)
                };
                if restart {
                    self.restart_after(ctr, Duration::ZERO, gen);
                }
            }
        }
    }
}

enum Watch {
    /// The monitor is our child: wait for it (and reap it).
    Child(Child),
    /// A re-adopted monitor: watch its pidfd.
    Pid(u32),
}

impl Ctr {
    fn new(config: ContainerConfig, dir: PathBuf, rec: StateRecord) -> Ctr {
        let ip = rec.ip;
        Ctr {
            config,
            dir,
            op: Mutex::new(()),
            live: Mutex::new(Live {
                rec,
                run: None,
                ip,
                process: None,
                cgroup: None,
                exits: 0,
                starts: 0,
                gen: 0,
                backoff: BACKOFF_START,
                removed: false,
            }),
            cv: Condvar::new(),
        }
    }
}

/// Docker's restart decision after an exit.
pub fn should_restart(
    policy: RestartPolicy,
    manually_stopped: bool,
    code: i32,
    restarts: u32,
) -> bool {
    if manually_stopped {
        return false;
    }
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure { max_retries } => {
            code != 0 && max_retries.is_none_or(|max| restarts < max)
        }
    }
}

fn overrides(spec: &CreateSpec) -> Overrides {
    Overrides {
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.cmd.clone().unwrap_or_default(),
        env: spec.env.clone(),
        user: spec.user.clone(),
        workdir: spec.working_dir.clone(),
        tty: spec.tty,
    }
}

fn port(p: &crate::workload::PortMapping) -> Port {
    Port {
        host_ip: p.host_ip,
        host_port: p.host_port,
        container_port: p.container_port,
        proto: match p.protocol {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
        },
    }
}

fn exec_target(ctr: &Ctr) -> Result<ExecTarget, ManagerError> {
    let live = lock(&ctr.live);
    let (Some(run), Some(process)) = (&live.run, &live.process) else {
        return Err(ManagerError::Conflict(format!(
            "container {} is not running",
            ctr.config.name
        )));
    };
    Ok(ExecTarget {
        id: ctr.config.id.clone(),
        pid: run.container_pid as i32,
        cgroup: live.cgroup.clone(),
        process: process.clone(),
    })
}

fn info(ctr: &Ctr) -> ContainerInfo {
    let live = lock(&ctr.live);
    let cfg = &ctr.config;
    ContainerInfo {
        id: cfg.id.clone(),
        name: cfg.name.clone(),
        image: cfg.spec.image.clone(),
        image_id: cfg.image_id.clone(),
        created: cfg.created,
        spec: cfg.spec.clone(),
        state: ContainerState {
            status: live.rec.status,
            pid: live.run.as_ref().map(|r| r.container_pid),
            exit_code: live.rec.exit_code,
            started_at: live.rec.started_at,
            finished_at: live.rec.finished_at,
            oom_killed: live.rec.oom_killed,
            error: live.rec.error.clone(),
            health: live.rec.health.clone(),
        },
        restart_count: live.rec.restart_count,
        ip: live.ip,
        log_path: ctr.log_path(),
        args: live.rec.args.clone(),
    }
}

/// Copies a run's log lines to the console sink, prefixed by the name.
fn mirror(
    ctr: &Arc<Ctr>,
    sink: super::ConsoleSink,
    max_files: u32,
    starts: u64,
    since: Option<SystemTime>,
) {
    let watched = ctr.clone();
    let still = Box::new(move |wait| {
        watched.wait_while(wait, |live| live.starts == starts && Ctr::running(live))
    });
    let opts = LogOptions {
        follow: true,
        tail: since.is_none().then_some(0),
        since,
        ..LogOptions::default()
    };
    let Ok(stream) = LogStream::open(&ctr.log_path(), max_files, opts, still) else {
        return;
    };
    for entry in stream.flatten() {
        let mut line = format!("{} | ", ctr.config.name).into_bytes();
        line.extend_from_slice(&entry.bytes);
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        let _ = lock(&sink).write_all(&line);
    }
}

/// Whether `parent` (or its nearest existing ancestor) is in a cgroup v2
/// hierarchy.
fn on_cgroup2(parent: &Path) -> bool {
    parent
        .ancestors()
        .find(|p| p.exists())
        .is_some_and(|p| p.join("cgroup.controllers").is_file())
}

/// The image a container was created from, by its id (config digest).
/// Several manifests can share one config (the same image loaded from a
/// docker archive and an OCI archive): they are the same rootfs, so the
/// first is as good as any, where the store would call the id ambiguous.
fn resolve_image_id(
    images: &crate::image::ImageStore,
    id: &str,
) -> Result<crate::image::Image, ImageError> {
    match images.resolve(id) {
        Err(ImageError::Ambiguous { .. }) => {
            let manifest = images
                .list()
                .into_iter()
                .filter(|s| s.id.to_string() == id)
                .map(|s| s.manifest_digest)
                .min()
                .ok_or_else(|| ImageError::NotFound(id.to_owned()))?;
            images.resolve(&manifest.to_string())
        }
        r => r,
    }
}
