//! init's main loop: one `poll` over a signalfd, the daemons' readiness pipes
//! and the power buttons, with timers for restarts, readiness timeouts and
//! the late-device watch. It returns when a shutdown is requested.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::logger::{uptime, MILESTONE};
use crate::powerbutton::PowerButtons;
use crate::reaper::reap;
use crate::shutdown::ShutdownKind;
use crate::supervisor::Supervisor;

/// The signals init handles; they are blocked and read from a signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR2,
        Signal::SIGPWR,
        Signal::SIGHUP,
    ] {
        set.add(sig);
    }
    set
}

/// Blocks [`handled_signals`] and opens the signalfd that delivers them.
/// Call it first thing, before any child exists; children get a clean
/// signal mask from `Command`.
pub fn open_signalfd() -> nix::Result<SignalFd> {
    let set = handled_signals();
    set.thread_block()?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Something to run now and then after boot (late devices: coldplug again,
/// look for the power button). Its interval doubles up to a cap.
pub struct Watch<'a> {
    /// The work; gets the power buttons to rescan.
    pub run: Box<dyn FnMut(&mut PowerButtons) + 'a>,
    /// First interval.
    pub every: Duration,
    /// Largest interval.
    pub max: Duration,
}

/// What the loop needs.
pub struct EventLoop<'a> {
    /// Delivers the handled signals.
    pub signals: &'a SignalFd,
    /// The daemons.
    pub supervisor: &'a mut Supervisor,
    /// Power buttons to read.
    pub buttons: &'a mut PowerButtons,
    /// Periodic late-device work, if any.
    pub watch: Option<Watch<'a>>,
}

impl EventLoop<'_> {
    /// Runs until a shutdown is requested, printing `berth: ready ...` once
    /// when the daemons have all reported (or timed out).
    pub fn run(&mut self) -> ShutdownKind {
        let mut next_watch = Instant::now();
        loop {
            if let Some(kind) = self.turn(&mut next_watch, true) {
                return kind;
            }
        }
    }

    /// Runs until the daemons started so far have all reported (or timed
    /// out), without announcing readiness: init has more to start. Returns
    /// the shutdown asked for meanwhile, if one was.
    pub fn run_until_settled(&mut self) -> Option<ShutdownKind> {
        let mut next_watch = Instant::now();
        loop {
            if let Some(kind) = self.turn(&mut next_watch, false) {
                return Some(kind);
            }
            if self.supervisor.boot_settled() {
                return None;
            }
        }
    }

    /// One wait for something to happen, and its handling. `announce`
    /// prints the ready line when boot completes.
    fn turn(&mut self, next_watch: &mut Instant, announce: bool) -> Option<ShutdownKind> {
        let now = Instant::now();
        self.supervisor.on_timer(now);
        // Late devices first, so that a power button that exists when
        // `ready` is printed is already being watched.
        if let Some(watch) = self.watch.as_mut() {
            if now >= *next_watch {
                (watch.run)(self.buttons);
                *next_watch = now + watch.every;
                watch.every = (watch.every * 2).min(watch.max);
            }
        }
        if announce {
            if let Some(workloads) = self.supervisor.take_boot_complete() {
                log::info!(
                    target: MILESTONE,
                    "ready uptime_ms={} workloads={workloads}",
                    uptime().as_millis()
                );
            }
        } else if self.supervisor.boot_settled() {
            return None;
        }

        let mut deadline = self.supervisor.next_deadline();
        if self.watch.is_some() {
            deadline = Some(deadline.map_or(*next_watch, |d| d.min(*next_watch)));
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d.saturating_duration_since(Instant::now()).as_millis();
                // Round up so a timer is never polled for 0ms repeatedly.
                PollTimeout::from(u16::try_from(ms + 1).unwrap_or(u16::MAX))
            }
        };

        let ready = self.supervisor.ready_fds();
        let ready_idx: Vec<usize> = ready.iter().map(|(i, _)| *i).collect();
        let button_fds = self.buttons.fds();
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            ready
                .iter()
                .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)),
        );
        fds.extend(
            button_fds
                .iter()
                .map(|fd| PollFd::new(*fd, PollFlags::POLLIN)),
        );
        let n = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                log::error!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                0
            }
        };
        let fired: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        drop(button_fds);
        drop(ready);
        if n <= 0 {
            return None;
        }

        if fired.first() == Some(&true) {
            if let Some(kind) = self.drain_signals() {
                return Some(kind);
            }
        }
        let now = Instant::now();
        for (k, &index) in ready_idx.iter().enumerate() {
            if fired.get(1 + k) == Some(&true) {
                self.supervisor.on_readable(index, now);
            }
        }
        let base = 1 + ready_idx.len();
        // Read from the highest index down: a failing device is removed.
        for b in (0..fired.len().saturating_sub(base)).rev() {
            if fired.get(base + b) == Some(&true) && self.buttons.pressed(b) {
                log::info!(target: MILESTONE, "power button pressed");
                return Some(ShutdownKind::PowerOff);
            }
        }
        None
    }

    fn drain_signals(&mut self) -> Option<ShutdownKind> {
        let mut requested = None;
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let Ok(sig) = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0))
                    else {
                        continue;
                    };
                    if sig == Signal::SIGCHLD {
                        self.reap();
                    } else if let Some(kind) = ShutdownKind::from_signal(sig) {
                        log::info!("{} received: {}", sig.as_str(), kind.line());
                        requested.get_or_insert(kind);
                    } else {
                        log::debug!("ignoring {}", sig.as_str());
                    }
                }
                Ok(None) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("reading signals failed: {e}");
                    break;
                }
            }
        }
        // Reap even without a SIGCHLD: signals coalesce.
        self.reap();
        requested
    }

    fn reap(&mut self) {
        let now = Instant::now();
        let supervisor = &mut *self.supervisor;
        reap(|pid, status| {
            if !supervisor.on_exit(pid, &status, now) {
                log::debug!("reaped pid {pid} ({status:?})");
            }
        });
    }
}
