//! Self-tests of the harness against a hand-made initramfs whose /init is a
//! busybox script that prints berth-like lines, so the harness (console
//! expectations, QMP, exits, kill on drop) is checked independently of
//! berth-init. Needs a kernel: `$BERTH_TEST_KERNEL`, else the Debian
//! kernel the other tests use (`$BERTH_KERNEL_DIR`, else the newest in
//! berth-build's cache, which `make test` fills first).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use qemu_tests::{Accel, Guest, GuestBuilder};

const BOOT: Duration = Duration::from_secs(60);

const FAKE_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo 0 > /proc/sys/kernel/ctrl-alt-del
echo "berth: init started uptime_ms=1"
trap 'echo "berth: reboot"; /bin/busybox reboot -f' INT
echo "cmdline: $(/bin/busybox cat /proc/cmdline)"
echo "berth: ready uptime_ms=2 workloads=0"
while true; do /bin/busybox sleep 1; done
"#;

#[path = "../../image-build/src/testkernel.rs"]
mod testkernel;

fn kernel() -> Result<PathBuf> {
    let path = std::env::var_os("BERTH_TEST_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(testkernel::vmlinuz);
    ensure!(
        path.is_file(),
        "no kernel at {}: set BERTH_TEST_KERNEL to a bzImage",
        path.display()
    );
    Ok(path)
}

/// Appends one newc cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let header = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        data.len(),
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name.len() + 1,
        0, // check
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn fake_initrd(dir: &Path) -> Result<PathBuf> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    let mut cpio = Vec::new();
    for (ino, dir) in ["bin", "proc", "dev"].iter().enumerate() {
        cpio_entry(&mut cpio, ino as u32 + 1, dir, 0o040755, &[]);
    }
    cpio_entry(&mut cpio, 10, "bin/busybox", 0o100755, &busybox);
    cpio_entry(&mut cpio, 11, "init", 0o100755, FAKE_INIT.as_bytes());
    cpio_entry(&mut cpio, 0, "TRAILER!!!", 0, &[]);
    let path = dir.join("initrd.cpio");
    std::fs::write(&path, cpio)?;
    Ok(path)
}

fn fake_guest(dir: &Path) -> Result<GuestBuilder> {
    Ok(Guest::builder()
        .kernel(kernel()?)
        .initrd(fake_initrd(dir)?)
        .accel(Accel::Tcg)
        .memory_mb(256))
}

#[test]
fn console_expectations_move_forward_and_ctrl_alt_del_ends_qemu() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut guest = fake_guest(dir.path())?
        .append_cmdline("berth.test=1")
        .forward_free_port(80)
        .boot()?;
    assert!(guest.host_port(80).is_some());
    guest.expect_console(r"berth: init started", BOOT)?;
    let cmdline = guest.expect_console(r"^cmdline: (.*)$", BOOT)?;
    assert_eq!(
        cmdline.get(1),
        Some("console=ttyS0 panic=-1 quiet loglevel=4 berth.test=1")
    );
    let ready = guest.expect_console(r"berth: ready uptime_ms=(\d+) workloads=(\d+)", BOOT)?;
    assert_eq!(ready.parse::<u32>(2), Some(0));
    // The cursor is past "init started": it must not match again.
    assert!(guest
        .expect_console(r"berth: init started", Duration::from_millis(100))
        .is_err());
    guest.ctrl_alt_del()?;
    guest.expect_console(r"berth: reboot", Duration::from_secs(30))?;
    let status = guest.wait_exit(Duration::from_secs(30))?;
    assert!(status.success(), "QEMU exited with {status}");
    assert_eq!(
        guest.berth_lines().last().map(String::as_str),
        Some("berth: reboot")
    );
    Ok(())
}

#[test]
fn expect_fails_fast_when_qemu_exits_and_drop_kills_qemu() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut guest = fake_guest(dir.path())?.boot()?;
    guest.expect_console(r"berth: ready", BOOT)?;
    guest.qmp("quit", None)?;
    let start = Instant::now();
    let err = guest
        .expect_console("never printed", BOOT)
        .expect_err("QEMU quit, so nothing more can match");
    assert!(start.elapsed() < Duration::from_secs(20), "{err}");
    assert!(format!("{err:#}").contains("QEMU exited"), "{err}");
    assert!(guest.log_path().is_file());

    let mut second = fake_guest(dir.path())?
        .name("harness-kill-on-drop")
        .boot()?;
    second.expect_console(r"berth: ready", BOOT)?;
    let pid = second.pid();
    drop(second);
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} survived the guest's drop"
    );
    Ok(())
}
