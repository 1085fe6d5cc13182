//! `/etc/resolv.conf`, from the configured and the leased DNS servers.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The default resolver configuration file.
pub const DEFAULT_PATH: &str = "/etc/resolv.conf";

/// Writing the resolver configuration failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct ResolvError {
    /// The file.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// The file's text: servers in order without duplicates, then one search
/// line. glibc and musl read three servers and six search domains; the rest
/// are kept for tools that read more.
pub fn render(servers: &[IpAddr], search: &[String]) -> String {
    let mut out = String::from("# written by berth-netd\n");
    let mut seen = Vec::new();
    for s in servers {
        if !seen.contains(s) {
            seen.push(*s);
            out += &format!("nameserver {s}\n");
        }
    }
    let mut domains: Vec<&str> = Vec::new();
    for d in search {
        let d = d.trim_end_matches('.');
        if !d.is_empty() && !domains.contains(&d) {
            domains.push(d);
        }
    }
    if !domains.is_empty() {
        out += &format!("search {}\n", domains.join(" "));
    }
    out
}

/// Replaces `path` with `text`: a temporary file renamed over it, or, when
/// the file is a mount point (bind-mounted in containers and tests), written
/// in place.
pub fn write(path: &Path, text: &str) -> Result<(), ResolvError> {
    let err = |source| ResolvError {
        path: path.to_path_buf(),
        source,
    };
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.netd-tmp"));
    let renamed = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path));
    match renamed {
        Ok(()) => Ok(()),
        Err(_) => {
            let _ = fs::remove_file(&tmp);
            fs::write(path, text).map_err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dedup_and_order() {
        let servers: Vec<IpAddr> = ["10.0.0.1", "1.1.1.1", "10.0.0.1", "fd00::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let text = render(
            &servers,
            &["example.com.".into(), "lan".into(), "example.com".into()],
        );
        assert_eq!(
            text,
            "# written by berth-netd\nnameserver 10.0.0.1\nnameserver 1.1.1.1\nnameserver fd00::1\nsearch example.com lan\n"
        );
        assert_eq!(render(&[], &[]), "# written by berth-netd\n");
    }

    #[test]
    fn writes_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        write(&path, "a\n").unwrap();
        write(&path, "b\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
