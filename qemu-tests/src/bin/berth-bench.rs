//! `make bench`: sizes of the boot artifacts and binaries, boot timings
//! read from the guest's own console, as medians over several boots, and
//! netd against peer DHCP clients on the host (see `berth-bench/netd.rs`),
//! and the engine against runc, dockerd and tar (`berth-bench/engine.rs`).
//!
//! Timings are guest uptime (CLOCK_BOOTTIME inside the VM) as init prints
//! it, so they do not include QEMU's own start-up; the wall-clock columns do.
//!
//! `berth-bench [--only SECTION[,SECTION...]] [IMAGE_DIR]` runs some
//! sections only (`sizes`, `boot`, `media`, `netd`, `engine`), e.g. `--only netd`
//! for numbers without booting a VM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use qemu_tests::{accel, http, paths, Guest, Image};

#[path = "berth-bench/engine.rs"]
mod engine;
#[path = "berth-bench/media.rs"]
mod media;
#[path = "berth-bench/netd.rs"]
mod netd;

/// The sections, in the order they run.
const SECTIONS: [&str; 5] = ["sizes", "boot", "media", "netd", "engine"];

const BOOTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads one phase's duration from a boot.
type Phase = fn(&Boot) -> u64;
/// Reads a phase that only some images have (no netd, no berthd, no port).
type OptionalPhase = fn(&Boot) -> Option<u64>;

fn print_row(name: &str, sorted: &[u64]) {
    println!(
        "{name:<40} {:>10} {:>10} {:>10}",
        median(sorted),
        sorted[0],
        sorted[sorted.len() - 1]
    );
}

/// Guest uptime in ms of init's `[  S.mmm] berth: WHAT` line.
fn milestone(guest: &mut Guest, what: &str) -> Result<Option<u64>> {
    let console = guest.console();
    if !console.contains(&format!("berth: {what}")) {
        return Ok(None);
    }
    let m = guest.expect_console_anywhere(
        &format!(r"^\[\s*(\d+)\.(\d{{3}})\] berth: {}$", regex::escape(what)),
        SHUTDOWN_TIMEOUT,
    )?;
    let (s, ms): (u64, u64) = (m.parse(1).context("seconds")?, m.parse(2).context("ms")?);
    Ok(Some(s * 1000 + ms))
}

/// One boot's measurements, in milliseconds.
struct Boot {
    /// Guest uptime when init started: kernel start → /init.
    kernel_to_init: u64,
    /// Guest uptime from init start to the ready line (everything declared
    /// running).
    init_to_ready: u64,
    /// Guest uptime from init start to netd's readiness.
    init_to_network: Option<u64>,
    /// Guest uptime from netd's readiness to berthd's (images loaded,
    /// workloads running).
    network_to_engine: Option<u64>,
    /// Workloads the ready line counted.
    workloads: u64,
    /// Wall time from the ready line to the first HTTP answer through the
    /// forwarded port 80 (when the image publishes one).
    ready_to_http: Option<u64>,
    /// Guest uptime at the ready line.
    ready_uptime: u64,
    /// Wall time from starting QEMU to seeing the ready line.
    wall_to_ready: u64,
    /// Wall time from the power button to QEMU's exit.
    wall_power_off: u64,
}

/// The command line: which sections, which image.
struct Args {
    sections: Vec<String>,
    image_dir: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut sections: Vec<String> = SECTIONS.map(String::from).into();
    let mut image_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let only = match arg.strip_prefix("--only") {
            Some("") => args.next().context("--only needs a list of sections")?,
            Some(rest) if rest.starts_with('=') => rest[1..].to_string(),
            Some(_) => bail!("unknown option {arg}"),
            None if arg.starts_with('-') => bail!("unknown option {arg}"),
            None => {
                image_dir = Some(PathBuf::from(arg));
                continue;
            }
        };
        sections = only.split(',').map(str::to_string).collect();
        if let Some(bad) = sections.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
            bail!(
                "no bench section {bad:?}; the sections are {}",
                SECTIONS.join(", ")
            );
        }
    }
    Ok(Args {
        sections,
        image_dir: image_dir.unwrap_or_else(|| paths::workspace_dir().join("out/demo")),
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let want = |s: &str| args.sections.iter().any(|x| x == s);
    if want("sizes") {
        sizes(&args.image_dir);
    }
    if want("boot") {
        boot(&args.image_dir)?;
    }
    if want("media") {
        media::run(&paths::workspace_dir().join("out/media"), &args.image_dir)?;
    }
    if want("netd") {
        netd::run()?;
    }
    if want("engine") {
        engine::run()?;
    }
    Ok(())
}

fn sizes(image_dir: &Path) {
    println!("berth bench: image {}", image_dir.display());
    println!();
    println!("{:<28} {:>12}", "artifact", "bytes");
    let mut sizes: Vec<(String, PathBuf)> = vec![
        ("vmlinuz".into(), image_dir.join("vmlinuz")),
        ("initrd.img".into(), image_dir.join("initrd.img")),
    ];
    let bin = paths::bin_dir();
    for name in ["berth-init", "berth-netd", "berthd", "berth", "berth-build"] {
        sizes.push((name.into(), bin.join(name)));
    }
    for (name, path) in &sizes {
        match size(path) {
            Some(bytes) => println!("{name:<28} {bytes:>12}"),
            None => println!("{name:<28} {:>12}", "absent"),
        }
    }
}

fn boot(image_dir: &Path) -> Result<()> {
    let image = Image::from_dir(image_dir)
        .with_context(|| format!("no image in {} (run `make bench`)", image_dir.display()))?;
    let accel = accel::accel().context("cannot choose an accelerator")?;
    println!();
    println!("booting {BOOTS} times under {accel} ...");
    let mut boots = Vec::new();
    for i in 0..BOOTS {
        let boot = boot_once(&image).with_context(|| format!("boot {} of {BOOTS}", i + 1))?;
        boots.push(boot);
    }
    println!();
    println!(
        "{:<40} {:>10} {:>10} {:>10}   ({accel}, {BOOTS} boots)",
        "boot phase", "median ms", "min ms", "max ms"
    );
    let rows: [(&str, Phase); 5] = [
        ("kernel -> init (guest uptime)", |b| b.kernel_to_init),
        ("init -> ready (guest)", |b| b.init_to_ready),
        ("kernel -> ready (guest uptime)", |b| b.ready_uptime),
        ("qemu start -> ready (wall)", |b| b.wall_to_ready),
        ("power button -> qemu exit (wall)", |b| b.wall_power_off),
    ];
    for (name, get) in rows {
        let mut values: Vec<u64> = boots.iter().map(get).collect();
        values.sort_unstable();
        print_row(name, &values);
    }
    let workloads = boots.iter().map(|b| b.workloads).max().unwrap_or(0);
    let optional: [(String, OptionalPhase); 4] = [
        ("init -> network ready (guest)".into(), |b| {
            b.init_to_network
        }),
        ("network ready -> engine ready (guest)".into(), |b| {
            b.network_to_engine
        }),
        (
            format!("init -> {workloads} workloads running (guest)"),
            |b| (b.workloads > 0).then_some(b.init_to_ready),
        ),
        ("ready -> first HTTP answer (wall)".into(), |b| {
            b.ready_to_http
        }),
    ];
    for (name, get) in optional {
        let mut values: Vec<u64> = boots.iter().filter_map(get).collect();
        if values.len() == boots.len() {
            values.sort_unstable();
            print_row(&name, &values);
        }
    }
    let init_share: Vec<u64> = {
        let mut v: Vec<u64> = boots
            .iter()
            .map(|b| b.init_to_ready * 100 / b.ready_uptime.max(1))
            .collect();
        v.sort_unstable();
        v
    };
    println!(
        "{:<40} {:>9}%",
        "init's share of kernel -> ready",
        median(&init_share)
    );
    Ok(())
}

fn boot_once(image: &Image) -> Result<Boot> {
    let started = Instant::now();
    let mut guest = Guest::from_image(image)
        .memory_mb(512)
        .forward_free_port(80)
        .boot()?;
    let init = guest.expect_console(r"berth: init started uptime_ms=(\d+)", READY_TIMEOUT)?;
    let kernel_to_init: u64 = init.parse(1).context("init uptime")?;
    let ready = guest.expect_console(
        r"berth: ready uptime_ms=(\d+) workloads=(\d+)",
        READY_TIMEOUT,
    )?;
    let wall_to_ready = started.elapsed().as_millis() as u64;
    let ready_uptime: u64 = ready.parse(1).context("ready uptime")?;
    let workloads: u64 = ready.parse(2).context("workloads")?;
    ensure!(
        ready_uptime >= kernel_to_init,
        "ready ({ready_uptime} ms) before init started ({kernel_to_init} ms)"
    );
    // A page on port 80 when the image publishes one (the demo does).
    let ready_to_http = match guest.host_port(80) {
        Some(port) if workloads > 0 => {
            let asked = Instant::now();
            http::get_until(port, "HTTP/1.", Duration::from_secs(30))
                .ok()
                .map(|_| asked.elapsed().as_millis() as u64)
        }
        _ => None,
    };
    let network = milestone(&mut guest, "berth-netd ready")?;
    let engine = milestone(&mut guest, "berthd ready")?;
    let pressed = Instant::now();
    guest.power_button()?;
    guest.expect_console(r"berth: power off", SHUTDOWN_TIMEOUT)?;
    let status = guest.wait_exit(SHUTDOWN_TIMEOUT)?;
    ensure!(status.success(), "QEMU exited with {status}");
    Ok(Boot {
        kernel_to_init,
        init_to_ready: ready_uptime - kernel_to_init,
        init_to_network: network.map(|n| n.saturating_sub(kernel_to_init)),
        network_to_engine: match (network, engine) {
            (Some(n), Some(e)) => Some(e.saturating_sub(n)),
            _ => None,
        },
        workloads,
        ready_to_http,
        ready_uptime,
        wall_to_ready,
        wall_power_off: pressed.elapsed().as_millis() as u64,
    })
}

fn median(sorted: &[u64]) -> u64 {
    sorted[sorted.len() / 2]
}

fn size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}
