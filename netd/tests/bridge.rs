//! The container bridge against the real kernel, as root (skipped with a
//! message otherwise). Each test builds its own world of network
//! namespaces, so the machine's own links and firewall are never involved
//! and tests run in parallel:
//!
//! ```text
//!   outside (10.240.N.2) --uplink-- host (10.240.N.1, bridge, nft table) --veth-- containers
//! ```
//!
//! "host" plays the machine netd runs on, "outside" another machine on its
//! LAN (it has no route to the containers' subnet). A Drop guard kills the
//! test's processes and deletes its namespaces, which takes the bridge,
//! veths and table with them. The `nft` and `ip` binaries are used here to
//! look, never by the library.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use netd::bridge::{
    host_veth_name, setup_none, AttachRequest, Attachment, Bridge, BridgeConfig, BridgeError,
    NetnsRef, Port, Proto,
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn output(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn run(args: &[&str]) -> String {
    let out = output(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return false;
    }
    for tool in ["/usr/sbin/nft", "/usr/bin/socat", "/bin/busybox"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing (apt-get install nftables socat busybox-static)"
        );
    }
    true
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A container: a namespace by name (`ip netns`) or a process holding one.
struct Ctr {
    netns: NetnsRef,
    etc: PathBuf,
}

impl Ctr {
    fn nsenter(&self) -> String {
        format!("--net={}", self.netns.path().display())
    }

    /// Runs `args` in the container's namespace, with its hosts file
    /// bind-mounted over /etc/hosts in a private mount namespace.
    fn exec(&self, args: &[&str]) -> Output {
        let hosts = self.etc.join("hosts");
        let script = format!(
            "mount --bind {} /etc/hosts && exec nsenter {} \"$@\"",
            hosts.display(),
            self.nsenter()
        );
        let mut cmd = vec!["unshare", "-m", "sh", "-c", &script, "sh"];
        cmd.extend_from_slice(args);
        output(&cmd)
    }

    fn spawn(&self, args: &[&str]) -> Child {
        Command::new("nsenter")
            .arg(self.nsenter())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in container")
    }
}

/// The test's namespaces and processes; everything goes in Drop.
struct World {
    n: u32,
    host: String,
    outside: String,
    names: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let mut w = World {
            n,
            host: format!("bt-host-{tag}"),
            outside: format!("bt-out-{tag}"),
            names: vec![],
            children: vec![],
            dir: tempfile::tempdir().expect("tempdir"),
        };
        w.names.push(w.host.clone());
        w.names.push(w.outside.clone());
        run(&["ip", "netns", "add", &w.host]);
        run(&["ip", "netns", "add", &w.outside]);
        run(&[
            "ip", "-n", &w.host, "link", "add", "name", "uplink", "type", "veth", "peer", "name",
            "uplink", "netns", &w.outside,
        ]);
        let (h, o) = (w.host_addr(), w.outside_addr());
        run(&[
            "ip",
            "-n",
            &w.host,
            "addr",
            "add",
            &format!("{h}/24"),
            "dev",
            "uplink",
        ]);
        run(&[
            "ip",
            "-n",
            &w.outside,
            "addr",
            "add",
            &format!("{o}/24"),
            "dev",
            "uplink",
        ]);
        for ns in [&w.host, &w.outside] {
            run(&["ip", "-n", ns, "link", "set", "uplink", "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        w
    }

    fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 240, self.n as u8, 1)
    }

    fn outside_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 240, self.n as u8, 2)
    }

    fn config(&self, bridge: &str, subnet: &str) -> BridgeConfig {
        let mut cfg = BridgeConfig::new(self.dir.path().join("state"));
        cfg.name = bridge.into();
        cfg.subnet = subnet.parse().expect("subnet");
        cfg.host_netns = Some(NetnsRef::Path(format!("/run/netns/{}", self.host).into()));
        let resolv = self.dir.path().join("host-resolv.conf");
        fs::write(
            &resolv,
            "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example.test\n",
        )
        .expect("resolv");
        cfg.host_resolv_conf = resolv;
        cfg
    }

    /// A container namespace made with `ip netns add`.
    fn named_ctr(&mut self, name: &str) -> Ctr {
        let ns = format!("bt-{name}-{}-{}", std::process::id(), self.n);
        run(&["ip", "netns", "add", &ns]);
        self.names.push(ns.clone());
        Ctr {
            netns: NetnsRef::Path(format!("/run/netns/{ns}").into()),
            etc: self.dir.path().join(name),
        }
    }

    /// A container namespace held only by a process, named by its pid.
    fn pid_ctr(&mut self, name: &str) -> Ctr {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .spawn()
            .expect("unshare");
        let pid = child.id();
        self.children.push(child);
        let mine = fs::read_link("/proc/self/ns/net").expect("own netns");
        let entered = wait_until(TIMEOUT, || {
            fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l != mine)
        });
        assert!(entered, "unshare -n did not enter a new namespace");
        Ctr {
            netns: NetnsRef::Pid(pid),
            etc: self.dir.path().join(name),
        }
    }

    fn request(&self, ctr: &Ctr, id: &str, name: &str, ports: Vec<Port>) -> AttachRequest {
        AttachRequest {
            container_id: id.into(),
            name: name.into(),
            aliases: vec![format!("{name}-alias")],
            netns: ctr.netns.clone(),
            ports,
            dns: vec![],
            etc_dir: Some(ctr.etc.clone()),
        }
    }

    fn in_ns(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = vec!["ip", "netns", "exec", ns];
        cmd.extend_from_slice(args);
        output(&cmd)
    }

    fn spawn_in(&mut self, ns: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        self.children.push(child);
    }

    fn ruleset(&self) -> String {
        String::from_utf8_lossy(&self.in_ns(&self.host, &["nft", "list", "ruleset"]).stdout)
            .into_owned()
    }

    fn host_links(&self) -> String {
        run(&["ip", "-n", &self.host, "-o", "link", "show"])
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn tcp(port: u16, cport: u16) -> Port {
    Port {
        host_ip: None,
        host_port: port,
        container_port: cport,
        proto: Proto::Tcp,
    }
}

/// What a socat client reads from `addr:port` (TCP, or UDP after sending a
/// line), or "" when nothing answers.
fn ask(ns: Option<&Ctr>, ns_name: &str, proto: Proto, addr: &str) -> String {
    let target = match proto {
        Proto::Tcp => format!("TCP:{addr},connect-timeout=1"),
        Proto::Udp => format!("UDP:{addr}"),
    };
    let args = ["socat", "-T1", "-", &target];
    let mut cmd = match ns {
        Some(c) => {
            let mut v = vec!["nsenter".to_string(), c.nsenter()];
            v.extend(args.iter().map(|s| s.to_string()));
            v
        }
        None => {
            let mut v: Vec<String> = ["ip", "netns", "exec", ns_name]
                .iter()
                .map(|s| s.to_string())
                .collect();
            v.extend(args.iter().map(|s| s.to_string()));
            v
        }
    };
    let mut child = Command::new(cmd.remove(0))
        .args(&cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"ping\n");
    }
    let out = child.wait_with_output().expect("socat output");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls until a client gets `want` (servers take a moment to listen).
fn expect_answer(
    world: &World,
    ns: Option<&Ctr>,
    ns_name: &str,
    proto: Proto,
    addr: &str,
    want: &str,
) {
    let mut last = String::new();
    let ok = wait_until(TIMEOUT, || {
        last = ask(ns, ns_name, proto, addr);
        last == want
    });
    assert!(
        ok,
        "{proto} {addr} from {ns_name}: wanted {want:?}, last answer {last:?}\n{}",
        world.ruleset()
    );
}

fn ping(ctr: &Ctr, target: &str) -> Output {
    ctr.exec(&["busybox", "ping", "-c1", "-W2", target])
}

fn assert_ping(ctr: &Ctr, target: &str) {
    let mut last = None;
    let ok = wait_until(TIMEOUT, || {
        let out = ping(ctr, target);
        let ok = out.status.success();
        last = Some(out);
        ok
    });
    let out = last.expect("one attempt");
    assert!(
        ok,
        "ping {target} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn attach(bridge: &Bridge, req: &AttachRequest) -> Attachment {
    bridge
        .attach(req)
        .unwrap_or_else(|e| panic!("attach {}: {}", req.container_id, chain(&e)))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s += &format!(": {x}");
        src = x.source();
    }
    s
}

/// Two containers on the bridge reach each other by address and by name,
/// and each one's hosts file follows the other's arrival and departure.
#[test]
fn containers_reach_each_other_by_address_and_name() {
    if !can_run() {
        return;
    }
    let root_forward = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let mut w = World::new();
    let bridge = Bridge::ensure(w.config("btnames", "10.213.0.0/16"))
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let c1 = w.named_ctr("c1");
    let c2 = w.pid_ctr("c2");
    let a1 = attach(&bridge, &w.request(&c1, "id1", "one", vec![]));
    let a2 = attach(&bridge, &w.request(&c2, "id2", "two", vec![]));
    assert_eq!(a1.gateway, Ipv4Addr::new(10, 213, 0, 1));
    assert_eq!(a1.ip, Ipv4Addr::new(10, 213, 0, 2));
    assert_eq!(a2.ip, Ipv4Addr::new(10, 213, 0, 3));
    assert_eq!(a1.prefix, 16);

    // The container side: eth0 with the address, lo up, default route.
    let addr = String::from_utf8_lossy(&c1.exec(&["ip", "-4", "-o", "addr"]).stdout).into_owned();
    assert!(
        addr.lines()
            .any(|l| l.contains("eth0") && l.contains("inet 10.213.0.2/16")),
        "{addr}"
    );
    assert!(addr.contains("lo") && addr.contains("127.0.0.1"), "{addr}");
    let routes = String::from_utf8_lossy(&c2.exec(&["ip", "route"]).stdout).into_owned();
    assert!(
        routes.contains("default via 10.213.0.1 dev eth0"),
        "{routes}"
    );
    // The host side: the veth is a port of the bridge.
    let veth = host_veth_name("btnames", "id1");
    assert_eq!(a1.host_veth, veth);
    assert!(
        w.host_links()
            .lines()
            .any(|l| l.contains(&veth) && l.contains("master btnames")),
        "{}",
        w.host_links()
    );
    // Forwarding is on in the host namespace and nowhere else.
    assert_eq!(
        w.in_ns(&w.host, &["cat", "/proc/sys/net/ipv4/ip_forward"])
            .stdout,
        b"1\n"
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forward
    );

    assert_ping(&c1, "10.213.0.3");
    assert_ping(&c2, "10.213.0.2");
    // By name and alias, through the hosts files the library wrote; c1's
    // was written before c2 existed and rewritten in place since.
    assert_ping(&c1, "two");
    assert_ping(&c1, "two-alias");
    assert_ping(&c2, "one");
    assert_eq!(fs::read_to_string(c2.etc.join("hosts")).unwrap(), a2.hosts);
    assert!(
        a2.hosts.contains("10.213.0.3\ttwo two-alias\n"),
        "{}",
        a2.hosts
    );
    assert!(
        a2.hosts.contains("10.213.0.2\tone one-alias\n"),
        "{}",
        a2.hosts
    );
    // resolv.conf: the host's servers without its loopback stub.
    assert_eq!(
        a1.resolv_conf,
        "# written by berth-netd\nnameserver 192.0.2.53\nsearch example.test\n"
    );
    assert_eq!(
        fs::read_to_string(c1.etc.join("resolv.conf")).unwrap(),
        a1.resolv_conf
    );

    bridge
        .detach("id2")
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let hosts1 = fs::read_to_string(c1.etc.join("hosts")).unwrap();
    assert!(!hosts1.contains("two"), "{hosts1}");
    assert!(!ping(&c1, "10.213.0.3").status.success());
}

/// Published TCP and UDP ports: from another machine (the client's own
/// address is kept), from the host itself by its address and by
/// 127.0.0.1, and from another container through the host (hairpin).
#[test]
fn published_ports_from_outside_host_and_peers() {
    if !can_run() {
        return;
    }
    let mut w = World::new();
    let bridge = Bridge::ensure(w.config("btports", "10.214.0.0/24"))
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let web = w.named_ctr("web");
    let peer = w.named_ctr("peer");
    let udp = Port {
        host_ip: Some(IpAddr::V4(w.host_addr())),
        host_port: 5353,
        container_port: 53,
        proto: Proto::Udp,
    };
    let a = attach(
        &bridge,
        &w.request(&web, "web", "web", vec![tcp(8080, 80), udp]),
    );
    attach(&bridge, &w.request(&peer, "peer", "peer", vec![]));
    let mut servers = vec![
        web.spawn(&[
            "socat",
            "TCP-LISTEN:80,fork,reuseaddr",
            "SYSTEM:echo tcp-from-$SOCAT_PEERADDR",
        ]),
        web.spawn(&[
            "socat",
            "UDP-RECVFROM:53,fork",
            "SYSTEM:echo udp-from-$SOCAT_PEERADDR",
        ]),
    ];
    w.children.append(&mut servers);

    let host = w.host_addr();
    let outside = w.outside_addr();
    let (h, o) = (w.host.clone(), w.outside.clone());
    expect_answer(
        &w,
        None,
        &o,
        Proto::Tcp,
        &format!("{host}:8080"),
        &format!("tcp-from-{outside}"),
    );
    expect_answer(
        &w,
        None,
        &o,
        Proto::Udp,
        &format!("{host}:5353"),
        &format!("udp-from-{outside}"),
    );
    expect_answer(
        &w,
        None,
        &h,
        Proto::Tcp,
        &format!("{host}:8080"),
        &format!("tcp-from-{host}"),
    );
    expect_answer(
        &w,
        None,
        &h,
        Proto::Tcp,
        "127.0.0.1:8080",
        &format!("tcp-from-{}", a.gateway),
    );
    expect_answer(
        &w,
        Some(&peer),
        "peer",
        Proto::Tcp,
        &format!("{}:8080", a.gateway),
        &format!("tcp-from-{}", a.gateway),
    );
    expect_answer(
        &w,
        Some(&peer),
        "peer",
        Proto::Tcp,
        &format!("{host}:8080"),
        &format!("tcp-from-{}", a.gateway),
    );
    // The UDP port is bound to one host address only.
    assert_eq!(ask(None, &h, Proto::Udp, "127.0.0.1:5353"), "");

    let rules = w.ruleset();
    for want in [
        "table ip btports",
        "fib daddr type local jump ports",
        "ip saddr 10.214.0.0/24 oifname != \"btports\" masquerade",
        "tcp dport 8080 dnat to 10.214.0.2:80 comment \"web\"",
        &format!("ip daddr {host} udp dport 5353 dnat to 10.214.0.2:53 comment \"web\""),
    ] {
        assert!(rules.contains(want), "missing {want:?} in\n{rules}");
    }
    assert_eq!(rules.matches("table ").count(), 1, "{rules}");
    assert_eq!(
        w.in_ns(
            &h,
            &["cat", "/proc/sys/net/ipv4/conf/btports/route_localnet"]
        )
        .stdout,
        b"1\n"
    );
}

/// A container reaches another machine, which sees the host's address.
#[test]
fn outbound_nat_shows_the_host_address() {
    if !can_run() {
        return;
    }
    let mut w = World::new();
    let bridge = Bridge::ensure(w.config("btnat", "172.31.250.0/24"))
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let c = w.named_ctr("c");
    attach(&bridge, &w.request(&c, "c", "c", vec![]));
    let o = w.outside.clone();
    w.spawn_in(
        &o,
        &[
            "socat",
            "TCP-LISTEN:9000,fork,reuseaddr",
            "SYSTEM:echo from-$SOCAT_PEERADDR",
        ],
    );
    let target = format!("{}:9000", w.outside_addr());
    expect_answer(
        &w,
        Some(&c),
        "c",
        Proto::Tcp,
        &target,
        &format!("from-{}", w.host_addr()),
    );
    assert_ping(&c, &w.outside_addr().to_string());
}

/// Detach takes back everything; the last one may leave the bridge;
/// teardown removes the bridge and the table.
#[test]
fn detach_and_teardown_remove_everything() {
    if !can_run() {
        return;
    }
    let mut w = World::new();
    let cfg = w.config("btgone", "10.215.0.0/16");
    let state = cfg.state_dir.join("btgone.json");
    let bridge = Bridge::ensure(cfg).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let c1 = w.named_ctr("c1");
    let c2 = w.named_ctr("c2");
    attach(&bridge, &w.request(&c1, "gone1", "g1", vec![tcp(8081, 80)]));
    attach(&bridge, &w.request(&c2, "gone2", "g2", vec![tcp(8082, 80)]));
    let veth1 = host_veth_name("btgone", "gone1");
    assert!(w.host_links().contains(&veth1));
    assert!(w.ruleset().contains("comment \"gone1\""));
    assert!(fs::read_to_string(&state).unwrap().contains("gone1"));

    bridge
        .detach("gone1")
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(!w.host_links().contains(&veth1), "{}", w.host_links());
    let rules = w.ruleset();
    assert!(
        !rules.contains("gone1") && !rules.contains("8081"),
        "{rules}"
    );
    assert!(rules.contains("comment \"gone2\""), "{rules}");
    let st = fs::read_to_string(&state).unwrap();
    assert!(!st.contains("gone1") && st.contains("gone2"), "{st}");
    assert!(!c1.etc.join("hosts").exists() && !c1.etc.join("resolv.conf").exists());
    let inner =
        String::from_utf8_lossy(&output(&["nsenter", &c1.nsenter(), "ip", "-o", "link"]).stdout)
            .into_owned();
    assert!(!inner.contains("eth0"), "{inner}");
    assert!(!fs::read_to_string(c2.etc.join("hosts"))
        .unwrap()
        .contains("g1"));
    // Detaching again, or an unknown id, is fine.
    bridge.detach("gone1").unwrap();
    bridge.detach("never").unwrap();

    bridge.detach("gone2").unwrap();
    assert!(w.host_links().contains("btgone"), "the bridge may stay");
    bridge
        .teardown()
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(!w.host_links().contains("btgone"), "{}", w.host_links());
    assert!(!w.host_links().contains("vb"), "{}", w.host_links());
    assert_eq!(w.ruleset().trim(), "");
    assert!(!state.exists());
}

/// Allocations survive a new `Bridge` (an engine restart); a container
/// whose namespace died meanwhile is released on the next start.
#[test]
fn ipam_survives_a_restart() {
    if !can_run() {
        return;
    }
    let mut w = World::new();
    let cfg = w.config("btipam", "10.216.0.0/24");
    let c1 = w.named_ctr("c1");
    let c2 = w.pid_ctr("c2");
    let first = {
        let bridge = Bridge::ensure(cfg.clone()).unwrap_or_else(|e| panic!("{}", chain(&e)));
        let a = attach(
            &bridge,
            &w.request(&c1, "keep", "keep", vec![tcp(8090, 80)]),
        );
        attach(&bridge, &w.request(&c2, "dies", "dies", vec![]));
        a
    };
    // c2's namespace goes away with its process.
    let mut holder = w.children.pop().expect("c2's process");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let veth2 = host_veth_name("btipam", "dies");
    assert!(
        wait_until(TIMEOUT, || !w.host_links().contains(&veth2)),
        "{}",
        w.host_links()
    );

    let bridge = Bridge::ensure(cfg.clone()).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let st = fs::read_to_string(cfg.state_dir.join("btipam.json")).unwrap();
    assert!(st.contains("keep") && !st.contains("dies"), "{st}");
    assert!(
        w.ruleset().contains("tcp dport 8090 dnat to 10.216.0.2:80"),
        "{}",
        w.ruleset()
    );
    // A new container does not get the kept address; the same one is
    // re-attached with its own.
    let c3 = w.named_ctr("c3");
    let a3 = attach(&bridge, &w.request(&c3, "new", "new", vec![]));
    assert_ne!(a3.ip, first.ip);
    assert_ne!(
        a3.ip,
        Ipv4Addr::new(10, 216, 0, 3),
        "a released address is not reused at once"
    );
    let again = attach(
        &bridge,
        &w.request(&c1, "keep", "keep", vec![tcp(8090, 80)]),
    );
    assert_eq!(again.ip, first.ip);
    assert_ping(&c3, &first.ip.to_string());
    // Names and host ports are unique on the bridge.
    let e = bridge
        .attach(&w.request(&c3, "other", "keep", vec![]))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("the name \"keep\" is taken by container keep"),
        "{e}"
    );
    // Re-attached without ports, its port rule goes.
    attach(&bridge, &w.request(&c1, "keep", "keep", vec![]));
    assert!(!w.ruleset().contains("8090"), "{}", w.ruleset());
}

/// A subnet that overlaps an address or a route of the host is refused,
/// naming both.
#[test]
fn subnet_clash_is_reported() {
    if !can_run() {
        return;
    }
    let w = World::new();
    run(&[
        "ip", "-n", &w.host, "link", "add", "name", "lan0", "type", "bridge",
    ]);
    run(&[
        "ip",
        "-n",
        &w.host,
        "addr",
        "add",
        "10.217.5.1/24",
        "dev",
        "lan0",
    ]);
    run(&["ip", "-n", &w.host, "link", "set", "lan0", "up"]);
    let e = Bridge::ensure(w.config("btclash", "10.217.0.0/16")).unwrap_err();
    assert!(matches!(e, BridgeError::Clash { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "subnet 10.217.0.0/16 of bridge btclash overlaps address 10.217.5.1/24 on lan0 on this host; choose another subnet"
    );
    run(&[
        "ip",
        "-n",
        &w.host,
        "route",
        "add",
        "10.218.0.0/16",
        "via",
        &w.outside_addr().to_string(),
    ]);
    let e = Bridge::ensure(w.config("btclash", "10.218.4.0/24")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "subnet 10.218.4.0/24 of bridge btclash overlaps route 10.218.0.0/16 dev uplink on this host; choose another subnet"
    );
    assert!(!w.host_links().contains("btclash"), "nothing half-made");
    assert_eq!(w.ruleset().trim(), "");
}

/// `--network none`: only lo, and it is up.
#[test]
fn network_none_has_only_loopback_up() {
    if !can_run() {
        return;
    }
    let mut w = World::new();
    let c = w.pid_ctr("none");
    setup_none(&c.netns).unwrap_or_else(|e| panic!("{}", chain(&e)));
    let links =
        String::from_utf8_lossy(&output(&["nsenter", &c.nsenter(), "ip", "-o", "link"]).stdout)
            .into_owned();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let ping = output(&[
        "nsenter",
        &c.nsenter(),
        "busybox",
        "ping",
        "-c1",
        "-W2",
        "127.0.0.1",
    ]);
    assert!(ping.status.success());
}

/// Another firewall's forward chain with policy drop is found and named
/// (it would block the containers' traffic; berth does not override it).
#[test]
fn foreign_forward_drop_is_detected() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let h = w.host.clone();
    let out = w.in_ns(&h, &["nft", "add table ip filter; add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bridge = Bridge::ensure(w.config("btfwd", "10.219.0.0/24"))
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(
        bridge.forward_blockers().unwrap(),
        vec!["ip filter FORWARD".to_string()]
    );
    let out = w.in_ns(&h, &["nft", "delete table ip filter"]);
    assert!(out.status.success());
    assert!(bridge.forward_blockers().unwrap().is_empty());
}

/// Time to wire one container (veth pair, addresses, route, firewall
/// table, state file) and to unwire it, medians over 50. For `make bench`:
/// `cargo test -p netd --test bridge -- --ignored --nocapture wire_time`.
#[test]
#[ignore = "benchmark"]
fn wire_time() {
    if !can_run() {
        return;
    }
    let mut w = World::new();
    let bridge = Bridge::ensure(w.config("btbench", "10.220.0.0/16"))
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let c = w.named_ctr("bench");
    for ports in [vec![], vec![tcp(8000, 80)]] {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for i in 0..50 {
            let req = w.request(&c, &format!("bench{i}"), "bench", ports.clone());
            let t = Instant::now();
            attach(&bridge, &req);
            up.push(t.elapsed());
            let t = Instant::now();
            bridge.detach(&req.container_id).unwrap();
            down.push(t.elapsed());
        }
        up.sort();
        down.sort();
        println!(
            "bridge attach median {:?}, detach median {:?} (n=50, {} published port(s))",
            up[25],
            down[25],
            ports.len()
        );
    }
}
