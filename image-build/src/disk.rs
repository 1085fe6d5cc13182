//! `berth-build disk`: an empty ext4 data disk labelled `berth-data`, where
//! berthd keeps its state, optionally holding a boot manifest at
//! `/manifest.toml` (init reads it from there without mounting).

use std::path::{Path, PathBuf};

use engine::units::{ByteSize, UnitError};
use init::manifest::{Manifest, ManifestError};

use crate::tools::{Tool, ToolError};

/// The label init looks for.
pub use init::discover::DATA_LABEL as LABEL;

/// The disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The manifest to put on the disk does not validate.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// `--size` is not a size.
    #[error("--size: {0}")]
    Size(UnitError),
    /// `--size` is not a whole number of KiB (what mkfs.ext4 counts in).
    #[error("--size {0}: give a whole number of KiB, like 64M or 1G")]
    SizeNotKib(String),
    /// The output exists and `--force` was not given.
    #[error("{0} exists (give --force to replace it)")]
    Exists(PathBuf),
    /// mkfs.ext4 is missing or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A file could not be written.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// What to make.
#[derive(Debug, Clone)]
pub struct Request {
    /// The image file.
    pub out: PathBuf,
    /// Its size, like `64M`.
    pub size: String,
    /// A manifest to validate and put at `/manifest.toml`.
    pub manifest: Option<PathBuf>,
    /// Replace `out` if it exists.
    pub force: bool,
}

/// Makes the disk image. It is built beside `out` and renamed into place,
/// so a failure never leaves a half-made image (or loses the old one).
pub fn make(req: &Request) -> Result<ByteSize, DiskError> {
    let size: ByteSize = req.size.parse().map_err(DiskError::Size)?;
    if size.bytes() == 0 || !size.bytes().is_multiple_of(1024) {
        return Err(DiskError::SizeNotKib(req.size.clone()));
    }
    if let Some(m) = &req.manifest {
        Manifest::load(m)?;
    }
    if !req.force && std::fs::symlink_metadata(&req.out).is_ok() {
        return Err(DiskError::Exists(req.out.clone()));
    }
    let tmp = sibling(&req.out, "tmp");
    let contents = sibling(&req.out, "contents.tmp");
    let result = build(req, size, &tmp, &contents);
    let _ = std::fs::remove_dir_all(&contents);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| size)
}

fn build(req: &Request, size: ByteSize, tmp: &Path, contents: &Path) -> Result<(), DiskError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e| DiskError::Write(path, e)
    };
    let _ = std::fs::remove_file(tmp);
    let mut mkfs = Tool::Mkfs.command()?;
    mkfs.args(["-q", "-F", "-L", LABEL]);
    if let Some(m) = &req.manifest {
        let _ = std::fs::remove_dir_all(contents);
        std::fs::create_dir(contents).map_err(write_err(contents))?;
        let dest = contents.join("manifest.toml");
        std::fs::copy(m, &dest).map_err(write_err(&dest))?;
        mkfs.arg("-d").arg(contents);
    }
    mkfs.arg(tmp).arg(format!("{}k", size.bytes() / 1024));
    Tool::Mkfs.output(&mut mkfs)?;
    if req.force {
        std::fs::rename(tmp, &req.out).map_err(write_err(&req.out))?;
    } else {
        // A hard link never replaces: an `out` made meanwhile is kept.
        std::fs::hard_link(tmp, &req.out).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                DiskError::Exists(req.out.clone())
            } else {
                DiskError::Write(req.out.clone(), e)
            }
        })?;
        std::fs::remove_file(tmp).map_err(write_err(tmp))?;
    }
    Ok(())
}

/// `out` with `.suffix` appended to its file name.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    out.with_file_name(name)
}
