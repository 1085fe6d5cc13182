//! Loading kernel modules: the manifest's list, then coldplug (every device's
//! `modalias` matched against the module index), each module after its
//! dependencies.
//!
//! Loading a driver creates devices that want more drivers (`virtio_pci` →
//! virtio devices → `virtio_net`; `button` → an input device → `evdev`), so
//! coldplug repeats until a pass finds nothing new and devices have had a
//! short, bounded time to settle.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

use crate::modindex::{normalize, ModuleIndex};

/// Where device modalias files are found.
pub const DEVICES_ROOT: &str = "/sys/devices";

/// Where sysfs is mounted.
pub const SYS_ROOT: &str = "/sys";

/// How deep the sysfs walk goes; sysfs device trees are far shallower.
const MAX_DEPTH: usize = 40;

/// Upper bound on coldplug passes, whatever the devices do.
const MAX_PASSES: usize = 50;

/// The kernel side of loading: a seam so the loop is tested without root.
pub trait Kmod {
    /// Loads the module file at `path`. `EEXIST` means already loaded.
    fn load(&mut self, path: &Path) -> Result<(), Errno>;
    /// Whether a module of that name is built into the kernel or loaded.
    fn present(&self, name: &str) -> bool;
}

/// The real kernel: `finit_module(2)`, `/sys/module`.
#[derive(Debug, Default)]
pub struct KernelKmod;

impl Kmod for KernelKmod {
    fn load(&mut self, path: &Path) -> Result<(), Errno> {
        let file = File::open(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        finit_module(&file, c"", ModuleInitFlags::empty())
    }

    fn present(&self, name: &str) -> bool {
        Path::new("/sys/module").join(normalize(name)).exists()
    }
}

/// Every `modalias` value under `root` (normally `/sys/devices`). Symlinks are
/// not followed, so the walk sees each device once.
pub fn scan_modaliases(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    walk(root, 0, &mut found);
    found
}

/// Every `modalias` of the devices listed under `sys/bus/*/devices/*` and
/// `sys/class/*/*`. Same answer as walking `/sys/devices` for devices that
/// want drivers (they sit on a bus or in a class), at a fraction of the cost:
/// under TCG the full walk takes hundreds of milliseconds per pass.
pub fn scan_sys_modaliases(sys: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut lists = Vec::new();
    if let Ok(buses) = std::fs::read_dir(sys.join("bus")) {
        lists.extend(buses.flatten().map(|b| b.path().join("devices")));
    }
    if let Ok(classes) = std::fs::read_dir(sys.join("class")) {
        lists.extend(classes.flatten().map(|c| c.path()));
    }
    for list in lists {
        let Ok(devices) = std::fs::read_dir(&list) else {
            continue;
        };
        for device in devices.flatten() {
            if let Ok(text) = std::fs::read_to_string(device.path().join("modalias")) {
                let alias = text.trim();
                if !alias.is_empty() {
                    found.insert(alias.to_string());
                }
            }
        }
    }
    found
}

fn walk(dir: &Path, depth: usize, found: &mut BTreeSet<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            walk(&entry.path(), depth + 1, found);
        } else if ft.is_file() && entry.file_name() == "modalias" {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                let alias = text.trim();
                if !alias.is_empty() {
                    found.insert(alias.to_string());
                }
            }
        }
    }
}

/// What one round of loading did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Modules newly loaded (or found already loaded), in load order.
    pub loaded: Vec<String>,
    /// Coldplug passes over the device tree.
    pub passes: usize,
    /// Distinct modaliases seen.
    pub devices: usize,
}

/// Loads modules from an index, remembering what it tried.
pub struct Loader<'a, K: Kmod> {
    index: &'a ModuleIndex,
    modules_dir: PathBuf,
    kmod: K,
    attempted: BTreeSet<String>,
    seen_aliases: BTreeSet<String>,
}

impl<'a, K: Kmod> Loader<'a, K> {
    /// A loader for `index`, whose module paths are relative to `modules_dir`.
    pub fn new(index: &'a ModuleIndex, modules_dir: &Path, kmod: K) -> Self {
        Self {
            index,
            modules_dir: modules_dir.to_path_buf(),
            kmod,
            attempted: BTreeSet::new(),
            seen_aliases: BTreeSet::new(),
        }
    }

    /// Loads `names` and their dependencies. Unknown or failing modules are
    /// warnings. Returns the modules loaded by this call.
    pub fn load_names(&mut self, names: &[&str]) -> Vec<String> {
        let mut loaded = Vec::new();
        for name in names {
            let order = match self.index.load_order(&[name]) {
                Ok(order) => order,
                Err(e) => {
                    if !self.kmod.present(name) {
                        log::warn!("cannot load module {name:?}: {e}");
                    }
                    continue;
                }
            };
            for module in order {
                if !self.attempted.insert(module.name.clone()) {
                    continue;
                }
                let path = self.modules_dir.join(&module.path);
                let start = Instant::now();
                match self.kmod.load(&path) {
                    Ok(()) | Err(Errno::EEXIST) => {
                        log::debug!(
                            "loaded module {} in {}ms",
                            module.name,
                            start.elapsed().as_millis()
                        );
                        loaded.push(module.name.clone());
                    }
                    Err(e) => log::warn!(
                        "cannot load module {} from {}: {e}",
                        module.name,
                        path.display()
                    ),
                }
            }
        }
        loaded
    }

    /// The modules a `modprobe` request names: a module, or an alias such as
    /// `crypto-crc32c` or `fs-ext4` that the kernel asks for on its own.
    pub fn resolve(&self, request: &str) -> Vec<String> {
        if let Some(m) = self.index.module(request) {
            return vec![m.name.clone()];
        }
        self.index
            .modules_for_alias(request)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Loads what a `modprobe` request names; true if something is (now) loaded.
    pub fn modprobe(&mut self, request: &str) -> bool {
        let names = self.resolve(request);
        if names.is_empty() {
            return self.kmod.present(request);
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        !self.load_names(&refs).is_empty() || names.iter().any(|n| self.kmod.present(n))
    }

    /// One coldplug pass: loads the modules for modaliases not seen before.
    /// `scan` lists the devices' modaliases ([`scan_sys_modaliases`] at boot).
    pub fn coldplug_pass(&mut self, scan: &dyn Fn() -> BTreeSet<String>) -> Vec<String> {
        let start = Instant::now();
        let aliases = scan();
        log::debug!(
            "scanned {} modaliases in {}ms",
            aliases.len(),
            start.elapsed().as_millis()
        );
        let mut wanted: Vec<String> = Vec::new();
        for alias in aliases {
            if self.seen_aliases.contains(&alias) {
                continue;
            }
            for m in self.index.modules_for_alias(&alias) {
                if !self.attempted.contains(m) && !wanted.iter().any(|w| w == m) {
                    wanted.push(m.to_string());
                }
            }
            self.seen_aliases.insert(alias);
        }
        let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
        self.load_names(&names)
    }

    /// Coldplug until a pass loads nothing and no new device has shown up for
    /// `settle` after the last load (bounded by [`MAX_PASSES`]).
    pub fn coldplug(
        &mut self,
        scan: &dyn Fn() -> BTreeSet<String>,
        settle: Duration,
    ) -> LoadReport {
        let mut report = LoadReport::default();
        let mut last_load: Option<Instant> = None;
        while report.passes < MAX_PASSES {
            report.passes += 1;
            let loaded = self.coldplug_pass(scan);
            if !loaded.is_empty() {
                report.loaded.extend(loaded);
                last_load = Some(Instant::now());
                continue;
            }
            match last_load {
                Some(t) if t.elapsed() < settle => std::thread::sleep(Duration::from_millis(10)),
                _ => break,
            }
        }
        report.devices = self.seen_aliases.len();
        report
    }
}

/// Reads the module index; a missing index just means no modules to load.
pub fn read_index(path: &Path) -> Option<ModuleIndex> {
    match std::fs::read_to_string(path) {
        Ok(text) => match ModuleIndex::parse(&text) {
            Ok(index) => Some(index),
            Err(e) => {
                log::warn!("cannot read module index {}: {e}", path.display());
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::info!("no module index at {}: loading no modules", path.display());
            None
        }
        Err(e) => {
            log::warn!("cannot read module index {}: {e}", path.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A fake kernel: loading a module may create new device directories.
    struct FakeKmod {
        loaded: Vec<PathBuf>,
        creates: BTreeMap<String, Vec<(PathBuf, String)>>,
        fail: BTreeSet<String>,
    }

    impl Kmod for FakeKmod {
        fn load(&mut self, path: &Path) -> Result<(), Errno> {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_string();
            if self.fail.contains(&name) {
                return Err(Errno::ENOENT);
            }
            self.loaded.push(path.to_path_buf());
            for (dir, alias) in self.creates.remove(&name).unwrap_or_default() {
                std::fs::create_dir_all(&dir).map_err(|_| Errno::EIO)?;
                std::fs::write(dir.join("modalias"), format!("{alias}\n"))
                    .map_err(|_| Errno::EIO)?;
            }
            Ok(())
        }
        fn present(&self, name: &str) -> bool {
            name == "builtin_thing"
        }
    }

    fn index() -> ModuleIndex {
        let mut i = ModuleIndex::new("6.1.0-test");
        i.add_module("virtio_pci", "kernel/virtio_pci.ko", vec!["virtio".into()]);
        i.add_module("virtio", "kernel/virtio.ko", vec![]);
        i.add_module("virtio_net", "kernel/virtio_net.ko", vec!["virtio".into()]);
        i.add_module("button", "kernel/button.ko", vec![]);
        i.add_module("evdev", "kernel/evdev.ko", vec![]);
        i.add_module("broken", "kernel/broken.ko", vec![]);
        i.add_alias("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci");
        i.add_alias("virtio:d00000001v*", "virtio_net");
        i.add_alias("acpi:LNXPWRBN:*", "button");
        i.add_alias("input:b*v*p*e*-e*k*r*a*m*l*s*f*w*", "evdev");
        i.add_alias("platform:broken", "broken");
        i
    }

    #[test]
    fn scans_fake_sysfs_without_following_symlinks() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let dev = dir.path().join("pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(&dev)?;
        std::fs::write(
            dev.join("modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        )?;
        std::fs::create_dir_all(dir.path().join("platform/serial8250"))?;
        std::fs::write(
            dir.path().join("platform/serial8250/modalias"),
            "platform:serial8250\n",
        )?;
        std::fs::write(dir.path().join("platform/empty_modalias"), "")?;
        std::os::unix::fs::symlink(dir.path(), dev.join("loop"))?;
        let found = scan_modaliases(dir.path());
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                "platform:serial8250"
            ]
        );
        Ok(())
    }

    #[test]
    fn bus_and_class_scan_follows_device_links() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let sys = dir.path();
        let pci = sys.join("devices/pci0000:00/0000:00:03.0");
        let input = sys.join("devices/LNXSYSTM:00/LNXPWRBN:00/input/input0");
        for (dev, alias) in [
            (&pci, "pci:v00001AF4d00001000"),
            (&input, "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw"),
        ] {
            std::fs::create_dir_all(dev)?;
            std::fs::write(dev.join("modalias"), format!("{alias}\n"))?;
        }
        std::fs::create_dir_all(sys.join("bus/pci/devices"))?;
        std::fs::create_dir_all(sys.join("class/input"))?;
        std::fs::create_dir_all(sys.join("class/empty"))?;
        std::os::unix::fs::symlink(&pci, sys.join("bus/pci/devices/0000:00:03.0"))?;
        std::os::unix::fs::symlink(&input, sys.join("class/input/input0"))?;
        assert_eq!(
            scan_sys_modaliases(sys),
            scan_modaliases(&sys.join("devices"))
        );
        assert_eq!(scan_sys_modaliases(sys).len(), 2);
        Ok(())
    }

    #[test]
    fn coldplug_repeats_until_new_devices_stop() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("devices");
        let pci = root.join("pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(&pci)?;
        std::fs::write(
            pci.join("modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
        )?;
        let acpi = root.join("LNXSYSTM:00/LNXPWRBN:00");
        std::fs::create_dir_all(&acpi)?;
        std::fs::write(acpi.join("modalias"), "acpi:LNXPWRBN:")?;
        std::fs::create_dir_all(root.join("platform/broken"))?;
        std::fs::write(root.join("platform/broken/modalias"), "platform:broken")?;

        let mut creates = BTreeMap::new();
        creates.insert(
            "virtio_pci".to_string(),
            vec![(pci.join("virtio0"), "virtio:d00000001v00001AF4".to_string())],
        );
        creates.insert(
            "button".to_string(),
            vec![(
                acpi.join("input/input0"),
                "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw".to_string(),
            )],
        );
        let kmod = FakeKmod {
            loaded: Vec::new(),
            creates,
            fail: ["broken".to_string()].into(),
        };
        let index = index();
        let mut loader = Loader::new(&index, Path::new("/lib/modules"), kmod);
        let scan = || scan_modaliases(&root);
        let report = loader.coldplug(&scan, Duration::from_millis(20));
        let mut loaded = report.loaded.clone();
        loaded.sort();
        assert_eq!(
            loaded,
            ["button", "evdev", "virtio", "virtio_net", "virtio_pci"]
        );
        // Dependencies first.
        let pos = |n: &str| report.loaded.iter().position(|m| m == n);
        assert!(pos("virtio") < pos("virtio_pci"));
        assert!(report.passes >= 2);
        assert_eq!(report.devices, 5);
        assert_eq!(
            loader.kmod.loaded.first().map(PathBuf::as_path),
            Some(Path::new("/lib/modules/kernel/button.ko"))
        );
        // A second coldplug loads nothing again.
        assert!(loader.coldplug(&scan, Duration::ZERO).loaded.is_empty());
        Ok(())
    }

    #[test]
    fn named_modules_load_with_dependencies_once() {
        let kmod = FakeKmod {
            loaded: Vec::new(),
            creates: BTreeMap::new(),
            fail: BTreeSet::new(),
        };
        let index = index();
        let mut loader = Loader::new(&index, Path::new("/m"), kmod);
        let loaded = loader.load_names(&["virtio-net", "nope", "builtin_thing", "virtio_pci"]);
        assert_eq!(loaded, ["virtio", "virtio_net", "virtio_pci"]);
        assert!(loader.load_names(&["virtio_net"]).is_empty());
    }

    #[test]
    fn modprobe_requests_resolve_names_and_aliases() {
        let kmod = FakeKmod {
            loaded: Vec::new(),
            creates: BTreeMap::new(),
            fail: BTreeSet::new(),
        };
        let mut index = index();
        index.add_module("crc32c_generic", "kernel/crc32c_generic.ko", vec![]);
        index.add_alias("crypto-crc32c", "crc32c_generic");
        let mut loader = Loader::new(&index, Path::new("/m"), kmod);
        assert_eq!(loader.resolve("crypto-crc32c"), ["crc32c_generic"]);
        assert_eq!(loader.resolve("virtio-net"), ["virtio_net"]);
        assert!(loader.resolve("fs-nothing").is_empty());
        assert!(loader.modprobe("crypto-crc32c"));
        assert!(loader.modprobe("builtin_thing"));
        assert!(!loader.modprobe("fs-nothing"));
    }
}
