//! `berth-build run`: boots the artifacts of `build` under
//! `qemu-system-x86_64`, serial console on stdio.
//!
//! Terminal and signals: QEMU runs in its own process group with a pipe for
//! stdin (berth-build copies its own stdin into it), so the terminal stays in
//! cooked mode and Ctrl-C sends SIGINT to berth-build alone. The first
//! SIGINT (or SIGTERM) presses the guest's ACPI power button over QMP and
//! waits up to [`POWERDOWN_GRACE`] for QEMU to exit after the guest's clean
//! shutdown, pressing again every [`REPRESS_INTERVAL`] (a press that lands
//! before the guest watches its button is lost); a second Ctrl-C (SIGTERM
//! never escalates), or the grace running out, kills QEMU.
//!
//! QEMU's serial output is copied to stdout by berth-build, which is how
//! `--power-off-when-ready` sees init's `berth: ready` line (for CI and
//! scripted demos: boot, come up, shut down cleanly, exit with QEMU's status).
//!
//! Reboot: a guest reboot restarts the machine (same kernel and initrd), like
//! real hardware; a guest power-off ends QEMU. `--no-reboot` makes a reboot
//! (or a panic, with the default `panic=-1`) end QEMU too, for tests.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::accel::{self, Accel, AccelError, Choice};
use crate::qmp::{self, QmpError};
use crate::tools::{Tool, ToolError};

/// How long the guest gets to power off after Ctrl-C.
pub const POWERDOWN_GRACE: Duration = Duration::from_secs(30);

/// The machine could not be run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An artifact is missing from the directory.
    #[error("{0} does not exist (make it with `berth-build build MANIFEST -o DIR`)")]
    MissingArtifact(PathBuf),
    /// `--forward` is not `HOST:GUEST[/tcp|/udp]`.
    #[error("--forward {0:?} is not HOSTPORT:GUESTPORT[/tcp|/udp] (e.g. 8080:80)")]
    Forward(String),
    /// A `--disk` does not exist.
    #[error("disk image {0} does not exist")]
    MissingDisk(PathBuf),
    /// Choosing the accelerator failed.
    #[error(transparent)]
    Accel(#[from] AccelError),
    /// QEMU is missing.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The QMP socket could not be made.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// Starting or watching QEMU failed.
    #[error("cannot run QEMU")]
    Spawn(#[source] std::io::Error),
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling")]
    Signals(#[source] nix::Error),
    /// A file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
}

/// A host port forwarded to the guest (user-mode networking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// UDP instead of TCP.
    pub udp: bool,
    /// Port on the host's loopback.
    pub host: u16,
    /// Port in the guest.
    pub guest: u16,
}

impl std::str::FromStr for Forward {
    type Err = RunError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RunError::Forward(s.to_string());
        let (ports, udp) = match s.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, false),
            Some((ports, "udp")) => (ports, true),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        let (host, guest) = ports.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad);
        Ok(Forward {
            udp,
            host: port(host)?,
            guest: port(guest)?,
        })
    }
}

/// How to run the machine.
#[derive(Debug, Clone)]
pub struct Options {
    /// The directory `build` wrote.
    pub dir: PathBuf,
    /// The accelerator to use.
    pub accel: Choice,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Raw disk images, attached as virtio-blk in order.
    pub disks: Vec<PathBuf>,
    /// Host ports forwarded to the guest.
    pub forwards: Vec<Forward>,
    /// Appended to the default kernel command line.
    pub cmdline: Option<String>,
    /// An extra QMP socket for other tools (QEMU listens on it).
    pub qmp: Option<PathBuf>,
    /// End QEMU on a guest reboot instead of restarting the machine.
    pub no_reboot: bool,
    /// Press the power button once the console shows `berth: ready` (and
    /// the `when_ready` command, if any, has finished).
    pub power_off_when_ready: bool,
    /// A host shell command run once the console shows `berth: ready`
    /// (e.g. fetching a page through a forwarded port).
    pub when_ready: Option<String>,
}

/// The console line init prints once everything declared runs.
const READY_MARK: &[u8] = b"berth: ready ";

/// The files of a built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// The kernel.
    pub vmlinuz: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line (default plus extras).
    pub cmdline: String,
}

impl Artifacts {
    /// Reads `dir`'s `vmlinuz`, `initrd.img` and `cmdline`; appends `extra`.
    pub fn load(dir: &Path, extra: Option<&str>) -> Result<Self, RunError> {
        let existing = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(RunError::MissingArtifact(p))
            }
        };
        let vmlinuz = existing("vmlinuz")?;
        let initrd = existing("initrd.img")?;
        let cmdline_path = existing("cmdline")?;
        let mut cmdline = std::fs::read_to_string(&cmdline_path)
            .map_err(|e| RunError::Read(cmdline_path, e))?
            .trim()
            .to_string();
        // QEMU's user network is never a cloud, but slirp passes
        // 169.254.169.254 on to the host's network: on a cloud VM an image
        // without a manifest would take the host's user-data. `--cmdline
        // berth.cloud=on` (later, so it wins) turns the lookup back on.
        cmdline.push_str(" berth.cloud=off");
        if let Some(extra) = extra.map(str::trim).filter(|e| !e.is_empty()) {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        Ok(Self {
            vmlinuz,
            initrd,
            cmdline,
        })
    }
}

/// QEMU option values are comma-separated; a literal comma is doubled.
fn escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The QEMU command line (without the program name).
pub fn args(art: &Artifacts, accel: Accel, opts: &Options, qmp_socket: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    for s in [
        "-name",
        "berth",
        "-machine",
        "pc",
        "-accel",
        accel.name(),
        "-cpu",
        accel.cpu(),
    ] {
        push(s);
    }
    push("-m");
    push(&opts.memory_mb.to_string());
    push("-smp");
    push(&opts.cpus.to_string());
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
    ] {
        push(s);
    }
    let mut netdev = "user,id=net0".to_string();
    for f in &opts.forwards {
        let proto = if f.udp { "udp" } else { "tcp" };
        netdev.push_str(&format!(
            ",hostfwd={proto}:127.0.0.1:{}-:{}",
            f.host, f.guest
        ));
    }
    for s in ["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"] {
        push(s);
    }
    // Entropy at boot without waiting for the guest's jitter collector.
    for s in ["-device", "virtio-rng-pci"] {
        push(s);
    }
    for disk in &opts.disks {
        push("-drive");
        push(&format!("file={},format=raw,if=virtio", escape(disk)));
    }
    push("-chardev");
    push(&format!("socket,id=berth-qmp,path={}", escape(qmp_socket)));
    push("-mon");
    push("chardev=berth-qmp,mode=control");
    if let Some(extra) = &opts.qmp {
        push("-qmp");
        push(&format!("unix:{},server=on,wait=off", escape(extra)));
    }
    if opts.no_reboot {
        push("-no-reboot");
    }
    a.push("-kernel".into());
    a.push(art.vmlinuz.clone().into());
    a.push("-initrd".into());
    a.push(escape(&art.initrd).into());
    a.push("-append".into());
    a.push(art.cmdline.clone().into());
    a
}

/// Boots the image and returns QEMU's exit status.
pub fn run(opts: &Options) -> Result<ExitStatus, RunError> {
    let art = Artifacts::load(&opts.dir, opts.cmdline.as_deref())?;
    if let Some(missing) = opts.disks.iter().find(|d| !d.is_file()) {
        return Err(RunError::MissingDisk(missing.clone()));
    }
    let accel = accel::choose(opts.accel, &art.vmlinuz)?;
    let mut cmd = Tool::Qemu.command()?;

    // Block the signals we wait for before any thread exists, so every
    // thread inherits the mask and they are only ever read from the
    // signalfd. (std resets the mask in the child before exec.)
    let mut mask = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        mask.add(s);
    }
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // An ignored signal is discarded rather than queued for the
        // signalfd; shells start background jobs with SIGINT ignored.
        // SAFETY: SIG_DFL installs no handler, so no code of ours runs in
        // signal context; the signals are blocked right below anyway.
        unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) }
            .map_err(RunError::Signals)?;
    }
    mask.thread_block().map_err(RunError::Signals)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(RunError::Signals)?;

    let listener = qmp::Listener::new()?;
    let parent = std::process::id();
    cmd.args(args(&art, accel, opts, listener.path()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2) and getppid(2), which are async-signal-safe, and does
    // not allocate or touch memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            // QEMU must not outlive berth-build (e.g. a killed test harness).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                // berth-build already died; no allocation after fork.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    eprintln!(
        "berth-build: booting {} under {} (Ctrl-C powers the guest off)",
        opts.dir.display(),
        accel.name()
    );
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    if let Some(mut qemu_stdin) = child.stdin.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut qemu_stdin);
        });
    }
    // The console copier tells the loop below about `berth: ready` through
    // a socket pair, so the loop polls one more fd instead of sharing state.
    let (ready_rx, ready_tx) = UnixStream::pair().map_err(RunError::Spawn)?;
    if let Some(console) = child.stdout.take() {
        let watch = opts.power_off_when_ready || opts.when_ready.is_some();
        std::thread::spawn(move || copy_console(console, ready_tx, watch));
    }

    let status = watch(&mut child, &signals, &ready_rx, &listener, opts)?;
    // A failed --when-ready command fails the run even if the guest shut
    // down cleanly: that is what scripted checks rely on.
    Ok(match status.hook {
        Some(h) if !h.success() && status.qemu.success() => h,
        _ => status.qemu,
    })
}

/// How a run ended.
struct Ended {
    /// QEMU's exit status.
    qemu: ExitStatus,
    /// The `--when-ready` command's, if it ran to the end.
    hook: Option<ExitStatus>,
}

/// How often the power button is pressed again while the guest has not
/// gone down: a press that lands before the guest watches its button (early
/// in boot) is lost, as on real hardware.
const REPRESS_INTERVAL: Duration = Duration::from_secs(3);

/// Interrupts closer together than this count as one (a signal sent to both
/// the process and its group arrives twice).
const DOUBLE_PRESS: Duration = Duration::from_millis(500);

/// Where a run is in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Nothing asked yet.
    Running,
    /// The power button was pressed; press again at `repress`, kill QEMU if
    /// it still runs at `deadline`.
    PoweringOff {
        /// When the button was first pressed.
        since: Instant,
        /// When to give up and kill.
        deadline: Instant,
        /// When to press again.
        repress: Instant,
    },
    /// QEMU was killed; only waiting for it to be reaped.
    Killed,
}

/// Waits for QEMU to exit, turning Ctrl-C/SIGTERM and the ready line into
/// a power-off request, a second request or the grace running out into a kill.
fn watch(
    child: &mut std::process::Child,
    signals: &SignalFd,
    ready_rx: &UnixStream,
    listener: &qmp::Listener,
    opts: &Options,
) -> Result<Ended, RunError> {
    let mut stop = Stop::Running;
    let mut hook: Option<std::process::Child> = None;
    let mut hook_status: Option<ExitStatus> = None;
    let mut session: Option<qmp::Session> = None;
    let mut console_open = true;
    let kill = |child: &mut std::process::Child, why: &str| {
        eprintln!("berth-build: {why}; killing QEMU");
        let _ = child.kill();
        Stop::Killed
    };
    loop {
        if let Some(status) = child.try_wait().map_err(RunError::Spawn)? {
            if let Some(mut h) = hook.take() {
                // The guest is gone: whatever the command waits for is too.
                let _ = h.kill();
                let _ = h.wait();
            }
            return Ok(Ended {
                qemu: status,
                hook: hook_status,
            });
        }
        let timeout = match stop {
            Stop::PoweringOff {
                deadline, repress, ..
            } => {
                let left = deadline
                    .min(repress)
                    .saturating_duration_since(Instant::now());
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
            Stop::Running | Stop::Killed => PollTimeout::NONE,
        };
        let ready_events = if console_open {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(ready_rx.as_fd(), ready_events),
        ];
        poll(&mut fds, timeout).map_err(RunError::Signals)?;
        let mut guest_ready = false;
        if console_open && fds[1].any().unwrap_or(false) {
            // A byte: the ready line. End of file: the console copier is
            // done (QEMU closed its output), so stop watching it.
            match (&*ready_rx).read(&mut [0; 16]) {
                Ok(n) if n > 0 => guest_ready = true,
                _ => console_open = false,
            }
        }

        // SIGTERM always means "shut down cleanly" (GNU timeout sends it to
        // the process and again to its group); only a second Ctrl-C, not
        // part of the same burst, means "kill now".
        let (mut terminate, mut sigint) = (false, false);
        while let Some(info) = signals.read_signal().map_err(RunError::Signals)? {
            // SIGCHLD only wakes the loop, which then checks QEMU.
            match info.ssi_signo as i32 {
                libc::SIGINT => sigint = true,
                libc::SIGTERM => terminate = true,
                _ => {}
            }
        }
        // After the poll, which SIGCHLD wakes: a finished command is acted
        // on in this same pass.
        let mut hook_done = false;
        if let Some(h) = hook.as_mut() {
            if let Ok(Some(status)) = h.try_wait() {
                eprintln!("berth-build: --when-ready command {status}");
                hook_status = Some(status);
                hook = None;
                hook_done = true;
            }
        }
        let interrupted = sigint || terminate;
        let now = Instant::now();
        stop = match stop {
            Stop::PoweringOff { since, .. } if sigint && now >= since + DOUBLE_PRESS => {
                kill(child, "interrupted again")
            }
            Stop::PoweringOff { deadline, .. } if now >= deadline => kill(
                child,
                &format!(
                    "the guest did not power off within {}s",
                    POWERDOWN_GRACE.as_secs()
                ),
            ),
            Stop::PoweringOff {
                since,
                deadline,
                repress,
            } if now >= repress => match session.as_mut().map(qmp::Session::powerdown) {
                Some(Ok(())) => Stop::PoweringOff {
                    since,
                    deadline,
                    repress: now + REPRESS_INTERVAL,
                },
                Some(Err(e)) => kill(
                    child,
                    &format!("cannot press the guest's power button: {e}"),
                ),
                None => kill(child, "lost the QMP connection"),
            },
            Stop::Running if guest_ready && !interrupted && opts.when_ready.is_some() => {
                match opts.when_ready.as_deref().map(spawn_hook) {
                    Some(Ok(h)) => hook = Some(h),
                    Some(Err(e)) => {
                        eprintln!("berth-build: cannot run the --when-ready command: {e}");
                        hook_status = Some(ExitStatus::from_raw(127 << 8));
                        hook_done = true;
                    }
                    None => {}
                }
                if hook_done && opts.power_off_when_ready {
                    power_off(child, listener, &mut session, now)
                } else {
                    Stop::Running
                }
            }
            Stop::Running
                if interrupted
                    || (opts.power_off_when_ready
                        && (hook_done || (guest_ready && opts.when_ready.is_none()))) =>
            {
                if hook_done && !interrupted {
                    eprintln!("berth-build: powering the guest off");
                } else if !interrupted {
                    eprintln!("berth-build: the guest is ready; powering it off");
                }
                power_off(child, listener, &mut session, now)
            }
            other => other,
        };
    }
}

/// Runs the `--when-ready` command with `sh -c`, its output on ours.
fn spawn_hook(command: &str) -> std::io::Result<std::process::Child> {
    eprintln!("berth-build: the guest is ready; running: {command}");
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .spawn()
}

/// Presses the guest's power button over QMP, or kills QEMU if it cannot.
fn power_off(
    child: &mut std::process::Child,
    listener: &qmp::Listener,
    session: &mut Option<qmp::Session>,
    now: Instant,
) -> Stop {
    let pressed = listener.accept().and_then(|mut s| {
        s.powerdown()?;
        *session = Some(s);
        Ok(())
    });
    match pressed {
        Ok(()) => {
            eprintln!(
                "berth-build: asked the guest to power off (waiting up to {}s; \
                 Ctrl-C again kills QEMU)",
                POWERDOWN_GRACE.as_secs()
            );
            Stop::PoweringOff {
                since: now,
                deadline: now + POWERDOWN_GRACE,
                repress: now + REPRESS_INTERVAL,
            }
        }
        Err(e) => {
            eprintln!("berth-build: cannot ask the guest to power off: {e}; killing QEMU");
            let _ = child.kill();
            Stop::Killed
        }
    }
}

/// Copies QEMU's serial output to stdout; with `watch`, writes a byte to
/// `ready` at the first console line containing [`READY_MARK`]. Keeps
/// draining QEMU even when our stdout is gone, so the guest never blocks on a
/// full pipe. `ready` is closed only when QEMU's output ends.
fn copy_console(mut console: impl Read, ready: UnixStream, watch: bool) {
    let mut ready = watch.then_some(&ready);
    let mut stdout_ok = true;
    let mut line: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match console.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stdout_ok {
            let mut out = std::io::stdout().lock();
            stdout_ok = out.write_all(&buf[..n]).and_then(|()| out.flush()).is_ok();
        }
        if ready.is_some() {
            for &b in &buf[..n] {
                if b != b'\n' {
                    if line.len() < 4096 {
                        line.push(b);
                    }
                    continue;
                }
                if line.windows(READY_MARK.len()).any(|w| w == READY_MARK) {
                    if let Some(mut tx) = ready.take() {
                        let _ = tx.write_all(b"r");
                    }
                    break;
                }
                line.clear();
            }
        }
    }
}

/// The exit code berth-build passes on for QEMU's status (128+signal if killed).
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_and_reject_junk() {
        assert_eq!(
            "8080:80".parse::<Forward>().unwrap(),
            Forward {
                udp: false,
                host: 8080,
                guest: 80
            }
        );
        assert_eq!(
            "5353:53/udp".parse::<Forward>().unwrap(),
            Forward {
                udp: true,
                host: 5353,
                guest: 53
            }
        );
        for bad in ["80", "a:b", "0:80", "70000:80", "80:80/sctp", ""] {
            assert!(bad.parse::<Forward>().is_err(), "{bad}");
        }
    }

    #[test]
    fn qemu_command_line() {
        let art = Artifacts {
            vmlinuz: "/o/vmlinuz".into(),
            initrd: "/o/initrd.img".into(),
            cmdline: "console=ttyS0 berth.x=1".into(),
        };
        let opts = Options {
            dir: "/o".into(),
            accel: Choice::Tcg,
            memory_mb: 512,
            cpus: 1,
            disks: vec!["/d/a,b.img".into()],
            forwards: vec!["8080:80".parse().unwrap()],
            cmdline: None,
            qmp: Some("/t/q.sock".into()),
            no_reboot: true,
            power_off_when_ready: false,
            when_ready: None,
        };
        let line: Vec<String> = args(&art, Accel::Tcg, &opts, Path::new("/r/qmp.sock"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            line.join(" "),
            "-name berth -machine pc -accel tcg -cpu max -m 512 -smp 1 -nodefaults -no-user-config \
             -display none -serial stdio \
             -netdev user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80 -device virtio-net-pci,netdev=net0 \
             -device virtio-rng-pci -drive file=/d/a,,b.img,format=raw,if=virtio \
             -chardev socket,id=berth-qmp,path=/r/qmp.sock -mon chardev=berth-qmp,mode=control \
             -qmp unix:/t/q.sock,server=on,wait=off -no-reboot \
             -kernel /o/vmlinuz -initrd /o/initrd.img -append console=ttyS0 berth.x=1"
        );
    }

    #[test]
    fn missing_artifacts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Artifacts::load(dir.path(), None).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}/vmlinuz does not exist", dir.path().display())),
            "{err}"
        );
    }

    #[test]
    fn run_keeps_the_guest_off_the_hosts_metadata_service() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        std::fs::write(dir.path().join("cmdline"), "console=ttyS0 quiet\n").unwrap();
        let art = Artifacts::load(dir.path(), None).unwrap();
        assert_eq!(art.cmdline, "console=ttyS0 quiet berth.cloud=off");
        let art = Artifacts::load(dir.path(), Some("berth.cloud=on")).unwrap();
        assert_eq!(
            art.cmdline,
            "console=ttyS0 quiet berth.cloud=off berth.cloud=on"
        );
    }
}
