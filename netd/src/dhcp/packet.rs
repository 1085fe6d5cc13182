//! DHCPv4 messages: the requests the client sends and the replies it accepts.
//!
//! Pure functions over bytes, on top of `dhcproto`'s codec. Every reply is
//! checked here, so the state machine only ever sees a [`Reply`] whose lease
//! is usable: a nonsense value is either repaired (with a note in
//! [`Lease::warnings`]) or rejects the packet with a [`PacketError`].

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

/// The client's UDP port.
pub const CLIENT_PORT: u16 = 68;
/// The server's UDP port.
pub const SERVER_PORT: u16 = 67;
/// The size RFC 1542 asks BOOTP/DHCP requests to be padded to, for old relays.
const MIN_REQUEST_LEN: usize = 300;
/// The largest DHCP message we accept (the size of an Ethernet frame's payload).
pub const MAX_MESSAGE_LEN: u16 = 1500 - 20 - 8;
/// Lease time meaning "forever" (RFC 2131 section 3.3).
pub const INFINITE: u32 = u32::MAX;

/// What was wrong with a DHCP packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The bytes are not a DHCP message.
    #[error("malformed DHCP packet: {0}")]
    Malformed(String),
    /// The packet is a request, not a server's reply.
    #[error("DHCP packet is not a BOOTREPLY")]
    NotAReply,
    /// The packet lacks the DHCP magic cookie (plain BOOTP).
    #[error("DHCP packet has no DHCP magic cookie (BOOTP is not supported)")]
    NoMagic,
    /// The reply is addressed to another client.
    #[error("DHCP reply is for another hardware address")]
    NotForUs,
    /// Option 53 is missing.
    #[error("DHCP reply has no message type (option 53)")]
    NoMessageType,
    /// A message type a client never receives.
    #[error("DHCP reply has unexpected message type {0:?}")]
    UnexpectedType(MessageType),
    /// An OFFER without a server identifier cannot be requested.
    #[error("DHCP {0:?} has no server identifier (option 54)")]
    NoServerId(MessageType),
    /// The offered address is not a usable unicast address.
    #[error("DHCP {kind:?} offers unusable address {addr}")]
    BadAddress {
        /// OFFER or ACK.
        kind: MessageType,
        /// The yiaddr.
        addr: Ipv4Addr,
    },
    /// A lease of zero seconds.
    #[error("DHCP {0:?} has a lease time of 0 seconds")]
    ZeroLease(MessageType),
    /// RFC 2131 requires a lease time in OFFER and ACK.
    #[error("DHCP {0:?} has no lease time (option 51)")]
    NoLeaseTime(MessageType),
    /// Encoding failed (only with absurd option contents).
    #[error("cannot encode DHCP message: {0}")]
    Encode(String),
}

/// Who the client is on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Ethernet address: chaddr, and the client identifier (type 1).
    pub mac: [u8; 6],
    /// Sent as option 12 so the server can register the name, when set.
    pub hostname: Option<String>,
}

/// The kinds of DHCPREQUEST, which differ in ciaddr, option 50 and option 54
/// (RFC 2131 table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Answering an OFFER: requested address and server identifier.
    Selecting {
        /// The server whose offer is taken.
        server: Ipv4Addr,
        /// The offered address.
        addr: Ipv4Addr,
    },
    /// Verifying a remembered lease after a reboot or a link change.
    InitReboot {
        /// The remembered address.
        addr: Ipv4Addr,
    },
    /// Extending a lease with its server (unicast, at T1).
    Renewing {
        /// The leased address.
        addr: Ipv4Addr,
    },
    /// Extending a lease with any server (broadcast, at T2).
    Rebinding {
        /// The leased address.
        addr: Ipv4Addr,
    },
}

/// The options the client asks for (option 55).
const PARAMETERS: [OptionCode; 9] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::ClasslessStaticRoute,
];

fn base(id: &Identity, xid: u32, secs: u16, kind: MessageType, broadcast: bool) -> Message {
    let mut msg = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &id.mac,
    );
    msg.set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_secs(secs)
        // Until the address is configured the kernel drops unicast replies to
        // it, so ask servers to broadcast (RFC 2131 section 4.1).
        .set_flags(if broadcast {
            Flags::default().set_broadcast()
        } else {
            Flags::default()
        });
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&id.mac);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    if kind == MessageType::Discover || kind == MessageType::Request {
        opts.insert(DhcpOption::ParameterRequestList(PARAMETERS.to_vec()));
        opts.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE_LEN));
        if let Some(name) = &id.hostname {
            opts.insert(DhcpOption::Hostname(name.clone()));
        }
    }
    msg
}

/// A DHCPDISCOVER, asking for `requested` when the client remembers an address.
pub fn discover(id: &Identity, xid: u32, secs: u16, requested: Option<Ipv4Addr>) -> Message {
    let mut msg = base(id, xid, secs, MessageType::Discover, true);
    if let Some(addr) = requested {
        msg.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
    }
    msg
}

/// A DHCPREQUEST of the given kind.
pub fn request(id: &Identity, xid: u32, secs: u16, kind: RequestKind) -> Message {
    match kind {
        RequestKind::Selecting { server, addr } => {
            let mut msg = base(id, xid, secs, MessageType::Request, true);
            msg.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
            msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
            msg
        }
        RequestKind::InitReboot { addr } => {
            let mut msg = base(id, xid, secs, MessageType::Request, true);
            msg.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
            msg
        }
        RequestKind::Renewing { addr } | RequestKind::Rebinding { addr } => {
            // The address is configured now: replies come unicast to it.
            let mut msg = base(id, xid, secs, MessageType::Request, false);
            msg.set_ciaddr(addr);
            msg
        }
    }
}

/// A DHCPRELEASE of `addr` to `server`.
pub fn release(id: &Identity, xid: u32, server: Ipv4Addr, addr: Ipv4Addr) -> Message {
    let mut msg = base(id, xid, 0, MessageType::Release, false);
    msg.set_ciaddr(addr);
    msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    msg
}

/// A DHCPDECLINE of `addr` (found in use by another host).
pub fn decline(id: &Identity, xid: u32, server: Ipv4Addr, addr: Ipv4Addr) -> Message {
    let mut msg = base(id, xid, 0, MessageType::Decline, false);
    msg.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
    msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    msg
}

/// The bytes of `msg`, padded to the 300 bytes old relays expect.
pub fn encode(msg: &Message) -> Result<Vec<u8>, PacketError> {
    let mut buf = Vec::with_capacity(MIN_REQUEST_LEN);
    let mut enc = Encoder::new(&mut buf);
    msg.encode(&mut enc)
        .map_err(|e| PacketError::Encode(e.to_string()))?;
    if buf.len() < MIN_REQUEST_LEN {
        buf.resize(MIN_REQUEST_LEN, 0);
    }
    Ok(buf)
}

/// A decoded message, before any check: for tests and logs.
pub fn decode(bytes: &[u8]) -> Result<Message, PacketError> {
    Message::decode(&mut Decoder::new(bytes)).map_err(|e| PacketError::Malformed(e.to_string()))
}

/// A route the lease asks for (option 121, or a default route from option 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseRoute {
    /// Destination network address (host bits clear).
    pub dest: Ipv4Addr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Next hop; `None` means the destination is on the link.
    pub gateway: Option<Ipv4Addr>,
}

/// What an OFFER or ACK gives, checked and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address (yiaddr).
    pub address: Ipv4Addr,
    /// Prefix length from the subnet mask.
    pub prefix: u8,
    /// The server identifier (option 54).
    pub server: Ipv4Addr,
    /// Lease time in seconds; [`INFINITE`] for ever.
    pub lease_secs: u32,
    /// Renewal time T1 in seconds.
    pub t1_secs: u32,
    /// Rebinding time T2 in seconds.
    pub t2_secs: u32,
    /// Routers (option 3), usable ones only.
    pub routers: Vec<Ipv4Addr>,
    /// Classless static routes (option 121).
    pub classless_routes: Vec<LeaseRoute>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain names (option 15, which some servers fill with several).
    pub domains: Vec<String>,
    /// Host name (option 12).
    pub hostname: Option<String>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// What was repaired or dropped, one sentence each, for the log.
    pub warnings: Vec<String>,
}

impl Lease {
    /// The routes to install: option 121 when present (it overrides option 3,
    /// RFC 3442), else a default route through the first router. A router
    /// outside the subnet gets an on-link host route first, as cloud
    /// providers with /32 leases expect.
    pub fn routes(&self) -> Vec<LeaseRoute> {
        let mut routes = Vec::new();
        let wanted: Vec<LeaseRoute> = if !self.classless_routes.is_empty() {
            self.classless_routes.clone()
        } else {
            self.routers
                .first()
                .map(|gw| LeaseRoute {
                    dest: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Some(*gw),
                })
                .into_iter()
                .collect()
        };
        for route in wanted {
            if let Some(gw) = route.gateway {
                let host = LeaseRoute {
                    dest: gw,
                    prefix: 32,
                    gateway: None,
                };
                if !in_subnet(gw, self.address, self.prefix) && !routes.contains(&host) {
                    routes.push(host);
                }
            }
            routes.push(route);
        }
        routes
    }
}

/// A reply the client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// DHCPOFFER.
    Offer {
        /// Transaction id.
        xid: u32,
        /// What is offered.
        lease: Lease,
    },
    /// DHCPACK. Its `server` may be unspecified when the server left out
    /// option 54; the client then keeps the server it talked to.
    Ack {
        /// Transaction id.
        xid: u32,
        /// What is granted.
        lease: Lease,
    },
    /// DHCPNAK.
    Nak {
        /// Transaction id.
        xid: u32,
        /// Server identifier, when given.
        server: Option<Ipv4Addr>,
        /// The server's explanation (option 56), when given.
        message: Option<String>,
    },
}

impl Reply {
    /// The transaction id the reply answers.
    pub fn xid(&self) -> u32 {
        match self {
            Reply::Offer { xid, .. } | Reply::Ack { xid, .. } | Reply::Nak { xid, .. } => *xid,
        }
    }
}

/// Parses and checks a server's reply meant for `mac`.
pub fn parse_reply(bytes: &[u8], mac: &[u8; 6]) -> Result<Reply, PacketError> {
    // 236 fixed bytes and the 4-byte cookie (RFC 2131 section 2).
    if bytes.len() < 240 {
        return Err(PacketError::Malformed(format!(
            "{} bytes is shorter than the 240-byte DHCP header",
            bytes.len()
        )));
    }
    if bytes[236..240] != [99, 130, 83, 99] {
        return Err(PacketError::NoMagic);
    }
    let codes = option_codes(&bytes[240..])?;
    let msg = decode(bytes)?;
    // dhcproto stops at the first option it cannot decode and keeps the
    // rest of the message; a reply with an undecodable option is refused
    // whole instead of being half read.
    if let Some(code) = codes
        .iter()
        .find(|c| msg.opts().get(OptionCode::from(**c)).is_none())
    {
        return Err(PacketError::Malformed(format!(
            "option {code} has an invalid value"
        )));
    }
    if msg.opcode() != Opcode::BootReply {
        return Err(PacketError::NotAReply);
    }
    if msg.htype() != HType::Eth || msg.hlen() != 6 || msg.chaddr().get(..6) != Some(&mac[..]) {
        return Err(PacketError::NotForUs);
    }
    let kind = msg.opts().msg_type().ok_or(PacketError::NoMessageType)?;
    let xid = msg.xid();
    match kind {
        MessageType::Offer => Ok(Reply::Offer {
            xid,
            lease: lease_of(&msg, kind)?,
        }),
        MessageType::Ack => Ok(Reply::Ack {
            xid,
            lease: lease_of(&msg, kind)?,
        }),
        MessageType::Nak => Ok(Reply::Nak {
            xid,
            server: match msg.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
                _ => None,
            },
            message: match msg.opts().get(OptionCode::Message) {
                Some(DhcpOption::Message(m)) => Some(m.clone()),
                _ => None,
            },
        }),
        other => Err(PacketError::UnexpectedType(other)),
    }
}

/// Walks the options area and returns the codes present (without pad and
/// end), checking each option fits in the packet and that the fixed-size
/// options netd reads have their size.
fn option_codes(mut opts: &[u8]) -> Result<Vec<u8>, PacketError> {
    let mut codes = Vec::new();
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            0 => opts = rest,
            255 => break,
            _ => {
                let Some((&len, rest)) = rest.split_first() else {
                    return Err(PacketError::Malformed(format!(
                        "option {code} has no length"
                    )));
                };
                let len = usize::from(len);
                if rest.len() < len {
                    return Err(PacketError::Malformed(format!(
                        "option {code} is {len} bytes long but only {} remain",
                        rest.len()
                    )));
                }
                let ok = match code {
                    1 | 51 | 54 | 58 | 59 => len == 4,
                    3 | 6 => len >= 4 && len % 4 == 0,
                    26 => len == 2,
                    53 => len == 1,
                    _ => true,
                };
                if !ok {
                    return Err(PacketError::Malformed(format!(
                        "option {code} has invalid length {len}"
                    )));
                }
                codes.push(code);
                opts = &rest[len..];
            }
        }
    }
    Ok(codes)
}

fn usable_unicast(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified()
        || addr.is_broadcast()
        || addr.is_multicast()
        || addr.is_loopback()
        || addr.octets()[0] == 0
        || addr.octets()[0] >= 240)
}

/// Whether `addr` is in `net`/`prefix`.
pub fn in_subnet(addr: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = prefix_mask(prefix);
    u32::from(addr) & mask == u32::from(net) & mask
}

fn prefix_mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// The prefix length of a contiguous netmask; `None` for 0.0.0.0 or holes.
fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (ones > 0 && m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The pre-CIDR class prefix of `addr`, the fallback when the mask is unusable.
fn classful_prefix(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// Whether `name` is a usable DNS name (RFC 1123 labels).
pub fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn lease_of(msg: &Message, kind: MessageType) -> Result<Lease, PacketError> {
    let opts = msg.opts();
    let mut warnings = Vec::new();
    let address = msg.yiaddr();
    if !usable_unicast(address) {
        return Err(PacketError::BadAddress {
            kind,
            addr: address,
        });
    }
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) if usable_unicast(*s) => *s,
        _ if kind == MessageType::Offer => return Err(PacketError::NoServerId(kind)),
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => match mask_prefix(*mask) {
            Some(p) => p,
            None => {
                let p = classful_prefix(address);
                warnings.push(format!(
                    "subnet mask {mask} is not a usable netmask; using /{p}"
                ));
                p
            }
        },
        _ => {
            let p = classful_prefix(address);
            warnings.push(format!("no subnet mask given; using /{p}"));
            p
        }
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(0)) => return Err(PacketError::ZeroLease(kind)),
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => return Err(PacketError::NoLeaseTime(kind)),
    };
    let t1_given = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) => Some(*t),
        _ => None,
    };
    let t2_given = match opts.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(t)) => Some(*t),
        _ => None,
    };
    let (t1_secs, t2_secs) = if lease_secs == INFINITE {
        (INFINITE, INFINITE)
    } else {
        // RFC 2131 section 4.4.5 defaults: 0.5 and 0.875 of the lease.
        let d1 = lease_secs / 2;
        let d2 = (u64::from(lease_secs) * 7 / 8) as u32;
        let t2 = match t2_given {
            Some(t) if t > 0 && t < lease_secs => t,
            Some(t) => {
                warnings.push(format!(
                    "rebinding time {t}s is not within the {lease_secs}s lease; using {d2}s"
                ));
                d2
            }
            None => d2,
        };
        let t1 = match t1_given {
            Some(t) if t > 0 && t <= t2 => t,
            Some(t) => {
                let d1 = d1.min(t2);
                warnings.push(format!(
                    "renewal time {t}s is not before the rebinding time {t2}s; using {d1}s"
                ));
                d1
            }
            None => d1.min(t2),
        };
        (t1, t2)
    };
    let mut routers = Vec::new();
    if let Some(DhcpOption::Router(list)) = opts.get(OptionCode::Router) {
        for r in list {
            if usable_unicast(*r) && *r != address {
                routers.push(*r);
            } else {
                warnings.push(format!("router {r} is not a usable gateway; ignored"));
            }
        }
    }
    let mut classless_routes = Vec::new();
    if let Some(DhcpOption::ClasslessStaticRoute(list)) = opts.get(OptionCode::ClasslessStaticRoute)
    {
        for (net, gw) in list {
            let prefix = net.prefix_len();
            let dest = Ipv4Addr::from(u32::from(net.addr()) & prefix_mask(prefix));
            let gateway = if gw.is_unspecified() {
                None
            } else if usable_unicast(*gw) && *gw != address {
                Some(*gw)
            } else {
                warnings.push(format!(
                    "route to {dest}/{prefix} via {gw} has an unusable gateway; ignored"
                ));
                continue;
            };
            classless_routes.push(LeaseRoute {
                dest,
                prefix,
                gateway,
            });
        }
    }
    let mut dns = Vec::new();
    if let Some(DhcpOption::DomainNameServer(list)) = opts.get(OptionCode::DomainNameServer) {
        for s in list {
            if usable_unicast(*s) || s.is_loopback() {
                if !dns.contains(s) {
                    dns.push(*s);
                }
            } else {
                warnings.push(format!("DNS server {s} is not a usable address; ignored"));
            }
        }
    }
    let mut domains = Vec::new();
    if let Some(DhcpOption::DomainName(text)) = opts.get(OptionCode::DomainName) {
        for d in text.split_whitespace() {
            if valid_dns_name(d) {
                domains.push(d.trim_end_matches('.').to_string());
            } else {
                warnings.push(format!(
                    "domain name {d:?} is not a valid DNS name; ignored"
                ));
            }
        }
    }
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(name)) => {
            let name = name.trim_end_matches('\0');
            // A hostname is one label; some servers send the FQDN.
            if valid_dns_name(name) && name.len() <= 64 {
                Some(name.trim_end_matches('.').to_string())
            } else {
                warnings.push(format!(
                    "host name {name:?} is not a valid host name; ignored"
                ));
                None
            }
        }
        _ => None,
    };
    let mtu = match opts.get(OptionCode::InterfaceMtu) {
        Some(DhcpOption::InterfaceMtu(m)) if *m >= 576 => Some(*m),
        Some(DhcpOption::InterfaceMtu(m)) => {
            warnings.push(format!("MTU {m} is below the IPv4 minimum of 576; ignored"));
            None
        }
        _ => None,
    };
    Ok(Lease {
        address,
        prefix,
        server,
        lease_secs,
        t1_secs,
        t2_secs,
        routers,
        classless_routes,
        dns,
        domains,
        hostname,
        mtu,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn id() -> Identity {
        Identity {
            mac: MAC,
            hostname: None,
        }
    }

    /// The fixed BOOTP header: op..giaddr, chaddr, then zeroed sname/file.
    fn header(op: u8, xid: [u8; 4], flags: [u8; 2], ciaddr: [u8; 4], yiaddr: [u8; 4]) -> Vec<u8> {
        let mut b = vec![op, 1, 6, 0];
        b.extend_from_slice(&xid);
        b.extend_from_slice(&[0, 0]); // secs
        b.extend_from_slice(&flags);
        b.extend_from_slice(&ciaddr);
        b.extend_from_slice(&yiaddr);
        b.extend_from_slice(&[0; 4]); // siaddr
        b.extend_from_slice(&[0; 4]); // giaddr
        b.extend_from_slice(&MAC);
        b.extend_from_slice(&[0; 10]); // chaddr padding
        b.extend_from_slice(&[0; 64]); // sname
        b.extend_from_slice(&[0; 128]); // file
        b.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
        b
    }

    #[test]
    fn discover_is_byte_exact() {
        let mut want = header(1, [0xde, 0xad, 0xbe, 0xef], [0x80, 0x00], [0; 4], [0; 4]);
        #[rustfmt::skip]
        want.extend_from_slice(&[
            50, 4, 10, 0, 0, 7,                       // requested address 10.0.0.7
            53, 1, 1,                                 // message type DISCOVER
            55, 9, 1, 3, 6, 12, 15, 26, 58, 59, 121,  // parameter request list
            57, 2, 0x05, 0xc0,                        // max message size 1472
            61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // client id: type 1 + MAC
            255,                                      // end
        ]);
        want.resize(300, 0);
        let msg = discover(&id(), 0xdeadbeef, 0, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(encode(&msg).unwrap(), want);
        // And back: the parsed bytes emit the same bytes.
        assert_eq!(encode(&decode(&want).unwrap()).unwrap(), want);
    }

    #[test]
    fn renew_request_is_unicast_with_ciaddr() {
        let mut want = header(1, [0, 0, 0, 9], [0, 0], [10, 0, 0, 7], [0; 4]);
        #[rustfmt::skip]
        want.extend_from_slice(&[
            12, 3, b'b', b'o', b'x',                  // host name "box"
            53, 1, 3,                                 // message type REQUEST
            55, 9, 1, 3, 6, 12, 15, 26, 58, 59, 121,
            57, 2, 0x05, 0xc0,
            61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
            255,
        ]);
        want.resize(300, 0);
        let who = Identity {
            mac: MAC,
            hostname: Some("box".into()),
        };
        let msg = request(
            &who,
            9,
            0,
            RequestKind::Renewing {
                addr: Ipv4Addr::new(10, 0, 0, 7),
            },
        );
        assert_eq!(encode(&msg).unwrap(), want);
    }

    /// An ACK as dnsmasq sends it, options in its order.
    fn dnsmasq_ack() -> Vec<u8> {
        let mut b = header(
            2,
            [0xde, 0xad, 0xbe, 0xef],
            [0x80, 0x00],
            [0; 4],
            [10, 0, 0, 7],
        );
        #[rustfmt::skip]
        b.extend_from_slice(&[
            53, 1, 5,                                 // ACK
            54, 4, 10, 0, 0, 1,                       // server id 10.0.0.1
            51, 4, 0, 0, 0x0e, 0x10,                  // lease 3600 s
            58, 4, 0, 0, 0x07, 0x08,                  // T1 1800 s
            59, 4, 0, 0, 0x0c, 0x4e,                  // T2 3150 s
            1, 4, 255, 255, 255, 0,                   // mask /24
            28, 4, 10, 0, 0, 255,                     // broadcast (not asked, ignored)
            3, 4, 10, 0, 0, 1,                        // router
            6, 8, 10, 0, 0, 1, 1, 1, 1, 1,            // DNS servers
            15, 8, b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', // domain "example."
            12, 4, b'n', b'o', b'd', b'e',            // host name
            26, 2, 0x05, 0xdc,                        // MTU 1500
            121, 13, 24, 192, 168, 5, 10, 0, 0, 254,  // 192.168.5.0/24 via 10.0.0.254
                     0, 10, 0, 0, 1,                  // default via 10.0.0.1
            255,
        ]);
        b
    }

    #[test]
    fn ack_is_parsed() {
        let reply = parse_reply(&dnsmasq_ack(), &MAC).unwrap();
        let Reply::Ack { xid, lease } = reply else {
            panic!("not an ACK: {reply:?}");
        };
        assert_eq!(xid, 0xdeadbeef);
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.server, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            (lease.lease_secs, lease.t1_secs, lease.t2_secs),
            (3600, 1800, 3150)
        );
        assert_eq!(lease.routers, [Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(
            lease.dns,
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(lease.domains, ["example"]);
        assert_eq!(lease.hostname.as_deref(), Some("node"));
        assert_eq!(lease.mtu, Some(1500));
        assert!(lease.warnings.is_empty(), "{:?}", lease.warnings);
        // Option 121 wins over option 3.
        assert_eq!(
            lease.routes(),
            [
                LeaseRoute {
                    dest: Ipv4Addr::new(192, 168, 5, 0),
                    prefix: 24,
                    gateway: Some(Ipv4Addr::new(10, 0, 0, 254))
                },
                LeaseRoute {
                    dest: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Some(Ipv4Addr::new(10, 0, 0, 1))
                },
            ]
        );
    }

    #[test]
    fn ack_round_trips_byte_exact() {
        // dhcproto writes options sorted by code; an ACK in that order
        // comes back out byte for byte.
        let mut b = header(2, [1, 2, 3, 4], [0, 0], [0; 4], [10, 0, 0, 7]);
        #[rustfmt::skip]
        b.extend_from_slice(&[
            1, 4, 255, 255, 0, 0,                     // mask /16
            3, 4, 10, 0, 0, 1,                        // router
            51, 4, 0, 0, 0, 120,                      // lease 120 s
            53, 1, 2,                                 // OFFER
            54, 4, 10, 0, 0, 1,                       // server id
            255,
        ]);
        let msg = decode(&b).unwrap();
        let mut out = Vec::new();
        msg.encode(&mut Encoder::new(&mut out)).unwrap();
        assert_eq!(out, b);
        let Reply::Offer { lease, .. } = parse_reply(&b, &MAC).unwrap() else {
            panic!("not an offer")
        };
        assert_eq!((lease.prefix, lease.t1_secs, lease.t2_secs), (16, 60, 105));
    }

    #[test]
    fn malformed_packets_are_errors() {
        let ack = dnsmasq_ack();
        assert!(matches!(
            parse_reply(&ack[..100], &MAC),
            Err(PacketError::Malformed(_))
        ));
        let mut no_magic = ack.clone();
        no_magic[236] = 0;
        assert_eq!(parse_reply(&no_magic, &MAC), Err(PacketError::NoMagic));
        // An option whose length runs past the end of the packet.
        let mut truncated = ack[..240].to_vec();
        truncated.extend_from_slice(&[53, 1, 5, 6, 200, 10, 0]);
        assert!(matches!(
            parse_reply(&truncated, &MAC),
            Err(PacketError::Malformed(_))
        ));
        // A mask option of the wrong length.
        let mut bad_len = ack[..240].to_vec();
        bad_len.extend_from_slice(&[53, 1, 5, 1, 3, 255, 255, 0, 255]);
        assert!(matches!(
            parse_reply(&bad_len, &MAC),
            Err(PacketError::Malformed(_))
        ));
        // A host name that is not UTF-8: the whole reply is refused.
        let mut bad_name = ack[..240].to_vec();
        bad_name.extend_from_slice(&[53, 1, 5, 12, 2, 0xff, 0xfe, 255]);
        assert_eq!(
            parse_reply(&bad_name, &MAC),
            Err(PacketError::Malformed(
                "option 12 has an invalid value".into()
            ))
        );
        let mut request = ack.clone();
        request[0] = 1;
        assert_eq!(parse_reply(&request, &MAC), Err(PacketError::NotAReply));
        let mut other = ack.clone();
        other[28 + 5] ^= 1;
        assert_eq!(parse_reply(&other, &MAC), Err(PacketError::NotForUs));
        let mut no_type = ack[..240].to_vec();
        no_type.push(255);
        assert_eq!(parse_reply(&no_type, &MAC), Err(PacketError::NoMessageType));
        let discover = encode(&discover(&id(), 1, 0, None)).unwrap();
        let mut as_reply = discover.clone();
        as_reply[0] = 2;
        assert_eq!(
            parse_reply(&as_reply, &MAC),
            Err(PacketError::UnexpectedType(MessageType::Discover))
        );
        // Random bytes never panic.
        let mut seed = 0x1234_5678u32;
        for len in [0, 1, 239, 240, 241, 300, 576] {
            for _ in 0..50 {
                let mut bytes = ack.clone();
                bytes.resize(len.max(240), 0);
                for b in bytes.iter_mut().skip(240) {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    *b = seed as u8;
                }
                bytes.truncate(len);
                let _ = parse_reply(&bytes, &MAC);
            }
        }
    }

    fn offer_with(opts: &[u8], yiaddr: [u8; 4]) -> Result<Reply, PacketError> {
        let mut b = header(2, [0, 0, 0, 1], [0, 0], [0; 4], yiaddr);
        b.extend_from_slice(&[53, 1, 2]);
        b.extend_from_slice(opts);
        b.push(255);
        parse_reply(&b, &MAC)
    }

    fn offered(opts: &[u8]) -> Lease {
        match offer_with(opts, [192, 168, 1, 50]) {
            Ok(Reply::Offer { lease, .. }) => lease,
            other => panic!("{other:?}"),
        }
    }

    const SERVER: [u8; 6] = [54, 4, 192, 168, 1, 1];
    const LEASE_60: [u8; 6] = [51, 4, 0, 0, 0, 60];

    #[test]
    fn nonsense_offers() {
        // Mask 0.0.0.0 and a mask with holes: classful /24 instead.
        for mask in [[0, 0, 0, 0], [255, 0, 255, 0]] {
            let mut opts = SERVER.to_vec();
            opts.extend_from_slice(&LEASE_60);
            opts.extend_from_slice(&[1, 4]);
            opts.extend_from_slice(&mask);
            let lease = offered(&opts);
            assert_eq!(lease.prefix, 24);
            assert!(
                lease.warnings[0].contains("not a usable netmask"),
                "{:?}",
                lease.warnings
            );
        }
        // Lease 0 is refused, and so is no lease time.
        let mut opts = SERVER.to_vec();
        opts.extend_from_slice(&[51, 4, 0, 0, 0, 0]);
        assert_eq!(
            offer_with(&opts, [192, 168, 1, 50]),
            Err(PacketError::ZeroLease(MessageType::Offer))
        );
        assert_eq!(
            offer_with(&SERVER, [192, 168, 1, 50]),
            Err(PacketError::NoLeaseTime(MessageType::Offer))
        );
        // No server id on an OFFER.
        assert_eq!(
            offer_with(&LEASE_60, [192, 168, 1, 50]),
            Err(PacketError::NoServerId(MessageType::Offer))
        );
        // Unusable yiaddr.
        let mut opts = SERVER.to_vec();
        opts.extend_from_slice(&LEASE_60);
        for bad in [
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [224, 0, 0, 1],
            [127, 0, 0, 1],
        ] {
            assert!(matches!(
                offer_with(&opts, bad),
                Err(PacketError::BadAddress { .. })
            ));
        }
        // A router outside the subnet gets an on-link host route; one that is
        // our own address or broadcast is dropped.
        let mut opts = SERVER.to_vec();
        opts.extend_from_slice(&LEASE_60);
        opts.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
        opts.extend_from_slice(&[3, 12, 192, 168, 1, 50, 255, 255, 255, 255, 10, 9, 9, 9]);
        let lease = offered(&opts);
        assert_eq!(lease.routers, [Ipv4Addr::new(10, 9, 9, 9)]);
        assert_eq!(lease.warnings.len(), 2, "{:?}", lease.warnings);
        assert_eq!(
            lease.routes(),
            [
                LeaseRoute {
                    dest: Ipv4Addr::new(10, 9, 9, 9),
                    prefix: 32,
                    gateway: None
                },
                LeaseRoute {
                    dest: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Some(Ipv4Addr::new(10, 9, 9, 9))
                },
            ]
        );
        // T1 after T2, T2 after the lease: RFC defaults.
        let mut opts = SERVER.to_vec();
        opts.extend_from_slice(&LEASE_60);
        opts.extend_from_slice(&[58, 4, 0, 0, 0, 55, 59, 4, 0, 0, 0, 70]);
        let lease = offered(&opts);
        assert_eq!((lease.t1_secs, lease.t2_secs), (30, 52));
        // Bad host name, tiny MTU, broadcast DNS server: dropped.
        let mut opts = SERVER.to_vec();
        opts.extend_from_slice(&LEASE_60);
        opts.extend_from_slice(&[
            12, 4, b'a', b' ', b'b', b'!', 26, 2, 0, 10, 6, 4, 255, 255, 255, 255,
        ]);
        let lease = offered(&opts);
        assert_eq!((lease.hostname.clone(), lease.mtu), (None, None));
        assert!(lease.dns.is_empty());
        assert_eq!(lease.warnings.len(), 4, "{:?}", lease.warnings);
        // An infinite lease never renews.
        let mut opts = SERVER.to_vec();
        opts.extend_from_slice(&[51, 4, 255, 255, 255, 255]);
        assert_eq!(offered(&opts).t1_secs, INFINITE);
    }

    #[test]
    fn nak_is_parsed() {
        let mut b = header(2, [0, 0, 0, 5], [0, 0], [0; 4], [0; 4]);
        b.extend_from_slice(&[
            53, 1, 6, 54, 4, 10, 0, 0, 1, 56, 5, b'w', b'r', b'o', b'n', b'g', 255,
        ]);
        assert_eq!(
            parse_reply(&b, &MAC),
            Ok(Reply::Nak {
                xid: 5,
                server: Some(Ipv4Addr::new(10, 0, 0, 1)),
                message: Some("wrong".into())
            })
        );
    }

    #[test]
    fn masks() {
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 254, 0)), Some(23));
        assert_eq!(mask_prefix(Ipv4Addr::new(128, 0, 0, 0)), Some(1));
        assert_eq!(mask_prefix(Ipv4Addr::new(0, 0, 0, 0)), None);
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 0, 0, 1)), None);
        assert!(in_subnet(
            Ipv4Addr::new(10, 1, 2, 3),
            Ipv4Addr::new(10, 1, 0, 0),
            16
        ));
        assert!(!in_subnet(
            Ipv4Addr::new(10, 2, 2, 3),
            Ipv4Addr::new(10, 1, 0, 0),
            16
        ));
        assert!(in_subnet(
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(9, 9, 9, 9),
            0
        ));
    }
}
