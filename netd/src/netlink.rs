//! Links, addresses and routes over rtnetlink: the only way netd changes the
//! kernel's network configuration (no `ip` binary in the image).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::stream::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, CacheInfo};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkLayerType};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A failed netlink request, naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Connect(#[source] io::Error),
    /// The kernel refused a request.
    #[error("cannot {what}")]
    Request {
        /// The request, as a phrase: "add address 10.0.0.7/24 to eth0".
        what: String,
        /// The kernel's errno, or rtnetlink's complaint.
        #[source]
        source: io::Error,
    },
}

fn request_error(what: String, e: rtnetlink::Error) -> NetlinkError {
    let source = match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    };
    NetlinkError::Request { what, source }
}

/// What netd needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Ethernet address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// Administratively up.
    pub up: bool,
    /// Has carrier (IFF_LOWER_UP).
    pub carrier: bool,
    /// The loopback device.
    pub loopback: bool,
    /// Ethernet link-layer type (DHCP needs it).
    pub ethernet: bool,
}

/// An IPv4 unicast route found in the kernel's tables (not the local table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination network.
    pub dest: Ipv4Addr,
    /// Destination prefix length (0 for a default route).
    pub prefix: u8,
    /// Output interface index.
    pub oif: Option<u32>,
}

/// The peer end of a new veth pair: created directly in another network
/// namespace, under a name that may already exist in this one.
#[derive(Debug, Clone, Copy)]
pub struct VethPeer<'a> {
    /// Interface name in the peer namespace (`eth0`).
    pub name: &'a str,
    /// Ethernet address of the peer end.
    pub mac: [u8; 6],
    /// The peer namespace (an open `/proc/PID/ns/net` or `/run/netns/NAME`).
    pub netns: std::os::fd::BorrowedFd<'a>,
}

/// A route to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination network.
    pub dest: IpAddr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Next hop; `None` for an on-link route.
    pub gateway: Option<IpAddr>,
    /// Who installed it: static configuration or DHCP.
    pub origin: Origin,
    /// Route metric.
    pub metric: u32,
}

/// Which part of netd a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The manifest.
    Static,
    /// A DHCP lease.
    Dhcp,
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dest = if self.prefix == 0 {
            "default".to_string()
        } else {
            format!("{}/{}", self.dest, self.prefix)
        };
        match self.gateway {
            Some(gw) => write!(f, "{dest} via {gw}"),
            None => write!(f, "{dest} on-link"),
        }
    }
}

/// A connection to the kernel's routing netlink.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket and spawns its driver on the current Tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| request_error("list links".into(), e))?
        {
            let mut info = LinkInfo {
                index: msg.header.index,
                name: String::new(),
                mac: None,
                up: msg.header.flags.contains(LinkFlags::Up),
                carrier: msg.header.flags.contains(LinkFlags::LowerUp),
                loopback: msg.header.flags.contains(LinkFlags::Loopback),
                ethernet: msg.header.link_layer_type == LinkLayerType::Ether,
            };
            for attr in msg.attributes {
                match attr {
                    LinkAttribute::IfName(name) => info.name = name,
                    LinkAttribute::Address(a) if a.len() == 6 => {
                        let mut mac = [0u8; 6];
                        mac.copy_from_slice(&a);
                        info.mac = Some(mac);
                    }
                    _ => {}
                }
            }
            out.push(info);
        }
        Ok(out)
    }

    /// The link called `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// Creates a bridge with a fixed Ethernet address (so it does not change
    /// as ports come and go), administratively up.
    pub async fn add_bridge(&self, name: &str, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let msg = LinkBridge::new(name).address(mac.to_vec()).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| request_error(format!("create bridge {name}"), e))
    }

    /// Creates a veth pair: `name` here, up and enslaved to `controller`
    /// (a bridge index), and `peer` in the peer's namespace (down).
    pub async fn add_veth(
        &self,
        name: &str,
        controller: u32,
        peer: VethPeer<'_>,
    ) -> Result<(), NetlinkError> {
        use std::os::fd::AsRawFd;
        let peer_msg = LinkUnspec::new_with_name(peer.name)
            .address(peer.mac.to_vec())
            .setns_by_fd(peer.netns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer.name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .controller(controller)
            .up()
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            request_error(
                format!("create veth pair {name} / {} (container end)", peer.name),
                e,
            )
        })
    }

    /// Deletes a link (for a veth, both ends); one that is already gone is
    /// not an error.
    pub async fn del_link(&self, link: &LinkInfo) -> Result<(), NetlinkError> {
        match self.handle.link().del(link.index).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => Ok(()),
            r => r.map_err(|e| request_error(format!("delete link {}", link.name), e)),
        }
    }

    /// The IPv4 unicast routes of every table but `local`.
    pub async fn routes_v4(&self) -> Result<Vec<RouteEntry>, NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(msg).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| request_error("list IPv4 routes".into(), e))?
        {
            if msg.header.kind != RouteType::Unicast || msg.header.table == 255 {
                continue;
            }
            let mut entry = RouteEntry {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix: msg.header.destination_prefix_length,
                oif: None,
            };
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => entry.dest = *a,
                    RouteAttribute::Oif(i) => entry.oif = Some(*i),
                    _ => {}
                }
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Sets the link administratively up.
    pub async fn set_up(&self, link: &LinkInfo) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| request_error(format!("bring {} up", link.name), e))
    }

    /// Sets the link's MTU.
    pub async fn set_mtu(&self, link: &LinkInfo, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| request_error(format!("set the MTU of {} to {mtu}", link.name), e))
    }

    /// Adds (or updates) an address; `lifetime` is the valid and preferred
    /// lifetime, after which the kernel removes it (`None`: forever).
    pub async fn add_address(
        &self,
        link: &LinkInfo,
        addr: IpAddr,
        prefix: u8,
        lifetime: Option<Duration>,
    ) -> Result<(), NetlinkError> {
        let mut req = self
            .handle
            .address()
            .add(link.index, addr, prefix)
            .replace();
        if let Some(life) = lifetime {
            let secs = life.as_secs().clamp(1, u64::from(u32::MAX - 1)) as u32;
            let mut info = CacheInfo::default();
            info.ifa_preferred = secs;
            info.ifa_valid = secs;
            req.message_mut()
                .attributes
                .push(AddressAttribute::CacheInfo(info));
        }
        req.execute()
            .await
            .map_err(|e| request_error(format!("add address {addr}/{prefix} to {}", link.name), e))
    }

    /// Removes an address; one that is already gone is not an error.
    pub async fn del_address(
        &self,
        link: &LinkInfo,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| request_error(format!("list the addresses of {}", link.name), e))?
        {
            let matches = msg.header.prefix_len == prefix
                && msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(x) if *x == addr));
            if matches {
                return self.handle.address().del(msg).execute().await.map_err(|e| {
                    request_error(
                        format!("remove address {addr}/{prefix} from {}", link.name),
                        e,
                    )
                });
            }
        }
        Ok(())
    }

    /// The addresses on a link, with prefix lengths.
    pub async fn addresses(&self, link: &LinkInfo) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| request_error(format!("list the addresses of {}", link.name), e))?
        {
            for a in &msg.attributes {
                if let AddressAttribute::Address(x) = a {
                    out.push((*x, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    fn route_message(link: &LinkInfo, route: &RouteSpec) -> RouteMessage {
        let protocol = match route.origin {
            Origin::Static => RouteProtocol::Static,
            Origin::Dhcp => RouteProtocol::Dhcp,
        };
        let scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        match (route.dest, route.gateway) {
            (IpAddr::V4(dest), gw) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dest, route.prefix)
                    .output_interface(link.index)
                    .priority(route.metric)
                    .protocol(protocol)
                    .scope(scope);
                if let Some(IpAddr::V4(gw)) = gw {
                    b = b.gateway(gw);
                }
                b.build()
            }
            (IpAddr::V6(dest), gw) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(dest, route.prefix)
                    .output_interface(link.index)
                    .priority(route.metric)
                    .protocol(protocol)
                    .scope(if gw.is_some() {
                        RouteScope::Universe
                    } else {
                        RouteScope::Link
                    });
                if let Some(IpAddr::V6(gw)) = gw {
                    b = b.gateway(gw);
                }
                b.build()
            }
        }
    }

    /// Adds (or replaces) a route through `link`.
    pub async fn add_route(&self, link: &LinkInfo, route: &RouteSpec) -> Result<(), NetlinkError> {
        let msg = Self::route_message(link, route);
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| request_error(format!("add route {route} dev {}", link.name), e))
    }

    /// Removes a route; one that is already gone is not an error.
    pub async fn del_route(&self, link: &LinkInfo, route: &RouteSpec) -> Result<(), NetlinkError> {
        let msg = Self::route_message(link, route);
        match self.handle.route().del(msg).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ESRCH => Ok(()),
            r => r.map_err(|e| request_error(format!("remove route {route} dev {}", link.name), e)),
        }
    }
}
