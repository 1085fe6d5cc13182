//! Links, addresses and routes over rtnetlink: the only way netd changes the
//! kernel's network configuration (no `ip` binary in the image).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::stream::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, CacheInfo};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

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
