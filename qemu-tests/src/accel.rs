//! Which QEMU accelerator to use: `BERTH_ACCEL=kvm|tcg` forces one, else
//! `berth-build accel` decides (it probes KVM with a short boot, since a
//! nested KVM can hang). Asked once per process.

use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::paths;

/// Why the accelerator could not be chosen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccelError {
    /// `BERTH_ACCEL` holds something other than `kvm` or `tcg`.
    #[error("BERTH_ACCEL={0:?} is neither `kvm` nor `tcg`")]
    BadEnv(String),
    /// `berth-build` is not where we looked.
    #[error("cannot run {path} to probe the accelerator ({hint}); or set BERTH_ACCEL=tcg")]
    MissingBinary {
        /// Where we looked.
        path: PathBuf,
        /// How to build it.
        hint: &'static str,
    },
    /// `berth-build accel` failed or printed something unexpected.
    #[error("`{path} accel` failed: {detail}")]
    Probe {
        /// The binary we ran.
        path: PathBuf,
        /// Its exit status and output.
        detail: String,
    },
}

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation: always works, about 3x slower to boot.
    Tcg,
}

impl Accel {
    /// Parses `kvm` or `tcg`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "kvm" => Some(Self::Kvm),
            "tcg" => Some(Self::Tcg),
            _ => None,
        }
    }

    /// QEMU arguments selecting this accelerator.
    pub fn qemu_args(self) -> &'static [&'static str] {
        match self {
            Self::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Self::Tcg => &["-accel", "tcg", "-cpu", "max"],
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// The accelerator for this process's guests (decided once, then cached).
pub fn accel() -> Result<Accel, AccelError> {
    static CHOSEN: OnceLock<Result<Accel, AccelError>> = OnceLock::new();
    CHOSEN.get_or_init(choose).clone()
}

fn choose() -> Result<Accel, AccelError> {
    if let Some(forced) = std::env::var_os("BERTH_ACCEL") {
        let forced = forced.to_string_lossy().into_owned();
        return Accel::parse(&forced).ok_or(AccelError::BadEnv(forced));
    }
    let path = paths::berth_build();
    if !path.is_file() {
        return Err(AccelError::MissingBinary {
            path,
            hint: paths::BUILD_HINT,
        });
    }
    let out = Command::new(&path)
        .arg("accel")
        .output()
        .map_err(|e| AccelError::Probe {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match Accel::parse(&stdout) {
        Some(a) if out.status.success() => Ok(a),
        _ => Err(AccelError::Probe {
            path,
            detail: format!(
                "{}; stdout {:?}; stderr {:?}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_berth_build_prints() {
        assert_eq!(Accel::parse("kvm\n"), Some(Accel::Kvm));
        assert_eq!(Accel::parse("tcg"), Some(Accel::Tcg));
        assert_eq!(Accel::parse("hvf"), None);
    }
}
