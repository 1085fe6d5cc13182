//! The remembered lease: one small text file per interface under the state
//! directory, so a restart (of netd or of the machine, with a data disk) can
//! ask for the same address with INIT-REBOOT and keep an address that is
//! still valid.
//!
//! ```text
//! address=10.0.0.7/24
//! server=10.0.0.1
//! acquired=1700000000
//! lease=3600
//! ...
//! ```

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::Binding;
use super::packet::{Lease, LeaseRoute, INFINITE};

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth/netd";

/// Why a lease file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing or removing the file failed.
    #[error("cannot {what} lease file {path}")]
    Io {
        /// "read", "write" or "remove".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file's contents do not parse.
    #[error("lease file {path} line {line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// A lease as stored: the lease and the wall-clock second it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    /// The lease.
    pub lease: Lease,
    /// Seconds since the Unix epoch when the lease started.
    pub acquired_unix: u64,
}

impl StoredLease {
    /// Stores `binding`, translating its monotonic start to wall-clock time.
    pub fn from_binding(binding: &Binding, now: Instant, wall_now: SystemTime) -> Self {
        let age = now.saturating_duration_since(binding.acquired);
        let acquired = wall_now.checked_sub(age).unwrap_or(wall_now);
        StoredLease {
            lease: binding.lease.clone(),
            acquired_unix: acquired
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// The binding for the client, on the monotonic clock. A lease that
    /// started before the monotonic clock did (an earlier boot) is placed at
    /// the earliest representable instant, which keeps its expiry right
    /// or earlier: never later.
    pub fn to_binding(&self, now: Instant, wall_now: SystemTime) -> Binding {
        let acquired_wall = UNIX_EPOCH + Duration::from_secs(self.acquired_unix);
        let age = wall_now
            .duration_since(acquired_wall)
            .unwrap_or(Duration::ZERO);
        let mut lease = self.lease.clone();
        let acquired = match now.checked_sub(age) {
            Some(acquired) => acquired,
            None => {
                // The monotonic clock cannot go back that far: start the
                // lease now and shorten it by its age instead.
                let age = age.as_secs().min(u64::from(u32::MAX)) as u32;
                let cut = |t: u32| {
                    if t == INFINITE {
                        t
                    } else {
                        t.saturating_sub(age)
                    }
                };
                lease.lease_secs = cut(lease.lease_secs);
                lease.t1_secs = cut(lease.t1_secs);
                lease.t2_secs = cut(lease.t2_secs);
                now
            }
        };
        Binding { lease, acquired }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let l = &self.lease;
        let join = |v: Vec<String>| v.join(",");
        let mut s = String::from("# berth-netd DHCP lease\n");
        s += &format!("address={}/{}\n", l.address, l.prefix);
        s += &format!("server={}\n", l.server);
        s += &format!("acquired={}\n", self.acquired_unix);
        s += &format!(
            "lease={}\nt1={}\nt2={}\n",
            l.lease_secs, l.t1_secs, l.t2_secs
        );
        s += &format!(
            "routers={}\n",
            join(l.routers.iter().map(|r| r.to_string()).collect())
        );
        s += &format!(
            "routes={}\n",
            join(
                l.classless_routes
                    .iter()
                    .map(|r| match r.gateway {
                        Some(gw) => format!("{}/{}>{gw}", r.dest, r.prefix),
                        None => format!("{}/{}", r.dest, r.prefix),
                    })
                    .collect()
            )
        );
        s += &format!(
            "dns={}\n",
            join(l.dns.iter().map(|r| r.to_string()).collect())
        );
        s += &format!("domains={}\n", l.domains.join(","));
        if let Some(h) = &l.hostname {
            s += &format!("hostname={h}\n");
        }
        if let Some(m) = l.mtu {
            s += &format!("mtu={m}\n");
        }
        s
    }

    /// Parses [`StoredLease::render`]'s output; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, StoreError> {
        let mut lease = Lease {
            address: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            server: Ipv4Addr::UNSPECIFIED,
            lease_secs: 0,
            t1_secs: 0,
            t2_secs: 0,
            routers: vec![],
            classless_routes: vec![],
            dns: vec![],
            domains: vec![],
            hostname: None,
            mtu: None,
            warnings: vec![],
        };
        let mut acquired = None;
        for (i, line) in text.lines().enumerate() {
            let err = |message: String| StoreError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err(format!("expected key=value, found {line:?}")))?;
            let bad = |_| err(format!("bad value {value:?} for {key}"));
            let list = || value.split(',').filter(|s| !s.is_empty());
            match key {
                "address" => {
                    let (a, p) = value
                        .split_once('/')
                        .ok_or_else(|| err(format!("bad address {value:?}")))?;
                    lease.address = a
                        .parse()
                        .map_err(|_| err(format!("bad address {value:?}")))?;
                    lease.prefix = p
                        .parse()
                        .map_err(|_| err(format!("bad address {value:?}")))?;
                    if lease.prefix > 32 {
                        return Err(err(format!("bad address {value:?}")));
                    }
                }
                "server" => {
                    lease.server = value
                        .parse()
                        .map_err(|_| err(format!("bad server {value:?}")))?
                }
                "acquired" => acquired = Some(value.parse::<u64>().map_err(bad)?),
                "lease" => lease.lease_secs = value.parse().map_err(bad)?,
                "t1" => lease.t1_secs = value.parse().map_err(bad)?,
                "t2" => lease.t2_secs = value.parse().map_err(bad)?,
                "routers" => {
                    lease.routers = list()
                        .map(|r| r.parse().map_err(|_| err(format!("bad router {r:?}"))))
                        .collect::<Result<_, _>>()?
                }
                "dns" => {
                    lease.dns = list()
                        .map(|r| r.parse().map_err(|_| err(format!("bad DNS server {r:?}"))))
                        .collect::<Result<_, _>>()?
                }
                "domains" => lease.domains = list().map(str::to_string).collect(),
                "hostname" => lease.hostname = Some(value.to_string()),
                "mtu" => lease.mtu = Some(value.parse().map_err(bad)?),
                "routes" => {
                    lease.classless_routes = list()
                        .map(|r| parse_route(r).ok_or_else(|| err(format!("bad route {r:?}"))))
                        .collect::<Result<_, _>>()?
                }
                _ => return Err(err(format!("unknown key {key:?}"))),
            }
        }
        let missing = |what: &str| StoreError::Parse {
            path: path.to_path_buf(),
            line: 0,
            message: format!("no {what}"),
        };
        if lease.address.is_unspecified() {
            return Err(missing("address"));
        }
        if lease.lease_secs == 0 {
            return Err(missing("lease time"));
        }
        Ok(StoredLease {
            lease,
            acquired_unix: acquired.ok_or_else(|| missing("acquired time"))?,
        })
    }
}

fn parse_route(text: &str) -> Option<LeaseRoute> {
    let (net, gw) = match text.split_once('>') {
        Some((n, g)) => (n, Some(g.parse().ok()?)),
        None => (text, None),
    };
    let (dest, prefix) = net.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some(())?;
    Some(LeaseRoute {
        dest: dest.parse().ok()?,
        prefix,
        gateway: gw,
    })
}

/// The lease files of one state directory.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    dir: PathBuf,
}

impl LeaseStore {
    /// Lease files under `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LeaseStore { dir: dir.into() }
    }

    /// The file for interface `ifname`.
    pub fn path(&self, ifname: &str) -> PathBuf {
        self.dir.join(format!("{ifname}.lease"))
    }

    /// The remembered lease of `ifname`, `None` when there is none.
    pub fn load(&self, ifname: &str) -> Result<Option<StoredLease>, StoreError> {
        let path = self.path(ifname);
        match fs::read_to_string(&path) {
            Ok(text) => StoredLease::parse(&text, &path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                what: "read",
                path,
                source,
            }),
        }
    }

    /// Remembers `lease` for `ifname` (written whole, then renamed).
    pub fn save(&self, ifname: &str, lease: &StoredLease) -> Result<(), StoreError> {
        let path = self.path(ifname);
        let io_err = |source| StoreError::Io {
            what: "write",
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(io_err)?;
        let tmp = self.dir.join(format!(".{ifname}.lease.tmp"));
        fs::write(&tmp, lease.render()).map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)
    }

    /// Forgets the lease of `ifname`.
    pub fn remove(&self, ifname: &str) -> Result<(), StoreError> {
        let path = self.path(ifname);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io {
                what: "remove",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredLease {
        StoredLease {
            lease: Lease {
                address: Ipv4Addr::new(10, 0, 0, 7),
                prefix: 24,
                server: Ipv4Addr::new(10, 0, 0, 1),
                lease_secs: 3600,
                t1_secs: 1800,
                t2_secs: 3150,
                routers: vec![Ipv4Addr::new(10, 0, 0, 1)],
                classless_routes: vec![
                    LeaseRoute {
                        dest: Ipv4Addr::new(192, 168, 5, 0),
                        prefix: 24,
                        gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
                    },
                    LeaseRoute {
                        dest: Ipv4Addr::new(10, 9, 0, 0),
                        prefix: 16,
                        gateway: None,
                    },
                ],
                dns: vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(1, 1, 1, 1)],
                domains: vec!["example.com".into(), "lan".into()],
                hostname: Some("node".into()),
                mtu: Some(1400),
                warnings: vec![],
            },
            acquired_unix: 1_700_000_000,
        }
    }

    #[test]
    fn round_trip_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path().join("netd"));
        assert!(store.load("eth0").unwrap().is_none());
        store.save("eth0", &sample()).unwrap();
        assert_eq!(store.load("eth0").unwrap(), Some(sample()));
        store.remove("eth0").unwrap();
        store.remove("eth0").unwrap();
        assert!(store.load("eth0").unwrap().is_none());
    }

    #[test]
    fn bad_files_are_errors_naming_the_line() {
        let p = Path::new("/x/eth0.lease");
        let err = StoredLease::parse("address=10.0.0.7/24\nlease=abc\n", p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "lease file /x/eth0.lease line 2: bad value \"abc\" for lease"
        );
        let err = StoredLease::parse("address=10.0.0.7/24\nlease=60\n", p).unwrap_err();
        assert!(err.to_string().contains("no acquired time"), "{err}");
        let err = StoredLease::parse("bogus\n", p).unwrap_err();
        assert!(err.to_string().contains("expected key=value"), "{err}");
    }

    #[test]
    fn wall_clock_translation() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let b = sample().to_binding(now, wall);
        assert_eq!(now - b.acquired, Duration::from_secs(100));
        let back = StoredLease::from_binding(&b, now, wall);
        assert_eq!(back, sample());
        // A file from the future (the clock went back): the lease counts
        // from now, and INIT-REBOOT asks the server anyway.
        let earlier = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        assert_eq!(sample().to_binding(now, earlier).acquired, now);
    }
}
