//! Stopping the machine: daemons first (newest first, so the engine stops
//! its workloads while the network is still up), then every other process
//! with SIGTERM, a grace period and SIGKILL; then sync, unmount, `reboot(2)`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::WaitStatus;
use nix::unistd::{getpid, sync, Pid};

use crate::logger::MILESTONE;
use crate::reaper::{children_of, reap};

/// Default time processes get between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The engine's own stop grace for a workload that sets none (Docker's).
const WORKLOAD_STOP_GRACE: Duration = Duration::from_secs(10);

/// The grace period for a machine running `workloads`: berthd stops them
/// one by one, each allowed its stop grace period before SIGKILL, so the
/// daemons get that much (plus the default, for everything else) before
/// init stops waiting.
pub fn grace_for<'a>(workloads: impl IntoIterator<Item = &'a engine::Workload>) -> Duration {
    workloads
        .into_iter()
        .map(|w| {
            w.stop_grace_period
                .as_ref()
                .map_or(WORKLOAD_STOP_GRACE, |d| d.get())
        })
        .sum::<Duration>()
        + DEFAULT_GRACE
}

/// How long to wait for SIGKILLed processes to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What the machine does once everything is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// Power off (SIGTERM, SIGUSR2, SIGPWR, the power button).
    PowerOff,
    /// Reboot (SIGINT: Ctrl-Alt-Del).
    Reboot,
}

impl ShutdownKind {
    /// The shutdown a signal asks for, if any.
    pub fn from_signal(sig: Signal) -> Option<Self> {
        match sig {
            Signal::SIGTERM | Signal::SIGUSR2 | Signal::SIGPWR => Some(Self::PowerOff),
            Signal::SIGINT => Some(Self::Reboot),
            _ => None,
        }
    }

    /// The last console line, after `berth: `.
    pub fn line(self) -> &'static str {
        match self {
            Self::PowerOff => "power off",
            Self::Reboot => "reboot",
        }
    }
}

/// Whether init is the machine's PID 1 or a subreaper on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1: signal every process, unmount, reboot(2).
    Pid1,
    /// A test host: signal only our own children, then exit 0.
    Host,
}

/// Stops everything under init. `daemons` are signalled first, one at a
/// time, newest first; `on_exit` sees every reaped child.
pub fn stop_processes(
    mode: Mode,
    daemons: &[Pid],
    grace: Duration,
    signals: &SignalFd,
    on_exit: &mut dyn FnMut(Pid, &WaitStatus),
) {
    let deadline = Instant::now() + grace;
    let mut gone = BTreeSet::new();
    let mut record = |pid: Pid, status: WaitStatus| {
        gone.insert(pid);
        on_exit(pid, &status);
    };
    for &pid in daemons {
        log::debug!("stopping pid {pid}");
        if kill(pid, Signal::SIGTERM).is_err() {
            continue;
        }
        wait_until(deadline, signals, &mut record, &mut |g| g.contains(&pid));
    }
    // Everything else (workload leftovers, orphans) gets SIGTERM and the
    // rest of the grace period.
    let mut signalled = BTreeSet::new();
    let stopped = phase(
        mode,
        Signal::SIGTERM,
        deadline,
        signals,
        &mut record,
        &mut signalled,
    );
    if stopped {
        return;
    }
    log::warn!(
        target: MILESTONE,
        "processes still running after {}ms; killing them",
        grace.as_millis()
    );
    let mut signalled = BTreeSet::new();
    if !phase(
        mode,
        Signal::SIGKILL,
        Instant::now() + KILL_WAIT,
        signals,
        &mut record,
        &mut signalled,
    ) {
        log::error!("processes survived SIGKILL; shutting down anyway");
    }
}

/// Signals every process (PID 1) or every child not yet signalled (host),
/// repeatedly so that newly adopted orphans are included, until there are
/// no children or the deadline passes. True if no child is left.
fn phase(
    mode: Mode,
    sig: Signal,
    deadline: Instant,
    signals: &SignalFd,
    record: &mut dyn FnMut(Pid, WaitStatus),
    signalled: &mut BTreeSet<Pid>,
) -> bool {
    let me = getpid();
    let send = |signalled: &mut BTreeSet<Pid>| match mode {
        Mode::Pid1 => {
            if signalled.insert(Pid::from_raw(-1)) {
                // kill(-1) reaches every process but PID 1 itself.
                let _ = kill(Pid::from_raw(-1), sig);
            }
        }
        Mode::Host => {
            for (pid, state) in children_of(Path::new("/proc"), me) {
                if state != 'Z' && signalled.insert(pid) {
                    let _ = kill(pid, sig);
                }
            }
        }
    };
    loop {
        let reaped = reap(&mut *record);
        if reaped.no_children {
            return true;
        }
        send(signalled);
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // Host mode re-scans for adopted orphans every 100ms; PID 1 needs no scan.
        let wait = (deadline - now).min(Duration::from_millis(100));
        wait_for_sigchld(signals, wait);
    }
}

/// Reaps until `done(reaped pids)` or the deadline.
fn wait_until(
    deadline: Instant,
    signals: &SignalFd,
    record: &mut dyn FnMut(Pid, WaitStatus),
    done: &mut dyn FnMut(&BTreeSet<Pid>) -> bool,
) {
    let mut reaped_pids = BTreeSet::new();
    loop {
        let r = reap(|pid, status| {
            reaped_pids.insert(pid);
            record(pid, status);
        });
        if done(&reaped_pids) || r.no_children {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        wait_for_sigchld(signals, deadline - now);
    }
}

/// Blocks until a signal arrives (draining the signalfd) or `wait` passes.
/// Signals other than SIGCHLD are ignored while shutting down.
fn wait_for_sigchld(signals: &SignalFd, wait: Duration) {
    let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(signals),
        PollFlags::POLLIN,
    )];
    if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) > 0 {
        while let Ok(Some(_)) = signals.read_signal() {}
    }
}

/// Syncs, unmounts and reboots or powers off (PID 1), or exits 0 (host).
/// The last line printed is `berth: power off` or `berth: reboot`.
pub fn finish(kind: ShutdownKind, mode: Mode) -> ! {
    match mode {
        Mode::Host => {
            log::info!(target: MILESTONE, "{}", kind.line());
            std::process::exit(0)
        }
        Mode::Pid1 => {
            sync();
            crate::mounts::unmount_all();
            sync();
            log::info!(target: MILESTONE, "{}", kind.line());
            let how = match kind {
                ShutdownKind::PowerOff => RebootMode::RB_POWER_OFF,
                ShutdownKind::Reboot => RebootMode::RB_AUTOBOOT,
            };
            let err = match reboot(how) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            log::error!("reboot(2) failed: {err}; halting here");
            loop {
                // PID 1 must not exit: the kernel would panic.
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_covers_every_workloads_stop_grace() {
        let w = |extra: &str| -> engine::Workload {
            toml::from_str(&format!("image = \"busybox\"\n{extra}")).unwrap()
        };
        assert_eq!(grace_for([]), DEFAULT_GRACE);
        let set = [w(""), w("stop_grace_period = \"2s\"")];
        assert_eq!(grace_for(&set), Duration::from_secs(10 + 2 + 10));
    }

    #[test]
    fn signals_map_to_shutdowns() {
        assert_eq!(
            ShutdownKind::from_signal(Signal::SIGTERM),
            Some(ShutdownKind::PowerOff)
        );
        assert_eq!(
            ShutdownKind::from_signal(Signal::SIGUSR2),
            Some(ShutdownKind::PowerOff)
        );
        assert_eq!(
            ShutdownKind::from_signal(Signal::SIGPWR),
            Some(ShutdownKind::PowerOff)
        );
        assert_eq!(
            ShutdownKind::from_signal(Signal::SIGINT),
            Some(ShutdownKind::Reboot)
        );
        assert_eq!(ShutdownKind::from_signal(Signal::SIGCHLD), None);
        assert_eq!(ShutdownKind::Reboot.line(), "reboot");
    }
}
