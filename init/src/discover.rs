//! Finding the boot manifest, in order: the kernel command line
//! (`berth.manifest=`); an ext4 disk labelled `berth-config` or `berth-data`
//! holding `/manifest.toml` (read with `ext4-view`, without mounting); a
//! cloud seed disk (NoCloud `cidata`, config drive `config-2`); the manifest
//! baked into the initramfs. The instance metadata service comes last, once
//! the network is up ([`from_metadata_service`]).

use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmdline::{Cmdline, MANIFEST_KEY};
use crate::imds::{self, Flavour, Lookup};
use crate::labels::{self, Filesystem};
use crate::logger::{chain, MILESTONE};
use crate::seed::{SeedKind, SeedReader};
use crate::userdata::{self, UserData};

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
    /// The user-data file on a cloud seed disk.
    Seed {
        /// NoCloud or config drive.
        kind: SeedKind,
        /// The block device.
        device: PathBuf,
    },
    /// The manifest baked into the initramfs.
    Baked,
    /// User-data from the instance metadata service.
    Imds(Flavour),
}

impl Source {
    /// The name used in error messages (`<file>:<line>:<col>: ...`).
    pub fn origin(&self) -> String {
        match self {
            Source::Cmdline(p) => p.display().to_string(),
            Source::Disk(dev) => format!("{}:{DISK_MANIFEST}", dev.display()),
            Source::Seed { kind, device } => {
                format!("{}:{}", device.display(), kind.user_data_path())
            }
            Source::Baked => BAKED_PATH.to_string(),
            Source::Imds(flavour) => format!("imds:{}", flavour.url(imds::ADDRESS)),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cmdline(p) => write!(f, "cmdline:{}", p.display()),
            Source::Disk(dev) => write!(f, "disk:{}:{DISK_MANIFEST}", dev.display()),
            Source::Seed { kind, device } => {
                write!(f, "{kind}:{}:{}", device.display(), kind.user_data_path())
            }
            Source::Baked => f.write_str(BAKED_PATH),
            Source::Imds(flavour) => write!(f, "imds:{flavour}"),
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

/// A block device with a filesystem berth looks at, and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledDisk {
    /// Its path under `/dev`.
    pub device: PathBuf,
    /// Its filesystem.
    pub filesystem: Filesystem,
    /// Its volume label.
    pub label: String,
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

/// Every device under `roots` with an ext4, ISO9660 or FAT filesystem,
/// with its label.
pub fn labelled_disks(roots: &Roots) -> Vec<LabelledDisk> {
    candidate_devices(&roots.sys_block)
        .into_iter()
        .filter_map(|name| {
            let device = roots.dev.join(&name);
            let head = labels::read_head(&device).ok()?;
            let (filesystem, label) = labels::probe(&head)?;
            Some(LabelledDisk {
                device,
                filesystem,
                label,
            })
        })
        .collect()
}

/// The first ext4 disk with `label`.
pub fn disk_with_label<'a>(disks: &'a [LabelledDisk], label: &str) -> Option<&'a LabelledDisk> {
    disks
        .iter()
        .find(|d| d.filesystem == Filesystem::Ext4 && d.label == label)
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

/// Finds the manifest on the machine itself (everything but the metadata
/// service). Problems with one source are warnings and the search goes on;
/// `None` means no manifest anywhere.
pub fn discover(
    cmdline: &Cmdline,
    roots: &Roots,
    disks: &[LabelledDisk],
    seeds: &mut dyn SeedReader,
) -> Option<Found> {
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
        for disk in disks
            .iter()
            .filter(|d| d.filesystem == Filesystem::Ext4 && d.label == label)
        {
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
    if let Some(found) = from_seed_disks(disks, seeds) {
        return Some(found);
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

/// The first seed disk whose user-data is a manifest. User-data that is
/// something else (cloud-init's) is named on the console and skipped.
fn from_seed_disks(disks: &[LabelledDisk], seeds: &mut dyn SeedReader) -> Option<Found> {
    for kind in SeedKind::ALL {
        for disk in disks
            .iter()
            .filter(|d| kind.matches(d.filesystem, &d.label))
        {
            let path = kind.user_data_path();
            let source = Source::Seed {
                kind,
                device: disk.device.clone(),
            };
            match seeds.read(&disk.device, disk.filesystem, path) {
                Ok(Some(bytes)) => {
                    if let Some(found) = user_data_manifest(source, &bytes) {
                        return Some(found);
                    }
                }
                Ok(None) => log::info!(
                    "{} (label {}) has no {path}",
                    disk.device.display(),
                    disk.label
                ),
                Err(e) => log::warn!("{}", chain(&e)),
            }
        }
    }
    None
}

/// The manifest in user-data from `source`, or `None` (said on the console)
/// when the user-data is not one.
fn user_data_manifest(source: Source, bytes: &[u8]) -> Option<Found> {
    let data = userdata::classify(bytes);
    if let Some(line) = userdata::ignored_line(&source, &data) {
        log::warn!(target: MILESTONE, "{line}");
    }
    match data {
        UserData::Manifest(text) => Some(Found { source, text }),
        UserData::Empty | UserData::Other(_) => None,
    }
}

/// Asks the instance metadata service at `addr` for user-data (within
/// `budget`) and returns it if it is a manifest.
pub fn from_metadata_service(addr: SocketAddr, budget: Duration) -> Option<Found> {
    match imds::fetch_user_data(addr, budget) {
        Lookup::Found { flavour, body } => user_data_manifest(Source::Imds(flavour), &body),
        Lookup::NoUserData(misses) => {
            log::info!(
                "the instance metadata service at {addr} has no user-data ({})",
                misses.join("; ")
            );
            None
        }
        Lookup::Unreachable(e) => {
            log::info!("no instance metadata service: {}", chain(&e));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{read_capped, SeedError};

    use crate::labels::test_superblock as superblock;

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
        let nocloud = Source::Seed {
            kind: SeedKind::NoCloud,
            device: "/dev/sr0".into(),
        };
        assert_eq!(nocloud.to_string(), "nocloud:/dev/sr0:/user-data");
        assert_eq!(nocloud.origin(), "/dev/sr0:/user-data");
        let drive = Source::Seed {
            kind: SeedKind::ConfigDrive,
            device: "/dev/vdb".into(),
        };
        assert_eq!(
            drive.to_string(),
            "config-drive:/dev/vdb:/openstack/latest/user_data"
        );
        assert_eq!(Source::Imds(Flavour::Ec2).to_string(), "imds:ec2");
        assert_eq!(
            Source::Imds(Flavour::Ec2).origin(),
            "imds:http://169.254.169.254/latest/user-data"
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
        // A seed ISO: only the primary volume descriptor matters.
        let mut iso = vec![0u8; 32768];
        iso.extend(b"\x01CD001\x01");
        iso.resize(32768 + 40, 0);
        iso.extend(format!("{:<32}", "cidata").as_bytes());
        std::fs::write(roots.dev.join("vda"), iso)?;
        assert_eq!(
            labelled_disks(&roots),
            [
                LabelledDisk {
                    device: roots.dev.join("vda"),
                    filesystem: Filesystem::Iso9660,
                    label: "cidata".into()
                },
                LabelledDisk {
                    device: roots.dev.join("vdb"),
                    filesystem: Filesystem::Ext4,
                    label: "berth-data".into()
                }
            ]
        );
        Ok(())
    }

    /// Seed disks as directories (`<root>/<device file name>/...`) standing
    /// in for the mounted filesystems; records what was read.
    struct DirSeeds {
        root: PathBuf,
        reads: Vec<String>,
    }

    impl SeedReader for DirSeeds {
        fn read(
            &mut self,
            device: &Path,
            filesystem: Filesystem,
            path: &str,
        ) -> Result<Option<Vec<u8>>, SeedError> {
            self.reads
                .push(format!("{} {filesystem} {path}", device.display()));
            let name = device.file_name().unwrap_or_default();
            read_capped(device, &self.root.join(name), path)
        }
    }

    fn disk(device: &str, filesystem: Filesystem, label: &str) -> LabelledDisk {
        LabelledDisk {
            device: device.into(),
            filesystem,
            label: label.into(),
        }
    }

    #[test]
    fn precedence_cmdline_then_seed_then_baked() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let roots = fake_roots(dir.path())?;
        std::fs::write(roots.root.join("etc/berth/manifest.toml"), "baked")?;
        std::fs::write(roots.root.join("m.toml"), "from cmdline")?;
        let seed_root = dir.path().join("seeds");
        std::fs::create_dir_all(seed_root.join("sr0"))?;
        std::fs::write(seed_root.join("sr0/user-data"), "[system]\n")?;
        let mut seeds = DirSeeds {
            root: seed_root.clone(),
            reads: Vec::new(),
        };
        let disks = [
            disk("/dev/vdc", Filesystem::Ext4, "cidata"),
            disk("/dev/sr0", Filesystem::Iso9660, "cidata"),
        ];

        let cmdline = Cmdline::parse("berth.manifest=/m.toml");
        let found = discover(&cmdline, &roots, &disks, &mut seeds);
        assert_eq!(
            found.as_ref().map(|f| f.text.as_str()),
            Some("from cmdline")
        );
        assert_eq!(
            found.map(|f| f.source),
            Some(Source::Cmdline("/m.toml".into()))
        );
        assert!(seeds.reads.is_empty(), "{:?}", seeds.reads);

        // The seed disk wins over the baked manifest; an ext4 disk labelled
        // cidata is no seed.
        let missing = Cmdline::parse("berth.manifest=/missing.toml");
        let found = discover(&missing, &roots, &disks, &mut seeds);
        assert_eq!(
            found,
            Some(Found {
                source: Source::Seed {
                    kind: SeedKind::NoCloud,
                    device: "/dev/sr0".into()
                },
                text: "[system]\n".into()
            })
        );
        assert_eq!(seeds.reads, ["/dev/sr0 iso9660 /user-data"]);

        // cloud-init's user-data is skipped: the baked manifest is next.
        std::fs::write(seed_root.join("sr0/user-data"), "#cloud-config\n")?;
        let found = discover(&missing, &roots, &disks, &mut seeds);
        assert_eq!(found.map(|f| f.source), Some(Source::Baked));

        std::fs::remove_file(roots.root.join("etc/berth/manifest.toml"))?;
        assert_eq!(
            discover(&Cmdline::parse(""), &roots, &disks, &mut seeds),
            None
        );
        Ok(())
    }

    #[test]
    fn config_drive_is_read_at_its_openstack_path() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let roots = fake_roots(dir.path())?;
        let seed_root = dir.path().join("seeds");
        std::fs::create_dir_all(seed_root.join("vdb/openstack/latest"))?;
        std::fs::write(
            seed_root.join("vdb/openstack/latest/user_data"),
            "[system]\nhostname = \"drive\"\n",
        )?;
        let mut seeds = DirSeeds {
            root: seed_root,
            reads: Vec::new(),
        };
        let disks = [disk("/dev/vdb", Filesystem::Vfat, "CONFIG-2")];
        let found = discover(&Cmdline::default(), &roots, &disks, &mut seeds);
        assert_eq!(
            found.map(|f| f.source.to_string()),
            Some("config-drive:/dev/vdb:/openstack/latest/user_data".into())
        );
        assert_eq!(seeds.reads, ["/dev/vdb vfat /openstack/latest/user_data"]);
        Ok(())
    }

    #[test]
    fn metadata_user_data_must_be_a_manifest() -> Result<(), Box<dyn std::error::Error>> {
        use std::io::{Read, Write};
        // An OpenStack-style service: one answer per connection.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let body = if i < 3 {
                    "[system]\n"
                } else {
                    "#cloud-config\n"
                };
                let status = if buf.starts_with(b"GET /openstack/") {
                    200
                } else {
                    404
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let budget = Duration::from_secs(3);
        let found = from_metadata_service(addr, budget);
        assert_eq!(
            found.map(|f| f.source),
            Some(Source::Imds(Flavour::OpenStack))
        );
        assert_eq!(from_metadata_service(addr, budget), None);
        Ok(())
    }
}
