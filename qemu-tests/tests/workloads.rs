//! The engine inside the appliance: berthd started by init, images baked
//! into the initramfs with `berth-build --image`, workloads from the boot
//! manifest, published ports reached from the host through QEMU's port
//! forwarding, and the cgroup limits the host's hybrid cgroups cannot
//! enforce (this is where the engine's limits are tested).

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use qemu_tests::{busybox_archive, http, Guest, Image};

/// From QEMU start to `berth: ready` with workloads: a TCG boot, the image
/// import and the containers' start, on two shared cores.
const READY: Duration = Duration::from_secs(180);
const SHUTDOWN: Duration = Duration::from_secs(30);
const READY_LINE: &str = r"berth: ready uptime_ms=(\d+) workloads=(\d+)$";

/// The manifest `make demo` boots.
const DEMO: &str = include_str!("../../examples/demo.toml");

/// Workloads that print what the kernel enforces for them, and one that
/// fails so its restart policy shows.
const LIMITS: &str = r#"
[system]
hostname = "limits"
console_logs = true

[workloads.limited]
image = "busybox:latest"
network = "none"
memory = "32M"
pids = 64
cpus = 0.5
command = ["sh", "-c", "echo \"limits memory=$(cat /sys/fs/cgroup/memory.max) pids=$(cat /sys/fs/cgroup/pids.max) cpu=$(cat /sys/fs/cgroup/cpu.max)\"; exec sleep 2147483647"]

[workloads.hog]
image = "busybox:latest"
network = "none"
memory = "16M"
restart = "no"
command = ["sh", "-c", "echo hog starting; exec dd if=/dev/zero of=/dev/null bs=64M count=1"]
"#;

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

fn power_off_cleanly(guest: &mut Guest) -> Result<()> {
    guest.power_button()?;
    guest.expect_console(r"berth: power off$", SHUTDOWN)?;
    let status = guest.wait_exit(SHUTDOWN)?;
    ensure!(status.success(), "QEMU exited with {status}");
    let lines = guest.berth_lines();
    ensure!(
        lines.last().map(String::as_str) == Some("berth: power off"),
        "the last berth line is not the power off: {lines:#?}"
    );
    Ok(())
}

#[test]
fn the_demo_appliance_serves_its_page_through_a_published_port() -> Result<()> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    let image = image(&IMAGE, "workloads-demo", DEMO)?;
    let mut guest = Guest::from_image(&image).forward_free_port(80).boot()?;
    let ready = guest.expect_console(READY_LINE, READY)?;
    eprintln!("ready after {:.1?} wall: {}", guest.elapsed(), ready.text());
    assert_eq!(
        ready.get(2),
        Some("2"),
        "both workloads run: {}",
        ready.text()
    );
    let port = guest
        .host_port(80)
        .ok_or_else(|| anyhow!("no host port forwarded to the guest's 80"))?;
    // Host → QEMU → the guest's eth0:80 → nftables DNAT → web:8080, which
    // serves the page `content` wrote into the shared volume.
    let page = http::get_until(port, "hello from berth", Duration::from_secs(60))?;
    assert!(page.starts_with("HTTP/1."), "{page}");
    power_off_cleanly(&mut guest)
}

#[test]
fn cgroup_limits_are_enforced_in_the_appliance() -> Result<()> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    let image = image(&IMAGE, "workloads-limits", LIMITS)?;
    let mut guest = Guest::from_image(&image).boot()?;
    guest.expect_console(READY_LINE, READY)?;
    // Workloads start in name order and print concurrently: look for each
    // line anywhere on the console rather than in sequence.
    // Inside its cgroup namespace the container's own cgroup is the root.
    let limits = guest.expect_console_anywhere(r"^limited \| limits (.*)$", READY)?;
    assert_eq!(
        limits.get(1),
        Some("memory=33554432 pids=64 cpu=50000 100000"),
        "{}",
        limits.text()
    );
    // A 64 MiB buffer in a 16 MiB cgroup: the OOM killer ends it, and the
    // engine records and says so.
    guest.expect_console_anywhere(r"^hog \| hog starting$", READY)?;
    guest.expect_console_anywhere(r"container hog: out of memory", READY)?;
    power_off_cleanly(&mut guest)
}
