//! Layers whose files may not be on disk yet.
//!
//! Syncing a freshly unpacked layer costs about as much as unpacking it
//! (hundreds of MB of small files), so a layer directory gets its final name
//! without waiting for its files. Before the rename, an empty marker
//! `unsynced/<diff_id hex>.<blob hex>.<unique>` is made durable; a background
//! `syncfs(2)` then writes the files out and removes the markers. Blobs
//! themselves are fsync'd before the image index names them, so after a
//! crash every marked layer can be rebuilt from its blob:
//! [`Unsynced::leftovers`] lists them and the store re-unpacks each.
//!
//! The cost moves from every load to the rare unclean shutdown.
//!
//! Each marker holds the kernel's boot id. A marker of the running boot
//! means only the process died (berthd killed): its layer's files are
//! whole in the page cache, and possibly under a running container's
//! overlay, so the layer is synced, never rebuilt. Only a marker of an
//! earlier boot (or one whose content did not survive the crash) means the
//! files may be lost.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

use super::digest::Digest;
use super::store::{self, BlobError};

static NEXT_MARKER: AtomicU64 = AtomicU64::new(0);

/// The markers, and the background syncs removing them.
#[derive(Debug)]
pub(crate) struct Unsynced {
    dir: PathBuf,
    layers_dir: PathBuf,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`), if known.
    boot: Option<String>,
    /// Markers made since the last sync started.
    pending: Mutex<Vec<PathBuf>>,
    syncs: Mutex<Vec<JoinHandle<()>>>,
}

/// A marked layer found at open: its files may be incomplete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leftover {
    pub diff_id: Digest,
    pub blob: Digest,
    /// Made during this boot: the files were complete when the process
    /// that unpacked them died, only maybe not yet on disk.
    pub this_boot: bool,
    marker: PathBuf,
}

impl Unsynced {
    /// Uses `dir` for the markers (created when missing); `layers_dir` is
    /// what the background syncs flush.
    pub fn open(dir: &Path, layers_dir: &Path) -> Result<Self, BlobError> {
        fs::create_dir_all(dir).map_err(store::io_err("create", dir))?;
        Ok(Self {
            dir: dir.to_owned(),
            layers_dir: layers_dir.to_owned(),
            boot: fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|b| b.trim().to_owned())
                .filter(|b| !b.is_empty()),
            pending: Mutex::new(Vec::new()),
            syncs: Mutex::new(Vec::new()),
        })
    }

    /// A fresh marker name: a background sync that started before this
    /// commit never removes it, even for a layer removed and imported again.
    fn marker(&self, diff_id: &Digest, blob: &Digest) -> PathBuf {
        // pid and count, and the clock: a later berthd with the same pid
        // must not reuse a leftover's name.
        let n = NEXT_MARKER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.dir.join(format!(
            "{}.{}.{}-{n}-{nanos}",
            diff_id.hex(),
            blob.hex(),
            std::process::id()
        ))
    }

    /// Makes the marker for layer `diff_id` (unpacked from `blob`) durable.
    /// Call before the layer directory gets its final name.
    pub fn mark(&self, diff_id: &Digest, blob: &Digest) -> Result<Marker, BlobError> {
        let path = self.marker(diff_id, blob);
        // The content needs no fsync: lost in a crash, it reads as another
        // boot's, which is what a crash is.
        fs::write(&path, self.boot.as_deref().unwrap_or_default())
            .map_err(store::io_err("create", &path))?;
        store::sync_dir(&self.dir)?;
        Ok(Marker(path))
    }

    /// The layer behind `marker` got its final name: its marker goes at the
    /// next background sync.
    pub fn committed(&self, marker: Marker) {
        lock(&self.pending).push(marker.take());
    }

    /// Starts a background sync of the layers' file system, which then
    /// removes the markers made before it started.
    pub fn sync_soon(&self) {
        let markers = std::mem::take(&mut *lock(&self.pending));
        if markers.is_empty() {
            return;
        }
        let layers_dir = self.layers_dir.clone();
        let handle = std::thread::Builder::new()
            .name("layer-sync".into())
            .spawn(move || sync_then_remove(&layers_dir, &markers));
        match handle {
            Ok(h) => {
                let mut syncs = lock(&self.syncs);
                syncs.retain(|h| !h.is_finished());
                syncs.push(h);
            }
            // No thread: the markers stay, and the layers are rebuilt after
            // a crash, or synced by flush().
            Err(e) => log::warn!(target: "engine::image", "cannot start a layer sync: {e}"),
        }
    }

    /// Waits for the background syncs and syncs what is still pending, so
    /// that no marker is left (a clean shutdown).
    pub fn flush(&self) {
        for h in std::mem::take(&mut *lock(&self.syncs)) {
            let _ = h.join();
        }
        let markers = std::mem::take(&mut *lock(&self.pending));
        if !markers.is_empty() {
            sync_then_remove(&self.layers_dir, &markers);
        }
    }

    /// The markers a crash left: layers that may be incomplete. Names that
    /// are not markers are removed.
    pub fn leftovers(&self) -> Result<Vec<Leftover>, BlobError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(store::io_err("list", &self.dir))? {
            let entry = entry.map_err(store::io_err("list", &self.dir))?;
            let name = entry.file_name();
            let parsed = name.to_str().and_then(|n| {
                let mut parts = n.split('.');
                let (d, b) = (parts.next()?, parts.next()?);
                let this_boot = self.boot.as_ref().is_some_and(|boot| {
                    fs::read_to_string(entry.path()).is_ok_and(|m| m.trim() == boot)
                });
                Some(Leftover {
                    marker: entry.path(),
                    diff_id: Digest::from_hex(d).ok()?,
                    blob: Digest::from_hex(b).ok()?,
                    this_boot,
                })
            });
            match parsed {
                Some(l) => out.push(l),
                None => {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(out)
    }

    /// The layer `diff_id` is being removed: its markers go now.
    pub fn forget(&self, diff_id: &Digest) {
        let prefix = format!("{}.", diff_id.hex());
        let named = |p: &Path| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        };
        lock(&self.pending).retain(|p| !named(p));
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if named(&e.path()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// A leftover whose layer is whole (`this_boot`): its marker goes at
    /// the next sync, as a fresh commit's does.
    pub fn resync(&self, l: &Leftover) {
        lock(&self.pending).push(l.marker.clone());
    }

    /// Removes a leftover's marker once its layer was rebuilt (and synced)
    /// or removed.
    pub fn clear(&self, l: &Leftover) {
        let _ = fs::remove_file(&l.marker);
    }
}

/// A durable marker not yet handed to [`Unsynced::committed`]. Dropping it
/// removes the marker: the layer never got its name.
#[derive(Debug)]
pub(crate) struct Marker(PathBuf);

impl Drop for Marker {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.0);
        }
    }
}

impl Marker {
    fn take(mut self) -> PathBuf {
        std::mem::take(&mut self.0)
    }
}

fn sync_then_remove(layers_dir: &Path, markers: &[PathBuf]) {
    let synced =
        File::open(layers_dir).and_then(|d| nix::unistd::syncfs(&d).map_err(io::Error::from));
    match synced {
        Ok(()) => {
            for m in markers {
                let _ = fs::remove_file(m);
            }
        }
        // The markers stay: after a crash the layers are rebuilt.
        Err(e) => log::warn!(
            target: "engine::image",
            "cannot sync {}: {e}; its new layers are rebuilt after an unclean shutdown",
            layers_dir.display()
        ),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
