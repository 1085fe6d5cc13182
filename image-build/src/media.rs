//! Boot media made from a built kernel and initrd: a hybrid ISO (BIOS and
//! UEFI, CD-ROM and USB stick), a raw GPT disk (BIOS and UEFI), and the
//! raw disk converted for other hypervisors and clouds (qcow2, vmdk, vdi,
//! fixed vhd).
//!
//! GRUB boots every medium. Both are assembled here from GRUB's images
//! (`grub-mkimage`), without loop devices or root: the ISO is written by
//! `xorriso`, the raw disk by `sfdisk` and this module. The raw disk's
//! layout:
//!
//! ```text
//! LBA 0        protective MBR, GRUB's boot.img in the code area
//! 1 MiB        BIOS boot partition: GRUB's core.img (i386-pc)
//! 2 MiB        EFI system partition (FAT32): /EFI/BOOT/BOOTX64.EFI,
//!              /boot/vmlinuz, /boot/initrd.img, /boot/grub/grub.cfg
//! end          backup GPT
//! ```
//!
//! Both GRUB images carry a tiny config that finds the ESP by its FAT volume
//! id and reads `/boot/grub/grub.cfg` from it, so the disk boots whatever
//! the firmware calls it (a USB stick, a second disk, NVMe).
//!
//! The ISO carries El Torito entries for BIOS (GRUB's i386-pc-eltorito
//! image) and UEFI (a small FAT image with `BOOTX64.EFI`), GRUB's hybrid MBR
//! and a GPT naming that FAT image as an EFI system partition, so the same
//! file boots from a CD or a USB stick. Its GRUBs find the ISO by a marker
//! file, `/boot/berth-<id>`.
//!
//! Both media are reproducible: every date in them is `SOURCE_DATE_EPOCH`
//! (1980-01-01 when it is unset or earlier, FAT's first day), and every id
//! (FAT serials, GPT GUIDs, the marker) is a hash of the kernel, initrd and
//! command line, so the same inputs give the same bytes.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::tools::{Tool, ToolError};

/// GRUB's per-platform files.
const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

/// Modules built into both raw-disk GRUB images (nothing is loaded later).
const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "normal",
    "linux",
    "search",
    "search_fs_uuid",
    "configfile",
    "serial",
    "terminal",
    "echo",
    "test",
];
const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;
/// Where the BIOS boot partition and the ESP start.
const BIOS_BOOT_START: u64 = MIB;
const ESP_START: u64 = 2 * MIB;
/// Room left after the ESP for the backup GPT.
const TAIL: u64 = MIB;

/// Mixed into the ISO's ids so they differ from the raw disk's ("ISO").
const ISO_TAG: u32 = 0x4953_4f00;
/// FAT cannot date anything before 1980-01-01.
const FAT_EPOCH: u64 = 315_532_800;

/// Offsets in GRUB's i386-pc boot.img (grub/i386/pc/boot.h).
const BOOT_KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE_CHECK: usize = 0x66;
const BOOT_CODE_END: usize = 0x1b8;

/// Every artifact `build --format` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// `vmlinuz`, `initrd.img` and `cmdline`, for QEMU's `-kernel`.
    Kernel,
    /// `berth.iso`: hybrid ISO, BIOS and UEFI, CD-ROM or USB stick.
    Iso,
    /// `berth.img`: a GPT disk, BIOS and UEFI.
    Raw,
    /// `berth.qcow2`.
    Qcow2,
    /// `berth.vmdk` (VMware, VirtualBox).
    Vmdk,
    /// `berth.vdi` (VirtualBox).
    Vdi,
    /// `berth.vhd`: fixed size, as Azure wants.
    Vhd,
}

impl Format {
    /// Every format, in the order they are built.
    pub const ALL: [Format; 7] = [
        Format::Kernel,
        Format::Iso,
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vdi,
        Format::Vhd,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Kernel => "kernel",
            Format::Iso => "iso",
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vdi => "vdi",
            Format::Vhd => "vhd",
        }
    }

    /// The file it writes in the output directory (`kernel`: the first of
    /// its three).
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Kernel => "vmlinuz",
            Format::Iso => "berth.iso",
            Format::Raw => "berth.img",
            Format::Qcow2 => "berth.qcow2",
            Format::Vmdk => "berth.vmdk",
            Format::Vdi => "berth.vdi",
            Format::Vhd => "berth.vhd",
        }
    }

    /// `qemu-img convert` output format and options, for the converted ones.
    fn qemu_img(self) -> Option<(&'static str, &'static [&'static str])> {
        match self {
            Format::Qcow2 => Some(("qcow2", &["-c"])),
            Format::Vmdk => Some(("vmdk", &[])),
            Format::Vdi => Some(("vdi", &[])),
            Format::Vhd => Some(("vpc", &["-o", "subformat=fixed,force_size=on"])),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format {s:?} (formats: {})", all.join(", "))
            })
    }
}

/// Parses `--format LIST`: comma-separated, at least one, duplicates folded.
pub fn parse_formats(list: &str) -> Result<Vec<Format>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("--format {list:?}: an empty name in the list"));
        }
        let f: Format = item.parse()?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out.sort();
    Ok(out)
}

/// Why a medium could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A host program is missing or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// GRUB's files for a platform are not installed.
    #[error(
        "{dir} is missing: GRUB's {platform} files are not installed (apt-get install {package})"
    )]
    GrubPlatform {
        /// The directory looked for.
        dir: &'static str,
        /// BIOS or UEFI.
        platform: &'static str,
        /// The Debian package.
        package: &'static str,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// GRUB's core image does not fit the BIOS boot partition.
    #[error("GRUB's core.img is {0} bytes, more than the 1 MiB BIOS boot partition")]
    CoreTooBig(u64),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MediaError {
    let path = path.to_owned();
    move |source| MediaError::Io {
        action,
        path,
        source,
    }
}

/// The kernel, initrd and command line a medium boots.
#[derive(Debug, Clone)]
pub struct Payload<'a> {
    /// The bzImage.
    pub kernel: &'a Path,
    /// The initramfs.
    pub initrd: &'a Path,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The date every file and filesystem of the medium carries (seconds
    /// since the epoch; `SOURCE_DATE_EPOCH`).
    pub date: u64,
    /// [`volume_id`], read once for all the media made from it.
    id: std::cell::OnceCell<u32>,
}

impl<'a> Payload<'a> {
    /// The payload of a kernel, an initrd and a command line.
    pub fn new(kernel: &'a Path, initrd: &'a Path, cmdline: &'a str, date: u64) -> Self {
        Payload {
            kernel,
            initrd,
            cmdline,
            date,
            id: std::cell::OnceCell::new(),
        }
    }

    /// Its id: a hash of what it boots (FAT serials, GPT GUIDs and the
    /// ISO's marker are made from it).
    fn id(&self) -> Result<u32, MediaError> {
        if let Some(id) = self.id.get() {
            return Ok(*id);
        }
        let id = volume_id(self)?;
        Ok(*self.id.get_or_init(|| id))
    }

    /// The date on the media: [`Payload::date`] moved up to the first one
    /// FAT can hold.
    fn media_date(&self) -> u64 {
        self.date.max(FAT_EPOCH)
    }
}

/// Checks, before any slow work, that the tools for `formats` are there.
pub fn check_tools(formats: &[Format]) -> Result<(), MediaError> {
    let iso = formats.contains(&Format::Iso);
    let raw = formats
        .iter()
        .any(|f| *f == Format::Raw || f.qemu_img().is_some());
    if iso || raw {
        for (dir, platform, package) in [
            (GRUB_PC_DIR, "BIOS", "grub-pc-bin"),
            (GRUB_EFI_DIR, "UEFI", "grub-efi-amd64-bin"),
        ] {
            if !Path::new(dir).is_dir() {
                return Err(MediaError::GrubPlatform {
                    dir,
                    platform,
                    package,
                });
            }
        }
    }
    if iso || raw {
        for t in [Tool::GrubMkimage, Tool::MkfsVfat, Tool::Mcopy, Tool::Mmd] {
            t.find()?;
        }
    }
    if iso {
        Tool::Xorriso.find()?;
    }
    if raw {
        Tool::Sfdisk.find()?;
    }
    if formats.iter().any(|f| f.qemu_img().is_some()) {
        Tool::QemuImg.find()?;
    }
    Ok(())
}

/// GRUB's menu: one entry, no wait, on the serial port and the screen.
pub fn grub_cfg(cmdline: &str) -> String {
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout=0\n\
         menuentry \"berth\" {{\n\
         \x20 linux /boot/vmlinuz {cmdline}\n\
         \x20 initrd /boot/initrd.img\n\
         }}\n"
    )
}

/// Writes the hybrid ISO at `out`.
pub fn make_iso(p: &Payload<'_>, out: &Path, scratch: &Path) -> Result<(), MediaError> {
    let id = p.id()?;
    let marker = format!("boot/berth-{id:08x}");
    let early = scratch.join("iso-early.cfg");
    fs::write(
        &early,
        format!("search --no-floppy --file --set=root /{marker}\nset prefix=($root)/boot/grub\n"),
    )
    .map_err(io_err("write", &early))?;

    let tree = scratch.join("iso");
    let grub = tree.join("boot/grub");
    fs::create_dir_all(&grub).map_err(io_err("create", &grub))?;
    copy(p.kernel, &tree.join("boot/vmlinuz"))?;
    copy(p.initrd, &tree.join("boot/initrd.img"))?;
    let marker_path = tree.join(&marker);
    fs::write(&marker_path, b"").map_err(io_err("write", &marker_path))?;
    let cfg = grub.join("grub.cfg");
    fs::write(&cfg, grub_cfg(p.cmdline)).map_err(io_err("write", &cfg))?;
    let iso_modules = ["iso9660", "search_fs_file"];
    grub_mkimage(
        "i386-pc-eltorito",
        &early,
        &grub.join("eltorito.img"),
        &[&iso_modules[..], &["biosdisk"]].concat(),
    )?;
    let efi = scratch.join("iso-BOOTX64.EFI");
    grub_mkimage(
        "x86_64-efi",
        &early,
        &efi,
        &[&iso_modules[..], &["efi_gop", "all_video"]].concat(),
    )?;
    // The UEFI El Torito image, also the GPT's EFI system partition.
    let efi_img = grub.join("efi.img");
    let size = round_up(len(&efi)? + 256 * 1024, 64 * 1024);
    Fat {
        bytes: size,
        serial: id ^ ISO_TAG,
        label: "BERTH-ISO",
        dirs: &["::/EFI", "::/EFI/BOOT"],
        files: &[(efi.as_path(), "::/EFI/BOOT/BOOTX64.EFI")],
    }
    .write(p, &efi_img, scratch)?;

    let date = iso_date(p.media_date());
    let tmp = tmp_name(out);
    let mut cmd = Tool::Xorriso.command()?;
    cmd.env("SOURCE_DATE_EPOCH", p.media_date().to_string())
        .args(["-as", "mkisofs", "-quiet", "-r", "-V", "BERTH"])
        .arg(format!("--modification-date={date}"))
        .args(["--set_all_file_dates", &date])
        .args(["--gpt_disk_guid", &guid(id, ISO_TAG)])
        .args(["-b", "boot/grub/eltorito.img", "-no-emul-boot"])
        .args([
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "--grub2-boot-info",
        ])
        .arg("--grub2-mbr")
        .arg(Path::new(GRUB_PC_DIR).join("boot_hybrid.img"))
        .args([
            "--efi-boot",
            "boot/grub/efi.img",
            "-efi-boot-part",
            "--efi-boot-image",
        ])
        .arg("--protective-msdos-label")
        .arg("-o")
        .arg(&tmp)
        .arg(&tree);
    Tool::Xorriso.output(&mut cmd)?;
    fs::rename(&tmp, out).map_err(io_err("write", out))
}

/// Writes the raw GPT disk at `out`.
pub fn make_raw(p: &Payload<'_>, out: &Path, scratch: &Path) -> Result<(), MediaError> {
    let kernel_len = len(p.kernel)?;
    let initrd_len = len(p.initrd)?;
    let volume_id = p.id()?;
    let early = scratch.join("early.cfg");
    fs::write(
        &early,
        format!(
            "search --no-floppy --fs-uuid --set=root {}\nset prefix=($root)/boot/grub\n",
            uuid_text(volume_id)
        ),
    )
    .map_err(io_err("write", &early))?;

    // GRUB for both firmwares.
    let core = scratch.join("core.img");
    grub_mkimage("i386-pc", &early, &core, &["biosdisk"])?;
    let efi = scratch.join("BOOTX64.EFI");
    grub_mkimage("x86_64-efi", &early, &efi, &["efi_gop", "all_video"])?;
    let core_len = len(&core)?;
    if core_len > ESP_START - BIOS_BOOT_START {
        return Err(MediaError::CoreTooBig(core_len));
    }

    // The ESP: FAT32 (at least 65525 clusters of one sector: 33 MiB), with
    // a quarter to spare.
    let content = kernel_len + initrd_len + len(&efi)?;
    let esp_bytes = round_up((content + content / 4 + 4 * MIB).max(40 * MIB), MIB);
    let esp = scratch.join("esp.img");
    let cfg = scratch.join("grub.cfg");
    fs::write(&cfg, grub_cfg(p.cmdline)).map_err(io_err("write", &cfg))?;
    Fat {
        bytes: esp_bytes,
        serial: volume_id,
        label: "BERTH-EFI",
        dirs: &["::/EFI", "::/EFI/BOOT", "::/boot", "::/boot/grub"],
        files: &[
            (efi.as_path(), "::/EFI/BOOT/BOOTX64.EFI"),
            (p.kernel, "::/boot/vmlinuz"),
            (p.initrd, "::/boot/initrd.img"),
            (cfg.as_path(), "::/boot/grub/grub.cfg"),
        ],
    }
    .write(p, &esp, scratch)?;

    // The disk: partitions by sfdisk, then the ESP and GRUB's BIOS parts.
    let tmp = tmp_name(out);
    let total = ESP_START + esp_bytes + TAIL;
    {
        let f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.set_len(total).map_err(io_err("size", &tmp))?;
    }
    let guid = |n: u32| guid(volume_id, n);
    let table = format!(
        "label: gpt\n\
         label-id: {}\n\
         start={}, size={}, type=21686148-6449-6E6F-744E-656564454649, uuid={}, name=\"BIOS boot\"\n\
         start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={}, name=\"EFI system\"\n",
        guid(0),
        BIOS_BOOT_START / SECTOR,
        (ESP_START - BIOS_BOOT_START) / SECTOR,
        guid(1),
        ESP_START / SECTOR,
        esp_bytes / SECTOR,
        guid(2),
    );
    let mut sfdisk = Tool::Sfdisk.command()?;
    sfdisk
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&tmp);
    Tool::Sfdisk.output_with_input(&mut sfdisk, Some(table.as_bytes()))?;

    let mut disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(io_err("open", &tmp))?;
    // Blocks of zeros are skipped: the disk stays sparse where the ESP is
    // empty.
    let write_at = |disk: &mut File, at: u64, src: &Path| -> Result<(), MediaError> {
        let mut input = File::open(src).map_err(io_err("read", src))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = at;
        loop {
            let n = input.read(&mut buf).map_err(io_err("read", src))?;
            if n == 0 {
                return Ok(());
            }
            if buf[..n].iter().any(|b| *b != 0) {
                disk.seek(SeekFrom::Start(pos))
                    .map_err(io_err("write", &tmp))?;
                disk.write_all(&buf[..n]).map_err(io_err("write", &tmp))?;
            }
            pos += n as u64;
        }
    };
    write_at(&mut disk, ESP_START, &esp)?;

    // core.img: its first sector loads the rest, listed at its end as
    // (start LBA u64, sectors u16, segment u16); grub-mkimage fills in the
    // count and segment, the start is where the partition is.
    let mut core_img = fs::read(&core).map_err(io_err("read", &core))?;
    let list = SECTOR as usize - 12;
    core_img[list..list + 8].copy_from_slice(&(BIOS_BOOT_START / SECTOR + 1).to_le_bytes());
    disk.seek(SeekFrom::Start(BIOS_BOOT_START))
        .map_err(io_err("write", &tmp))?;
    disk.write_all(&core_img).map_err(io_err("write", &tmp))?;

    // boot.img: the MBR's code area (the partition table stays), pointed
    // at core.img, trusting the drive number the BIOS passes (the drive
    // check jump becomes two NOPs, as grub-bios-setup does for disks).
    let boot_path = Path::new(GRUB_PC_DIR).join("boot.img");
    let mut boot = fs::read(&boot_path).map_err(io_err("read", &boot_path))?;
    if boot.len() != SECTOR as usize {
        return Err(MediaError::Io {
            action: "use",
            path: boot_path,
            source: io::Error::other("boot.img is not one sector"),
        });
    }
    boot[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8]
        .copy_from_slice(&(BIOS_BOOT_START / SECTOR).to_le_bytes());
    boot[BOOT_DRIVE_CHECK] = 0x90;
    boot[BOOT_DRIVE_CHECK + 1] = 0x90;
    let mut mbr = vec![0u8; SECTOR as usize];
    disk.seek(SeekFrom::Start(0))
        .map_err(io_err("read", &tmp))?;
    disk.read_exact(&mut mbr).map_err(io_err("read", &tmp))?;
    mbr[..BOOT_CODE_END].copy_from_slice(&boot[..BOOT_CODE_END]);
    disk.seek(SeekFrom::Start(0))
        .map_err(io_err("write", &tmp))?;
    disk.write_all(&mbr).map_err(io_err("write", &tmp))?;
    disk.sync_all().map_err(io_err("write", &tmp))?;
    drop(disk);
    fs::rename(&tmp, out).map_err(io_err("write", out))
}

/// Converts the raw disk to `format` at `out` with `qemu-img`.
pub fn convert(raw: &Path, format: Format, out: &Path) -> Result<(), MediaError> {
    let Some((name, opts)) = format.qemu_img() else {
        return Ok(());
    };
    let tmp = tmp_name(out);
    let mut cmd = Tool::QemuImg.command()?;
    cmd.args(["convert", "-f", "raw", "-O", name])
        .args(opts)
        .arg(raw)
        .arg(&tmp);
    Tool::QemuImg.output(&mut cmd)?;
    fs::rename(&tmp, out).map_err(io_err("write", out))
}

fn grub_mkimage(
    platform: &str,
    early: &Path,
    out: &Path,
    extra: &[&str],
) -> Result<(), MediaError> {
    let mut cmd = Tool::GrubMkimage.command()?;
    cmd.args(["-O", platform, "-p", "/boot/grub", "-c"])
        .arg(early)
        .arg("-o")
        .arg(out)
        .args(GRUB_MODULES)
        .args(extra);
    Tool::GrubMkimage.output(&mut cmd)?;
    Ok(())
}

/// A FAT filesystem image to make.
struct Fat<'a> {
    /// Its size, a multiple of 1 KiB.
    bytes: u64,
    /// Its volume serial (what GRUB calls its UUID).
    serial: u32,
    /// Its volume label.
    label: &'a str,
    /// Directories to make, `::/DIR`, parents first.
    dirs: &'a [&'a str],
    /// Files to copy in: (source, `::/DEST`).
    files: &'a [(&'a Path, &'a str)],
}

impl Fat<'_> {
    /// Writes the image at `path`, every date in it `p`'s.
    fn write(&self, p: &Payload<'_>, path: &Path, scratch: &Path) -> Result<(), MediaError> {
        let _ = fs::remove_file(path);
        let mut mkfs = Tool::MkfsVfat.command()?;
        // --invariant: the label's directory entry gets a fixed date, not now.
        mkfs.args(["--invariant", "-n", self.label, "-i"])
            .arg(format!("{:08X}", self.serial));
        if self.bytes >= 33 * MIB {
            // FAT32 with one-sector clusters (at least 65525 of them).
            mkfs.args(["-F", "32", "-s", "1"]);
        }
        mkfs.arg("-C")
            .arg(path)
            .arg((self.bytes / 1024).to_string());
        Tool::MkfsVfat.output(&mut mkfs)?;
        mtools(p, path, Tool::Mmd, self.dirs)?;
        // mcopy stamps each file with its source's mtime: copy it to
        // scratch and date the copy.
        let stage = scratch.join("fat-stage");
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(p.media_date());
        for (src, dest) in self.files {
            copy(src, &stage)?;
            File::options()
                .write(true)
                .open(&stage)
                .and_then(|f| f.set_modified(when))
                .map_err(io_err("date", &stage))?;
            mtools(p, path, Tool::Mcopy, &[&stage.to_string_lossy(), dest])?;
        }
        let _ = fs::remove_file(&stage);
        Ok(())
    }
}

/// Runs an mtools program ([`Tool::Mmd`], [`Tool::Mcopy`]) on the FAT
/// image `fat`, in UTC and with `p`'s date for what it makes.
fn mtools(p: &Payload<'_>, fat: &Path, tool: Tool, args: &[&str]) -> Result<(), MediaError> {
    let mut cmd = tool.command()?;
    cmd.env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC")
        .env("SOURCE_DATE_EPOCH", p.media_date().to_string())
        .arg("-i")
        .arg(fat)
        .args(args);
    tool.output(&mut cmd)?;
    Ok(())
}

/// A GUID made from a volume id and a number, instead of a random one.
fn guid(id: u32, n: u32) -> String {
    format!("{id:08X}-4245-5254-4800-{n:012X}")
}

/// `secs` as an ISO 9660 date, `YYYYMMDDhhmmss00` (UTC).
fn iso_date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The ESP's FAT volume id: a hash of what it boots, so rebuilding the same
/// image gives the same disk, and two different berth disks in one machine
/// are told apart.
fn volume_id(p: &Payload<'_>) -> Result<u32, MediaError> {
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    for path in [p.kernel, p.initrd] {
        let mut f = File::open(path).map_err(io_err("read", path))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io_err("read", path))?;
            if n == 0 {
                break;
            }
            feed(&buf[..n]);
        }
    }
    feed(p.cmdline.as_bytes());
    Ok(h)
}

/// How GRUB writes a FAT volume id: `ABCD-1234`.
fn uuid_text(id: u32) -> String {
    format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn len(path: &Path) -> Result<u64, MediaError> {
    Ok(fs::metadata(path).map_err(io_err("read", path))?.len())
}

fn copy(src: &Path, dest: &Path) -> Result<(), MediaError> {
    fs::copy(src, dest).map_err(io_err("copy to", dest))?;
    Ok(())
}

/// A sibling of `out` that is renamed over it once complete.
fn tmp_name(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "berth".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_fold() {
        assert_eq!(
            parse_formats("raw,iso,raw").unwrap(),
            vec![Format::Iso, Format::Raw]
        );
        let e = parse_formats("iso,dmg").unwrap_err();
        assert!(
            e.contains("\"dmg\"") && e.contains("qcow2, vmdk, vdi, vhd"),
            "{e}"
        );
        assert!(parse_formats("iso,").unwrap_err().contains("empty"));
    }

    #[test]
    fn grub_menu_boots_the_payload_on_both_consoles() {
        let cfg = grub_cfg("console=tty0 console=ttyS0,115200 quiet");
        assert!(cfg.contains("linux /boot/vmlinuz console=tty0 console=ttyS0,115200 quiet\n"));
        assert!(cfg.contains("initrd /boot/initrd.img\n"));
        assert!(cfg.contains("terminal_output console serial\n"));
        assert!(cfg.contains("set timeout=0\n"));
    }

    #[test]
    fn iso_dates_are_utc_calendar_dates() {
        assert_eq!(iso_date(0), "1970010100000000");
        assert_eq!(iso_date(FAT_EPOCH), "1980010100000000");
        // 2024-02-29 (a leap day) 23:59:59.
        assert_eq!(iso_date(1_709_251_199), "2024022923595900");
        assert_eq!(iso_date(1_700_000_000), "2023111422132000");
    }

    #[test]
    fn volume_ids_read_as_grub_writes_them() {
        assert_eq!(uuid_text(0xBE27_00A1), "BE27-00A1");
    }
}
