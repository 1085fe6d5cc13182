//! The sockets one interface's DHCP client talks through.
//!
//! * An `AF_PACKET` datagram socket bound to the interface, filtered in the
//!   kernel to UDP datagrams for port 68: it receives every reply, whether
//!   broadcast or unicast to an address not configured yet, and sends the
//!   broadcasts (from 0.0.0.0 before there is an address).
//! * A UDP socket bound to port 68 on the device (`SO_BINDTODEVICE`), for the
//!   unicast renewal to the server once the address is configured; the
//!   kernel routes and resolves the server's MAC for it.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::client::Destination;
use super::frame;
use super::packet::{CLIENT_PORT, SERVER_PORT};

/// Why a DHCP socket failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Setting a socket up failed.
    #[error("cannot open the DHCP {what} socket on {ifname}")]
    Open {
        /// "packet" or "UDP".
        what: &'static str,
        /// The interface.
        ifname: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Sending failed.
    #[error("cannot send a DHCP message on {ifname}")]
    Send {
        /// The interface.
        ifname: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Receiving failed.
    #[error("cannot receive DHCP messages on {ifname}")]
    Recv {
        /// The interface.
        ifname: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

const ETH_P_IP: u16 = 0x0800;

/// Classic BPF over the IP header (a `SOCK_DGRAM` packet socket starts at
/// the network header): accept unfragmented UDP to port 68, drop the rest.
const FILTER: [libc::sock_filter; 9] = [
    // A = IP protocol
    bpf(0x30, 0, 0, 9),
    // if A == UDP goto +0 else goto drop
    bpf(0x15, 0, 6, 17),
    // A = flags + fragment offset
    bpf(0x28, 0, 0, 6),
    // if A & (MF | offset) goto drop
    bpf(0x45, 4, 0, 0x3fff),
    // X = IP header length
    bpf(0xb1, 0, 0, 0),
    // A = UDP destination port
    bpf(0x48, 0, 0, 2),
    // if A == 68 goto accept else goto drop
    bpf(0x15, 0, 1, CLIENT_PORT as u32),
    // accept: the whole datagram
    bpf(0x06, 0, 0, 0x0004_0000),
    // drop
    bpf(0x06, 0, 0, 0),
];

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// One interface's DHCP sockets.
#[derive(Debug)]
pub struct DhcpSocket {
    ifname: String,
    ifindex: u32,
    packet: AsyncFd<OwnedFd>,
    udp: tokio::net::UdpSocket,
}

fn last_error<T>(what: &'static str, ifname: &str) -> Result<T, SocketError> {
    Err(SocketError::Open {
        what,
        ifname: ifname.to_string(),
        source: io::Error::last_os_error(),
    })
}

fn packet_socket(ifname: &str, ifindex: u32) -> Result<OwnedFd, SocketError> {
    let proto = ETH_P_IP.to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return last_error("packet", ifname);
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let prog = libc::sock_fprog {
        len: FILTER.len() as u16,
        filter: FILTER.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at a valid filter array for the duration of the
    // call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return last_error("packet", ifname);
    }
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
        return last_error("packet", ifname);
    }
    Ok(fd)
}

fn link_addr(ifindex: u32, mac: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data for which all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_IP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&mac);
    addr
}

fn udp_socket(ifname: &str) -> Result<std::net::UdpSocket, SocketError> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let err = |e: nix::Error| SocketError::Open {
        what: "UDP",
        ifname: ifname.to_string(),
        source: io::Error::from(e),
    };
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true).map_err(err)?;
    socket::setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )
    .map_err(err)?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, CLIENT_PORT)).map_err(err)?;
    Ok(std::net::UdpSocket::from(fd))
}

impl DhcpSocket {
    /// Opens the sockets on interface `ifname` (index `ifindex`). Needs
    /// CAP_NET_RAW; must run inside a Tokio runtime.
    pub fn open(ifname: &str, ifindex: u32) -> Result<Self, SocketError> {
        let packet = packet_socket(ifname, ifindex)?;
        // SAFETY: an OwnedFd always returns the descriptor it owns, which
        // stays open until the AsyncFd (its only owner) is dropped.
        let packet = unsafe {
            AsyncFd::register_with_interest(packet, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| SocketError::Open {
            what: "packet",
            ifname: ifname.to_string(),
            source: e.into_parts().1,
        })?;
        let udp = tokio::net::UdpSocket::from_std(udp_socket(ifname)?).map_err(|source| {
            SocketError::Open {
                what: "UDP",
                ifname: ifname.to_string(),
                source,
            }
        })?;
        Ok(DhcpSocket {
            ifname: ifname.to_string(),
            ifindex,
            packet,
            udp,
        })
    }

    /// Sends one DHCP message. Broadcasts go out as whole IP datagrams from
    /// `src` (0.0.0.0 until an address is bound) to ff:ff:ff:ff:ff:ff.
    pub async fn send(
        &self,
        payload: &[u8],
        dest: Destination,
        src: Ipv4Addr,
    ) -> Result<(), SocketError> {
        let err = |source| SocketError::Send {
            ifname: self.ifname.clone(),
            source,
        };
        match dest {
            Destination::Unicast(server) => {
                self.udp
                    .send_to(payload, SocketAddrV4::new(server, SERVER_PORT))
                    .await
                    .map_err(err)?;
            }
            Destination::Broadcast => {
                let datagram =
                    frame::build(src, Ipv4Addr::BROADCAST, CLIENT_PORT, SERVER_PORT, payload);
                let addr = link_addr(self.ifindex, [0xff; 6]);
                loop {
                    let mut guard = self.packet.writable().await.map_err(err)?;
                    let res = guard.try_io(|fd| {
                        // SAFETY: the buffer and address are valid for the
                        // call and their lengths are passed with them.
                        let n = unsafe {
                            libc::sendto(
                                fd.as_raw_fd(),
                                datagram.as_ptr().cast(),
                                datagram.len(),
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
                    match res {
                        Ok(r) => return r.map_err(err),
                        Err(_would_block) => continue,
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for the next UDP payload sent to port 68 on this interface.
    /// Copies that reach the UDP socket too are read and dropped there.
    pub async fn recv(&self) -> Result<Vec<u8>, SocketError> {
        let err = |source| SocketError::Recv {
            ifname: self.ifname.clone(),
            source,
        };
        let mut buf = vec![0u8; 65536];
        loop {
            tokio::select! {
                guard = self.packet.readable() => {
                    let mut guard = guard.map_err(err)?;
                    let res = guard.try_io(|fd| {
                        // SAFETY: `buf` is valid for writes of its length.
                        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                        if n < 0 {
                            Err(io::Error::last_os_error())
                        } else {
                            Ok(n as usize)
                        }
                    });
                    let n = match res {
                        Ok(r) => r.map_err(err)?,
                        Err(_would_block) => continue,
                    };
                    match frame::parse(&buf[..n], CLIENT_PORT) {
                        Ok((_, payload)) => return Ok(payload.to_vec()),
                        Err(e) => log::debug!(target: "netd::dhcp", "{}: dropped a datagram: {e}", self.ifname),
                    }
                }
                r = self.udp.readable() => {
                    r.map_err(err)?;
                    let mut scratch = [0u8; 1];
                    match self.udp.try_recv_from(&mut scratch) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(err(e)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_jumps_stay_in_bounds() {
        for (i, ins) in FILTER.iter().enumerate() {
            let is_jump = ins.code & 0x07 == 0x05;
            if is_jump {
                assert!(
                    i + 1 + usize::from(ins.jt.max(ins.jf)) < FILTER.len(),
                    "instruction {i}"
                );
            }
        }
        assert_eq!(FILTER.last().map(|i| (i.code, i.k)), Some((0x06, 0)));
    }
}
