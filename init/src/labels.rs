//! Filesystem labels read from the first bytes of a block device, the way
//! blkid finds them: the ext2/3/4 superblock, the ISO9660 primary volume
//! descriptor and the FAT boot sector. Pure functions over bytes.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Where the ext2/3/4 superblock starts.
const EXT4_SUPERBLOCK: usize = 1024;
/// Where the first ISO9660 volume descriptor starts (sector 16 of 2048 bytes).
const ISO9660_DESCRIPTOR: usize = 16 * 2048;
/// How many bytes [`probe`] looks at: up to the end of that descriptor.
pub const PROBE_LEN: usize = ISO9660_DESCRIPTOR + 2048;

/// The filesystems whose labels berth looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    /// ext2, ext3 or ext4 (config and data disks).
    Ext4,
    /// ISO9660 (CD-ROM images: NoCloud and config-drive seeds).
    Iso9660,
    /// FAT12, FAT16 or FAT32 (NoCloud and config-drive seeds on a disk).
    Vfat,
}

impl Filesystem {
    /// The type name mount(2) takes.
    pub fn mount_type(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Iso9660 => "iso9660",
            Filesystem::Vfat => "vfat",
        }
    }
}

impl fmt::Display for Filesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mount_type())
    }
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

/// The volume identifier of an ISO9660 primary volume descriptor (the 2048
/// bytes at offset 32768), or `None` if it is not one.
pub fn iso9660_label(descriptor: &[u8]) -> Option<String> {
    // Type 1 (primary), standard identifier "CD001", version 1.
    if descriptor.get(..7)? != b"\x01CD001\x01" {
        return None;
    }
    // Volume identifier: 32 characters, padded with spaces.
    Some(trim_padding(descriptor.get(40..72)?))
}

/// The volume label of a FAT boot sector (the first 512 bytes), or `None`
/// if it is not FAT. "NO NAME" (mkfs's placeholder) is an empty label.
pub fn fat_label(boot: &[u8]) -> Option<String> {
    if boot.get(510..512)? != [0x55, 0xaa] {
        return None;
    }
    let bytes_per_sector = u16::from_le_bytes([*boot.get(0x0b)?, *boot.get(0x0c)?]);
    if ![512, 1024, 2048, 4096].contains(&bytes_per_sector) {
        return None;
    }
    // FAT32 has no 16-bit FAT size; its extended BPB sits further on.
    let fat32 = boot.get(0x16..0x18)? == [0, 0];
    let (signature, label, fs_type, expect) = if fat32 {
        (0x42, 0x47..0x52, 0x52..0x57, &b"FAT32"[..])
    } else {
        (0x26, 0x2b..0x36, 0x36..0x39, &b"FAT"[..])
    };
    if *boot.get(signature)? != 0x29 || boot.get(fs_type)? != expect {
        return None;
    }
    let label = trim_padding(boot.get(label)?);
    Some(if label == "NO NAME" {
        String::new()
    } else {
        label
    })
}

fn trim_padding(raw: &[u8]) -> String {
    let end = raw
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The filesystem and label found in a device's first [`PROBE_LEN`] bytes
/// (fewer for a small device).
pub fn probe(head: &[u8]) -> Option<(Filesystem, String)> {
    if let Some(label) = head.get(ISO9660_DESCRIPTOR..).and_then(iso9660_label) {
        return Some((Filesystem::Iso9660, label));
    }
    if let Some(label) = head.get(EXT4_SUPERBLOCK..).and_then(ext4_label) {
        return Some((Filesystem::Ext4, label));
    }
    fat_label(head).map(|label| (Filesystem::Vfat, label))
}

/// Reads up to [`PROBE_LEN`] bytes from the start of `device`.
pub fn read_head(device: &Path) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(PROBE_LEN);
    File::open(device)?
        .take(PROBE_LEN as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// An ext4 superblock with `label`, for tests.
#[cfg(test)]
pub(crate) fn test_superblock(label: &[u8]) -> Vec<u8> {
    let mut sb = vec![0u8; 1024];
    sb[0x38] = 0x53;
    sb[0x39] = 0xef;
    sb[0x78..0x78 + label.len()].copy_from_slice(label);
    sb
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    use super::test_superblock as superblock;

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
    fn reads_synthesized_iso9660_and_fat_labels() {
        let mut pvd = vec![0u8; 2048];
        pvd[..7].copy_from_slice(b"\x01CD001\x01");
        pvd[40..72].copy_from_slice(b"config-2                        ");
        assert_eq!(iso9660_label(&pvd), Some("config-2".into()));
        // A supplementary (Joliet) descriptor is not the primary one.
        pvd[0] = 2;
        assert_eq!(iso9660_label(&pvd), None);

        let mut fat16 = vec![0u8; 512];
        fat16[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        fat16[0x16] = 8;
        fat16[0x26] = 0x29;
        fat16[0x2b..0x36].copy_from_slice(b"CIDATA     ");
        fat16[0x36..0x3e].copy_from_slice(b"FAT16   ");
        fat16[510..].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(fat_label(&fat16), Some("CIDATA".into()));
        fat16[0x2b..0x36].copy_from_slice(b"NO NAME    ");
        assert_eq!(fat_label(&fat16), Some(String::new()));
        // An NTFS or exFAT boot sector also ends in 55 AA.
        fat16[0x36..0x3e].copy_from_slice(b"NTFS    ");
        assert_eq!(fat_label(&fat16), None);
        assert_eq!(fat_label(&[0u8; 512]), None);
        assert_eq!(probe(&[0u8; 100]), None);
    }

    /// Runs a tool that makes a filesystem image; its absence is a failure
    /// (scripts/setup.sh installs it), not a skip.
    fn run(tool: &str, args: &[&str]) {
        let out = Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool} (install it: scripts/setup.sh): {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn probes_an_iso_made_by_xorriso() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let seed = dir.path().join("seed");
        std::fs::create_dir(&seed)?;
        std::fs::write(seed.join("user-data"), "[system]\n")?;
        let iso = dir.path().join("seed.iso");
        let (iso_s, seed_s) = (iso.to_string_lossy(), seed.to_string_lossy());
        run(
            "xorriso",
            &[
                "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o", &iso_s, &seed_s,
            ],
        );
        assert_eq!(
            probe(&read_head(&iso)?),
            Some((Filesystem::Iso9660, "cidata".into()))
        );
        Ok(())
    }

    #[test]
    fn probes_fat12_and_fat32_made_by_mkfs_vfat() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for (bits, kib, label) in [("12", "1440", "CIDATA"), ("32", "40000", "CONFIG-2")] {
            let img = dir.path().join(format!("fat{bits}.img"));
            let img_s = img.to_string_lossy();
            run("mkfs.vfat", &["-C", "-F", bits, "-n", label, &img_s, kib]);
            assert_eq!(
                probe(&read_head(&img)?),
                Some((Filesystem::Vfat, label.into())),
                "FAT{bits}"
            );
        }
        Ok(())
    }

    #[test]
    fn probes_ext4_made_by_mkfs_ext4() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let img = dir.path().join("ext4.img");
        let img_s = img.to_string_lossy();
        run("mkfs.ext4", &["-q", "-F", "-L", "berth-data", &img_s, "4M"]);
        assert_eq!(
            probe(&read_head(&img)?),
            Some((Filesystem::Ext4, "berth-data".into()))
        );
        Ok(())
    }
}
