//! Where the kernel and its modules come from: files the user names, a
//! `linux-image-*.deb`, or Debian's `linux-image-amd64` fetched with
//! `apt-get download`. Packages are unpacked once into the cache
//! (`kernels/<package file stem>/`) and reused.

use std::path::{Path, PathBuf};

use crate::tools::{Tool, ToolError};

/// The Debian metapackage that always depends on the current kernel.
const META_PACKAGE: &str = "linux-image-amd64";

/// A kernel could not be found, fetched or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `--kernel` names nothing.
    #[error("kernel image {0} does not exist")]
    MissingImage(PathBuf),
    /// `--kernel` names something that is not an x86 bzImage.
    #[error("{0} is not an x86 bzImage kernel (no \"HdrS\" boot header)")]
    NotBzImage(PathBuf),
    /// `--modules` names nothing usable.
    #[error("modules directory {0} does not exist (--modules wants a lib/modules/<release> tree)")]
    MissingModules(PathBuf),
    /// The image and the modules were built for different kernels.
    #[error(
        "kernel {image} is release {image_release} but the modules in {modules} are for \
         {modules_release}; the kernel would refuse to load them"
    )]
    Mismatch {
        /// The kernel image.
        image: PathBuf,
        /// Its release, from the bzImage header.
        image_release: String,
        /// The modules directory.
        modules: PathBuf,
        /// Its release (the directory name).
        modules_release: String,
    },
    /// `--kernel-deb` names nothing.
    #[error("kernel package {0} does not exist")]
    MissingDeb(PathBuf),
    /// An unpacked package has no usable kernel.
    #[error(
        "{0} holds no kernel (no boot/vmlinuz-<release> with a lib/modules/<release> beside it)"
    )]
    NoKernelInPackage(PathBuf),
    /// The metapackage does not name a kernel package.
    #[error("{deb} does not depend on a linux-image package (Depends: {depends:?})")]
    BadMetaPackage {
        /// The metapackage file.
        deb: PathBuf,
        /// Its Depends field.
        depends: String,
    },
    /// `apt-get download` failed.
    #[error(
        "cannot download {package} with apt-get (is the package list current? try apt-get update)"
    )]
    Download {
        /// The package asked for.
        package: String,
        /// apt-get's failure.
        #[source]
        source: ToolError,
    },
    /// A host tool is missing or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The cache directory is unusable.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// A file or directory could not be read or written.
    #[error("cannot access {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// A kernel image and the module tree built with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The bzImage.
    pub image: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
    /// `uname -r` of that kernel.
    pub release: String,
}

/// Where to take the kernel from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A bzImage and its `lib/modules/<release>` directory.
    Files {
        /// The bzImage.
        image: PathBuf,
        /// The modules directory.
        modules: PathBuf,
    },
    /// A `linux-image-*.deb` file.
    Deb(PathBuf),
    /// Debian's current `linux-image-amd64`, from the cache or apt.
    Debian,
}

/// Finds (fetching and unpacking as needed) the kernel `source` names.
pub fn resolve(source: &Source) -> Result<Kernel, KernelError> {
    match source {
        Source::Files { image, modules } => from_files(image, modules),
        Source::Deb(deb) => from_root(&unpack(deb, &crate::cache::dir()?)?),
        Source::Debian => {
            let cache = crate::cache::dir()?;
            from_root(&unpack(&fetch_debian(&cache)?, &cache)?)
        }
    }
}

/// A bzImage and its modules directory, checked to belong together.
pub fn from_files(image: &Path, modules: &Path) -> Result<Kernel, KernelError> {
    let bytes = match std::fs::read(image) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KernelError::MissingImage(image.to_path_buf()))
        }
        Err(e) => return Err(KernelError::Io(image.to_path_buf(), e)),
    };
    if bytes.get(0x202..0x206) != Some(b"HdrS") {
        return Err(KernelError::NotBzImage(image.to_path_buf()));
    }
    if !modules.is_dir() {
        return Err(KernelError::MissingModules(modules.to_path_buf()));
    }
    let modules_release = modules
        .canonicalize()
        .map_err(|e| KernelError::Io(modules.to_path_buf(), e))?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(image_release) = bzimage_release(&bytes) {
        if image_release != modules_release {
            return Err(KernelError::Mismatch {
                image: image.to_path_buf(),
                image_release: image_release.to_string(),
                modules: modules.to_path_buf(),
                modules_release,
            });
        }
    }
    Ok(Kernel {
        image: image.to_path_buf(),
        modules: modules.to_path_buf(),
        release: modules_release,
    })
}

/// The release string a bzImage carries (`6.1.0-56-amd64`), from the
/// `kernel_version` pointer of its boot protocol header.
pub fn bzimage_release(image: &[u8]) -> Option<&str> {
    let ptr = u16::from_le_bytes(image.get(0x20E..0x210)?.try_into().ok()?);
    let start = usize::from(ptr) + 0x200;
    let text = image.get(start..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    std::str::from_utf8(&text[..end])
        .ok()
        .filter(|s| !s.is_empty())
}

/// The kernel inside an unpacked package (`boot/`, `lib/modules/`).
pub fn from_root(root: &Path) -> Result<Kernel, KernelError> {
    let modules_base = root.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&modules_base)
        .map_err(|_| KernelError::NoKernelInPackage(root.to_path_buf()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|r| root.join("boot").join(format!("vmlinuz-{r}")).is_file())
        .collect();
    releases.sort();
    let release = releases
        .pop()
        .ok_or_else(|| KernelError::NoKernelInPackage(root.to_path_buf()))?;
    from_files(
        &root.join("boot").join(format!("vmlinuz-{release}")),
        &modules_base.join(&release),
    )
}

/// Unpacks a kernel `.deb` into `cache/kernels/<stem>/` unless already there;
/// returns that directory.
pub fn unpack(deb: &Path, cache: &Path) -> Result<PathBuf, KernelError> {
    if !deb.is_file() {
        return Err(KernelError::MissingDeb(deb.to_path_buf()));
    }
    let stem = deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kernel".to_string());
    let kernels = cache.join("kernels");
    let dest = kernels.join(&stem);
    if dest.join("boot").is_dir() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&kernels).map_err(|e| KernelError::Io(kernels.clone(), e))?;
    // Unpack beside the destination and rename, so an interrupted unpack is
    // never mistaken for a complete one.
    let tmp = kernels.join(format!(".{stem}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = Tool::DpkgDeb.output(Tool::DpkgDeb.command()?.arg("-x").arg(deb).arg(&tmp));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.into());
    }
    if let Err(e) = std::fs::rename(&tmp, &dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another build may have unpacked the same package meanwhile.
        if !dest.join("boot").is_dir() {
            return Err(KernelError::Io(dest, e));
        }
    }
    Ok(dest)
}

/// The newest `linux-image-amd64`'s kernel package, from `cache/debs/` or
/// downloaded there with `apt-get download`.
pub fn fetch_debian(cache: &Path) -> Result<PathBuf, KernelError> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| KernelError::Io(debs.clone(), e))?;
    let meta = cached_or_download(&debs, META_PACKAGE, META_PACKAGE)?;
    let depends = String::from_utf8_lossy(
        &Tool::DpkgDeb.output(
            Tool::DpkgDeb
                .command()?
                .args(["-f"])
                .arg(&meta)
                .arg("Depends"),
        )?,
    )
    .trim()
    .to_string();
    let (package, version) =
        kernel_dependency(&depends).ok_or_else(|| KernelError::BadMetaPackage {
            deb: meta.clone(),
            depends: depends.clone(),
        })?;
    let request = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    cached_or_download(&debs, package, &request)
}

/// The first `linux-image-*` package in a Depends field, with its `(= v)`.
fn kernel_dependency(depends: &str) -> Option<(&str, Option<&str>)> {
    depends
        .split([',', '|'])
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))
        .map(|d| {
            let (name, rest) = d.split_once(' ').unwrap_or((d, ""));
            let version = rest
                .trim()
                .strip_prefix("(=")
                .and_then(|v| v.strip_suffix(')'))
                .map(str::trim);
            (name, version)
        })
}

/// `debs/<package>_*.deb` if present (the last by name), else downloads
/// `request` into `debs/` and looks again.
fn cached_or_download(debs: &Path, package: &str, request: &str) -> Result<PathBuf, KernelError> {
    let find = || -> Result<Option<PathBuf>, KernelError> {
        let prefix = format!("{package}_");
        let mut found: Vec<PathBuf> = std::fs::read_dir(debs)
            .map_err(|e| KernelError::Io(debs.to_path_buf(), e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .collect();
        found.sort();
        Ok(found.pop())
    };
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    eprintln!("berth-build: downloading {request} into {}", debs.display());
    // apt-get download writes into the current directory.
    Tool::AptGet
        .output(
            Tool::AptGet
                .command()?
                .args(["download", "-q", request])
                .current_dir(debs),
        )
        .map_err(|source| KernelError::Download {
            package: request.to_string(),
            source,
        })?;
    find()?.ok_or_else(|| KernelError::NoKernelInPackage(debs.join(format!("{package}_*.deb"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_release_from_a_real_bzimage() {
        let image = std::fs::read(crate::testkernel::vmlinuz()).unwrap();
        let release = crate::testkernel::modules_dir();
        assert_eq!(
            bzimage_release(&image),
            release.file_name().and_then(|n| n.to_str())
        );
    }

    #[test]
    fn finds_the_kernel_package_in_the_metapackage_depends() {
        assert_eq!(
            kernel_dependency("linux-image-6.1.0-56-amd64 (= 6.1.192-2)"),
            Some(("linux-image-6.1.0-56-amd64", Some("6.1.192-2")))
        );
        assert_eq!(
            kernel_dependency("initramfs-tools | linux-initramfs-tool, linux-image-6.1.0-9-amd64"),
            Some(("linux-image-6.1.0-9-amd64", None))
        );
        assert_eq!(kernel_dependency("foo (>= 1)"), None);
    }

    #[test]
    fn mismatched_modules_and_missing_files_are_named() {
        let image = crate::testkernel::vmlinuz();
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("5.10.0-1-amd64");
        std::fs::create_dir(&other).unwrap();
        let err = from_files(&image, &other).unwrap_err().to_string();
        assert!(
            err.contains("but the modules in") && err.contains("5.10.0-1-amd64"),
            "{err}"
        );
        let err = from_files(&dir.path().join("nope"), &other)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("kernel image {}/nope does not exist", dir.path().display())
        );
        let err = from_files(Path::new("/bin/busybox"), &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not an x86 bzImage"), "{err}");
    }
}
