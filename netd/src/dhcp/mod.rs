//! The DHCPv4 client: wire format ([`packet`]), state machine ([`client`]),
//! remembered leases ([`store`]), IPv4/UDP framing ([`frame`]) and the
//! sockets that carry it ([`socket`]).

pub mod client;
pub mod frame;
pub mod packet;
pub mod socket;
pub mod store;
