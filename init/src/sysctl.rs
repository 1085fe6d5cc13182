//! `[system] sysctl`: kernel parameters written under `/proc/sys`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A sysctl that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// The key is empty or would escape `/proc/sys`.
    #[error("sysctl key {0:?} is not a valid name")]
    BadKey(String),
    /// Writing the value failed (unknown key, read-only, invalid value...).
    #[error("cannot set sysctl {key} = {value:?} via {}", path.display())]
    Write {
        /// The dotted key.
        key: String,
        /// The value from the manifest.
        value: String,
        /// The file written.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// The file under `root` (normally `/proc/sys`) for a dotted key:
/// `net.ipv4.ip_forward` → `net/ipv4/ip_forward`.
pub fn key_path(root: &Path, key: &str) -> Result<PathBuf, SysctlError> {
    let parts: Vec<&str> = key.split(['.', '/']).collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == ".." || p.contains('\0'))
    {
        return Err(SysctlError::BadKey(key.to_string()));
    }
    let mut path = root.to_path_buf();
    path.extend(parts);
    Ok(path)
}

/// Writes every entry; returns the ones that failed (each is a warning).
pub fn apply(root: &Path, entries: &BTreeMap<String, String>) -> Vec<SysctlError> {
    let mut errors = Vec::new();
    for (key, value) in entries {
        let result = key_path(root, key).and_then(|path| {
            // No `create`: a key the kernel does not have is an error, not a new file.
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, format!("{value}\n").as_bytes())
                })
                .map_err(|source| SysctlError::Write {
                    key: key.clone(),
                    value: value.clone(),
                    path,
                    source,
                })
        });
        match result {
            Ok(()) => log::debug!("sysctl {key} = {value}"),
            Err(e) => errors.push(e),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_become_slashes() {
        let p = key_path(Path::new("/proc/sys"), "net.ipv4.ip_forward");
        assert_eq!(p.ok(), Some(PathBuf::from("/proc/sys/net/ipv4/ip_forward")));
        assert!(key_path(Path::new("/proc/sys"), "net..x").is_err());
        assert!(key_path(Path::new("/proc/sys"), "").is_err());
        assert!(key_path(Path::new("/proc/sys"), "a/../../etc").is_err());
    }

    #[test]
    fn applies_and_reports_bad_keys() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("net/ipv4"))?;
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0\n")?;
        let mut entries = BTreeMap::new();
        entries.insert("net.ipv4.ip_forward".to_string(), "1".to_string());
        entries.insert("no.such.key".to_string(), "1".to_string());
        let errors = apply(dir.path(), &entries);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward"))?,
            "1\n"
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("no.such.key"),
            "{}",
            errors[0]
        );
        Ok(())
    }
}
