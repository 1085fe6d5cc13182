//! A container's monitor: the small process that owns one run of a
//! container, so the container outlives berthd.
//!
//! berthd executes a program (itself) as `PROGRAM __berth-monitor
//! <launch.json>` in a new session, with one end of a socket pair as fd 3.
//! The monitor:
//!
//! ```text
//! monitor                                   berthd
//!   create the container (runtime) ─ Created{pid} ─▶ wire the network into /proc/<pid>/ns/net
//!                                 ◀──── Start ────── (or Abort: the container is killed)
//!   start it, write monitor.json ── Started{pid} ──▶ watch the monitor, signal the container by pidfd
//!   pump stdout/stderr into the json-file log
//!   wait for the exit, drain the pipes,
//!   write the exit into monitor.json, exit  ──(pidfd readable)──▶ read monitor.json
//! ```
//!
//! A failure before `Started` is sent as `Failed{message, exit_code}`.
//! After `Started` the socket is closed: the monitor depends on nothing of
//! berthd's, so berthd may die and come back ([`super::Manager::open`]
//! re-adopts the run from `monitor.json`).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::logs::{self, LogWriter, Stream};
use super::state::{read_json, write_json, ExitRecord, Launch, MonitorRecord};
use crate::runtime::{ContainerBuilder, Network, Resources, Rootfs, Stdio};

/// The hidden first argument that makes berthd a monitor.
pub const MONITOR_ARG: &str = "__berth-monitor";
/// The fd the monitor's end of the socket pair is given as.
pub const CONTROL_FD: i32 = 3;

/// Monitor → berthd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromMonitor {
    /// The container is set up and waits to `execve`: wire its network.
    Created {
        /// Its PID 1 in the host's pid namespace.
        pid: u32,
    },
    /// It runs.
    Started {
        /// Its PID 1.
        pid: u32,
        /// When it started.
        started_at: SystemTime,
    },
    /// It could not be created or started.
    Failed {
        /// The whole error chain.
        message: String,
        /// Docker's exit code for it (127: command not found, 126: not executable).
        exit_code: Option<i32>,
    },
}

/// berthd → monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToMonitor {
    /// Let it `execve`.
    Start,
    /// Give up: kill it.
    Abort,
}

/// Sends one message as a JSON line.
pub fn send<T: Serialize>(to: &mut UnixStream, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    to.write_all(&line)
}

/// Receives one message; `Ok(None)` at EOF.
pub fn recv<T: for<'de> Deserialize<'de>>(
    from: &mut BufReader<UnixStream>,
) -> std::io::Result<Option<T>> {
    let mut line = String::new();
    if from.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Call first in `main` of the program berthd runs as monitor: when the
/// first argument is [`MONITOR_ARG`] this runs the monitor and exits;
/// otherwise it returns.
pub fn dispatch() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(MONITOR_ARG)) {
        return;
    }
    let code = match args.next() {
        Some(launch) => run(Path::new(&launch)),
        None => {
            eprintln!("berth monitor: usage: {MONITOR_ARG} LAUNCH_JSON");
            2
        }
    };
    std::process::exit(code);
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

/// The monitor's body; returns its exit code.
pub fn run(launch_path: &Path) -> i32 {
    // SAFETY: berthd passes the socket as fd 3 and nothing else in this
    // fresh process owns it.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let mut control = UnixStream::from(control);
    let Ok(reader) = control.try_clone() else {
        eprintln!("berth monitor: fd {CONTROL_FD} is not a socket");
        return 2;
    };
    let mut reader = BufReader::new(reader);
    let fail = |control: &mut UnixStream, message: String, exit_code: Option<i32>| {
        eprintln!("berth monitor: {message}");
        let _ = send(control, &FromMonitor::Failed { message, exit_code });
        1
    };
    let launch: Launch = match read_json(launch_path) {
        Ok(Some(l)) => l,
        Ok(None) => {
            return fail(
                &mut control,
                format!("{} does not exist", launch_path.display()),
                None,
            )
        }
        Err(e) => return fail(&mut control, chain(&e), None),
    };
    let writer = match LogWriter::open(&launch.log_path, launch.log_max_size, launch.log_max_files)
    {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            return fail(
                &mut control,
                format!("cannot open the log {}: {e}", launch.log_path.display()),
                None,
            )
        }
    };
    let pipes = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .and_then(|a| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map(|b| (a, b)));
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return fail(&mut control, format!("cannot make pipes: {e}"), None),
    };
    let mut builder = ContainerBuilder::new(
        &launch.id,
        Rootfs::new(launch.layers.clone(), launch.fs_dir.clone()),
        launch.process.clone(),
    )
    .hostname(&launch.hostname)
    .network(if launch.host_network {
        Network::Host
    } else {
        Network::Private
    })
    .mounts(launch.mounts.iter().map(Into::into).collect())
    .read_only(launch.read_only)
    .stdio(Stdio::fds(None, out_w, err_w));
    if let Some(cg) = &launch.cgroup {
        builder = builder.cgroup(
            cg.clone(),
            Resources {
                memory: launch.memory,
                cpus: launch.cpus,
                pids: launch.pids,
            },
        );
    }
    let created = match builder.create() {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            return fail(&mut control, chain(&e), code);
        }
    };
    let pid = created.pid() as u32;
    if let Err(e) = send(&mut control, &FromMonitor::Created { pid }) {
        eprintln!("berth monitor: berthd went away during set-up: {e}");
        return 1;
    }
    match recv::<ToMonitor>(&mut reader) {
        Ok(Some(ToMonitor::Start)) => {}
        other => {
            eprintln!("berth monitor: not started ({other:?}); killing the container");
            return 1;
        }
    }
    // Pump before the container runs its first instruction, so that each
    // line is stamped when it was written, not when the monitor got round
    // to it.
    let pumps: Vec<_> = [(out_r, Stream::Stdout), (err_r, Stream::Stderr)]
        .into_iter()
        .map(|(fd, stream)| {
            let w = writer.clone();
            std::thread::spawn(move || {
                if let Err(e) = logs::pump(std::fs::File::from(fd), stream, &w, None) {
                    eprintln!("berth monitor: log {stream:?}: {e}");
                }
            })
        })
        .collect();
    let container = match created.start() {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            return fail(&mut control, chain(&e), code);
        }
    };
    let started_at = SystemTime::now();
    let mut record = MonitorRecord {
        monitor_pid: std::process::id(),
        monitor_start: super::state::process_start_time(std::process::id()).unwrap_or(0),
        container_pid: pid,
        started_at,
        exit: None,
    };
    if let Err(e) = write_json(&launch.monitor_path, &record) {
        let _ = container.kill(libc::SIGKILL);
        let _ = container.wait();
        return fail(&mut control, chain(&e), None);
    }
    let _ = send(&mut control, &FromMonitor::Started { pid, started_at });
    drop(reader);
    drop(control);

    let waited = container.wait();
    let oom_killed = container.oom_killed();
    let exit = match waited {
        Ok(s) => ExitRecord {
            code: s.code,
            signal: s.signal,
            finished_at: SystemTime::now(),
            error: None,
            oom_killed,
        },
        Err(e) => ExitRecord {
            code: 255,
            signal: None,
            finished_at: SystemTime::now(),
            error: Some(chain(&e)),
            oom_killed,
        },
    };
    // PID 1 is gone, so is its pid namespace and every writer of the pipes:
    // the pumps reach EOF with everything on disk.
    for p in pumps {
        let _ = p.join();
    }
    record.exit = Some(exit);
    match write_json(&launch.monitor_path, &record) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth monitor: {}", chain(&e));
            1
        }
    }
}
