//! `tcp-stdio HOST:PORT`: connects to HOST:PORT and copies standard input
//! to it and its answers to standard output, until the server closes.
//!
//! QEMU's user network runs it for `guestfwd=tcp:IP:PORT-cmd:tcp-stdio ...`,
//! once per guest connection, with that connection as stdin and stdout: the
//! tests use it to put a server of theirs at an address inside the guest's
//! network (the instance metadata service's 169.254.169.254:80). It writes
//! nothing else: its stderr is the guest connection too.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        return ExitCode::from(2);
    };
    match pipe(&addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn pipe(addr: &str) -> io::Result<()> {
    let server = TcpStream::connect(addr)?;
    // Unbuffered handles on fds 0 and 1: every byte goes through at once.
    let mut stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let mut upstream = server.try_clone()?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut stdin, &mut upstream);
        // The guest is done sending: tell the server, keep reading its answer.
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut downstream = server;
    io::copy(&mut downstream, &mut stdout)?;
    stdout.flush()
}
