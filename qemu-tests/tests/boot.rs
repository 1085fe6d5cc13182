//! Boot tests: the real `berth-build` artifacts (berth-init as /init, Debian's
//! kernel) under QEMU, checked over the serial console and QMP.
//!
//! Needs the static binaries (`make test` builds them; see
//! `qemu_tests::paths::bin_dir`). Timeouts are sized for TCG.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use qemu_tests::{disk, Guest, Image, SharedImage};

/// From QEMU start to `berth: ready` (a TCG boot takes ~5 s alone, more
/// when the tests share two cores).
const READY: Duration = Duration::from_secs(60);
/// From the power button or Ctrl-Alt-Del to QEMU's exit.
const SHUTDOWN: Duration = Duration::from_secs(15);

const READY_LINE: &str = r"berth: ready uptime_ms=(\d+) workloads=(\d+)$";

static MINIMAL: SharedImage = SharedImage::new("boot-minimal", "[system]\n", &[]);

/// busybox installed as berth-netd exits at once ("applet not found", 127),
/// so init must restart it with backoff and boot on without it.
static CRASHING_NETD: SharedImage = SharedImage::new(
    "boot-crashing-netd",
    "[system]\n",
    &[
        "--without",
        "berth-netd",
        "--include",
        "/bin/busybox:/sbin/berth-netd",
    ],
);

fn count(lines: &[String], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn boots_to_ready_with_a_minimal_manifest() -> Result<()> {
    let mut guest = Guest::from_image(MINIMAL.get()?).boot()?;
    let started = guest.expect_console(r"berth: init started uptime_ms=(\d+)$", READY)?;
    let ready = guest.expect_console(READY_LINE, READY)?;
    eprintln!("ready after {:.1?} wall", guest.elapsed());
    assert_eq!(ready.get(2), Some("0"), "{}", ready.text());
    let (init_ms, ready_ms) = (
        started.parse::<u64>(1).context("init started uptime")?,
        ready.parse::<u64>(1).context("ready uptime")?,
    );
    assert!(
        init_ms <= ready_ms,
        "init started at {init_ms} ms, after ready at {ready_ms} ms"
    );
    // The network: an address from QEMU's user-mode DHCP, and the outside
    // gateway answering (netd's ARP check runs after it reports ready).
    guest.expect_console_anywhere(
        r"berth-netd: eth0: DHCP lease 10\.0\.2\.15/24 from 10\.0\.2\.2 ",
        READY,
    )?;
    guest.expect_console_anywhere(
        r"berth-netd: eth0: gateway 10\.0\.2\.2 reachable \(ARP reply in \d+ ms\)",
        READY,
    )?;
    // End the machine and read the whole console: one ready line, ever.
    guest.qmp("quit", None)?;
    guest.wait_exit(SHUTDOWN)?;
    let lines = guest.berth_lines();
    assert_eq!(count(&lines, "berth: ready "), 1, "{lines:#?}");
    assert_eq!(count(&lines, "berth: init started "), 1, "{lines:#?}");
    Ok(())
}

#[test]
fn power_button_powers_off() -> Result<()> {
    let mut guest = Guest::from_image(MINIMAL.get()?).boot()?;
    guest.expect_console(READY_LINE, READY)?;
    let pressed = Instant::now();
    guest.power_button()?;
    guest.expect_console(r"berth: power off$", SHUTDOWN)?;
    let status = guest.wait_exit(SHUTDOWN.saturating_sub(pressed.elapsed()))?;
    eprintln!("power button to exit: {:.1?}", pressed.elapsed());
    assert!(status.success(), "QEMU exited with {status}");
    let lines = guest.berth_lines();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("berth: power off"),
        "{lines:#?}"
    );
    assert_eq!(count(&lines, "berth: ready "), 1, "{lines:#?}");
    Ok(())
}

#[test]
fn ctrl_alt_del_reboots() -> Result<()> {
    let mut guest = Guest::from_image(MINIMAL.get()?).boot()?;
    guest.expect_console(READY_LINE, READY)?;
    let pressed = Instant::now();
    guest.ctrl_alt_del()?;
    guest.expect_console(r"berth: reboot$", SHUTDOWN)?;
    // -no-reboot turns the guest's reboot into QEMU's exit.
    let status = guest.wait_exit(SHUTDOWN.saturating_sub(pressed.elapsed()))?;
    eprintln!("ctrl-alt-del to exit: {:.1?}", pressed.elapsed());
    assert!(status.success(), "QEMU exited with {status}");
    let lines = guest.berth_lines();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("berth: reboot"),
        "{lines:#?}"
    );
    Ok(())
}

/// Line 3, column 1 is an unknown key of `[system]`.
const BAD_MANIFEST: &str = "[system]\nhostname = \"bad\"\ncolour = \"blue\"\n";

#[test]
fn bad_manifest_is_reported_with_line_and_column_and_boot_goes_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, BAD_MANIFEST)?;
    let include = format!("{}:/etc/berth/bad.toml", bad.display());
    let image = Image::build("boot-bad-manifest", "[system]\n", &["--include", &include])?;
    let mut guest = Guest::from_image(&image)
        .append_cmdline("berth.manifest=/etc/berth/bad.toml")
        .boot()?;
    guest.expect_console(r"berth: manifest from cmdline:/etc/berth/bad\.toml$", READY)?;
    let error = guest.expect_console(
        r"berth: manifest error: /etc/berth/bad\.toml:(\d+):(\d+): (.*)$",
        READY,
    )?;
    assert_eq!(
        (error.get(1), error.get(2)),
        (Some("3"), Some("1")),
        "{}",
        error.text()
    );
    assert!(
        error.get(3).is_some_and(|m| m.contains("colour")),
        "the message should name the key: {}",
        error.text()
    );
    let ready = guest.expect_console(READY_LINE, READY)?;
    assert_eq!(ready.get(2), Some("0"), "{}", ready.text());
    Ok(())
}

#[test]
fn manifest_on_a_config_disk_wins_over_the_baked_one() -> Result<()> {
    let image = MINIMAL.get()?;
    let dir = tempfile::tempdir()?;
    let contents = dir.path().join("config");
    std::fs::create_dir(&contents)?;
    std::fs::write(
        contents.join("manifest.toml"),
        "[system]\nhostname = \"from-disk\"\n",
    )?;
    let img = dir.path().join("config.img");
    disk::ext4_from_dir(&img, "berth-config", &contents, "8M")?;

    let mut guest = Guest::from_image(image).disk(&img).boot()?;
    guest.expect_console(
        r"berth: manifest from disk:/dev/vda:/manifest\.toml$",
        READY,
    )?;
    guest.expect_console(READY_LINE, READY)?;
    let console = guest.console();
    let hostname_line = console
        .lines()
        .find(|l| l.contains("hostname") && l.contains("from-disk"));
    if hostname_line.is_none() {
        let log = guest.record_failure();
        anyhow::bail!(
            "no console line shows the host name \"from-disk\" from the disk's manifest \
             (init should log e.g. `hostname set to from-disk`); console in {}",
            log.display()
        );
    }
    Ok(())
}

#[test]
fn crashing_daemon_is_restarted_with_backoff_and_boot_goes_on() -> Result<()> {
    let mut guest = Guest::from_image(CRASHING_NETD.get()?).boot()?;
    let mut delays = Vec::new();
    for _ in 0..3 {
        let restart = guest.expect_console(
            r"berth: berth-netd exited \((.+)\); restarting in (\d+)ms$",
            READY,
        )?;
        let how = restart.get(1).unwrap_or_default().to_owned();
        ensure!(
            how.contains("127"),
            "berth-netd (busybox) should exit with status 127, init says {how:?}"
        );
        delays.push(restart.parse::<u64>(2).context("restart delay")?);
    }
    ensure!(
        delays.windows(2).all(|w| w[0] < w[1]),
        "restart delays should grow: {delays:?}"
    );
    guest.expect_console(READY_LINE, READY)?;
    guest.power_button()?;
    guest.expect_console(r"berth: power off$", SHUTDOWN)?;
    let status = guest.wait_exit(SHUTDOWN)?;
    assert!(status.success(), "QEMU exited with {status}");
    let lines = guest.berth_lines();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("berth: power off"),
        "{lines:#?}"
    );
    assert_eq!(count(&lines, "berth: ready "), 1, "{lines:#?}");
    Ok(())
}
