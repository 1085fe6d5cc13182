//! The host programs berth-build drives, and the Debian package for each, so
//! a missing one is reported as something the user can install.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A host tool that is missing or failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Not on `$PATH`.
    #[error("{tool} is not installed (apt-get install {package})")]
    Missing {
        /// The program.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// It ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it said on stderr (trimmed).
        stderr: String,
    },
    /// It could not be started.
    #[error("cannot run {tool}")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A program berth-build runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `apt-get` (downloads Debian's kernel).
    AptGet,
    /// `dpkg-deb` (reads and unpacks it).
    DpkgDeb,
    /// `qemu-system-x86_64` (boots images).
    Qemu,
    /// `mkfs.ext4` (makes data disks).
    Mkfs,
    /// `grub-mkimage` (the boot loaders of the ISO and the raw disk).
    GrubMkimage,
    /// `xorriso` (writes the hybrid ISO).
    Xorriso,
    /// `mkfs.vfat` (the EFI system partition).
    MkfsVfat,
    /// `mcopy` (files into the EFI system partition).
    Mcopy,
    /// `mmd` (directories in it).
    Mmd,
    /// `sfdisk` (the raw disk's GPT).
    Sfdisk,
    /// `qemu-img` (qcow2, vmdk, vdi, vhd).
    QemuImg,
}

impl Tool {
    /// The program name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::AptGet => "apt-get",
            Tool::DpkgDeb => "dpkg-deb",
            Tool::Qemu => "qemu-system-x86_64",
            Tool::Mkfs => "mkfs.ext4",
            Tool::GrubMkimage => "grub-mkimage",
            Tool::Xorriso => "xorriso",
            Tool::MkfsVfat => "mkfs.vfat",
            Tool::Mcopy => "mcopy",
            Tool::Mmd => "mmd",
            Tool::Sfdisk => "sfdisk",
            Tool::QemuImg => "qemu-img",
        }
    }

    /// The Debian package that ships it.
    pub fn package(self) -> &'static str {
        match self {
            Tool::AptGet => "apt",
            Tool::DpkgDeb => "dpkg",
            Tool::Qemu => "qemu-system-x86",
            Tool::Mkfs => "e2fsprogs",
            Tool::GrubMkimage => "grub-common",
            Tool::Xorriso => "xorriso",
            Tool::MkfsVfat => "dosfstools",
            Tool::Mcopy | Tool::Mmd => "mtools",
            Tool::Sfdisk => "fdisk",
            Tool::QemuImg => "qemu-utils",
        }
    }

    /// The program's path on `$PATH`, or the error naming its package.
    pub fn find(self) -> Result<PathBuf, ToolError> {
        let missing = || ToolError::Missing {
            tool: self.name(),
            package: self.package(),
        };
        let path = std::env::var_os("PATH").ok_or_else(missing)?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(self.name()))
            .find(|p| is_executable(p))
            .ok_or_else(missing)
    }

    /// A `Command` for the tool, after checking it is installed.
    pub fn command(self) -> Result<Command, ToolError> {
        Ok(Command::new(self.find()?))
    }

    /// Runs `cmd` (made by [`Tool::command`]) to completion; its stdout on
    /// success, [`ToolError::Failed`] with its stderr otherwise.
    pub fn output(self, cmd: &mut Command) -> Result<Vec<u8>, ToolError> {
        self.output_with_input(cmd, None)
    }

    /// [`Tool::output`], writing `input` to the program's stdin first.
    pub fn output_with_input(
        self,
        cmd: &mut Command,
        input: Option<&[u8]>,
    ) -> Result<Vec<u8>, ToolError> {
        let spawn_err = |source| ToolError::Spawn {
            tool: self.name(),
            source,
        };
        let out = match input {
            None => cmd.output().map_err(spawn_err)?,
            Some(bytes) => {
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(spawn_err)?;
                if let Some(mut stdin) = child.stdin.take() {
                    // A program that exits early reports why on stderr.
                    let _ = stdin.write_all(bytes);
                }
                child.wait_with_output().map_err(spawn_err)?
            }
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Err(ToolError::Failed {
            command: format!("{} {}", self.name(), args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
