//! ARP on one link, for two questions DHCP leaves open: is an address the
//! server offers already used by another host (an RFC 5227 probe, answered
//! with DHCPDECLINE), and does the default gateway answer once the address
//! is confirmed (a readiness signal logged on the console).
//!
//! The probe runs optimistically, like IPv6's optimistic DAD (RFC 4429):
//! netd puts the leased address on the link first and probes alongside
//! (see [`crate::iface`]), taking the address off again if a host answers.
//! RFC 5227 probes before using the address; berth trades that for an
//! address the moment the lease is bound. What the trade risks is small:
//! while the probe runs, the kernel answers ARP requests for the address,
//! so in a real conflict another host could briefly learn the wrong
//! hardware address for it; netd itself sends nothing from the address
//! (the gateway check waits for the probe), and it tells init the network
//! is ready only after the probe.
//!
//! The probe is deliberately short. RFC 5227 waits up to a second, then
//! sends three probes one to two seconds apart and listens two seconds
//! more — seven seconds or so, which the whole boot would wait for. A host
//! that owns the address answers a probe within a millisecond or two on a
//! LAN, so berth sends [`PROBES`] probes [`PROBE_INTERVAL`] apart and listens
//! until one interval after the last (150 ms in all): a lost probe is
//! covered by the second one, and a host too slow to answer in 75 ms is
//! missed — the trade made for a boot that does not wait seconds.
//!
//! The packet format and the conflict rule are pure functions; [`ArpSocket`]
//! is the `AF_PACKET` socket that carries them.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Probes sent for one address.
pub const PROBES: u32 = 2;
/// Time between probes, and the listening time after the last one.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(75);
/// How long a probe listens in all: an answer can come this long after it
/// starts, and no later.
pub const PROBE_WINDOW: Duration = PROBE_INTERVAL.saturating_mul(PROBES);

const ETH_P_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;
const PACKET_OUTGOING: u8 = 4;

/// Why an ARP socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    /// The socket could not be opened or bound.
    #[error("cannot open an ARP socket on {ifname}")]
    Open {
        /// The interface.
        ifname: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("cannot {what} ARP packets on {ifname}")]
    Io {
        /// "send" or "receive".
        what: &'static str,
        /// The interface.
        ifname: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket {
    /// 1 request, 2 reply.
    pub op: u16,
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: [u8; 6],
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

impl ArpPacket {
    /// A request from `sha`/`spa` for `tpa`; `spa` 0.0.0.0 makes it a probe.
    pub fn request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Self {
        ArpPacket {
            op: OP_REQUEST,
            sha,
            spa,
            tha: [0; 6],
            tpa,
        }
    }

    /// The 28 bytes on the wire (after the Ethernet header).
    pub fn encode(&self) -> [u8; ARP_LEN] {
        let mut b = [0u8; ARP_LEN];
        b[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        b[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&self.op.to_be_bytes());
        b[8..14].copy_from_slice(&self.sha);
        b[14..18].copy_from_slice(&self.spa.octets());
        b[18..24].copy_from_slice(&self.tha);
        b[24..28].copy_from_slice(&self.tpa.octets());
        b
    }

    /// An Ethernet/IPv4 request or reply; `None` for anything else.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < ARP_LEN || b[0..6] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        let op = u16::from_be_bytes([b[6], b[7]]);
        if op != OP_REQUEST && op != OP_REPLY {
            return None;
        }
        let mac = |i: usize| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&b[i..i + 6]);
            m
        };
        let ip = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
        Some(ArpPacket {
            op,
            sha: mac(8),
            spa: ip(14),
            tha: mac(18),
            tpa: ip(24),
        })
    }

    /// Whether this packet, seen while probing for `candidate` from
    /// `own_mac`, shows another host using or probing for it (RFC 5227
    /// section 2.1.1): any packet sent from the address, or another host's
    /// probe for it.
    pub fn conflicts(&self, own_mac: [u8; 6], candidate: Ipv4Addr) -> bool {
        if self.sha == own_mac {
            return false;
        }
        self.spa == candidate
            || (self.op == OP_REQUEST && self.spa.is_unspecified() && self.tpa == candidate)
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A packet socket for ARP on one interface. Open it only for the exchange
/// at hand: while open, it is handed every ARP packet on the link.
#[derive(Debug)]
pub struct ArpSocket {
    ifname: String,
    ifindex: u32,
    mac: [u8; 6],
    fd: AsyncFd<OwnedFd>,
}

fn link_addr(ifindex: u32, mac: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data for which all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&mac);
    addr
}

impl ArpSocket {
    /// Opens the socket on `ifname` (index `ifindex`, hardware address
    /// `mac`). Needs CAP_NET_RAW; must run inside a Tokio runtime.
    pub fn open(ifname: &str, ifindex: u32, mac: [u8; 6]) -> Result<Self, ArpError> {
        let err = |source| ArpError::Open {
            ifname: ifname.to_string(),
            source,
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if fd < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = link_addr(ifindex, [0; 6]);
        // SAFETY: `addr` is a valid sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: an OwnedFd always returns the descriptor it owns, which
        // stays open until the AsyncFd (its only owner) is dropped.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| err(e.into_parts().1))?;
        Ok(ArpSocket {
            ifname: ifname.to_string(),
            ifindex,
            mac,
            fd,
        })
    }

    fn io_error(&self, what: &'static str, source: io::Error) -> ArpError {
        ArpError::Io {
            what,
            ifname: self.ifname.clone(),
            source,
        }
    }

    /// Broadcasts one packet.
    pub async fn send(&self, pkt: &ArpPacket) -> Result<(), ArpError> {
        let bytes = pkt.encode();
        let addr = link_addr(self.ifindex, [0xff; 6]);
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| self.io_error("send", e))?;
            let res = guard.try_io(|fd| {
                // SAFETY: the buffer and address are valid for the call and
                // their lengths are passed with them.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        0,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            if let Ok(r) = res {
                return r.map_err(|e| self.io_error("send", e));
            }
        }
    }

    /// The next ARP packet another host sent on the link.
    pub async fn recv(&self) -> Result<ArpPacket, ArpError> {
        let mut buf = [0u8; 128];
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| self.io_error("receive", e))?;
            let res = guard.try_io(|fd| {
                // SAFETY: sockaddr_ll is plain data for which all-zero is valid.
                let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
                let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buf` and `from` are valid for writes of the
                // lengths passed; `len` is updated by the kernel.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok((n as usize, from.sll_pkttype))
                }
            });
            let (n, pkttype) = match res {
                Ok(r) => r.map_err(|e| self.io_error("receive", e))?,
                Err(_would_block) => continue,
            };
            if pkttype == PACKET_OUTGOING {
                continue;
            }
            if let Some(pkt) = ArpPacket::parse(&buf[..n]) {
                return Ok(pkt);
            }
        }
    }

    /// Probes for `candidate` (RFC 5227, shortened: see the module
    /// documentation), which may already be configured on this link.
    /// Returns the hardware address of a host that uses or claims it, or
    /// `None` when nobody does within [`PROBE_WINDOW`]. The kernel's own
    /// ARP traffic for an address already configured carries this link's
    /// hardware address and so is no conflict.
    pub async fn probe(&self, candidate: Ipv4Addr) -> Result<Option<[u8; 6]>, ArpError> {
        let probe = ArpPacket::request(self.mac, Ipv4Addr::UNSPECIFIED, candidate);
        for _ in 0..PROBES {
            self.send(&probe).await?;
            let until = tokio::time::Instant::now() + PROBE_INTERVAL;
            loop {
                match tokio::time::timeout_at(until, self.recv()).await {
                    Err(_elapsed) => break,
                    Ok(pkt) => {
                        let pkt = pkt?;
                        if pkt.conflicts(self.mac, candidate) {
                            return Ok(Some(pkt.sha));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Asks for `target`'s hardware address from `source` (an address of
    /// this link), once, waiting at most `timeout`. Returns the answer and
    /// how long it took.
    pub async fn resolve(
        &self,
        source: Ipv4Addr,
        target: Ipv4Addr,
        timeout: Duration,
    ) -> Result<Option<([u8; 6], Duration)>, ArpError> {
        let start = Instant::now();
        self.send(&ArpPacket::request(self.mac, source, target))
            .await?;
        let until = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(until, self.recv()).await {
                Err(_elapsed) => return Ok(None),
                Ok(pkt) => {
                    let pkt = pkt?;
                    if pkt.op == OP_REPLY && pkt.spa == target {
                        return Ok(Some((pkt.sha, start.elapsed())));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const CAND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

    #[test]
    fn probe_bytes_round_trip() {
        let p = ArpPacket::request(OWN, Ipv4Addr::UNSPECIFIED, CAND);
        let b = p.encode();
        #[rustfmt::skip]
        let want = [
            0, 1, 8, 0, 6, 4, 0, 1,
            2, 0, 0, 0, 0, 1, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 10, 0, 0, 50,
        ];
        assert_eq!(b, want);
        assert_eq!(ArpPacket::parse(&b), Some(p));
        // Ethernet padding after the packet is ignored.
        let mut padded = b.to_vec();
        padded.extend_from_slice(&[0; 18]);
        assert_eq!(ArpPacket::parse(&padded), Some(p));
    }

    #[test]
    fn foreign_packets_are_not_arp() {
        let mut b = ArpPacket::request(OWN, CAND, CAND).encode();
        assert!(ArpPacket::parse(&b[..27]).is_none());
        b[2] = 0x86; // not IPv4
        assert!(ArpPacket::parse(&b).is_none());
        let mut rarp = ArpPacket::request(OWN, CAND, CAND).encode();
        rarp[7] = 3;
        assert!(ArpPacket::parse(&rarp).is_none());
    }

    #[test]
    fn conflict_rule() {
        // Another host answers from the address, or announces it.
        let mut reply = ArpPacket::request(OTHER, CAND, Ipv4Addr::UNSPECIFIED);
        reply.op = OP_REPLY;
        assert!(reply.conflicts(OWN, CAND));
        assert!(ArpPacket::request(OTHER, CAND, CAND).conflicts(OWN, CAND));
        // Another host probes for it at the same time.
        assert!(ArpPacket::request(OTHER, Ipv4Addr::UNSPECIFIED, CAND).conflicts(OWN, CAND));
        // Our own probe, and unrelated traffic, are not conflicts.
        assert!(!ArpPacket::request(OWN, Ipv4Addr::UNSPECIFIED, CAND).conflicts(OWN, CAND));
        let unrelated = ArpPacket::request(OTHER, Ipv4Addr::new(10, 0, 0, 9), CAND);
        assert!(!unrelated.conflicts(OWN, CAND));
        assert_eq!(mac_string(&OTHER), "02:00:00:00:00:02");
    }
}
