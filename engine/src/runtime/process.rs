//! Making the container's processes, and the typed messages they exchange
//! with the parent over `SOCK_SEQPACKET` socket pairs (after youki's
//! `channel.rs`/`message.rs`).
//!
//! A container's init:
//!
//! ```text
//! parent ──fork──▶ stage 1 ──clone(CLONE_PARENT|CLONE_NEW{PID,NS,UTS,IPC[,NET]})──▶ init (pid 1)
//!   ◀── Report::Forked{pid} ── stage 1 exits
//!   ◀── FromChild::Ready ────────────────────── init: cgroup, cgroupns, rootfs, pivot_root,
//!                                                hostname, lo, user, workdir, stdio
//!   ── ToChild::Start ─────────────────────────▶ init: caps, setuid, no_new_privs, execve
//!   ◀── EOF (exec'd, the socket is CLOEXEC) or FromChild::Failed
//! ```
//!
//! Stage 1 exists because a raw `clone` from a multi-threaded parent would
//! leave the child with locks other threads held; `fork` resets the
//! allocator's, and stage 1 is single-threaded. `CLONE_PARENT` makes init
//! the parent's own child, so the parent waits for it and gets its status.
//!
//! An exec: stage 1 joins the pid namespace and forks the process, which
//! joins the cgroup and the other namespaces; stage 1 stays as its reaper
//! and reports its exit (`Report::Exited`), so a container whose init dies
//! never waits for the parent to reap an exec'd process.
//!
//! The children never log, print, or touch a lock another thread of the
//! parent may hold; they end in `execve` or `_exit`.

use std::ffi::CString;
use std::io::IoSlice;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::stat::Mode;
use nix::sys::wait::WaitStatus;
use nix::unistd::{Gid, Uid};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::caps::{self, Capabilities, DOCKER_DEFAULT};
use super::namespaces::{self, NamespaceFds};
use super::rootfs;
use super::spec::{env_value, lookup_command, Network, ProcessSpec};
use super::user;

/// Largest message on a channel.
const MAX_MESSAGE: usize = 64 * 1024;

/// Problems on a parent↔child channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A socket call failed.
    #[error("container channel: {what} failed")]
    Io {
        /// `socketpair`, `sendmsg`, `recvmsg`, `poll`.
        what: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// A message did not decode.
    #[error("container channel: malformed message")]
    Decode(#[source] serde_json::Error),
    /// No message within the time allowed.
    #[error("container channel: no message within {0:?}")]
    Timeout(Duration),
}

/// One end of a socket pair that sends `S` and receives `R`.
#[derive(Debug)]
pub(crate) struct Channel<S, R> {
    fd: OwnedFd,
    _types: PhantomData<fn(S) -> R>,
}

/// The two ends of a channel.
pub(crate) type Pair<S, R> = (Channel<S, R>, Channel<R, S>);

/// A connected pair: the parent's end and the child's end.
pub(crate) fn channel<S, R>() -> Result<Pair<S, R>, ChannelError> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|source| ChannelError::Io {
        what: "socketpair",
        source,
    })?;
    Ok((
        Channel {
            fd: a,
            _types: PhantomData,
        },
        Channel {
            fd: b,
            _types: PhantomData,
        },
    ))
}

impl<S: Serialize, R: DeserializeOwned> Channel<S, R> {
    /// Sends one message, with a descriptor attached when given.
    pub(crate) fn send(&self, msg: &S, fd: Option<BorrowedFd<'_>>) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg).map_err(ChannelError::Decode)?;
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        loop {
            match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(ChannelError::Io {
                        what: "sendmsg",
                        source,
                    })
                }
            }
        }
    }

    /// Receives one message (and the descriptor sent with it); `None` when
    /// every holder of the other end has closed it (or exec'd).
    pub(crate) fn recv(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<(R, Option<OwnedFd>)>, ChannelError> {
        if !wait_readable(self.fd.as_fd(), timeout).map_err(|source| ChannelError::Io {
            what: "poll",
            source,
        })? {
            return Err(ChannelError::Timeout(timeout.unwrap_or_default()));
        }
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
        let (n, fd) = loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fd = None;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(fds) = c {
                                for raw in fds {
                                    // SAFETY: the kernel just installed this
                                    // descriptor for us; nothing else owns it.
                                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                                    fd.get_or_insert(owned);
                                }
                            }
                        }
                    }
                    break (msg.bytes, fd);
                }
                Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(ChannelError::Io {
                        what: "recvmsg",
                        source,
                    })
                }
            }
        };
        if n == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..n]).map_err(ChannelError::Decode)?;
        Ok(Some((msg, fd)))
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What stage 1 tells the parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The process exists: its pid in the parent's pid namespace.
    Forked {
        /// Host pid.
        pid: i32,
    },
    /// (exec) The process ended.
    Exited(ExitStatus),
    /// Stage 1 failed.
    Failed(Failure),
}

/// What the container process tells the parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromChild {
    /// The master side of the terminal made in the container is attached.
    PtyMaster,
    /// Set up; waiting for [`ToChild::Start`].
    Ready,
    /// Set-up or `execve` failed.
    Failed(Failure),
}

/// What the parent tells the container process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToChild {
    /// Drop privileges and `execve`.
    Start,
}

/// A failure in a child, as it crosses the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What kind of failure (decides Docker's exit code for it).
    pub kind: FailureKind,
    /// The whole error chain, as a sentence.
    pub message: String,
}

/// Kinds of child failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// Namespaces, mounts, cgroup, capabilities, ...
    Setup,
    /// The user or group does not resolve.
    User,
    /// The command does not exist (Docker exits 127).
    CommandNotFound,
    /// The command cannot be executed (Docker exits 126).
    CommandNotExecutable,
}

impl Failure {
    fn setup(err: &dyn std::error::Error) -> Failure {
        Failure {
            kind: FailureKind::Setup,
            message: chain(err),
        }
    }
}

/// `error: cause: cause`, each once.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

/// How a process ended, as Docker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal when killed.
    pub code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// From `waitpid`'s answer; `None` for stops and continues.
    pub fn from_wait(status: WaitStatus) -> Option<ExitStatus> {
        match status {
            WaitStatus::Exited(_, code) => Some(ExitStatus { code, signal: None }),
            WaitStatus::Signaled(_, sig, _) => Some(ExitStatus {
                code: 128 + sig as i32,
                signal: Some(sig as i32),
            }),
            _ => None,
        }
    }
}

// ---- small syscall wrappers ----------------------------------------------

/// Forks like `fork(2)` but with `flags` (namespaces, `CLONE_PARENT`).
///
/// # Safety
///
/// The caller must be single-threaded: the child is a copy of this thread
/// only, and unlike `fork` no atfork handlers run.
unsafe fn clone_fork(flags: libc::c_ulong) -> Result<i32, Errno> {
    // SAFETY: without CLONE_VM and with a null stack the child gets a copy
    // of our address space and resumes here like fork(); the caller
    // guarantees no other thread holds a lock the child could need.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    Errno::result(r).map(|pid| pid as i32)
}

/// `pidfd_open(2)`.
pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes integers and returns a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(r)? as RawFd;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(2)`: cannot hit a recycled pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> Result<(), Errno> {
    // SAFETY: a live pidfd, a signal number, no siginfo (NULL), no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Waits until `fd` is readable (or hung up); `false` on timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool, Errno> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let wait = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a short wait does not spin.
                let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128);
                PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// `_exit(2)`: no atexit handlers, no stdio flush (the parent's buffers
/// are not ours to flush).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory.
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor but `keep` (stage 1 must not hold other
/// containers' pipes open for the lifetime of an exec).
fn close_fds_except(keep: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing a descriptor number; the read_dir handle is
            // already closed and nothing in this process uses these fds.
            unsafe { libc::close(fd) };
        }
    }
}

/// Marks every descriptor from 3 up close-on-exec.
fn cloexec_from_3() -> Result<(), Errno> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(r).map(drop)
}

/// Resets ignored signals to their default and unblocks all: both survive
/// `execve`, and the parent (a Rust program ignores SIGPIPE; a runtime may
/// block signals) must not pass its own on to the container.
fn reset_signals() -> Result<(), Errno> {
    /// The kernel's `struct sigaction` (x86_64, as rt_sigaction takes it).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads one kernel sigaction (8-byte mask)
        // that outlives the call; SIG_DFL needs no restorer. The raw call
        // also reaches the signals the C library reserves (32, 33), which
        // a parent may have left ignored.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
}

/// `dup2(2)` onto 0, 1 or 2.
fn dup_onto(fd: RawFd, target: RawFd) -> Result<(), Errno> {
    // SAFETY: dup2 on descriptor numbers; `target` is one of 0-2, which
    // this process owns as its standard streams.
    let r = unsafe { libc::dup2(fd, target) };
    Errno::result(r).map(drop)
}

/// Makes the terminal on fd 0 the controlling terminal.
fn set_controlling_tty() -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    let r = unsafe { libc::ioctl(0, libc::TIOCSCTTY as _, 0) };
    Errno::result(r).map(drop)
}

// ---- the children ---------------------------------------------------------

/// How the container's standard streams are given.
#[derive(Debug)]
pub(crate) enum StdioFds {
    /// Descriptors from the caller; stdin `/dev/null` in the container when absent.
    Fds {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A terminal made in the container; its master goes to the parent.
    Tty,
}

impl StdioFds {
    fn raw_fds(&self) -> Vec<RawFd> {
        match self {
            StdioFds::Fds {
                stdin,
                stdout,
                stderr,
            } => stdin
                .iter()
                .chain([stdout, stderr])
                .map(|f| f.as_raw_fd())
                .collect(),
            StdioFds::Tty => Vec::new(),
        }
    }
}

/// Everything a container's init needs, prepared by the parent.
pub(crate) struct InitContext<'a> {
    pub process: &'a ProcessSpec,
    pub hostname: &'a str,
    pub network: Network,
    pub rootfs: rootfs::Plan<'a>,
    pub read_only: bool,
    pub cgroup_procs: Option<&'a OwnedFd>,
    pub stdio: &'a StdioFds,
}

/// Everything an exec needs.
pub(crate) struct ExecContext<'a> {
    pub process: &'a ProcessSpec,
    pub namespaces: &'a NamespaceFds,
    pub cgroup_procs: Option<&'a OwnedFd>,
    pub stdio: &'a StdioFds,
}

pub(crate) type ParentEnd = Channel<ToChild, FromChild>;
pub(crate) type ChildEnd = Channel<FromChild, ToChild>;
pub(crate) type ReportRx = Channel<(), Report>;
pub(crate) type ReportTx = Channel<Report, ()>;

/// Forks stage 1 of a container's init. Returns stage 1's pid.
pub(crate) fn spawn_init(
    ctx: &InitContext<'_>,
    child: &ChildEnd,
    report: &ReportTx,
) -> Result<i32, Errno> {
    // SAFETY: the child runs only `stage1_init`, which allocates (the
    // allocator's locks are reset by fork) but never takes a lock another
    // thread may hold, and ends in `_exit`.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
        nix::unistd::ForkResult::Child => stage1_init(ctx, child, report),
    }
}

fn stage1_init(ctx: &InitContext<'_>, child: &ChildEnd, report: &ReportTx) -> ! {
    let mut keep = vec![child.raw_fd(), report.raw_fd()];
    keep.extend(ctx.stdio.raw_fds());
    keep.extend(ctx.cgroup_procs.map(|f| f.as_raw_fd()));
    close_fds_except(&keep);
    let flags = namespaces::clone_flags(ctx.network).bits() as libc::c_ulong
        | libc::CLONE_PARENT as libc::c_ulong;
    // SAFETY: stage 1 is the single thread fork left.
    match unsafe { clone_fork(flags) } {
        Ok(0) => {
            drop_report(report);
            let failure = match std::panic::catch_unwind(|| init_main(ctx, child)) {
                Ok(f) => f,
                Err(_) => Failure {
                    kind: FailureKind::Setup,
                    message: "the container's init panicked during set-up".into(),
                },
            };
            let _ = child.send(&FromChild::Failed(failure), None);
            exit_now(1)
        }
        Ok(pid) => {
            let _ = report.send(&Report::Forked { pid }, None);
            exit_now(0)
        }
        Err(e) => {
            let _ = report.send(
                &Report::Failed(Failure {
                    kind: FailureKind::Setup,
                    message: format!("cannot clone the container's init: {e}"),
                }),
                None,
            );
            exit_now(1)
        }
    }
}

/// The report channel belongs to stage 1 only.
fn drop_report(report: &ReportTx) {
    // SAFETY: closing our copy of a descriptor this process will never use
    // again (the struct is not dropped: its memory is the parent's copy).
    unsafe { libc::close(report.raw_fd()) };
}

/// The container's init between clone and execve; returns only on failure.
fn init_main(ctx: &InitContext<'_>, chan: &ChildEnd) -> Failure {
    match init_setup(ctx, chan) {
        Ok(prepared) => exec(&prepared, chan),
        Err(f) => f,
    }
}

fn init_setup(ctx: &InitContext<'_>, chan: &ChildEnd) -> Result<Prepared, Failure> {
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    if let Some(procs) = ctx.cgroup_procs {
        join_cgroup(procs)?;
        namespaces::unshare_cgroup().map_err(|e| Failure::setup(&e))?;
    }
    rootfs::setup(&ctx.rootfs).map_err(|e| Failure::setup(&e))?;
    rootfs::pivot(ctx.rootfs.merged).map_err(|e| Failure::setup(&e))?;
    nix::unistd::sethostname(ctx.hostname).map_err(|e| Failure {
        kind: FailureKind::Setup,
        message: format!("cannot set the hostname to {:?}: {e}", ctx.hostname),
    })?;
    if ctx.network == Network::Private {
        namespaces::loopback_up().map_err(|e| Failure::setup(&e))?;
    }
    std::fs::create_dir_all(&ctx.process.cwd).map_err(|e| Failure {
        kind: FailureKind::Setup,
        message: format!(
            "cannot create the working directory {}: {e}",
            ctx.process.cwd
        ),
    })?;
    rootfs::finish(ctx.read_only).map_err(|e| Failure::setup(&e))?;
    nix::unistd::chdir(ctx.process.cwd.as_str()).map_err(|e| Failure {
        kind: FailureKind::Setup,
        message: format!(
            "cannot enter the working directory {}: {e}",
            ctx.process.cwd
        ),
    })?;
    let prepared = prepare(ctx.process)?;
    setup_stdio(ctx.stdio, chan)?;
    Ok(prepared)
}

/// Forks stage 1 of an exec. Returns stage 1's pid.
pub(crate) fn spawn_exec(
    ctx: &ExecContext<'_>,
    child: &ChildEnd,
    report: &ReportTx,
) -> Result<i32, Errno> {
    // SAFETY: as in `spawn_init`: the child runs `stage1_exec` only.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
        nix::unistd::ForkResult::Child => stage1_exec(ctx, child, report),
    }
}

fn stage1_exec(ctx: &ExecContext<'_>, child: &ChildEnd, report: &ReportTx) -> ! {
    let mut keep = vec![child.raw_fd(), report.raw_fd()];
    keep.extend(ctx.stdio.raw_fds());
    keep.extend(ctx.cgroup_procs.map(|f| f.as_raw_fd()));
    keep.extend(ctx.namespaces.raw_fds());
    close_fds_except(&keep);
    fn fail(report: &ReportTx, message: String) -> ! {
        let _ = report.send(
            &Report::Failed(Failure {
                kind: FailureKind::Setup,
                message,
            }),
            None,
        );
        exit_now(1)
    }
    if let Err(e) = ctx.namespaces.join_pid() {
        fail(report, chain(&e));
    }
    // SAFETY: stage 1 is single-threaded; fork runs the atfork handlers.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop_report(report);
            let failure = match std::panic::catch_unwind(|| exec_main(ctx, child)) {
                Ok(f) => f,
                Err(_) => Failure {
                    kind: FailureKind::Setup,
                    message: "the exec'd process panicked during set-up".into(),
                },
            };
            let _ = child.send(&FromChild::Failed(failure), None);
            exit_now(1)
        }
        Ok(nix::unistd::ForkResult::Parent { child: pid }) => {
            // SAFETY: closing stage 1's copy of the child's channel, so the
            // parent sees EOF when the process execs.
            unsafe { libc::close(child.raw_fd()) };
            let _ = report.send(&Report::Forked { pid: pid.as_raw() }, None);
            loop {
                match nix::sys::wait::waitpid(pid, None) {
                    Ok(status) => {
                        if let Some(status) = ExitStatus::from_wait(status) {
                            let _ = report.send(&Report::Exited(status), None);
                            exit_now(0)
                        }
                    }
                    Err(Errno::EINTR) => {}
                    Err(e) => fail(report, format!("cannot wait for the exec'd process: {e}")),
                }
            }
        }
        Err(e) => fail(report, format!("cannot fork the exec'd process: {e}")),
    }
}

fn exec_main(ctx: &ExecContext<'_>, chan: &ChildEnd) -> Failure {
    let setup = || -> Result<Prepared, Failure> {
        nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
        if let Some(procs) = ctx.cgroup_procs {
            join_cgroup(procs)?;
        }
        ctx.namespaces
            .join_others()
            .map_err(|e| Failure::setup(&e))?;
        nix::unistd::chdir(ctx.process.cwd.as_str()).map_err(|e| Failure {
            kind: FailureKind::Setup,
            message: format!(
                "cannot enter the working directory {}: {e}",
                ctx.process.cwd
            ),
        })?;
        let prepared = prepare(ctx.process)?;
        setup_stdio(ctx.stdio, chan)?;
        Ok(prepared)
    };
    match setup() {
        Ok(prepared) => exec(&prepared, chan),
        Err(f) => f,
    }
}

fn join_cgroup(procs: &OwnedFd) -> Result<(), Failure> {
    // "0" moves the writer itself.
    nix::unistd::write(procs, b"0")
        .map(drop)
        .map_err(|e| Failure {
            kind: FailureKind::Setup,
            message: format!("cannot join the container's cgroup (cgroup.procs): {e}"),
        })
}

/// The resolved credentials and argv/envp, ready for `execve`.
struct Prepared {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    command: String,
    tty: bool,
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves the user against the container's own `/etc/passwd` and
/// `/etc/group` (the current root), adds `HOME`, finds the command.
fn prepare(process: &ProcessSpec) -> Result<Prepared, Failure> {
    let passwd = user::parse_passwd(&std::fs::read_to_string("/etc/passwd").unwrap_or_default());
    let group = user::parse_group(&std::fs::read_to_string("/etc/group").unwrap_or_default());
    let exec_user = user::resolve_user(&process.user, &passwd, &group).map_err(|e| Failure {
        kind: FailureKind::User,
        message: e.to_string(),
    })?;
    let mut env = process.env.clone();
    if env_value(&env, "HOME").is_none() {
        env.push(format!("HOME={}", exec_user.home));
    }
    let command = process.args.first().cloned().unwrap_or_default();
    let path =
        lookup_command(&command, process.path_env(), is_executable).ok_or_else(|| Failure {
            kind: FailureKind::CommandNotFound,
            message: format!("exec: {command:?}: executable file not found in $PATH"),
        })?;
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| Failure {
            kind: FailureKind::Setup,
            message: format!("{s:?} holds a NUL byte"),
        })
    };
    Ok(Prepared {
        uid: exec_user.uid,
        gid: exec_user.gid,
        groups: user::docker_groups(&exec_user),
        path: cstr(&path.to_string_lossy())?,
        argv: process
            .args
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<_, _>>()?,
        envp: env.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?,
        command,
        tty: process.tty,
    })
}

fn setup_stdio(stdio: &StdioFds, chan: &ChildEnd) -> Result<(), Failure> {
    let fail = |what: &str, e: Errno| Failure {
        kind: FailureKind::Setup,
        message: format!("cannot set up the standard streams ({what}): {e}"),
    };
    match stdio {
        StdioFds::Fds {
            stdin,
            stdout,
            stderr,
        } => {
            let null;
            let stdin = match stdin {
                Some(fd) => fd.as_fd(),
                None => {
                    null = nix::fcntl::open(
                        "/dev/null",
                        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| fail("/dev/null", e))?;
                    null.as_fd()
                }
            };
            // Lift every source above 2 first, so no dup2 clobbers another.
            let lift = |fd: BorrowedFd<'_>| {
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
                    .map_err(|e| fail("dup", e))
            };
            let sources = [lift(stdin)?, lift(stdout.as_fd())?, lift(stderr.as_fd())?];
            for (target, fd) in sources.iter().enumerate() {
                dup_onto(*fd, target as RawFd).map_err(|e| fail("dup2", e))?;
                // SAFETY: closing the temporary copy made by `lift` above.
                unsafe { libc::close(*fd) };
            }
        }
        StdioFds::Tty => {
            use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
            let flags = nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY;
            let master = posix_openpt(flags).map_err(|e| fail("/dev/ptmx", e))?;
            grantpt(&master).map_err(|e| fail("grantpt", e))?;
            unlockpt(&master).map_err(|e| fail("unlockpt", e))?;
            let name = ptsname_r(&master).map_err(|e| fail("ptsname", e))?;
            let slave = nix::fcntl::open(name.as_str(), flags, Mode::empty())
                .map_err(|e| fail("open the pty", e))?;
            chan.send(&FromChild::PtyMaster, Some(master.as_fd()))
                .map_err(|e| Failure::setup(&e))?;
            drop(master);
            for target in 0..3 {
                dup_onto(slave.as_raw_fd(), target).map_err(|e| fail("dup2", e))?;
            }
        }
    }
    Ok(())
}

/// Tells the parent it is ready, waits for the go, drops privileges and
/// execs; returns only on failure.
fn exec(p: &Prepared, chan: &ChildEnd) -> Failure {
    if let Err(e) = chan.send(&FromChild::Ready, None) {
        return Failure::setup(&e);
    }
    match chan.recv(None) {
        Ok(Some((ToChild::Start, _))) => {}
        // The parent went away or gave up on us.
        _ => exit_now(1),
    }
    if let Err(f) = drop_privileges(p) {
        return f;
    }
    let err = match nix::unistd::execve(&p.path, &p.argv, &p.envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let kind = match err {
        Errno::ENOENT | Errno::ENOTDIR => FailureKind::CommandNotFound,
        Errno::EACCES | Errno::EPERM | Errno::ENOEXEC | Errno::EISDIR => {
            FailureKind::CommandNotExecutable
        }
        _ => FailureKind::Setup,
    };
    Failure {
        kind,
        message: format!(
            "exec: {:?}: {}",
            p.command,
            std::io::Error::from_raw_os_error(err as i32)
        ),
    }
}

fn drop_privileges(p: &Prepared) -> Result<(), Failure> {
    let fail = |what: &str, e: Errno| Failure {
        kind: FailureKind::Setup,
        message: format!("cannot {what}: {e}"),
    };
    // A new session, away from the parent's terminal and process group.
    let _ = nix::unistd::setsid();
    if p.tty {
        set_controlling_tty().map_err(|e| fail("make the terminal the controlling one", e))?;
    }
    caps::drop_bounding(DOCKER_DEFAULT).map_err(|e| Failure::setup(&e))?;
    let groups: Vec<Gid> = p.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| fail("set the supplementary groups", e))?;
    let gid = Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| fail(&format!("set gid {}", p.gid), e))?;
    let uid = Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| fail(&format!("set uid {}", p.uid), e))?;
    caps::set_process_caps(&Capabilities::docker(DOCKER_DEFAULT, p.uid))
        .map_err(|e| Failure::setup(&e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| fail("set no_new_privs", e))?;
    cloexec_from_3().map_err(|e| fail("mark descriptors close-on-exec", e))?;
    reset_signals().map_err(|e| fail("reset the signal mask", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn exit_status_like_docker() {
        let p = Pid::from_raw(1);
        assert_eq!(
            ExitStatus::from_wait(WaitStatus::Exited(p, 3)),
            Some(ExitStatus {
                code: 3,
                signal: None
            })
        );
        assert_eq!(
            ExitStatus::from_wait(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(ExitStatus {
                code: 137,
                signal: Some(9)
            })
        );
        assert_eq!(
            ExitStatus::from_wait(WaitStatus::Stopped(p, Signal::SIGSTOP)),
            None
        );
    }

    #[test]
    fn typed_messages_cross_a_socket_pair_with_a_descriptor() {
        let (parent, child): (ParentEnd, ChildEnd) = channel().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        child
            .send(&FromChild::PtyMaster, Some(file.as_fd()))
            .unwrap();
        child
            .send(
                &FromChild::Failed(Failure {
                    kind: FailureKind::User,
                    message: "x".into(),
                }),
                None,
            )
            .unwrap();
        let (msg, fd) = parent.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
        assert!(matches!(msg, FromChild::PtyMaster));
        assert!(fd.is_some());
        let (msg, fd) = parent.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
        assert!(matches!(
            msg,
            FromChild::Failed(Failure {
                kind: FailureKind::User,
                ..
            })
        ));
        assert!(fd.is_none());
        parent.send(&ToChild::Start, None).unwrap();
        assert!(matches!(
            child.recv(None).unwrap(),
            Some((ToChild::Start, None))
        ));
        drop(child);
        assert!(parent.recv(Some(Duration::from_secs(5))).unwrap().is_none());
    }

    #[test]
    fn recv_times_out() {
        let (parent, _child): (ParentEnd, ChildEnd) = channel().unwrap();
        assert!(matches!(
            parent.recv(Some(Duration::from_millis(20))),
            Err(ChannelError::Timeout(_))
        ));
    }
}
