//! Which kernel modules go into the image: the manifest's `[system] modules`
//! and the built-in coldplug profile, closed over their dependencies, and the
//! alias index init uses to match devices to them.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use init::modindex::{normalize, IndexError, ModuleIndex};

use crate::modinfo::{ModInfo, ModinfoError};

/// Modules every image carries when the kernel has them: what QEMU and
/// common hypervisors present, plus what the engine needs for containers.
/// A name the kernel lacks (or has built in) is skipped with a warning.
pub const COLDPLUG_PROFILE: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "virtio_console",
    "virtio_rng",
    "virtio_balloon",
    "button",
    "evdev",
    "ext4",
    "overlay",
    "veth",
    "bridge",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "nft_fib_ipv4",
    // CD-ROMs and config drives (NoCloud cidata, OpenStack config-2).
    "isofs",
    "sr_mod",
    "vfat",
    "nls_cp437",
    "nls_ascii", // Debian's vfat default iocharset
    // VirtualBox's defaults, and most PCs: Intel NICs, AHCI/IDE disks.
    "e1000",
    "e1000e",
    "ahci",
    "ata_piix",
    "sd_mod",
    // Clouds: NVMe disks (EC2 Nitro, GCE), ENA (EC2), gVNIC (GCE),
    // Hyper-V's network and storage (Azure), VMware's paravirtual devices.
    "nvme",
    "ena",
    "gve",
    "hv_vmbus",
    "hv_netvsc",
    "hv_storvsc",
    "hv_utils",
    "vmxnet3",
    "vmw_pvscsi",
    // Booting from a USB stick: host controllers and mass storage.
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "usb_storage",
    "uas",
];

/// The module set could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum ModsetError {
    /// The manifest asks for modules the kernel does not have.
    #[error("the kernel in {dir} has no module named {}", names.join(", "))]
    Missing {
        /// The modules directory.
        dir: PathBuf,
        /// The names asked for.
        names: Vec<String>,
    },
    /// A module needs another that is not in the tree.
    #[error("module {module} depends on {dependency}, which is not in {dir}")]
    MissingDependency {
        /// The module.
        module: String,
        /// What it needs.
        dependency: String,
        /// The modules directory.
        dir: PathBuf,
    },
    /// A module was built for another kernel.
    #[error("module {path} was built for kernel {found}, not {expected}")]
    WrongRelease {
        /// The `.ko`.
        path: PathBuf,
        /// Its vermagic release.
        found: String,
        /// The kernel's release.
        expected: String,
    },
    /// A `.ko` is not a module.
    #[error("cannot read {path}")]
    BadModule {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ModinfoError,
    },
    /// The dependencies loop.
    #[error("cannot order the modules")]
    Order(#[from] IndexError),
    /// A file or directory could not be read.
    #[error("cannot read {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// Where modules are looked up; the real tree is a [`ModuleTree`], tests
/// use a map.
pub trait Catalog {
    /// The module's path relative to the modules directory, if it exists.
    fn path(&self, name: &str) -> Option<&str>;
    /// What the module says about itself.
    fn info(&self, name: &str) -> Result<ModInfo, ModsetError>;
    /// The modules with an alias equal to `alias` (e.g. `iso9660`), sorted.
    fn by_alias(&self, alias: &str) -> Result<Vec<String>, ModsetError>;
    /// The kernel release the modules must be built for.
    fn release(&self) -> &str;
}

/// A `lib/modules/<release>` directory on disk.
pub struct ModuleTree {
    dir: PathBuf,
    release: String,
    /// Normalised name → path relative to `dir`.
    paths: BTreeMap<String, String>,
    /// Every module's aliases, read only when a name must be found by alias.
    aliases: OnceCell<Vec<(String, String)>>,
}

impl ModuleTree {
    /// Lists the `.ko` files under `dir` (symlinks such as `build` are not
    /// followed). Where two files share a name, `updates/` wins, as with
    /// modprobe.
    pub fn open(dir: &Path, release: &str) -> Result<Self, ModsetError> {
        let mut paths = BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let abs = dir.join(&rel);
            let entries = std::fs::read_dir(&abs).map_err(|e| ModsetError::Io(abs.clone(), e))?;
            let mut entries: Vec<_> = entries
                .collect::<Result<_, _>>()
                .map_err(|e| ModsetError::Io(abs.clone(), e))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let ty = entry
                    .file_type()
                    .map_err(|e| ModsetError::Io(entry.path(), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = rel.join(&name);
                if ty.is_dir() {
                    stack.push(child);
                } else if let (true, Some(stem)) = (ty.is_file(), name.strip_suffix(".ko")) {
                    let child = child.to_string_lossy().into_owned();
                    let key = normalize(stem);
                    let prefer = child.starts_with("updates/");
                    if prefer || !paths.contains_key(&key) {
                        paths.insert(key, child);
                    }
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            release: release.to_string(),
            paths,
            aliases: OnceCell::new(),
        })
    }

    fn read_info(&self, rel: &str) -> Result<ModInfo, ModsetError> {
        let path = self.dir.join(rel);
        ModInfo::from_file(&path).map_err(|source| ModsetError::BadModule { path, source })
    }
}

impl Catalog for ModuleTree {
    fn path(&self, name: &str) -> Option<&str> {
        self.paths.get(&normalize(name)).map(String::as_str)
    }

    fn info(&self, name: &str) -> Result<ModInfo, ModsetError> {
        let rel = self.path(name).ok_or_else(|| ModsetError::Missing {
            dir: self.dir.clone(),
            names: vec![name.to_string()],
        })?;
        self.read_info(rel)
    }

    fn by_alias(&self, alias: &str) -> Result<Vec<String>, ModsetError> {
        if self.aliases.get().is_none() {
            // Reads every module's .modinfo once; only when a name is not a
            // module's own name (e.g. ext4's softdep `crypto-crc32c`).
            let mut all = Vec::new();
            for (name, rel) in &self.paths {
                for a in self.read_info(rel)?.aliases {
                    all.push((a, name.clone()));
                }
            }
            let _ = self.aliases.set(all);
        }
        let mut found: Vec<String> = self
            .aliases
            .get()
            .into_iter()
            .flatten()
            .filter(|(a, _)| a == alias)
            .map(|(_, m)| m.clone())
            .collect();
        found.sort();
        found.dedup();
        Ok(found)
    }

    fn release(&self) -> &str {
        &self.release
    }
}

/// A module chosen for the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Path relative to the modules directory (and to `/lib/modules` in the
    /// image).
    pub path: String,
    /// Modules to load first: `depends=` plus resolvable `softdep=pre:`.
    pub depends: Vec<String>,
    /// Its device aliases.
    pub aliases: Vec<String>,
}

/// The closed set of modules for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The kernel release.
    pub release: String,
    /// By normalised name.
    pub modules: BTreeMap<String, Selected>,
    /// Profile names the kernel lacks, skipped.
    pub skipped: Vec<String>,
}

/// Chooses `required` (the manifest's modules: each must exist) and
/// `optional` (the coldplug profile: missing ones are skipped), plus
/// everything they depend on.
pub fn select(
    catalog: &dyn Catalog,
    dir: &Path,
    required: &[String],
    optional: &[&str],
) -> Result<Selection, ModsetError> {
    let resolve = |name: &str| -> Result<Vec<String>, ModsetError> {
        if catalog.path(name).is_some() {
            Ok(vec![normalize(name)])
        } else {
            catalog.by_alias(name)
        }
    };
    let mut queue: Vec<String> = Vec::new();
    let mut missing = Vec::new();
    for name in required {
        match resolve(name)? {
            found if found.is_empty() => missing.push(name.clone()),
            found => queue.extend(found),
        }
    }
    if !missing.is_empty() {
        return Err(ModsetError::Missing {
            dir: dir.to_path_buf(),
            names: missing,
        });
    }
    let mut skipped = Vec::new();
    for name in optional {
        match resolve(name)? {
            found if found.is_empty() => skipped.push(name.to_string()),
            found => queue.extend(found),
        }
    }

    let mut modules = BTreeMap::new();
    let mut seen: BTreeSet<String> = queue.iter().cloned().collect();
    while let Some(name) = queue.pop() {
        let info = catalog.info(&name)?;
        let path = catalog.path(&name).unwrap_or_default().to_string();
        if let Some(found) = info.release() {
            if found != catalog.release() {
                return Err(ModsetError::WrongRelease {
                    path: dir.join(&path),
                    found: found.to_string(),
                    expected: catalog.release().to_string(),
                });
            }
        }
        let mut depends = Vec::new();
        for dep in &info.depends {
            if catalog.path(dep).is_none() {
                return Err(ModsetError::MissingDependency {
                    module: name.clone(),
                    dependency: dep.clone(),
                    dir: dir.to_path_buf(),
                });
            }
            depends.push(normalize(dep));
        }
        // A soft dependency is best effort, as with modprobe: one the kernel
        // lacks (or has built in) is simply not loaded.
        for soft in &info.softdeps_pre {
            depends.extend(resolve(soft)?.into_iter().filter(|m| *m != name));
        }
        depends.sort();
        depends.dedup();
        for dep in &depends {
            if seen.insert(dep.clone()) {
                queue.push(dep.clone());
            }
        }
        modules.insert(
            name,
            Selected {
                path,
                depends,
                aliases: info.aliases,
            },
        );
    }
    let selection = Selection {
        release: catalog.release().to_string(),
        modules,
        skipped,
    };
    // Refuse an order init could not follow (a dependency loop).
    let index = selection.index();
    let names: Vec<&str> = selection.modules.keys().map(String::as_str).collect();
    index.load_order(&names)?;
    Ok(selection)
}

impl Selection {
    /// The index written to [`init::modindex::INDEX_PATH`]: the selected
    /// modules and their aliases only.
    pub fn index(&self) -> ModuleIndex {
        let mut index = ModuleIndex::new(&self.release);
        for (name, m) in &self.modules {
            index.add_module(name, &m.path, m.depends.clone());
            for alias in &m.aliases {
                index.add_alias(alias, name);
            }
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory catalog: name → (depends, aliases, softdeps).
    struct Fake(BTreeMap<String, (String, ModInfo)>);

    /// (name, depends, aliases, pre-softdeps)
    type Spec<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);

    fn fake(entries: &[Spec<'_>]) -> Fake {
        Fake(
            entries
                .iter()
                .map(|(name, deps, aliases, soft)| {
                    let info = ModInfo {
                        name: Some(name.to_string()),
                        depends: deps.iter().map(|s| s.to_string()).collect(),
                        aliases: aliases.iter().map(|s| s.to_string()).collect(),
                        softdeps_pre: soft.iter().map(|s| s.to_string()).collect(),
                        vermagic: Some("6.1.0-test SMP".into()),
                    };
                    (normalize(name), (format!("kernel/{name}.ko"), info))
                })
                .collect(),
        )
    }

    impl Catalog for Fake {
        fn path(&self, name: &str) -> Option<&str> {
            self.0.get(&normalize(name)).map(|(p, _)| p.as_str())
        }
        fn info(&self, name: &str) -> Result<ModInfo, ModsetError> {
            Ok(self.0[&normalize(name)].1.clone())
        }
        fn by_alias(&self, alias: &str) -> Result<Vec<String>, ModsetError> {
            Ok(self
                .0
                .iter()
                .filter(|(_, (_, i))| i.aliases.iter().any(|a| a == alias))
                .map(|(n, _)| n.clone())
                .collect())
        }
        fn release(&self) -> &str {
            "6.1.0-test"
        }
    }

    fn sample() -> Fake {
        fake(&[
            (
                "virtio_net",
                &["virtio", "net_failover"],
                &["virtio:d00000001v*"],
                &[],
            ),
            ("net_failover", &["failover"], &[], &[]),
            ("failover", &[], &[], &[]),
            ("virtio", &[], &[], &[]),
            (
                "ext4",
                &["jbd2"],
                &["fs-ext4"],
                &["crypto-crc32c", "nonexistent"],
            ),
            ("jbd2", &[], &[], &[]),
            ("crc32c_generic", &[], &["crypto-crc32c"], &[]),
            ("isofs", &[], &["iso9660"], &[]),
            ("unrelated", &[], &["pci:v*"], &[]),
        ])
    }

    #[test]
    fn closure_follows_depends_softdeps_and_aliases() {
        let cat = sample();
        let sel = select(
            &cat,
            Path::new("/m"),
            &["iso9660".into()],
            &["virtio-net", "ext4", "nope"],
        )
        .unwrap();
        let names: Vec<&str> = sel.modules.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "crc32c_generic",
                "ext4",
                "failover",
                "isofs",
                "jbd2",
                "net_failover",
                "virtio",
                "virtio_net"
            ]
        );
        assert_eq!(sel.modules["ext4"].depends, ["crc32c_generic", "jbd2"]);
        assert_eq!(sel.skipped, ["nope"]);
        let index = sel.index().render();
        assert!(
            index.contains("module virtio_net kernel/virtio_net.ko net_failover virtio\n"),
            "{index}"
        );
        assert!(
            index.contains("alias virtio:d00000001v* virtio_net\n"),
            "{index}"
        );
        assert!(!index.contains("unrelated"), "{index}");
    }

    #[test]
    fn a_missing_manifest_module_is_an_error_naming_it() {
        let err = select(
            &sample(),
            Path::new("/m"),
            &["ext4".into(), "zfs".into(), "btrfs".into()],
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel in /m has no module named zfs, btrfs"
        );
    }

    #[test]
    fn missing_dependencies_and_other_releases_are_errors() {
        let cat = fake(&[("a", &["gone"], &[], &[])]);
        let err = select(&cat, Path::new("/m"), &["a".into()], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "module a depends on gone, which is not in /m"
        );
        let mut cat = fake(&[("a", &[], &[], &[])]);
        cat.0.get_mut("a").unwrap().1.vermagic = Some("5.10.0 SMP".into());
        let err = select(&cat, Path::new("/m"), &["a".into()], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "module /m/kernel/a.ko was built for kernel 5.10.0, not 6.1.0-test"
        );
    }

    #[test]
    fn the_real_kernel_closure_of_virtio_net() {
        let dir = crate::testkernel::modules_dir();
        let release = dir.file_name().unwrap().to_string_lossy().into_owned();
        let tree = ModuleTree::open(&dir, &release).unwrap();
        let sel = select(&tree, &dir, &["virtio_net".into()], &[]).unwrap();
        for m in [
            "virtio_net",
            "net_failover",
            "failover",
            "virtio",
            "virtio_ring",
        ] {
            assert!(
                sel.modules.contains_key(m),
                "{m} missing from {:?}",
                sel.modules.keys()
            );
        }
        assert_eq!(
            sel.modules["virtio_net"].path,
            "kernel/drivers/net/virtio_net.ko"
        );
        // The whole profile resolves on Debian's kernel, ext4 with its crc32c.
        let sel = select(&tree, &dir, &[], COLDPLUG_PROFILE).unwrap();
        assert_eq!(sel.skipped, Vec::<String>::new());
        // Everything the container bridge loads is in the image.
        for m in netd::bridge::REQUIRED_MODULES {
            assert!(sel.modules.contains_key(*m), "{m} is not in the image");
        }
        assert!(sel.modules["ext4"]
            .depends
            .contains(&"crc32c_generic".to_string()));
    }
}
