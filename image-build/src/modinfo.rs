//! A kernel module's own description of itself: the NUL-separated `key=value`
//! strings of its `.modinfo` ELF section. Debian ships no `modules.dep` in the
//! package we use, so dependencies and device aliases come from here.

use crate::elf::{self, ElfError};

/// Why a `.ko` could not be described.
#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    /// The file is not a readable ELF object.
    #[error("not a kernel module")]
    Elf(#[from] ElfError),
    /// Reading the file failed.
    #[error("cannot read the module file")]
    Io(#[source] std::io::Error),
    /// The object has no `.modinfo` section.
    #[error("no .modinfo section (not a kernel module)")]
    NoModinfo,
}

/// What a module says about itself (only the keys the builder uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`, when present.
    pub name: Option<String>,
    /// `depends=`: modules whose symbols it uses, in file order.
    pub depends: Vec<String>,
    /// `alias=`: device and subsystem patterns it handles.
    pub aliases: Vec<String>,
    /// The `pre:` part of `softdep=`: modules (or aliases) modprobe loads
    /// first although no symbol requires them, e.g. ext4's `crypto-crc32c`.
    pub softdeps_pre: Vec<String>,
    /// `vermagic=`: the kernel release and build flags it was compiled for.
    pub vermagic: Option<String>,
}

impl ModInfo {
    /// Reads the `.modinfo` section of a `.ko` file, touching only the
    /// headers and that section.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ModinfoError> {
        let mut file = std::fs::File::open(path).map_err(ModinfoError::Io)?;
        match elf::read_section(&mut file, ".modinfo") {
            Ok(Some(section)) => Ok(Self::parse(&section)),
            Ok(None) => Err(ModinfoError::NoModinfo),
            Err(elf::ReadError::Elf(e)) => Err(e.into()),
            Err(elf::ReadError::Io(e)) => Err(ModinfoError::Io(e)),
        }
    }

    /// Parses the section contents: `key=value` strings separated by NULs.
    pub fn parse(section: &[u8]) -> Self {
        let mut info = Self::default();
        for entry in section.split(|&b| b == 0) {
            let entry = String::from_utf8_lossy(entry);
            let Some((key, value)) = entry.split_once('=') else {
                continue;
            };
            match key {
                "name" => info.name = Some(value.to_string()),
                "depends" => info.depends.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(str::to_string),
                ),
                "alias" => info.aliases.push(value.to_string()),
                "softdep" => info.softdeps_pre.extend(softdep_pre(value)),
                "vermagic" => info.vermagic = Some(value.to_string()),
                _ => {}
            }
        }
        info
    }

    /// The kernel release this module was built for (first word of vermagic).
    pub fn release(&self) -> Option<&str> {
        self.vermagic.as_deref()?.split_whitespace().next()
    }
}

/// The names after `pre:` in a softdep value such as `pre: a b post: c`.
fn softdep_pre(value: &str) -> Vec<String> {
    let mut pre = Vec::new();
    let mut in_pre = false;
    for word in value.split_whitespace() {
        match word {
            "pre:" => in_pre = true,
            "post:" => in_pre = false,
            name if in_pre => pre.push(name.to_string()),
            _ => {}
        }
    }
    pre
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_ignores_the_rest() {
        let info = ModInfo::parse(
            b"license=GPL\0alias=fs-ext4\0alias=ext3\0softdep=pre: crypto-crc32c post: x\0\
              depends=jbd2,mbcache,crc16\0retpoline=Y\0name=ext4\0\
              vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0\0",
        );
        assert_eq!(
            info,
            ModInfo {
                name: Some("ext4".into()),
                depends: vec!["jbd2".into(), "mbcache".into(), "crc16".into()],
                aliases: vec!["fs-ext4".into(), "ext3".into()],
                softdeps_pre: vec!["crypto-crc32c".into()],
                vermagic: Some("6.1.0-56-amd64 SMP preempt mod_unload modversions ".into()),
            }
        );
        assert_eq!(info.release(), Some("6.1.0-56-amd64"));
        assert_eq!(ModInfo::parse(b"depends=\0").depends, Vec::<String>::new());
    }

    #[test]
    fn reads_a_real_module() {
        let root = crate::testkernel::modules_dir();
        let info = ModInfo::from_file(&root.join("kernel/drivers/net/virtio_net.ko")).unwrap();
        assert_eq!(info.name.as_deref(), Some("virtio_net"));
        let mut depends = info.depends.clone();
        depends.sort();
        assert!(depends.contains(&"net_failover".to_string()), "{depends:?}");
        assert!(depends.contains(&"virtio".to_string()), "{depends:?}");
        assert!(
            info.aliases.contains(&"virtio:d00000001v*".to_string()),
            "{:?}",
            info.aliases
        );
        assert_eq!(info.release(), root.file_name().and_then(|n| n.to_str()));
    }

    #[test]
    fn an_executable_is_not_a_module() {
        let busybox = std::path::Path::new("/bin/busybox");
        assert!(matches!(
            ModInfo::from_file(busybox),
            Err(ModinfoError::NoModinfo)
        ));
    }
}
