//! The initramfs: a tree of paths assembled from the bin dir, the manifest,
//! the selected modules and `--include` extras, written as a gzip-compressed
//! newc cpio.
//!
//! Layout (the contract in CONTEXT.md): `/init` (berth-init),
//! `/sbin/berth-netd`, `/sbin/berthd`, `/usr/bin/berth` (those present),
//! `/etc/berth/manifest.toml`, `/lib/modules/<path>.ko`,
//! `/lib/modules/berth.index`, the mount points init uses and
//! `/dev/console`, plus the extras.
//!
//! gzip, not zstd: under TCG the 6.1 kernel unpacked a 7.4 MB archive in
//! ~150 ms from gzip -9 and ~160-240 ms from zstd -3/-19 (measured with
//! `initramfs_async=0`, three runs each), and gzip needs no C library here.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cpio::{self, Entry};

/// The binaries taken from the bin dir: (file name, path in the image, required).
pub const BINARIES: &[(&str, &str, bool)] = &[
    ("berth-init", "init", true),
    ("berth-netd", "sbin/berth-netd", false),
    ("berthd", "sbin/berthd", false),
    ("berth", "usr/bin/berth", false),
];

/// Where the validated manifest goes.
pub const MANIFEST_PATH: &str = "etc/berth/manifest.toml";

/// The initramfs could not be assembled or written.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// berth-init is not in the bin dir.
    #[error(
        "{0} does not exist: build it with `cargo build --release --target \
         x86_64-unknown-linux-musl -p init` and pass that directory as --bin-dir"
    )]
    MissingInit(PathBuf),
    /// A binary would not run in the initramfs.
    #[error(
        "{path} is {problem}; the initramfs has no libc, so build it for x86_64-unknown-linux-musl"
    )]
    NotStatic {
        /// The binary.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// `--include` is not `SRC:DEST`.
    #[error("--include {0:?} is not SRC:DEST (e.g. ./site:/www)")]
    IncludeSyntax(String),
    /// `--include`'s destination is not a clean absolute path.
    #[error("--include destination {0:?} must be an absolute path without '.' or '..' components")]
    IncludeDest(String),
    /// `--include`'s source does not exist.
    #[error("--include source {0} does not exist")]
    IncludeMissing(PathBuf),
    /// A host file of a kind the image cannot hold.
    #[error("{0} is not a regular file, directory or symlink")]
    Unsupported(PathBuf),
    /// Two things want the same path.
    #[error("/{path} from {new} collides with /{path} from {old}")]
    Collision {
        /// The path in the image.
        path: String,
        /// What was there first.
        old: String,
        /// What wanted it too.
        new: String,
    },
    /// A host file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// Writing the archive failed.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] cpio::CpioError),
}

/// One `--include SRC:DEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// A host file or directory.
    pub src: PathBuf,
    /// Where it goes in the image (absolute).
    pub dest: String,
}

impl std::str::FromStr for Include {
    type Err = InitrdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (src, dest) = s
            .rsplit_once(':')
            .filter(|(src, dest)| !src.is_empty() && !dest.is_empty())
            .ok_or_else(|| InitrdError::IncludeSyntax(s.to_string()))?;
        Ok(Include {
            src: PathBuf::from(src),
            dest: dest.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev(u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: Kind,
    perm: u32,
    /// What put it there, for collision messages.
    origin: String,
}

/// The image's contents by path (relative, no leading `/`). Sorted order puts
/// every directory before what it contains, so the archive needs no other
/// ordering.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(
        &mut self,
        path: &str,
        kind: Kind,
        perm: u32,
        origin: &str,
    ) -> Result<(), InitrdError> {
        let mut parent = String::new();
        for component in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.insert_one(&parent, Kind::Dir, 0o755, origin)?;
        }
        self.insert_one(path, kind, perm, origin)
    }

    fn insert_one(
        &mut self,
        path: &str,
        kind: Kind,
        perm: u32,
        origin: &str,
    ) -> Result<(), InitrdError> {
        match self.nodes.get(path) {
            Some(old) if old.kind == Kind::Dir && kind == Kind::Dir => Ok(()),
            Some(old) => Err(InitrdError::Collision {
                path: path.to_string(),
                old: old.origin.clone(),
                new: origin.to_string(),
            }),
            None => {
                self.nodes.insert(
                    path.to_string(),
                    Node {
                        kind,
                        perm,
                        origin: origin.to_string(),
                    },
                );
                Ok(())
            }
        }
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, path: &str, perm: u32, origin: &str) -> Result<(), InitrdError> {
        self.insert(path, Kind::Dir, perm, origin)
    }

    /// Adds a regular file with the given contents.
    pub fn add_file(
        &mut self,
        path: &str,
        data: Vec<u8>,
        perm: u32,
        origin: &str,
    ) -> Result<(), InitrdError> {
        self.insert(path, Kind::File(data), perm, origin)
    }

    /// Adds a character device node.
    pub fn add_char_dev(
        &mut self,
        path: &str,
        major: u32,
        minor: u32,
        perm: u32,
    ) -> Result<(), InitrdError> {
        self.insert(path, Kind::CharDev(major, minor), perm, "berth-build")
    }

    /// Adds a host file, symlink or directory tree at `dest` (relative),
    /// keeping permission bits and symlink targets.
    pub fn add_host(&mut self, src: &Path, dest: &str, origin: &str) -> Result<(), InitrdError> {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::symlink_metadata(src).map_err(|e| InitrdError::Read(src.to_path_buf(), e))?;
        let perm = meta.permissions().mode() & 0o7777;
        let ty = meta.file_type();
        if ty.is_dir() {
            if !dest.is_empty() {
                self.add_dir(dest, perm, origin)?;
            }
            let mut children: Vec<_> = std::fs::read_dir(src)
                .map_err(|e| InitrdError::Read(src.to_path_buf(), e))?
                .collect::<Result<_, _>>()
                .map_err(|e| InitrdError::Read(src.to_path_buf(), e))?;
            children.sort_by_key(|c| c.file_name());
            for child in children {
                let name = child.file_name().to_string_lossy().into_owned();
                let child_dest = if dest.is_empty() {
                    name
                } else {
                    format!("{dest}/{name}")
                };
                self.add_host(&child.path(), &child_dest, origin)?;
            }
            Ok(())
        } else if dest.is_empty() {
            Err(InitrdError::IncludeDest("/".to_string()))
        } else if ty.is_symlink() {
            let target =
                std::fs::read_link(src).map_err(|e| InitrdError::Read(src.to_path_buf(), e))?;
            self.insert(
                dest,
                Kind::Symlink(target.to_string_lossy().into_owned()),
                0o777,
                origin,
            )
        } else if ty.is_file() {
            let data = std::fs::read(src).map_err(|e| InitrdError::Read(src.to_path_buf(), e))?;
            self.add_file(dest, data, perm, origin)
        } else {
            Err(InitrdError::Unsupported(src.to_path_buf()))
        }
    }

    /// Paths in archive order.
    #[cfg(test)]
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Writes the tree as a newc cpio, every entry stamped with `mtime`.
    pub fn write_cpio<W: Write>(&self, out: W, mtime: u32) -> Result<W, cpio::CpioError> {
        let mut w = cpio::Writer::new(out, mtime);
        for (path, node) in &self.nodes {
            let entry = match &node.kind {
                Kind::Dir => Entry::Dir { perm: node.perm },
                Kind::File(data) => Entry::File {
                    perm: node.perm,
                    data,
                },
                Kind::Symlink(target) => Entry::Symlink { target },
                Kind::CharDev(major, minor) => Entry::CharDev {
                    perm: node.perm,
                    major: *major,
                    minor: *minor,
                },
            };
            w.append(path, entry)?;
        }
        w.finish()
    }

    /// Writes the tree as a gzip-compressed newc cpio to `path` (through a
    /// temporary file, so a failed build leaves no half image).
    pub fn write_gz(&self, path: &Path, mtime: u32) -> Result<(), InitrdError> {
        let fail = |e: cpio::CpioError| InitrdError::Write(path.to_path_buf(), e);
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| fail(e.into()))?;
        // The gzip header's mtime is 0 and its OS byte fixed: deterministic.
        let gz = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(file),
            flate2::Compression::best(),
        );
        let result = self.write_cpio(gz, mtime).and_then(|gz| {
            Ok(gz
                .finish()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?)
        });
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e));
        }
        std::fs::rename(&tmp, path).map_err(|e| fail(e.into()))
    }
}

/// Normalises an `--include` destination to a relative path ("" for `/`).
pub fn include_dest(dest: &str) -> Result<String, InitrdError> {
    let bad = || InitrdError::IncludeDest(dest.to_string());
    let rest = dest.strip_prefix('/').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
    if parts
        .iter()
        .any(|c| *c == "." || *c == ".." || c.contains('\0'))
    {
        return Err(bad());
    }
    Ok(parts.join("/"))
}

/// Adds a binary from the bin dir after checking it can run without a libc.
pub fn add_binary(tree: &mut Tree, path: &Path, dest: &str, name: &str) -> Result<(), InitrdError> {
    let data = std::fs::read(path).map_err(|e| InitrdError::Read(path.to_path_buf(), e))?;
    let problem = match crate::elf::has_interpreter(&data) {
        Ok(false) => None,
        Ok(true) => Some("dynamically linked".to_string()),
        Err(e) => Some(format!("not a static executable ({e})")),
    };
    if let Some(problem) = problem {
        return Err(InitrdError::NotStatic {
            path: path.to_path_buf(),
            problem,
        });
    }
    tree.add_file(dest, data, 0o755, name)
}

/// The fixed skeleton: mount points init uses and the console node the
/// kernel opens for init's stdio.
pub fn add_skeleton(tree: &mut Tree) -> Result<(), InitrdError> {
    for dir in ["dev", "proc", "sys", "run"] {
        tree.add_dir(dir, 0o755, "berth-build")?;
    }
    tree.add_dir("tmp", 0o1777, "berth-build")?;
    tree.add_char_dev("dev/console", 5, 1, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_collisions_are_named() {
        let mut t = Tree::new();
        t.add_file("lib/modules/kernel/a.ko", b"a".to_vec(), 0o644, "module a")
            .unwrap();
        t.add_file("init", b"x".to_vec(), 0o755, "berth-init")
            .unwrap();
        t.add_file("lib-x", b"y".to_vec(), 0o644, "extra").unwrap();
        assert_eq!(
            t.paths().collect::<Vec<_>>(),
            [
                "init",
                "lib",
                "lib-x",
                "lib/modules",
                "lib/modules/kernel",
                "lib/modules/kernel/a.ko"
            ]
        );
        let err = t
            .add_file("init", b"z".to_vec(), 0o644, "--include ./x:/init")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/init from --include ./x:/init collides with /init from berth-init"
        );
        let err = t
            .add_file("init/x", b"z".to_vec(), 0o644, "--include y")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/init from --include y collides with /init from berth-init"
        );
    }

    #[test]
    fn include_arguments_are_checked() {
        let inc: Include = "./site:/srv/www".parse().unwrap();
        assert_eq!(
            inc,
            Include {
                src: "./site".into(),
                dest: "/srv/www".into()
            }
        );
        assert!(matches!(
            "nocolon".parse::<Include>(),
            Err(InitrdError::IncludeSyntax(_))
        ));
        assert!(matches!(
            "a:".parse::<Include>(),
            Err(InitrdError::IncludeSyntax(_))
        ));
        assert_eq!(include_dest("/srv//www/").unwrap(), "srv/www");
        assert_eq!(include_dest("/").unwrap(), "");
        assert!(matches!(
            include_dest("srv"),
            Err(InitrdError::IncludeDest(_))
        ));
        assert!(matches!(
            include_dest("/a/../etc"),
            Err(InitrdError::IncludeDest(_))
        ));
    }

    #[test]
    fn host_trees_keep_modes_and_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("sub/run.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("sub/run.sh", dir.path().join("link")).unwrap();
        let mut t = Tree::new();
        t.add_host(dir.path(), "opt/x", "--include").unwrap();
        assert_eq!(
            t.paths().collect::<Vec<_>>(),
            [
                "opt",
                "opt/x",
                "opt/x/link",
                "opt/x/sub",
                "opt/x/sub/run.sh"
            ]
        );
        assert_eq!(t.nodes["opt/x/sub/run.sh"].perm, 0o750);
        assert_eq!(
            t.nodes["opt/x/link"].kind,
            Kind::Symlink("sub/run.sh".into())
        );
    }
}
