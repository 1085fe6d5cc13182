//! berth-netd against a real dnsmasq, in network namespaces made by the
//! test (root only; skipped with a message otherwise).

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{can_run, wait_until, Bench, CLI_IF};

const SECS_10: Duration = Duration::from_secs(10);

fn dhcp_config() -> String {
    format!("[network]\n[[network.interface]]\nname = \"{CLI_IF}\"\ndhcp = true\n")
}

/// Lease, classless routes, DNS, domain, host name, readiness.
#[test]
fn dhcp_lease_routes_dns_hostname_and_readiness() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.77.0.1/24");
    let dnsmasq = bench.dnsmasq(
        "10.77.0.50,10.77.0.60,255.255.255.0,2m",
        &[
            "--dhcp-option=option:dns-server,10.77.0.1,10.77.0.2",
            "--dhcp-option=option:domain-name,test.lan",
            "--dhcp-option=option:mtu,1400",
            // Option 121 overrides option 3: no default route expected.
            "--dhcp-option=121,192.168.50.0/24,10.77.0.254",
            &format!("--dhcp-host={},nodename", bench.mac),
        ],
    );
    let config = format!("[system]\nmodules = []\n{}", dhcp_config());
    let mut netd = bench.netd(&config, &["--set-hostname"], true);
    let ready = netd.readiness(SECS_10);
    assert_eq!(
        ready.as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );

    let addrs = bench.client_v4();
    assert_eq!(addrs.len(), 1, "{}", bench.report(Some(&dnsmasq), &netd));
    let addr = &addrs[0];
    assert!(
        addr.starts_with("10.77.0.") && addr.ends_with("/24"),
        "{addr}"
    );
    let last: u8 = addr
        .trim_start_matches("10.77.0.")
        .trim_end_matches("/24")
        .parse()
        .unwrap();
    assert!((50..=60).contains(&last), "{addr}");

    let detail = bench.ip_cli(&["-4", "addr", "show", "dev", CLI_IF]);
    assert!(
        detail.contains("dynamic"),
        "the address has no lease lifetime: {detail}"
    );
    assert!(bench.ip_cli(&["link", "show", CLI_IF]).contains("mtu 1400"));

    let routes = bench.ip_cli(&["-4", "route"]);
    assert!(
        routes.contains("192.168.50.0/24 via 10.77.0.254") && routes.contains("proto dhcp"),
        "{routes}"
    );
    assert!(
        !routes.contains("default"),
        "option 121 must override option 3: {routes}"
    );

    let resolv = fs::read_to_string(bench.path("resolv.conf")).unwrap_or_default();
    assert_eq!(
        resolv,
        "# written by berth-netd\nnameserver 10.77.0.1\nnameserver 10.77.0.2\nsearch test.lan\n"
    );

    let host = Command::new("nsenter")
        .args(["--target", &netd.pid().to_string(), "--uts", "hostname"])
        .output()
        .expect("nsenter");
    assert_eq!(
        String::from_utf8_lossy(&host.stdout).trim(),
        "nodename",
        "{}",
        netd.log()
    );
    assert!(netd.running());
    assert!(
        fs::read_to_string(bench.path(&format!("state/{CLI_IF}.lease")))
            .unwrap()
            .contains(&format!("address={addr}"))
    );
}

/// A host name in the manifest wins over DHCP's.
#[test]
fn manifest_hostname_is_not_overridden() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.78.0.1/24");
    let dnsmasq = bench.dnsmasq(
        "10.78.0.50,10.78.0.60,2m",
        &[&format!("--dhcp-host={},fromdhcp", bench.mac)],
    );
    let config = format!("[system]\nhostname = \"mine\"\n{}", dhcp_config());
    let mut netd = bench.netd(&config, &["--set-hostname"], true);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    let host = Command::new("nsenter")
        .args(["--target", &netd.pid().to_string(), "--uts", "hostname"])
        .output()
        .expect("nsenter");
    assert_ne!(String::from_utf8_lossy(&host.stdout).trim(), "fromdhcp");
}

/// T1 from the server (10 s): a unicast renewal, the same address kept.
#[test]
fn renewal_at_t1() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.79.0.1/24");
    let dnsmasq = bench.dnsmasq(
        "10.79.0.50,10.79.0.60,2m",
        &["--dhcp-option=option:T1,5", "--dhcp-option=option:T2,8"],
    );
    let mut netd = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    let first = bench.client_v4();
    let renewed = wait_until(Duration::from_secs(20), || {
        netd.log().contains("DHCP renewed")
    });
    assert!(renewed, "{}", bench.report(Some(&dnsmasq), &netd));
    let log = netd.log();
    assert!(
        log.contains("sending Request to Unicast(10.79.0.1)"),
        "{log}"
    );
    assert_eq!(bench.client_v4(), first);
    assert!(dnsmasq.log().matches("DHCPACK").count() >= 2);
}

/// A remembered lease from another subnet: INIT-REBOOT, NAK, the old
/// address removed, a new lease from DISCOVER.
#[test]
fn nak_when_the_remembered_subnet_changed() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.80.0.1/24");
    let dnsmasq = bench.dnsmasq("10.80.0.50,10.80.0.60,2m", &["--dhcp-authoritative"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    fs::create_dir_all(bench.path("state")).unwrap();
    fs::write(
        bench.path(&format!("state/{CLI_IF}.lease")),
        format!("address=10.99.0.5/24\nserver=10.99.0.1\nacquired={now}\nlease=3600\nt1=1800\nt2=3150\nrouters=10.99.0.1\n"),
    )
    .unwrap();
    // What the previous run left on the link.
    bench.ip_cli(&["link", "set", CLI_IF, "up"]);
    bench.ip_cli(&["addr", "add", "10.99.0.5/24", "dev", CLI_IF]);

    let mut netd = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    let log = netd.log();
    assert!(log.contains("INIT-REBOOT asking for 10.99.0.5"), "{log}");
    assert!(
        log.contains("DHCP NAK from 10.80.0.1"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    let addrs = bench.client_v4();
    assert_eq!(addrs.len(), 1, "{}", bench.report(Some(&dnsmasq), &netd));
    assert!(addrs[0].starts_with("10.80.0."), "{addrs:?}");
    let state = fs::read_to_string(bench.path(&format!("state/{CLI_IF}.lease"))).unwrap();
    assert!(state.contains("address=10.80.0."), "{state}");
}

/// The server offers an address another host already has (a stale lease
/// in dnsmasq's database, and --no-ping keeps dnsmasq from noticing). netd
/// puts it on the link at once and probes alongside (optimistically): the
/// probe finds the owner, the address comes off again within the probe
/// window, netd sends DHCPDECLINE, and it ends with another address from
/// the range. Readiness waits for that second address.
#[test]
fn offered_address_in_use_is_declined() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.86.0.1/24");
    let squatter = bench.squatter("10.86.0.50/24");
    let squatter_mac = common::run(&["ip", "-n", &squatter.ns, "link", "show", "bt-sq"])
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("squatter MAC")
        .to_string();
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    fs::write(
        bench.path("dnsmasq.leases"),
        format!("{expiry} {} 10.86.0.50 * *\n", bench.mac),
    )
    .unwrap();
    let dnsmasq = bench.dnsmasq("10.86.0.50,10.86.0.60,2m", &[]);
    let watch = bench.watch_addresses();
    let mut netd = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );

    let served = dnsmasq.log();
    let first_offer = served.lines().find(|l| l.contains("DHCPOFFER"));
    assert!(
        first_offer.is_some_and(|l| l.contains("10.86.0.50 ")),
        "dnsmasq did not offer the taken address first: {served}"
    );
    let log = netd.log();
    assert!(
        log.contains(&format!(
            "{CLI_IF}: 10.86.0.50 is already used by {squatter_mac}; sending DHCPDECLINE to 10.86.0.1"
        )),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    assert!(
        served
            .lines()
            .any(|l| l.contains("DHCPDECLINE") && l.contains("10.86.0.50 ")),
        "{served}"
    );

    let addrs = bench.client_v4();
    assert_eq!(addrs.len(), 1, "{}", bench.report(Some(&dnsmasq), &netd));
    let last: u8 = addrs[0]
        .strip_prefix("10.86.0.")
        .and_then(|a| a.strip_suffix("/24"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{addrs:?}"));
    assert!((51..=60).contains(&last), "{addrs:?}");
    assert!(log.contains(&format!("DHCP lease {}", addrs[0])), "{log}");
    assert!(
        log.contains(&format!("{} confirmed", addrs[0].trim_end_matches("/24"))),
        "{log}"
    );
    // Readiness came after the second probe, so the taken address was gone
    // by then (the monitor may report it a moment later).
    let taken = "10.86.0.50/24";
    assert!(
        wait_until(Duration::from_secs(2), || watch
            .events(taken)
            .iter()
            .any(|e| e.deleted)),
        "the taken address was not removed: {}",
        watch.seen()
    );
    let events = watch.events(taken);
    let (Some(added), Some(deleted)) = (
        events.iter().find(|e| !e.deleted),
        events.iter().find(|e| e.deleted),
    ) else {
        panic!(
            "want the taken address added, then deleted: {}",
            watch.seen()
        );
    };
    assert!(added.at <= deleted.at, "{}", watch.seen());
    // The probe window, plus time for a loaded test host to schedule netd
    // and `ip monitor` (which stamps events as it reads them); the next
    // DISCOVER, one second after the DECLINE, is past it.
    let allowed = netd::arp::PROBE_WINDOW + Duration::from_millis(750);
    assert!(
        deleted.at - added.at <= allowed,
        "the taken address stayed {:?} (allowed {allowed:?}): {}",
        deleted.at - added.at,
        watch.seen()
    );
    assert!(
        !events.iter().any(|e| !e.deleted && e.at > deleted.at),
        "the taken address came back: {}",
        watch.seen()
    );
    let state = fs::read_to_string(bench.path(&format!("state/{CLI_IF}.lease"))).unwrap();
    assert!(state.contains(&format!("address={}", addrs[0])), "{state}");
    assert!(netd.running());
}

/// A restarted netd asks for its remembered address and gets it back.
#[test]
fn restart_reuses_the_remembered_lease() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.81.0.1/24");
    let dnsmasq = bench.dnsmasq("10.81.0.50,10.81.0.60,2m", &[]);
    let mut netd = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    let first = bench.client_v4();
    netd.stop();
    // The address outlives the daemon.
    assert_eq!(bench.client_v4(), first);
    let mut again = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        again.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &again)
    );
    let ip = first[0].split('/').next().unwrap().to_string();
    assert!(
        again
            .log()
            .contains(&format!("INIT-REBOOT asking for {ip}")),
        "{}",
        again.log()
    );
    assert_eq!(bench.client_v4(), first);
}

/// The server is gone at restart: the remembered, still valid lease is kept.
#[test]
fn server_gone_at_restart_keeps_a_valid_lease() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.82.0.1/24");
    let mut dnsmasq = bench.dnsmasq("10.82.0.50,10.82.0.60,2m", &[]);
    let mut netd = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    let first = bench.client_v4();
    netd.stop();
    dnsmasq.stop();
    let mut again = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        again.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        again.log()
    );
    assert_eq!(bench.client_v4(), first);
    let routes = bench.ip_cli(&["-4", "route"]);
    assert!(routes.contains("default via 10.82.0.1"), "{routes}");
}

/// Static IPv4 and IPv6, gateway, MTU, extra routes, DNS; an unknown
/// interface is reported and does not hold readiness back.
#[test]
fn static_config_and_unknown_interface() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.88.0.1/24");
    let config = format!(
        r#"
[network]
dns = ["192.0.2.53"]
search = ["corp.example"]

[[network.interface]]
name = "{CLI_IF}"
address = ["10.88.0.2/24", "fd00:88::2/64"]
gateway = "10.88.0.1"
gateway6 = "fd00:88::1"
mtu = 1400
routes = [{{ to = "172.30.0.0/16", via = "10.88.0.254" }}]
dns = ["10.88.0.1"]
search = ["lab.example"]

[[network.interface]]
name = "nope0"
dhcp = true
"#
    );
    let mut netd = bench.netd(&config, &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(None, &netd)
    );
    assert_eq!(bench.client_v4(), ["10.88.0.2/24"]);
    let v6 = bench.ip_cli(&["-6", "addr", "show", "dev", CLI_IF]);
    assert!(v6.contains("fd00:88::2/64"), "{v6}");
    assert!(bench.ip_cli(&["link", "show", CLI_IF]).contains("mtu 1400"));
    let routes = bench.ip_cli(&["-4", "route"]);
    assert!(routes.contains("default via 10.88.0.1"), "{routes}");
    assert!(routes.contains("172.30.0.0/16 via 10.88.0.254"), "{routes}");
    let routes6 = bench.ip_cli(&["-6", "route"]);
    assert!(routes6.contains("default via fd00:88::1"), "{routes6}");
    let resolv = fs::read_to_string(bench.path("resolv.conf")).unwrap();
    assert_eq!(
        resolv,
        "# written by berth-netd\nnameserver 192.0.2.53\nnameserver 10.88.0.1\nsearch corp.example lab.example\n"
    );
    // lo is up too.
    assert!(bench.ip_cli(&["link", "show", "lo"]).contains("UP"));
    assert!(
        netd.log().contains("no link matches interface \"nope0\""),
        "{}",
        netd.log()
    );
    assert!(netd.running());
}

/// A broken config is one line with file:line:col, exit status 2.
#[test]
fn config_error_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    fs::write(
        &path,
        "[network]\n[[network.interface]]\nname = \"eth0\"\naddress = \"10.0.0.1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth-netd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "berth-netd: config error: {}:4:11: ",
            path.display()
        )),
        "{err}"
    );
}

/// The server goes silent: renew (unicast) and rebind (broadcast) go
/// unanswered, the address stays until the lease ends, then it and its
/// routes are removed and DISCOVER starts again.
#[test]
fn server_gone_lease_kept_until_expiry_then_deconfigured() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.83.0.1/24");
    let server = common::FakeServer::start(
        &bench.srv,
        common::FakeLease {
            server: "10.83.0.1".parse().unwrap(),
            yiaddr: "10.83.0.50".parse().unwrap(),
            mask: "255.255.255.0".parse().unwrap(),
            router: "10.83.0.1".parse().unwrap(),
            times: (12, 3, 6),
            garbage_first: None,
        },
    );
    let mut netd = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        netd.log()
    );
    assert_eq!(bench.client_v4(), ["10.83.0.50/24"]);
    server
        .answering
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Renew at 3 s, rebind broadcasts from 6 s: the second is due about
    // 10 s after the lease; the wait is counted from later than that.
    let rebinding = wait_until(Duration::from_secs(20), || {
        netd.log().matches("sending Request to Broadcast").count() >= 2
    });
    assert!(rebinding, "{}", bench.report(None, &netd));
    assert!(netd.log().contains("sending Request to Unicast(10.83.0.1)"));
    assert_eq!(
        bench.client_v4(),
        ["10.83.0.50/24"],
        "dropped before expiry"
    );
    let expired = wait_until(SECS_10, || netd.log().contains("withdrawn"));
    assert!(expired, "{}", bench.report(None, &netd));
    assert!(
        wait_until(Duration::from_secs(2), || bench.client_v4().is_empty()),
        "{}",
        bench.report(None, &netd)
    );
    let routes = bench.ip_cli(&["-4", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    assert!(!bench.path(&format!("state/{CLI_IF}.lease")).exists());
    let after = netd.log();
    let tail = &after[after.find("withdrawn").unwrap()..];
    assert!(tail.contains("sending Discover"), "{after}");
    assert!(netd.running());
}

/// A malformed packet is logged and skipped; an offer with mask 0.0.0.0 and
/// a router outside the subnet is repaired: classful prefix, an on-link
/// route to the router, then the default route.
#[test]
fn malformed_packet_and_nonsense_offer() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.84.0.1/24");
    let mut garbage = vec![2u8, 1, 6, 0];
    garbage.resize(300, 0xee);
    let _server = common::FakeServer::start(
        &bench.srv,
        common::FakeLease {
            server: "10.84.0.1".parse().unwrap(),
            yiaddr: "10.84.0.50".parse().unwrap(),
            mask: "0.0.0.0".parse().unwrap(),
            router: "192.0.2.1".parse().unwrap(),
            times: (600, 300, 500),
            garbage_first: Some(garbage),
        },
    );
    let mut netd = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        netd.log()
    );
    let log = netd.log();
    assert!(log.contains("ignored a DHCP packet"), "{log}");
    assert!(
        log.contains("subnet mask 0.0.0.0 is not a usable netmask; using /8"),
        "{log}"
    );
    assert_eq!(bench.client_v4(), ["10.84.0.50/8"]);
    let routes = bench.ip_cli(&["-4", "route"]);
    assert!(
        routes.contains("192.0.2.1 dev bt-cli proto dhcp scope link"),
        "{routes}"
    );
    assert!(routes.contains("default via 192.0.2.1"), "{routes}");
}

/// Carrier lost and back (the server end goes down and up): the lease is
/// kept meanwhile and verified with INIT-REBOOT when the link returns.
#[test]
fn carrier_down_and_up_verifies_the_lease() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.85.0.1/24");
    let dnsmasq = bench.dnsmasq("10.85.0.50,10.85.0.60,2m", &[]);
    let mut netd = bench.netd(&dhcp_config(), &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    let first = bench.client_v4();
    common::run(&[
        "ip",
        "-n",
        &bench.srv,
        "link",
        "set",
        common::SRV_IF,
        "down",
    ]);
    assert!(
        wait_until(SECS_10, || netd.log().contains("carrier down")),
        "{}",
        netd.log()
    );
    assert_eq!(
        bench.client_v4(),
        first,
        "the lease must survive a short carrier loss"
    );
    common::run(&["ip", "-n", &bench.srv, "link", "set", common::SRV_IF, "up"]);
    assert!(
        wait_until(SECS_10, || netd.log().contains("DHCP renewed")),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    assert_eq!(bench.client_v4(), first);
    let acks = dnsmasq.log().matches("DHCPACK").count();
    assert!(acks >= 2, "{}", dnsmasq.log());
}

/// IPv6 SLAAC next to DHCPv4: dnsmasq sends router advertisements for
/// fd00:86::/64 and the client ends with a global address from the prefix
/// (past duplicate address detection) and a default route via the router's
/// link-local address.
#[test]
fn slaac_address_and_default_route_from_router_advertisements() {
    if !can_run() {
        return;
    }
    let bench = Bench::new("10.89.0.1/24");
    // nodad: dnsmasq only advertises from an address past DAD.
    common::run(&[
        "ip",
        "-n",
        &bench.srv,
        "addr",
        "add",
        "fd00:86::1/64",
        "dev",
        common::SRV_IF,
        "nodad",
    ]);
    let dnsmasq = bench.dnsmasq(
        "10.89.0.50,10.89.0.60,2m",
        &["--enable-ra", "--dhcp-range=fd00:86::,ra-only,64"],
    );
    let config = format!(
        "[network]\n[[network.interface]]\nname = \"{CLI_IF}\"\ndhcp = true\nipv6_autoconf = true\n"
    );
    let mut netd = bench.netd(&config, &[], false);
    assert_eq!(
        netd.readiness(SECS_10).as_deref(),
        Some("READY\n"),
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );

    let global = || {
        bench
            .ip_cli(&["-6", "-o", "addr", "show", "dev", CLI_IF, "scope", "global"])
            .lines()
            .find(|l| l.contains("inet6 fd00:86::") && !l.contains("tentative"))
            .map(str::to_string)
    };
    // The router's link-local address appears once the link has carrier,
    // that is once netd has brought the client end up.
    let router_ll = || {
        common::run(&[
            "ip",
            "-n",
            &bench.srv,
            "-6",
            "-o",
            "addr",
            "show",
            "dev",
            common::SRV_IF,
            "scope",
            "link",
        ])
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
    };
    let default_route = || {
        let Some(ll) = router_ll() else {
            return false;
        };
        bench
            .ip_cli(&["-6", "route", "show", "default"])
            .lines()
            .any(|l| l.starts_with(&format!("default via {ll} dev {CLI_IF}")))
    };
    assert!(
        wait_until(Duration::from_secs(15), || global().is_some()
            && default_route()),
        "{}\n--- client ipv6 ---\n{}{}",
        bench.report(Some(&dnsmasq), &netd),
        bench.ip_cli(&["-6", "addr"]),
        bench.ip_cli(&["-6", "route"]),
    );
    let line = global().unwrap_or_default();
    assert!(line.contains("/64 "), "{line}");
    assert!(
        line.contains("dynamic") || line.contains("mngtmpaddr"),
        "not an autoconfigured address: {line}"
    );
    // DHCPv4 is unaffected.
    assert_eq!(
        bench.client_v4().len(),
        1,
        "{}",
        bench.report(Some(&dnsmasq), &netd)
    );
    assert!(netd.running());
}
