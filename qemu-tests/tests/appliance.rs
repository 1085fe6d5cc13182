//! The appliance as a whole, seen from its console: restart policies and
//! OOM kills next to a workload they must not touch, `depends_on` gated on
//! a healthcheck, SIGTERM handlers at the power button, and a named volume
//! on the berth-data disk that outlives a reboot.
//!
//! TCG boots are slow and the host has two cores: the tests take turns
//! (one guest at a time), and each boot checks several things.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use qemu_tests::{busybox_archive, paths, Guest, Image};
use regex::Regex;

/// From QEMU start to `berth: ready` with workloads: a TCG boot, the image
/// import and the containers' start, on two shared cores.
const READY: Duration = Duration::from_secs(180);
const SHUTDOWN: Duration = Duration::from_secs(30);
const READY_LINE: &str = r"berth: ready uptime_ms=(\d+) workloads=(\d+)$";

const RESTART_POLICIES: &str = include_str!("../../examples/restart-policies.toml");
const PERSISTENT_VOLUME: &str = include_str!("../../examples/persistent-volume.toml");

/// `db` becomes healthy two seconds after it starts; `app`, which depends
/// on it and would otherwise start first (name order), must wait. Both log
/// their SIGTERM.
const ORDERING: &str = r#"
[system]
hostname = "ordering"
console_logs = true

[workloads.db]
image = "busybox:latest"
network = "none"
command = ["sh", "-c", "trap 'echo db got TERM; exit 0' TERM; echo db starting at $(cut -d' ' -f1 /proc/uptime); sleep 2; touch /tmp/ready; echo db ready at $(cut -d' ' -f1 /proc/uptime); while true; do sleep 1 & wait; done"]
healthcheck = { command = ["test", "-f", "/tmp/ready"], interval = "500ms", retries = 3, start_period = "60s" }

[workloads.app]
image = "busybox:latest"
network = "none"
depends_on = ["db"]
command = ["sh", "-c", "trap 'echo app got TERM; exit 0' TERM; echo app first line at $(cut -d' ' -f1 /proc/uptime); while true; do sleep 1 & wait; done"]
"#;

/// One guest at a time.
fn one_guest_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn image(
    cell: &'static OnceLock<Result<Image, String>>,
    name: &str,
    manifest: &str,
) -> Result<Image> {
    cell.get_or_init(|| {
        let archive = busybox_archive().map_err(|e| e.to_string())?;
        let archive = archive.to_string_lossy().into_owned();
        Image::build(name, manifest, &["--image", &archive]).map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|e| anyhow!("{e}"))
}

/// Each console line matching `pattern`, in order, with its index among
/// the console's lines and its capture groups (0 is the whole match).
fn matching_lines(console: &str, pattern: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let re = Regex::new(pattern)?;
    Ok(console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .enumerate()
        .filter_map(|(i, l)| {
            re.captures(l).map(|c| {
                let groups = c
                    .iter()
                    .map(|g| g.map_or(String::new(), |m| m.as_str().to_owned()))
                    .collect();
                (i, groups)
            })
        })
        .collect())
}

/// Waits until at least `n` console lines match `pattern`, and returns them.
fn wait_for_lines(
    guest: &Guest,
    pattern: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(usize, Vec<String>)>> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = matching_lines(&guest.console(), pattern)?;
        if found.len() >= n {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} lines match {pattern:?} after {timeout:?}, not {n}; console in {}",
                found.len(),
                guest.log_path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The one console line matching `pattern`: its index and groups.
fn only_line(console: &str, pattern: &str) -> Result<(usize, Vec<String>)> {
    let mut found = matching_lines(console, pattern)?;
    ensure!(
        found.len() == 1,
        "{} lines match {pattern:?}, not one: {found:?}",
        found.len()
    );
    Ok(found.remove(0))
}

fn seconds(s: &str) -> Result<f64> {
    s.parse().with_context(|| format!("not an uptime: {s:?}"))
}

fn power_off_cleanly(guest: &mut Guest) -> Result<()> {
    guest.power_button()?;
    guest.expect_console(r"berth: power off$", SHUTDOWN)?;
    let status = guest.wait_exit(SHUTDOWN)?;
    ensure!(status.success(), "QEMU exited with {status}");
    Ok(())
}

#[test]
fn restart_policies_oom_kills_and_backoff_leave_the_neighbour_alone() -> Result<()> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    let image = image(&IMAGE, "appliance-restart-policies", RESTART_POLICIES)?;
    let _turn = one_guest_at_a_time();
    let mut guest = Guest::from_image(&image).boot()?;
    guest.expect_console(READY_LINE, READY)?;

    // flaky: 1 run + 5 restarts, each after twice the previous delay.
    let exits = wait_for_lines(
        &guest,
        r"berthd: container flaky exited with code 3$",
        6,
        READY,
    )?;
    // hog: 1 run + 3 restarts, each ended by the OOM killer.
    let ooms = wait_for_lines(&guest, r"berthd: .*container hog: out of memory", 4, READY)?;
    // Time for a restart that should not come.
    std::thread::sleep(Duration::from_secs(5));
    let console = guest.console();

    let starts = matching_lines(&console, r"^flaky \| flaky start (\S+)$")?;
    let ends = matching_lines(&console, r"^flaky \| flaky exit (\S+)$")?;
    ensure!(
        starts.len() == 6 && ends.len() == 6 && exits.len() == 6,
        "flaky ran {} times ({} exits seen by berthd), not 6 (on-failure:5)",
        starts.len(),
        exits.len()
    );
    let mut delays = Vec::new();
    for (end, next) in ends.iter().zip(&starts[1..]) {
        delays.push(seconds(&next.1[1])? - seconds(&end.1[1])?);
    }
    eprintln!("flaky: exit to restart, seconds: {delays:.2?}");
    // The engine waits 0.1 s, then twice as long each time; the rest is
    // the restart itself (/proc/uptime has 10 ms steps). Each delay at
    // least its backoff shows the growth, however slow one restart was.
    for (i, d) in delays.iter().enumerate() {
        let backoff = 0.1 * f64::from(1u32 << i);
        ensure!(
            *d >= backoff - 0.02,
            "restart {} came {d:.2} s after the exit, before the {backoff} s backoff: {delays:.2?}",
            i + 1
        );
    }

    let hog_starts = matching_lines(&console, r"^hog \| hog start$")?;
    ensure!(
        hog_starts.len() == 4 && ooms.len() == 4,
        "hog started {} times and was OOM-killed {} times, not 4 (on-failure:3)",
        hog_starts.len(),
        ooms.len()
    );
    let hog_codes = matching_lines(&console, r"out of memory.*\(exit code (\d+)\)")?;
    eprintln!(
        "hog exit codes: {:?}",
        hog_codes.iter().map(|l| &l.1[1]).collect::<Vec<_>>()
    );

    // restart = "no": one run, one exit.
    only_line(&console, r"^once \| once ran$")?;
    only_line(&console, r"berthd: container once exited with code 1$")?;

    // The neighbour: started once, never exited, and still running.
    only_line(&console, r"^steady \| steady started run=\S+$")?;
    ensure!(
        matching_lines(&console, r"container steady")?.is_empty(),
        "steady was touched: {:?}",
        matching_lines(&console, r"container steady")?
    );
    power_off_cleanly(&mut guest)?;
    let console = guest.console();
    only_line(&console, r"^steady \| steady got TERM$")?;
    only_line(&console, r"^steady \| steady started run=\S+$")?;
    Ok(())
}

#[test]
fn depends_on_waits_for_health_and_the_power_button_terms_every_workload() -> Result<()> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    let image = image(&IMAGE, "appliance-ordering", ORDERING)?;
    let _turn = one_guest_at_a_time();
    let mut guest = Guest::from_image(&image).boot()?;
    let ready = guest.expect_console(READY_LINE, READY)?;
    ensure!(ready.get(2) == Some("2"), "{}", ready.text());
    guest.expect_console_anywhere(r"^app \| app first line at ", READY)?;
    let console = guest.console();

    let (db_ready_at, db_ready) = only_line(&console, r"^db \| db ready at (\S+)$")?;
    let (db_running_at, db_running) =
        only_line(&console, r"berthd: workload db running \((\d+) ms\)$")?;
    let (app_at, app) = only_line(&console, r"^app \| app first line at (\S+)$")?;
    let (db_started, db_start) = only_line(&console, r"^db \| db starting at (\S+)$")?;
    let wait = seconds(&app[1])? - seconds(&db_start[1])?;
    eprintln!(
        "db healthy after {} ms; app's first line {wait:.2} s after db's first",
        db_running[1]
    );
    // "db ready" comes through db's log mirror, which can lag berthd's own
    // "db running" (a health check right after the touch): their order is
    // shown by the times below, not by the console's line order.
    ensure!(
        db_started < db_ready_at && db_running_at < app_at,
        "expected db starting before db ready, and db running before app's first line; \
         got lines {db_started}, {db_ready_at}, {db_running_at}, {app_at}"
    );
    ensure!(
        seconds(&app[1])? >= seconds(&db_ready[1])?,
        "app ran at {} before db was ready at {}",
        app[1],
        db_ready[1]
    );
    ensure!(
        db_running[1].parse::<u64>()? >= 2000,
        "db cannot be healthy before it made its file: {}",
        db_running[0]
    );

    // The power button: berthd stops app, then db (reverse dependency
    // order), each running its TERM handler; then the machine powers off.
    power_off_cleanly(&mut guest)?;
    let console = guest.console();
    // The handlers' lines reach the console through each workload's log
    // mirror, which may lag; berthd's own exit lines give the order.
    let (app_term, _) = only_line(&console, r"^app \| app got TERM$")?;
    let (db_term, _) = only_line(&console, r"^db \| db got TERM$")?;
    let (app_exit, _) = only_line(&console, r"berthd: container app exited with code 0$")?;
    let (db_exit, _) = only_line(&console, r"berthd: container db exited with code 0$")?;
    ensure!(
        app_exit < db_exit,
        "db was stopped before app, which depends on it"
    );
    let (off, _) = only_line(&console, r"berth: power off$")?;
    ensure!(
        app_term.max(db_term) < off,
        "a TERM handler's line came after the power off"
    );
    Ok(())
}

/// Reads `path` from the ext4 image `disk` without mounting it.
fn read_from_disk(disk: &Path, path: &str) -> Result<String> {
    let file = std::fs::File::open(disk)?;
    let fs = ext4_view::Ext4::load(Box::new(file))
        .map_err(|e| anyhow!("{}: not an ext4 image: {e}", disk.display()))?;
    fs.read_to_string(path)
        .map_err(|e| anyhow!("{}: cannot read {path}: {e}", disk.display()))
}

#[test]
fn a_named_volume_on_the_data_disk_outlives_a_reboot() -> Result<()> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    let image = image(&IMAGE, "appliance-persistent", PERSISTENT_VOLUME)?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("data.img");
    let out = Command::new(paths::berth_build())
        .args(["disk", "-o"])
        .arg(&disk)
        .args(["--size", "64M"])
        .output()
        .with_context(|| format!("cannot run {}", paths::berth_build().display()))?;
    ensure!(
        out.status.success(),
        "berth-build disk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _turn = one_guest_at_a_time();

    // First boot: the volume is new; Ctrl-Alt-Del reboots cleanly (QEMU
    // runs with -no-reboot, so the reboot ends it).
    let mut guest = Guest::from_image(&image).disk(&disk).boot()?;
    guest.expect_console(READY_LINE, READY)?;
    guest.expect_console_anywhere(r"^journal \| journal has boot 1$", READY)?;
    guest.ctrl_alt_del()?;
    guest.expect_console(r"berth: reboot$", SHUTDOWN)?;
    let status = guest.wait_exit(SHUTDOWN)?;
    ensure!(status.success(), "QEMU exited with {status}");
    drop(guest);

    // Second boot from the same disk: the first boot's line is there.
    let mut guest = Guest::from_image(&image).disk(&disk).boot()?;
    guest.expect_console(READY_LINE, READY)?;
    guest.expect_console_anywhere(r"^journal \| journal has boot 2$", READY)?;
    let console = guest.console();
    only_line(&console, r"^journal \| journal has boot 1$")?;
    power_off_cleanly(&mut guest)?;
    drop(guest);

    // The volume's data, read from the powered-off disk.
    let log = read_from_disk(&disk, "/volumes/journal/_data/log")?;
    assert_eq!(log, "boot 1\nboot 2\n");
    Ok(())
}
