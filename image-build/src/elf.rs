//! Just enough ELF64 to find a named section (a module's `.modinfo`) and to
//! tell a static executable from a dynamic one. Pure functions over bytes;
//! every offset is bounds-checked, so a truncated or foreign file is an error,
//! never a panic.

/// Why a file could not be read as the ELF we need.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// No `\x7fELF` magic.
    #[error("not an ELF file")]
    NotElf,
    /// 32-bit or big-endian.
    #[error("not a 64-bit little-endian ELF file")]
    Unsupported,
    /// A header points outside the file.
    #[error("truncated or corrupt ELF file ({0} out of bounds)")]
    OutOfBounds(&'static str),
}

use std::io::{Read, Seek, SeekFrom};

const PT_INTERP: u32 = 3;

/// Reads `N` bytes at `at`, or says which structure ran off the end.
fn get<const N: usize>(b: &[u8], at: u64, what: &'static str) -> Result<[u8; N], ElfError> {
    let at = usize::try_from(at).map_err(|_| ElfError::OutOfBounds(what))?;
    b.get(at..at.checked_add(N).ok_or(ElfError::OutOfBounds(what))?)
        .and_then(|s| s.try_into().ok())
        .ok_or(ElfError::OutOfBounds(what))
}

fn u16_at(b: &[u8], at: u64, what: &'static str) -> Result<u16, ElfError> {
    get::<2>(b, at, what).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: u64, what: &'static str) -> Result<u32, ElfError> {
    get::<4>(b, at, what).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: u64, what: &'static str) -> Result<u64, ElfError> {
    get::<8>(b, at, what).map(u64::from_le_bytes)
}

fn check_ident(b: &[u8]) -> Result<(), ElfError> {
    if b.get(..4) != Some(b"\x7fELF") {
        return Err(ElfError::NotElf);
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err(ElfError::Unsupported);
    }
    Ok(())
}

#[cfg(test)]
fn slice<'a>(b: &'a [u8], off: u64, len: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let start = usize::try_from(off).map_err(|_| ElfError::OutOfBounds(what))?;
    let len = usize::try_from(len).map_err(|_| ElfError::OutOfBounds(what))?;
    b.get(start..start.checked_add(len).ok_or(ElfError::OutOfBounds(what))?)
        .ok_or(ElfError::OutOfBounds(what))
}

/// The contents of the section called `name`, or `None` if there is none;
/// over a whole file in memory (the tests' oracle for [`read_section`]).
#[cfg(test)]
pub fn section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_ident(b)?;
    let shoff = u64_at(b, 0x28, "e_shoff")?;
    let shentsize = u64::from(u16_at(b, 0x3A, "e_shentsize")?);
    let shnum = u64::from(u16_at(b, 0x3C, "e_shnum")?);
    let shstrndx = u64::from(u16_at(b, 0x3E, "e_shstrndx")?);
    let header = |i: u64| shoff.saturating_add(i.saturating_mul(shentsize));
    // sh_offset at 0x18 and sh_size at 0x20 in an Elf64_Shdr.
    let strtab = slice(
        b,
        u64_at(b, header(shstrndx).saturating_add(0x18), "section header")?,
        u64_at(b, header(shstrndx).saturating_add(0x20), "section header")?,
        "section name table",
    )?;
    for i in 0..shnum {
        let name_off = u32_at(b, header(i), "section header")? as usize;
        let found = strtab
            .get(name_off..)
            .and_then(|s| s.split(|&c| c == 0).next())
            .ok_or(ElfError::OutOfBounds("section name"))?;
        if found == name.as_bytes() {
            let off = u64_at(b, header(i).saturating_add(0x18), "section header")?;
            let size = u64_at(b, header(i).saturating_add(0x20), "section header")?;
            return slice(b, off, size, "section").map(Some);
        }
    }
    Ok(None)
}

/// Like [`section`], reading only the headers and the section from a file
/// (a module tree is ~400 MB; its `.modinfo` sections are a few hundred KB).
pub fn read_section<R: Read + Seek>(r: &mut R, name: &str) -> Result<Option<Vec<u8>>, ReadError> {
    let mut ehdr = [0u8; 64];
    r.read_exact(&mut ehdr)
        .map_err(|e| eof_is_bounds(e, "ELF header"))?;
    check_ident(&ehdr)?;
    let shoff = u64_at(&ehdr, 0x28, "e_shoff")?;
    let shentsize = u16_at(&ehdr, 0x3A, "e_shentsize")?;
    let shnum = u16_at(&ehdr, 0x3C, "e_shnum")?;
    let shstrndx = u64::from(u16_at(&ehdr, 0x3E, "e_shstrndx")?);
    let read_at =
        |r: &mut R, off: u64, len: u64, what: &'static str| -> Result<Vec<u8>, ReadError> {
            // Section tables and .modinfo are small; refuse absurd sizes.
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= 64 << 20)
                .ok_or(ElfError::OutOfBounds(what))?;
            r.seek(SeekFrom::Start(off))?;
            let mut buf = vec![0; len];
            r.read_exact(&mut buf).map_err(|e| eof_is_bounds(e, what))?;
            Ok(buf)
        };
    let table = read_at(
        r,
        shoff,
        u64::from(shentsize) * u64::from(shnum),
        "section headers",
    )?;
    let field = |i: u64, at: u64| {
        u64_at(
            &table,
            (i * u64::from(shentsize)).saturating_add(at),
            "section header",
        )
    };
    let strtab = read_at(
        r,
        field(shstrndx, 0x18)?,
        field(shstrndx, 0x20)?,
        "section name table",
    )?;
    for i in 0..u64::from(shnum) {
        let name_off = u32_at(&table, i * u64::from(shentsize), "section header")? as usize;
        let found = strtab
            .get(name_off..)
            .and_then(|s| s.split(|&c| c == 0).next())
            .ok_or(ElfError::OutOfBounds("section name"))?;
        if found == name.as_bytes() {
            return read_at(r, field(i, 0x18)?, field(i, 0x20)?, "section").map(Some);
        }
    }
    Ok(None)
}

/// Reading a file's sections failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The contents are not a usable ELF file.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn eof_is_bounds(e: std::io::Error, what: &'static str) -> ReadError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ElfError::OutOfBounds(what).into()
    } else {
        e.into()
    }
}

/// Whether an executable asks for a program interpreter (`PT_INTERP`), i.e.
/// is dynamically linked and cannot run in an initramfs without a libc.
pub fn has_interpreter(b: &[u8]) -> Result<bool, ElfError> {
    check_ident(b)?;
    let phoff = u64_at(b, 0x20, "e_phoff")?;
    let phentsize = u64::from(u16_at(b, 0x36, "e_phentsize")?);
    let phnum = u64::from(u16_at(b, 0x38, "e_phnum")?);
    for i in 0..phnum {
        if u32_at(
            b,
            phoff.saturating_add(i.saturating_mul(phentsize)),
            "program header",
        )? == PT_INTERP
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        // busybox-static is a test prerequisite; /bin/sh (dash) is dynamic.
        let busybox = std::fs::read("/bin/busybox").expect("busybox-static must be installed");
        assert_eq!(has_interpreter(&busybox), Ok(false));
        let sh = std::fs::read(std::fs::canonicalize("/bin/sh").unwrap()).unwrap();
        assert_eq!(has_interpreter(&sh), Ok(true));
    }

    #[test]
    fn reading_a_section_from_a_file_matches_the_whole_file_parse() {
        let path = crate::testkernel::modules_dir().join("kernel/drivers/net/virtio_net.ko");
        let bytes = std::fs::read(&path).unwrap();
        let whole = section(&bytes, ".modinfo").unwrap().unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        assert_eq!(
            read_section(&mut file, ".modinfo").unwrap().as_deref(),
            Some(whole)
        );
        let mut cursor = std::io::Cursor::new(&bytes[..]);
        assert_eq!(read_section(&mut cursor, ".nope").unwrap(), None);
        let mut short = std::io::Cursor::new(&bytes[..bytes.len() / 2]);
        assert!(matches!(
            read_section(&mut short, ".modinfo"),
            Err(ReadError::Elf(ElfError::OutOfBounds(_)))
        ));
    }

    #[test]
    fn foreign_and_truncated_files_are_errors() {
        assert_eq!(section(b"#!/bin/sh\n", ".modinfo"), Err(ElfError::NotElf));
        assert_eq!(
            section(b"\x7fELF\x01\x01", ".modinfo"),
            Err(ElfError::Unsupported)
        );
        let busybox = std::fs::read("/bin/busybox").unwrap();
        assert!(matches!(
            section(&busybox[..0x30], ".text"),
            Err(ElfError::OutOfBounds(_))
        ));
        assert!(matches!(
            has_interpreter(&busybox[..0x30]),
            Err(ElfError::OutOfBounds(_))
        ));
    }
}
