//! The `/etc/hosts` and `/etc/resolv.conf` each container on a bridge gets:
//! pure text from the pool's leases and the host's resolver settings, and a
//! writer that keeps bind mounts working.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::ipam::Lease;

/// The hosts file's name in a container's etc directory.
pub const HOSTS: &str = "hosts";
/// The resolver file's name in a container's etc directory.
pub const RESOLV_CONF: &str = "resolv.conf";

/// A container file could not be written or removed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct HostsError {
    /// The file.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// Whether `name` can appear in a hosts file and be looked up: a host name
/// of letters, digits, `-`, `_` and `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The hosts file of container `own` (a key of `leases`): loopback, its own
/// names, then every other container on the bridge in address order.
pub fn render_hosts<'a>(own: &Lease, others: impl IntoIterator<Item = &'a Lease>) -> String {
    let mut out = String::from(
        "# written by berth-netd\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let line = |l: &Lease| {
        let mut s = format!("{}\t{}", l.ip, l.name);
        for a in &l.aliases {
            s.push(' ');
            s += a;
        }
        s.push('\n');
        s
    };
    out += &line(own);
    let mut others: Vec<&Lease> = others.into_iter().filter(|l| l.ip != own.ip).collect();
    others.sort_by_key(|l| l.ip);
    for l in others {
        out += &line(l);
    }
    out
}

/// Name servers and search domains read from a resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    /// `nameserver` lines, in order.
    pub servers: Vec<IpAddr>,
    /// `search` (or `domain`) domains.
    pub search: Vec<String>,
}

/// Parses the host's resolv.conf. Loopback servers (a local stub resolver
/// such as 127.0.0.53) are dropped: a container cannot reach them.
pub fn parse_resolv(text: &str) -> Resolver {
    let mut out = Resolver::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                    if !ip.is_loopback() {
                        out.servers.push(ip);
                    }
                }
            }
            // The last search or domain line wins, as in glibc.
            Some("search") | Some("domain") => out.search = words.map(str::to_string).collect(),
            _ => {}
        }
    }
    out
}

/// The resolver file of a container: its own servers when it has any, or
/// else the host's.
pub fn render_resolv(own: &[IpAddr], host: &Resolver) -> String {
    if own.is_empty() {
        crate::resolv::render(&host.servers, &host.search)
    } else {
        crate::resolv::render(own, &host.search)
    }
}

/// Writes `text` to `path` in place (not by rename), because the engine
/// bind-mounts the file into the container and a bind mount keeps the old
/// inode. The new text is written before the file is cut to length, so a
/// reader never sees it empty.
pub fn write_in_place(path: &Path, text: &str) -> Result<(), HostsError> {
    let write = || -> io::Result<()> {
        if fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        f.write_all(text.as_bytes())?;
        f.set_len(text.len() as u64)?;
        Ok(())
    };
    write().map_err(|source| HostsError {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes a file written for a container; one that is gone is fine.
pub fn remove(path: &Path) -> Result<(), HostsError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(HostsError {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn lease(name: &str, last: u8, aliases: &[&str]) -> Lease {
        Lease {
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ip: Ipv4Addr::new(10, 213, 0, last),
            ports: vec![],
            etc_dir: None,
        }
    }

    #[test]
    fn hosts_name_self_then_peers_by_address() {
        let web = lease("web", 3, &["abc123"]);
        let db = lease("db", 10, &[]);
        let cache = lease("cache", 2, &[]);
        let text = render_hosts(&web, [&db, &web, &cache]);
        assert_eq!(
            text,
            "# written by berth-netd\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.213.0.3\tweb abc123\n10.213.0.2\tcache\n10.213.0.10\tdb\n"
        );
    }

    #[test]
    fn names() {
        for ok in ["web", "my-db_1", "a.b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a#b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn host_resolver_without_loopback_stubs() {
        let r = parse_resolv(
            "# comment\nnameserver 127.0.0.53\nnameserver 10.0.2.3 # qemu\nnameserver ::1\n\
             nameserver fd00::3\nnameserver bogus\ndomain old\nsearch lan example.com\noptions edns0\n",
        );
        assert_eq!(
            r.servers,
            vec![
                "10.0.2.3".parse::<IpAddr>().unwrap(),
                "fd00::3".parse().unwrap()
            ]
        );
        assert_eq!(r.search, vec!["lan", "example.com"]);
        assert_eq!(
            render_resolv(&[], &r),
            "# written by berth-netd\nnameserver 10.0.2.3\nnameserver fd00::3\nsearch lan example.com\n"
        );
        let own = ["1.1.1.1".parse().unwrap()];
        assert_eq!(
            render_resolv(&own, &r),
            "# written by berth-netd\nnameserver 1.1.1.1\nsearch lan example.com\n"
        );
    }

    #[test]
    fn in_place_write_keeps_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        write_in_place(&path, "a long first text\n").unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        write_in_place(&path, "short\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "short\n");
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
    }
}
