//! Addresses for containers on one bridge, remembered in a state file so
//! that an engine restart finds the same allocations. Pure apart from
//! [`Ipam::load`] and [`Ipam::save`]; the file is replaced atomically.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What can go wrong with the address pool or its file.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A subnet that does not parse or cannot hold containers.
    #[error("invalid subnet {text:?}: {why}")]
    BadSubnet {
        /// The text given.
        text: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// The state file could not be read.
    #[error("cannot read the IPAM state {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The state file is not what this module writes.
    #[error("the IPAM state {path} is corrupt: {why} (move it away to start afresh)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        why: String,
    },
    /// The state file could not be written.
    #[error("cannot write the IPAM state {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The subnet changed while containers still hold addresses in the old one.
    #[error(
        "bridge {bridge} still has {count} container(s) attached in {old}; detach them before changing its subnet to {new}"
    )]
    SubnetChanged {
        /// The bridge.
        bridge: String,
        /// Containers still attached.
        count: usize,
        /// The subnet in the state file.
        old: Ipv4Net,
        /// The configured subnet.
        new: Ipv4Net,
    },
    /// Every address is taken.
    #[error("no free address left in {subnet} on bridge {bridge}")]
    Exhausted {
        /// The bridge.
        bridge: String,
        /// Its subnet.
        subnet: Ipv4Net,
    },
}

/// An IPv4 network: an address with its host bits clear, and a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The network holding `addr`/`prefix` (host bits cleared); `None` for a
    /// prefix over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if prefix > 32 {
            return None;
        }
        Some(Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    /// The first host address: the bridge's (the containers' gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = IpamError;

    /// Parses `A.B.C.D/N`; host bits must be clear and the network must
    /// hold a gateway and at least one container (`/8` to `/30`).
    fn from_str(s: &str) -> Result<Self, IpamError> {
        let bad = |why| IpamError::BadSubnet {
            text: s.to_string(),
            why,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| bad("expected A.B.C.D/N"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("the address is not IPv4"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("the prefix is not a number"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("the prefix must be between /8 and /30"));
        }
        let net = Ipv4Net::new(addr, prefix).ok_or_else(|| bad("the prefix is over 32"))?;
        if net.addr != addr {
            return Err(bad("host bits are set (use the network address)"));
        }
        Ok(net)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A published port: `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Port {
    /// Only traffic to this host address; every local address when absent.
    pub host_ip: Option<IpAddr>,
    /// Port on the host.
    pub host_port: u16,
    /// Port in the container.
    pub container_port: u16,
    /// Protocol.
    pub proto: Proto,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.proto
        )
    }
}

/// One container's allocation and what it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The container's name (its host name for the others).
    pub name: String,
    /// Other names it answers to.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its published ports.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Where its `hosts` and `resolv.conf` were written, if anywhere.
    #[serde(default)]
    pub etc_dir: Option<PathBuf>,
}

/// The pool of one bridge, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    /// The bridge.
    pub bridge: String,
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Where the next search for a free address starts, so a released
    /// address is not handed out again at once (stale ARP entries).
    pub next: Ipv4Addr,
    /// Allocations by container id.
    pub leases: BTreeMap<String, Lease>,
}

impl Ipam {
    /// An empty pool.
    pub fn new(bridge: &str, subnet: Ipv4Net) -> Self {
        Ipam {
            bridge: bridge.to_string(),
            subnet,
            next: first_host(subnet),
            leases: BTreeMap::new(),
        }
    }

    /// The state file of `bridge` under `dir`.
    pub fn path(dir: &Path, bridge: &str) -> PathBuf {
        dir.join(format!("{bridge}.json"))
    }

    /// Reads the pool from `path`, or starts an empty one when there is no
    /// file. A pool stored for another subnet is accepted only when empty.
    pub fn load(path: &Path, bridge: &str, subnet: Ipv4Net) -> Result<Self, IpamError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ipam::new(bridge, subnet)),
            Err(source) => {
                return Err(IpamError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let stored: Ipam = serde_json::from_str(&text).map_err(|e| IpamError::Corrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        if stored.subnet != subnet {
            if !stored.leases.is_empty() {
                return Err(IpamError::SubnetChanged {
                    bridge: bridge.to_string(),
                    count: stored.leases.len(),
                    old: stored.subnet,
                    new: subnet,
                });
            }
            return Ok(Ipam::new(bridge, subnet));
        }
        if let Some((id, lease)) = stored.leases.iter().find(|(_, l)| !usable(subnet, l.ip)) {
            return Err(IpamError::Corrupt {
                path: path.to_path_buf(),
                why: format!("container {id} holds {} outside {subnet}", lease.ip),
            });
        }
        Ok(Ipam {
            bridge: bridge.to_string(),
            ..stored
        })
    }

    /// Writes the pool to `path` atomically: a temporary file in the same
    /// directory, synced, renamed over the old one, and the directory synced.
    pub fn save(&self, path: &Path) -> Result<(), IpamError> {
        let err = |source| IpamError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let mut text = serde_json::to_string_pretty(self).map_err(|e| err(io::Error::other(e)))?;
        text.push('\n');
        let tmp = path.with_extension("json.tmp");
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(e)
        })
    }

    /// The address of `id`, allocating the next free one when it has none.
    pub fn allocate(&mut self, id: &str, lease: Lease) -> Result<Ipv4Addr, IpamError> {
        if let Some(old) = self.leases.get(id) {
            let ip = old.ip;
            self.leases.insert(id.to_string(), Lease { ip, ..lease });
            return Ok(ip);
        }
        let first = u32::from(first_host(self.subnet));
        let last = u32::from(self.subnet.broadcast()) - 1;
        let size = last - first + 1;
        let start = if usable(self.subnet, self.next) {
            u32::from(self.next)
        } else {
            first
        };
        for i in 0..size {
            let candidate = Ipv4Addr::from(first + (start - first + i) % size);
            if !self.leases.values().any(|l| l.ip == candidate) {
                let next = first + (u32::from(candidate) - first + 1) % size;
                self.next = Ipv4Addr::from(next);
                self.leases.insert(
                    id.to_string(),
                    Lease {
                        ip: candidate,
                        ..lease
                    },
                );
                return Ok(candidate);
            }
        }
        Err(IpamError::Exhausted {
            bridge: self.bridge.clone(),
            subnet: self.subnet,
        })
    }

    /// Forgets `id`; returns what it held.
    pub fn release(&mut self, id: &str) -> Option<Lease> {
        self.leases.remove(id)
    }
}

/// The first address a container can get (the gateway has the one before).
fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.gateway()) + 1)
}

fn usable(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(ip) && ip >= first_host(subnet) && ip < subnet.broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str) -> Lease {
        Lease {
            name: name.into(),
            aliases: vec![],
            ip: Ipv4Addr::UNSPECIFIED,
            ports: vec![],
            etc_dir: None,
        }
    }

    #[test]
    fn parses_and_checks_subnets() {
        let n: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 213, 255, 255));
        assert!(n.contains(Ipv4Addr::new(10, 213, 9, 9)));
        assert!(!n.contains(Ipv4Addr::new(10, 214, 0, 1)));
        assert_eq!(n.to_string(), "10.213.0.0/16");
        for (bad, why) in [
            ("10.213.0.1/16", "host bits"),
            ("10.213.0.0", "expected"),
            ("10.213.0.0/31", "between"),
            ("10.0.0.0/7", "between"),
            ("fd00::/64", "IPv4"),
        ] {
            let e = bad.parse::<Ipv4Net>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn overlap() {
        let a: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        let inside = Ipv4Net::new(Ipv4Addr::new(10, 213, 4, 0), 24).unwrap();
        let around = Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap();
        let beside = Ipv4Net::new(Ipv4Addr::new(10, 214, 0, 0), 16).unwrap();
        assert!(a.overlaps(&inside) && inside.overlaps(&a));
        assert!(a.overlaps(&around) && around.overlaps(&a));
        assert!(!a.overlaps(&beside));
        let host = Ipv4Net::new(Ipv4Addr::new(10, 213, 255, 255), 32).unwrap();
        assert!(a.overlaps(&host));
    }

    #[test]
    fn allocates_round_robin_and_wraps() {
        let mut ipam = Ipam::new("b", "10.9.0.0/29".parse().unwrap());
        // .0 network, .1 gateway, .2-.6 containers, .7 broadcast.
        let ips: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}"), lease("x")).unwrap())
            .collect();
        assert_eq!(ips.first(), Some(&Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(ips.last(), Some(&Ipv4Addr::new(10, 9, 0, 6)));
        let e = ipam.allocate("c5", lease("x")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no free address left in 10.9.0.0/29 on bridge b"
        );
        // The same id keeps its address.
        assert_eq!(ipam.allocate("c1", lease("y")).unwrap(), ips[1]);
        assert_eq!(ipam.leases["c1"].name, "y");
        ipam.release("c1");
        ipam.release("c3");
        // The cursor wrapped to .2, which is taken; .3 is the first free one.
        assert_eq!(ipam.allocate("new", lease("x")).unwrap(), ips[1]);
        assert_eq!(ipam.allocate("new2", lease("x")).unwrap(), ips[3]);
    }

    #[test]
    fn released_addresses_are_not_reused_at_once() {
        let mut ipam = Ipam::new("b", "10.9.0.0/24".parse().unwrap());
        let a = ipam.allocate("a", lease("a")).unwrap();
        ipam.release("a");
        let b = ipam.allocate("b", lease("b")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn survives_a_reload_and_refuses_a_subnet_change() {
        let dir = tempfile::tempdir().unwrap();
        let subnet: Ipv4Net = "10.9.0.0/24".parse().unwrap();
        let path = Ipam::path(dir.path(), "b");
        let mut ipam = Ipam::load(&path, "b", subnet).unwrap();
        let mut l = lease("web");
        l.ports.push(Port {
            host_ip: None,
            host_port: 80,
            container_port: 8080,
            proto: Proto::Tcp,
        });
        let ip = ipam.allocate("id1", l).unwrap();
        ipam.save(&path).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let again = Ipam::load(&path, "b", subnet).unwrap();
        assert_eq!(again, ipam);
        assert_eq!(again.leases["id1"].ip, ip);

        let other: Ipv4Net = "10.10.0.0/24".parse().unwrap();
        let e = Ipam::load(&path, "b", other).unwrap_err().to_string();
        assert_eq!(
            e,
            "bridge b still has 1 container(s) attached in 10.9.0.0/24; detach them before changing its subnet to 10.10.0.0/24"
        );
        let mut again = again;
        again.release("id1");
        again.save(&path).unwrap();
        assert!(Ipam::load(&path, "b", other).unwrap().leases.is_empty());

        fs::write(&path, "{").unwrap();
        let e = Ipam::load(&path, "b", subnet).unwrap_err().to_string();
        assert!(e.contains("is corrupt"), "{e}");
    }
}
