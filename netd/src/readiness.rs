//! Telling init the network is configured: one line on the pipe named by
//! `BERTH_READY_FD` (the protocol of `init::readiness`, which netd cannot
//! import because init depends on netd).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::FromRawFd;

/// The environment variable naming the readiness fd.
pub const READY_FD_ENV: &str = "BERTH_READY_FD";

/// The readiness pipe, if init gave one.
#[derive(Debug)]
pub struct Notifier {
    pipe: Option<File>,
}

impl Notifier {
    /// Takes the fd named by [`READY_FD_ENV`], if set. Call once, early:
    /// the fd is owned (and closed) by the notifier from then on.
    pub fn from_env() -> Self {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
            .filter(|fd| *fd > 2);
        let pipe = fd.and_then(|fd| {
            // F_GETFD tells whether the fd is open before we take it over.
            nix::fcntl::fcntl(
                // SAFETY: the fd is only borrowed for this one call.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                nix::fcntl::FcntlArg::F_GETFD,
            )
            .ok()
            .map(|_| {
                // SAFETY: init passed this fd for netd alone; nothing else in
                // the process uses it, so owning it is sound.
                unsafe { File::from_raw_fd(fd) }
            })
        });
        // Children (none today) must not inherit a stale fd number.
        std::env::remove_var(READY_FD_ENV);
        Notifier { pipe }
    }

    /// A notifier that says nothing (tests, manual runs).
    pub fn none() -> Self {
        Notifier { pipe: None }
    }

    /// Whether a message can still be sent.
    pub fn pending(&self) -> bool {
        self.pipe.is_some()
    }

    /// Sends `READY` and closes the pipe.
    pub fn ready(&mut self) -> io::Result<()> {
        self.send("READY\n")
    }

    /// Sends `NOTREADY <reason>` and closes the pipe.
    pub fn not_ready(&mut self, reason: &str) -> io::Result<()> {
        let reason: String = reason
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        self.send(&format!("NOTREADY {reason}\n"))
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        match self.pipe.take() {
            Some(mut f) => f.write_all(line.as_bytes()),
            None => Ok(()),
        }
    }
}
