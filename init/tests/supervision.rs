//! Supervision: a crashing daemon is restarted with growing backoff; daemons
//! start in order, each after the previous one's readiness (or its timeout).

mod common;

use std::time::Duration;

use common::{script, Init, BUSYBOX};
use nix::sys::signal::Signal;

fn delay_ms(line: &str) -> Option<u64> {
    line.rsplit("restarting in ")
        .next()?
        .strip_suffix("ms")?
        .parse()
        .ok()
}

/// The uptime stamp init puts before each line, `[ 9799.118] ...`, in ms.
fn uptime_ms(line: &str) -> Option<u64> {
    let stamp = line
        .trim_start()
        .strip_prefix('[')?
        .split(']')
        .next()?
        .trim();
    let (secs, millis) = stamp.split_once('.')?;
    Some(secs.parse::<u64>().ok()? * 1000 + millis.parse::<u64>().ok()?)
}

#[test]
fn crashing_daemon_restarts_with_growing_backoff() {
    let spec = format!("{BUSYBOX} false");
    let mut init = Init::start(&[
        "--supervise-only",
        "--ready-timeout-ms",
        "100",
        "--daemon",
        &spec,
    ]);
    let lines = init.wait_lines(
        "berth: busybox exited (status 1); restarting in",
        5,
        Duration::from_secs(30),
    );
    assert_eq!(lines.len(), 5, "{lines:?}");
    let delays: Vec<u64> = lines.iter().filter_map(|(_, l)| delay_ms(l)).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1600]);
    // The daemon really waited: each gap between init's own uptime stamps
    // (when the test read a line says nothing about when it was written) is
    // at least the announced delay, to the stamps' millisecond precision, and
    // the gaps grow.
    let stamps: Vec<u64> = lines.iter().filter_map(|(_, l)| uptime_ms(l)).collect();
    assert_eq!(stamps.len(), lines.len(), "{lines:?}");
    let gaps: Vec<Duration> = stamps
        .windows(2)
        .map(|w| Duration::from_millis(w[1] - w[0]))
        .collect();
    for (gap, delay) in gaps.iter().zip(&delays) {
        assert!(
            *gap + Duration::from_millis(1) >= Duration::from_millis(*delay),
            "gap {gap:?} < {delay}ms"
        );
    }
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "gaps do not grow: {gaps:?}"
    );
    init.signal(Signal::SIGTERM);
    assert_eq!(
        init.wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn daemons_start_in_readiness_order_and_report_workloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("net-ready");
    let seen = dir.path().join("engine-saw");
    let net = script(
        dir.path(),
        "net.sh",
        &format!(
            "sleep 0.3\ntouch {}\necho READY >&3\nexec sleep 1000\n",
            marker.display()
        ),
    );
    let engine = script(
        dir.path(),
        "engine.sh",
        &format!(
            "if [ -e {} ]; then echo yes > {}; fi\necho 'READY workloads=2' >&3\nexec sleep 1000\n",
            marker.display(),
            seen.display()
        ),
    );
    let mut init = Init::start(&["--supervise-only", "--daemon", &net, "--daemon", &engine]);
    let ready = init
        .wait_line("berth: ready", Duration::from_secs(20))
        .expect("ready line");
    assert!(ready.ends_with("workloads=2"), "{ready}");
    assert_eq!(
        std::fs::read_to_string(&seen)
            .map(|s| s.trim().to_string())
            .ok(),
        Some("yes".into())
    );
    assert_eq!(
        init.seen
            .iter()
            .filter(|(_, l)| l.contains("berth: ready"))
            .count(),
        1
    );
    init.signal(Signal::SIGTERM);
    assert_eq!(
        init.wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn readiness_timeout_is_reported_and_boot_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let silent = script(dir.path(), "silent.sh", "exec sleep 1000\n");
    let refusing = script(
        dir.path(),
        "refusing.sh",
        "echo 'NOTREADY no engine here' >&3\nexec sleep 1000\n",
    );
    let mut init = Init::start(&[
        "--supervise-only",
        "--ready-timeout-ms",
        "300",
        "--daemon",
        &silent,
        "--daemon",
        &refusing,
    ]);
    let ready = init
        .wait_line("berth: ready", Duration::from_secs(20))
        .expect("ready line");
    assert!(ready.ends_with("workloads=0"), "{ready}");
    assert!(init
        .seen
        .iter()
        .any(|(_, l)| l.contains("busybox not ready after 300ms; booting on")));
    assert!(init
        .seen
        .iter()
        .any(|(_, l)| l.contains("not ready: no engine here")));
    init.signal(Signal::SIGTERM);
    assert_eq!(
        init.wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
}
