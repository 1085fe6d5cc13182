//! The media section of `make bench`: the size of each boot medium
//! `berth-build build --format` writes for the demo, and QEMU start → ready
//! for each way of booting them (firmware and GRUB included), against the
//! direct `-kernel` boot.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use qemu_tests::{accel, Firmware, Guest, Image, Media};

/// Boots per medium.
const BOOTS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The files, in the order printed.
const FILES: [(&str, &str); 6] = [
    ("iso (BIOS + UEFI, CD or stick)", "berth.iso"),
    ("raw (GPT, BIOS + UEFI)", "berth.img"),
    ("qcow2 (compressed)", "berth.qcow2"),
    ("vmdk", "berth.vmdk"),
    ("vdi", "berth.vdi"),
    ("vhd (fixed)", "berth.vhd"),
];

/// Runs the section on the media in `dir` (and the `-kernel` image in
/// `kernel_dir`, for comparison).
pub fn run(dir: &Path, kernel_dir: &Path) -> Result<()> {
    println!();
    println!("media: {}", dir.display());
    println!();
    println!("{:<40} {:>12} {:>12}", "medium", "bytes", "allocated");
    for (name, file) in FILES {
        let path = dir.join(file);
        match std::fs::metadata(&path) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                println!("{name:<40} {:>12} {:>12}", m.len(), m.blocks() * 512);
            }
            Err(_) => println!("{name:<40} {:>12}", "absent"),
        }
    }

    let accel = accel::accel().context("cannot choose an accelerator")?;
    let cases: Vec<(&str, Option<Media>, Firmware)> = vec![
        ("-kernel/-initrd (QEMU direct)", None, Firmware::Bios),
        (
            "iso on CD-ROM, SeaBIOS",
            Some(Media::Cdrom(dir.join("berth.iso"))),
            Firmware::Bios,
        ),
        (
            "iso on CD-ROM, OVMF",
            Some(Media::Cdrom(dir.join("berth.iso"))),
            Firmware::Uefi,
        ),
        (
            "raw on virtio, SeaBIOS",
            Some(Media::Disk {
                path: dir.join("berth.img"),
                format: "raw".into(),
            }),
            Firmware::Bios,
        ),
        (
            "raw on virtio, OVMF",
            Some(Media::Disk {
                path: dir.join("berth.img"),
                format: "raw".into(),
            }),
            Firmware::Uefi,
        ),
        (
            "qcow2 on virtio, SeaBIOS",
            Some(Media::Disk {
                path: dir.join("berth.qcow2"),
                format: "qcow2".into(),
            }),
            Firmware::Bios,
        ),
    ];
    println!();
    println!("booting each medium {BOOTS} times under {accel} ...");
    let kernel_image = Image::from_dir(kernel_dir)
        .with_context(|| format!("no image in {}", kernel_dir.display()))?;
    let mut rows = Vec::new();
    for (name, media, firmware) in cases {
        let mut wall = Vec::new();
        let mut guest_ms = Vec::new();
        for i in 0..BOOTS {
            let builder = match &media {
                Some(m) => Guest::builder().boot_media(m.clone()),
                None => Guest::from_image(&kernel_image),
            };
            let (w, g) = boot_once(builder.firmware(firmware).memory_mb(512))
                .with_context(|| format!("{name}: boot {} of {BOOTS}", i + 1))?;
            wall.push(w);
            guest_ms.push(g);
        }
        wall.sort_unstable();
        guest_ms.sort_unstable();
        rows.push((name, wall, guest_ms));
    }
    println!();
    println!(
        "{:<40} {:>12} {:>12} {:>12}   ({accel}, {BOOTS} boots, medians)",
        "boot to ready", "wall ms", "min wall", "guest ms"
    );
    let direct = rows[0].1[BOOTS / 2];
    for (name, wall, guest_ms) in &rows {
        println!(
            "{name:<40} {:>12} {:>12} {:>12}   {:+.1} s firmware + GRUB",
            wall[BOOTS / 2],
            wall[0],
            guest_ms[BOOTS / 2],
            (wall[BOOTS / 2] as f64 - direct as f64) / 1000.0
        );
    }
    println!("(wall: QEMU start -> `berth: ready`; guest: kernel uptime at ready)");
    Ok(())
}

/// QEMU start → ready (wall ms) and the guest's uptime at ready.
fn boot_once(builder: qemu_tests::GuestBuilder) -> Result<(u64, u64)> {
    let started = Instant::now();
    let mut guest = builder.boot()?;
    let ready = guest.expect_console(r"berth: ready uptime_ms=(\d+) workloads=", READY_TIMEOUT)?;
    let wall = started.elapsed().as_millis() as u64;
    let uptime: u64 = ready.parse(1).context("ready uptime")?;
    guest.power_button()?;
    let status = guest.wait_exit(SHUTDOWN_TIMEOUT)?;
    ensure!(status.success(), "QEMU exited with {status}");
    Ok((wall, uptime))
}
