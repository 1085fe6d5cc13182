//! Pulling images from an OCI distribution registry (Docker Hub, a
//! `docker-registry`, any registry speaking `/v2/`).
//!
//! A pull resolves the reference to a manifest (an OCI index or a Docker
//! manifest list is resolved to linux on this machine's architecture),
//! verifies it against the digest asked for or the registry's
//! `Docker-Content-Digest`, fetches the config and every layer the store
//! does not already hold, verifying each digest while it streams into the
//! blob store (and is unpacked on a second thread), then records and tags
//! the image through the same commit path as `load`. On failure nothing
//! the pull wrote is left behind.
//!
//! Registries: `docker.io` is reached at `registry-1.docker.io`;
//! `localhost[:port]`, `127.0.0.1[:port]`, `[::1][:port]` and the registries
//! in [`PullOptions::insecure`] (`BERTH_INSECURE_REGISTRIES`, comma
//! separated) over plain HTTP; all others over HTTPS, trusting Mozilla's
//! roots, or only the certificates of [`PullOptions::ca_file`]
//! (`BERTH_REGISTRY_CA`) when one is given. A 401 is answered with an
//! anonymous bearer token, or with the credentials of
//! [`PullOptions::credentials`] (`BERTH_REGISTRY_USER`,
//! `BERTH_REGISTRY_PASSWORD`) for a token or basic auth.
//!
//! ```no_run
//! # fn demo() -> Result<(), engine::image::ImageError> {
//! use engine::image::{ImageStore, Reference};
//! use engine::image::pull::TerminalProgress;
//!
//! let store = ImageStore::open("/var/lib/berth/images".as_ref())?;
//! let r = Reference::parse("busybox:1.36")?;
//! let image = store.pull(&r, &mut TerminalProgress::stderr())?;
//! println!("{} {}", image.id, image.manifest_digest);
//! # Ok(()) }
//! ```

mod progress;
mod registry;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize;

pub use progress::{human_size, NoProgress, PullEvent, PullProgress, TerminalProgress};
pub use registry::Credentials;

use super::archive::{self, ArchiveError, Candidate, Ctx, Name, Source, Speculative, StoredBlob};
use super::digest::Digest;
use super::layer::{self, Compression, Unpacked};
use super::pipe::{self, read_up_to, CHUNK};
use super::reference::Reference;
use super::store::{BlobError, TMP_PREFIX};
use super::{record_image, referenced, ImageError, ImageStore, ImportedImage};
use registry::{header, read_small, size_error, transient, Registry};

/// Chunks in flight between the downloading and the unpacking thread.
const PIPELINE_DEPTH: usize = 8;
/// Layers downloaded at the same time (Docker's default too).
const PARALLEL_DOWNLOADS: usize = 3;
/// Index → index → manifest is the deepest nesting followed.
const MAX_INDEX_DEPTH: usize = 2;

/// Environment variable: registries reached over plain HTTP, comma separated.
pub const INSECURE_ENV: &str = "BERTH_INSECURE_REGISTRIES";
/// Environment variable: a PEM file of the CA certificates to trust.
pub const CA_ENV: &str = "BERTH_REGISTRY_CA";
/// Environment variable: the user name for registry authentication.
pub const USER_ENV: &str = "BERTH_REGISTRY_USER";
/// Environment variable: the password for registry authentication.
pub const PASSWORD_ENV: &str = "BERTH_REGISTRY_PASSWORD";

/// How a pull talks to registries.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registries (`host[:port]`, or `host` for every port) reached over
    /// plain HTTP, besides localhost and 127.0.0.1.
    pub insecure: Vec<String>,
    /// Credentials for token or basic auth; anonymous when None.
    pub credentials: Option<Credentials>,
    /// A PEM file whose certificates are the only roots trusted for HTTPS.
    pub ca_file: Option<PathBuf>,
    /// How many times a transient failure (connection, 5xx, 429, a body
    /// cut short) is retried.
    pub retries: u32,
    /// The pause before the first retry; it doubles for each next one.
    pub backoff: Duration,
    /// Connect, response and per-read timeout.
    pub timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            credentials: None,
            ca_file: None,
            retries: 3,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(60),
        }
    }
}

impl PullOptions {
    /// Defaults, with [`INSECURE_ENV`], [`CA_ENV`], [`USER_ENV`] and
    /// [`PASSWORD_ENV`] applied.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            insecure: var(INSECURE_ENV)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            credentials: var(USER_ENV).map(|username| Credentials {
                username,
                password: var(PASSWORD_ENV).unwrap_or_default(),
            }),
            ca_file: var(CA_ENV).map(PathBuf::from),
            ..Self::default()
        }
    }

    /// True when `domain` (`host[:port]`) is reached over plain HTTP.
    pub fn is_insecure(&self, domain: &str) -> bool {
        let host = match domain.strip_prefix('[') {
            Some(v6) => v6.split_once(']').map_or(v6, |(h, _)| h),
            None => domain.rsplit_once(':').map_or(domain, |(h, _)| h),
        };
        matches!(host, "localhost" | "127.0.0.1" | "::1")
            || self.insecure.iter().any(|i| i == domain || i == host)
    }
}

/// Pull failures.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry answered with an error status.
    #[error("registry {registry} answered {status} for {what}{}", colon(message))]
    Status {
        /// `host[:port]`.
        registry: String,
        /// What was asked for ("manifest team/app:v2").
        what: String,
        /// The HTTP status.
        status: u16,
        /// The registry's own message, if it gave one.
        message: String,
    },
    /// The registry could not be reached or the exchange broke.
    #[error("cannot fetch {what} from registry {registry}")]
    Transport {
        /// `host[:port]`.
        registry: String,
        /// What was being fetched.
        what: String,
        /// The HTTP client's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// A body broke off or could not be read.
    #[error("cannot read {what} from registry {registry}")]
    Read {
        /// `host[:port]`.
        registry: String,
        /// What was being read.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The registry sent something that is not what it should be.
    #[error("registry {registry} sent an invalid {what}: {reason}")]
    BadResponse {
        /// `host[:port]`.
        registry: String,
        /// What it was.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Authentication failed or is not possible.
    #[error("cannot authenticate to registry {registry}: {reason}")]
    Auth {
        /// `host[:port]`.
        registry: String,
        /// Why.
        reason: String,
    },
    /// An index lists no manifest for this platform.
    #[error("{reference} has no image for linux/{arch} (it has {have})")]
    NoPlatform {
        /// The reference pulled.
        reference: String,
        /// This machine's architecture.
        arch: &'static str,
        /// The platforms it has.
        have: String,
    },
    /// A manifest format berth does not read.
    #[error("{what} from registry {registry} is a {media_type}, which berth cannot pull")]
    Unsupported {
        /// `host[:port]`.
        registry: String,
        /// What it was.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// The CA file cannot be used.
    #[error("cannot use {} as the registry CA: {reason}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A blob did not match its digest, or the store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Another download of the same pull failed first.
    #[error("the download was cancelled")]
    Cancelled,
    /// Recording the image (its config, a layer) failed.
    #[error("cannot store image {reference}")]
    Store {
        /// The reference pulled.
        reference: String,
        /// Why.
        #[source]
        source: ArchiveError,
    },
}

fn colon(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// What a fetched manifest document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
    Schema1,
    Unknown,
}

fn kind_of_type(media_type: &str) -> Kind {
    match media_type.split(';').next().unwrap_or("").trim() {
        "application/vnd.oci.image.index.v1+json"
        | "application/vnd.docker.distribution.manifest.list.v2+json" => Kind::Index,
        "application/vnd.oci.image.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v2+json" => Kind::Manifest,
        "application/vnd.docker.distribution.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v1+prettyjws" => Kind::Schema1,
        _ => Kind::Unknown,
    }
}

impl ImageStore {
    /// Pulls `reference` with [`PullOptions::from_env`]; see
    /// [`ImageStore::pull_with`].
    pub fn pull(
        &self,
        reference: &Reference,
        progress: &mut dyn PullProgress,
    ) -> Result<ImportedImage, ImageError> {
        self.pull_with(reference, &PullOptions::from_env(), progress)
    }

    /// Pulls `reference` from its registry, records it, and tags it with
    /// the reference's tag (`latest` when it has neither tag nor digest; a
    /// digest-only reference leaves the image untagged, reachable by
    /// id or digest). Blobs and layers already in the store are not
    /// fetched again. On failure nothing the pull wrote is left behind.
    pub fn pull_with(
        &self,
        reference: &Reference,
        options: &PullOptions,
        progress: &mut dyn PullProgress,
    ) -> Result<ImportedImage, ImageError> {
        let guard = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let before_blobs: HashSet<Digest> = self.blobs.list()?.into_iter().collect();
        let before_layers = self.layer_dirs()?;
        let result = self.pull_inner(reference, options, progress);
        drop(guard);
        match &result {
            Ok(image) => progress.event(&PullEvent::Done {
                id: image.id,
                manifest: image.manifest_digest,
            }),
            Err(_) => {
                // As in import: remove what this pull wrote and no image uses.
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
        }
        result
    }

    fn pull_inner(
        &self,
        reference: &Reference,
        options: &PullOptions,
        progress: &mut dyn PullProgress,
    ) -> Result<ImportedImage, ImageError> {
        progress.event(&PullEvent::Resolving {
            reference: reference.clone(),
        });
        let tag = match (reference.tag(), reference.digest()) {
            (Some(t), _) => Some(reference.with_tag(t)?),
            (None, None) => Some(reference.normalized()),
            (None, Some(_)) => None,
        };
        let label = reference.familiar();
        let mut reg = Registry::new(reference, options)?;
        let (manifest_digest, manifest_bytes) = fetch_manifest(&mut reg, reference)?;
        let manifest_what = format!("manifest {manifest_digest} of {}", reg.path);
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| PullError::BadResponse {
                registry: reg.domain.clone(),
                what: manifest_what.clone(),
                reason: e.to_string(),
            })?;
        let bad = |reason: String| PullError::BadResponse {
            registry: reg.domain.clone(),
            what: manifest_what.clone(),
            reason,
        };
        let config_digest = Digest::from_oci(manifest.config().digest())
            .map_err(|e| bad(format!("its config: {e}")))?;
        let mut layers = HashMap::new();
        let mut blob_digests = Vec::new();
        for (i, l) in manifest.layers().iter().enumerate() {
            let d = Digest::from_oci(l.digest())
                .map_err(|e| bad(format!("its layer {}: {e}", i + 1)))?;
            layers.entry(d).or_insert((i, l.size()));
            blob_digests.push(d);
        }
        progress.event(&PullEvent::Resolved {
            manifest: manifest_digest,
            layers: blob_digests.len(),
        });

        let config_what = format!("the config of image {label}");
        let config_bytes = if self.blobs.contains(&config_digest) {
            self.blobs.read(&config_digest, &config_what)?
        } else {
            let bytes = fetch_small(&mut reg, &config_digest, &config_what)?;
            let actual = Digest::of(&bytes);
            if actual != config_digest {
                return Err(PullError::from(BlobError::Mismatch {
                    what: format!("{config_what} from registry {}", reg.domain),
                    expected: config_digest,
                    actual,
                })
                .into());
            }
            bytes
        };
        // Say up front which layers need no fetching.
        #[derive(Deserialize)]
        struct Config {
            rootfs: RootFs,
        }
        #[derive(Deserialize)]
        struct RootFs {
            diff_ids: Vec<String>,
        }
        if let Ok(c) = serde_json::from_slice::<Config>(&config_bytes) {
            for (i, (blob, diff_id)) in blob_digests.iter().zip(&c.rootfs.diff_ids).enumerate() {
                let unpacked = diff_id
                    .parse::<Digest>()
                    .is_ok_and(|d| self.layer_path(&d).is_dir());
                if unpacked && self.blobs.contains(blob) {
                    progress.event(&PullEvent::LayerPresent {
                        index: i,
                        digest: *blob,
                        size: self.blobs.size(blob).unwrap_or(0),
                    });
                }
            }
        }

        let cand = Candidate {
            label: label.clone(),
            names: tag.iter().cloned().map(Name::Full).collect(),
            manifest_bytes,
            manifest_expected: Some(manifest_digest),
            manifest,
            config_bytes,
            layer_files: blob_digests.iter().map(archive::blob_file).collect(),
        };
        let ctx = Ctx {
            blobs: &self.blobs,
            layers_dir: &self.layers_dir,
            unsynced: &self.unsynced,
        };
        // Fetch what the commit step will ask for, several layers at once;
        // it then finds them ready (and unpacked).
        let layer_label = tag
            .as_ref()
            .map_or_else(|| label.clone(), Reference::familiar);
        let mut jobs: Vec<Job> = Vec::new();
        for (i, d) in blob_digests.iter().enumerate() {
            if !self.blobs.contains(d) && !jobs.iter().any(|j| j.digest == *d) {
                jobs.push(Job {
                    index: i,
                    digest: *d,
                    size: layers.get(d).map_or(0, |l| l.1),
                    what: archive::layer_what(i, &layer_label, &archive::blob_file(d)),
                });
            }
        }
        let prefetched = prefetch(&reg, progress, ctx, jobs)?;
        let location = PathBuf::from(format!("{}/{}", reg.domain, reg.path));
        let mut source = RegistrySource {
            reg: &mut reg,
            progress,
            layers,
            prefetched,
            location,
            failure: None,
        };
        let committed = self.commit_candidate(ctx, &mut source, cand, None);
        let (imported, record) = match committed {
            Ok(c) => c,
            Err(e) => {
                return Err(match source.failure.take() {
                    Some(f) => f,
                    None => PullError::Store {
                        reference: label,
                        source: e,
                    },
                }
                .into())
            }
        };
        self.blobs.sync_dir()?;
        archive::sync_layers(ctx).map_err(|source| PullError::Store {
            reference: label.clone(),
            source,
        })?;

        let mut index = self.lock_index();
        record_image(&mut index, &imported, record);
        self.save_index(&index)?;
        Ok(imported)
    }
}

/// Resolves `reference` to an image manifest: its digest and exact bytes.
fn fetch_manifest(
    reg: &mut Registry,
    reference: &Reference,
) -> Result<(Digest, Vec<u8>), PullError> {
    let (mut target, mut expected) = match reference.digest() {
        Some(d) => (d.to_string(), Some(*d)),
        None => (
            reference
                .tag()
                .unwrap_or(super::reference::DEFAULT_TAG)
                .to_owned(),
            None,
        ),
    };
    let mut what = if expected.is_some() {
        format!("manifest {}@{target}", reg.path)
    } else {
        format!("manifest {}:{target}", reg.path)
    };
    for depth in 0..=MAX_INDEX_DEPTH {
        let (digest, bytes, kind) = fetch_manifest_once(reg, &target, expected, &what)?;
        if kind != Kind::Index {
            return Ok((digest, bytes));
        }
        if depth == MAX_INDEX_DEPTH {
            break;
        }
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| PullError::BadResponse {
                registry: reg.domain.clone(),
                what: what.clone(),
                reason: e.to_string(),
            })?;
        let chosen = archive::pick_platform(index.manifests()).ok_or_else(|| {
            let have: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect();
            PullError::NoPlatform {
                reference: reference.familiar(),
                arch: archive::host_arch(),
                have: if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                },
            }
        })?;
        let d = Digest::from_oci(chosen.digest()).map_err(|e| PullError::BadResponse {
            registry: reg.domain.clone(),
            what: what.clone(),
            reason: e.to_string(),
        })?;
        what = format!(
            "manifest {d} (linux/{} of {})",
            archive::host_arch(),
            reference.familiar()
        );
        target = d.to_string();
        expected = Some(d);
    }
    Err(PullError::BadResponse {
        registry: reg.domain.clone(),
        what,
        reason: format!("image indexes are nested more than {MAX_INDEX_DEPTH} deep"),
    })
}

/// One manifest GET, verified against `expected` or the registry's
/// `Docker-Content-Digest`.
fn fetch_manifest_once(
    reg: &mut Registry,
    target: &str,
    expected: Option<Digest>,
    what: &str,
) -> Result<(Digest, Vec<u8>, Kind), PullError> {
    let mut attempt = 0;
    let (headers, bytes) = loop {
        let resp = reg.manifest(target, what)?;
        match read_small(resp.body, &reg.domain, what) {
            Ok(b) => break (resp.headers, b),
            Err(e) if transient(&e) && attempt < reg.retries() => {
                attempt += 1;
                reg.pause(attempt);
            }
            Err(e) => return Err(e),
        }
    };
    let actual = Digest::of(&bytes);
    let announced = header(&headers, "docker-content-digest").and_then(|h| h.parse().ok());
    if let Some(e) = expected.or(announced) {
        if e != actual {
            return Err(BlobError::Mismatch {
                what: format!("{what} from registry {}", reg.domain),
                expected: e,
                actual,
            }
            .into());
        }
    }
    let content_type = header(&headers, "content-type").unwrap_or("");
    let bad = |reason: String| PullError::BadResponse {
        registry: reg.domain.clone(),
        what: what.to_owned(),
        reason,
    };
    let doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        bad(format!(
            "it is not JSON (Content-Type \"{content_type}\"): {e}"
        ))
    })?;
    let mut kind = kind_of_type(content_type);
    if kind == Kind::Unknown {
        // Registries that send text/plain or nothing: trust the document.
        kind = match doc.get("mediaType").and_then(|m| m.as_str()) {
            Some(m) => kind_of_type(m),
            None if doc.get("manifests").is_some() => Kind::Index,
            None if doc.get("config").is_some() && doc.get("layers").is_some() => Kind::Manifest,
            None if doc.get("fsLayers").is_some() => Kind::Schema1,
            None => Kind::Unknown,
        };
    }
    match kind {
        Kind::Index | Kind::Manifest => Ok((actual, bytes, kind)),
        Kind::Schema1 => Err(PullError::Unsupported {
            registry: reg.domain.clone(),
            what: what.to_owned(),
            media_type: "Docker schema 1 manifest".into(),
        }),
        Kind::Unknown => Err(bad(format!(
            "it is neither an image manifest nor an index (Content-Type \"{content_type}\")"
        ))),
    }
}

/// Fetches a small blob (a config) whole.
fn fetch_small(reg: &mut Registry, digest: &Digest, what: &str) -> Result<Vec<u8>, PullError> {
    let mut attempt = 0;
    loop {
        let resp = reg.blob(&digest.to_string(), what)?;
        match read_small(resp.body, &reg.domain, what) {
            Ok(b) => return Ok(b),
            Err(e) if transient(&e) && attempt < reg.retries() => {
                attempt += 1;
                reg.pause(attempt);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The registry as a [`Source`] for the store's commit step: layers are
/// downloaded when the commit asks for them.
struct RegistrySource<'a> {
    reg: &'a mut Registry,
    progress: &'a mut dyn PullProgress,
    /// Layer blob → (position, size in the manifest).
    layers: HashMap<Digest, (usize, u64)>,
    /// Layers downloaded ahead of the commit step.
    prefetched: HashMap<Digest, StoredBlob>,
    location: PathBuf,
    /// The real error behind the last failed `store`.
    failure: Option<PullError>,
}

impl Source for RegistrySource<'_> {
    fn location(&self) -> &std::path::Path {
        &self.location
    }

    fn read(&mut self, _ctx: Ctx<'_>, _file: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        Ok(None)
    }

    fn store(
        &mut self,
        ctx: Ctx<'_>,
        file: &str,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<StoredBlob, ArchiveError> {
        let Some(digest) = expected.copied() else {
            return Err(ArchiveError::Invalid(format!(
                "{what}: no digest to fetch {file} by"
            )));
        };
        if let Some(b) = self.prefetched.remove(&digest) {
            return Ok(b);
        }
        if ctx.blobs.contains(&digest) {
            return Ok(stored_blob(ctx, &digest, what)?);
        }
        let (index, size) = self.layers.get(&digest).copied().unwrap_or((0, 0));
        let job = Job {
            index,
            digest,
            size,
            what: what.to_owned(),
        };
        let never = AtomicBool::new(false);
        match download(self.reg, self.progress, &never, ctx, &job) {
            Ok(b) => Ok(b),
            Err(e) => {
                let text = e.to_string();
                self.failure = Some(e);
                Err(ArchiveError::Invalid(text))
            }
        }
    }
}

/// A blob already in the store, as the commit step wants it.
fn stored_blob(ctx: Ctx<'_>, d: &Digest, what: &str) -> Result<StoredBlob, BlobError> {
    let mut head = [0u8; 8];
    let mut f = ctx.blobs.open_blob(d, what)?;
    let n = read_up_to(&mut f, &mut head).map_err(|source| BlobError::Io {
        action: "read".into(),
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

/// One layer to fetch.
#[derive(Debug, Clone)]
struct Job {
    index: usize,
    digest: Digest,
    size: u64,
    /// How errors name it.
    what: String,
}

/// Downloads `job` with retries of a body that broke off.
fn download(
    reg: &mut Registry,
    progress: &mut dyn PullProgress,
    cancel: &AtomicBool,
    ctx: Ctx<'_>,
    job: &Job,
) -> Result<StoredBlob, PullError> {
    let what = format!("{} from registry {}", job.what, reg.domain);
    let mut attempt = 0;
    loop {
        match try_download(reg, progress, cancel, ctx, job, &what) {
            Ok(b) => {
                progress.event(&PullEvent::LayerDone {
                    index: job.index,
                    digest: job.digest,
                    size: b.size,
                });
                return Ok(b);
            }
            Err(e @ PullError::Read { .. }) if attempt < reg.retries() => {
                attempt += 1;
                progress.event(&PullEvent::LayerRetry {
                    index: job.index,
                    attempt,
                    reason: chain(&e),
                });
                reg.pause(attempt);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Downloads the layers of `jobs` the store lacks, [`PARALLEL_DOWNLOADS`]
/// at a time; the first failure stops the others.
fn prefetch(
    reg: &Registry,
    progress: &mut dyn PullProgress,
    ctx: Ctx<'_>,
    jobs: Vec<Job>,
) -> Result<HashMap<Digest, StoredBlob>, PullError> {
    enum Msg {
        Event(PullEvent),
        Done(Digest, Result<StoredBlob, PullError>),
    }
    struct Forward(mpsc::Sender<Msg>);
    impl PullProgress for Forward {
        fn event(&mut self, event: &PullEvent) {
            let _ = self.0.send(Msg::Event(event.clone()));
        }
    }
    let total = jobs.len();
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<Job>>());
    let cancel = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_DOWNLOADS.min(total) {
            let tx = tx.clone();
            let mut reg = reg.clone();
            let (queue, cancel) = (&queue, &cancel);
            s.spawn(move || loop {
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                let job = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(job) = job else { break };
                let mut fwd = Forward(tx.clone());
                let result = download(&mut reg, &mut fwd, cancel, ctx, &job);
                if result.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                if tx.send(Msg::Done(job.digest, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut out = HashMap::new();
        let mut failure = None;
        // Ends when every worker has finished and dropped its sender.
        for msg in rx {
            match msg {
                Msg::Event(e) => progress.event(&e),
                Msg::Done(d, Ok(b)) => {
                    out.insert(d, b);
                }
                Msg::Done(_, Err(PullError::Cancelled)) => {}
                Msg::Done(_, Err(e)) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => {
                for (_, b) in out.drain() {
                    archive::discard(b.speculative);
                }
                Err(e)
            }
            None => Ok(out),
        }
    })
}

/// One attempt: streams the blob into the store while a second thread
/// decompresses and unpacks it into a temporary layer directory.
fn try_download(
    reg: &mut Registry,
    progress: &mut dyn PullProgress,
    cancel: &AtomicBool,
    ctx: Ctx<'_>,
    job: &Job,
    what: &str,
) -> Result<StoredBlob, PullError> {
    let (index, digest, size) = (job.index, job.digest, job.size);
    let resp = reg.blob(&digest.to_string(), what)?;
    let mut reader = resp.body.into_reader();
    let registry = reg.domain.clone();
    let read_err = |source: io::Error| PullError::Read {
        registry: registry.clone(),
        what: what.to_owned(),
        source,
    };
    let mut head = vec![0u8; CHUNK];
    let n = read_up_to(&mut reader, &mut head).map_err(read_err)?;
    head.truncate(n);
    let compression = Compression::detect(&head).unwrap_or(Compression::None);
    let mut writer = ctx.blobs.writer()?;
    let write_err = |e| BlobError::Io {
        action: format!("write {what} to"),
        path: ctx.blobs.dir().to_owned(),
        source: e,
    };
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(ctx.layers_dir)
        .map_err(|source| BlobError::Io {
            action: "create a temporary directory in".into(),
            path: ctx.layers_dir.to_owned(),
            source,
        })?;
    let (tx, rx) = pipe::pipe(PIPELINE_DEPTH);
    let dest = tmp.path().to_owned();
    let hash_plain = compression != Compression::None;
    let (read_result, worker) = std::thread::scope(|s| {
        let worker = s.spawn(move || layer::unpack_stream(rx, &dest, hash_plain));
        let mut tx = Some(tx);
        let mut chunk = head;
        let mut done: u64 = 0;
        let result = loop {
            if cancel.load(Ordering::Relaxed) {
                break Err(PullError::Cancelled);
            }
            if chunk.is_empty() {
                break if size > 0 && done != size {
                    Err(read_err(size_error(done, size)))
                } else {
                    Ok(())
                };
            }
            done += chunk.len() as u64;
            if size > 0 && done > size {
                break Err(PullError::BadResponse {
                    registry: registry.clone(),
                    what: what.to_owned(),
                    reason: format!("it is longer than the {size} bytes its manifest says"),
                });
            }
            if let Err(e) = writer.write_all(&chunk) {
                break Err(write_err(e).into());
            }
            progress.event(&PullEvent::LayerProgress {
                index,
                digest,
                done,
                total: size,
            });
            chunk = pipe::feed(&mut tx, chunk);
            chunk.resize(CHUNK, 0);
            match read_up_to(&mut reader, &mut chunk) {
                Ok(n) => chunk.truncate(n),
                Err(e) => break Err(read_err(e)),
            }
        };
        drop(tx);
        (result, worker.join())
    });
    read_result?;
    let result = worker.map_err(|_| PullError::Store {
        reference: what.to_owned(),
        source: ArchiveError::WorkerPanicked(what.to_owned()),
    })?;
    let (stored, len) = writer.commit(Some(&digest), what)?;
    let result = result.map(|(diff_id, len)| Unpacked {
        diff_id: diff_id.unwrap_or(stored),
        size: len,
    });
    Ok(StoredBlob {
        digest: stored,
        size: len,
        compression,
        speculative: Some(Speculative { dir: tmp, result }),
    })
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registries() {
        let o = PullOptions {
            insecure: vec!["reg.lan:5000".into(), "mirror.lan".into()],
            ..PullOptions::default()
        };
        for d in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
        ] {
            assert!(o.is_insecure(d), "{d}");
        }
        assert!(o.is_insecure("reg.lan:5000"));
        assert!(o.is_insecure("mirror.lan:443"));
        assert!(!o.is_insecure("reg.lan:5001"));
        assert!(!o.is_insecure("docker.io"));
        assert!(!o.is_insecure("127.0.0.2:5000"));
    }

    #[test]
    fn media_types() {
        assert_eq!(
            kind_of_type("application/vnd.oci.image.index.v1+json; charset=utf-8"),
            Kind::Index
        );
        assert_eq!(
            kind_of_type("application/vnd.docker.distribution.manifest.v2+json"),
            Kind::Manifest
        );
        assert_eq!(
            kind_of_type("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            Kind::Schema1
        );
        assert_eq!(kind_of_type("text/html"), Kind::Unknown);
    }

    #[test]
    fn status_errors_read_as_sentences() {
        let e = PullError::Status {
            registry: "127.0.0.1:5000".into(),
            what: "manifest team/app:v2".into(),
            status: 404,
            message: "manifest unknown".into(),
        };
        assert_eq!(
            e.to_string(),
            "registry 127.0.0.1:5000 answered 404 for manifest team/app:v2: manifest unknown"
        );
    }
}
