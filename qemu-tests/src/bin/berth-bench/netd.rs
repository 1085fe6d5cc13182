//! The netd section of `make bench`, on the host as root: DHCP against one
//! dnsmasq for berth-netd and the peer clients (PEERS.md), container wiring
//! with netd's bridge library, and the clients' memory once idle.
//!
//! DHCP runs on a veth pair between two network namespaces made here. Each
//! run starts from a bare, down client link and no remembered lease (a
//! DISCOVER every time), brings the link up, starts the client at once, and
//! stops the clock when `ip monitor` reports the address on the link. Every
//! client is started the same way (`ip netns exec`), so each time includes
//! a process start. The kernel reports a veth's carrier up to a second after
//! it is set up again (link events are rate-limited): clients that wait for
//! the carrier before their first DISCOVER (dhcpcd) pay that here.
//!
//! berth-netd puts the address on the link as soon as it is leased and runs
//! its ARP probe alongside, so it gets two rows: the address configured
//! (what every peer's row measures) and the address confirmed, when the
//! probe is done and netd reports "ready" on its readiness pipe, read here
//! as init reads it. The peers that check the address (udhcpc -a, dhcpcd
//! with its defaults) configure it only after checking, so their one row
//! compares with netd's second.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use netd::bridge::{AttachRequest, Bridge, BridgeConfig, NetnsRef};
use qemu_tests::paths;

/// DHCP runs per client.
const DHCP_RUNS: usize = 11;
/// Wiring runs.
const WIRE_RUNS: usize = 50;
/// Longest wait for one address.
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Width of the tables' first column.
const W: usize = 50;
/// How long a client sits configured before its memory is read.
const IDLE: Duration = Duration::from_secs(1);

const SRV_IF: &str = "bb-srv";
const CLI_IF: &str = "bb-cli";
const SERVER: &str = "10.231.0.1";
const DHCPCD_STATE: &str = "/var/lib/dhcpcd";

/// Runs the section and prints its tables.
pub fn run() -> Result<()> {
    println!();
    if !is_root() {
        println!("netd: skipped (needs root for network namespaces)");
        return Ok(());
    }
    let netd_bin = paths::bin_dir().join("berth-netd");
    ensure!(
        netd_bin.exists(),
        "{} is missing: {}",
        netd_bin.display(),
        paths::BUILD_HINT
    );
    let seg = Segment::new().context("cannot build the DHCP test segment")?;
    let mut clients = vec![
        Client::Netd(netd_bin),
        Client::Udhcpc { arp: false },
        Client::Udhcpc { arp: true },
    ];
    let dhcpcd = which("dhcpcd");
    if dhcpcd.is_some() {
        clients.push(Client::Dhcpcd { tuned: false });
        clients.push(Client::Dhcpcd { tuned: true });
    }
    println!("netd: DHCP against dnsmasq, {DHCP_RUNS} runs per client ...");
    let mut rows = Vec::new();
    for client in &clients {
        let m = seg
            .measure(client)
            .with_context(|| format!("DHCP with {}", client.name()))?;
        rows.push((client, m));
    }

    println!();
    println!(
        "{:<W$} {:>10} {:>10} {:>10}   (veth + dnsmasq, {DHCP_RUNS} runs)",
        "link up -> address", "median ms", "min ms", "max ms"
    );
    let row = |name: &str, times: &[Duration]| {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        println!(
            "{:<W$} {:>10} {:>10} {:>10}",
            name,
            ms(median(times)),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    };
    for (client, m) in &rows {
        match client {
            Client::Netd(_) => {
                row("berth-netd, address configured", &m.times);
                row(
                    "berth-netd, address confirmed (probe done / ready)",
                    &m.confirmed,
                );
            }
            _ => row(client.name(), &m.times),
        }
    }
    if dhcpcd.is_none() {
        println!(
            "{:<W$} {:>10}",
            "dhcpcd", "absent (apt-get install dhcpcd-base)"
        );
    }
    let netd = &rows[0].1;
    if let Some((fastest, m)) = rows[1..].iter().min_by_key(|(_, m)| median(&m.times)) {
        println!(
            "{:<W$} {:>9.2}x   (vs {})",
            "berth-netd configured / fastest peer",
            median(&netd.times).as_secs_f64() / median(&m.times).as_secs_f64(),
            fastest.name()
        );
    }
    if let Some((checker, m)) = rows[1..]
        .iter()
        .filter(|(c, _)| c.checks_address())
        .min_by_key(|(_, m)| median(&m.times))
    {
        println!(
            "{:<W$} {:>9.2}x   (vs {})",
            "berth-netd confirmed / fastest peer that probes",
            median(&netd.confirmed).as_secs_f64() / median(&m.times).as_secs_f64(),
            checker.name()
        );
    }

    println!();
    println!(
        "{:<W$} {:>10} {:>10}",
        "idle memory, address configured", "VmRSS KiB", "processes"
    );
    for (client, m) in &rows {
        println!(
            "{:<W$} {:>10} {:>10}",
            client.name(),
            m.rss_kib,
            m.processes
        );
    }
    drop(seg);

    println!();
    wire().context("container wiring")?;
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn which(prog: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.exists())
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

/// Runs a command to completion; its stdout.
fn cmd(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A DHCP client under test.
enum Client {
    /// berth-netd, the binary that ships.
    Netd(PathBuf),
    /// busybox udhcpc with a script that applies the lease; `arp` adds
    /// `-a`, its ARP check of the offered address.
    Udhcpc { arp: bool },
    /// dhcpcd as Debian configures it (a random start delay of up to a
    /// second, RFC 5227's full ARP probe), or `tuned` without both.
    Dhcpcd { tuned: bool },
}

impl Client {
    fn name(&self) -> &'static str {
        match self {
            Client::Netd(_) => "berth-netd (optimistic ARP probe, 150 ms)",
            Client::Udhcpc { arp: false } => "udhcpc (no address check)",
            Client::Udhcpc { arp: true } => "udhcpc -a (ARP check)",
            Client::Dhcpcd { tuned: false } => "dhcpcd (defaults: delay, RFC 5227)",
            Client::Dhcpcd { tuned: true } => "dhcpcd nodelay noarp",
        }
    }

    /// Whether it checks that nobody else has the offered address.
    fn checks_address(&self) -> bool {
        match self {
            Client::Netd(_) => true,
            Client::Udhcpc { arp } => *arp,
            Client::Dhcpcd { tuned } => !tuned,
        }
    }

    /// Clears what the client remembers, so that every run is a DISCOVER.
    fn forget(&self, seg: &Segment) -> Result<()> {
        let lease = match self {
            Client::Netd(_) => seg.dir.path().join(format!("state/{CLI_IF}.lease")),
            Client::Udhcpc { .. } => return Ok(()),
            Client::Dhcpcd { .. } => Path::new(DHCPCD_STATE).join(format!("{CLI_IF}.lease")),
        };
        match fs::remove_file(&lease) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", lease.display()))
            }
            _ => Ok(()),
        }
    }

    /// The program and arguments, run in the client namespace. Each stays
    /// running once configured, so its idle memory can be read.
    fn argv(&self, seg: &Segment) -> Vec<String> {
        let dir = seg.dir.path();
        let s = |p: PathBuf| p.display().to_string();
        let mut v: Vec<String> = match self {
            Client::Netd(bin) => vec![
                s(bin.clone()),
                "--config".into(),
                s(dir.join("netd.toml")),
                "--resolv-conf".into(),
                s(dir.join("resolv.conf")),
                "--state-dir".into(),
                s(dir.join("state")),
            ],
            Client::Udhcpc { arp } => {
                let mut v: Vec<String> = ["busybox", "udhcpc", "-f", "-i", CLI_IF, "-s"]
                    .map(String::from)
                    .into();
                v.push(s(dir.join("udhcpc.sh")));
                if *arp {
                    v.push("-a".into());
                }
                v
            }
            Client::Dhcpcd { tuned } => {
                let mut v: Vec<String> = ["dhcpcd", "-4", "-B", "-c", "/bin/true"]
                    .map(String::from)
                    .into();
                if *tuned {
                    v.push("-f".into());
                    v.push(s(dir.join("dhcpcd-tuned.conf")));
                }
                v.push(CLI_IF.into());
                v
            }
        };
        let mut all: Vec<String> = ["ip", "netns", "exec", &seg.cli].map(String::from).into();
        all.append(&mut v);
        all
    }
}

/// One client's figures.
struct Measured {
    /// Link up → address, sorted.
    times: Vec<Duration>,
    /// Link up → "ready" on the readiness pipe, sorted; berth-netd only.
    confirmed: Vec<Duration>,
    /// VmRSS of its process tree, idle after the last run.
    rss_kib: u64,
    processes: usize,
}

/// Two namespaces joined by a veth pair, dnsmasq on the server end, and
/// `ip monitor` on the client end. Dropping it removes everything,
/// including any dhcpcd state files it caused.
struct Segment {
    srv: String,
    cli: String,
    dir: tempfile::TempDir,
    dnsmasq: Option<Child>,
    monitor: Option<Child>,
    events: mpsc::Receiver<(Instant, String)>,
    dhcpcd_files_before: Vec<PathBuf>,
}

fn list_dir(dir: &str) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

impl Segment {
    fn new() -> Result<Segment> {
        let pid = std::process::id();
        let (events_tx, events) = mpsc::channel();
        let mut seg = Segment {
            srv: format!("berth-bench-srv-{pid}"),
            cli: format!("berth-bench-cli-{pid}"),
            dir: tempfile::tempdir()?,
            dnsmasq: None,
            monitor: None,
            events,
            dhcpcd_files_before: list_dir(DHCPCD_STATE),
        };
        cmd(&["ip", "netns", "add", &seg.srv])?;
        cmd(&["ip", "netns", "add", &seg.cli])?;
        cmd(&[
            "ip", "link", "add", "name", SRV_IF, "netns", &seg.srv, "type", "veth", "peer", "name",
            CLI_IF, "netns", &seg.cli,
        ])?;
        cmd(&[
            "ip",
            "-n",
            &seg.srv,
            "addr",
            "add",
            &format!("{SERVER}/24"),
            "dev",
            SRV_IF,
        ])?;
        cmd(&["ip", "-n", &seg.srv, "link", "set", SRV_IF, "up"])?;
        cmd(&["ip", "-n", &seg.cli, "link", "set", "lo", "up"])?;

        let dir = seg.dir.path();
        fs::write(
            dir.join("netd.toml"),
            format!("[network]\n[[network.interface]]\nname = \"{CLI_IF}\"\ndhcp = true\n"),
        )?;
        let script = dir.join("udhcpc.sh");
        fs::write(
            &script,
            "#!/bin/sh\n\
             case \"$1\" in\n\
             deconfig) busybox ip -4 addr flush dev \"$interface\" ;;\n\
             bound|renew)\n\
             \tbusybox ip addr add \"$ip/$mask\" dev \"$interface\"\n\
             \t[ -n \"$router\" ] && busybox ip route add default via \"${router%% *}\" dev \"$interface\"\n\
             \t;;\n\
             esac\n\
             exit 0\n",
        )?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        fs::write(
            dir.join("dhcpcd-tuned.conf"),
            "nodelay\nnoarp\noption classless_static_routes, interface_mtu\n",
        )?;

        let log = dir.join("dnsmasq.log");
        seg.dnsmasq = Some(
            Command::new("ip")
                .args(["netns", "exec", &seg.srv, "dnsmasq", "--keep-in-foreground"])
                .args([
                    "--conf-file=/dev/null",
                    "--bind-interfaces",
                    &format!("--interface={SRV_IF}"),
                    "--except-interface=lo",
                    "--port=0",
                    "--no-ping",
                    "--dhcp-range=10.231.0.50,10.231.0.250,2m",
                    &format!("--dhcp-leasefile={}", dir.join("leases").display()),
                    &format!("--log-facility={}", log.display()),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start dnsmasq")?,
        );
        let bound = wait_until(Duration::from_secs(5), || {
            fs::read_to_string(&log).is_ok_and(|l| l.contains("DHCP, sockets bound"))
        });
        ensure!(bound, "dnsmasq did not start (log in {})", log.display());

        let mut monitor = Command::new("ip")
            .args(["-n", &seg.cli, "monitor", "address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start ip monitor")?;
        let stdout = monitor.stdout.take().context("ip monitor's stdout")?;
        seg.monitor = Some(monitor);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if events_tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        // The monitor listens once it reports a marker address.
        let marker = "127.0.0.77/8";
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            cmd(&["ip", "-n", &seg.cli, "addr", "add", marker, "dev", "lo"])?;
            cmd(&["ip", "-n", &seg.cli, "addr", "del", marker, "dev", "lo"])?;
            if let Ok((_, l)) = seg.events.recv_timeout(Duration::from_millis(100)) {
                if l.contains("127.0.0.77") {
                    break;
                }
            }
            ensure!(Instant::now() < end, "ip monitor reports nothing");
        }
        Ok(seg)
    }

    /// `DHCP_RUNS` runs of `client`, then its idle memory.
    fn measure(&self, client: &Client) -> Result<Measured> {
        let mut times = Vec::new();
        let mut confirmed = Vec::new();
        let mut idle = (0, 0);
        for i in 0..DHCP_RUNS {
            let (took, ready, mut child) = self
                .once(client)
                .with_context(|| format!("run {}", i + 1))?;
            times.push(took);
            confirmed.extend(ready);
            if i + 1 == DHCP_RUNS {
                std::thread::sleep(IDLE);
                idle = tree_rss(child.id());
            }
            stop(&mut child);
        }
        times.sort();
        confirmed.sort();
        Ok(Measured {
            times,
            confirmed,
            rss_kib: idle.0,
            processes: idle.1,
        })
    }

    /// One run: bare link down, link up, client started, address seen;
    /// for berth-netd also its "ready", which may come later.
    fn once(&self, client: &Client) -> Result<(Duration, Option<Duration>, Child)> {
        cmd(&["ip", "-n", &self.cli, "link", "set", CLI_IF, "down"])?;
        cmd(&["ip", "-n", &self.cli, "-4", "addr", "flush", "dev", CLI_IF])?;
        client.forget(self)?;
        while self.events.try_recv().is_ok() {}
        let argv = client.argv(self);
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let ready = match client {
            Client::Netd(_) => Some(ReadyPipe::give(&mut command)?),
            _ => None,
        };
        cmd(&["ip", "-n", &self.cli, "link", "set", CLI_IF, "up"])?;
        let start = Instant::now();
        let spawned = command.spawn();
        // The child holds its own copy of the pipe now; ours must go, so
        // that the pipe reports the end when netd exits without a word.
        let ready = ready.map(ReadyPipe::listen);
        let mut child = spawned.with_context(|| format!("cannot start {}", argv.join(" ")))?;
        let end = start + ADDRESS_TIMEOUT;
        let configured = loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((at, line)) => {
                    if at >= start
                        && !line.starts_with("Deleted")
                        && line.contains(" inet ")
                        && line.contains(CLI_IF)
                    {
                        break at - start;
                    }
                }
                Err(_) => {
                    stop(&mut child);
                    bail!("no address within {ADDRESS_TIMEOUT:?}");
                }
            }
        };
        let Some(ready) = ready else {
            return Ok((configured, None, child));
        };
        let left = end.saturating_duration_since(Instant::now());
        match ready.recv_timeout(left) {
            Ok(Some((at, line))) if line == "READY\n" => {
                Ok((configured, Some(at.saturating_duration_since(start)), child))
            }
            Ok(Some((_, line))) => {
                stop(&mut child);
                bail!("berth-netd reported {:?} instead of READY", line.trim_end());
            }
            Ok(None) | Err(_) => {
                stop(&mut child);
                bail!("berth-netd did not report ready within {ADDRESS_TIMEOUT:?}");
            }
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for child in [self.monitor.take(), self.dnsmasq.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = cmd(&["ip", "netns", "del", &self.cli]);
        let _ = cmd(&["ip", "netns", "del", &self.srv]);
        for f in list_dir(DHCPCD_STATE) {
            if !self.dhcpcd_files_before.contains(&f) {
                let _ = fs::remove_file(f);
            }
        }
    }
}

/// berth-netd's readiness pipe (`BERTH_READY_FD`), as init gives it.
struct ReadyPipe {
    reader: std::io::PipeReader,
    writer: std::io::PipeWriter,
}

impl ReadyPipe {
    /// Makes the pipe and arranges for `command` to get its write end as
    /// fd 3.
    fn give(command: &mut Command) -> Result<ReadyPipe> {
        let (reader, writer) = std::io::pipe().context("cannot make the readiness pipe")?;
        let fd = writer.as_raw_fd();
        command.env("BERTH_READY_FD", "3");
        // SAFETY: between fork and exec only dup2(2), which is
        // async-signal-safe, runs; the copy it makes as fd 3 does not
        // inherit the original's close-on-exec flag.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(ReadyPipe { reader, writer })
    }

    /// Closes our write end (call once the child is spawned) and reads the
    /// line on a thread: when it came, and what it said (`None` when the
    /// pipe closed without one).
    fn listen(self) -> mpsc::Receiver<Option<(Instant, String)>> {
        drop(self.writer);
        let mut reader = self.reader;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut buf = [0u8; 64];
            let got = loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => {
                        line.extend_from_slice(&buf[..n]);
                        if line.ends_with(b"\n") {
                            break Some((
                                Instant::now(),
                                String::from_utf8_lossy(&line).into_owned(),
                            ));
                        }
                    }
                }
            };
            let _ = tx.send(got);
        });
        rx
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The parent of every process: pid → ppid.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            map.insert(pid, ppid);
        }
    }
    map
}

/// `pid` and its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let parents = parents();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found
}

/// VmRSS of `pid` and its descendants, in KiB, and how many they are.
fn tree_rss(pid: u32) -> (u64, usize) {
    let pids = tree(pid);
    let total = pids
        .iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum();
    (total, pids.len())
}

/// SIGTERM to a client and everything it started, then SIGKILL to what is
/// left after a second.
fn stop(child: &mut Child) {
    let pids = tree(child.id());
    for p in &pids {
        // SAFETY: kill(2) with a pid this bench started (or one of its
        // descendants) and a valid signal touches no memory.
        unsafe { libc::kill(*p as i32, libc::SIGTERM) };
    }
    let exited = wait_until(Duration::from_secs(1), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    for p in &pids[1..] {
        if Path::new(&format!("/proc/{p}")).exists() {
            // SAFETY: as above.
            unsafe { libc::kill(*p as i32, libc::SIGKILL) };
        }
    }
}

/// Wires one container to a bridge and unwires it, `WIRE_RUNS` times, in
/// namespaces of its own (the bench's host keeps its links and firewall).
fn wire() -> Result<()> {
    let pid = std::process::id();
    let host = format!("berth-bench-host-{pid}");
    let ctr = format!("berth-bench-ctr-{pid}");
    struct Netns(Vec<String>);
    impl Drop for Netns {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = cmd(&["ip", "netns", "del", ns]);
            }
        }
    }
    let _guard = Netns(vec![host.clone(), ctr.clone()]);
    cmd(&["ip", "netns", "add", &host])?;
    cmd(&["ip", "netns", "add", &ctr])?;
    cmd(&["ip", "-n", &host, "link", "set", "lo", "up"])?;
    let dir = tempfile::tempdir()?;
    let resolv = dir.path().join("resolv.conf");
    fs::write(&resolv, "nameserver 192.0.2.53\n")?;
    let mut cfg = BridgeConfig::new(dir.path().join("state"));
    cfg.name = "bbbench0".into();
    cfg.subnet = "10.232.0.0/16".parse().context("subnet")?;
    cfg.host_netns = Some(NetnsRef::Path(format!("/run/netns/{host}").into()));
    cfg.host_resolv_conf = resolv;
    let bridge = Bridge::ensure(cfg)?;
    println!(
        "{:<40} {:>10} {:>10} {:>10}   ({WIRE_RUNS} runs)",
        "bridge library, one container", "median ms", "min ms", "max ms"
    );
    for ports in [vec![], vec![tcp(8000, 80)]] {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for i in 0..WIRE_RUNS {
            let req = AttachRequest {
                container_id: format!("bench{i}"),
                name: "bench".into(),
                aliases: vec![],
                netns: NetnsRef::Path(format!("/run/netns/{ctr}").into()),
                ports: ports.clone(),
                dns: vec![],
                etc_dir: Some(dir.path().join("etc")),
            };
            let t = Instant::now();
            bridge.attach(&req)?;
            up.push(t.elapsed());
            let t = Instant::now();
            bridge.detach(&req.container_id)?;
            down.push(t.elapsed());
        }
        up.sort();
        down.sort();
        let rows = if ports.is_empty() {
            ["attach (veth, addresses, routes)", "detach"]
        } else {
            ["attach + 1 published port", "detach + 1 published port"]
        };
        for (what, v) in rows.into_iter().zip([&up, &down]) {
            let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
            println!(
                "{:<40} {:>10} {:>10} {:>10}",
                what,
                ms(median(v)),
                ms(v[0]),
                ms(v[v.len() - 1])
            );
        }
    }
    bridge.teardown()?;
    Ok(())
}

fn tcp(host_port: u16, container_port: u16) -> netd::bridge::Port {
    netd::bridge::Port {
        host_ip: None,
        host_port,
        container_port,
        proto: netd::bridge::Proto::Tcp,
    }
}
