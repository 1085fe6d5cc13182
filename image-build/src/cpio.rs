//! A writer for the "newc" cpio format, the one the kernel unpacks as an
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex
//! fields), the NUL-terminated name padded so the data starts on a 4-byte
//! boundary, then the data padded the same way. The archive ends with an
//! entry named `TRAILER!!!`.
//!
//! Everything that would make two builds differ is fixed here: uid and gid are
//! 0, device numbers are 0, inodes count up from 1 in the order entries are
//! written, and every entry gets the one mtime the caller gives.

use std::io::{self, Write};

/// What the writer refused to write.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// An entry's name is empty, absolute, or contains a NUL.
    #[error("cpio entry name {0:?} must be a non-empty relative path without NUL bytes")]
    BadName(String),
    /// newc stores sizes in 32 bits.
    #[error("cpio entry {name:?} is {size} bytes; newc archives hold at most 4 GiB per file")]
    TooLarge {
        /// The entry.
        name: String,
        /// Its size in bytes.
        size: usize,
    },
    /// Writing to the underlying stream failed.
    #[error("cannot write the cpio archive")]
    Io(#[from] io::Error),
}

/// One archive member. Permission bits are given by the caller; the file type
/// bits come from the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A directory.
    Dir {
        /// Permission bits (e.g. `0o755`).
        perm: u32,
    },
    /// A regular file and its contents.
    File {
        /// Permission bits.
        perm: u32,
        /// The contents.
        data: &'a [u8],
    },
    /// A symbolic link; the target is stored as the data.
    Symlink {
        /// Where the link points.
        target: &'a str,
    },
    /// A character device node.
    CharDev {
        /// Permission bits.
        perm: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const TRAILER: &str = "TRAILER!!!";

/// Writes newc entries to `W` in the order they are appended.
pub struct Writer<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    offset: u64,
}

impl<W: Write> Writer<W> {
    /// A writer stamping every entry with `mtime` (seconds since the epoch).
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            mtime,
            next_ino: 1,
            offset: 0,
        }
    }

    /// Appends one entry. `name` is relative (`init`, `lib/modules/x.ko`);
    /// parents must have been appended before it for the kernel to create it.
    pub fn append(&mut self, name: &str, entry: Entry<'_>) -> Result<(), CpioError> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') || name == TRAILER {
            return Err(CpioError::BadName(name.to_string()));
        }
        let (mode, nlink, data, rdev) = match entry {
            Entry::Dir { perm } => (S_IFDIR | (perm & 0o7777), 2, &[][..], (0, 0)),
            Entry::File { perm, data } => (S_IFREG | (perm & 0o7777), 1, data, (0, 0)),
            Entry::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
            Entry::CharDev { perm, major, minor } => {
                (S_IFCHR | (perm & 0o7777), 1, &[][..], (major, minor))
            }
        };
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            name: name.to_string(),
            size: data.len(),
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.record(ino, mode, nlink, self.mtime, rdev, name, data, size)
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.record(0, 0, 1, 0, (0, 0), TRAILER, &[], 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        mtime: u32,
        (rdev_major, rdev_minor): (u32, u32),
        name: &str,
        data: &[u8],
        size: u32,
    ) -> Result<(), CpioError> {
        let namesize = name.len() as u32 + 1;
        // ino mode uid gid nlink mtime filesize devmajor devminor
        // rdevmajor rdevminor namesize check
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{mtime:08X}{size:08X}\
             {:08X}{:08X}{rdev_major:08X}{rdev_minor:08X}{namesize:08X}{:08X}",
            0, 0, 0, 0, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let fill = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0; 3][..fill])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `etc/` (dir), `etc/hi` ("hi\n", 0644), `sh` -> `busybox` (symlink),
    /// `dev/console` (char 5:1), then the trailer; mtime 0x5F5E1000.
    #[rustfmt::skip]
    const ARCHIVE: &[u8] = &[
        // "070701" ino=1 mode=040755 uid=0 gid=0 nlink=2 mtime filesize=0
        b'0', b'7', b'0', b'7', b'0', b'1',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'1', // ino
        b'0', b'0', b'0', b'0', b'4', b'1', b'E', b'D', // mode 040755
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', // uid
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', // gid
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'2', // nlink
        b'5', b'F', b'5', b'E', b'1', b'0', b'0', b'0', // mtime
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', // filesize
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', // devmajor
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', // devminor
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', // rdevmajor
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', // rdevminor
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'4', // namesize ("etc\0")
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', // check
        b'e', b't', b'c', 0,                            // 110 + 4 = 114:
        0, 0,                                           // pad to 116
        // ino=2 mode=0100644 nlink=1 filesize=3 namesize=7 ("etc/hi\0")
        b'0', b'7', b'0', b'7', b'0', b'1',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'2',
        b'0', b'0', b'0', b'0', b'8', b'1', b'A', b'4',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'1',
        b'5', b'F', b'5', b'E', b'1', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'3',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'7',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'e', b't', b'c', b'/', b'h', b'i', 0,          // 116 + 117 = 233
        0, 0, 0,                                        // pad to 236
        b'h', b'i', b'\n',                              // data: 239
        0,                                              // pad to 240
        // ino=3 mode=0120777 nlink=1 filesize=7 namesize=3 ("sh\0")
        b'0', b'7', b'0', b'7', b'0', b'1',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'3',
        b'0', b'0', b'0', b'0', b'A', b'1', b'F', b'F',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'1',
        b'5', b'F', b'5', b'E', b'1', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'7',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'3',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b's', b'h', 0,                                  // 240 + 113 = 353
        0, 0, 0,                                        // pad to 356
        b'b', b'u', b's', b'y', b'b', b'o', b'x',       // target: 363
        0,                                              // pad to 364
        // ino=4 mode=020600 nlink=1 rdev=5:1 namesize=12 ("dev/console\0")
        b'0', b'7', b'0', b'7', b'0', b'1',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'4',
        b'0', b'0', b'0', b'0', b'2', b'1', b'8', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'1',
        b'5', b'F', b'5', b'E', b'1', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'5', // rdevmajor
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'1', // rdevminor
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'C',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'd', b'e', b'v', b'/', b'c', b'o', b'n', b's', b'o', b'l', b'e', 0, // 486
        0, 0,                                           // pad to 488
        // trailer: ino=0 mode=0 nlink=1 mtime=0 namesize=11
        b'0', b'7', b'0', b'7', b'0', b'1',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'1',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'B',
        b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0',
        b'T', b'R', b'A', b'I', b'L', b'E', b'R', b'!', b'!', b'!', 0, // 609
        0, 0, 0,                                        // pad to 612
    ];

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), 0x5F5E_1000);
        w.append("etc", Entry::Dir { perm: 0o755 }).unwrap();
        w.append(
            "etc/hi",
            Entry::File {
                perm: 0o644,
                data: b"hi\n",
            },
        )
        .unwrap();
        w.append("sh", Entry::Symlink { target: "busybox" })
            .unwrap();
        w.append(
            "dev/console",
            Entry::CharDev {
                perm: 0o600,
                major: 5,
                minor: 1,
            },
        )
        .unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn emits_the_reference_archive_byte_for_byte() {
        assert_eq!(ARCHIVE.len(), 612);
        let out = sample();
        // Compare as text first so a mismatch shows where.
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(ARCHIVE)
        );
        assert_eq!(out, ARCHIVE);
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_the_reference_archive() {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let mut child = Command::new("cpio")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("cpio (Debian package cpio) must be installed");
            child.stdin.take().unwrap().write_all(ARCHIVE).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "cpio {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run(&["-t", "--quiet"]), "etc\netc/hi\nsh\ndev/console\n");
        // Extract only the non-device members (mknod may be refused).
        run(&["-i", "-d", "--quiet", "etc", "etc/hi", "sh"]);
        assert_eq!(std::fs::read(dir.path().join("etc/hi")).unwrap(), b"hi\n");
        assert_eq!(
            std::fs::read_link(dir.path().join("sh")).unwrap(),
            std::path::Path::new("busybox")
        );
    }

    #[test]
    fn rejects_names_the_kernel_would_misread() {
        let mut w = Writer::new(Vec::new(), 0);
        for bad in ["", "/init", "a\0b", "TRAILER!!!"] {
            assert!(matches!(
                w.append(bad, Entry::Dir { perm: 0o755 }),
                Err(CpioError::BadName(_))
            ));
        }
    }
}
