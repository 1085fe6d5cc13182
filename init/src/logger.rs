//! The console logger: every line goes to stdout (the console when init is
//! PID 1) prefixed with the uptime, and to `/dev/kmsg` once `/dev` exists.
//!
//! Milestone lines that tests and people look for use the target
//! [`MILESTONE`] and print as `[    0.812] berth: <message>`; everything else
//! prints as `[    0.812] <level> <module>: <message>`.

use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The log target of the contract lines (`berth: ready ...`).
pub const MILESTONE: &str = "berth";

/// Where the kernel log is written once devtmpfs is mounted.
pub const KMSG_PATH: &str = "/dev/kmsg";

struct Logger {
    kmsg: OnceLock<File>,
    screen: OnceLock<File>,
}

static LOGGER: Logger = Logger {
    kmsg: OnceLock::new(),
    screen: OnceLock::new(),
};

/// Time since boot (CLOCK_BOOTTIME), zero if the clock cannot be read.
pub fn uptime() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => Duration::new(
            u64::try_from(ts.tv_sec()).unwrap_or(0),
            u32::try_from(ts.tv_nsec()).unwrap_or(0),
        ),
        Err(_) => Duration::ZERO,
    }
}

/// The console line for one record (with its newline).
pub fn format_line(uptime: Duration, level: Level, target: &str, msg: &str) -> String {
    let stamp = format!("[{:>5}.{:03}] ", uptime.as_secs(), uptime.subsec_millis());
    if target == MILESTONE {
        return format!("{stamp}berth: {msg}\n");
    }
    let module = match target {
        "berth_init" => "boot",
        t => t
            .strip_prefix("init::")
            .or_else(|| t.strip_prefix("berth_init::"))
            .unwrap_or(t),
    };
    let level = match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    };
    format!("{stamp}{level} {module}: {msg}\n")
}

/// The `/dev/kmsg` record for one log line. Priorities are capped at warning
/// so that errors are not printed on the console twice (once by us, once by
/// the kernel at the default `loglevel=4`).
pub fn kmsg_record(level: Level, line: &str) -> String {
    let prio = match level {
        Level::Error | Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    format!("<{prio}>berth-init: {line}")
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let line = format_line(uptime(), record.level(), record.target(), &msg);
        // Errors writing the console are ignored: there is nowhere else to say so.
        let _ = std::io::stdout().write_all(line.as_bytes());
        let _ = std::io::stdout().flush();
        if let Some(mut screen) = self.screen.get() {
            if record.target() == MILESTONE || record.level() <= Level::Warn {
                let _ = screen.write_all(line.as_bytes());
            }
        }
        if let Some(mut kmsg) = self.kmsg.get() {
            // The kernel timestamps kmsg itself; send the line without ours.
            let plain = line.split_once("] ").map_or(line.as_str(), |(_, l)| l);
            let _ = kmsg.write_all(kmsg_record(record.level(), plain).as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// Installs the logger at `level`. Safe to call more than once.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Also sends every line to `/dev/kmsg` from now on (PID 1 only).
pub fn attach_kmsg() {
    match std::fs::OpenOptions::new().write(true).open(KMSG_PATH) {
        Ok(f) => {
            let _ = LOGGER.kmsg.set(f);
        }
        Err(e) => log::warn!("cannot open {KMSG_PATH}: {e}"),
    }
}

/// The virtual terminal that shows the screen when the kernel command line
/// names it as a console but not as the last one (which is `/dev/console`,
/// where init writes): `console=tty0 console=ttyS0` → `tty0`.
pub fn screen_console(cmdline: &str) -> Option<String> {
    let consoles: Vec<&str> = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("console="))
        .map(|c| c.split(',').next().unwrap_or(c))
        .collect();
    let last = consoles.last()?;
    let is_vt = |c: &str| {
        c.strip_prefix("tty")
            .is_some_and(|n| n.chars().all(|d| d.is_ascii_digit()))
    };
    if is_vt(last) {
        return None;
    }
    consoles.iter().find(|c| is_vt(c)).map(|c| (*c).to_owned())
}

/// Also shows milestones, warnings and errors on the screen when the
/// command line gives it as a console besides the last one (VirtualBox's
/// window, a cloud's screenshot), since only the last gets init's output.
pub fn attach_screen(cmdline: &str) {
    let Some(tty) = screen_console(cmdline) else {
        return;
    };
    let path = format!("/dev/{tty}");
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) => {
            let _ = LOGGER.screen.set(f);
        }
        Err(e) => log::debug!("cannot open {path} for the screen: {e}"),
    }
}

/// Makes fds 0, 1 and 2 the console if the kernel could not open one for us
/// (an initramfs without `/dev/console`). Call it right after mounting
/// devtmpfs, before opening any other file, so that file does not become
/// fd 0.
pub fn ensure_console_fds() {
    use std::os::fd::AsFd;
    let missing = |fd: i32| {
        nix::fcntl::fcntl(
            // SAFETY: fds 0-2 are only probed with F_GETFD, never closed here.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .is_err()
    };
    if !(0..3).any(missing) {
        return;
    }
    let console = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open("/dev/console")
    {
        Ok(f) => f,
        Err(_) => return,
    };
    if missing(0) {
        let _ = nix::unistd::dup2_stdin(console.as_fd());
    }
    if missing(1) {
        let _ = nix::unistd::dup2_stdout(console.as_fd());
    }
    if missing(2) {
        let _ = nix::unistd::dup2_stderr(console.as_fd());
    }
    // If `console` itself landed on 0-2 it must stay open.
    if std::os::fd::AsRawFd::as_raw_fd(&console) <= 2 {
        std::mem::forget(console);
    }
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOCTTY)
    }
}

/// An error and its sources as one line: `outer: inner: errno`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A level name from the command line (`berth.log=debug`).
pub fn parse_level(name: &str) -> Option<LevelFilter> {
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_is_mirrored_only_when_it_is_not_the_console() {
        assert_eq!(
            screen_console("console=tty0 console=ttyS0,115200 quiet").as_deref(),
            Some("tty0")
        );
        assert_eq!(screen_console("console=ttyS0 console=tty1"), None);
        assert_eq!(screen_console("console=ttyS0"), None);
        assert_eq!(screen_console("quiet"), None);
        assert_eq!(
            screen_console("console=tty1 console=hvc0").as_deref(),
            Some("tty1")
        );
    }

    #[test]
    fn milestone_and_module_lines() {
        let t = Duration::from_millis(812);
        assert_eq!(
            format_line(t, Level::Info, MILESTONE, "ready uptime_ms=812 workloads=0"),
            "[    0.812] berth: ready uptime_ms=812 workloads=0\n"
        );
        assert_eq!(
            format_line(
                Duration::from_millis(123_456),
                Level::Warn,
                "init::modules",
                "x"
            ),
            "[  123.456] warning modules: x\n"
        );
        assert_eq!(
            kmsg_record(Level::Error, "berth: boom\n"),
            "<4>berth-init: berth: boom\n"
        );
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(
            format_line(Duration::ZERO, Level::Info, "berth_init", "x"),
            "[    0.000] info boot: x\n"
        );
        let e = crate::sysctl::SysctlError::Write {
            key: "a.b".into(),
            value: "1".into(),
            path: "/proc/sys/a/b".into(),
            source: std::io::Error::from_raw_os_error(2),
        };
        assert!(chain(&e).ends_with("via /proc/sys/a/b: No such file or directory (os error 2)"));
        assert_eq!(parse_level("loud"), None);
    }
}
