//! Supervising berth's daemons: start them in order, each waiting (bounded)
//! for the previous one's readiness line; restart a daemon that dies, with
//! exponential backoff.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::logger::MILESTONE;
use crate::readiness::{LineBuffer, Readiness, READY_FD, READY_FD_ENV};

/// `PATH` for daemons when init's environment has none (the kernel sets none).
pub const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A daemon to supervise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSpec {
    /// Short name for the console (`berth-netd`).
    pub name: String,
    /// The executable.
    pub path: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// How long boot waits for its readiness line.
    pub ready_timeout: Duration,
}

impl DaemonSpec {
    /// A daemon named after its executable's file name.
    pub fn new(path: impl Into<PathBuf>, args: Vec<String>, ready_timeout: Duration) -> Self {
        let path = path.into();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Self {
            name,
            path,
            args,
            ready_timeout,
        }
    }
}

/// Restart delays: `initial`, doubling up to `max`; back to `initial` once a
/// run lasted `stable_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A run at least this long resets the delay.
    pub stable_after: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(
            Duration::from_millis(100),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }
}

impl Backoff {
    /// A backoff starting at `initial`.
    pub fn new(initial: Duration, max: Duration, stable_after: Duration) -> Self {
        Self {
            initial,
            max,
            stable_after,
            next: initial,
        }
    }

    /// The delay before restarting a daemon that ran for `ran_for`.
    pub fn on_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.stable_after {
            self.next = self.initial;
        }
        let delay = self.next.min(self.max);
        self.next = delay.saturating_mul(2).min(self.max);
        delay
    }
}

/// How a process ended, for the console: `status 1`, `signal SIGSEGV`.
pub fn describe_exit(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("status {code}"),
        WaitStatus::Signaled(_, sig, true) => format!("signal {}, core dumped", sig.as_str()),
        WaitStatus::Signaled(_, sig, false) => format!("signal {}", sig.as_str()),
        other => format!("{other:?}"),
    }
}

struct Daemon {
    spec: DaemonSpec,
    backoff: Backoff,
    pid: Option<Pid>,
    started: Instant,
    pipe: Option<(OwnedFd, LineBuffer)>,
    restart_at: Option<Instant>,
    workloads: Option<u32>,
    /// Stopped on purpose by [`Supervisor::restart`]: start again at once.
    replacing: bool,
}

impl Daemon {
    fn new(spec: DaemonSpec, backoff: Backoff, now: Instant) -> Self {
        Self {
            spec,
            backoff,
            pid: None,
            started: now,
            pipe: None,
            restart_at: None,
            workloads: None,
            replacing: false,
        }
    }
}

/// How long a daemon restarted by [`Supervisor::restart`] may take to stop,
/// on top of its readiness timeout, before the boot goes on without it.
const STOP_ALLOWANCE: Duration = Duration::from_secs(5);

enum Boot {
    /// Waiting for daemon `index` to report, until `deadline`.
    Waiting { index: usize, deadline: Instant },
    /// Every daemon reported or timed out; `announced` once the caller knows.
    Done { announced: bool },
}

/// The supervised daemons and the boot-time readiness sequence.
pub struct Supervisor {
    daemons: Vec<Daemon>,
    backoff: Backoff,
    boot: Boot,
    stopping: bool,
}

impl Supervisor {
    /// Supervises `specs` (started in order by [`Supervisor::start`]).
    pub fn new(specs: Vec<DaemonSpec>, backoff: Backoff) -> Self {
        let now = Instant::now();
        Self {
            daemons: specs
                .into_iter()
                .map(|spec| Daemon::new(spec, backoff, now))
                .collect(),
            backoff,
            boot: Boot::Done { announced: false },
            stopping: false,
        }
    }

    /// Adds daemons after the others. Before boot is announced they join
    /// the readiness sequence (started once the ones before have reported);
    /// after it they start at once.
    pub fn extend(&mut self, specs: Vec<DaemonSpec>, now: Instant) {
        let first = self.daemons.len();
        let backoff = self.backoff;
        self.daemons.extend(
            specs
                .into_iter()
                .map(|spec| Daemon::new(spec, backoff, now)),
        );
        match self.boot {
            Boot::Done { announced: false } => self.advance_from(first, now),
            Boot::Done { announced: true } => {
                for index in first..self.daemons.len() {
                    self.spawn(index, now);
                }
            }
            // The sequence reaches them in turn.
            Boot::Waiting { .. } => {}
        }
    }

    /// Whether the boot sequence is over (every daemon reported or timed
    /// out), announced or not.
    pub fn boot_settled(&self) -> bool {
        matches!(self.boot, Boot::Done { .. })
    }

    /// Restarts the daemon named `name` (to read a new configuration): stops
    /// it with [`STOP_SIGNAL`] and starts it again as soon as it has exited,
    /// without backoff. Before boot is announced, the sequence waits for its
    /// readiness again. Returns false if there is no such daemon.
    pub fn restart(&mut self, name: &str, now: Instant) -> bool {
        let Some(index) = self.daemons.iter().position(|d| d.spec.name == name) else {
            return false;
        };
        let daemon = &mut self.daemons[index];
        // A readiness line from the old process must not count for the new one.
        daemon.pipe = None;
        let wait = daemon.spec.ready_timeout;
        let started = match daemon.pid {
            Some(pid) => {
                if let Err(e) = kill(pid, STOP_SIGNAL) {
                    // ESRCH: it already exited and is waiting to be reaped.
                    log::debug!("cannot signal {} (pid {pid}): {e}", daemon.spec.name);
                }
                daemon.replacing = true;
                true
            }
            None => self.spawn(index, now),
        };
        if started && !matches!(self.boot, Boot::Done { announced: true }) {
            self.boot = Boot::Waiting {
                index,
                deadline: now + STOP_ALLOWANCE + wait,
            };
        }
        true
    }

    /// Starts the first daemon; the others follow as each one gets ready.
    pub fn start(&mut self, now: Instant) {
        self.advance_from(0, now);
    }

    /// Starts daemon `index` (skipping any that cannot be spawned) and waits
    /// for it, or finishes the boot sequence.
    fn advance_from(&mut self, mut index: usize, now: Instant) {
        while index < self.daemons.len() {
            if self.spawn(index, now) {
                let deadline = now + self.daemons[index].spec.ready_timeout;
                self.boot = Boot::Waiting { index, deadline };
                return;
            }
            index += 1;
        }
        self.boot = Boot::Done { announced: false };
    }

    fn spawn(&mut self, index: usize, now: Instant) -> bool {
        let daemon = &mut self.daemons[index];
        daemon.restart_at = None;
        match spawn_with_ready_pipe(&daemon.spec) {
            Ok((pid, read)) => {
                log::debug!("started {} (pid {pid})", daemon.spec.name);
                daemon.pid = Some(pid);
                daemon.started = now;
                daemon.pipe = Some((read, LineBuffer::default()));
                true
            }
            Err(e) => {
                let delay = daemon.backoff.on_exit(Duration::ZERO);
                log::error!(
                    "cannot start {} ({}): {e}; retrying in {}ms",
                    daemon.spec.name,
                    daemon.spec.path.display(),
                    delay.as_millis()
                );
                daemon.restart_at = Some(now + delay);
                false
            }
        }
    }

    /// The readiness pipes to poll, with the daemon index each belongs to.
    pub fn ready_fds(&self) -> Vec<(usize, BorrowedFd<'_>)> {
        self.daemons
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.pipe.as_ref().map(|(fd, _)| (i, fd.as_fd())))
            .collect()
    }

    /// Reads what daemon `index` wrote on its readiness pipe.
    pub fn on_readable(&mut self, index: usize, now: Instant) {
        let Some(daemon) = self.daemons.get_mut(index) else {
            return;
        };
        let mut message = None;
        let mut closed = false;
        if let Some((fd, buf)) = daemon.pipe.as_mut() {
            let mut bytes = [0u8; 512];
            loop {
                match nix::unistd::read(&*fd, &mut bytes) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        if let Some(m) = buf.push(&bytes[..n]) {
                            message = Some(m);
                            closed = true;
                            break;
                        }
                    }
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
        }
        if closed {
            daemon.pipe = None;
        }
        let name = daemon.spec.name.clone();
        let reported = match message {
            Some(Ok(Readiness::Ready { workloads })) => {
                daemon.workloads = workloads;
                log::info!(target: MILESTONE, "{name} ready");
                true
            }
            Some(Ok(Readiness::NotReady(reason))) => {
                log::warn!(target: MILESTONE, "{name} not ready: {reason}; booting on");
                true
            }
            Some(Err(e)) => {
                log::warn!(target: MILESTONE, "{name} sent a bad readiness message: {e}; booting on");
                true
            }
            None => false,
        };
        if reported {
            if let Boot::Waiting { index: waiting, .. } = self.boot {
                if waiting == index {
                    self.advance_from(index + 1, now);
                }
            }
        }
    }

    /// Handles a reaped child; returns whether it was a supervised daemon.
    pub fn on_exit(&mut self, pid: Pid, status: &WaitStatus, now: Instant) -> bool {
        let stopping = self.stopping;
        let Some(index) = self.daemons.iter().position(|d| d.pid == Some(pid)) else {
            return false;
        };
        let daemon = &mut self.daemons[index];
        daemon.pid = None;
        daemon.pipe = None;
        let how = describe_exit(status);
        if stopping {
            log::debug!("{} exited ({how})", daemon.spec.name);
            return true;
        }
        if std::mem::take(&mut daemon.replacing) {
            log::info!(
                "{} stopped ({how}); starting it with the new manifest",
                daemon.spec.name
            );
            let waiting = matches!(self.boot, Boot::Waiting { index: w, .. } if w == index);
            if self.spawn(index, now) {
                if waiting {
                    self.boot = Boot::Waiting {
                        index,
                        deadline: now + self.daemons[index].spec.ready_timeout,
                    };
                }
            } else if waiting {
                self.advance_from(index + 1, now);
            }
            return true;
        }
        let delay = daemon
            .backoff
            .on_exit(now.saturating_duration_since(daemon.started));
        log::warn!(
            target: MILESTONE,
            "{} exited ({how}); restarting in {}ms",
            daemon.spec.name,
            delay.as_millis()
        );
        daemon.restart_at = Some(now + delay);
        true
    }

    /// Restarts daemons whose backoff has passed and gives up waiting on a
    /// daemon whose readiness timed out.
    pub fn on_timer(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        for index in 0..self.daemons.len() {
            if self.daemons[index].restart_at.is_some_and(|t| t <= now) {
                self.spawn(index, now);
            }
        }
        if let Boot::Waiting { index, deadline } = self.boot {
            if deadline <= now {
                let d = &self.daemons[index];
                log::warn!(
                    target: MILESTONE,
                    "{} not ready after {}ms; booting on",
                    d.spec.name,
                    d.spec.ready_timeout.as_millis()
                );
                self.advance_from(index + 1, now);
            }
        }
    }

    /// The next time [`Supervisor::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = if self.stopping {
            None
        } else {
            self.daemons.iter().filter_map(|d| d.restart_at).min()
        };
        if let Boot::Waiting { deadline, .. } = self.boot {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        next
    }

    /// Once, when boot is done: the workloads the daemons report running.
    pub fn take_boot_complete(&mut self) -> Option<u32> {
        match self.boot {
            Boot::Done { announced: false } => {
                self.boot = Boot::Done { announced: true };
                Some(self.daemons.iter().filter_map(|d| d.workloads).sum())
            }
            _ => None,
        }
    }

    /// The pid of the daemon named `name`, while it runs.
    pub fn pid_of(&self, name: &str) -> Option<Pid> {
        self.daemons
            .iter()
            .find(|d| d.spec.name == name)
            .and_then(|d| d.pid)
    }

    /// Stops restarting; returns the running daemons' pids, last started first.
    pub fn stop(&mut self) -> Vec<Pid> {
        self.stopping = true;
        self.daemons.iter().rev().filter_map(|d| d.pid).collect()
    }
}

/// Spawns a daemon with the write end of a fresh pipe as fd [`READY_FD`].
fn spawn_with_ready_pipe(spec: &DaemonSpec) -> std::io::Result<(Pid, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // The daemon's end must block: it writes one short line and is done.
    fcntl(&write, FcntlArg::F_SETFL(OFlag::empty()))?;
    let write_raw = write.as_raw_fd();
    let mut cmd = Command::new(&spec.path);
    cmd.args(&spec.args).env(READY_FD_ENV, READY_FD.to_string());
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    // SAFETY: the closure runs in the forked child before exec and only calls
    // sigemptyset/sigprocmask/dup2/fcntl, which are async-signal-safe, on
    // stack memory; it touches no heap or locks.
    unsafe {
        cmd.pre_exec(move || {
            // init blocks the signals it reads from a signalfd; the mask is
            // inherited across exec, so the daemon must get a clean one.
            let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if write_raw == READY_FD {
                // Already in place: just let it survive exec.
                if libc::fcntl(READY_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(write_raw, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The child is reaped by the reaper's waitpid(-1), never through `child`.
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    drop(write);
    Ok((pid, read))
}

/// The signal that asks a daemon to stop.
pub const STOP_SIGNAL: Signal = Signal::SIGTERM;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        let delays: Vec<u128> = (0..12).map(|_| b.on_exit(quick).as_millis()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        assert_eq!(
            b.on_exit(Duration::from_secs(61)),
            Duration::from_millis(100)
        );
        assert_eq!(b.on_exit(quick), Duration::from_millis(200));
    }

    #[test]
    fn describes_exits() {
        let pid = Pid::from_raw(7);
        assert_eq!(describe_exit(&WaitStatus::Exited(pid, 3)), "status 3");
        assert_eq!(
            describe_exit(&WaitStatus::Signaled(pid, Signal::SIGSEGV, false)),
            "signal SIGSEGV"
        );
    }

    #[test]
    fn daemon_named_after_file() {
        let d = DaemonSpec::new("/sbin/berth-netd", vec![], Duration::from_secs(1));
        assert_eq!(d.name, "berth-netd");
    }

    #[test]
    fn missing_daemon_does_not_block_boot() {
        let specs = vec![DaemonSpec::new(
            "/nonexistent/berth-netd",
            vec![],
            Duration::from_secs(10),
        )];
        let mut s = Supervisor::new(specs, Backoff::default());
        let now = Instant::now();
        s.start(now);
        assert_eq!(s.take_boot_complete(), Some(0));
        assert_eq!(s.take_boot_complete(), None);
        // It is retried later, with backoff.
        assert!(s.next_deadline().is_some_and(|d| d > now));
    }

    /// A shell daemon named `name` that reports ready and then waits.
    fn ready_then_wait(name: &str) -> DaemonSpec {
        let mut spec = DaemonSpec::new(
            "/bin/sh",
            vec!["-c".into(), "echo READY >&3; exec sleep 30".into()],
            Duration::from_secs(10),
        );
        spec.name = name.into();
        spec
    }

    /// Waits (bounded) for the readiness pipe of daemon `index` and reads it.
    fn read_ready(s: &mut Supervisor, index: usize) -> Result<(), String> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let fds = s.ready_fds();
        let fd = fds
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, fd)| *fd)
            .ok_or("no readiness pipe")?;
        let mut pfd = [PollFd::new(fd, PollFlags::POLLIN)];
        let n = poll(&mut pfd, PollTimeout::from(10_000u16)).map_err(|e| e.to_string())?;
        drop(fds);
        if n != 1 {
            return Err("no readiness line within 10 s".into());
        }
        s.on_readable(index, Instant::now());
        Ok(())
    }

    fn reap(s: &mut Supervisor, pid: Pid) -> Result<(), String> {
        let status = nix::sys::wait::waitpid(pid, None).map_err(|e| e.to_string())?;
        assert!(s.on_exit(pid, &status, Instant::now()));
        Ok(())
    }

    #[test]
    fn restart_and_extend_keep_the_readiness_sequence() -> Result<(), String> {
        let mut s = Supervisor::new(vec![ready_then_wait("netd")], Backoff::default());
        s.start(Instant::now());
        assert!(!s.boot_settled());
        read_ready(&mut s, 0)?;
        assert!(s.boot_settled());
        let old = s.pid_of("netd").ok_or("netd is not running")?;

        // Restart it: the sequence waits for the new process, and a daemon
        // added meanwhile starts only after that one is ready.
        assert!(s.restart("netd", Instant::now()));
        assert!(!s.restart("nonexistent", Instant::now()));
        assert!(!s.boot_settled());
        reap(&mut s, old)?;
        let new = s.pid_of("netd").ok_or("netd was not started again")?;
        assert_ne!(old, new);
        s.extend(vec![ready_then_wait("engine")], Instant::now());
        assert_eq!(s.pid_of("engine"), None);
        read_ready(&mut s, 0)?;
        assert!(s.pid_of("engine").is_some());
        assert!(!s.boot_settled());
        read_ready(&mut s, 1)?;
        assert!(s.boot_settled());
        assert_eq!(s.take_boot_complete(), Some(0));

        for pid in s.stop() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        Ok(())
    }
}
