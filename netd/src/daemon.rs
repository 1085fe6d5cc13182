//! The daemon: finds the links, starts one task per configured interface,
//! keeps `/etc/resolv.conf` and the host name in step with what they
//! report, follows carrier changes, and tells init when the network is up.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core as netlink_packet_core;
use rtnetlink::packet_route as netlink_packet_route;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::dhcp::store::LeaseStore;
use crate::iface::{self, error_chain, Report};
use crate::netlink::{Netlink, NetlinkError};
use crate::plan::{self, Plan};
use crate::readiness::Notifier;
use crate::resolv;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `[network]` section; `None` for DHCP on every physical NIC.
    pub config: Option<Config>,
    /// Where the resolver configuration goes.
    pub resolv_conf: PathBuf,
    /// Where leases are remembered.
    pub state_dir: PathBuf,
    /// Set the host name from DHCP (when the manifest sets none).
    pub set_hostname: bool,
    /// `/sys/class/net`, to tell physical NICs from virtual links.
    pub class_net: PathBuf,
    /// How long to wait for every interface before reporting what there is.
    pub ready_timeout: Duration,
}

/// A failure that stops the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Netlink could not be used at all.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// What each interface has said so far.
#[derive(Debug, Default)]
struct Status {
    configured: bool,
    failed: bool,
    dns: Vec<IpAddr>,
    search: Vec<String>,
}

/// Runs until SIGTERM or SIGINT. Addresses stay on the links when it stops,
/// so a restarted netd keeps every lease that is still valid.
pub async fn run(opts: Options, mut notifier: Notifier) -> Result<(), DaemonError> {
    let nl = Netlink::connect()?;
    let links = nl.links().await?;
    for lo in links.iter().filter(|l| l.loopback) {
        if let Err(e) = nl.set_up(lo).await {
            log::error!(target: "netd", "{}", error_chain(&e));
        }
    }
    let Plan { targets, unmatched } = plan::plan(opts.config.as_ref(), &links, |name| {
        plan::is_physical(&opts.class_net, name)
    });
    for u in &unmatched {
        log::error!(target: "netd", "{u} in [network]; it is left alone");
    }
    let nothing_to_do = targets.is_empty();
    if nothing_to_do {
        log::warn!(target: "netd", "no network interface to configure");
        let _ = notifier.not_ready("no network interface to configure");
    }

    let mut events = link_events();
    let store = LeaseStore::new(&opts.state_dir);
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let mut carrier_tx: HashMap<u32, (mpsc::UnboundedSender<bool>, bool)> = HashMap::new();
    let mut status: BTreeMap<String, Status> = BTreeMap::new();
    for t in targets {
        let (tx, rx) = mpsc::unbounded_channel();
        carrier_tx.insert(t.link.index, (tx, t.link.carrier));
        status.insert(t.link.name.clone(), Status::default());
        tokio::spawn(iface::run(
            nl.clone(),
            store.clone(),
            t.link,
            t.config,
            report_tx.clone(),
            rx,
        ));
    }
    drop(report_tx);

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let ready_deadline = tokio::time::sleep(opts.ready_timeout);
    tokio::pin!(ready_deadline);
    let mut hostname: Option<String> = None;
    let mut resolv_text: Option<String> = None;
    let mut reports_open = true;
    // Readiness is announced once, on the pipe when init gave one.
    let mut announced = nothing_to_do;

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = &mut ready_deadline, if !announced => {
                announced = true;
                let done: Vec<&String> = status.iter().filter(|(_, s)| s.configured).map(|(n, _)| n).collect();
                let waiting: Vec<&String> = status.iter().filter(|(_, s)| !s.configured && !s.failed).map(|(n, _)| n).collect();
                log::warn!(target: "netd", "still waiting for {} after {:?}; reporting ready with what there is", join(&waiting), opts.ready_timeout);
                let _ = if done.is_empty() {
                    notifier.not_ready(&format!("no interface configured within {:?}", opts.ready_timeout))
                } else {
                    notifier.ready()
                };
            }
            Some((index, up)) = events.recv() => {
                if let Some((tx, last)) = carrier_tx.get_mut(&index) {
                    if *last != up {
                        *last = up;
                        let _ = tx.send(up);
                    }
                }
            }
            report = reports.recv(), if reports_open => {
                let Some(report) = report else {
                    // Every interface task is done (static configuration
                    // only): stay, so init does not see the network daemon die.
                    reports_open = false;
                    continue;
                };
                match report {
                    Report::Configured { ifname, dns, search, hostname: offered } => {
                        let s = status.entry(ifname).or_default();
                        s.configured = true;
                        s.dns = dns;
                        s.search = search;
                        if let (true, Some(name)) = (opts.set_hostname, offered) {
                            if hostname.as_ref() != Some(&name) {
                                match nix::unistd::sethostname(&name) {
                                    Ok(()) => log::info!(target: "netd", "host name set to {name:?} from DHCP"),
                                    Err(e) => log::warn!(target: "netd", "cannot set the host name to {name:?}: {e}"),
                                }
                                hostname = Some(name);
                            }
                        }
                    }
                    Report::Failed { ifname, .. } => {
                        status.entry(ifname).or_default().failed = true;
                    }
                    Report::Lost { ifname } => {
                        let s = status.entry(ifname).or_default();
                        s.dns.clear();
                        s.search.clear();
                    }
                }
                update_resolv(&opts, &status, &mut resolv_text);
                if !announced && status.values().all(|s| s.configured || s.failed) {
                    announced = true;
                    let done: Vec<&String> = status.iter().filter(|(_, s)| s.configured).map(|(n, _)| n).collect();
                    let _ = if done.is_empty() {
                        log::error!(target: "netd", "no interface could be configured");
                        notifier.not_ready("no interface could be configured")
                    } else {
                        log::info!(target: "netd", "network ready ({})", join(&done));
                        notifier.ready()
                    };
                }
            }
        }
    }
    log::info!(target: "netd", "stopping; addresses stay until their leases end");
    Ok(())
}

fn join(names: &[&String]) -> String {
    if names.is_empty() {
        "nothing".into()
    } else {
        names
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn update_resolv(opts: &Options, status: &BTreeMap<String, Status>, last: &mut Option<String>) {
    let mut servers: Vec<IpAddr> = opts
        .config
        .as_ref()
        .map(|c| c.dns.clone())
        .unwrap_or_default();
    let mut search: Vec<String> = opts
        .config
        .as_ref()
        .map(|c| c.search.clone())
        .unwrap_or_default();
    for s in status.values() {
        servers.extend(&s.dns);
        search.extend(s.search.iter().cloned());
    }
    if servers.is_empty() && search.is_empty() && last.is_none() {
        // Nothing learnt yet: leave whatever the image shipped.
        return;
    }
    let text = resolv::render(&servers, &search);
    if last.as_deref() == Some(text.as_str()) {
        return;
    }
    match resolv::write(&opts.resolv_conf, &text) {
        Ok(()) => {
            log::info!(target: "netd", "wrote {} ({} servers)", opts.resolv_conf.display(), text.matches("nameserver").count());
            *last = Some(text);
        }
        Err(e) => log::error!(target: "netd", "{}", error_chain(&e)),
    }
}

/// Carrier changes `(ifindex, has_carrier)` from the kernel's link
/// notifications. Without them (no multicast socket) links are assumed to
/// stay as they are.
fn link_events() -> mpsc::UnboundedReceiver<(u32, bool)> {
    let (tx, rx) = mpsc::unbounded_channel();
    match rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link]) {
        Ok((conn, _handle, mut messages)) => {
            tokio::spawn(conn);
            tokio::spawn(async move {
                while let Some((msg, _)) = messages.next().await {
                    if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) =
                        msg.payload
                    {
                        let up = link.header.flags.contains(LinkFlags::LowerUp);
                        if tx.send((link.header.index, up)).is_err() {
                            break;
                        }
                    }
                }
            });
        }
        Err(e) => {
            log::warn!(target: "netd", "cannot watch links (carrier changes will be missed): {e}")
        }
    }
    rx
}
