//! A QEMU guest booted for one test: built with [`GuestBuilder`], watched
//! over its serial console, driven over QMP, always killed on drop, its
//! whole console saved under `target/qemu-tests-logs/`.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::accel::{self, Accel, AccelError};
use crate::console::{self, Console, ConsoleError, Matched};
use crate::image::Image;
use crate::paths;
use crate::qmp::{self, Qmp, QmpError, QmpListener};

/// berth-build's default kernel command line, used when an image has no
/// `cmdline` file.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 quiet loglevel=4";

/// How long QEMU may take to connect to the QMP socket after it starts.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many console lines a failure prints to stderr.
const TAIL_LINES: usize = 40;

/// Why a guest could not be started or did not behave.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// No kernel or initramfs was given.
    #[error("guest {name}: no {what} given to the builder")]
    Missing {
        /// The guest's name.
        name: String,
        /// `kernel` or `initrd`.
        what: &'static str,
    },
    /// The accelerator could not be chosen.
    #[error("guest {name}: cannot choose an accelerator")]
    Accel {
        /// The guest's name.
        name: String,
        /// Why.
        #[source]
        source: AccelError,
    },
    /// Setting up the guest's scratch directory, sockets or ports failed.
    #[error("guest {name}: cannot set up {what}")]
    Setup {
        /// The guest's name.
        name: String,
        /// What we were setting up.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("guest {name}: cannot start {qemu}")]
    Spawn {
        /// The guest's name.
        name: String,
        /// The QEMU binary.
        qemu: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited while starting up.
    #[error("guest {name}: QEMU exited at start-up ({status}); its stderr:\n{stderr}")]
    EarlyExit {
        /// The guest's name.
        name: String,
        /// QEMU's exit status.
        status: String,
        /// What QEMU printed.
        stderr: String,
    },
    /// A console expectation failed (timeout or QEMU exit).
    #[error("guest {name}: {status}; whole console in {}", log.display())]
    Console {
        /// The guest's name.
        name: String,
        /// QEMU's state when the expectation failed.
        status: String,
        /// Where the console was saved.
        log: PathBuf,
        /// What did not match.
        #[source]
        source: Box<ConsoleError>,
    },
    /// A QMP command failed.
    #[error("guest {name}: QMP failed; whole console in {}", log.display())]
    Qmp {
        /// The guest's name.
        name: String,
        /// Where the console was saved.
        log: PathBuf,
        /// Why.
        #[source]
        source: Box<QmpError>,
    },
    /// QEMU was still running at the deadline.
    #[error(
        "guest {name}: QEMU did not exit within {timeout:?}; whole console in {}; tail:\n{tail}",
        log.display()
    )]
    ExitTimeout {
        /// The guest's name.
        name: String,
        /// How long we waited.
        timeout: Duration,
        /// Where the console was saved.
        log: PathBuf,
        /// The console's last lines.
        tail: String,
    },
    /// Waiting for QEMU's exit status failed.
    #[error("guest {name}: cannot wait for QEMU")]
    Wait {
        /// The guest's name.
        name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
struct Disk {
    path: PathBuf,
    read_only: bool,
}

/// What the firmware boots instead of QEMU's `-kernel`: a medium written by
/// `berth-build build --format`. Writes go to a temporary overlay
/// (`snapshot=on`), so a medium can be booted by several tests at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    /// An ISO on a CD-ROM drive (IDE on `pc`, SATA/AHCI on `q35`).
    Cdrom(PathBuf),
    /// A disk image (`format`: raw, qcow2, ...) on virtio-blk.
    Disk {
        /// The image.
        path: PathBuf,
        /// Its QEMU format name.
        format: String,
    },
    /// A raw image as a USB stick on an xHCI controller.
    UsbStick(PathBuf),
}

/// The machine's firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    #[default]
    Bios,
    /// OVMF (`$BERTH_OVMF`, else Debian's `/usr/share/ovmf/OVMF.fd`).
    Uefi,
}

/// Debian's OVMF build (package `ovmf`).
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

#[derive(Debug, Clone, Copy)]
enum HostPort {
    Fixed(u16),
    Free,
}

/// Describes a guest; [`GuestBuilder::boot`] starts it.
#[derive(Debug, Clone)]
pub struct GuestBuilder {
    name: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: String,
    cmdline_extra: Vec<String>,
    memory_mb: u32,
    cpus: u32,
    disks: Vec<Disk>,
    forwards: Vec<(HostPort, u16)>,
    network: bool,
    user_net_options: Vec<String>,
    accel: Option<Accel>,
    no_reboot: bool,
    qemu: String,
    qemu_args: Vec<String>,
    media: Option<Media>,
    firmware: Firmware,
    machine: String,
    nic: String,
}

impl Default for GuestBuilder {
    fn default() -> Self {
        Self {
            name: None,
            kernel: None,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_owned(),
            cmdline_extra: Vec::new(),
            memory_mb: 256,
            cpus: 1,
            disks: Vec::new(),
            forwards: Vec::new(),
            network: true,
            user_net_options: Vec::new(),
            accel: None,
            no_reboot: true,
            qemu: std::env::var("BERTH_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
            qemu_args: Vec::new(),
            media: None,
            firmware: Firmware::Bios,
            machine: "pc".into(),
            nic: "virtio-net-pci".into(),
        }
    }
}

impl GuestBuilder {
    /// Names the guest (the log file is `<name>.log`); defaults to the
    /// current test's name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// The kernel to boot.
    pub fn kernel(mut self, path: impl AsRef<Path>) -> Self {
        self.kernel = Some(path.as_ref().to_owned());
        self
    }

    /// The initramfs.
    pub fn initrd(mut self, path: impl AsRef<Path>) -> Self {
        self.initrd = Some(path.as_ref().to_owned());
        self
    }

    /// Replaces the base kernel command line (by default the image's).
    pub fn cmdline(mut self, cmdline: &str) -> Self {
        self.cmdline = cmdline.to_owned();
        self
    }

    /// Appends to the kernel command line, e.g. `berth.manifest=/x.toml`.
    pub fn append_cmdline(mut self, extra: &str) -> Self {
        self.cmdline_extra.push(extra.to_owned());
        self
    }

    /// Guest memory in MiB (default 256).
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// Virtual CPUs (default 1).
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }

    /// Attaches a raw disk image as a virtio-blk device (`/dev/vda`, `vdb`, ...
    /// in the order given).
    pub fn disk(mut self, path: impl AsRef<Path>) -> Self {
        self.disks.push(Disk {
            path: path.as_ref().to_owned(),
            read_only: false,
        });
        self
    }

    /// Attaches a raw disk image read-only.
    pub fn disk_read_only(mut self, path: impl AsRef<Path>) -> Self {
        self.disks.push(Disk {
            path: path.as_ref().to_owned(),
            read_only: true,
        });
        self
    }

    /// Forwards 127.0.0.1:`host` to the guest's TCP port `guest`.
    pub fn forward(mut self, host: u16, guest: u16) -> Self {
        self.forwards.push((HostPort::Fixed(host), guest));
        self
    }

    /// Forwards a free host port (picked at boot, see [`Guest::host_port`])
    /// to the guest's TCP port `guest`.
    pub fn forward_free_port(mut self, guest: u16) -> Self {
        self.forwards.push((HostPort::Free, guest));
        self
    }

    /// Whether the guest gets a virtio-net NIC on QEMU user networking
    /// (default yes; forwards need it).
    pub fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }

    /// Appends options to the user network's `-netdev user,...`, e.g.
    /// `net=169.254.169.0/24,guestfwd=tcp:169.254.169.254:80-cmd:...`.
    pub fn user_net_options(mut self, opts: &str) -> Self {
        self.user_net_options.push(opts.to_owned());
        self
    }

    /// Forces an accelerator instead of asking [`accel::accel`].
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }

    /// Whether a guest reboot ends QEMU (`-no-reboot`, the default) or
    /// restarts the machine.
    pub fn no_reboot(mut self, on: bool) -> Self {
        self.no_reboot = on;
        self
    }

    /// Boots `media` through the firmware instead of `-kernel`/`-initrd`
    /// (the command line is the one built into the medium).
    pub fn boot_media(mut self, media: Media) -> Self {
        self.media = Some(media);
        self
    }

    /// The firmware (default SeaBIOS).
    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    /// QEMU's machine type (default `pc`; `q35` has an AHCI controller).
    pub fn machine(mut self, machine: &str) -> Self {
        self.machine = machine.to_owned();
        self
    }

    /// The NIC's QEMU device model (default `virtio-net-pci`; VirtualBox's
    /// default is `e1000`).
    pub fn nic(mut self, model: &str) -> Self {
        self.nic = model.to_owned();
        self
    }

    /// Adds raw QEMU arguments.
    pub fn qemu_arg(mut self, arg: &str) -> Self {
        self.qemu_args.push(arg.to_owned());
        self
    }

    /// The full kernel command line.
    pub fn full_cmdline(&self) -> String {
        std::iter::once(self.cmdline.as_str())
            .chain(self.cmdline_extra.iter().map(String::as_str))
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts QEMU and waits for it to connect to QMP (so a QEMU that
    /// refuses its arguments fails here, with its stderr).
    pub fn boot(self) -> Result<Guest, GuestError> {
        let name = unique_log_name(self.name.clone().unwrap_or_else(default_name));
        let payload = if self.media.is_some() {
            None
        } else {
            let kernel = self.kernel.clone().ok_or_else(|| GuestError::Missing {
                name: name.clone(),
                what: "kernel",
            })?;
            let initrd = self.initrd.clone().ok_or_else(|| GuestError::Missing {
                name: name.clone(),
                what: "initrd",
            })?;
            Some((kernel, initrd))
        };
        if self.firmware == Firmware::Uefi && !Path::new(&ovmf()).is_file() {
            return Err(GuestError::Setup {
                name,
                what: "UEFI firmware".into(),
                source: std::io::Error::other(format!(
                    "{} is missing (apt-get install ovmf, or set BERTH_OVMF)",
                    ovmf()
                )),
            });
        }
        let accel = match self.accel {
            Some(a) => a,
            None => accel::accel().map_err(|source| GuestError::Accel {
                name: name.clone(),
                source,
            })?,
        };
        let setup = |what: &str| {
            let (name, what) = (name.clone(), what.to_owned());
            move |source| GuestError::Setup { name, what, source }
        };
        let scratch = tempfile::Builder::new()
            .prefix("berth-qemu-")
            .tempdir()
            .map_err(setup("a scratch directory"))?;
        let listener =
            QmpListener::bind(&scratch.path().join("qmp.sock")).map_err(|e| GuestError::Setup {
                name: name.clone(),
                what: "the QMP socket".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let mut forwards = Vec::new();
        for &(host, guest) in &self.forwards {
            let host = match host {
                HostPort::Fixed(p) => p,
                HostPort::Free => free_port().map_err(setup("a free host port"))?,
            };
            forwards.push((host, guest));
        }

        let args = self.qemu_command_args(payload.as_ref(), accel, listener.path(), &forwards);
        let mut cmd = Command::new(&self.qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe
        // and touches no memory of the parent, as required between fork and
        // exec. It asks the kernel to SIGKILL QEMU if the test thread that
        // forked it dies without dropping the Guest (e.g. the test binary is
        // killed).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| GuestError::Spawn {
            name: name.clone(),
            qemu: self.qemu.clone(),
            source,
        })?;

        let console = Console::new();
        let stderr = Console::new();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(console.spawn_reader(out));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(stderr.spawn_reader(err));
        }
        let mut guest = Guest {
            name,
            child,
            console,
            stderr,
            cursor: 0,
            readers,
            qmp: None,
            listener,
            exit: None,
            forwards,
            command_line: format!("{} {}", self.qemu, shell_words(&args)),
            started,
            failed: false,
            scratch,
        };
        guest.connect_qmp()?;
        Ok(guest)
    }

    fn qemu_command_args(
        &self,
        payload: Option<&(PathBuf, PathBuf)>,
        accel: Accel,
        qmp_socket: &Path,
        forwards: &[(u16, u16)],
    ) -> Vec<String> {
        let mut a: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-machine",
            &self.machine,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        a.extend(accel.qemu_args().iter().map(|s| (*s).to_owned()));
        a.extend([
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory_mb.to_string(),
        ]);
        if let Some((kernel, initrd)) = payload {
            a.extend([
                "-kernel".into(),
                kernel.display().to_string(),
                "-initrd".into(),
                initrd.display().to_string(),
                "-append".into(),
                self.full_cmdline(),
            ]);
        }
        if self.firmware == Firmware::Uefi {
            a.extend(["-bios".into(), ovmf()]);
        }
        match &self.media {
            None => {}
            Some(Media::Cdrom(path)) => a.extend([
                "-drive".into(),
                format!(
                    "file={},format=raw,media=cdrom,if=ide,readonly=on",
                    path.display()
                ),
            ]),
            Some(Media::Disk { path, format }) => a.extend([
                "-drive".into(),
                format!(
                    "file={},format={format},if=virtio,snapshot=on,id=boot",
                    path.display()
                ),
            ]),
            Some(Media::UsbStick(path)) => a.extend([
                "-device".into(),
                "qemu-xhci,id=xhci".into(),
                "-drive".into(),
                format!(
                    "file={},format=raw,if=none,snapshot=on,id=stick",
                    path.display()
                ),
                "-device".into(),
                "usb-storage,bus=xhci.0,drive=stick,bootindex=0".into(),
            ]),
        }
        a.extend([
            "-chardev".into(),
            format!("socket,id=qmp,path={}", qmp_socket.display()),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
        ]);
        if self.no_reboot {
            a.push("-no-reboot".into());
        }
        if self.network {
            let mut netdev = "user,id=n0".to_owned();
            for (host, guest) in forwards {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            for opts in &self.user_net_options {
                netdev.push_str(&format!(",{opts}"));
            }
            a.extend([
                "-netdev".into(),
                netdev,
                "-device".into(),
                format!("{},netdev=n0", self.nic),
            ]);
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let ro = if disk.read_only { ",readonly=on" } else { "" };
            a.extend([
                "-drive".into(),
                format!(
                    "file={},format=raw,if=virtio,id=disk{i}{ro}",
                    disk.path.display()
                ),
            ]);
        }
        a.extend(self.qemu_args.iter().cloned());
        a
    }
}

/// The OVMF image UEFI guests boot.
fn ovmf() -> String {
    std::env::var("BERTH_OVMF").unwrap_or_else(|_| OVMF.to_owned())
}

/// A running QEMU guest. Dropping it kills QEMU and saves the console.
#[derive(Debug)]
pub struct Guest {
    name: String,
    child: Child,
    console: Console,
    stderr: Console,
    cursor: usize,
    readers: Vec<JoinHandle<()>>,
    qmp: Option<Qmp>,
    listener: QmpListener,
    exit: Option<ExitStatus>,
    forwards: Vec<(u16, u16)>,
    command_line: String,
    started: Instant,
    failed: bool,
    // Last, so the QMP socket's directory outlives everything that uses it.
    scratch: TempDir,
}

impl Guest {
    /// A builder with nothing set.
    pub fn builder() -> GuestBuilder {
        GuestBuilder::default()
    }

    /// A builder for `image`: its kernel, initramfs and default command line.
    pub fn from_image(image: &Image) -> GuestBuilder {
        GuestBuilder::default()
            .kernel(image.kernel())
            .initrd(image.initrd())
            .cmdline(image.cmdline())
    }

    /// The guest's name (also its log file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the console is saved when the guest is dropped or fails.
    pub fn log_path(&self) -> PathBuf {
        paths::logs_dir().join(format!("{}.log", self.name))
    }

    /// A directory that lives as long as the guest (for disk images etc.).
    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The host port forwarded to the guest's TCP port `guest`.
    pub fn host_port(&self, guest: u16) -> Option<u16> {
        self.forwards
            .iter()
            .find(|(_, g)| *g == guest)
            .map(|(h, _)| *h)
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until `pattern` (a regex; `^`/`$` match at line boundaries)
    /// matches a console line printed after the previous match, and returns
    /// what it matched. Fails at `timeout`, or at once if QEMU exits first.
    pub fn expect_console(
        &mut self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<Matched, GuestError> {
        let mut cursor = self.cursor;
        let found = self.expect_from(&mut cursor, pattern, timeout);
        self.cursor = cursor;
        found
    }

    /// Like [`Guest::expect_console`], but the line may be anywhere on the
    /// console, before or after earlier matches (for lines that concurrent
    /// processes print in no set order); the cursor does not move.
    pub fn expect_console_anywhere(
        &mut self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<Matched, GuestError> {
        self.expect_from(&mut 0, pattern, timeout)
    }

    fn expect_from(
        &mut self,
        cursor: &mut usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<Matched, GuestError> {
        match self.console.expect(cursor, pattern, timeout) {
            Ok(m) => Ok(m),
            Err(source) => {
                let status = self.describe_state();
                Err(GuestError::Console {
                    name: self.name.clone(),
                    status: format!("console expectation failed, {status}"),
                    log: self.record_failure(),
                    source: Box::new(source),
                })
            }
        }
    }

    /// Everything the guest printed on its console so far.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// The console's `berth:` lines so far, each starting at `berth:`.
    pub fn berth_lines(&self) -> Vec<String> {
        console::berth_lines(&self.console.text())
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Runs a QMP command and returns its result.
    pub fn qmp(&mut self, command: &str, arguments: Option<&Value>) -> Result<Value, GuestError> {
        self.connect_qmp()?;
        let result = match self.qmp.as_mut() {
            Some(q) => q.execute(command, arguments),
            None => Err(QmpError::Closed {
                during: format!("command {command}"),
            }),
        };
        result.map_err(|source| GuestError::Qmp {
            name: self.name.clone(),
            log: self.record_failure(),
            source: Box::new(source),
        })
    }

    /// Presses the ACPI power button (QMP `system_powerdown`).
    pub fn power_button(&mut self) -> Result<(), GuestError> {
        self.qmp("system_powerdown", None).map(drop)
    }

    /// Sends Ctrl-Alt-Del on the PS/2 keyboard (QMP `send-key`).
    pub fn ctrl_alt_del(&mut self) -> Result<(), GuestError> {
        self.qmp("send-key", Some(&qmp::ctrl_alt_del_keys()))
            .map(drop)
    }

    /// Waits up to `timeout` for QEMU to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, GuestError> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        // QEMU's stdout closes when it exits: the console reader's EOF is the
        // exit notification, so nothing polls.
        if !self.console.wait_closed(timeout) {
            return Err(GuestError::ExitTimeout {
                name: self.name.clone(),
                timeout,
                log: self.record_failure(),
                tail: self.console.tail(2000),
            });
        }
        let status = self.child.wait().map_err(|source| GuestError::Wait {
            name: self.name.clone(),
            source,
        })?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Kills QEMU now (drop does this too) and returns its status.
    pub fn kill(&mut self) -> Result<ExitStatus, GuestError> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        // Killing an already-exited child is harmless: wait() below reaps it.
        let _ = self.child.kill();
        let status = self.child.wait().map_err(|source| GuestError::Wait {
            name: self.name.clone(),
            source,
        })?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Marks the guest as failed and writes its log now, returning the log's
    /// path; the console tail is printed when the guest is dropped. Call it
    /// when a test's own assertion on the console fails.
    pub fn record_failure(&mut self) -> PathBuf {
        self.failed = true;
        self.save_log()
    }

    fn connect_qmp(&mut self) -> Result<(), GuestError> {
        if self.qmp.is_some() {
            return Ok(());
        }
        let exit = pidfd_open(self.child.id());
        match self
            .listener
            .accept_or_exit(QMP_CONNECT_TIMEOUT, exit.as_ref().map(AsFd::as_fd))
        {
            Ok(q) => {
                self.qmp = Some(q);
                Ok(())
            }
            // QEMU connects before it loads the kernel, so a bad argument
            // can also show up as a QMP connection closing mid-handshake;
            // its stdout then closes too.
            Err(source)
                if matches!(source, QmpError::PeerExited)
                    || self.console.wait_closed(Duration::from_secs(5)) =>
            {
                let status = self
                    .kill()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                Err(GuestError::EarlyExit {
                    name: self.name.clone(),
                    status,
                    stderr: self.stderr.text(),
                })
            }
            Err(source) => Err(GuestError::Qmp {
                name: self.name.clone(),
                log: self.record_failure(),
                source: Box::new(source),
            }),
        }
    }

    fn describe_state(&mut self) -> String {
        if self.exit.is_none() && self.console.is_closed() {
            // Stdout closed: QEMU has exited or is about to, so this returns.
            self.exit = self.child.wait().ok();
        }
        match self.exit {
            Some(status) => format!("QEMU exited ({status})"),
            None => format!("QEMU still running after {:.1?}", self.started.elapsed()),
        }
    }

    fn save_log(&self) -> PathBuf {
        let path = self.log_path();
        let mut text = format!(
            "# guest {}\n# {}\n# exit: {}\n# elapsed: {:.1?}\n# ---- serial console ----\n",
            self.name,
            self.command_line,
            self.exit
                .map_or_else(|| "still running".to_owned(), |s| s.to_string()),
            self.started.elapsed()
        );
        text.push_str(&self.console.text());
        let stderr = self.stderr.text();
        if !stderr.is_empty() {
            text.push_str("\n# ---- qemu stderr ----\n");
            text.push_str(&stderr);
        }
        // Saving the log is best effort: a failure here must not hide the
        // test's own failure.
        let _ = std::fs::create_dir_all(paths::logs_dir());
        let _ = std::fs::write(&path, text);
        path
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.kill();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let path = self.save_log();
        if self.failed || std::thread::panicking() {
            let text = self.console.text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
            eprintln!(
                "guest {} failed; whole console in {}\n---- last {} console lines ----\n{}\n----",
                self.name,
                path.display(),
                TAIL_LINES,
                tail
            );
            let stderr = self.stderr.text();
            if !stderr.trim().is_empty() {
                eprintln!("---- qemu stderr ----\n{}----", stderr);
            }
        }
    }
}

/// The current test's name (test threads are named after their test).
fn default_name() -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => n.to_owned(),
        _ => format!("guest-{}", std::process::id()),
    }
}

/// Makes `name` safe as a file name and unique within this process.
fn unique_log_name(name: String) -> String {
    static SEEN: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let count = seen
        .get_or_insert_with(HashMap::new)
        .entry(clean.clone())
        .or_insert(0);
    *count += 1;
    if *count == 1 {
        clean
    } else {
        format!("{clean}-{count}")
    }
}

/// A TCP port on 127.0.0.1 that is free right now (the kernel's pick).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A pidfd for `pid`, readable once the process exits; `None` on kernels
/// without pidfd_open(2) (then only the QMP timeout bounds the wait).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new
    // file descriptor or -1; no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = libc::c_int::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing
    // else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_command_line_has_the_contracted_pieces() {
        let b = Guest::builder()
            .cmdline(DEFAULT_CMDLINE)
            .append_cmdline("berth.manifest=/etc/berth/bad.toml")
            .memory_mb(384)
            .disk("/tmp/config.img")
            .disk_read_only("/tmp/ro.img")
            .forward(8080, 80);
        let args = b.qemu_command_args(
            Some(&("/k".into(), "/i".into())),
            Accel::Tcg,
            Path::new("/s/qmp.sock"),
            &[(8080, 80), (2222, 22)],
        );
        let joined = args.join(" ");
        for piece in [
            "-nodefaults",
            "-display none",
            "-serial stdio",
            "-accel tcg -cpu max",
            "-m 384",
            "-kernel /k",
            "-initrd /i",
            "-chardev socket,id=qmp,path=/s/qmp.sock -mon chardev=qmp,mode=control",
            "-no-reboot",
            "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:2222-:22",
            "-drive file=/tmp/config.img,format=raw,if=virtio,id=disk0 ",
            "-drive file=/tmp/ro.img,format=raw,if=virtio,id=disk1,readonly=on",
        ] {
            assert!(joined.contains(piece), "{piece:?} not in {joined}");
        }
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(
            args[append + 1],
            "console=ttyS0 panic=-1 quiet loglevel=4 berth.manifest=/etc/berth/bad.toml"
        );
    }

    #[test]
    fn media_boot_through_the_firmware() {
        let b = Guest::builder()
            .boot_media(Media::Cdrom("/m/berth.iso".into()))
            .firmware(Firmware::Uefi)
            .machine("q35")
            .nic("e1000");
        let args = b.qemu_command_args(None, Accel::Tcg, Path::new("/q"), &[]);
        let joined = args.join(" ");
        assert!(
            !joined.contains("-kernel") && !joined.contains("-append"),
            "{joined}"
        );
        for piece in [
            "-machine q35",
            &format!("-bios {}", ovmf()),
            "-drive file=/m/berth.iso,format=raw,media=cdrom,if=ide,readonly=on",
            "-device e1000,netdev=n0",
        ] {
            assert!(joined.contains(piece), "{piece:?} not in {joined}");
        }
        let stick = Guest::builder()
            .boot_media(Media::UsbStick("/m/berth.iso".into()))
            .qemu_command_args(None, Accel::Tcg, Path::new("/q"), &[])
            .join(" ");
        assert!(
            stick.contains("usb-storage,bus=xhci.0,drive=stick"),
            "{stick}"
        );
        assert!(!stick.contains("-bios"), "{stick}");
    }

    #[test]
    fn reboot_can_be_allowed() {
        let args = Guest::builder().no_reboot(false).qemu_command_args(
            Some(&("/k".into(), "/i".into())),
            Accel::Kvm,
            Path::new("/q"),
            &[],
        );
        assert!(!args.iter().any(|a| a == "-no-reboot"));
        assert!(args.join(" ").contains("-accel kvm -cpu host"));
    }

    #[test]
    fn log_names_are_unique_and_safe() {
        assert_eq!(unique_log_name("a::b c".into()), "a__b_c");
        assert_eq!(unique_log_name("a::b c".into()), "a__b_c-2");
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }

    #[test]
    fn a_qemu_that_rejects_its_arguments_fails_boot_with_its_stderr() {
        let err = Guest::builder()
            .kernel("/nonexistent/vmlinuz")
            .initrd("/nonexistent/initrd")
            .accel(Accel::Tcg)
            .boot()
            .unwrap_err();
        match err {
            GuestError::EarlyExit { stderr, .. } => {
                assert!(stderr.contains("/nonexistent/vmlinuz"), "{stderr}")
            }
            GuestError::Spawn { .. } => {} // no QEMU on this machine
            other => panic!("unexpected error: {other}"),
        }
    }
}
