//! Which links netd configures, and how: the `[network]` section matched
//! against the links the kernel has. Pure; the sysfs lookup is a parameter.

use std::path::Path;

use crate::config::{Config, Interface, MacAddr};
use crate::netlink::LinkInfo;

/// One link and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The link.
    pub link: LinkInfo,
    /// Its configuration (DHCP only, when no `[network]` names interfaces).
    pub config: Interface,
}

/// The outcome of matching.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Links to configure.
    pub targets: Vec<Target>,
    /// Configured interfaces no link matches, described for the log.
    pub unmatched: Vec<String>,
}

/// DHCP and nothing else, the configuration of a NIC nobody named.
pub fn dhcp_only(name: &str) -> Interface {
    Interface {
        name: Some(name.to_string()),
        mac: None,
        dhcp: true,
        addresses: Vec::new(),
        gateway: None,
        gateway6: None,
        ipv6_autoconf: true,
        mtu: None,
        routes: Vec::new(),
        dns: Vec::new(),
        search: Vec::new(),
    }
}

/// Whether `name` is a physical NIC: it has a device behind it in sysfs
/// (`<class_net>/<name>/device`), which virtual links (veth, bridge, lo) lack.
pub fn is_physical(class_net: &Path, name: &str) -> bool {
    class_net.join(name).join("device").exists()
}

/// Matches `config` against `links`. With no interfaces configured, every
/// physical Ethernet link gets DHCP.
pub fn plan(config: Option<&Config>, links: &[LinkInfo], physical: impl Fn(&str) -> bool) -> Plan {
    let mut out = Plan::default();
    let configured = config.map(|c| c.interface.as_slice()).unwrap_or_default();
    if configured.is_empty() {
        for link in links {
            if !link.loopback && link.ethernet && physical(&link.name) {
                out.targets.push(Target {
                    link: link.clone(),
                    config: dhcp_only(&link.name),
                });
            }
        }
        return out;
    }
    for iface in configured {
        let found = links.iter().find(|l| match (&iface.name, iface.mac) {
            (Some(name), _) => &l.name == name,
            (None, Some(MacAddr(mac))) => l.mac == Some(mac),
            (None, None) => false,
        });
        match found {
            Some(link) if out.targets.iter().any(|t| t.link.index == link.index) => {
                out.unmatched.push(format!(
                    "{} is the same link as another configured interface",
                    describe(iface)
                ));
            }
            Some(link) => out.targets.push(Target {
                link: link.clone(),
                config: iface.clone(),
            }),
            None => out
                .unmatched
                .push(format!("no link matches {}", describe(iface))),
        }
    }
    out
}

/// "interface \"eth0\"" or "the interface with MAC 52:54:...".
pub fn describe(iface: &Interface) -> String {
    match (&iface.name, iface.mac) {
        (Some(name), _) => format!("interface {name:?}"),
        (None, Some(mac)) => format!("the interface with MAC {mac}"),
        (None, None) => "an unnamed interface".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, mac: u8) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            mac: Some([2, 0, 0, 0, 0, mac]),
            up: false,
            carrier: false,
            loopback: name == "lo",
            ethernet: name != "lo",
        }
    }

    fn links() -> Vec<LinkInfo> {
        vec![
            link(1, "lo", 0),
            link(2, "eth0", 1),
            link(3, "veth9", 2),
            link(4, "eth1", 3),
        ]
    }

    #[test]
    fn no_config_means_dhcp_on_physical_nics() {
        let p = plan(None, &links(), |n| n.starts_with("eth"));
        let names: Vec<_> = p.targets.iter().map(|t| t.link.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"]);
        assert!(p.targets.iter().all(|t| t.config.dhcp));
        let empty = Config::default();
        assert_eq!(plan(Some(&empty), &links(), |n| n.starts_with("eth")), p);
    }

    #[test]
    fn match_by_name_and_mac_and_report_unknown() {
        let config: Config = toml::from_str(
            r#"
            [[interface]]
            name = "veth9"
            dhcp = true
            [[interface]]
            match = { mac = "02:00:00:00:00:03" }
            address = "10.1.0.2/24"
            [[interface]]
            name = "eth7"
            dhcp = true
            [[interface]]
            match = { mac = "02:00:00:00:00:02" }
            dhcp = true
            "#,
        )
        .unwrap();
        let p = plan(Some(&config), &links(), |_| true);
        let names: Vec<_> = p.targets.iter().map(|t| t.link.name.as_str()).collect();
        assert_eq!(names, ["veth9", "eth1"]);
        assert_eq!(
            p.unmatched,
            [
                "no link matches interface \"eth7\"",
                "the interface with MAC 02:00:00:00:00:02 is the same link as another configured interface"
            ]
        );
    }

    #[test]
    fn sysfs_device_link_marks_physical() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("eth0/device")).unwrap();
        std::fs::create_dir_all(dir.path().join("veth0")).unwrap();
        assert!(is_physical(dir.path(), "eth0"));
        assert!(!is_physical(dir.path(), "veth0"));
    }
}
