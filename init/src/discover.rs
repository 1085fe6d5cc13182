//! Finding the boot manifest: the kernel command line (`berth.manifest=`),
//! then an ext4 disk labelled `berth-config` or `berth-data` holding
//! `/manifest.toml` (read with `ext4-view`, without mounting), then the one
//! baked into the initramfs.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::cmdline::{Cmdline, MANIFEST_KEY};

/// The manifest `berth-build` bakes into the initramfs.
pub const BAKED_PATH: &str = "/etc/berth/manifest.toml";

/// Disk labels searched for `/manifest.toml`, in order of preference.
pub const CONFIG_LABELS: [&str; 2] = ["berth-config", "berth-data"];

/// The label of the disk mounted at `/var/lib/berth`.
pub const DATA_LABEL: &str = "berth-data";

/// The manifest's path on a config disk.
pub const DISK_MANIFEST: &str = "/manifest.toml";

/// Where a manifest came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `berth.manifest=<path>` on the kernel command line.
    Cmdline(PathBuf),
    /// `/manifest.toml` on a labelled ext4 block device.
    Disk(PathBuf),
    /// The manifest baked into the initramfs.
    Baked,
}

impl Source {
    /// The name used in error messages (`<file>:<line>:<col>: ...`).
    pub fn origin(&self) -> String {
        match self {
            Source::Cmdline(p) => p.display().to_string(),
            Source::Disk(dev) => format!("{}:{DISK_MANIFEST}", dev.display()),
            Source::Baked => BAKED_PATH.to_string(),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cmdline(p) => write!(f, "cmdline:{}", p.display()),
            Source::Disk(dev) => write!(f, "disk:{}:{DISK_MANIFEST}", dev.display()),
            Source::Baked => f.write_str(BAKED_PATH),
        }
    }
}

/// A manifest text and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where it came from.
    pub source: Source,
    /// Its text.
    pub text: String,
}

/// The directories discovery looks in; tests point them at a tempdir.
#[derive(Debug, Clone)]
pub struct Roots {
    /// `/sys/class/block`.
    pub sys_block: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
    /// Prefix for the baked path and command-line paths (`/` at boot).
    pub root: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            sys_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
            root: PathBuf::from("/"),
        }
    }
}

/// An ext4 block device and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledDisk {
    /// Its path under `/dev`.
    pub device: PathBuf,
    /// Its ext4 volume label.
    pub label: String,
}

/// The volume label of an ext4 superblock (the 1024 bytes at offset 1024),
/// or `None` if it is not ext2/3/4.
pub fn ext4_label(superblock: &[u8]) -> Option<String> {
    let magic = superblock.get(0x38..0x3a)?;
    if magic != [0x53, 0xef] {
        return None;
    }
    let raw = superblock.get(0x78..0x88)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// Block device names worth probing: not loop, ram, zram or empty devices.
pub fn candidate_devices(sys_block: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            !["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .filter(|n| {
            std::fs::read_to_string(sys_block.join(n).join("size"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_some_and(|sectors| sectors > 0)
        })
        .collect();
    names.sort();
    names
}

fn read_superblock(device: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(device)?;
    f.seek(SeekFrom::Start(1024))?;
    let mut buf = vec![0u8; 1024];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// Every ext4 device under `roots` with its label.
pub fn labelled_disks(roots: &Roots) -> Vec<LabelledDisk> {
    candidate_devices(&roots.sys_block)
        .into_iter()
        .filter_map(|name| {
            let device = roots.dev.join(&name);
            let sb = read_superblock(&device).ok()?;
            let label = ext4_label(&sb)?;
            Some(LabelledDisk { device, label })
        })
        .collect()
}

/// The first disk with `label`.
pub fn disk_with_label<'a>(disks: &'a [LabelledDisk], label: &str) -> Option<&'a LabelledDisk> {
    disks.iter().find(|d| d.label == label)
}

fn read_disk_manifest(device: &Path) -> Result<Option<String>, String> {
    let file = File::open(device).map_err(|e| format!("cannot open {}: {e}", device.display()))?;
    let fs = ext4_view::Ext4::load(Box::new(file))
        .map_err(|e| format!("cannot read ext4 on {}: {e}", device.display()))?;
    match fs.exists(DISK_MANIFEST) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot look up {DISK_MANIFEST} on {}: {e}",
                device.display()
            ))
        }
    }
    fs.read_to_string(DISK_MANIFEST)
        .map(Some)
        .map_err(|e| format!("cannot read {DISK_MANIFEST} on {}: {e}", device.display()))
}

fn under_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Finds the manifest. Problems with one source are warnings and the search
/// goes on; `None` means no manifest anywhere.
pub fn discover(cmdline: &Cmdline, roots: &Roots, disks: &[LabelledDisk]) -> Option<Found> {
    if let Some(path) = cmdline.get(MANIFEST_KEY) {
        let path = PathBuf::from(path);
        match std::fs::read_to_string(under_root(&roots.root, &path)) {
            Ok(text) => {
                return Some(Found {
                    source: Source::Cmdline(path),
                    text,
                })
            }
            Err(e) => log::warn!(
                "{MANIFEST_KEY}={} cannot be read: {e}; looking elsewhere",
                path.display()
            ),
        }
    }
    for label in CONFIG_LABELS {
        for disk in disks.iter().filter(|d| d.label == label) {
            match read_disk_manifest(&disk.device) {
                Ok(Some(text)) => {
                    return Some(Found {
                        source: Source::Disk(disk.device.clone()),
                        text,
                    })
                }
                Ok(None) => log::debug!(
                    "{} (label {label}) has no {DISK_MANIFEST}",
                    disk.device.display()
                ),
                Err(e) => log::warn!("{e}"),
            }
        }
    }
    match std::fs::read_to_string(under_root(&roots.root, Path::new(BAKED_PATH))) {
        Ok(text) => Some(Found {
            source: Source::Baked,
            text,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            log::warn!("cannot read {BAKED_PATH}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(label: &[u8]) -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[0x38] = 0x53;
        sb[0x39] = 0xef;
        sb[0x78..0x78 + label.len()].copy_from_slice(label);
        sb
    }

    #[test]
    fn reads_ext4_label() {
        assert_eq!(
            ext4_label(&superblock(b"berth-config")),
            Some("berth-config".into())
        );
        assert_eq!(
            ext4_label(&superblock(b"exactly16bytes!!")),
            Some("exactly16bytes!!".into())
        );
        assert_eq!(ext4_label(&[0u8; 1024]), None);
        assert_eq!(ext4_label(&[0u8; 10]), None);
    }

    #[test]
    fn source_names_match_the_console_contract() {
        assert_eq!(
            Source::Cmdline("/m.toml".into()).to_string(),
            "cmdline:/m.toml"
        );
        assert_eq!(
            Source::Disk("/dev/vdb".into()).to_string(),
            "disk:/dev/vdb:/manifest.toml"
        );
        assert_eq!(Source::Baked.to_string(), "/etc/berth/manifest.toml");
        assert_eq!(
            Source::Disk("/dev/vdb".into()).origin(),
            "/dev/vdb:/manifest.toml"
        );
    }

    fn fake_roots(dir: &Path) -> std::io::Result<Roots> {
        let roots = Roots {
            sys_block: dir.join("sys/class/block"),
            dev: dir.join("dev"),
            root: dir.join("root"),
        };
        std::fs::create_dir_all(&roots.sys_block)?;
        std::fs::create_dir_all(&roots.dev)?;
        std::fs::create_dir_all(roots.root.join("etc/berth"))?;
        for (name, size) in [("vda", "100"), ("loop0", "100"), ("sr0", "0"), ("vdb", "8")] {
            std::fs::create_dir_all(roots.sys_block.join(name))?;
            std::fs::write(roots.sys_block.join(name).join("size"), format!("{size}\n"))?;
        }
        Ok(roots)
    }

    #[test]
    fn skips_noise_devices_and_finds_labels() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let roots = fake_roots(dir.path())?;
        assert_eq!(candidate_devices(&roots.sys_block), ["vda", "vdb"]);
        let mut img = vec![0u8; 1024];
        img.extend(superblock(b"berth-data"));
        std::fs::write(roots.dev.join("vdb"), img)?;
        std::fs::write(roots.dev.join("vda"), vec![0u8; 4096])?;
        assert_eq!(
            labelled_disks(&roots),
            [LabelledDisk {
                device: roots.dev.join("vdb"),
                label: "berth-data".into()
            }]
        );
        Ok(())
    }

    #[test]
    fn precedence_cmdline_then_baked() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let roots = fake_roots(dir.path())?;
        std::fs::write(roots.root.join("etc/berth/manifest.toml"), "baked")?;
        std::fs::write(roots.root.join("m.toml"), "from cmdline")?;

        let found = discover(&Cmdline::parse("berth.manifest=/m.toml"), &roots, &[]);
        assert_eq!(
            found.as_ref().map(|f| f.text.as_str()),
            Some("from cmdline")
        );
        assert_eq!(
            found.map(|f| f.source),
            Some(Source::Cmdline("/m.toml".into()))
        );

        let found = discover(&Cmdline::parse("berth.manifest=/missing.toml"), &roots, &[]);
        assert_eq!(found.map(|f| f.source), Some(Source::Baked));

        std::fs::remove_file(roots.root.join("etc/berth/manifest.toml"))?;
        assert_eq!(discover(&Cmdline::parse(""), &roots, &[]), None);
        Ok(())
    }
}
