//! berth's network daemon and library: the `[network]` section of the boot
//! manifest, which netd owns and `init` composes, and the host networking
//! `berth-netd` does with it — links, static addresses and routes, DHCPv4,
//! and `/etc/resolv.conf` — all over netlink.
//!
//! [`bridge`] is the container side, a library the engine calls: the
//! bridge, veth pairs, addresses, NAT and published ports.
//!
//! Pure logic (DHCP packets, the client state machine, lease files, link
//! matching, resolv.conf text) is kept apart from the code that touches the
//! kernel ([`netlink`], [`dhcp::socket`], [`iface`], [`daemon`]).

pub mod arp;
pub mod bridge;
pub mod config;
pub mod daemon;
pub mod dhcp;
pub mod iface;
pub mod manifest;
pub mod netlink;
pub mod plan;
pub mod readiness;
pub mod resolv;

pub use config::Config;
