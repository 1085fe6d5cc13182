//! The content-addressed blob store: `blobs/sha256/<hex>` under the store
//! root. A blob is streamed into a temporary file in the same directory while
//! its digest is computed, fsync'd, and renamed to its digest, so a file in
//! the store always holds exactly the bytes its name says.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::digest::{Digest, Hasher};

/// Prefix of temporary files and directories inside the store; whatever has
/// it at `open` is the leftover of a crash and is removed.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

const WRITE_BUFFER: usize = 256 * 1024;
/// A blob's pages are handed to writeback every this many bytes, so the
/// fsync at its end finds little left to write.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// Blob store failures.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A filesystem operation on the store failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done ("create", "write", "rename ... to").
        action: String,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The data did not hash to the digest it was announced with.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    Mismatch {
        /// What the blob was, e.g. "layer 2 of image busybox:latest".
        what: String,
        /// The digest the manifest/archive announced.
        expected: Digest,
        /// The digest of the bytes actually received.
        actual: Digest,
    },
    /// A blob the store should hold is not there.
    #[error("blob {digest} ({what}) is not in the image store")]
    Missing {
        /// The missing blob.
        digest: Digest,
        /// What it was needed for.
        what: String,
    },
}

pub(crate) fn io_err(
    action: impl Into<String>,
    path: &Path,
) -> impl FnOnce(io::Error) -> BlobError {
    let action = action.into();
    let path = path.to_owned();
    move |source| BlobError::Io {
        action,
        path,
        source,
    }
}

/// The `blobs/sha256` directory of a store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the blob directory under `root` and
    /// removes temporary files a crash left behind.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        let dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        remove_temporaries(&dir)?;
        Ok(Self { dir })
    }

    /// The `blobs/sha256` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where blob `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// True when blob `digest` is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Size in bytes of a stored blob.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Starts writing a new blob.
    pub fn writer(&self) -> Result<BlobWriter, BlobError> {
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(io_err("create a temporary file in", &self.dir))?;
        Ok(BlobWriter {
            dir: self.dir.clone(),
            out: BufWriter::with_capacity(WRITE_BUFFER, tmp),
            hasher: Hasher::new(),
            written_back: 0,
        })
    }

    /// Stores `bytes`, checking them against `expected` when given.
    pub fn put(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<Digest, BlobError> {
        let actual = Digest::of(bytes);
        check(expected, &actual, what)?;
        if self.contains(&actual) {
            return Ok(actual);
        }
        let mut w = self.writer()?;
        w.write_all(bytes).map_err(io_err("write", &self.dir))?;
        w.commit(Some(&actual), what).map(|(d, _)| d)
    }

    /// Reads a whole (small) blob and verifies it still hashes to its name.
    pub fn read(&self, digest: &Digest, what: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing {
                    digest: *digest,
                    what: what.to_owned(),
                })
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        check(Some(digest), &Digest::of(&bytes), what)?;
        Ok(bytes)
    }

    /// Opens a stored blob for streaming.
    pub fn open_blob(&self, digest: &Digest, what: &str) -> Result<File, BlobError> {
        let path = self.path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                BlobError::Missing {
                    digest: *digest,
                    what: what.to_owned(),
                }
            } else {
                io_err("open", &path)(e)
            }
        })
    }

    /// Streams `reader` into a new blob (the registry pull path), checking
    /// it against `expected` when given.
    pub fn put_stream(
        &self,
        reader: &mut impl Read,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<(Digest, u64), BlobError> {
        let mut w = self.writer()?;
        let mut buf = vec![0u8; WRITE_BUFFER];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(BlobError::Io {
                        action: format!("read {what} for"),
                        path: self.dir.clone(),
                        source: e,
                    })
                }
            };
            w.write_all(&buf[..n]).map_err(io_err("write", &self.dir))?;
        }
        w.commit(expected, what)
    }

    /// Every stored blob.
    pub fn list(&self) -> Result<Vec<Digest>, BlobError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Deletes a blob; a blob that is already gone is fine.
    pub fn remove(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// fsyncs the blob directory, making renames into it durable.
    pub fn sync_dir(&self) -> Result<(), BlobError> {
        sync_dir(&self.dir)
    }
}

/// A blob being written. Dropping it without [`BlobWriter::commit`] deletes
/// the temporary file.
pub struct BlobWriter {
    dir: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
    hasher: Hasher,
    /// Bytes handed to writeback so far.
    written_back: u64,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// Finishes the blob: verifies the digest against `expected` (when
    /// given; `what` names the blob in the error), fsyncs, and renames it into
    /// place. Returns the digest and size.
    pub fn commit(self, expected: Option<&Digest>, what: &str) -> Result<(Digest, u64), BlobError> {
        let len = self.hasher.len();
        let actual = self.hasher.finish();
        check(expected, &actual, what)?;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| io_err("write", &self.dir)(e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("fsync", tmp.path()))?;
        let dest = self.dir.join(actual.hex());
        // persist() renames over an existing file, which is harmless here:
        // both hold the same bytes.
        tmp.persist(&dest).map_err(|e| BlobError::Io {
            action: "rename a temporary file to".to_owned(),
            path: dest.clone(),
            source: e.error,
        })?;
        Ok((actual, len))
    }
}

impl BlobWriter {
    /// Starts writeback of what reached the file since the last call, once
    /// that is [`WRITEBACK_EVERY`] or more: the disk writes while the rest
    /// of the import computes, instead of all at the final fsync.
    fn write_back(&mut self) {
        let in_file = self.hasher.len() - self.out.buffer().len() as u64;
        let len = in_file - self.written_back;
        if len < WRITEBACK_EVERY {
            return;
        }
        let fd = self.out.get_ref().as_file().as_raw_fd();
        // SAFETY: sync_file_range(2) only reads its integer arguments; fd is
        // the open temporary file this writer owns.
        unsafe {
            libc::sync_file_range(
                fd,
                self.written_back as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        // A failure only loses the head start: commit's fsync still writes.
        self.written_back = in_file;
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.write_back();
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)?;
        self.hasher.update(buf);
        self.write_back();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn check(expected: Option<&Digest>, actual: &Digest, what: &str) -> Result<(), BlobError> {
    match expected {
        Some(e) if e != actual => Err(BlobError::Mismatch {
            what: what.to_owned(),
            expected: *e,
            actual: *actual,
        }),
        _ => Ok(()),
    }
}

/// fsyncs a directory so renames and creations inside it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Removes `.tmp-*` leftovers in `dir` (files or whole directories).
pub(crate) fn remove_temporaries(dir: &Path) -> Result<(), BlobError> {
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let result = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        result.map_err(io_err("remove the leftover", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_and_verify() {
        let root = tempfile::tempdir().unwrap();
        let store = BlobStore::open(root.path()).unwrap();
        let d = store.put(b"hello", None, "test blob").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert!(store.contains(&d));
        assert_eq!(store.read(&d, "test blob").unwrap(), b"hello");
        assert_eq!(store.list().unwrap(), vec![d]);

        let wrong = Digest::of(b"other");
        let err = store
            .put(b"hello", Some(&wrong), "layer 1 of image x")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("layer 1 of image x"), "{msg}");
        assert!(
            msg.contains(&wrong.to_string()) && msg.contains(&d.to_string()),
            "{msg}"
        );

        // A blob whose bytes changed on disk is caught on read.
        fs::write(store.path(&d), b"HELLO").unwrap();
        assert!(matches!(
            store.read(&d, "x"),
            Err(BlobError::Mismatch { .. })
        ));
        store.remove(&d).unwrap();
        store.remove(&d).unwrap();
        assert!(matches!(
            store.read(&d, "x"),
            Err(BlobError::Missing { .. })
        ));
    }

    #[test]
    fn streamed_mismatch_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let store = BlobStore::open(root.path()).unwrap();
        let data = vec![1u8; 1_000_000];
        let expected = Digest::of(b"not this");
        let err = store
            .put_stream(&mut &data[..], Some(&expected), "blob y")
            .unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }));
        assert_eq!(
            fs::read_dir(root.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
        let (d, n) = store.put_stream(&mut &data[..], None, "blob y").unwrap();
        assert_eq!((d, n), (Digest::of(&data), 1_000_000));
    }

    #[test]
    fn open_removes_leftovers() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("blobs/sha256");
        fs::create_dir_all(dir.join(".tmp-dir/sub")).unwrap();
        fs::write(dir.join(".tmp-file"), b"x").unwrap();
        BlobStore::open(root.path()).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }
}
