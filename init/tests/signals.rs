//! Signal handling the way tini and dumb-init test it: SIGTERM to berth-init
//! reaches the supervised process; one that ignores it is killed after the
//! grace period; berth-init exits 0 with `berth: power off` as its last line.

mod common;

use std::time::{Duration, Instant};

use common::{alive, read_pid, script, wait_until, Init};
use std::path::Path;

use init::reaper::children_of;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

#[test]
fn sigterm_reaches_the_daemon_and_init_powers_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let got = dir.path().join("got");
    let pidfile = dir.path().join("pid");
    let spec = script(
        dir.path(),
        "trap.sh",
        &format!(
            "trap 'echo TERM > {}; exit 0' TERM\necho $$ > {}\necho READY >&3\nsleep 1000 &\nwait $!\n",
            got.display(),
            pidfile.display()
        ),
    );
    let mut init = Init::start(&["--supervise-only", "--grace-ms", "5000", "--daemon", &spec]);
    assert!(init
        .wait_line("berth: ready uptime_ms=", Duration::from_secs(20))
        .is_some());
    // Signal only once the shell sits in `wait` with its sleep exec'd: a
    // SIGTERM landing between fork and exec would hit the shell's trap in the
    // child instead (a race in the script, not in init).
    let daemon = read_pid(&pidfile).expect("daemon wrote its pid");
    assert!(wait_until(Duration::from_secs(10), || {
        children_of(Path::new("/proc"), Pid::from_raw(daemon))
            .iter()
            .any(|&(pid, _)| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"sleep\0"))
            })
    }));
    let start = Instant::now();
    init.signal(Signal::SIGTERM);
    let status = init
        .wait_exit(Duration::from_secs(10))
        .expect("berth-init exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(&got).expect("trap ran").trim(),
        "TERM"
    );
    assert!(
        init.last_line()
            .is_some_and(|l| l.ends_with("berth: power off")),
        "{:?}",
        init.last_line()
    );
}

#[test]
fn a_daemon_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let spec = script(
        dir.path(),
        "stubborn.sh",
        &format!(
            "trap '' TERM\necho $$ > {}\necho READY >&3\nwhile :; do sleep 1; done\n",
            pidfile.display()
        ),
    );
    let mut init = Init::start(&["--supervise-only", "--grace-ms", "700", "--daemon", &spec]);
    assert!(init
        .wait_line("berth: ready", Duration::from_secs(20))
        .is_some());
    let pid = read_pid(&pidfile).expect("daemon wrote its pid");
    assert!(alive(pid));
    let start = Instant::now();
    init.signal(Signal::SIGTERM);
    let status = init
        .wait_exit(Duration::from_secs(15))
        .expect("berth-init exits");
    let took = start.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(700),
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(init.seen.iter().any(|(_, l)| l.contains("killing them")));
    assert!(
        wait_until(Duration::from_secs(5), || !alive(pid)),
        "daemon {pid} survived"
    );
    assert!(init
        .last_line()
        .is_some_and(|l| l.ends_with("berth: power off")));
}

#[test]
fn sigint_means_reboot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = script(dir.path(), "d.sh", "echo READY >&3\nexec sleep 1000\n");
    let mut init = Init::start(&["--supervise-only", "--grace-ms", "2000", "--daemon", &spec]);
    assert!(init
        .wait_line("berth: ready", Duration::from_secs(20))
        .is_some());
    init.signal(Signal::SIGINT);
    let status = init
        .wait_exit(Duration::from_secs(10))
        .expect("berth-init exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        init.last_line()
            .is_some_and(|l| l.ends_with("berth: reboot")),
        "{:?}",
        init.last_line()
    );
}
