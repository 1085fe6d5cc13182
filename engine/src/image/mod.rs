//! berth's image store.
//!
//! Layout under the store root (`/var/lib/berth/images` in berthd):
//!
//! ```text
//! blobs/sha256/<hex>     every blob (manifests, configs, layer tars) named by its digest
//! layers/<diff_id hex>/  each layer unpacked once, overlayfs-style, shared by images
//! unsynced/<diff>.<blob>.N layers whose files may not be on disk yet
//! images.json            image records: manifest digest -> config id, tags, layers
//! ```
//!
//! Blobs are written to a temporary file, hashed while streaming, fsync'd and
//! renamed to their digest; a blob whose digest differs from what the
//! archive or manifest announced is an error naming both digests and what
//! the blob was. Layers are unpacked into a temporary directory and renamed
//! to their diff_id; their files are synced in the background, and a layer
//! a crash may have left incomplete is rebuilt from its blob at the next
//! open (see [`unsynced`]). `images.json` is replaced atomically.
//!
//! Use:
//!
//! ```no_run
//! # fn demo() -> Result<(), engine::image::ImageError> {
//! use std::collections::HashSet;
//! use engine::image::ImageStore;
//!
//! let store = ImageStore::open("/var/lib/berth/images".as_ref())?;
//! for img in store.import("busybox.tar".as_ref(), None)? {
//!     println!("loaded {} as {:?}", img.id, img.tags);
//! }
//! let image = store.resolve("busybox")?;      // docker.io/library/busybox:latest
//! let lowerdirs = &image.layers;               // bottom first, for overlayfs
//! # let _ = lowerdirs;
//! let in_use = HashSet::new();                 // diff_ids used by containers
//! store.remove("busybox", &in_use)?;
//! # Ok(()) }
//! ```
//!
//! Concurrency: the methods take `&self` and may be called from several
//! threads. Imports run concurrently with each other and with
//! [`ImageStore::list`]/[`ImageStore::resolve`]; [`ImageStore::remove`] and
//! [`ImageStore::gc`] wait for running imports, so garbage collection never
//! deletes a blob an import is about to record.

pub mod archive;
pub mod digest;
pub mod layer;
mod pipe;
pub mod pull;
pub mod reference;
pub mod store;
mod unsynced;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};

pub use archive::{archive_tags, Format};
use archive::{ArchiveError, ArchiveFiles, Candidate, Ctx, LayoutDir, Name, Source};
pub use digest::Digest;
pub use pull::{PullError, PullOptions, PullProgress};
pub use reference::{Reference, ReferenceError};
use store::{BlobError, BlobStore, TMP_PREFIX};
use unsynced::Unsynced;

const INDEX_FILE: &str = "images.json";
const LAYERS_DIR: &str = "layers";
const UNSYNCED_DIR: &str = "unsynced";
const INDEX_VERSION: u32 = 1;

/// Image store failures.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading or importing a source failed.
    #[error("cannot import {}", path.display())]
    Import {
        /// The archive or layout.
        path: PathBuf,
        /// Why.
        #[source]
        source: ArchiveError,
    },
    /// A blob is missing, corrupt, or cannot be written.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Pulling from a registry failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// Nothing in the store matches the reference.
    #[error("no such image: {0}")]
    NotFound(String),
    /// A short id prefix or digest matches several images.
    #[error("image reference \"{reference}\" is ambiguous: it matches {count} images")]
    Ambiguous {
        /// What was asked for.
        reference: String,
        /// How many images match.
        count: usize,
    },
    /// A given name cannot be applied.
    #[error("cannot use \"{name}\" as an image name: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A file or directory of the store cannot be used.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `images.json` does not parse.
    #[error("the image index {} is corrupt", path.display())]
    CorruptIndex {
        /// Its path.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored manifest or config does not parse.
    #[error("the stored {what} of image {image} is not valid: {message}")]
    CorruptImage {
        /// "manifest" or "config".
        what: &'static str,
        /// The image (manifest digest).
        image: Digest,
        /// The parser's message.
        message: String,
    },
    /// An image's layer directory is gone.
    #[error("layer {diff_id} of image {image} is missing from the store ({})", path.display())]
    MissingLayer {
        /// The layer.
        diff_id: Digest,
        /// The image (config id).
        image: Digest,
        /// Where it should be.
        path: PathBuf,
    },
}

/// An image that [`ImageStore::import`] added (or found already present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// The image id: the digest of its config, as Docker's.
    pub id: Digest,
    /// The digest of its manifest.
    pub manifest_digest: Digest,
    /// The tags it now carries from this import (full, normalised).
    pub tags: Vec<Reference>,
    /// Layers this import unpacked.
    pub layers_unpacked: usize,
    /// Layers that were already unpacked in the store and were reused.
    pub layers_reused: usize,
}

/// One line of [`ImageStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// The image id (config digest).
    pub id: Digest,
    /// The manifest digest.
    pub manifest_digest: Digest,
    /// Tags (full, normalised); empty for a dangling image.
    pub tags: Vec<Reference>,
    /// The config's `created` time (RFC 3339), if it has one.
    pub created: Option<String>,
    /// Sum of the uncompressed sizes of its layers, in bytes.
    pub size: u64,
}

/// A resolved image: everything needed to build a container rootfs.
#[derive(Debug, Clone)]
pub struct Image {
    /// The image id (config digest).
    pub id: Digest,
    /// The manifest digest.
    pub manifest_digest: Digest,
    /// The manifest as stored.
    pub manifest: ImageManifest,
    /// The image config (entrypoint, cmd, env, user, workdir, ...).
    pub config: ImageConfiguration,
    /// diff_ids of the layers, bottom first.
    pub diff_ids: Vec<Digest>,
    /// Unpacked layer directories, bottom first (overlayfs wants them
    /// reversed in `lowerdir=`).
    pub layers: Vec<PathBuf>,
    /// Tags (full, normalised).
    pub tags: Vec<Reference>,
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Tags removed.
    pub untagged: Vec<Reference>,
    /// Images (ids) whose records were deleted.
    pub deleted: Vec<Digest>,
    /// Blobs garbage-collected.
    pub blobs_removed: usize,
    /// Unpacked layers garbage-collected.
    pub layers_removed: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    /// Keyed by manifest digest.
    images: BTreeMap<Digest, ImageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    id: Digest,
    tags: Vec<String>,
    layers: Vec<LayerRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRecord {
    blob: Digest,
    diff_id: Digest,
    /// Size of the (possibly compressed) blob.
    size: u64,
    /// Size of the uncompressed tar.
    diff_size: u64,
}

/// The image store. See the module documentation.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    blobs: BlobStore,
    layers_dir: PathBuf,
    unsynced: Unsynced,
    index: Mutex<Index>,
    /// Imports hold it shared; garbage collection holds it exclusively.
    gc_lock: RwLock<()>,
}

/// How a user's string matched a record.
enum Match {
    Tag(Reference),
    Image,
}

impl ImageStore {
    /// Opens the store at `root`, creating it when missing and removing the
    /// temporary files and directories a crash left behind.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let layers_dir = root.join(LAYERS_DIR);
        fs::create_dir_all(&layers_dir).map_err(io_err("create", &layers_dir))?;
        let blobs = BlobStore::open(root)?;
        store::remove_temporaries(&layers_dir)?;
        store::remove_temporaries(root)?;
        let unsynced = Unsynced::open(&root.join(UNSYNCED_DIR), &layers_dir)?;
        let index = load_index(&root.join(INDEX_FILE))?;
        let store = Self {
            root: root.to_owned(),
            blobs,
            layers_dir,
            unsynced,
            index: Mutex::new(index),
            gc_lock: RwLock::new(()),
        };
        store.rebuild_unsynced()?;
        Ok(store)
    }

    /// Rebuilds, from their blobs, the layers an unclean shutdown may have
    /// left incomplete (see [`unsynced`]).
    fn rebuild_unsynced(&self) -> Result<(), ImageError> {
        let leftovers = self.unsynced.leftovers()?;
        if leftovers.is_empty() {
            return Ok(());
        }
        let ctx = Ctx {
            blobs: &self.blobs,
            layers_dir: &self.layers_dir,
            unsynced: &self.unsynced,
        };
        for l in &leftovers {
            let dir = self.layer_path(&l.diff_id);
            if l.this_boot && dir.exists() {
                // Only berthd died: the files are whole, and a container
                // restarted berthd re-adopts may have them mounted.
                self.unsynced.resync(l);
                continue;
            }
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
            }
            if !self.blobs.contains(&l.blob) {
                self.unsynced.clear(l);
                continue;
            }
            log::warn!(
                target: "engine::image",
                "rebuilding layer {} from blob {}: it was not yet on disk at an unclean shutdown",
                l.diff_id,
                l.blob
            );
            let what = format!("layer {}", l.diff_id);
            let rebuilt = archive::unpack_blob(ctx, &l.blob, &what).and_then(|spec| {
                let unpacked = spec.result.map_err(|source| ArchiveError::Layer {
                    what: what.clone(),
                    source,
                })?;
                if unpacked.diff_id != l.diff_id {
                    return Err(ArchiveError::Invalid(format!(
                        "blob {} unpacks to {}, not {}",
                        l.blob, unpacked.diff_id, l.diff_id
                    )));
                }
                archive::commit_layer(ctx, spec.dir, &l.diff_id, &l.blob)
            });
            if let Err(e) = rebuilt {
                // Images using the layer fail at container creation, naming it.
                log::error!(target: "engine::image", "cannot rebuild {what}: {e}");
            }
            // A rebuilt layer has a marker of its own until the sync below.
            self.unsynced.clear(l);
        }
        self.unsynced.sync_soon();
        self.unsynced.flush();
        Ok(())
    }

    /// Waits until every imported layer's files are on disk (berthd calls it
    /// before exiting, so a clean shutdown leaves nothing to rebuild).
    pub fn flush(&self) {
        self.unsynced.flush();
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where layer `diff_id` is (or would be) unpacked.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir.join(diff_id.hex())
    }

    /// Detects what `path` is: a `docker save` archive, an OCI archive (both
    /// possibly gzip/zstd compressed) or an OCI layout directory.
    ///
    /// Cheap for directories; for archives it lists the tar's entries.
    pub fn detect(path: &Path) -> Result<Format, ImageError> {
        let import_err = |source| ImageError::Import {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(|source| {
            import_err(ArchiveError::Io {
                path: path.to_owned(),
                source,
            })
        })?;
        if meta.is_dir() {
            return if path.join("index.json").is_file() {
                Ok(Format::OciLayout)
            } else {
                Err(import_err(ArchiveError::UnknownFormat {
                    path: path.to_owned(),
                }))
            };
        }
        archive::detect_archive(path).map_err(import_err)
    }

    /// Imports every image of the archive or layout at `path` and tags each
    /// with the names the archive carries (`RepoTags`; an OCI index entry's
    /// `io.containerd.image.name`, or its `org.opencontainers.image.ref.name`
    /// when that is a full name).
    ///
    /// `name`, when given, also tags the image. An OCI `ref.name` that is
    /// only a tag (`latest`) is applied to `name` when `name` has no tag of
    /// its own (`name:latest`); without `name` such an image is imported
    /// untagged (reachable by id). A source with several images takes a
    /// `name` only in that form, when every image brings its own tag.
    ///
    /// On failure nothing the import wrote is left in the store.
    pub fn import(
        &self,
        path: &Path,
        name: Option<&str>,
    ) -> Result<Vec<ImportedImage>, ImageError> {
        let base = match name {
            Some(n) => {
                let r = Reference::parse(n)?;
                if r.digest().is_some() {
                    return Err(ImageError::BadName {
                        name: n.to_owned(),
                        reason: "a tag cannot contain a digest".into(),
                    });
                }
                Some(r)
            }
            None => None,
        };
        let guard = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let before_blobs: HashSet<Digest> = self.blobs.list()?.into_iter().collect();
        let before_layers = self.layer_dirs()?;
        let result = self.import_inner(path, base.as_ref());
        drop(guard);
        if result.is_err() {
            // Remove what this import wrote and no image refers to. Waiting
            // for the exclusive lock means no other import is mid-way.
            let _gc = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
            let index = self.lock_index();
            let (blobs, layers) = referenced(&index);
            for d in self.blobs.list()? {
                if !before_blobs.contains(&d) && !blobs.contains(&d) {
                    self.blobs.remove(&d)?;
                }
            }
            for d in self.layer_dirs()? {
                if !before_layers.contains(&d) && !layers.contains(&d) {
                    self.remove_layer(&d)?;
                }
            }
        }
        result
    }

    fn import_inner(
        &self,
        path: &Path,
        base: Option<&Reference>,
    ) -> Result<Vec<ImportedImage>, ImageError> {
        let ctx = Ctx {
            blobs: &self.blobs,
            layers_dir: &self.layers_dir,
            unsynced: &self.unsynced,
        };
        let import_err = |source| ImageError::Import {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(|source| {
            import_err(ArchiveError::Io {
                path: path.to_owned(),
                source,
            })
        })?;
        let (candidates, mut source): (Vec<Candidate>, Box<dyn Source>) = if meta.is_dir() {
            let mut layout = LayoutDir::new(path);
            let c = archive::oci_candidates(ctx, &mut layout).map_err(import_err)?;
            (c, Box::new(layout))
        } else {
            let mut files = ArchiveFiles::read(ctx, path).map_err(import_err)?;
            let c = if files.has("manifest.json") {
                archive::docker_candidates(ctx, &mut files)
            } else if files.has("index.json") {
                archive::oci_candidates(ctx, &mut files)
            } else {
                Err(ArchiveError::UnknownFormat {
                    path: path.to_owned(),
                })
            }
            .map_err(import_err)?;
            (c, Box::new(files))
        };
        if let Some(b) = base {
            // Several images can share a base name only when each brings its
            // own tag (OCI ref.name) and the name has none.
            let distinct = b.tag().is_none()
                && candidates
                    .iter()
                    .all(|c| c.names.iter().any(|n| matches!(n, Name::TagOnly(_))));
            if candidates.len() != 1 && !distinct {
                return Err(ImageError::BadName {
                    name: b.to_string(),
                    reason: format!(
                        "{} holds {} images, and one name cannot tag them all",
                        path.display(),
                        candidates.len()
                    ),
                });
            }
        }
        let mut out = Vec::new();
        let mut records = Vec::new();
        for cand in candidates {
            let (imported, record) = self
                .commit_candidate(ctx, source.as_mut(), cand, base)
                .map_err(import_err)?;
            out.push(imported);
            records.push(record);
        }
        // Unused speculative unpacks go with the source.
        drop(source);
        self.blobs.sync_dir()?;
        archive::sync_layers(ctx).map_err(import_err)?;

        let mut index = self.lock_index();
        for (imported, record) in out.iter().zip(records) {
            record_image(&mut index, imported, record);
        }
        self.save_index(&index)?;
        Ok(out)
    }

    fn commit_candidate(
        &self,
        ctx: Ctx<'_>,
        source: &mut dyn Source,
        cand: Candidate,
        base: Option<&Reference>,
    ) -> Result<(ImportedImage, ImageRecord), ArchiveError> {
        let tags = tags_for(&cand.names, base).map_err(|e| ArchiveError::BadName {
            path: source.location().to_owned(),
            source: e,
        })?;
        let label = tags
            .first()
            .map_or_else(|| cand.label.clone(), Reference::familiar);
        let config: ImageConfiguration =
            serde_json::from_slice(&cand.config_bytes).map_err(|e| ArchiveError::BadJson {
                what: format!("the config of image {label}"),
                path: source.location().to_owned(),
                message: e.to_string(),
            })?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| d.parse::<Digest>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ArchiveError::Invalid(format!("the config of image {label}: {e}")))?;
        let layers = cand.manifest.layers();
        if diff_ids.len() != layers.len() || layers.len() != cand.layer_files.len() {
            return Err(ArchiveError::Invalid(format!(
                "image {label}: its manifest lists {} layers but its config lists {} diff_ids",
                layers.len(),
                diff_ids.len()
            )));
        }
        let config_digest = Digest::from_oci(cand.manifest.config().digest())
            .map_err(|e| ArchiveError::Invalid(format!("image {label}: config: {e}")))?;
        self.blobs.put(
            &cand.config_bytes,
            Some(&config_digest),
            &format!("the config of image {label}"),
        )?;
        let manifest_digest = self.blobs.put(
            &cand.manifest_bytes,
            cand.manifest_expected.as_ref(),
            &format!("the manifest of image {label}"),
        )?;

        let (mut unpacked_count, mut reused) = (0, 0);
        let mut layer_records = Vec::new();
        for (i, ((desc, file), diff_id)) in layers
            .iter()
            .zip(&cand.layer_files)
            .zip(&diff_ids)
            .enumerate()
        {
            let what = archive::layer_what(i, &label, file);
            let expected = Digest::from_oci(desc.digest())
                .map_err(|e| ArchiveError::Invalid(format!("{what}: {e}")))?;
            let layer_dir = self.layer_path(diff_id);
            if layer_dir.is_dir() && self.blobs.contains(&expected) {
                reused += 1;
                layer_records.push(LayerRecord {
                    blob: expected,
                    diff_id: *diff_id,
                    size: self.blobs.size(&expected).unwrap_or(desc.size()),
                    diff_size: self.known_diff_size(diff_id),
                });
                continue;
            }
            let stored = source.store(ctx, file, Some(&expected), &what)?;
            if stored.digest != expected {
                archive::discard(stored.speculative);
                return Err(BlobError::Mismatch {
                    what,
                    expected,
                    actual: stored.digest,
                }
                .into());
            }
            let diff_size = if layer_dir.is_dir() {
                archive::discard(stored.speculative);
                reused += 1;
                self.known_diff_size(diff_id)
            } else {
                let spec = match stored.speculative {
                    Some(s) => s,
                    None => archive::unpack_blob(ctx, &stored.digest, &what)?,
                };
                let archive::Speculative { dir, result } = spec;
                let unpacked = result.map_err(|source| ArchiveError::Layer {
                    what: what.clone(),
                    source,
                })?;
                if unpacked.diff_id != *diff_id {
                    return Err(BlobError::Mismatch {
                        what: format!("{what} once uncompressed (its diff_id)"),
                        expected: *diff_id,
                        actual: unpacked.diff_id,
                    }
                    .into());
                }
                if archive::commit_layer(ctx, dir, diff_id, &stored.digest)? {
                    unpacked_count += 1;
                } else {
                    reused += 1;
                }
                unpacked.size
            };
            layer_records.push(LayerRecord {
                blob: expected,
                diff_id: *diff_id,
                size: stored.size,
                diff_size,
            });
        }

        let record = ImageRecord {
            id: config_digest,
            tags: tags.iter().map(ToString::to_string).collect(),
            layers: layer_records,
            created: config.created().clone(),
        };
        Ok((
            ImportedImage {
                id: config_digest,
                manifest_digest,
                tags,
                layers_unpacked: unpacked_count,
                layers_reused: reused,
            },
            record,
        ))
    }

    fn known_diff_size(&self, diff_id: &Digest) -> u64 {
        let index = self.lock_index();
        index
            .images
            .values()
            .flat_map(|r| &r.layers)
            .find(|l| l.diff_id == *diff_id)
            .map_or(0, |l| l.diff_size)
    }

    /// Every image, sorted by first tag (dangling images last, by id).
    pub fn list(&self) -> Vec<ImageSummary> {
        let index = self.lock_index();
        let mut out: Vec<ImageSummary> = index
            .images
            .iter()
            .map(|(m, r)| ImageSummary {
                id: r.id,
                manifest_digest: *m,
                tags: parse_tags(&r.tags),
                created: r.created.clone(),
                size: r.layers.iter().map(|l| l.diff_size).sum(),
            })
            .collect();
        out.sort_by(|a, b| {
            (
                a.tags.is_empty(),
                a.tags.first().map(ToString::to_string),
                a.id,
            )
                .cmp(&(
                    b.tags.is_empty(),
                    b.tags.first().map(ToString::to_string),
                    b.id,
                ))
        });
        out
    }

    /// Finds an image by tag (`busybox`, `busybox:1.36`,
    /// `registry:5000/a/b:t`), by `name@sha256:<manifest digest>`, by image id
    /// (`sha256:<config digest>`) or manifest digest, or by a unique prefix
    /// of the id's hex (as `docker images` shows it).
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let (manifest_digest, record) = {
            let index = self.lock_index();
            let (m, _) = find(&index, reference)?;
            (m, index.images[&m].clone())
        };
        let manifest_bytes = self.blobs.read(&manifest_digest, "manifest")?;
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| ImageError::CorruptImage {
                what: "manifest",
                image: manifest_digest,
                message: e.to_string(),
            })?;
        let config_bytes = self.blobs.read(&record.id, "config")?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| ImageError::CorruptImage {
                what: "config",
                image: manifest_digest,
                message: e.to_string(),
            })?;
        let mut layers = Vec::new();
        for l in &record.layers {
            let path = self.layer_path(&l.diff_id);
            if !path.is_dir() {
                return Err(ImageError::MissingLayer {
                    diff_id: l.diff_id,
                    image: record.id,
                    path,
                });
            }
            layers.push(path);
        }
        Ok(Image {
            id: record.id,
            manifest_digest,
            manifest,
            config,
            diff_ids: record.layers.iter().map(|l| l.diff_id).collect(),
            layers,
            tags: parse_tags(&record.tags),
        })
    }

    /// Adds tag `target` to the image `source` names (moving it off any
    /// other image, as `docker tag` does).
    pub fn tag(&self, source: &str, target: &str) -> Result<Reference, ImageError> {
        let target = Reference::parse(target)?;
        if target.digest().is_some() {
            return Err(ImageError::BadName {
                name: target.to_string(),
                reason: "a tag cannot contain a digest".into(),
            });
        }
        let target = target.normalized();
        let mut index = self.lock_index();
        let (m, _) = find(&index, source)?;
        move_tag(&mut index, &target.to_string(), &m);
        if let Some(r) = index.images.get_mut(&m) {
            if !r.tags.contains(&target.to_string()) {
                r.tags.push(target.to_string());
            }
        }
        self.save_index(&index)?;
        Ok(target)
    }

    /// Removes an image reference, then garbage-collects.
    ///
    /// A tag is removed from its image, and the image record goes when its
    /// last tag does. An id or digest removes the image with all its tags.
    /// Blobs and layers that no remaining image uses are then deleted,
    /// except the layers in `in_use` (diff_ids that containers still run
    /// on). Nothing still used is removed.
    pub fn remove(&self, reference: &str, in_use: &HashSet<Digest>) -> Result<Removed, ImageError> {
        let _gc = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let mut removed = Removed::default();
        {
            let mut index = self.lock_index();
            let (m, how) = find(&index, reference)?;
            let record = index
                .images
                .get_mut(&m)
                .ok_or_else(|| ImageError::NotFound(reference.to_owned()))?;
            match how {
                Match::Tag(tag) => {
                    let text = tag.to_string();
                    record.tags.retain(|t| *t != text);
                    removed.untagged.push(tag);
                }
                Match::Image => {
                    removed.untagged.extend(parse_tags(&record.tags));
                    record.tags.clear();
                }
            }
            if record.tags.is_empty() {
                removed.deleted.push(record.id);
                index.images.remove(&m);
            }
            self.save_index(&index)?;
        }
        let (b, l) = self.gc_locked(in_use)?;
        removed.blobs_removed = b;
        removed.layers_removed = l;
        Ok(removed)
    }

    /// Deletes blobs and layers no image uses, keeping the layers in
    /// `in_use`. Returns (blobs removed, layers removed).
    pub fn gc(&self, in_use: &HashSet<Digest>) -> Result<(usize, usize), ImageError> {
        let _gc = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        self.gc_locked(in_use)
    }

    fn gc_locked(&self, in_use: &HashSet<Digest>) -> Result<(usize, usize), ImageError> {
        let (blobs, mut layers) = referenced(&self.lock_index());
        layers.extend(in_use.iter().copied());
        let mut removed = (0, 0);
        for d in self.blobs.list()? {
            if !blobs.contains(&d) {
                self.blobs.remove(&d)?;
                removed.0 += 1;
            }
        }
        for d in self.layer_dirs()? {
            if !layers.contains(&d) {
                self.remove_layer(&d)?;
                removed.1 += 1;
            }
        }
        Ok(removed)
    }

    /// Unpacked layers present on disk.
    pub fn layer_dirs(&self) -> Result<HashSet<Digest>, ImageError> {
        let mut out = HashSet::new();
        let entries = fs::read_dir(&self.layers_dir).map_err(io_err("list", &self.layers_dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.layers_dir))?;
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.insert(d);
            }
        }
        Ok(out)
    }

    /// Renames the layer out of its trusted name first, so a crash half-way
    /// through deleting it leaves only a temporary directory.
    fn remove_layer(&self, diff_id: &Digest) -> Result<(), ImageError> {
        let path = self.layer_path(diff_id);
        let doomed = self
            .layers_dir
            .join(format!("{TMP_PREFIX}rm-{}", diff_id.hex()));
        fs::rename(&path, &doomed).map_err(io_err("move away", &path))?;
        self.unsynced.forget(diff_id);
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save_index(&self, index: &Index) -> Result<(), ImageError> {
        let path = self.root.join(INDEX_FILE);
        let mut doc = index.clone();
        doc.version = INDEX_VERSION;
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|source| ImageError::CorruptIndex {
            path: path.clone(),
            source,
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.root)
            .map_err(io_err("create a temporary file in", &self.root))?;
        tmp.write_all(&bytes).map_err(io_err("write", tmp.path()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("fsync", tmp.path()))?;
        tmp.persist(&path).map_err(|e| ImageError::Io {
            action: "replace",
            path: path.clone(),
            source: e.error,
        })?;
        store::sync_dir(&self.root)?;
        Ok(())
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

fn load_index(path: &Path) -> Result<Index, ImageError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ImageError::CorruptIndex {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index {
            version: INDEX_VERSION,
            images: BTreeMap::new(),
        }),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Blobs and layers the index refers to.
fn referenced(index: &Index) -> (HashSet<Digest>, HashSet<Digest>) {
    let mut blobs = HashSet::new();
    let mut layers = HashSet::new();
    for (m, r) in &index.images {
        blobs.insert(*m);
        blobs.insert(r.id);
        for l in &r.layers {
            blobs.insert(l.blob);
            layers.insert(l.diff_id);
        }
    }
    (blobs, layers)
}

/// Records an imported or pulled image: its tags move to it from any other
/// image, and an image already known keeps its tags and gains the new ones.
fn record_image(index: &mut Index, imported: &ImportedImage, record: ImageRecord) {
    for tag in &imported.tags {
        move_tag(index, &tag.to_string(), &imported.manifest_digest);
    }
    match index.images.get_mut(&imported.manifest_digest) {
        Some(existing) => {
            for t in record.tags {
                if !existing.tags.contains(&t) {
                    existing.tags.push(t);
                }
            }
        }
        None => {
            index.images.insert(imported.manifest_digest, record);
        }
    }
}

/// Takes `tag` off every image other than `to` (the old image stays, dangling
/// if that was its last tag, as in Docker).
fn move_tag(index: &mut Index, tag: &str, to: &Digest) {
    for (m, r) in index.images.iter_mut() {
        if m != to {
            r.tags.retain(|t| t != tag);
        }
    }
}

fn parse_tags(tags: &[String]) -> Vec<Reference> {
    tags.iter()
        .filter_map(|t| Reference::parse(t).ok())
        .collect()
}

/// The tags an imported image gets; see [`ImageStore::import`].
fn tags_for(names: &[Name], base: Option<&Reference>) -> Result<Vec<Reference>, ReferenceError> {
    let mut out: Vec<Reference> = Vec::new();
    let mut push = |r: Reference| {
        if !out.contains(&r) {
            out.push(r);
        }
    };
    let mut base_used = false;
    for n in names {
        match n {
            Name::Full(r) => push(r.clone()),
            Name::TagOnly(t) => {
                if let Some(b) = base.filter(|b| b.tag().is_none()) {
                    push(b.with_tag(t)?);
                    base_used = true;
                }
            }
        }
    }
    if let Some(b) = base {
        if !base_used {
            push(b.normalized());
        }
    }
    Ok(out)
}

/// Finds the record `text` names; see [`ImageStore::resolve`].
fn find(index: &Index, text: &str) -> Result<(Digest, Match), ImageError> {
    let not_found = || ImageError::NotFound(text.to_owned());
    if let Ok(d) = text.parse::<Digest>() {
        let hits: Vec<Digest> = index
            .images
            .iter()
            .filter(|(m, r)| **m == d || r.id == d)
            .map(|(m, _)| *m)
            .collect();
        return match hits.as_slice() {
            [] => Err(not_found()),
            [one] => Ok((*one, Match::Image)),
            many => {
                // Several manifests of one config: prefer the exact manifest.
                if index.images.contains_key(&d) {
                    Ok((d, Match::Image))
                } else {
                    Err(ImageError::Ambiguous {
                        reference: text.to_owned(),
                        count: many.len(),
                    })
                }
            }
        };
    }
    let parsed = Reference::parse(text);
    if let Ok(r) = &parsed {
        if let Some(d) = r.digest() {
            return if index.images.contains_key(d) {
                Ok((*d, Match::Image))
            } else {
                Err(not_found())
            };
        }
        let tag = r.normalized();
        let text_tag = tag.to_string();
        if let Some((m, _)) = index
            .images
            .iter()
            .find(|(_, rec)| rec.tags.contains(&text_tag))
        {
            return Ok((*m, Match::Tag(tag)));
        }
    }
    let is_hex =
        !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        let lower = text.to_ascii_lowercase();
        let hits: HashSet<Digest> = index
            .images
            .values()
            .filter(|r| r.id.hex().starts_with(&lower))
            .map(|r| r.id)
            .collect();
        match hits.len() {
            0 => {}
            1 => {
                let id = hits.into_iter().next().ok_or_else(not_found)?;
                let manifests: Vec<Digest> = index
                    .images
                    .iter()
                    .filter(|(_, r)| r.id == id)
                    .map(|(m, _)| *m)
                    .collect();
                return match manifests.as_slice() {
                    [one] => Ok((*one, Match::Image)),
                    many => Err(ImageError::Ambiguous {
                        reference: text.to_owned(),
                        count: many.len(),
                    }),
                };
            }
            n => {
                return Err(ImageError::Ambiguous {
                    reference: text.to_owned(),
                    count: n,
                })
            }
        }
    }
    match parsed {
        Err(e) if !is_hex => Err(e.into()),
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &[u8], tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(id),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            layers: Vec::new(),
            created: None,
        }
    }

    #[test]
    fn find_by_tag_id_prefix_and_digest() {
        let mut index = Index::default();
        let m1 = Digest::of(b"m1");
        let m2 = Digest::of(b"m2");
        index
            .images
            .insert(m1, rec(b"c1", &["docker.io/library/busybox:latest"]));
        index
            .images
            .insert(m2, rec(b"c2", &["registry:5000/a/b:t"]));

        assert!(matches!(find(&index, "busybox"), Ok((m, Match::Tag(_))) if m == m1));
        assert!(matches!(find(&index, "docker.io/library/busybox:latest"), Ok((m, _)) if m == m1));
        assert!(matches!(find(&index, "registry:5000/a/b:t"), Ok((m, _)) if m == m2));
        let id2 = Digest::of(b"c2");
        assert!(matches!(find(&index, &id2.to_string()), Ok((m, Match::Image)) if m == m2));
        assert!(matches!(find(&index, &id2.hex()[..12]), Ok((m, Match::Image)) if m == m2));
        assert!(matches!(find(&index, &m2.to_string()), Ok((m, _)) if m == m2));
        assert!(matches!(find(&index, &format!("busybox@{m1}")), Ok((m, _)) if m == m1));
        assert!(matches!(
            find(&index, "busybox:1.0"),
            Err(ImageError::NotFound(_))
        ));
        assert!(matches!(
            find(&index, "Bad Name"),
            Err(ImageError::Reference(_))
        ));
    }

    #[test]
    fn the_store_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<ImageStore>();
    }

    #[test]
    fn tags_from_names_and_base() {
        let base = Reference::parse("myimg").unwrap();
        let full = Name::Full(Reference::parse("busybox:1").unwrap().normalized());
        let only = Name::TagOnly("v2".into());
        let t = |names: &[Name], b: Option<&Reference>| -> Vec<String> {
            tags_for(names, b)
                .unwrap()
                .iter()
                .map(|r| r.familiar())
                .collect()
        };
        assert_eq!(t(std::slice::from_ref(&full), None), vec!["busybox:1"]);
        assert_eq!(t(std::slice::from_ref(&only), None), Vec::<String>::new());
        assert_eq!(
            t(std::slice::from_ref(&only), Some(&base)),
            vec!["myimg:v2"]
        );
        assert_eq!(t(&[], Some(&base)), vec!["myimg:latest"]);
        let tagged = Reference::parse("myimg:x").unwrap();
        assert_eq!(
            t(&[full, only], Some(&tagged)),
            vec!["busybox:1", "myimg:x"]
        );
    }
}
