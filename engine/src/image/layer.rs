//! Unpacking one layer (a tar stream, plain, gzip or zstd) into a directory
//! that overlayfs can stack.
//!
//! Whiteouts become what overlayfs expects: `.wh.NAME` turns into a 0:0
//! character device `NAME`, and `.wh..wh..opq` sets `trusted.overlay.opaque=y`
//! on its directory. Other `.wh..wh.*` names (aufs bookkeeping) are skipped,
//! as Docker skips them.
//!
//! Extraction never writes outside the destination:
//! - entry paths are cleaned of `.` and empty components; a path with a `..`
//!   component, or an absolute path, is refused (Docker also refuses
//!   breakouts; berth does not silently rewrite `/x` to `x`);
//! - parents are resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//!   or one `O_NOFOLLOW` component at a time, and the entry is created with
//!   `*at` calls on that directory, so a symlink — even one that points
//!   inside — is never followed: an entry under a symlink is refused;
//! - a hard link must name an entry extracted earlier from this same layer.
//!
//! Each refusal is a [`LayerError::Refused`] naming the entry.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode,
    SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::digest::{Digest, HashingReader};
use super::pipe;

/// Prefix of a whiteout file in a layer tar.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker in a layer tar.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

const BUFFER: usize = 256 * 1024;
/// Decompressed chunks in flight between the decompressing and the
/// extracting thread.
const PIPE_DEPTH: usize = 8;

/// Layer unpacking failures.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The compressed stream or the tar structure is broken.
    #[error("cannot read the layer's tar stream")]
    Read(#[source] io::Error),
    /// bzip2, xz: Docker can read them, berth does not.
    #[error("the layer is compressed with {0}, which berth does not support (gzip, zstd or none)")]
    UnsupportedCompression(&'static str),
    /// An entry that would escape the directory or is otherwise unsafe.
    #[error("refusing layer entry \"{entry}\": {reason}")]
    Refused {
        /// The entry's path as written in the tar.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A system call on an entry failed.
    #[error("cannot {action} for layer entry \"{entry}\"")]
    Entry {
        /// The entry's path as written in the tar.
        entry: String,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The destination directory cannot be used.
    #[error("cannot open the layer directory {}", path.display())]
    Destination {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Compression of a layer or archive stream, detected from its magic bytes
/// (as Docker does, whatever the media type says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes of a stream.
    pub fn detect(head: &[u8]) -> Result<Self, LayerError> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Compression::Zstd)
        } else if head.starts_with(b"BZh") {
            Err(LayerError::UnsupportedCompression("bzip2"))
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Err(LayerError::UnsupportedCompression("xz"))
        } else {
            Ok(Compression::None)
        }
    }

    /// Wraps `input` in the matching decompressor.
    pub fn decoder<'a, R: BufRead + Send + 'a>(
        self,
        input: R,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(input),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        })
    }
}

/// True when the first bytes of a stream look like a layer: compressed, or
/// a tar header (`ustar` magic at offset 257).
pub fn looks_like_layer(head: &[u8]) -> bool {
    matches!(
        Compression::detect(head),
        Ok(Compression::Gzip | Compression::Zstd)
    ) || head.get(257..262) == Some(b"ustar")
}

/// What unpacking a layer produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// SHA-256 of the uncompressed tar: the layer's `diff_id`.
    pub diff_id: Digest,
    /// Size of the uncompressed tar in bytes.
    pub size: u64,
}

/// Unpacks the layer read from `reader` into `dest`, an existing directory
/// (normally empty), and returns its diff_id. Reads `reader` to the end so
/// the diff_id covers the whole stream. A compressed layer is decompressed
/// (and hashed) on a second thread while this one extracts.
pub fn unpack(reader: impl Read + Send, dest: &Path) -> Result<Unpacked, LayerError> {
    let (diff_id, size) = unpack_stream(reader, dest, true)?;
    let diff_id =
        diff_id.ok_or_else(|| LayerError::Read(io::Error::other("the layer was not hashed")))?;
    Ok(Unpacked { diff_id, size })
}

/// [`unpack`], except that with `hash_plain` false an uncompressed stream
/// is not hashed (its diff_id is its blob digest, which the caller computes
/// from the same bytes): the diff_id is then None.
pub(crate) fn unpack_stream(
    reader: impl Read + Send,
    dest: &Path,
    hash_plain: bool,
) -> Result<(Option<Digest>, u64), LayerError> {
    let mut input = BufReader::with_capacity(BUFFER, reader);
    let compression = Compression::detect(input.fill_buf().map_err(LayerError::Read)?)?;
    let mut unpacker = Unpacker::new(dest)?;
    if compression == Compression::None {
        let rest = extract(
            &mut unpacker,
            HashingReader::with_hashing(input, hash_plain),
        )?;
        unpacker.finish()?;
        // Bytes buffered above the hasher were counted already; count the
        // rest (end-of-archive blocks and padding) too.
        return rest.drain_and_finish().map_err(LayerError::Read);
    }
    std::thread::scope(|s| {
        let (tx, rx) = pipe::pipe(PIPE_DEPTH);
        let decompressor = s.spawn(move || -> io::Result<(Option<Digest>, u64)> {
            let mut decoded = HashingReader::new(compression.decoder(input)?);
            loop {
                let mut buf = tx.buffer();
                let n = pipe::read_up_to(&mut decoded, &mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                if tx.send(buf).is_err() {
                    // The extractor failed; its error is the one to report.
                    break;
                }
            }
            decoded.drain_and_finish()
        });
        let extracted = extract(&mut unpacker, rx).and_then(|rest| {
            // Keep reading so the decompressor reaches the end of its stream.
            let mut rest = rest;
            io::copy(&mut rest, &mut io::sink()).map_err(LayerError::Read)?;
            Ok(())
        });
        let decoded = decompressor
            .join()
            .map_err(|_| LayerError::Read(io::Error::other("the decompression thread panicked")))?;
        // A corrupt stream explains a truncated tar: report it first.
        let hashed = decoded.map_err(LayerError::Read)?;
        extracted?;
        unpacker.finish()?;
        Ok(hashed)
    })
}

/// Extracts every entry of the tar read from `reader`; returns the reader
/// (positioned after the end-of-archive marker, minus what was buffered).
fn extract<R: Read>(unpacker: &mut Unpacker, reader: R) -> Result<R, LayerError> {
    let mut archive = tar::Archive::new(BufReader::with_capacity(BUFFER, reader));
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut entry = entry.map_err(LayerError::Read)?;
        unpacker.entry(&mut entry)?;
    }
    Ok(archive.into_inner().into_inner())
}

/// Ownership, permissions, time and xattrs of one entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

struct Unpacker {
    dest: PathBuf,
    root: OwnedFd,
    /// The last parent directory resolved: entries come grouped by directory.
    cached: Option<(Vec<u8>, OwnedFd)>,
    /// Non-directory entries extracted so far, the only valid hard link targets.
    extracted: HashSet<Vec<u8>>,
    /// Directory times, applied last because creating children changes them.
    dir_times: Vec<(Vec<u8>, TimeSpec)>,
    buf: Vec<u8>,
    privileged: bool,
}

impl Unpacker {
    fn new(dest: &Path) -> Result<Self, LayerError> {
        let root = openat(
            nix::fcntl::AT_FDCWD,
            dest,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::Destination {
            path: dest.to_owned(),
            source: e.into(),
        })?;
        Ok(Self {
            dest: dest.to_owned(),
            root,
            cached: None,
            extracted: HashSet::new(),
            dir_times: Vec::new(),
            buf: vec![0u8; BUFFER],
            privileged: nix::unistd::geteuid().is_root(),
        })
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        use tar::EntryType as T;
        let kind = e.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean(&raw).map_err(|reason| refused(&name, reason))?;
        let meta = read_meta(e, &name)?;

        let Some((base, parent)) = comps.split_last() else {
            // "./": the layer root itself.
            if !kind.is_dir() {
                return Err(refused(
                    &name,
                    "it names the layer root but is not a directory",
                ));
            }
            let root = self
                .root
                .try_clone()
                .map_err(|e| self.err(&name, "open", e))?;
            return self.set_meta(&name, root.as_fd(), &meta, Vec::new(), true);
        };
        let base = *base;
        let path = comps.join(&b'/');

        if let Some(target) = base.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let pfd = self.parent(parent, &name)?;
            let pfd = pfd.as_fd();
            if base == OPAQUE_WHITEOUT.as_bytes() {
                return set_xattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(|e| self.err(&name, "mark the directory opaque", e));
            }
            if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                log::debug!(target: "engine::image", "skipping layer metadata entry {name}");
                return Ok(());
            }
            if matches!(target, b"" | b"." | b"..") {
                return Err(refused(
                    &name,
                    "it is a whiteout of no file (\".\", \"..\" or empty)",
                ));
            }
            let target = cstring(target, &name)?;
            self.make_room(pfd, &target, parent, &name)?;
            mknodat(
                pfd,
                target.as_c_str(),
                SFlag::S_IFCHR,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(|e| self.err(&name, "create the whiteout device", e.into()))?;
            return Ok(());
        }

        let cname = cstring(base, &name)?;
        let pfd_owned = self.parent(parent, &name)?;
        let pfd = pfd_owned.as_fd();
        match kind {
            T::Directory => {
                match mkdirat(pfd, cname.as_c_str(), Mode::from_bits_truncate(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) if self.is_dir(pfd, &cname) => {}
                    Err(Errno::EEXIST) => {
                        self.make_room(pfd, &cname, parent, &name)?;
                        mkdirat(pfd, cname.as_c_str(), Mode::from_bits_truncate(0o700))
                            .map_err(|e| self.err(&name, "create the directory", e.into()))?;
                    }
                    Err(e) => return Err(self.err(&name, "create the directory", e.into())),
                }
                let fd = openat(
                    pfd,
                    cname.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.err(&name, "open the directory", e.into()))?;
                self.set_meta(&name, fd.as_fd(), &meta, path, true)?;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let mode = Mode::from_bits_truncate(0o600);
                let fd = match openat(pfd, cname.as_c_str(), flags, mode) {
                    Err(Errno::EEXIST) => {
                        self.make_room(pfd, &cname, parent, &name)?;
                        openat(pfd, cname.as_c_str(), flags, mode)
                    }
                    other => other,
                }
                .map_err(|e| self.err(&name, "create the file", e.into()))?;
                let mut file = File::from(fd);
                self.copy_data(e, &mut file, &name)?;
                self.set_meta(&name, file.as_fd(), &meta, Vec::new(), false)?;
                self.extracted.insert(path);
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| refused(&name, "a symbolic link without a target"))?;
                let target = cstring(&target, &name)?;
                let link = |pfd| symlinkat(target.as_c_str(), pfd, cname.as_c_str());
                match link(pfd) {
                    Err(Errno::EEXIST) => {
                        self.make_room(pfd, &cname, parent, &name)?;
                        link(pfd)
                    }
                    other => other,
                }
                .map_err(|e| self.err(&name, "create the symbolic link", e.into()))?;
                self.set_meta_at(&name, pfd, &cname, &meta, false)?;
                self.extracted.insert(path);
            }
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| refused(&name, "a hard link without a target"))?
                    .into_owned();
                let shown = String::from_utf8_lossy(&target).into_owned();
                let tcomps = clean(&target).map_err(|reason| {
                    refused(
                        &name,
                        format!("its hard link target \"{shown}\" is refused: {reason}"),
                    )
                })?;
                let tpath = tcomps.join(&b'/');
                if !self.extracted.contains(&tpath) {
                    return Err(refused(
                        &name,
                        format!(
                            "it is a hard link to \"{shown}\", which is not an earlier file of this layer"
                        ),
                    ));
                }
                let Some((tbase, tparent)) = tcomps.split_last() else {
                    return Err(refused(&name, "it is a hard link to the layer root"));
                };
                let tname = cstring(tbase, &name)?;
                let tfd = self.open_dir(tparent, &name, false)?;
                let link = |pfd| {
                    linkat(
                        tfd.as_fd(),
                        tname.as_c_str(),
                        pfd,
                        cname.as_c_str(),
                        AtFlags::empty(),
                    )
                };
                match link(pfd) {
                    Err(Errno::EEXIST) => {
                        self.make_room(pfd, &cname, parent, &name)?;
                        link(pfd)
                    }
                    other => other,
                }
                .map_err(|e| self.err(&name, "create the hard link", e.into()))?;
                self.extracted.insert(path);
            }
            T::Char | T::Block | T::Fifo => {
                let (sflag, dev) = match kind {
                    T::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let h = e.header();
                        let major = h.device_major().ok().flatten().unwrap_or(0);
                        let minor = h.device_minor().ok().flatten().unwrap_or(0);
                        let flag = if kind == T::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (flag, makedev(major.into(), minor.into()))
                    }
                };
                let node = |pfd| mknodat(pfd, cname.as_c_str(), sflag, Mode::empty(), dev);
                let made = match node(pfd) {
                    Err(Errno::EEXIST) => {
                        self.make_room(pfd, &cname, parent, &name)?;
                        node(pfd)
                    }
                    other => other,
                };
                match made {
                    Ok(()) => {
                        self.set_meta_at(&name, pfd, &cname, &meta, true)?;
                        self.extracted.insert(path);
                    }
                    // Unprivileged (development only): skip device nodes as
                    // rootless engines do.
                    Err(Errno::EPERM) if !self.privileged => {
                        log::warn!(target: "engine::image", "skipping device node {name}: not root");
                    }
                    Err(e) => return Err(self.err(&name, "create the device node", e.into())),
                }
            }
            other => {
                log::debug!(target: "engine::image", "skipping layer entry {name} of type {other:?}");
            }
        }
        Ok(())
    }

    /// Applies directory times, deepest last-created first.
    fn finish(mut self) -> Result<(), LayerError> {
        let dirs = std::mem::take(&mut self.dir_times);
        for (path, time) in dirs.iter().rev() {
            let fd = if path.is_empty() {
                self.root.try_clone().map_err(|e| self.err("./", "open", e))
            } else {
                match openat2(
                    self.root.as_fd(),
                    path.as_slice(),
                    how(OFlag::O_RDONLY | OFlag::O_DIRECTORY),
                ) {
                    Ok(fd) => Ok(fd),
                    // Replaced or removed by a later entry: nothing to date.
                    Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                    Err(e) => Err(self.err(&String::from_utf8_lossy(path), "open", e.into())),
                }
            }?;
            futimens(fd.as_fd(), time, time).map_err(|e| {
                self.err(
                    &String::from_utf8_lossy(path),
                    "set the times of the directory",
                    e.into(),
                )
            })?;
        }
        Ok(())
    }

    fn err(&self, entry: &str, action: &'static str, source: io::Error) -> LayerError {
        LayerError::Entry {
            entry: entry.to_owned(),
            action,
            source,
        }
    }

    /// The directory `comps` (relative to the root), created when missing.
    fn parent(&mut self, comps: &[&[u8]], entry: &str) -> Result<OwnedFd, LayerError> {
        if comps.is_empty() {
            return self
                .root
                .try_clone()
                .map_err(|e| self.err(entry, "open", e));
        }
        let key = comps.join(&b'/');
        if let Some((cached, fd)) = &self.cached {
            if *cached == key {
                return fd.try_clone().map_err(|e| self.err(entry, "open", e));
            }
        }
        let fd = self.open_dir(comps, entry, true)?;
        let dup = fd.try_clone().map_err(|e| self.err(entry, "open", e))?;
        self.cached = Some((key, dup));
        Ok(fd)
    }

    /// Opens directory `comps` without following any symlink; with `create`,
    /// makes missing components (mode 0755, as tar and Docker do).
    fn open_dir(&self, comps: &[&[u8]], entry: &str, create: bool) -> Result<OwnedFd, LayerError> {
        let key = comps.join(&b'/');
        let shown = || String::from_utf8_lossy(&key).into_owned();
        if key.is_empty() {
            return self
                .root
                .try_clone()
                .map_err(|e| self.err(entry, "open", e));
        }
        let mut tries = 0;
        let first = loop {
            match openat2(
                self.root.as_fd(),
                key.as_slice(),
                how(OFlag::O_RDONLY | OFlag::O_DIRECTORY),
            ) {
                // openat2 asks to retry when a rename raced with RESOLVE_BENEATH.
                Err(Errno::EAGAIN) if tries < 3 => tries += 1,
                other => break other,
            }
        };
        match first {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) if create => {}
            Err(Errno::ENOSYS) => {} // kernels before 5.6: walk by hand below
            Err(e) => return Err(self.walk_error(entry, &shown(), e)),
        }
        let mut cur = self
            .root
            .try_clone()
            .map_err(|e| self.err(entry, "open", e))?;
        for (i, comp) in comps.iter().enumerate() {
            let c = cstring(comp, entry)?;
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let next = match openat(cur.as_fd(), c.as_c_str(), flags, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(cur.as_fd(), c.as_c_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(self.err(entry, "create a parent directory", e.into()))
                        }
                    }
                    openat(cur.as_fd(), c.as_c_str(), flags, Mode::empty())
                }
                other => other,
            };
            cur = next.map_err(|e| {
                let upto = String::from_utf8_lossy(&comps[..=i].join(&b'/')).into_owned();
                self.walk_error(entry, &upto, e)
            })?;
        }
        Ok(cur)
    }

    fn walk_error(&self, entry: &str, dir: &str, e: Errno) -> LayerError {
        match e {
            Errno::ELOOP => refused(
                entry,
                format!("its parent \"{dir}\" is or passes through a symbolic link, which extraction never follows"),
            ),
            Errno::ENOTDIR => refused(entry, format!("its parent \"{dir}\" is not a directory")),
            Errno::EXDEV => refused(entry, format!("its parent \"{dir}\" crosses a mount point")),
            Errno::ENOENT => refused(entry, format!("\"{dir}\" does not exist in this layer")),
            e => self.err(entry, "open a parent directory", e.into()),
        }
    }

    fn is_dir(&self, pfd: BorrowedFd<'_>, name: &CString) -> bool {
        fstatat(pfd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .unwrap_or(false)
    }

    /// Removes whatever an earlier entry put at `name`, so a later entry of
    /// the same path wins (as in tar).
    fn make_room(
        &mut self,
        pfd: BorrowedFd<'_>,
        name: &CString,
        parent: &[&[u8]],
        entry: &str,
    ) -> Result<(), LayerError> {
        if matches!(name.as_bytes(), b"." | b"..") {
            return Err(refused(entry, "it would replace \".\" or \"..\""));
        }
        match unlinkat(pfd, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => {
                // The parents were just resolved without symlinks, and only
                // this process writes into the (temporary) directory.
                let mut path = self.dest.clone();
                for c in parent {
                    path.push(std::ffi::OsStr::from_bytes(c));
                }
                path.push(std::ffi::OsStr::from_bytes(name.as_bytes()));
                self.cached = None;
                std::fs::remove_dir_all(&path)
                    .map_err(|e| self.err(entry, "replace the existing directory", e))
            }
            Err(e) => Err(self.err(entry, "replace the existing entry", e.into())),
        }
    }

    fn copy_data<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        file: &mut File,
        name: &str,
    ) -> Result<(), LayerError> {
        loop {
            let n = match e.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(LayerError::Read(err)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|err| self.err(name, "write the file", err))?;
        }
    }

    /// Owner, mode, xattrs and (or deferred, for directories) times, on an
    /// open file or directory.
    fn set_meta(
        &mut self,
        entry: &str,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        dir_path: Vec<u8>,
        is_dir: bool,
    ) -> Result<(), LayerError> {
        match fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        ) {
            Ok(()) => {}
            Err(Errno::EPERM) if !self.privileged => {}
            Err(e) => return Err(self.err(entry, "set the owner", e.into())),
        }
        // After chown, which clears set-id bits.
        fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777))
            .map_err(|e| self.err(entry, "set the mode", e.into()))?;
        for (key, value) in &meta.xattrs {
            match set_xattr(fd, key.to_str().unwrap_or_default(), value) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    log::warn!(target: "engine::image", "xattr {key:?} of {entry} not supported here; skipped");
                }
                Err(e) => return Err(self.err(entry, "set an extended attribute", e)),
            }
        }
        if is_dir {
            self.dir_times.push((dir_path, meta.mtime));
            Ok(())
        } else {
            futimens(fd, &meta.mtime, &meta.mtime)
                .map_err(|e| self.err(entry, "set the times", e.into()))
        }
    }

    /// Owner, mode (not for symlinks) and times by name, never following a
    /// symlink.
    fn set_meta_at(
        &self,
        entry: &str,
        pfd: BorrowedFd<'_>,
        name: &CString,
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), LayerError> {
        match fchownat(
            pfd,
            name.as_c_str(),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => {}
            Err(Errno::EPERM) if !self.privileged => {}
            Err(e) => return Err(self.err(entry, "set the owner", e.into())),
        }
        if chmod {
            // A device node or fifo this unpacker just created, not a symlink.
            fchmodat(
                pfd,
                name.as_c_str(),
                Mode::from_bits_truncate(meta.mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| self.err(entry, "set the mode", e.into()))?;
        }
        utimensat(
            pfd,
            name.as_c_str(),
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.err(entry, "set the times", e.into()))
    }
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    )
}

fn refused(entry: &str, reason: impl Into<String>) -> LayerError {
    LayerError::Refused {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

fn cstring(bytes: &[u8], entry: &str) -> Result<CString, LayerError> {
    CString::new(bytes).map_err(|_| refused(entry, "its path contains a NUL byte"))
}

/// Splits an entry path into its components, dropping `.` and empty ones;
/// refuses absolute paths and `..`.
fn clean(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute paths are refused");
    }
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("its path contains \"..\" and would leave the layer directory"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn read_meta<R: Read>(e: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, LayerError> {
    let h = e.header();
    let bad =
        |what: &str, err: io::Error| refused(name, format!("its {what} field is malformed: {err}"));
    let mode = h.mode().map_err(|err| bad("mode", err))?;
    let mut uid = h.uid().map_err(|err| bad("uid", err))?;
    let mut gid = h.gid().map_err(|err| bad("gid", err))?;
    let mut mtime = TimeSpec::new(h.mtime().map_err(|err| bad("mtime", err))? as i64, 0);
    let mut xattrs = Vec::new();
    if let Some(pax) = e.pax_extensions().map_err(LayerError::Read)? {
        for ext in pax {
            let ext = ext.map_err(LayerError::Read)?;
            let (Ok(key), value) = (ext.key(), ext.value_bytes()) else {
                continue;
            };
            match key {
                "uid" => uid = parse_num(value).unwrap_or(uid),
                "gid" => gid = parse_num(value).unwrap_or(gid),
                "mtime" => {
                    if let Some(t) = parse_pax_time(value) {
                        mtime = t;
                    }
                }
                k => {
                    if let Some(xattr) = k.strip_prefix("SCHILY.xattr.") {
                        if xattr_allowed(xattr) {
                            if let Ok(c) = CString::new(xattr) {
                                xattrs.push((c, value.to_vec()));
                            }
                        } else {
                            log::debug!(target: "engine::image", "dropping xattr {xattr} of {name}");
                        }
                    }
                }
            }
        }
    }
    let id = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| refused(name, format!("its {what} {v} is out of range")))
    };
    Ok(Meta {
        mode,
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        mtime,
        xattrs,
    })
}

/// `user.*` and `security.*` (file capabilities) are kept; `trusted.*`
/// (overlayfs's own metadata, which a layer must not forge) and the rest
/// are dropped.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name.starts_with("security.")
}

fn parse_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// PAX times: decimal seconds with an optional fraction.
fn parse_pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        nanos += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
    }
    if secs < 0 && nanos > 0 {
        return Some(TimeSpec::new(secs - 1, 1_000_000_000 - nanos));
    }
    Some(TimeSpec::new(secs, nanos))
}

fn set_xattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is a live descriptor borrowed for the call; `name` is a
    // NUL-terminated string and `value` a valid slice, both outliving the
    // call, and the kernel only reads `value.len()` bytes from it.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths() {
        assert_eq!(clean(b"./a//b/./c/").unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert!(clean(b"./").unwrap().is_empty());
        assert!(clean(b"/etc/passwd").is_err());
        assert!(clean(b"a/../b").is_err());
        assert!(clean(b"..").is_err());
        assert_eq!(clean(b"a/..b").unwrap(), vec![&b"a"[..], b"..b"]);
    }

    #[test]
    fn detects_compression() {
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]).unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::detect(b"{\"a\":1}").unwrap(),
            Compression::None
        );
        assert!(Compression::detect(b"BZh91AY").is_err());
        let mut tar_head = vec![0u8; 512];
        tar_head[257..262].copy_from_slice(b"ustar");
        assert!(looks_like_layer(&tar_head));
        assert!(!looks_like_layer(b"{\"schemaVersion\":2}"));
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(TimeSpec::new(12, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"7"), Some(TimeSpec::new(7, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
