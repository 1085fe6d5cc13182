//! The `[network]` section of the boot manifest.
//!
//! ```toml
//! [network]
//! [[network.interface]]
//! name = "eth0"                       # or match = { mac = "52:54:00:12:34:56" }
//! dhcp = true                         # or address = "192.168.1.10/24", gateway = "192.168.1.1"
//! dns = ["10.0.2.3"]
//! ```
//!
//! With no `[network]` section every physical NIC gets DHCP.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer};

/// The whole `[network]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, try_from = "RawConfig")]
pub struct Config {
    /// Interfaces to configure; when empty, DHCP on every physical NIC.
    pub interface: Vec<Interface>,
    /// DNS servers used in addition to those learnt per interface.
    pub dns: Vec<IpAddr>,
    /// DNS search domains.
    pub search: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    interface: Vec<Interface>,
    #[serde(default)]
    dns: Vec<IpAddr>,
    #[serde(default)]
    search: Vec<DomainName>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;
    fn try_from(raw: RawConfig) -> Result<Self, String> {
        let mut names = BTreeSet::new();
        let mut macs = BTreeSet::new();
        for iface in &raw.interface {
            if let Some(name) = &iface.name {
                if !names.insert(name.clone()) {
                    return Err(format!("interface {name:?} is configured twice"));
                }
            }
            if let Some(mac) = iface.mac {
                if !macs.insert(mac) {
                    return Err(format!("two interfaces match the MAC address {mac}"));
                }
            }
        }
        Ok(Config {
            interface: raw.interface,
            dns: raw.dns,
            search: raw.search.into_iter().map(|d| d.0).collect(),
        })
    }
}

/// One interface's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawInterface")]
pub struct Interface {
    /// Kernel interface name, when matched by name.
    pub name: Option<String>,
    /// MAC address, when matched by address.
    pub mac: Option<MacAddr>,
    /// Run the DHCPv4 client on it.
    pub dhcp: bool,
    /// Static addresses with prefix length.
    pub addresses: Vec<IpNet>,
    /// IPv4 default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 default gateway.
    pub gateway6: Option<Ipv6Addr>,
    /// Accept IPv6 router advertisements (SLAAC).
    pub ipv6_autoconf: bool,
    /// MTU.
    pub mtu: Option<u32>,
    /// Extra routes.
    pub routes: Vec<Route>,
    /// DNS servers.
    pub dns: Vec<IpAddr>,
    /// DNS search domains.
    pub search: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Option<String>,
    #[serde(rename = "match")]
    matches: Option<MatchSpec>,
    #[serde(default)]
    dhcp: bool,
    #[serde(default)]
    address: OneOrMany<IpNet>,
    gateway: Option<Ipv4Addr>,
    gateway6: Option<Ipv6Addr>,
    #[serde(default = "yes")]
    ipv6_autoconf: bool,
    mtu: Option<u32>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Vec<IpAddr>,
    #[serde(default)]
    search: Vec<DomainName>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    mac: MacAddr,
}

impl TryFrom<RawInterface> for Interface {
    type Error = String;
    fn try_from(raw: RawInterface) -> Result<Self, String> {
        let what = match (&raw.name, &raw.matches) {
            (Some(name), None) => {
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) || name == "." || name == ".." {
                    return Err(format!(
                        "invalid interface name {name:?}: at most 15 characters, no '/' or spaces"
                    ));
                }
                format!("interface {name:?}")
            }
            (None, Some(m)) => format!("the interface with MAC {}", m.mac),
            (Some(_), Some(_)) => return Err("an interface is chosen by name or by match, not both".into()),
            (None, None) => return Err("an interface needs a name (name = \"eth0\") or a match (match = { mac = \"...\" })".into()),
        };
        let addresses = raw.address.0;
        if let Some(gw) = raw.gateway {
            if !raw.dhcp && !addresses.iter().any(|a| a.addr.is_ipv4()) {
                return Err(format!("{what} has gateway {gw} but no IPv4 address"));
            }
        }
        if let Some(gw) = raw.gateway6 {
            if !raw.ipv6_autoconf && !addresses.iter().any(|a| a.addr.is_ipv6()) {
                return Err(format!("{what} has gateway6 {gw} but no IPv6 address"));
            }
        }
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(format!("{what}: mtu {mtu} is outside 68..65535"));
            }
        }
        Ok(Interface {
            name: raw.name,
            mac: raw.matches.map(|m| m.mac),
            dhcp: raw.dhcp,
            addresses,
            gateway: raw.gateway,
            gateway6: raw.gateway6,
            ipv6_autoconf: raw.ipv6_autoconf,
            mtu: raw.mtu,
            routes: raw.routes,
            dns: raw.dns,
            search: raw.search.into_iter().map(|d| d.0).collect(),
        })
    }
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination network.
    pub to: IpNet,
    /// Next hop.
    pub via: IpAddr,
}

/// An address with its prefix length, `192.168.1.10/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid address {s:?}: expected address/prefix, like \"192.168.1.10/24\"");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!(
                "invalid address {s:?}: the prefix length is at most {max}"
            ));
        }
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A MAC address, `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid MAC address {s:?}: expected six hex bytes like \"52:54:00:12:34:56\"")
        };
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        for (byte, part) in out.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A DNS name used as a search domain.
struct DomainName(String);

impl FromStr for DomainName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.trim_end_matches('.').split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if ok {
            Ok(DomainName(s.to_string()))
        } else {
            Err(format!("invalid domain name {s:?}"))
        }
    }
}

macro_rules! from_str_deserialize {
    ($t:ty, $what:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}
from_str_deserialize!(IpNet, "an address with prefix, like \"192.168.1.10/24\"");
from_str_deserialize!(MacAddr, "a MAC address like \"52:54:00:12:34:56\"");
from_str_deserialize!(DomainName, "a domain name");

/// A value that may be written alone or as a list.
struct OneOrMany<T>(Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            One(T),
            Many(Vec<T>),
        }
        // Untagged enums lose the inner error; parse strings ourselves so
        // "192.168.1.10" (no prefix) still says what is wrong.
        let value = toml::Value::deserialize(d)?;
        let parsed: Result<Either<T>, _> = value.clone().try_into();
        match parsed {
            Ok(Either::One(v)) => Ok(OneOrMany(vec![v])),
            Ok(Either::Many(v)) => Ok(OneOrMany(v)),
            Err(_) => {
                let first_error = match value {
                    toml::Value::Array(items) => {
                        items.into_iter().map(T::deserialize).find_map(Result::err)
                    }
                    other => T::deserialize(other).err(),
                };
                Err(de::Error::custom(
                    first_error
                        .map(|e| e.message().to_string())
                        .unwrap_or_else(|| "expected a value or a list of values".into()),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn dhcp_and_static() {
        let c = parse(
            r#"
            dns = ["1.1.1.1"]
            [[interface]]
            name = "eth0"
            dhcp = true
            [[interface]]
            match = { mac = "52:54:00:12:34:56" }
            address = ["192.168.1.10/24", "fd00::10/64"]
            gateway = "192.168.1.1"
            mtu = 9000
            routes = [{ to = "10.0.0.0/8", via = "192.168.1.254" }]
            search = ["example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(c.interface.len(), 2);
        assert!(c.interface[0].dhcp);
        assert_eq!(c.interface[1].mac.unwrap().to_string(), "52:54:00:12:34:56");
        assert_eq!(c.interface[1].addresses[1].to_string(), "fd00::10/64");
        assert_eq!(c.interface[1].routes[0].to.prefix, 8);
        let single = parse("[[interface]]\nname = \"eth0\"\naddress = \"10.1.2.3/16\"\n").unwrap();
        assert_eq!(single.interface[0].addresses.len(), 1);
    }

    #[test]
    fn bad_input_is_named() {
        let cases = [
            ("[[interface]]\ndhcp = true\n", "needs a name"),
            (
                "[[interface]]\nname = \"eth0\"\nmatch = { mac = \"52:54:00:12:34:56\" }\n",
                "not both",
            ),
            (
                "[[interface]]\nname = \"eth0\"\naddress = \"10.1.2.3\"\n",
                "expected address/prefix",
            ),
            (
                "[[interface]]\nname = \"eth0\"\naddress = \"10.1.2.3/33\"\n",
                "at most 32",
            ),
            (
                "[[interface]]\nname = \"eth0\"\ngateway = \"10.0.0.1\"\n",
                "no IPv4 address",
            ),
            (
                "[[interface]]\nmatch = { mac = \"52:54:00\" }\n",
                "invalid MAC",
            ),
            ("[[interface]]\nname = \"eth0\"\nmtu = 10\n", "outside 68"),
            (
                "[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth0\"\n",
                "configured twice",
            ),
            (
                "[[interface]]\nname = \"eth0\"\nfoo = 1\n",
                "unknown field `foo`",
            ),
            ("search = [\"-bad\"]\n", "invalid domain"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }
}
