//! IPv4 + UDP framing for DHCP over a packet socket.
//!
//! Before the interface has an address the kernel's UDP stack can neither
//! send from 0.0.0.0 reliably nor receive replies addressed to an address it
//! does not have yet, so the client reads and writes whole IP datagrams on an
//! `AF_PACKET` socket. These are the pure halves of that.

use std::net::Ipv4Addr;

const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const PROTO_UDP: u8 = 17;

/// Why a received datagram is not a DHCP reply for us.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than its headers or its own length fields say.
    #[error("truncated IPv4/UDP datagram ({0} bytes)")]
    Truncated(usize),
    /// Not IPv4, or the header checksum is wrong.
    #[error("bad IPv4 header")]
    BadHeader,
    /// Not UDP, a fragment, or not to the given port.
    #[error("not a UDP datagram to the DHCP client port")]
    NotForUs,
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut words = chunk.chunks_exact(2);
        for w in &mut words {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 datagram carrying `payload` over UDP, checksums filled in.
pub fn build(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = (UDP_HEADER + payload.len()) as u16;
    let total = IPV4_HEADER as u16 + udp_len;
    let mut ip = [0u8; IPV4_HEADER];
    ip[0] = 0x45; // version 4, 5 words
    ip[1] = 0x10; // DSCP/ECN: low delay, as dhclient sends
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = PROTO_UDP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut udp = [0u8; UDP_HEADER];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = PROTO_UDP;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    let sum = match checksum(&[&pseudo, &udp, payload]) {
        0 => 0xffff, // 0 means "no checksum" in UDP over IPv4
        s => s,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());

    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&udp);
    out.extend_from_slice(payload);
    out
}

/// The UDP payload of `datagram` if it is an unfragmented UDP datagram to
/// `port`, with its source address. The UDP checksum is not checked: on
/// virtual links the kernel hands packet sockets datagrams whose checksum is
/// left for hardware to fill; DHCP's own checks (xid, chaddr) follow.
pub fn parse(datagram: &[u8], port: u16) -> Result<(Ipv4Addr, &[u8]), FrameError> {
    if datagram.len() < IPV4_HEADER {
        return Err(FrameError::Truncated(datagram.len()));
    }
    if datagram[0] >> 4 != 4 {
        return Err(FrameError::BadHeader);
    }
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    if ihl < IPV4_HEADER {
        return Err(FrameError::BadHeader);
    }
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if total < ihl + UDP_HEADER || datagram.len() < total {
        return Err(FrameError::Truncated(datagram.len()));
    }
    if checksum(&[&datagram[..ihl]]) != 0 {
        return Err(FrameError::BadHeader);
    }
    let fragment = u16::from_be_bytes([datagram[6], datagram[7]]) & 0x3fff; // MF + offset
    if datagram[9] != PROTO_UDP || fragment != 0 {
        return Err(FrameError::NotForUs);
    }
    let src = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    let udp = &datagram[ihl..total];
    if u16::from_be_bytes([udp[2], udp[3]]) != port {
        return Err(FrameError::NotForUs);
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HEADER || udp_len > udp.len() {
        return Err(FrameError::Truncated(datagram.len()));
    }
    Ok((src, &udp[UDP_HEADER..udp_len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_discover_frame_is_byte_exact() {
        let payload = b"dhcp";
        let got = build(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, payload);
        #[rustfmt::skip]
        let want = [
            0x45, 0x10, 0x00, 0x20,   // v4, ihl 5, tos, total length 32
            0x00, 0x00, 0x00, 0x00,   // id, flags, fragment offset
            0x40, 0x11, 0x7a, 0xbe,   // ttl 64, UDP, header checksum
            0, 0, 0, 0,               // 0.0.0.0
            255, 255, 255, 255,       // 255.255.255.255
            0x00, 0x44, 0x00, 0x43,   // 68 -> 67
            0x00, 0x0c, 0x37, 0x77,   // UDP length 12, checksum
            b'd', b'h', b'c', b'p',
        ];
        assert_eq!(got, want);
        // The header checksums verify to zero.
        assert_eq!(checksum(&[&got[..20]]), 0);
        let (src, body) = parse(&got, 67).unwrap();
        assert_eq!((src, body), (Ipv4Addr::UNSPECIFIED, &payload[..]));
    }

    #[test]
    fn bad_datagrams() {
        let good = build(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            67,
            68,
            &[1; 300],
        );
        assert!(parse(&good, 68).is_ok());
        assert_eq!(parse(&good, 67), Err(FrameError::NotForUs));
        assert_eq!(parse(&good[..10], 68), Err(FrameError::Truncated(10)));
        assert_eq!(parse(&good[..100], 68), Err(FrameError::Truncated(100)));
        let mut bad_sum = good.clone();
        bad_sum[8] = 1;
        assert_eq!(parse(&bad_sum, 68), Err(FrameError::BadHeader));
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(parse(&v6, 68), Err(FrameError::BadHeader));
        let mut tcp = good.clone();
        tcp[9] = 6;
        tcp[10] = 0;
        tcp[11] = 0;
        let sum = checksum(&[&tcp[..20]]);
        tcp[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse(&tcp, 68), Err(FrameError::NotForUs));
        let mut short_udp = good.clone();
        short_udp[24..26].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(
            parse(&short_udp, 68),
            Err(FrameError::Truncated(good.len()))
        );
        // Trailing Ethernet padding past the IP total length is ignored.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(parse(&padded, 68).unwrap().1.len(), 300);
    }
}
