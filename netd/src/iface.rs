//! One interface's life: its static configuration, then (when asked) its
//! DHCP client, carrying out the state machine's actions over netlink.
//!
//! A freshly leased address is checked optimistically, as IPv6 does with
//! optimistic DAD (RFC 4429): it goes on the link at once and the ARP probe
//! of [`crate::arp`] runs alongside. When another host answers, the address
//! and its routes come off again and the server gets a DHCPDECLINE. The
//! interface reports itself configured (and so lets netd tell init the
//! network is ready) only once the probe has finished without an answer,
//! so the boot never goes on with an address that turns out to be taken;
//! what the optimism buys is the address on the link 150 ms sooner, for
//! whatever starts alongside netd.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::arp::{self, ArpSocket};
use crate::config::Interface;
use crate::dhcp::client::{Action, Binding, Client, Event};
use crate::dhcp::packet::{self, Identity, PacketError, Reply};
use crate::dhcp::socket::DhcpSocket;
use crate::dhcp::store::{LeaseStore, StoredLease};
use crate::netlink::{LinkInfo, Netlink, NetlinkError, Origin, RouteSpec};

/// What an interface task tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The interface has its addresses, a leased one only once its ARP
    /// probe found no other host using it; these are its resolver settings.
    Configured {
        /// Interface name.
        ifname: String,
        /// DNS servers (configured ones first, then leased ones).
        dns: Vec<IpAddr>,
        /// Search domains.
        search: Vec<String>,
        /// Host name offered by DHCP.
        hostname: Option<String>,
    },
    /// The interface cannot be configured; it is not waited for.
    Failed {
        /// Interface name.
        ifname: String,
        /// Why, as a sentence.
        reason: String,
    },
    /// The lease was lost: its DNS servers no longer apply.
    Lost {
        /// Interface name.
        ifname: String,
    },
}

/// How long the gateway check waits for an ARP reply.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(2);

/// Metric of static routes: per link, so two links' default routes coexist.
fn static_metric(link: &LinkInfo) -> u32 {
    link.index
}

/// Metric of DHCP routes: behind static ones, as systemd-networkd does.
fn dhcp_metric(link: &LinkInfo) -> u32 {
    1024 + link.index
}

/// The routes of the static configuration.
pub fn static_routes(link: &LinkInfo, cfg: &Interface) -> Vec<RouteSpec> {
    let metric = static_metric(link);
    let mut out = Vec::new();
    if let Some(gw) = cfg.gateway {
        out.push(RouteSpec {
            dest: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            prefix: 0,
            gateway: Some(IpAddr::V4(gw)),
            origin: Origin::Static,
            metric,
        });
    }
    if let Some(gw) = cfg.gateway6 {
        out.push(RouteSpec {
            dest: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            prefix: 0,
            gateway: Some(IpAddr::V6(gw)),
            origin: Origin::Static,
            metric,
        });
    }
    for r in &cfg.routes {
        out.push(RouteSpec {
            dest: r.to.addr,
            prefix: r.to.prefix,
            gateway: Some(r.via),
            origin: Origin::Static,
            metric,
        });
    }
    out
}

/// Brings the link up and applies the static part of `cfg`.
pub async fn apply_static(
    nl: &Netlink,
    link: &LinkInfo,
    cfg: &Interface,
) -> Result<(), NetlinkError> {
    if let Some(mtu) = cfg.mtu {
        nl.set_mtu(link, mtu).await?;
    }
    if !cfg.ipv6_autoconf {
        // Router advertisements are a sysctl, not a netlink attribute.
        for key in ["accept_ra", "autoconf"] {
            let path = format!("/proc/sys/net/ipv6/conf/{}/{key}", link.name);
            if let Err(e) = std::fs::write(&path, "0") {
                log::warn!(target: "netd", "{}: cannot write {path}: {e}", link.name);
            }
        }
    }
    nl.set_up(link).await?;
    for a in &cfg.addresses {
        nl.add_address(link, a.addr, a.prefix, None).await?;
        log::info!(target: "netd", "{}: address {a}", link.name);
    }
    for r in static_routes(link, cfg) {
        nl.add_route(link, &r).await?;
        log::info!(target: "netd", "{}: route {r}", link.name);
    }
    Ok(())
}

/// The DHCP routes of a lease.
pub fn lease_routes(link: &LinkInfo, lease: &packet::Lease) -> Vec<RouteSpec> {
    lease
        .routes()
        .into_iter()
        .map(|r| RouteSpec {
            dest: IpAddr::V4(r.dest),
            prefix: r.prefix,
            gateway: r.gateway.map(IpAddr::V4),
            origin: Origin::Dhcp,
            metric: dhcp_metric(link),
        })
        .collect()
}

/// Runs one interface until the daemon stops: static configuration, then
/// DHCP when configured. Reports go to `reports`; carrier changes arrive on
/// `carrier`.
pub async fn run(
    nl: Netlink,
    store: LeaseStore,
    link: LinkInfo,
    cfg: Interface,
    reports: mpsc::UnboundedSender<Report>,
    carrier: mpsc::UnboundedReceiver<bool>,
) {
    let ifname = link.name.clone();
    if let Err(e) = apply_static(&nl, &link, &cfg).await {
        let reason = error_chain(&e);
        log::error!(target: "netd", "{ifname}: {reason}");
        let _ = reports.send(Report::Failed { ifname, reason });
        return;
    }
    if !cfg.dhcp {
        let _ = reports.send(Report::Configured {
            ifname,
            dns: cfg.dns.clone(),
            search: cfg.search.clone(),
            hostname: None,
        });
        return;
    }
    let Some(mac) = link.mac.filter(|_| link.ethernet) else {
        let reason = format!("{ifname} is not an Ethernet link; DHCP needs one");
        log::error!(target: "netd", "{reason}");
        let _ = reports.send(Report::Failed { ifname, reason });
        return;
    };
    let socket = match DhcpSocket::open(&ifname, link.index) {
        Ok(s) => s,
        Err(e) => {
            let reason = error_chain(&e);
            log::error!(target: "netd", "{reason}");
            let _ = reports.send(Report::Failed { ifname, reason });
            return;
        }
    };
    let mut seed = RandomState::new().build_hasher();
    seed.write(&mac);
    seed.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let client = Client::new(
        Identity {
            mac,
            hostname: None,
        },
        seed.finish(),
    );
    let (probe_tx, probe_rx) = mpsc::unbounded_channel();
    let mut dhcp = Dhcp {
        nl,
        store,
        link,
        cfg,
        reports,
        socket,
        client,
        routes: Vec::new(),
        current: None,
        probing: None,
        probes: 0,
        probe_tx,
        probe_rx,
    };
    dhcp.run(carrier).await;
}

/// The ARP probe of an address that is already on the link.
struct Probing {
    /// Tells this probe's answer from that of an earlier, cancelled one.
    id: u64,
    addr: Ipv4Addr,
    task: tokio::task::JoinHandle<()>,
}

/// How a probe ended.
struct ProbeDone {
    id: u64,
    /// The hardware address of a host that has the address.
    owner: Option<[u8; 6]>,
    took: Duration,
}

struct Dhcp {
    nl: Netlink,
    store: LeaseStore,
    link: LinkInfo,
    cfg: Interface,
    reports: mpsc::UnboundedSender<Report>,
    socket: DhcpSocket,
    client: Client,
    /// DHCP routes installed now.
    routes: Vec<RouteSpec>,
    /// The leased address on the link now.
    current: Option<Ipv4Addr>,
    /// The probe of `current` while it runs; until it ends, the lease is
    /// not reported.
    probing: Option<Probing>,
    /// Probes started so far.
    probes: u64,
    probe_tx: mpsc::UnboundedSender<ProbeDone>,
    probe_rx: mpsc::UnboundedReceiver<ProbeDone>,
}

impl Dhcp {
    async fn run(&mut self, mut carrier: mpsc::UnboundedReceiver<bool>) {
        let ifname = self.link.name.clone();
        let remembered = match self.store.load(&ifname) {
            Ok(stored) => stored.map(|s| s.to_binding(Instant::now(), SystemTime::now())),
            Err(e) => {
                log::warn!(target: "netd", "{ifname}: ignoring the remembered lease: {}", error_chain(&e));
                None
            }
        };
        match &remembered {
            Some(b) => {
                log::info!(target: "netd", "{ifname}: DHCP INIT-REBOOT asking for {}", b.lease.address)
            }
            None => log::info!(target: "netd", "{ifname}: DHCP DISCOVER"),
        }
        let actions = self.client.start(Instant::now(), remembered);
        self.execute(actions).await;
        let mut carrier_open = true;
        loop {
            let deadline = self.client.deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            let actions = tokio::select! {
                r = self.socket.recv() => match r {
                    Ok(bytes) => match packet::parse_reply(&bytes, &self.link.mac.unwrap_or_default()) {
                        Ok(reply) => {
                            if let Reply::Nak { server, message, .. } = &reply {
                                log::info!(
                                    target: "netd",
                                    "{ifname}: DHCP NAK from {}: {}",
                                    server.map_or("an unnamed server".to_string(), |s| s.to_string()),
                                    message.as_deref().unwrap_or("no reason given"),
                                );
                            }
                            self.client.handle(Instant::now(), Event::Reply(reply))
                        }
                        Err(PacketError::NotForUs) => Vec::new(),
                        Err(e) => {
                            log::warn!(target: "netd", "{ifname}: ignored a DHCP packet: {e}");
                            Vec::new()
                        }
                    },
                    Err(e) => {
                        log::error!(target: "netd", "{}", error_chain(&e));
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        Vec::new()
                    }
                },
                () = sleep => self.client.handle(Instant::now(), Event::Timer),
                Some(done) = self.probe_rx.recv() => self.probe_done(done).await,
                up = carrier.recv(), if carrier_open => match up {
                    Some(true) => {
                        log::info!(target: "netd", "{ifname}: carrier up");
                        self.client.handle(Instant::now(), Event::LinkUp)
                    }
                    Some(false) => {
                        log::info!(target: "netd", "{ifname}: carrier down");
                        self.client.handle(Instant::now(), Event::LinkDown)
                    }
                    None => {
                        carrier_open = false;
                        Vec::new()
                    }
                },
            };
            self.execute(actions).await;
        }
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(msg, dest) => {
                    let bytes = match packet::encode(&msg) {
                        Ok(b) => b,
                        Err(e) => {
                            log::error!(target: "netd", "{}: {e}", self.link.name);
                            continue;
                        }
                    };
                    let src = msg.ciaddr();
                    if let Some(kind) = msg.opts().msg_type() {
                        log::debug!(target: "netd", "{}: sending {kind:?} to {dest:?}", self.link.name);
                    }
                    if let Err(e) = self.socket.send(&bytes, dest, src).await {
                        log::warn!(target: "netd", "{}", error_chain(&e));
                    }
                }
                Action::Configure(b) => {
                    let fresh = self.current != Some(b.lease.address);
                    if fresh {
                        self.cancel_probe();
                    }
                    if !self.configure(&b).await {
                        continue;
                    }
                    if fresh {
                        self.start_probe(b.lease.address);
                    } else if self.probing.is_none() {
                        self.report_configured(&b.lease);
                    }
                }
                Action::Deconfigure(lease) => {
                    self.cancel_probe();
                    self.deconfigure(&lease).await;
                }
                Action::Forget => {
                    if let Err(e) = self.store.remove(&self.link.name) {
                        log::warn!(target: "netd", "{}", error_chain(&e));
                    }
                }
            }
        }
    }

    /// Starts the ARP probe of `addr`, which [`Dhcp::configure`] has just
    /// put on the link; [`Dhcp::probe_done`] takes its answer.
    fn start_probe(&mut self, addr: Ipv4Addr) {
        self.probes += 1;
        let id = self.probes;
        let (name, index, mac) = (self.link.name.clone(), self.link.index, self.link.mac);
        let tx = self.probe_tx.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let owner = match mac {
                Some(mac) => probe(&name, index, mac, addr).await,
                None => None,
            };
            let _ = tx.send(ProbeDone {
                id,
                owner,
                took: start.elapsed(),
            });
        });
        self.probing = Some(Probing { id, addr, task });
    }

    /// Stops a running probe: its address is being replaced or removed.
    fn cancel_probe(&mut self) {
        if let Some(p) = self.probing.take() {
            p.task.abort();
        }
    }

    /// A probe's answer. Nobody answered: the lease is reported (and the
    /// gateway checked, now that the address may be announced). Another
    /// host has the address: it comes off the link and the server is told
    /// with DHCPDECLINE.
    async fn probe_done(&mut self, done: ProbeDone) -> Vec<Action> {
        let Some(p) = self.probing.take_if(|p| p.id == done.id) else {
            return Vec::new();
        };
        let Some(b) = self
            .client
            .binding()
            .filter(|b| b.lease.address == p.addr)
            .cloned()
        else {
            return Vec::new();
        };
        let name = self.link.name.clone();
        let Some(owner) = done.owner else {
            log::info!(
                target: "netd",
                "{name}: {} confirmed: no other host answered the ARP probe ({} ms)",
                p.addr,
                done.took.as_millis()
            );
            self.report_configured(&b.lease);
            self.check_gateway(&b.lease);
            return Vec::new();
        };
        log::warn!(
            target: "netd",
            "{name}: {} is already used by {}; sending DHCPDECLINE to {}",
            p.addr,
            arp::mac_string(&owner),
            b.lease.server,
        );
        self.remove(&b.lease).await;
        log::warn!(
            target: "netd",
            "{name}: removed {}/{} and its routes (the ARP probe was answered after {} ms)",
            b.lease.address,
            b.lease.prefix,
            done.took.as_millis()
        );
        self.client.decline(Instant::now())
    }

    /// Resolves the lease's default gateway over ARP in the background and
    /// logs whether and how fast it answered: the first sign that the link
    /// really carries traffic.
    fn check_gateway(&self, lease: &packet::Lease) {
        let Some(gateway) = lease
            .routes()
            .into_iter()
            .find(|r| r.prefix == 0)
            .and_then(|r| r.gateway)
        else {
            return;
        };
        let Some(mac) = self.link.mac else {
            return;
        };
        let (name, index, source) = (self.link.name.clone(), self.link.index, lease.address);
        tokio::spawn(async move {
            let answer = match ArpSocket::open(&name, index, mac) {
                Ok(sock) => sock.resolve(source, gateway, GATEWAY_TIMEOUT).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(Some((_, took))) => log::info!(
                    target: "netd",
                    "{name}: gateway {gateway} reachable (ARP reply in {} ms)",
                    took.as_millis()
                ),
                Ok(None) => log::warn!(
                    target: "netd",
                    "{name}: gateway {gateway} did not answer ARP within {} ms",
                    GATEWAY_TIMEOUT.as_millis()
                ),
                Err(e) => log::warn!(target: "netd", "{}", error_chain(&e)),
            }
        });
    }

    /// Puts the lease on the link; whether its address is there now.
    async fn configure(&mut self, b: &Binding) -> bool {
        let name = &self.link.name;
        let now = Instant::now();
        let lease = &b.lease;
        for w in &lease.warnings {
            log::warn!(target: "netd", "{name}: DHCP server {}: {w}", lease.server);
        }
        let lifetime = b.remaining(now);
        if lifetime.is_some_and(|l| l.as_secs() == 0) {
            return false;
        }
        if let (Some(mtu), None) = (lease.mtu, self.cfg.mtu) {
            if let Err(e) = self.nl.set_mtu(&self.link, u32::from(mtu)).await {
                log::warn!(target: "netd", "{}", error_chain(&e));
            }
        }
        if let Err(e) = self
            .nl
            .add_address(
                &self.link,
                IpAddr::V4(lease.address),
                lease.prefix,
                lifetime,
            )
            .await
        {
            log::error!(target: "netd", "{}", error_chain(&e));
            return false;
        }
        let routes = lease_routes(&self.link, lease);
        for old in self.routes.clone() {
            if !routes.contains(&old) {
                if let Err(e) = self.nl.del_route(&self.link, &old).await {
                    log::warn!(target: "netd", "{}", error_chain(&e));
                }
            }
        }
        for r in &routes {
            if let Err(e) = self.nl.add_route(&self.link, r).await {
                log::warn!(target: "netd", "{}", error_chain(&e));
            }
        }
        self.routes = routes;
        let secs = match lifetime {
            Some(l) => format!("{}s", l.as_secs()),
            None => "ever".to_string(),
        };
        let routes: Vec<String> = self.routes.iter().map(|r| r.to_string()).collect();
        let dns: Vec<String> = lease.dns.iter().map(|d| d.to_string()).collect();
        let verb = if self.current == Some(lease.address) {
            "renewed"
        } else {
            "lease"
        };
        self.current = Some(lease.address);
        log::info!(
            target: "netd",
            "{name}: DHCP {verb} {}/{} from {} for {secs} (routes: {}; dns: {})",
            lease.address,
            lease.prefix,
            lease.server,
            if routes.is_empty() { "none".into() } else { routes.join(", ") },
            if dns.is_empty() { "none".into() } else { dns.join(", ") },
        );
        let stored = StoredLease::from_binding(b, now, SystemTime::now());
        if let Err(e) = self.store.save(name, &stored) {
            log::warn!(target: "netd", "{}", error_chain(&e));
        }
        true
    }

    /// Tells the daemon the lease is in place: its resolver settings and
    /// host name apply, and the interface counts as ready.
    fn report_configured(&self, lease: &packet::Lease) {
        let mut dns: Vec<IpAddr> = self.cfg.dns.clone();
        dns.extend(lease.dns.iter().map(|d| IpAddr::V4(*d)));
        let mut search = self.cfg.search.clone();
        search.extend(lease.domains.iter().cloned());
        let _ = self.reports.send(Report::Configured {
            ifname: self.link.name.clone(),
            dns,
            search,
            hostname: lease.hostname.clone(),
        });
    }

    async fn deconfigure(&mut self, lease: &packet::Lease) {
        log::warn!(target: "netd", "{}: DHCP lease {}/{} withdrawn", self.link.name, lease.address, lease.prefix);
        self.remove(lease).await;
        let _ = self.reports.send(Report::Lost {
            ifname: self.link.name.clone(),
        });
    }

    /// Takes the lease's routes and address off the link.
    async fn remove(&mut self, lease: &packet::Lease) {
        for r in std::mem::take(&mut self.routes) {
            if let Err(e) = self.nl.del_route(&self.link, &r).await {
                log::warn!(target: "netd", "{}", error_chain(&e));
            }
        }
        if let Err(e) = self
            .nl
            .del_address(&self.link, IpAddr::V4(lease.address), lease.prefix)
            .await
        {
            log::warn!(target: "netd", "{}", error_chain(&e));
        }
        self.current = None;
    }
}

/// An error and its sources as one line: "cannot x: y: z".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// ARP-probes for `addr` on the link; the hardware address of a host that
/// has it. A probe that cannot run is logged and counts as no conflict: the
/// address is used rather than the link left bare.
async fn probe(name: &str, index: u32, mac: [u8; 6], addr: Ipv4Addr) -> Option<[u8; 6]> {
    let answer = match ArpSocket::open(name, index, mac) {
        Ok(sock) => sock.probe(addr).await,
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(|e| {
        log::warn!(target: "netd", "{}; {addr} is used unchecked", error_chain(&e));
        None
    })
}
