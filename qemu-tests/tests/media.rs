//! Boot media: each format `berth-build build --format` writes boots to
//! `berth: ready` through real firmware (SeaBIOS, OVMF) and GRUB, from the
//! devices people boot them from: a CD-ROM, a disk, a USB stick, and a
//! machine shaped like VirtualBox's defaults (q35's AHCI, an e1000 NIC).
//!
//! Timeouts are sized for TCG, where firmware and GRUB add seconds.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use qemu_tests::{Firmware, Guest, Media, SharedImage};

/// From QEMU start to `berth: ready`.
const READY: Duration = Duration::from_secs(120);
const READY_LINE: &str = r"berth: ready uptime_ms=(\d+) workloads=(\d+)$";
/// GRUB's line as it starts the kernel: the medium, not `-kernel`, booted.
const GRUB_LINE: &str = r"Booting `berth'";

const MANIFEST: &str = "[system]\nhostname = \"berth-media\"\n";

static MEDIA: SharedImage = SharedImage::new(
    "media",
    MANIFEST,
    &["--format", "kernel,iso,raw,qcow2,vmdk,vdi,vhd"],
);

/// The same with init's debug log (the modules coldplug loaded).
static MEDIA_DEBUG: SharedImage = SharedImage::new(
    "media-debug",
    MANIFEST,
    &[
        "--format",
        "kernel,iso",
        "--cmdline",
        "console=tty0 console=ttyS0,115200 panic=-1 quiet loglevel=4 berth.log=debug",
    ],
);

fn artifact(name: &str) -> Result<PathBuf> {
    let path = MEDIA.get()?.dir().join(name);
    ensure!(
        path.is_file(),
        "berth-build did not write {}",
        path.display()
    );
    Ok(path)
}

/// A medium on virtio-blk.
fn disk(name: &str, format: &str) -> Result<Media> {
    Ok(Media::Disk {
        path: artifact(name)?,
        format: format.into(),
    })
}

/// Boots `media`, waits for GRUB and for ready, checks the manifest and
/// the network came up, and powers off.
fn boots(media: Media, firmware: Firmware) -> Result<Guest> {
    let mut guest = Guest::builder()
        .boot_media(media)
        .firmware(firmware)
        .memory_mb(512)
        .boot()?;
    guest.expect_console(GRUB_LINE, READY)?;
    let ready = guest.expect_console(READY_LINE, READY)?;
    eprintln!(
        "{}: ready at {} ms guest uptime, {:.1?} wall",
        guest.name(),
        ready.get(1).unwrap_or("?"),
        guest.elapsed()
    );
    guest.expect_console_anywhere(r"hostname set to berth-media$", READY)?;
    guest.expect_console_anywhere(r"berth-netd: eth0: DHCP lease 10\.0\.2\.15/24 ", READY)?;
    match firmware {
        // OVMF's boot manager names what it loads on the serial console.
        Firmware::Uefi => {
            guest.expect_console_anywhere(r"BdsDxe: (loading|starting) Boot", READY)?;
        }
        // The screen (the default command line's tty0) shows it too: the
        // kernel's VGA text console, whose buffer is read out of the
        // guest's memory. UEFI's screen is a framebuffer, not text.
        Firmware::Bios => {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut screen = vga_text(&mut guest)?;
            while !screen.contains("berth: ready") && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                screen = vga_text(&mut guest)?;
            }
            ensure!(
                screen.contains("berth: ready"),
                "the screen does not show `berth: ready`:\n{}",
                screen.trim_end()
            );
        }
    }
    guest.power_button()?;
    let status = guest.wait_exit(Duration::from_secs(30))?;
    ensure!(status.success(), "QEMU exited with {status}");
    Ok(guest)
}

/// The VGA text buffer (0xB8000, 32 KiB: the kernel's console scrolls
/// within it), its characters as lines of 80.
fn vga_text(guest: &mut Guest) -> Result<String> {
    let dump = guest.scratch_dir().join("vga.bin");
    guest.qmp(
        "pmemsave",
        Some(&serde_json::json!({
            "val": 0xB8000,
            "size": 0x8000,
            "filename": dump.to_string_lossy(),
        })),
    )?;
    let cells = std::fs::read(&dump).with_context(|| format!("cannot read {}", dump.display()))?;
    // Each cell is a character and its colours.
    let chars: Vec<u8> = cells
        .chunks(2)
        .map(|c| match c[0] {
            0x20..=0x7e => c[0],
            _ => b' ',
        })
        .collect();
    Ok(chars
        .chunks(80)
        .map(|row| String::from_utf8_lossy(row).trim_end().to_owned())
        .filter(|row| !row.is_empty())
        .collect::<Vec<_>>()
        .join("\n"))
}

#[test]
fn iso_boots_from_a_cdrom_with_seabios() -> Result<()> {
    boots(Media::Cdrom(artifact("berth.iso")?), Firmware::Bios).map(drop)
}

#[test]
fn iso_boots_from_a_cdrom_with_ovmf() -> Result<()> {
    boots(Media::Cdrom(artifact("berth.iso")?), Firmware::Uefi).map(drop)
}

/// The same ISO file written to a USB stick (isohybrid).
#[test]
fn iso_boots_as_a_usb_stick_with_seabios() -> Result<()> {
    boots(Media::UsbStick(artifact("berth.iso")?), Firmware::Bios).map(drop)
}

/// UEFI boots a stick from the GPT's EFI system partition (not El Torito,
/// which is for CDs).
#[test]
fn iso_boots_as_a_usb_stick_with_ovmf() -> Result<()> {
    boots(Media::UsbStick(artifact("berth.iso")?), Firmware::Uefi).map(drop)
}

#[test]
fn raw_disk_boots_with_ovmf() -> Result<()> {
    boots(disk("berth.img", "raw")?, Firmware::Uefi).map(drop)
}

#[test]
fn raw_disk_boots_with_seabios() -> Result<()> {
    boots(disk("berth.img", "raw")?, Firmware::Bios).map(drop)
}

#[test]
fn qcow2_boots() -> Result<()> {
    boots(disk("berth.qcow2", "qcow2")?, Firmware::Bios).map(drop)
}

/// VirtualBox's defaults: an ICH9 (q35) machine whose CD-ROM hangs off the
/// AHCI controller, and an Intel e1000 NIC. Coldplug must load both drivers
/// (they are modules, not built in) for the address to come.
#[test]
fn a_virtualbox_like_machine_boots_the_iso_and_gets_an_address() -> Result<()> {
    let iso = MEDIA_DEBUG.get()?.dir().join("berth.iso");
    let mut guest = Guest::builder()
        .boot_media(Media::Cdrom(iso))
        .machine("q35")
        .nic("e1000")
        .memory_mb(512)
        .boot()?;
    guest.expect_console(GRUB_LINE, READY)?;
    guest.expect_console(READY_LINE, READY)?;
    guest.expect_console_anywhere(r"berth-netd: eth0: DHCP lease 10\.0\.2\.15/24 ", READY)?;
    let loaded = guest.expect_console_anywhere(r"coldplug loaded: (.*)$", READY)?;
    let modules: Vec<&str> = loaded.get(1).unwrap_or("").split(' ').collect();
    for m in ["e1000", "ahci"] {
        ensure!(
            modules.contains(&m),
            "coldplug did not load {m}: {}",
            loaded.text()
        );
    }
    ensure!(
        !modules.contains(&"virtio_net"),
        "coldplug loaded virtio_net on a machine without virtio: {}",
        loaded.text()
    );
    guest.power_button()?;
    guest.wait_exit(Duration::from_secs(30))?;
    Ok(())
}

/// The converted images pass `qemu-img check` (VHD has none in qemu-img:
/// its fixed-disk footer is checked instead).
#[test]
fn converted_images_pass_qemu_img_check() -> Result<()> {
    for (file, format) in [
        ("berth.qcow2", "qcow2"),
        ("berth.vmdk", "vmdk"),
        ("berth.vdi", "vdi"),
    ] {
        let out = Command::new("qemu-img")
            .args(["check", "-f", format])
            .arg(artifact(file)?)
            .output()
            .context("cannot run qemu-img")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.contains("No errors were found"),
            "{file}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let vhd = std::fs::read(artifact("berth.vhd")?)?;
    let raw_len = std::fs::metadata(artifact("berth.img")?)?.len();
    let footer = &vhd[vhd.len() - 512..];
    ensure!(&footer[..8] == b"conectix", "berth.vhd has no VHD footer");
    ensure!(
        u32::from_be_bytes(footer[60..64].try_into()?) == 2,
        "berth.vhd is not a fixed VHD"
    );
    ensure!(
        vhd.len() as u64 == raw_len + 512,
        "berth.vhd is not raw + footer"
    );
    Ok(())
}
