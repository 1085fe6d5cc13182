//! Reading image sources: `docker save` archives (`manifest.json` with
//! `<id>/layer.tar` or, from newer Docker, `blobs/sha256/...`), OCI archives
//! (a tar of an OCI layout) and OCI image layout directories. Archives may be
//! plain, gzip or zstd compressed; the format is detected from the content.
//!
//! An archive is read in one pass. Every file that looks like a layer
//! (compressed, or a tar) is streamed into the blob store while, on a second
//! thread, it is decompressed, hashed and unpacked into a temporary layer
//! directory: the data is read once, and hashing/writing overlaps with
//! decompression/extraction. Whether it really is a layer, and of which
//! image, is known only once `manifest.json`/`index.json` are read (often at
//! the end of the archive); unused speculative unpacks are discarded.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::layer::{self, Compression, LayerError, Unpacked};
use super::pipe::{self, read_up_to, CHUNK};
use super::reference::{Reference, ReferenceError};
use super::store::{self, BlobError, BlobStore, TMP_PREFIX};
use super::unsynced::Unsynced;

/// Files at most this big that do not look like layers are kept in memory
/// during the pass (configs, manifests, index.json) and stored only if used.
const INLINE_MAX: u64 = 4 * 1024 * 1024;
/// Chunks in flight between the reading and the unpacking thread.
const PIPELINE_DEPTH: usize = 8;
const MAX_LINK_HOPS: usize = 16;
const MAX_INDEX_DEPTH: usize = 4;

/// Annotation carrying a tag (or full name) in an OCI layout's index.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and Docker put on index entries with the full name.
pub const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";

/// Import failures that are about the source, not the store.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The source cannot be opened or read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The archive or layout.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Neither `manifest.json` nor an OCI `index.json` was found.
    #[error("{} is not a docker save archive, an OCI archive or an OCI layout (no manifest.json or index.json)", path.display())]
    UnknownFormat {
        /// The source.
        path: PathBuf,
    },
    /// A JSON document of the source does not parse.
    #[error("{what} in {} is not valid: {message}", path.display())]
    BadJson {
        /// Which document.
        what: String,
        /// The source.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A file the manifests point at is not in the source.
    #[error("{what} is missing from {}: no file \"{file}\"", path.display())]
    MissingFile {
        /// What the file was needed for.
        what: String,
        /// The path inside the source.
        file: String,
        /// The source.
        path: PathBuf,
    },
    /// The manifest and config disagree, an index has no usable entry, etc.
    #[error("{0}")]
    Invalid(String),
    /// A name carried by the archive (or given) is not a valid reference.
    #[error("image name in {}", path.display())]
    BadName {
        /// The source.
        path: PathBuf,
        /// What is wrong with the name.
        #[source]
        source: ReferenceError,
    },
    /// Storing a blob failed, or a blob did not match its digest.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A layer could not be unpacked.
    #[error("cannot unpack {what}")]
    Layer {
        /// Which layer of which image.
        what: String,
        /// Why.
        #[source]
        source: LayerError,
    },
    /// The unpacking thread died.
    #[error("the layer unpacking thread for {0} panicked")]
    WorkerPanicked(String),
}

/// Where the store keeps blobs and unpacked layers, as the import needs them.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub blobs: &'a BlobStore,
    pub layers_dir: &'a Path,
    pub unsynced: &'a Unsynced,
}

/// A layer unpacked into a temporary directory, not yet trusted.
pub(crate) struct Speculative {
    pub dir: tempfile::TempDir,
    pub result: Result<Unpacked, LayerError>,
}

/// A blob that is now in the store.
pub(crate) struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
    pub speculative: Option<Speculative>,
}

/// A name an archive gives an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Name {
    /// A full reference (`RepoTags`, a full `ref.name`).
    Full(Reference),
    /// Only a tag (an OCI `ref.name` such as `latest`): needs a base name.
    TagOnly(String),
}

/// One image found in a source, before it is committed to the store.
pub(crate) struct Candidate {
    /// Human name for errors: the first name, or the manifest's location.
    pub label: String,
    pub names: Vec<Name>,
    /// The manifest's exact bytes (its digest is the image's manifest digest).
    pub manifest_bytes: Vec<u8>,
    /// The digest the source announced for the manifest, if any.
    pub manifest_expected: Option<Digest>,
    pub manifest: ImageManifest,
    pub config_bytes: Vec<u8>,
    /// Where each layer's blob is in the source, bottom first.
    pub layer_files: Vec<String>,
}

/// A source of blobs by path: a read archive, or a layout directory.
pub(crate) trait Source {
    /// The source's location, for messages.
    fn location(&self) -> &Path;
    /// The bytes of a (small) file, or None when it is not there.
    fn read(&mut self, ctx: Ctx<'_>, file: &str) -> Result<Option<Vec<u8>>, ArchiveError>;
    /// Puts the file into the blob store (if it is not already there under
    /// `expected`) and returns it, with any speculative unpack.
    fn store(
        &mut self,
        ctx: Ctx<'_>,
        file: &str,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<StoredBlob, ArchiveError>;
}

// ---------------------------------------------------------------------------
// One pass over an archive.

enum Item {
    Inline(Vec<u8>),
    Stored(StoredBlob),
    /// A blob the store already held, skipped in the archive.
    Known(Digest),
    Link(String),
}

/// The files of an archive after one pass.
pub(crate) struct ArchiveFiles {
    path: PathBuf,
    items: HashMap<String, Item>,
}

impl ArchiveFiles {
    /// Reads the archive at `path` (plain, gzip or zstd tar) in one pass.
    pub fn read(ctx: Ctx<'_>, path: &Path) -> Result<Self, ArchiveError> {
        let io_err = |source| ArchiveError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let mut input = BufReader::with_capacity(CHUNK, file);
        let compression = Compression::detect(input.fill_buf().map_err(io_err)?)
            .map_err(|e| ArchiveError::Invalid(format!("cannot read {}: {e}", path.display())))?;
        let decoded = compression.decoder(input).map_err(io_err)?;
        let mut archive = tar::Archive::new(decoded);
        let mut items = HashMap::new();
        for entry in archive.entries().map_err(io_err)? {
            let mut entry = entry.map_err(io_err)?;
            let raw = entry.path_bytes();
            let Some(name) = archive_path(&raw) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let item = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if let Some(d) = blob_path_digest(&name).filter(|d| ctx.blobs.contains(d)) {
                        Item::Known(d)
                    } else {
                        let size = entry.size();
                        ingest(ctx, &mut entry, size, &name).map_err(|e| match e {
                            IngestError::Read(source) => io_err(source),
                            IngestError::Other(e) => e,
                        })?
                    }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let resolved = if kind == tar::EntryType::Symlink {
                        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                        join_relative(dir, &target)
                    } else {
                        archive_path(target.as_bytes())
                    };
                    match resolved {
                        Some(t) => Item::Link(t),
                        None => continue,
                    }
                }
                _ => continue,
            };
            items.insert(name, item);
        }
        Ok(Self {
            path: path.to_owned(),
            items,
        })
    }

    /// True when the archive holds `file`.
    pub fn has(&self, file: &str) -> bool {
        self.resolve(file).is_some()
    }

    fn resolve(&self, file: &str) -> Option<String> {
        let mut name = file.to_owned();
        for _ in 0..MAX_LINK_HOPS {
            match self.items.get(&name)? {
                Item::Link(target) => name = target.clone(),
                _ => return Some(name),
            }
        }
        None
    }
}

impl Source for ArchiveFiles {
    fn location(&self) -> &Path {
        &self.path
    }

    fn read(&mut self, ctx: Ctx<'_>, file: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let Some(name) = self.resolve(file) else {
            return Ok(None);
        };
        Ok(match self.items.get(&name) {
            Some(Item::Inline(bytes)) => Some(bytes.clone()),
            Some(Item::Stored(b)) => Some(ctx.blobs.read(&b.digest, file)?),
            Some(Item::Known(d)) => Some(ctx.blobs.read(d, file)?),
            Some(Item::Link(_)) | None => None,
        })
    }

    fn store(
        &mut self,
        ctx: Ctx<'_>,
        file: &str,
        _expected: Option<&Digest>,
        what: &str,
    ) -> Result<StoredBlob, ArchiveError> {
        let missing = || ArchiveError::MissingFile {
            what: what.to_owned(),
            file: file.to_owned(),
            path: self.path.clone(),
        };
        let name = self.resolve(file).ok_or_else(missing)?;
        match self.items.get_mut(&name) {
            Some(Item::Inline(bytes)) => {
                let digest = ctx.blobs.put(bytes, None, what)?;
                Ok(StoredBlob {
                    digest,
                    size: bytes.len() as u64,
                    compression: Compression::detect(bytes).unwrap_or(Compression::None),
                    speculative: None,
                })
            }
            Some(Item::Stored(b)) => Ok(StoredBlob {
                digest: b.digest,
                size: b.size,
                compression: b.compression,
                speculative: b.speculative.take(),
            }),
            Some(Item::Known(d)) => known_blob(ctx, d, what),
            Some(Item::Link(_)) | None => Err(missing()),
        }
    }
}

fn known_blob(ctx: Ctx<'_>, d: &Digest, what: &str) -> Result<StoredBlob, ArchiveError> {
    let mut head = [0u8; 8];
    let mut f = ctx.blobs.open_blob(d, what)?;
    let n = read_up_to(&mut f, &mut head).map_err(|source| ArchiveError::Io {
        path: ctx.blobs.path(d),
        source,
    })?;
    Ok(StoredBlob {
        digest: *d,
        size: ctx.blobs.size(d).unwrap_or(0),
        compression: Compression::detect(&head[..n]).unwrap_or(Compression::None),
        speculative: None,
    })
}

/// An OCI image layout directory.
pub(crate) struct LayoutDir {
    path: PathBuf,
}

impl LayoutDir {
    /// A layout at `path` (a directory with `oci-layout` and `index.json`).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    fn file(&self, file: &str) -> Option<PathBuf> {
        // Only names this module builds reach here (index.json, oci-layout,
        // blobs/<alg>/<hex>); still, never leave the layout.
        if file.split('/').any(|c| c == ".." || c.is_empty()) {
            return None;
        }
        Some(self.path.join(file))
    }
}

impl Source for LayoutDir {
    fn location(&self) -> &Path {
        &self.path
    }

    fn read(&mut self, _ctx: Ctx<'_>, file: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let Some(path) = self.file(file) else {
            return Ok(None);
        };
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ArchiveError::Io { path, source }),
        }
    }

    fn store(
        &mut self,
        ctx: Ctx<'_>,
        file: &str,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<StoredBlob, ArchiveError> {
        if let Some(d) = expected.filter(|d| ctx.blobs.contains(d)) {
            return known_blob(ctx, d, what);
        }
        let missing = || ArchiveError::MissingFile {
            what: what.to_owned(),
            file: file.to_owned(),
            path: self.path.clone(),
        };
        let path = self.file(file).ok_or_else(missing)?;
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(source) => return Err(ArchiveError::Io { path, source }),
        };
        // Layers (and anything big) are streamed; a small config is read whole.
        let size = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        match ingest(ctx, &mut f, size.max(INLINE_MAX + 1), what) {
            Ok(Item::Stored(b)) => Ok(b),
            Ok(_) => Err(ArchiveError::Invalid(format!(
                "{what}: unexpected small blob"
            ))),
            Err(IngestError::Read(source)) => Err(ArchiveError::Io { path, source }),
            Err(IngestError::Other(e)) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Streaming a file into the store, unpacking it on the side when it looks
// like a layer.

enum IngestError {
    Read(io::Error),
    Other(ArchiveError),
}

impl From<BlobError> for IngestError {
    fn from(e: BlobError) -> Self {
        IngestError::Other(e.into())
    }
}

fn ingest(ctx: Ctx<'_>, reader: &mut dyn Read, size: u64, what: &str) -> Result<Item, IngestError> {
    let mut head = vec![0u8; 512];
    let n = read_up_to(reader, &mut head).map_err(IngestError::Read)?;
    head.truncate(n);
    let layer_like = layer::looks_like_layer(&head);
    if !layer_like && size <= INLINE_MAX {
        let mut bytes = head;
        reader.read_to_end(&mut bytes).map_err(IngestError::Read)?;
        return Ok(Item::Inline(bytes));
    }
    let compression = Compression::detect(&head).unwrap_or(Compression::None);
    let mut writer = ctx.blobs.writer()?;
    let write_err = |e| BlobError::Io {
        action: format!("write {what} to"),
        path: ctx.blobs.dir().to_owned(),
        source: e,
    };
    if !layer_like {
        io::Write::write_all(&mut writer, &head).map_err(write_err)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(IngestError::Read(e)),
            };
            io::Write::write_all(&mut writer, &buf[..n]).map_err(write_err)?;
        }
        let (digest, size) = writer.commit(None, what)?;
        return Ok(Item::Stored(StoredBlob {
            digest,
            size,
            compression,
            speculative: None,
        }));
    }

    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(ctx.layers_dir)
        .map_err(|e| {
            IngestError::Other(ArchiveError::Blob(BlobError::Io {
                action: "create a temporary directory in".into(),
                path: ctx.layers_dir.to_owned(),
                source: e,
            }))
        })?;
    let (tx, rx) = pipe::pipe(PIPELINE_DEPTH);
    let dest = tmp.path().to_owned();
    // A plain tar's diff_id is its blob digest, computed here anyway.
    let hash_plain = compression != Compression::None;
    let (read_result, worker) = std::thread::scope(|s| {
        let worker = s.spawn(move || layer::unpack_stream(rx, &dest, hash_plain));
        let mut tx = Some(tx);
        let mut chunk = head;
        let result = loop {
            if !chunk.is_empty() {
                if let Err(e) = io::Write::write_all(&mut writer, &chunk) {
                    break Err(IngestError::from(write_err(e)));
                }
                chunk = pipe::feed(&mut tx, chunk);
            }
            chunk.resize(CHUNK, 0);
            match read_up_to(reader, &mut chunk) {
                Ok(0) => break Ok(()),
                Ok(n) => chunk.truncate(n),
                Err(e) => break Err(IngestError::Read(e)),
            }
        };
        drop(tx);
        (result, worker.join())
    });
    read_result?;
    let result =
        worker.map_err(|_| IngestError::Other(ArchiveError::WorkerPanicked(what.to_owned())))?;
    let (digest, size) = writer.commit(None, what)?;
    let result = result.map(|(diff_id, len)| Unpacked {
        diff_id: diff_id.unwrap_or(digest),
        size: len,
    });
    Ok(Item::Stored(StoredBlob {
        digest,
        size,
        compression,
        speculative: Some(Speculative { dir: tmp, result }),
    }))
}

// ---------------------------------------------------------------------------
// Finding the images of a source.

/// Which kind of source a path is, detected from its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `docker save` output (`manifest.json`).
    DockerArchive,
    /// A tar of an OCI image layout.
    OciArchive,
    /// An OCI image layout directory.
    OciLayout,
}

/// An archive file as a tar stream, decompressed if it is compressed.
fn open_archive(path: &Path) -> Result<tar::Archive<Box<dyn Read + Send>>, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut input = BufReader::with_capacity(CHUNK, file);
    let compression = Compression::detect(input.fill_buf().map_err(io_err)?)
        .map_err(|e| ArchiveError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    Ok(tar::Archive::new(
        compression.decoder(input).map_err(io_err)?,
    ))
}

/// Detects the format of an archive by listing its entries (without
/// storing anything).
pub(crate) fn detect_archive(path: &Path) -> Result<Format, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let mut archive = open_archive(path)?;
    let mut oci = false;
    for entry in archive.entries().map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        match archive_path(&entry.path_bytes()).as_deref() {
            Some("manifest.json") => return Ok(Format::DockerArchive),
            Some("index.json") => oci = true,
            _ => {}
        }
    }
    if oci {
        Ok(Format::OciArchive)
    } else {
        Err(ArchiveError::UnknownFormat {
            path: path.to_owned(),
        })
    }
}

/// The names an archive's images are imported under when no name is given
/// (berthd at boot): `docker save`'s `RepoTags`, or the full names in an OCI
/// archive's or OCI layout directory's `index.json`
/// (`io.containerd.image.name`, or a `org.opencontainers.image.ref.name`
/// that is a full reference; a bare tag names nothing without a base name).
/// Reads only `manifest.json` and `index.json`, storing nothing, so `berth-build` can check workloads'
/// images before baking the archive.
pub fn archive_tags(path: &Path) -> Result<Vec<Reference>, ArchiveError> {
    let (manifest, index) = if path.is_dir() {
        // An OCI image layout: its index.json names the images.
        let file = path.join("index.json");
        let bytes = fs::read(&file).map_err(|source| ArchiveError::Io { path: file, source })?;
        (None, Some(bytes))
    } else {
        archive_json(path)?
    };
    let bad_name = |source| ArchiveError::BadName {
        path: path.to_owned(),
        source,
    };
    let mut out: Vec<Reference> = Vec::new();
    if let Some(bytes) = manifest {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
        }
        let entries: Vec<Entry> =
            serde_json::from_slice(&bytes).map_err(|e| ArchiveError::BadJson {
                what: "manifest.json".into(),
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        for tag in entries
            .into_iter()
            .flat_map(|e| e.repo_tags.unwrap_or_default())
        {
            out.push(Reference::parse(&tag).map_err(bad_name)?.normalized());
        }
    } else if let Some(bytes) = index {
        let index = parse_index(&bytes, "index.json", path)?;
        for ann in index
            .manifests()
            .iter()
            .filter_map(|d| d.annotations().as_ref())
        {
            if let Some(full) = ann.get(CONTAINERD_NAME_ANNOTATION) {
                out.push(Reference::parse(full).map_err(bad_name)?.normalized());
            } else if let Some(n) = ann.get(REF_NAME_ANNOTATION) {
                if let Name::Full(r) = ref_name(n).map_err(bad_name)? {
                    out.push(r);
                }
            }
        }
    } else {
        return Err(ArchiveError::UnknownFormat {
            path: path.to_owned(),
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// An archive's `manifest.json` and `index.json`, each if present.
type JsonFiles = (Option<Vec<u8>>, Option<Vec<u8>>);

/// `manifest.json` and `index.json` of an archive (either may be absent).
fn archive_json(path: &Path) -> Result<JsonFiles, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let mut archive = open_archive(path)?;
    let (mut manifest, mut index) = (None, None);
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let slot = match archive_path(&entry.path_bytes()).as_deref() {
            Some("manifest.json") => &mut manifest,
            Some("index.json") => &mut index,
            _ => continue,
        };
        let mut bytes = Vec::new();
        (&mut entry)
            .take(INLINE_MAX)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        *slot = Some(bytes);
    }
    Ok((manifest, index))
}

/// The images of a `docker save` archive.
pub(crate) fn docker_candidates(
    ctx: Ctx<'_>,
    src: &mut ArchiveFiles,
) -> Result<Vec<Candidate>, ArchiveError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let location = src.path.clone();
    let bytes = src
        .read(ctx, "manifest.json")?
        .ok_or_else(|| ArchiveError::UnknownFormat {
            path: location.clone(),
        })?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&bytes).map_err(|e| ArchiveError::BadJson {
            what: "manifest.json".into(),
            path: location.clone(),
            message: e.to_string(),
        })?;
    let mut out = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&tag).map_err(|source| ArchiveError::BadName {
                path: location.clone(),
                source,
            })?;
            names.push(Name::Full(r.normalized()));
        }
        let label = names
            .first()
            .map(name_label)
            .unwrap_or_else(|| format!("#{} of {}", i + 1, location.display()));
        let config_what = format!("the config of image {label}");
        let config_bytes =
            src.read(ctx, &entry.config)?
                .ok_or_else(|| ArchiveError::MissingFile {
                    what: config_what.clone(),
                    file: entry.config.clone(),
                    path: location.clone(),
                })?;
        let config_digest = Digest::of(&config_bytes);
        // Docker names the config after its digest: check it when it does.
        let stem = entry
            .config
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json");
        if let Ok(named) = Digest::from_hex(stem) {
            if named != config_digest {
                return Err(BlobError::Mismatch {
                    what: config_what,
                    expected: named,
                    actual: config_digest,
                }
                .into());
            }
        }
        // Store the layers now: the synthesized manifest needs their digests.
        let mut layers = Vec::new();
        for (n, file) in entry.layers.iter().enumerate() {
            let what = layer_what(n, &label, file);
            let blob = src.store(ctx, file, None, &what)?;
            layers.push(ManifestDescriptor {
                media_type: match blob.compression {
                    Compression::None => "application/vnd.oci.image.layer.v1.tar",
                    Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                    Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                },
                digest: blob.digest,
                size: blob.size,
            });
            // Put the speculative unpack back for the commit step.
            if let Some(name) = src.resolve(file) {
                src.items.insert(name, Item::Stored(blob));
            }
        }
        let manifest_bytes = serde_json::to_vec(&SynthManifest {
            schema_version: 2,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            config: ManifestDescriptor {
                media_type: "application/vnd.oci.image.config.v1+json",
                digest: config_digest,
                size: config_bytes.len() as u64,
            },
            layers,
        })
        .map_err(|e| {
            ArchiveError::Invalid(format!("cannot write a manifest for image {label}: {e}"))
        })?;
        let manifest = parse_manifest(&manifest_bytes, &label, &location)?;
        out.push(Candidate {
            label,
            names,
            manifest_bytes,
            manifest_expected: None,
            manifest,
            config_bytes,
            layer_files: entry.layers,
        });
    }
    Ok(out)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SynthManifest {
    schema_version: u32,
    media_type: &'static str,
    config: ManifestDescriptor,
    layers: Vec<ManifestDescriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDescriptor {
    media_type: &'static str,
    digest: Digest,
    size: u64,
}

/// The images of an OCI layout (a directory, or read from an archive).
pub(crate) fn oci_candidates(
    ctx: Ctx<'_>,
    src: &mut dyn Source,
) -> Result<Vec<Candidate>, ArchiveError> {
    let location = src.location().to_owned();
    let index_bytes = src
        .read(ctx, "index.json")?
        .ok_or_else(|| ArchiveError::UnknownFormat {
            path: location.clone(),
        })?;
    if let Some(layout) = src.read(ctx, "oci-layout")? {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Layout {
            image_layout_version: String,
        }
        let layout: Layout =
            serde_json::from_slice(&layout).map_err(|e| ArchiveError::BadJson {
                what: "oci-layout".into(),
                path: location.clone(),
                message: e.to_string(),
            })?;
        if !layout.image_layout_version.starts_with("1.") {
            return Err(ArchiveError::Invalid(format!(
                "{} is an OCI layout of version {}, berth reads 1.x",
                location.display(),
                layout.image_layout_version
            )));
        }
    }
    let index = parse_index(&index_bytes, "index.json", &location)?;
    let mut out: Vec<Candidate> = Vec::new();
    for desc in index.manifests() {
        let mut names = Vec::new();
        if let Some(ann) = desc.annotations() {
            if let Some(full) = ann.get(CONTAINERD_NAME_ANNOTATION) {
                let r = Reference::parse(full).map_err(|source| ArchiveError::BadName {
                    path: location.clone(),
                    source,
                })?;
                names.push(Name::Full(r.normalized()));
            } else if let Some(n) = ann.get(REF_NAME_ANNOTATION) {
                names.push(ref_name(n).map_err(|source| ArchiveError::BadName {
                    path: location.clone(),
                    source,
                })?);
            }
        }
        let (digest, bytes) = resolve_manifest(ctx, src, desc, 0)?;
        if let Some(existing) = out.iter_mut().find(|c| c.manifest_expected == Some(digest)) {
            existing.names.extend(names);
            continue;
        }
        let label = names
            .first()
            .map(name_label)
            .unwrap_or_else(|| format!("{digest} of {}", location.display()));
        let manifest = parse_manifest(&bytes, &label, &location)?;
        let config_desc = manifest.config();
        let config_digest = Digest::from_oci(config_desc.digest())
            .map_err(|e| ArchiveError::Invalid(format!("image {label}: config: {e}")))?;
        let config_what = format!("the config of image {label}");
        let config_file = blob_file(&config_digest);
        let config_bytes =
            src.read(ctx, &config_file)?
                .ok_or_else(|| ArchiveError::MissingFile {
                    what: config_what.clone(),
                    file: config_file.clone(),
                    path: location.clone(),
                })?;
        let actual = Digest::of(&config_bytes);
        if actual != config_digest {
            return Err(BlobError::Mismatch {
                what: config_what,
                expected: config_digest,
                actual,
            }
            .into());
        }
        let mut layer_files = Vec::new();
        for (n, l) in manifest.layers().iter().enumerate() {
            let d = Digest::from_oci(l.digest()).map_err(|e| {
                ArchiveError::Invalid(format!("layer {} of image {label}: {e}", n + 1))
            })?;
            layer_files.push(blob_file(&d));
        }
        out.push(Candidate {
            label,
            names,
            manifest_bytes: bytes,
            manifest_expected: Some(digest),
            manifest,
            config_bytes,
            layer_files,
        });
    }
    if out.is_empty() {
        return Err(ArchiveError::Invalid(format!(
            "{} holds no image (its index.json lists no manifest)",
            location.display()
        )));
    }
    Ok(out)
}

/// Follows a descriptor through image indexes (picking this machine's
/// platform) to an image manifest; returns its digest and verified bytes.
fn resolve_manifest(
    ctx: Ctx<'_>,
    src: &mut dyn Source,
    desc: &Descriptor,
    depth: usize,
) -> Result<(Digest, Vec<u8>), ArchiveError> {
    let location = src.location().to_owned();
    let digest = Digest::from_oci(desc.digest())
        .map_err(|e| ArchiveError::Invalid(format!("{}: manifest: {e}", location.display())))?;
    let file = blob_file(&digest);
    let what = format!("manifest {digest}");
    let bytes = src
        .read(ctx, &file)?
        .ok_or_else(|| ArchiveError::MissingFile {
            what: what.clone(),
            file: file.clone(),
            path: location.clone(),
        })?;
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(BlobError::Mismatch {
            what,
            expected: digest,
            actual,
        }
        .into());
    }
    let media = desc.media_type().to_string();
    let is_index = media.contains("image.index") || media.contains("manifest.list") || {
        // No or unknown media type: look at the document.
        !media.contains("manifest")
            && serde_json::from_slice::<serde_json::Value>(&bytes)
                .map(|v| v.get("manifests").is_some())
                .unwrap_or(false)
    };
    if !is_index {
        return Ok((digest, bytes));
    }
    if depth >= MAX_INDEX_DEPTH {
        return Err(ArchiveError::Invalid(format!(
            "{}: image indexes nested more than {MAX_INDEX_DEPTH} deep",
            location.display()
        )));
    }
    let index = parse_index(&bytes, &format!("image index {digest}"), &location)?;
    let chosen = pick_platform(index.manifests()).ok_or_else(|| {
        let have: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(|d| d.platform().as_ref())
            .map(|p| format!("{}/{}", p.os(), p.architecture()))
            .collect();
        ArchiveError::Invalid(format!(
            "image index {digest} in {} has no manifest for {}/{} (it has {})",
            location.display(),
            "linux",
            host_arch(),
            if have.is_empty() {
                "none".to_owned()
            } else {
                have.join(", ")
            }
        ))
    })?;
    resolve_manifest(ctx, src, &chosen, depth + 1)
}

/// The manifest for linux on this machine's architecture, or the only
/// manifest when none says its platform.
pub(crate) fn pick_platform(manifests: &[Descriptor]) -> Option<Descriptor> {
    let arch = host_arch();
    manifests
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        })
        .or_else(|| match manifests {
            [only] if only.platform().is_none() => Some(only),
            _ => None,
        })
        .cloned()
}

/// This machine's architecture in OCI's (Go's) spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn parse_index(bytes: &[u8], what: &str, location: &Path) -> Result<ImageIndex, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadJson {
        what: what.to_owned(),
        path: location.to_owned(),
        message: e.to_string(),
    })
}

fn parse_manifest(
    bytes: &[u8],
    label: &str,
    location: &Path,
) -> Result<ImageManifest, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadJson {
        what: format!("the manifest of image {label}"),
        path: location.to_owned(),
        message: e.to_string(),
    })
}

/// An OCI `ref.name`: a full reference when it has a '/', ':' or '@',
/// otherwise only a tag.
fn ref_name(n: &str) -> Result<Name, ReferenceError> {
    if n.contains(['/', ':', '@']) {
        Ok(Name::Full(Reference::parse(n)?.normalized()))
    } else {
        // Validate it as a tag.
        Reference::parse("x")?.with_tag(n)?;
        Ok(Name::TagOnly(n.to_owned()))
    }
}

fn name_label(n: &Name) -> String {
    match n {
        Name::Full(r) => r.familiar(),
        Name::TagOnly(t) => format!(":{t}"),
    }
}

/// How errors name a layer: "layer 2 of image busybox:latest (blobs/...)".
pub(crate) fn layer_what(index: usize, label: &str, file: &str) -> String {
    format!("layer {} of image {label} ({file})", index + 1)
}

/// Where an OCI layout keeps blob `d`.
pub(crate) fn blob_file(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The digest an archive path `blobs/sha256/<hex>` names.
fn blob_path_digest(path: &str) -> Option<Digest> {
    path.strip_prefix("blobs/sha256/")
        .and_then(|h| Digest::from_hex(h).ok())
}

/// Normalises a path inside an archive: no leading `./` or `/`, no `.`
/// components; None for the root or anything with `..`.
fn archive_path(raw: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(raw);
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `target` relative to directory `dir` (both inside the archive).
fn join_relative(dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|c| !c.is_empty()).collect()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Removes the temporary directory of a speculative unpack that is not used.
pub(crate) fn discard(spec: Option<Speculative>) {
    if let Some(s) = spec {
        if let Err(e) = s.dir.close() {
            log::warn!(target: "engine::image", "cannot remove a temporary layer directory: {e}");
        }
    }
}

/// Renames a finished layer directory (unpacked from `blob`) into
/// `layers/<hex>`, after making its unsynced marker durable (see
/// [`super::unsynced`]). Returns false when another import put the same
/// layer there first.
pub(crate) fn commit_layer(
    ctx: Ctx<'_>,
    dir: tempfile::TempDir,
    diff_id: &Digest,
    blob: &Digest,
) -> Result<bool, ArchiveError> {
    let dest = ctx.layers_dir.join(diff_id.hex());
    let marker = ctx.unsynced.mark(diff_id, blob)?;
    let tmp = dir.keep();
    match fs::rename(&tmp, &dest) {
        Ok(()) => {
            ctx.unsynced.committed(marker);
            Ok(true)
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(false)
        }
        Err(source) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(ArchiveError::Blob(BlobError::Io {
                action: format!("rename {} to", tmp.display()),
                path: dest,
                source,
            }))
        }
    }
}

/// Unpacks a stored layer blob into a fresh temporary directory.
pub(crate) fn unpack_blob(
    ctx: Ctx<'_>,
    blob: &Digest,
    what: &str,
) -> Result<Speculative, ArchiveError> {
    let dir = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(ctx.layers_dir)
        .map_err(|source| {
            ArchiveError::Blob(BlobError::Io {
                action: "create a temporary directory in".into(),
                path: ctx.layers_dir.to_owned(),
                source,
            })
        })?;
    let file = ctx.blobs.open_blob(blob, what)?;
    let result = layer::unpack(file, dir.path());
    Ok(Speculative { dir, result })
}

/// fsyncs the layers directory after renames into it, and starts the
/// background sync of the new layers' files.
pub(crate) fn sync_layers(ctx: Ctx<'_>) -> Result<(), ArchiveError> {
    store::sync_dir(ctx.layers_dir)?;
    ctx.unsynced.sync_soon();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths() {
        assert_eq!(
            archive_path(b"./manifest.json").as_deref(),
            Some("manifest.json")
        );
        assert_eq!(
            archive_path(b"/blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(archive_path(b"./"), None);
        assert_eq!(archive_path(b"../x"), None);
        assert_eq!(
            join_relative("abc", "../def/layer.tar").as_deref(),
            Some("def/layer.tar")
        );
        assert_eq!(join_relative("", "../x"), None);
    }

    fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, text) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, text.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn archive_tags_read_only_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let tags = |name: &str, bytes: Vec<u8>| {
            let path = dir.path().join(name);
            fs::write(&path, bytes).unwrap();
            archive_tags(&path).map(|t| t.iter().map(|r| r.to_string()).collect::<Vec<_>>())
        };
        let docker = tar_of(&[
            ("abc/layer.tar", "not read"),
            (
                "manifest.json",
                r#"[{"Config":"c.json","RepoTags":["busybox","example.com/x/y:1"],"Layers":[]},{"Config":"d.json","RepoTags":null,"Layers":[]}]"#,
            ),
        ]);
        let want = ["docker.io/library/busybox:latest", "example.com/x/y:1"];
        assert_eq!(tags("d.tar", docker.clone()).unwrap(), want);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &docker).unwrap();
        assert_eq!(tags("d.tar.gz", gz.finish().unwrap()).unwrap(), want);

        let digest = format!("sha256:{}", "a".repeat(64));
        let entry = |ann: &str| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":1,"annotations":{{{ann}}}}}"#
            )
        };
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{},{}]}}"#,
            entry(
                r#""io.containerd.image.name":"docker.io/library/alpine:3.20","org.opencontainers.image.ref.name":"3.20""#
            ),
            entry(r#""org.opencontainers.image.ref.name":"quay.io/a/b:v1""#),
            entry(r#""org.opencontainers.image.ref.name":"v2""#),
        );
        let oci = tar_of(&[
            ("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", &index),
        ]);
        assert_eq!(
            tags("o.tar", oci).unwrap(),
            ["docker.io/library/alpine:3.20", "quay.io/a/b:v1"]
        );

        let err = tags("x.tar", tar_of(&[("etc/passwd", "root")])).unwrap_err();
        assert!(matches!(err, ArchiveError::UnknownFormat { .. }), "{err}");
        let bad = tar_of(&[("manifest.json", r#"[{"RepoTags":["Bad Name"]}]"#)]);
        assert!(matches!(
            tags("b.tar", bad),
            Err(ArchiveError::BadName { .. })
        ));
    }

    #[test]
    fn ref_names() {
        assert_eq!(ref_name("latest").unwrap(), Name::TagOnly("latest".into()));
        assert_eq!(
            ref_name("busybox:1.36").unwrap(),
            Name::Full(Reference::parse("docker.io/library/busybox:1.36").unwrap())
        );
        assert!(ref_name("-bad").is_err());
    }
}
