//! Boot artifacts: `berth-build build MANIFEST -o DIR` run once per image and
//! shared by the tests that boot it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::paths;

/// Why an image could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// `berth-build` is not where we looked.
    #[error("berth-build is not at {path}: {hint}")]
    MissingBinary {
        /// Where we looked.
        path: PathBuf,
        /// How to build it.
        hint: &'static str,
    },
    /// Preparing the output directory or the manifest file failed.
    #[error("cannot prepare {path}")]
    Prepare {
        /// The path we were writing.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `berth-build build` could not be started.
    #[error("cannot run {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `berth-build build` failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Build {
        /// The command line we ran.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stdout and stderr.
        output: String,
    },
    /// The output directory lacks an artifact.
    #[error("{path} is missing: berth-build did not write it")]
    MissingArtifact {
        /// The missing file.
        path: PathBuf,
    },
    /// A shared image failed to build earlier in this process.
    #[error("image {name:?} failed to build earlier in this run: {message}")]
    Earlier {
        /// The image's name.
        name: &'static str,
        /// The first failure.
        message: String,
    },
}

/// A built image: kernel, initramfs and the default kernel command line.
#[derive(Debug, Clone)]
pub struct Image {
    dir: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

impl Image {
    /// Builds `manifest` (TOML text) into `<target>/qemu-tests-images/NAME`
    /// with `berth-build build`, adding `extra_args` (e.g. `--include S:D`).
    /// `$BERTH_KERNEL_DEB`, when set, is passed as `--kernel-deb`; otherwise
    /// berth-build takes the kernel from its cache. `name` must be unique
    /// among images built concurrently.
    pub fn build(name: &str, manifest: &str, extra_args: &[&str]) -> Result<Self, ImageError> {
        Self::build_with(name, Some(manifest), extra_args)
    }

    /// Builds a generic image, one with no manifest baked in (it looks for
    /// one at boot: the kernel command line, a disk, the cloud), like
    /// [`Image::build`] otherwise.
    pub fn build_generic(name: &str, extra_args: &[&str]) -> Result<Self, ImageError> {
        Self::build_with(name, None, extra_args)
    }

    fn build_with(
        name: &str,
        manifest: Option<&str>,
        extra_args: &[&str],
    ) -> Result<Self, ImageError> {
        // One build at a time: they are CPU-bound, and the first one may be
        // filling berth-build's kernel cache.
        static BUILDING: Mutex<()> = Mutex::new(());
        let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        let tool = paths::berth_build();
        if !tool.is_file() {
            return Err(ImageError::MissingBinary {
                path: tool,
                hint: paths::BUILD_HINT,
            });
        }
        let root = paths::images_dir();
        let dir = root.join(name);
        let manifest_path = root.join(format!("{name}.manifest.toml"));
        let prepare = |path: &Path| {
            let path = path.to_owned();
            move |source| ImageError::Prepare { path, source }
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(prepare(&dir))?;
        }
        std::fs::create_dir_all(&root).map_err(prepare(&root))?;
        let mut cmd = Command::new(&tool);
        cmd.arg("build");
        if let Some(manifest) = manifest {
            std::fs::write(&manifest_path, manifest).map_err(prepare(&manifest_path))?;
            cmd.arg(&manifest_path);
        }
        cmd.arg("-o").arg(&dir);
        if let Some(deb) = std::env::var_os("BERTH_KERNEL_DEB") {
            cmd.arg("--kernel-deb").arg(deb);
        }
        cmd.args(extra_args);
        let out = cmd.output().map_err(|source| ImageError::Spawn {
            path: tool.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(ImageError::Build {
                command: format!("{cmd:?}"),
                status: out.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Self::from_dir(&dir)
    }

    /// Reads an image that berth-build already wrote to `dir`
    /// (`vmlinuz`, `initrd.img`, and `cmdline` if present).
    pub fn from_dir(dir: &Path) -> Result<Self, ImageError> {
        let kernel = dir.join("vmlinuz");
        let initrd = dir.join("initrd.img");
        for path in [&kernel, &initrd] {
            if !path.is_file() {
                return Err(ImageError::MissingArtifact { path: path.clone() });
            }
        }
        let cmdline_path = dir.join("cmdline");
        let cmdline = match std::fs::read_to_string(&cmdline_path) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::guest::DEFAULT_CMDLINE.to_owned()
            }
            Err(source) => {
                return Err(ImageError::Prepare {
                    path: cmdline_path,
                    source,
                })
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            kernel,
            initrd,
            cmdline,
        })
    }

    /// Uses a kernel and an initramfs that were made by other means, with
    /// berth-build's default command line.
    pub fn from_parts(kernel: &Path, initrd: &Path) -> Self {
        Self {
            dir: initrd.parent().map(Path::to_owned).unwrap_or_default(),
            kernel: kernel.to_owned(),
            initrd: initrd.to_owned(),
            cmdline: crate::guest::DEFAULT_CMDLINE.to_owned(),
        }
    }

    /// The directory holding the artifacts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kernel (bzImage).
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// The initramfs.
    pub fn initrd(&self) -> &Path {
        &self.initrd
    }

    /// The default kernel command line.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }
}

/// An image built at most once per process, on first use, and shared by the
/// tests that boot it:
///
/// ```ignore
/// static MINIMAL: SharedImage = SharedImage::new("minimal", "[system]\n", &[]);
/// let image = MINIMAL.get()?;
/// ```
#[derive(Debug)]
pub struct SharedImage {
    name: &'static str,
    manifest: &'static str,
    args: &'static [&'static str],
    cell: OnceLock<Result<Image, String>>,
}

impl SharedImage {
    /// Declares an image; nothing is built yet.
    pub const fn new(
        name: &'static str,
        manifest: &'static str,
        args: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            manifest,
            args,
            cell: OnceLock::new(),
        }
    }

    /// The image, built by the first caller while later callers wait. A
    /// failed build is reported (with its first error) to every caller.
    pub fn get(&self) -> Result<&Image, ImageError> {
        let mut first_error = None;
        let result = self.cell.get_or_init(|| {
            Image::build(self.name, self.manifest, self.args).map_err(|e| {
                let message = e.to_string();
                first_error = Some(e);
                message
            })
        });
        if let Some(e) = first_error {
            return Err(e);
        }
        result.as_ref().map_err(|message| ImageError::Earlier {
            name: self.name,
            message: message.clone(),
        })
    }
}

/// A docker-archive of busybox (`busybox:latest`) made by
/// `scripts/busybox-image.sh` from Debian's busybox-static with umoci and
/// skopeo, once per test process, for images that run workloads
/// (`--image PATH`).
pub fn busybox_archive() -> Result<PathBuf, ImageError> {
    static ARCHIVE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let made = ARCHIVE.get_or_init(|| {
        let root = paths::images_dir();
        let path = root.join(format!("busybox-{}.tar", std::process::id()));
        let script = paths::workspace_dir().join("scripts/busybox-image.sh");
        let out = Command::new(&script)
            .arg(&path)
            .arg("busybox:latest")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(path)
    });
    made.clone().map_err(|message| ImageError::Earlier {
        name: "busybox archive",
        message,
    })
}
