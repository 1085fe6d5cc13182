//! Test bench for berth-netd on the host, as root: two network namespaces
//! joined by a veth pair (a "server" end with an address and a "client" end
//! netd configures), a real dnsmasq on the server end, and berth-netd run
//! inside the client namespace. Every piece cleans up in Drop.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
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

/// Runs a command and returns its output; panics with stderr on failure.
pub fn run(args: &[&str]) -> String {
    let out = output(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Whether the tests can run here; prints why not.
pub fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return false;
    }
    assert!(
        Path::new("/usr/sbin/dnsmasq").exists(),
        "dnsmasq is missing: apt-get install dnsmasq-base"
    );
    true
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Two namespaces and a veth pair: `srv`/`SRV_IF` and `cli`/`CLI_IF`.
pub struct Bench {
    /// Server namespace name.
    pub srv: String,
    /// Client namespace name.
    pub cli: String,
    /// Client MAC address.
    pub mac: String,
    /// Scratch directory (logs, config, state, resolv.conf).
    pub dir: tempfile::TempDir,
}

/// The server end's interface name.
pub const SRV_IF: &str = "bt-srv";
/// The client end's interface name.
pub const CLI_IF: &str = "bt-cli";

impl Bench {
    /// Makes the namespaces; the server end gets `server_addr` (CIDR) and
    /// is up; the client end is down and unaddressed.
    pub fn new(server_addr: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let srv = format!("berth-t-srv-{id}");
        let cli = format!("berth-t-cli-{id}");
        let mac = format!(
            "02:be:00:00:{:02x}:{:02x}",
            n & 0xff,
            std::process::id() & 0xff
        );
        let bench = Bench {
            srv,
            cli,
            mac,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        run(&["ip", "netns", "add", &bench.srv]);
        run(&["ip", "netns", "add", &bench.cli]);
        run(&[
            "ip", "link", "add", "name", SRV_IF, "netns", &bench.srv, "type", "veth", "peer",
            "name", CLI_IF, "netns", &bench.cli, "address", &bench.mac,
        ]);
        run(&[
            "ip",
            "-n",
            &bench.srv,
            "addr",
            "add",
            server_addr,
            "dev",
            SRV_IF,
        ]);
        run(&["ip", "-n", &bench.srv, "link", "set", SRV_IF, "up"]);
        run(&["ip", "-n", &bench.srv, "link", "set", "lo", "up"]);
        bench
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `ip ARGS` in the client namespace.
    pub fn ip_cli(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", self.cli.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    /// The client interface's IPv4 addresses as "a.b.c.d/len".
    pub fn client_v4(&self) -> Vec<String> {
        self.ip_cli(&["-4", "-o", "addr", "show", "dev", CLI_IF])
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != "inet")
                    .nth(1)
                    .map(str::to_string)
            })
            .collect()
    }

    /// Starts dnsmasq on the server end with `extra` options.
    pub fn dnsmasq(&self, range: &str, extra: &[&str]) -> Dnsmasq {
        let log = self.path("dnsmasq.log");
        let leases = self.path("dnsmasq.leases");
        let mut args: Vec<String> = [
            "netns",
            "exec",
            &self.srv,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            &format!("--interface={SRV_IF}"),
            "--except-interface=lo",
            "--port=0",
            "--log-dhcp",
            "--no-ping",
            &format!("--dhcp-range={range}"),
            &format!("--dhcp-leasefile={}", leases.display()),
            &format!("--log-facility={}", log.display()),
            &format!("--pid-file={}", self.path("dnsmasq.pid").display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.path("dnsmasq.stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn dnsmasq");
        let d = Dnsmasq {
            child,
            log,
            stderr: self.path("dnsmasq.stderr"),
        };
        assert!(
            wait_until(Duration::from_secs(5), || d
                .log()
                .contains("DHCP, sockets bound")),
            "dnsmasq did not start: {}",
            d.log()
        );
        d
    }

    /// Starts berth-netd in the client namespace with `config` and `extra`
    /// arguments; `uts` runs it in its own UTS namespace (host name tests).
    pub fn netd(&self, config: &str, extra: &[&str], uts: bool) -> Netd {
        let config_path = self.path("netd.toml");
        fs::write(&config_path, config).expect("write config");
        let log_path = self.path(&format!(
            "netd-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let log = fs::File::create(&log_path).expect("log file");
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let mut cmd = if uts {
            let mut c = Command::new("unshare");
            c.args(["--uts", "ip", "netns", "exec", &self.cli]);
            c
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.cli]);
            c
        };
        cmd.arg(env!("CARGO_BIN_EXE_berth-netd"))
            .arg("--config")
            .arg(&config_path)
            .arg("--resolv-conf")
            .arg(self.path("resolv.conf"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--verbose")
            .args(extra)
            .env("BERTH_READY_FD", "3")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let fd = ready_w.as_raw_fd();
        // SAFETY: between fork and exec only dup2(2), which is
        // async-signal-safe, runs; it gives the child the pipe as fd 3.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn berth-netd");
        drop(ready_w);
        Netd {
            child: Some(child),
            log: log_path,
            ready: Some(ready_r),
        }
    }

    /// A message with everything worth reading when a test fails.
    pub fn report(&self, dnsmasq: Option<&Dnsmasq>, netd: &Netd) -> String {
        format!(
            "--- berth-netd log ---\n{}\n--- dnsmasq log ---\n{}\n--- client ---\n{}{}",
            netd.log(),
            dnsmasq.map(|d| d.log()).unwrap_or_default(),
            output(&["ip", "-n", &self.cli, "addr"])
                .stdout
                .iter()
                .map(|b| *b as char)
                .collect::<String>(),
            output(&["ip", "-n", &self.cli, "route"])
                .stdout
                .iter()
                .map(|b| *b as char)
                .collect::<String>(),
        )
    }

    /// Puts `addr` (CIDR) on another host of the server segment: a
    /// macvlan on the server end, moved into a namespace of its own, so it
    /// answers ARP from its own hardware address like any other machine.
    pub fn squatter(&self, addr: &str) -> Squatter {
        let ns = self.srv.replacen("-srv-", "-sq-", 1);
        run(&["ip", "netns", "add", &ns]);
        let sq = Squatter { ns };
        run(&[
            "ip", "-n", &self.srv, "link", "add", "link", SRV_IF, "name", "bt-sq", "type",
            "macvlan", "mode", "bridge",
        ]);
        run(&[
            "ip", "-n", &self.srv, "link", "set", "bt-sq", "netns", &sq.ns,
        ]);
        run(&["ip", "-n", &sq.ns, "addr", "add", addr, "dev", "bt-sq"]);
        run(&["ip", "-n", &sq.ns, "link", "set", "bt-sq", "up"]);
        sq
    }

    /// Records every address change in the client namespace, with the
    /// time it was reported, until dropped.
    pub fn watch_addresses(&self) -> Watch {
        let path = self.path("addr-monitor.log");
        let child = Command::new("ip")
            .args(["-n", &self.cli, "-ts", "monitor", "address"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&path).expect("monitor log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ip monitor");
        let watch = Watch { child, path };
        // The monitor has subscribed once it reports a marker address
        // (added again each round until it does).
        let marker = "127.0.0.77/8";
        let listening = wait_until(Duration::from_secs(5), || {
            let _ = output(&["ip", "-n", &self.cli, "addr", "add", marker, "dev", "lo"]);
            let _ = output(&["ip", "-n", &self.cli, "addr", "del", marker, "dev", "lo"]);
            watch.seen().contains("127.0.0.77")
        });
        assert!(listening, "ip monitor saw nothing");
        watch
    }
}

/// Another host on the server segment, gone on drop.
pub struct Squatter {
    /// Its namespace.
    pub ns: String,
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = output(&["ip", "netns", "del", &self.ns]);
    }
}

/// `ip monitor address` in the client namespace, stopped on drop.
pub struct Watch {
    child: Child,
    path: PathBuf,
}

/// One address change `ip -ts monitor` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressEvent {
    /// Reported as deleted (else added or changed).
    pub deleted: bool,
    /// When, as the time of day.
    pub at: Duration,
}

impl Watch {
    /// Every change seen so far, one per line.
    pub fn seen(&self) -> String {
        fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// The changes seen so far to the address `cidr` ("10.0.0.5/24").
    pub fn events(&self, cidr: &str) -> Vec<AddressEvent> {
        let needle = format!(" {cidr} ");
        self.seen()
            .lines()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| {
                // "[2026-11-23T18:32:21.826335] Deleted 1: lo    inet ..."
                let (stamp, rest) = l.strip_prefix('[')?.split_once("] ")?;
                let (_, time) = stamp.split_once('T')?;
                let mut parts = time.splitn(3, ':');
                let h: u64 = parts.next()?.parse().ok()?;
                let m: u64 = parts.next()?.parse().ok()?;
                let s: f64 = parts.next()?.parse().ok()?;
                Some(AddressEvent {
                    deleted: rest.starts_with("Deleted"),
                    at: Duration::from_secs(h * 3600 + m * 60) + Duration::from_secs_f64(s),
                })
            })
            .collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and the pair.
        let _ = output(&["ip", "netns", "del", &self.cli]);
        let _ = output(&["ip", "netns", "del", &self.srv]);
    }
}

/// A running dnsmasq, killed on drop.
pub struct Dnsmasq {
    child: Child,
    log: PathBuf,
    stderr: PathBuf,
}

impl Dnsmasq {
    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
            + &fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Stops it now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running berth-netd, killed on drop.
pub struct Netd {
    child: Option<Child>,
    log: PathBuf,
    ready: Option<OwnedFd>,
}

impl Netd {
    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (that of berth-netd itself: unshare and ip exec it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Reads the readiness line, waiting at most `timeout`.
    pub fn readiness(&mut self, timeout: Duration) -> Option<String> {
        let fd = self.ready.take()?;
        let mut file = fs::File::from(fd);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        rx.recv_timeout(timeout).ok()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops it with SIGTERM and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Netd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scripted DHCP server for what dnsmasq cannot do (leases shorter than
/// two minutes, nonsense values, silence on demand), running on a thread
/// that entered the server namespace.
pub struct FakeServer {
    /// Clear to make the server ignore every request from now on.
    pub answering: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the fake server hands out.
#[derive(Clone)]
pub struct FakeLease {
    /// Server address (also the server identifier).
    pub server: std::net::Ipv4Addr,
    /// Address offered.
    pub yiaddr: std::net::Ipv4Addr,
    /// Subnet mask option, verbatim.
    pub mask: std::net::Ipv4Addr,
    /// Router option.
    pub router: std::net::Ipv4Addr,
    /// Lease, T1, T2 in seconds.
    pub times: (u32, u32, u32),
    /// Raw bytes broadcast before the first OFFER (a malformed packet).
    pub garbage_first: Option<Vec<u8>>,
}

impl FakeServer {
    /// Starts the server in namespace `ns` on `SRV_IF`.
    pub fn start(ns: &str, lease: FakeLease) -> FakeServer {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let answering = Arc::new(AtomicBool::new(true));
        let done = Arc::new(AtomicBool::new(false));
        let (a, d) = (answering.clone(), done.clone());
        let ns_path = format!("/run/netns/{ns}");
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let ns = fs::File::open(&ns_path).expect("open netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let sock = std::net::UdpSocket::bind("0.0.0.0:67").expect("bind :67");
            nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::BindToDevice,
                &std::ffi::OsString::from(SRV_IF),
            )
            .expect("bind to device");
            sock.set_broadcast(true).expect("broadcast");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let _ = tx.send(());
            serve(&sock, &lease, &a, &d);
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("fake server did not start");
        FakeServer {
            answering,
            done,
            thread: Some(thread),
        }
    }
}

fn serve(
    sock: &std::net::UdpSocket,
    lease: &FakeLease,
    answering: &std::sync::atomic::AtomicBool,
    done: &std::sync::atomic::AtomicBool,
) {
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    let mut buf = [0u8; 1500];
    let mut garbage = lease.garbage_first.clone();
    let to = std::net::SocketAddr::from(([255, 255, 255, 255], 68));
    while !done.load(Ordering::SeqCst) {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if !answering.load(Ordering::SeqCst) {
            continue;
        }
        let Ok(req) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        let kind = match req.opts().msg_type() {
            Some(MessageType::Discover) => MessageType::Offer,
            Some(MessageType::Request) => MessageType::Ack,
            _ => continue,
        };
        if let Some(g) = garbage.take() {
            let _ = sock.send_to(&g, to);
        }
        let mut reply = Message::new_with_id(
            req.xid(),
            std::net::Ipv4Addr::UNSPECIFIED,
            lease.yiaddr,
            lease.server,
            std::net::Ipv4Addr::UNSPECIFIED,
            &req.chaddr()[..6],
        );
        reply.set_opcode(Opcode::BootReply).set_flags(req.flags());
        let o = reply.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(lease.server));
        o.insert(DhcpOption::AddressLeaseTime(lease.times.0));
        o.insert(DhcpOption::Renewal(lease.times.1));
        o.insert(DhcpOption::Rebinding(lease.times.2));
        o.insert(DhcpOption::SubnetMask(lease.mask));
        o.insert(DhcpOption::Router(vec![lease.router]));
        let mut out = Vec::new();
        if reply.encode(&mut Encoder::new(&mut out)).is_ok() {
            let _ = sock.send_to(&out, to);
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
