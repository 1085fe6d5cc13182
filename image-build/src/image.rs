//! `berth-build build`: the boot artifacts in one directory — `vmlinuz`,
//! `initrd.img` and `cmdline` (the default kernel command line).

use std::path::{Path, PathBuf};

use engine::image::archive::ArchiveError;
use engine::image::{archive_tags, Reference, ReferenceError};
use init::manifest::{Manifest, ManifestError};

use crate::initrd::{self, Include, InitrdError, Tree};
use crate::kernel::{self, KernelError};
use crate::media::{self, Format, MediaError};
use crate::modset::{self, ModsetError, ModuleTree};

/// The kernel command line written to `cmdline`; `run --cmdline` appends.
///
/// Both consoles: the screen (`tty0`: VirtualBox's window, a cloud's
/// screenshot) and the first serial port (QEMU's `-serial`, a cloud's serial
/// console), the last one being `/dev/console`.
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0,115200 panic=-1 quiet loglevel=4";

/// The artifacts could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The manifest does not validate (its Display is `file:line:col: message`).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No usable kernel.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The module set could not be worked out.
    #[error(transparent)]
    Modules(#[from] ModsetError),
    /// The initramfs could not be assembled.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// An output file could not be written.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// `--without` names something that is not an optional binary.
    #[error("--without {0:?}: only optional binaries can be left out ({1})")]
    Without(String, String),
    /// `--image` names something berthd would not load.
    #[error("--image {0}: {1}")]
    BadImage(PathBuf, &'static str),
    /// The names of an `--image` archive's images could not be read.
    #[error("--image {0}: cannot read the names of its images")]
    ImageNames(PathBuf, #[source] ArchiveError),
    /// A workload's image does not parse as a reference.
    #[error("workload {workload}: image {image} is not a valid image reference")]
    BadImageRef {
        /// The workload's name.
        workload: String,
        /// Its `image`.
        image: String,
        /// Why.
        #[source]
        source: ReferenceError,
    },
    /// A boot medium could not be made.
    #[error(transparent)]
    Media(#[from] MediaError),
    /// A workload's image is in none of the `--image` archives, so berthd
    /// could not start it at boot.
    #[error("workload {workload}: image {image} is in none of the --image archives ({held})")]
    ImageMissing {
        /// The workload's name.
        workload: String,
        /// Its `image`, as the manifest writes it.
        image: String,
        /// What the archives hold, as a phrase.
        held: String,
    },
}

/// Where baked image archives go; berthd loads every archive there at start.
pub const IMAGES_DIR: &str = "usr/share/berth/images";

/// What to build.
#[derive(Debug, Clone)]
pub struct Request {
    /// The boot manifest baked in; none: the image finds one at boot (the
    /// command line, a disk, the cloud).
    pub manifest: Option<PathBuf>,
    /// The output directory.
    pub out: PathBuf,
    /// Where the kernel comes from.
    pub kernel: kernel::Source,
    /// Where berth-init and the other binaries are.
    pub bin_dir: PathBuf,
    /// Extra files.
    pub includes: Vec<Include>,
    /// Optional binaries to leave out (`berth-netd`, `berthd`, `berth`).
    pub without: Vec<String>,
    /// Image archives (docker save, OCI) baked in for berthd to load.
    pub images: Vec<PathBuf>,
    /// The mtime of every archive entry.
    pub mtime: u32,
    /// What to write (sorted).
    pub formats: Vec<Format>,
    /// The kernel command line the media boot with, written to `cmdline`.
    pub cmdline: String,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Report {
    /// The kernel release.
    pub release: String,
    /// How many modules the image holds.
    pub modules: usize,
    /// Profile modules the kernel lacks.
    pub skipped: Vec<String>,
    /// Binaries taken from the bin dir, by image path.
    pub binaries: Vec<String>,
    /// Image archives baked in, by image path.
    pub images: Vec<String>,
    /// Size of `initrd.img` in bytes.
    pub initrd_bytes: u64,
    /// Each file written and its size in bytes.
    pub artifacts: Vec<(PathBuf, u64)>,
}

/// Builds `vmlinuz`, `initrd.img` and `cmdline` in `req.out`.
pub fn build(req: &Request) -> Result<Report, ImageError> {
    media::check_tools(&req.formats)?;
    let (manifest, manifest_text) = match &req.manifest {
        Some(path) => {
            let manifest = Manifest::load(path)?;
            // Validated above; embed the very bytes that validated.
            let text = std::fs::read(path).map_err(|e| InitrdError::Read(path.clone(), e))?;
            (manifest, Some(text))
        }
        None => (Manifest::default(), None),
    };

    let mut tree = Tree::new();
    initrd::add_skeleton(&mut tree)?;
    let mut binaries = Vec::new();
    if let Some(unknown) = req.without.iter().find(|w| {
        !initrd::BINARIES
            .iter()
            .any(|(name, _, required)| name == w && !required)
    }) {
        let optional: Vec<&str> = initrd::BINARIES
            .iter()
            .filter(|(_, _, required)| !required)
            .map(|(name, _, _)| *name)
            .collect();
        return Err(ImageError::Without(unknown.clone(), optional.join(", ")));
    }
    for (name, dest, required) in initrd::BINARIES {
        if req.without.iter().any(|w| w == name) {
            continue;
        }
        let path = req.bin_dir.join(name);
        if !path.exists() {
            if *required {
                return Err(InitrdError::MissingInit(path).into());
            }
            continue;
        }
        initrd::add_binary(&mut tree, &path, dest, name)?;
        binaries.push(format!("/{dest}"));
    }
    if let Some(text) = manifest_text {
        tree.add_file(initrd::MANIFEST_PATH, text, 0o644, "the manifest")?;
    }
    // Check --include before the (slower) kernel work.
    let mut extras = Vec::new();
    for inc in &req.includes {
        let dest = initrd::include_dest(&inc.dest)?;
        if std::fs::symlink_metadata(&inc.src).is_err() {
            return Err(InitrdError::IncludeMissing(inc.src.clone()).into());
        }
        extras.push((inc, dest));
    }

    let mut extras_images = Vec::new();
    let mut images = Vec::new();
    for src in &req.images {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let layout = src.join("oci-layout").is_file() && src.join("index.json").is_file();
        if src.is_dir() && !layout {
            return Err(ImageError::BadImage(
                src.clone(),
                "a directory must be an OCI image layout (oci-layout and index.json)",
            ));
        }
        if !layout
            && ![".tar", ".tar.gz", ".tgz", ".tar.zst"]
                .iter()
                .any(|ext| name.ends_with(ext))
        {
            return Err(ImageError::BadImage(
                src.clone(),
                "name an archive ending in .tar, .tar.gz, .tgz or .tar.zst (docker save or OCI), or an OCI layout directory",
            ));
        }
        if !layout && !std::fs::metadata(src).is_ok_and(|m| m.is_file()) {
            return Err(ImageError::BadImage(src.clone(), "no such file"));
        }
        let dest = format!("{IMAGES_DIR}/{name}");
        if images.contains(&format!("/{dest}")) {
            return Err(ImageError::BadImage(
                src.clone(),
                "another --image has the same file name",
            ));
        }
        extras_images.push((src.clone(), dest.clone()));
        images.push(format!("/{dest}"));
    }

    let mut tags = Vec::new();
    for src in &req.images {
        tags.extend(archive_tags(src).map_err(|e| ImageError::ImageNames(src.clone(), e))?);
    }
    check_workload_images(&manifest, req.images.len(), &tags)?;

    let kernel = kernel::resolve(&req.kernel)?;
    let modules = ModuleTree::open(&kernel.modules, &kernel.release)?;
    let required: Vec<String> = manifest
        .system
        .modules
        .iter()
        .map(|m| m.to_string())
        .collect();
    let selection = modset::select(
        &modules,
        &kernel.modules,
        &required,
        modset::COLDPLUG_PROFILE,
    )?;
    for (name, m) in &selection.modules {
        let src = kernel.modules.join(&m.path);
        let data = std::fs::read(&src).map_err(|e| InitrdError::Read(src.clone(), e))?;
        tree.add_file(
            &format!("lib/modules/{}", m.path),
            data,
            0o644,
            &format!("module {name}"),
        )?;
    }
    let index_path = init::modindex::INDEX_PATH.trim_start_matches('/');
    tree.add_file(
        index_path,
        selection.index().render().into_bytes(),
        0o644,
        "the module index",
    )?;
    for (src, dest) in extras_images {
        tree.add_host(&src, &dest, &format!("--image {}", src.display()))?;
    }
    for (inc, dest) in extras {
        let origin = format!("--include {}:{}", inc.src.display(), inc.dest);
        tree.add_host(&inc.src, &dest, &origin)?;
    }

    std::fs::create_dir_all(&req.out).map_err(|e| ImageError::Write(req.out.clone(), e))?;
    // The media are made from vmlinuz and initrd.img: in the output when
    // `kernel` is asked for, else in a scratch directory.
    let scratch = tempfile::Builder::new()
        .prefix(".berth-build-")
        .tempdir_in(&req.out)
        .map_err(|e| ImageError::Write(req.out.clone(), e))?;
    let kernel_dir = if req.formats.contains(&Format::Kernel) {
        req.out.clone()
    } else {
        scratch.path().to_owned()
    };
    let initrd_path = kernel_dir.join("initrd.img");
    tree.write_gz(&initrd_path, req.mtime)?;
    let vmlinuz = kernel_dir.join("vmlinuz");
    copy_atomic(&kernel.image, &vmlinuz)?;
    write_atomic(
        &kernel_dir.join("cmdline"),
        format!("{}\n", req.cmdline).as_bytes(),
    )?;
    let initrd_bytes = std::fs::metadata(&initrd_path)
        .map_err(|e| ImageError::Write(initrd_path.clone(), e))?
        .len();
    let mut written = Vec::new();
    if req.formats.contains(&Format::Kernel) {
        written.extend([
            vmlinuz.clone(),
            initrd_path.clone(),
            kernel_dir.join("cmdline"),
        ]);
    }
    let payload = media::Payload::new(&vmlinuz, &initrd_path, &req.cmdline, u64::from(req.mtime));
    let raw = if req.formats.contains(&Format::Raw) {
        req.out.join(Format::Raw.file_name())
    } else {
        scratch.path().join(Format::Raw.file_name())
    };
    for f in &req.formats {
        let out = req.out.join(f.file_name());
        match f {
            Format::Kernel => continue,
            Format::Iso => media::make_iso(&payload, &out, scratch.path())?,
            Format::Raw => media::make_raw(&payload, &out, scratch.path())?,
            _ => {
                // The conversions come after `raw` (formats are sorted):
                // made here only when raw itself was not asked for.
                if !raw.exists() {
                    media::make_raw(&payload, &raw, scratch.path())?;
                }
                media::convert(&raw, *f, &out)?;
            }
        }
        written.push(out);
    }
    let mut artifacts = Vec::new();
    for path in written {
        let size = std::fs::metadata(&path)
            .map_err(|e| ImageError::Write(path.clone(), e))?
            .len();
        artifacts.push((path, size));
    }
    Ok(Report {
        release: kernel.release,
        modules: selection.modules.len(),
        skipped: selection.skipped,
        binaries,
        images,
        initrd_bytes,
        artifacts,
    })
}

/// Checks that every workload's image is one of `tags` (the names the
/// `archives` `--image` archives carry), compared the way berthd resolves them:
/// `busybox`, `busybox:latest` and `docker.io/library/busybox:latest` are
/// one image. A reference pinned by digest is not checked: a docker-save
/// archive's manifest digest is only known once berthd imports it.
fn check_workload_images(
    manifest: &Manifest,
    archives: usize,
    tags: &[Reference],
) -> Result<(), ImageError> {
    for (name, workload) in &manifest.workloads {
        let image = &workload.image.0;
        let missing = |held: String| ImageError::ImageMissing {
            workload: name.clone(),
            image: image.clone(),
            held,
        };
        let wanted = Reference::parse(image).map_err(|e| ImageError::BadImageRef {
            workload: name.clone(),
            image: image.clone(),
            source: e,
        })?;
        if wanted.digest().is_some() || tags.contains(&wanted.normalized()) {
            continue;
        }
        let mut held: Vec<String> = tags.iter().map(Reference::familiar).collect();
        held.sort();
        held.dedup();
        return Err(missing(if archives == 0 {
            "no --image was given".into()
        } else if held.is_empty() {
            "they hold no named image".into()
        } else {
            format!("they hold: {}", held.join(", "))
        }));
    }
    Ok(())
}

fn copy_atomic(src: &Path, dest: &Path) -> Result<(), ImageError> {
    let data = std::fs::read(src).map_err(|e| InitrdError::Read(src.to_path_buf(), e))?;
    write_atomic(dest, &data)
}

fn write_atomic(dest: &Path, data: &[u8]) -> Result<(), ImageError> {
    let tmp = dest.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, dest))
        .map_err(|e| ImageError::Write(dest.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(image: &str, archives: usize, tags: &[&str]) -> Result<(), String> {
        let text = format!("[workloads.web]\nimage = \"{image}\"\n");
        let manifest = Manifest::parse(&text, "m.toml").unwrap();
        let tags: Vec<Reference> = tags
            .iter()
            .map(|t| Reference::parse(t).unwrap().normalized())
            .collect();
        check_workload_images(&manifest, archives, &tags).map_err(|e| e.to_string())
    }

    #[test]
    fn workload_images_match_like_docker_names_them() {
        let held = ["busybox:latest"];
        for image in [
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox:latest",
        ] {
            assert_eq!(check(image, 1, &held), Ok(()), "{image}");
        }
        let digest = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(check(&digest, 1, &held), Ok(()));
        assert_eq!(
            check("busybox:1.36", 1, &["busybox:latest", "quay.io/a/b:v1"]),
            Err(
                "workload web: image busybox:1.36 is in none of the --image archives \
                 (they hold: busybox:latest, quay.io/a/b:v1)"
                    .into()
            )
        );
        assert_eq!(
            check("library/busybox:latest", 0, &[]),
            Err(
                "workload web: image library/busybox:latest is in none of the --image archives \
                 (no --image was given)"
                    .into()
            )
        );
        assert!(check("example.com/busybox", 1, &held)
            .unwrap_err()
            .ends_with("(they hold: busybox:latest)"));
        assert!(check("busybox", 2, &[])
            .unwrap_err()
            .ends_with("(they hold no named image)"));
    }
}
