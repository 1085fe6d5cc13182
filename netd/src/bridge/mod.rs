//! Container networking for `--network bridge` (the default), as a library
//! the engine calls: a bridge with its own subnet, a veth pair per
//! container whose inner end becomes the container's `eth0`, addresses from
//! a pool that survives restarts ([`ipam`]), outbound NAT and published
//! ports in the kernel ([`nft`]), and each container's `/etc/hosts` and
//! `/etc/resolv.conf` ([`hosts`]). `--network none` is [`setup_none`];
//! `--network host` needs nothing.
//!
//! Everything berth adds to the firewall lives in one nftables table named
//! after the bridge (`table ip berth0`), replaced as a whole in one atomic
//! transaction on every change; nothing else on the host is touched. The
//! host must not drop forwarded traffic in another table (an accept in one
//! table cannot override a drop in another): Docker's `FORWARD` policy
//! drop, for one, blocks published ports and outbound traffic.
//!
//! Kernel modules needed (built in on most kernels, modules in Debian's):
//! [`REQUIRED_MODULES`].

pub mod hosts;
pub mod ipam;
pub mod nft;
pub mod ns;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

use crate::netlink::{LinkInfo, Netlink, NetlinkError, Origin, RouteSpec, VethPeer};
use ipam::{Ipam, IpamError, Lease};
pub use ipam::{Ipv4Net, Port, Proto};
pub use ns::NetnsRef;
use ns::{NsError, Worker, WorkerError};

/// The default bridge.
pub const DEFAULT_BRIDGE: &str = "berth0";
/// The default subnet: inside 10/8 but away from the 10.0.x and 10.1.x
/// that home routers, QEMU (10.0.2.0/24) and clouds favour, and from
/// Docker's 172.17/16.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";
/// The container end's name inside its namespace.
pub const CONTAINER_IF: &str = "eth0";
/// Kernel modules the bridge needs where they are not built in (names as
/// in Debian's kernel; load them with their dependencies first).
pub const REQUIRED_MODULES: &[&str] = &[
    "bridge",
    "veth",
    "nf_tables",
    "nf_conntrack",
    "nf_nat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "nft_fib",
    "nft_fib_ipv4",
];

/// What went wrong, as a sentence naming the bridge, container or file.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A bridge name the kernel would refuse.
    #[error("invalid bridge name {name:?}: {why}")]
    BadBridgeName {
        /// The name.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// The subnet overlaps an address or route the host already has.
    #[error(
        "subnet {subnet} of bridge {bridge} overlaps {other} on this host; choose another subnet"
    )]
    Clash {
        /// The bridge.
        bridge: String,
        /// Its subnet.
        subnet: Ipv4Net,
        /// The clashing address or route, with its interface.
        other: String,
    },
    /// The bridge is gone (deleted behind netd's back, or never made).
    #[error("bridge {0} does not exist (Bridge::ensure makes it)")]
    NoBridge(String),
    /// A request that cannot be carried out.
    #[error("cannot attach container {id} to bridge {bridge}: {why}")]
    BadRequest {
        /// The container.
        id: String,
        /// The bridge.
        bridge: String,
        /// Why, as a phrase.
        why: String,
    },
    /// The state directory's lock could not be taken.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A sysctl could not be set.
    #[error("cannot set {path} (needed for forwarding and published ports)")]
    Sysctl {
        /// The file under /proc/sys.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The container end did not appear in the container's namespace.
    #[error("the container end {CONTAINER_IF} of {veth} is missing in {netns}")]
    NoContainerEnd {
        /// The host end.
        veth: String,
        /// The namespace.
        netns: PathBuf,
    },
    /// The address pool or its file.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A netlink request.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The firewall.
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    /// A container's hosts or resolv.conf.
    #[error(transparent)]
    Hosts(#[from] hosts::HostsError),
    /// Network namespaces.
    #[error(transparent)]
    Ns(#[from] NsError),
}

impl From<WorkerError> for BridgeError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Ns(e) => BridgeError::Ns(e),
            WorkerError::Netlink(e) => BridgeError::Netlink(e),
        }
    }
}

/// How to make the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge name (also the nftables table's name).
    pub name: String,
    /// Its subnet; the bridge takes the first address, containers the rest.
    pub subnet: Ipv4Net,
    /// Where the address pool is remembered (`<name>.json`, `<name>.lock`).
    pub state_dir: PathBuf,
    /// The namespace the bridge lives in; the caller's when `None` (tests
    /// and nested setups give one).
    pub host_netns: Option<NetnsRef>,
    /// The host's resolver file, whose servers containers get when the
    /// request names none.
    pub host_resolv_conf: PathBuf,
}

impl BridgeConfig {
    /// The defaults: `berth0`, [`DEFAULT_SUBNET`], the caller's namespace,
    /// `/etc/resolv.conf`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        BridgeConfig {
            name: DEFAULT_BRIDGE.into(),
            subnet: DEFAULT_SUBNET
                .parse()
                .unwrap_or_else(|_| unreachable!("the default subnet parses")),
            state_dir: state_dir.into(),
            host_netns: None,
            host_resolv_conf: crate::resolv::DEFAULT_PATH.into(),
        }
    }
}

/// A container to wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// The engine's container id: the key of everything it is given.
    pub container_id: String,
    /// Its name: how the other containers reach it.
    pub name: String,
    /// More names for it (its host name, a short id).
    pub aliases: Vec<String>,
    /// Its network namespace.
    pub netns: NetnsRef,
    /// Ports to publish.
    pub ports: Vec<Port>,
    /// DNS servers for it; the host's when empty.
    pub dns: Vec<IpAddr>,
    /// Where to write its `hosts` and `resolv.conf` (and keep `hosts` up
    /// to date as other containers come and go), for the engine to
    /// bind-mount over `/etc/hosts` and `/etc/resolv.conf`. The files are
    /// rewritten in place, so bind mounts see the changes.
    pub etc_dir: Option<PathBuf>,
}

/// What a container was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// Its default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// The host end of its veth pair.
    pub host_veth: String,
    /// Its `/etc/hosts` text.
    pub hosts: String,
    /// Its `/etc/resolv.conf` text.
    pub resolv_conf: String,
}

/// A bridge that exists, with its address pool and firewall table.
#[derive(Debug)]
pub struct Bridge {
    cfg: BridgeConfig,
    host_ns: Option<File>,
    lock: Mutex<()>,
}

/// The exclusive right to change the pool, in this process and across
/// processes.
struct Locked<'a> {
    _thread: std::sync::MutexGuard<'a, ()>,
    _file: Flock<File>,
}

/// The host end's name: stable for a (bridge, container) pair, so a stale
/// one from a crash is found and replaced. FNV-1a, 40 bits in hex.
pub fn host_veth_name(bridge: &str, container_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bridge.bytes().chain([0]).chain(container_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("vb{:010x}", h >> 24)
}

/// A locally administered MAC derived from an address, so that a reused
/// address comes back with the same MAC (peers' ARP caches stay right).
fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0xbe, o[0], o[1], o[2], o[3]]
}

fn check_bridge_name(name: &str) -> Result<(), BridgeError> {
    let bad = |why| {
        Err(BridgeError::BadBridgeName {
            name: name.into(),
            why,
        })
    };
    if name.is_empty() || name.len() > 15 {
        return bad("it must have 1 to 15 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("use letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<(), BridgeError> {
    fs::write(path, value).map_err(|source| BridgeError::Sysctl {
        path: path.into(),
        source,
    })
}

impl Bridge {
    /// Makes sure the bridge exists with its address, forwarding is on,
    /// and its firewall table matches the stored pool. Safe to call on
    /// every engine start: it also forgets containers whose veth is gone
    /// (their namespace died while nobody was looking).
    pub fn ensure(cfg: BridgeConfig) -> Result<Bridge, BridgeError> {
        check_bridge_name(&cfg.name)?;
        let host_ns = cfg.host_netns.as_ref().map(NetnsRef::open).transpose()?;
        let bridge = Bridge {
            cfg,
            host_ns,
            lock: Mutex::new(()),
        };
        bridge.reconcile()?;
        Ok(bridge)
    }

    /// The body of [`Bridge::ensure`], under the lock.
    fn reconcile(&self) -> Result<(), BridgeError> {
        let bridge = self;
        let _locked = bridge.lock()?;
        let mut ipam = bridge.load()?;
        let cfg = &bridge.cfg;
        let stale = bridge.in_host(|_, rt| {
            rt.block_on(async {
                let nl = Netlink::connect()?;
                let link = bridge.ensure_link(&nl).await?;
                write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
                write_sysctl(
                    &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", link.name),
                    "1",
                )?;
                match nft::forward_drop_chains() {
                    Ok(chains) => {
                        for c in chains {
                            log::warn!(
                                target: "netd::bridge",
                                "{}: chain {c} drops forwarded packets by default; containers' \
                                 outbound traffic and published ports will not work unless it \
                                 accepts traffic from and to {}",
                                cfg.name,
                                cfg.name
                            );
                        }
                    }
                    Err(e) => log::warn!(
                        target: "netd::bridge",
                        "{}: cannot list other firewalls' chains: {e}",
                        cfg.name
                    ),
                }
                let links = nl.links().await?;
                let stale: Vec<String> = ipam
                    .leases
                    .keys()
                    .filter(|id| {
                        let veth = host_veth_name(&cfg.name, id);
                        !links.iter().any(|l| l.name == veth)
                    })
                    .cloned()
                    .collect();
                Ok::<_, BridgeError>(stale)
            })
        })?;
        let mut gone = Vec::new();
        for id in stale {
            log::info!(
                target: "netd::bridge",
                "{}: container {id} is gone; releasing its address",
                cfg.name
            );
            if let Some(l) = ipam.release(&id) {
                gone.push(l);
            }
        }
        bridge.commit(&ipam, Table::Whole)?;
        for l in &gone {
            remove_etc(l)?;
        }
        bridge.write_all_hosts(&ipam)
    }

    /// Other firewalls' forward chains whose policy is drop
    /// (`"ip filter FORWARD"`): they block the containers' traffic, and an
    /// accept in berth's table cannot override them. [`Bridge::ensure`]
    /// logs them as warnings; the engine may show them to the user.
    pub fn forward_blockers(&self) -> Result<Vec<String>, BridgeError> {
        self.in_host(|_, _| Ok(nft::forward_drop_chains()?))
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    /// The bridge's own address (the containers' gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.cfg.subnet.gateway()
    }

    /// Wires a container: an address (the one it had if it is already
    /// known), a veth pair with `eth0` inside its namespace, `lo` up, a
    /// default route, its published ports, and its hosts and resolv.conf;
    /// the other containers' hosts files get its name.
    pub fn attach(&self, req: &AttachRequest) -> Result<Attachment, BridgeError> {
        let cfg = &self.cfg;
        let bad = |why: String| BridgeError::BadRequest {
            id: req.container_id.clone(),
            bridge: cfg.name.clone(),
            why,
        };
        if req.container_id.is_empty() || req.container_id.contains(['/', '"', '\n']) {
            return Err(bad(
                "the container id is empty or has '/', '\"' or a newline".into(),
            ));
        }
        for n in std::iter::once(&req.name).chain(&req.aliases) {
            if !hosts::valid_name(n) {
                return Err(bad(format!("{n:?} is not a valid host name")));
            }
        }
        for p in &req.ports {
            if matches!(p.host_ip, Some(IpAddr::V6(_))) {
                return Err(bad(format!(
                    "port {p}: IPv6 host addresses are not supported"
                )));
            }
        }
        let netns_file = req.netns.open()?;
        let _locked = self.lock()?;
        let mut ipam = self.load()?;
        check_conflicts(&ipam, req).map_err(bad)?;
        // A re-attached container may drop ports it had.
        let had_ports = ipam
            .leases
            .get(&req.container_id)
            .is_some_and(|l| !l.ports.is_empty());
        let ip = ipam.allocate(
            &req.container_id,
            Lease {
                name: req.name.clone(),
                aliases: req.aliases.clone(),
                ip: Ipv4Addr::UNSPECIFIED,
                ports: req.ports.clone(),
                etc_dir: req.etc_dir.clone(),
            },
        )?;
        let table = if had_ports || !req.ports.is_empty() {
            Table::Ports
        } else {
            Table::Unchanged
        };
        let veth = host_veth_name(&cfg.name, &req.container_id);
        let wired = self
            .in_host(|w, rt| rt.block_on(self.wire(w, &veth, &netns_file, &req.netns.path(), ip)));
        if let Err(e) = wired {
            self.unwire(&veth);
            return Err(e);
        }
        if let Err(e) = self.commit(&ipam, table) {
            self.unwire(&veth);
            ipam.release(&req.container_id);
            let _ = self.commit(&ipam, table);
            return Err(e);
        }
        let lease = &ipam.leases[&req.container_id];
        let others = ipam
            .leases
            .iter()
            .filter(|(id, _)| *id != &req.container_id)
            .map(|(_, l)| l);
        let hosts_text = hosts::render_hosts(lease, others);
        let host_resolver = fs::read_to_string(&cfg.host_resolv_conf)
            .map(|t| hosts::parse_resolv(&t))
            .unwrap_or_default();
        let resolv_text = hosts::render_resolv(&req.dns, &host_resolver);
        if let Some(dir) = &req.etc_dir {
            fs::create_dir_all(dir).map_err(|source| hosts::HostsError {
                path: dir.clone(),
                source,
            })?;
            hosts::write_in_place(&dir.join(hosts::RESOLV_CONF), &resolv_text)?;
        }
        self.write_all_hosts(&ipam)?;
        Ok(Attachment {
            ip,
            prefix: cfg.subnet.prefix(),
            gateway: cfg.subnet.gateway(),
            host_veth: veth,
            hosts: hosts_text,
            resolv_conf: resolv_text,
        })
    }

    /// Removes everything `container_id` was given: its veth pair, its
    /// address, its published ports, its files, and its name from the
    /// others' hosts files. Detaching an unknown container is not an error.
    pub fn detach(&self, container_id: &str) -> Result<(), BridgeError> {
        let _locked = self.lock()?;
        let mut ipam = self.load()?;
        let veth = host_veth_name(&self.cfg.name, container_id);
        self.in_host(|_, rt| {
            rt.block_on(async {
                let nl = Netlink::connect()?;
                if let Some(link) = nl.link_by_name(&veth).await? {
                    nl.del_link(&link).await?;
                }
                Ok::<_, BridgeError>(())
            })
        })?;
        let Some(lease) = ipam.release(container_id) else {
            return Ok(());
        };
        let table = if lease.ports.is_empty() {
            Table::Unchanged
        } else {
            Table::Ports
        };
        self.commit(&ipam, table)?;
        remove_etc(&lease)?;
        self.write_all_hosts(&ipam)
    }

    /// Removes the bridge and everything on it: every container's veth and
    /// files, the firewall table, the bridge, the pool's file.
    pub fn teardown(self) -> Result<(), BridgeError> {
        let _locked = self.lock()?;
        let ipam = self.load()?;
        let cfg = &self.cfg;
        self.in_host(|_, rt| {
            rt.block_on(async {
                let nl = Netlink::connect()?;
                for id in ipam.leases.keys() {
                    if let Some(link) = nl.link_by_name(&host_veth_name(&cfg.name, id)).await? {
                        nl.del_link(&link).await?;
                    }
                }
                nft::apply(&nft::delete_table(&cfg.name))?;
                if let Some(link) = nl.link_by_name(&cfg.name).await? {
                    nl.del_link(&link).await?;
                }
                Ok::<_, BridgeError>(())
            })
        })?;
        for l in ipam.leases.values() {
            remove_etc(l)?;
        }
        let path = Ipam::path(&cfg.state_dir, &cfg.name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(IpamError::Write { path, source: e }.into())
            }
            _ => Ok(()),
        }
    }

    fn lock(&self) -> Result<Locked<'_>, BridgeError> {
        let thread = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.cfg.state_dir.join(format!("{}.lock", self.cfg.name));
        let err = |source| BridgeError::Lock {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.cfg.state_dir).map_err(err)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        let file = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| err(e.into()))?;
        Ok(Locked {
            _thread: thread,
            _file: file,
        })
    }

    fn load(&self) -> Result<Ipam, BridgeError> {
        let path = Ipam::path(&self.cfg.state_dir, &self.cfg.name);
        Ok(Ipam::load(&path, &self.cfg.name, self.cfg.subnet)?)
    }

    /// Saves the pool, then makes the firewall table match it.
    fn commit(&self, ipam: &Ipam, table: Table) -> Result<(), BridgeError> {
        ipam.save(&Ipam::path(&self.cfg.state_dir, &self.cfg.name))?;
        let cfg = &self.cfg;
        if table == Table::Unchanged {
            return Ok(());
        }
        self.in_host(|_, _| {
            // Falls back to the whole table when the chain is gone.
            if table == Table::Ports && nft::apply(&nft::ports(&cfg.name, &ipam.leases)).is_ok() {
                return Ok(());
            }
            let msgs = nft::ruleset(&cfg.name, &cfg.name, cfg.subnet, &ipam.leases);
            Ok::<_, BridgeError>(nft::apply(&msgs)?)
        })
    }

    fn in_host<T: Send>(
        &self,
        f: impl FnOnce(&Worker, &tokio::runtime::Runtime) -> Result<T, BridgeError> + Send,
    ) -> Result<T, BridgeError> {
        ns::run(self.host_ns.as_ref().map(|f| f.as_fd()), f)
    }

    /// Creates the bridge if needed (after checking the subnet is free),
    /// gives it exactly the gateway address, and sets it up.
    async fn ensure_link(&self, nl: &Netlink) -> Result<LinkInfo, BridgeError> {
        let cfg = &self.cfg;
        let links = nl.links().await?;
        let existing = links.iter().find(|l| l.name == cfg.name).cloned();
        let own_index = existing.as_ref().map(|l| l.index);
        let name_of = |index: Option<u32>| {
            index
                .and_then(|i| links.iter().find(|l| l.index == i))
                .map(|l| l.name.clone())
                .unwrap_or_else(|| "?".into())
        };
        for link in links.iter().filter(|l| Some(l.index) != own_index) {
            for (addr, prefix) in nl.addresses(link).await? {
                let IpAddr::V4(a) = addr else { continue };
                if Ipv4Net::new(a, prefix).is_some_and(|n| n.overlaps(&cfg.subnet)) {
                    return Err(BridgeError::Clash {
                        bridge: cfg.name.clone(),
                        subnet: cfg.subnet,
                        other: format!("address {a}/{prefix} on {}", link.name),
                    });
                }
            }
        }
        for r in nl.routes_v4().await? {
            if r.prefix == 0 || (r.oif.is_some() && r.oif == own_index) {
                continue;
            }
            if Ipv4Net::new(r.dest, r.prefix).is_some_and(|n| n.overlaps(&cfg.subnet)) {
                return Err(BridgeError::Clash {
                    bridge: cfg.name.clone(),
                    subnet: cfg.subnet,
                    other: format!("route {}/{} dev {}", r.dest, r.prefix, name_of(r.oif)),
                });
            }
        }
        let gw = cfg.subnet.gateway();
        let link = match existing {
            Some(l) => l,
            None => {
                nl.add_bridge(&cfg.name, mac_for(gw)).await?;
                nl.link_by_name(&cfg.name)
                    .await?
                    .ok_or_else(|| BridgeError::NoBridge(cfg.name.clone()))?
            }
        };
        let mut has_gw = false;
        for (addr, prefix) in nl.addresses(&link).await? {
            if addr == IpAddr::V4(gw) && prefix == cfg.subnet.prefix() {
                has_gw = true;
            } else if addr.is_ipv4() {
                nl.del_address(&link, addr, prefix).await?;
            }
        }
        if !has_gw {
            nl.add_address(&link, IpAddr::V4(gw), cfg.subnet.prefix(), None)
                .await?;
        }
        nl.set_up(&link).await?;
        Ok(link)
    }

    /// The veth pair and the container side's addresses and routes.
    async fn wire(
        &self,
        w: &Worker,
        veth: &str,
        netns: &File,
        netns_path: &Path,
        ip: Ipv4Addr,
    ) -> Result<(), BridgeError> {
        let cfg = &self.cfg;
        let nl = Netlink::connect()?;
        let bridge = nl
            .link_by_name(&cfg.name)
            .await?
            .ok_or_else(|| BridgeError::NoBridge(cfg.name.clone()))?;
        if let Some(old) = nl.link_by_name(veth).await? {
            nl.del_link(&old).await?;
        }
        let inner = w.connect_in(netns.as_fd())?;
        if let Some(old) = inner.link_by_name(CONTAINER_IF).await? {
            inner.del_link(&old).await?;
        }
        nl.add_veth(
            veth,
            bridge.index,
            VethPeer {
                name: CONTAINER_IF,
                mac: mac_for(ip),
                netns: netns.as_fd(),
            },
        )
        .await?;
        let links = inner.links().await?;
        if let Some(lo) = links.iter().find(|l| l.loopback) {
            inner.set_up(lo).await?;
        }
        let eth0 = links
            .iter()
            .find(|l| l.name == CONTAINER_IF)
            .ok_or_else(|| BridgeError::NoContainerEnd {
                veth: veth.into(),
                netns: netns_path.to_path_buf(),
            })?;
        inner
            .add_address(eth0, IpAddr::V4(ip), cfg.subnet.prefix(), None)
            .await?;
        inner.set_up(eth0).await?;
        inner
            .add_route(
                eth0,
                &RouteSpec {
                    dest: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    prefix: 0,
                    gateway: Some(IpAddr::V4(cfg.subnet.gateway())),
                    origin: Origin::Static,
                    metric: 0,
                },
            )
            .await?;
        Ok(())
    }

    /// Best effort: removes a half-made veth pair after a failure.
    fn unwire(&self, veth: &str) {
        let _ = self.in_host(|_, rt| {
            rt.block_on(async {
                let nl = Netlink::connect()?;
                if let Some(link) = nl.link_by_name(veth).await? {
                    nl.del_link(&link).await?;
                }
                Ok::<_, BridgeError>(())
            })
        });
    }

    /// Rewrites the hosts file of every container that has an etc dir.
    fn write_all_hosts(&self, ipam: &Ipam) -> Result<(), BridgeError> {
        for (id, lease) in &ipam.leases {
            let Some(dir) = &lease.etc_dir else { continue };
            let others = ipam
                .leases
                .iter()
                .filter(|(other, _)| *other != id)
                .map(|(_, l)| l);
            let text = hosts::render_hosts(lease, others);
            hosts::write_in_place(&dir.join(hosts::HOSTS), &text)?;
        }
        Ok(())
    }
}

/// How much of the firewall table a change touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// Nothing: no published ports came or went.
    Unchanged,
    /// The published ports.
    Ports,
    /// Everything (at start-up).
    Whole,
}

/// Names and host ports must be unique on a bridge.
fn check_conflicts(ipam: &Ipam, req: &AttachRequest) -> Result<(), String> {
    let mine: Vec<&String> = std::iter::once(&req.name).chain(&req.aliases).collect();
    for (id, l) in ipam
        .leases
        .iter()
        .filter(|(id, _)| **id != req.container_id)
    {
        for n in std::iter::once(&l.name).chain(&l.aliases) {
            if mine.contains(&n) {
                return Err(format!("the name {n:?} is taken by container {id}"));
            }
        }
        for p in &req.ports {
            let clash = l.ports.iter().any(|q| {
                q.proto == p.proto
                    && q.host_port == p.host_port
                    && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
            });
            if clash {
                return Err(format!(
                    "host port {}/{} is already published by container {id}",
                    p.host_port, p.proto
                ));
            }
        }
    }
    let mut seen = BTreeMap::new();
    for p in &req.ports {
        if let Some(q) = seen.insert((p.proto, p.host_port, p.host_ip), p) {
            return Err(format!(
                "host port {}/{} is published twice ({q} and {p})",
                p.host_port, p.proto
            ));
        }
    }
    Ok(())
}

/// Removes the files written for a container.
fn remove_etc(lease: &Lease) -> Result<(), BridgeError> {
    if let Some(dir) = &lease.etc_dir {
        hosts::remove(&dir.join(hosts::HOSTS))?;
        hosts::remove(&dir.join(hosts::RESOLV_CONF))?;
    }
    Ok(())
}

/// `--network none`: the namespace keeps only `lo`, which is brought up.
pub fn setup_none(netns: &NetnsRef) -> Result<(), BridgeError> {
    let file = netns.open()?;
    ns::run(None, |w, rt| {
        rt.block_on(async {
            let inner = w.connect_in(file.as_fd())?;
            for link in inner.links().await? {
                if link.loopback {
                    inner.set_up(&link).await?;
                }
            }
            Ok::<_, BridgeError>(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("berth0", "abc");
        assert_eq!(a, host_veth_name("berth0", "abc"));
        assert_eq!(a.len(), 12);
        assert_ne!(a, host_veth_name("berth0", "abd"));
        assert_ne!(a, host_veth_name("berth1", "abc"));
        assert!(a.starts_with("vb"));
    }

    #[test]
    fn bridge_names() {
        assert!(check_bridge_name("berth0").is_ok());
        let e = check_bridge_name("a-very-long-bridge-name").unwrap_err();
        assert!(e.to_string().contains("1 to 15"), "{e}");
        assert!(check_bridge_name("a b").is_err());
    }

    fn req(name: &str, ports: &[(u16, Proto)]) -> AttachRequest {
        AttachRequest {
            container_id: format!("id-{name}"),
            name: name.into(),
            aliases: vec![],
            netns: NetnsRef::Pid(1),
            ports: ports
                .iter()
                .map(|&(host_port, proto)| Port {
                    host_ip: None,
                    host_port,
                    container_port: 80,
                    proto,
                })
                .collect(),
            dns: vec![],
            etc_dir: None,
        }
    }

    #[test]
    fn names_and_ports_are_unique() {
        let mut ipam = Ipam::new("b", DEFAULT_SUBNET.parse().unwrap());
        let web = req("web", &[(80, Proto::Tcp)]);
        ipam.allocate(
            &web.container_id,
            Lease {
                name: web.name.clone(),
                aliases: vec!["www".into()],
                ip: Ipv4Addr::UNSPECIFIED,
                ports: web.ports.clone(),
                etc_dir: None,
            },
        )
        .unwrap();
        assert!(check_conflicts(&ipam, &web).is_ok(), "re-attaching itself");
        assert!(check_conflicts(&ipam, &req("db", &[(80, Proto::Udp)])).is_ok());
        let e = check_conflicts(&ipam, &req("www", &[])).unwrap_err();
        assert_eq!(e, "the name \"www\" is taken by container id-web");
        let e = check_conflicts(&ipam, &req("db", &[(80, Proto::Tcp)])).unwrap_err();
        assert_eq!(
            e,
            "host port 80/tcp is already published by container id-web"
        );
        let e =
            check_conflicts(&ipam, &req("db", &[(81, Proto::Tcp), (81, Proto::Tcp)])).unwrap_err();
        assert!(e.contains("published twice"), "{e}");
    }
}
