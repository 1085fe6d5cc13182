//! A berth-init in host mode, driven from a test: its stdout lines arrive on
//! a channel; every wait has a timeout; the process is killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const BUSYBOX: &str = "/bin/busybox";

/// Waits until `cond` holds or `timeout` passes, checking every 10ms.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes a busybox sh script and returns the `--daemon` spec that runs it.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write script");
    format!("{BUSYBOX} sh {}", path.display())
}

pub struct Init {
    child: Child,
    lines: Receiver<(Instant, String)>,
    pub seen: Vec<(Instant, String)>,
}

impl Init {
    pub fn start(args: &[&str]) -> Init {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth-init"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth-init");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("init| {line}");
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Init {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The first line (seen or still to come) containing `needle`.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        if let Some((_, l)) = self.seen.iter().find(|(_, l)| l.contains(needle)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, line)) => {
                    self.seen.push((t, line.clone()));
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None
                }
            }
        }
    }

    /// Lines containing `needle`, waiting until there are `n` of them.
    pub fn wait_lines(
        &mut self,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<_> = self
                .seen
                .iter()
                .filter(|(_, l)| l.contains(needle))
                .cloned()
                .collect();
            if found.len() >= n {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(entry) => self.seen.push(entry),
                Err(_) => return found,
            }
        }
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal berth-init");
    }

    /// Waits for exit; then collects the remaining output.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            while let Ok(entry) = self.lines.recv_timeout(Duration::from_secs(2)) {
                self.seen.push(entry);
            }
        }
        status
    }

    pub fn last_line(&self) -> Option<&str> {
        self.seen.last().map(|(_, l)| l.as_str())
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        // A clean stop takes the daemons down too; SIGKILL would orphan them.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(self.pid(), Signal::SIGTERM);
            let _ = wait_until(Duration::from_secs(5), || {
                self.child.try_wait().ok().flatten().is_some()
            });
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => init::reaper::parse_stat(&stat).is_some_and(|(_, state, _)| state != 'Z'),
        Err(_) => false,
    }
}

pub fn read_pid(path: &PathBuf) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
