//! The engine section of `make bench`, on the host as root: container start
//! latency of `berth run` against `runc run` on a bundle of the same rootfs
//! and against `docker run` on a dockerd started here, berthd's idle memory,
//! and `berth load` of a large archive against `tar -xzf` of its layers.
//!
//! Every daemon runs on a temp root and socket of its own: berthd with its
//! own bridge name and subnet, dockerd with its own data and exec roots,
//! no iptables and no bridge, so nothing on the host is taken over. A start
//! is timed from spawning the client to its exit (`/bin/true` in busybox),
//! so every row includes one client process start.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use qemu_tests::paths;

/// Timed starts per row (after one untimed warm-up).
const START_RUNS: usize = 20;
/// Containers kept running for the loaded-daemon memory row.
const RUNNING: usize = 20;
/// Timed loads and extractions.
const LOAD_RUNS: usize = 3;
/// Layers of the large image, and what each holds.
const BIG_LAYERS: usize = 3;
const RANDOM_MB_PER_LAYER: usize = 28;
const TEXT_MB_PER_LAYER: usize = 40;
/// How long a daemon may take to answer, and the memory rows to settle.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(1);

/// berthd's bridge here: not the host's berth0.
const BRIDGE_NAME: &str = "bbench0";
const BRIDGE_SUBNET: &str = "10.229.0.0/24";

const IMAGE: &str = "busybox:latest";
const BIG_IMAGE: &str = "berth-bench-big:1";

/// Runs the section and prints its tables.
pub fn run() -> Result<()> {
    println!();
    if !is_root() {
        println!("engine: skipped (needs root to run containers)");
        return Ok(());
    }
    let bin = paths::bin_dir();
    let (berthd_bin, berth_bin) = (bin.join("berthd"), bin.join("berth"));
    for b in [&berthd_bin, &berth_bin] {
        ensure!(
            b.exists(),
            "{} is missing: build it with `cargo build --release --target \
             x86_64-unknown-linux-musl -p engine --bins`, or point BERTH_BIN_DIR at it",
            b.display()
        );
    }
    let work = tempfile::Builder::new()
        .prefix("berth-bench-engine-")
        .tempdir_in("/tmp")
        .context("cannot make a temp dir")?;
    let work = work.path();
    println!("engine: building the busybox image and its runc bundle ...");
    let archive = work.join("busybox.tar");
    cmd(&[
        &paths::workspace_dir()
            .join("scripts/busybox-image.sh")
            .to_string_lossy(),
        &archive.to_string_lossy(),
        IMAGE,
    ])?;
    let bundle = runc_bundle(work, &archive).context("cannot make the runc bundle")?;

    let berthd = Berthd::start(&berthd_bin, &berth_bin, &work.join("berthd"), true)?;
    berthd.berth(&["load", "-i", &archive.to_string_lossy()])?;
    std::thread::sleep(SETTLE);
    let rss_empty = rss_kib(berthd.pid())?;

    println!("engine: container start, {START_RUNS} runs each ...");
    let berth_none =
        time_runs(|| berthd.berth_cmd(&["run", "--rm", "--network", "none", IMAGE, "/bin/true"]))
            .context("berth run --network none")?;
    let berth_bridge = match berthd.berth(&["run", "--rm", IMAGE, "/bin/true"]) {
        Ok(_) => time_runs(|| berthd.berth_cmd(&["run", "--rm", IMAGE, "/bin/true"]))
            .map_err(|e| first_line(&format!("{e:#}"))),
        Err(e) => Err(first_line(&format!("{e:#}"))),
    };
    // The same on tmpfs, where runc keeps its state (/run/runc): what the
    // disk's journal costs berthd (its state files, the overlay's dirs).
    let berth_tmpfs = {
        let shm = tempfile::Builder::new()
            .prefix("berth-bench-engine-")
            .tempdir_in("/dev/shm")
            .context("cannot make a temp dir in /dev/shm")?;
        let b = Berthd::start(&berthd_bin, &berth_bin, shm.path(), false)?;
        b.berth(&["load", "-i", &archive.to_string_lossy()])?;
        time_runs(|| b.berth_cmd(&["run", "--rm", "--network", "none", IMAGE, "/bin/true"]))
            .context("berth run with its root on tmpfs")?
    };
    let mut n = 0;
    let runc = time_runs(|| {
        n += 1;
        let mut c = Command::new("runc");
        c.args(["run", "-b"])
            .arg(&bundle)
            .arg(format!("berth-bench-{}-{n}", std::process::id()));
        c
    })
    .context("runc run")?;
    let dockerd = Dockerd::start(&work.join("docker"));
    let docker = match &dockerd {
        Ok(d) => docker_runs(d, &archive),
        Err(e) => Err(first_line(&format!("{e:#}"))),
    };

    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>10}   ({START_RUNS} runs)",
        "container start -> exit, /bin/true (wall)", "median ms", "min ms", "max ms"
    );
    let row = |name: &str, times: &Result<Vec<Duration>, String>| match times {
        Ok(t) => println!(
            "{name:<44} {:>10} {:>10} {:>10}",
            ms(median(t)),
            ms(t[0]),
            ms(t[t.len() - 1])
        ),
        Err(why) => println!("{name:<44} not available: {why}"),
    };
    row("berth run --rm --network none", &Ok(berth_none.clone()));
    row(
        &format!("berth run --rm (bridge {BRIDGE_NAME})"),
        &berth_bridge,
    );
    row(
        "berth run --rm --network none, root on tmpfs",
        &Ok(berth_tmpfs.clone()),
    );
    row("runc run (umoci bundle, same rootfs)", &Ok(runc.clone()));
    row("docker run --rm --network none", &docker);
    let ratio = |a: &[Duration], b: &[Duration]| {
        median(a).as_secs_f64() / median(b).as_secs_f64().max(1e-9)
    };
    for (name, berth) in [
        ("berth run / runc run", &berth_none),
        ("berth run (root on tmpfs) / runc run", &berth_tmpfs),
    ] {
        let r = ratio(berth, &runc);
        println!(
            "{name:<44} {r:>9.2}x   target <= 1.00x: {}",
            verdict(r <= 1.0)
        );
    }
    match &docker {
        Ok(d) => {
            let r = ratio(d, &berth_none);
            println!(
                "{:<44} {:>9.2}x   target >= 10x: {}",
                "docker run / berth run",
                r,
                verdict(r >= 10.0)
            );
        }
        Err(_) => println!("{:<44} {:>10}", "docker run / berth run", "n/a"),
    }

    for i in 0..RUNNING {
        berthd
            .berth(&[
                "run",
                "-d",
                "--network",
                "none",
                "--name",
                &format!("idle{i}"),
                IMAGE,
                "sleep",
                "3600",
            ])
            .with_context(|| format!("cannot start idle container {i}"))?;
    }
    std::thread::sleep(SETTLE);
    let rss_loaded = rss_kib(berthd.pid())?;
    let monitors = Mem::of(&berthd.monitor_pids());
    // Docker's counterpart of a monitor: containerd's per-container shim.
    let shims = match (&dockerd, &docker) {
        (Ok(d), Ok(_)) => docker_shims(d).map_err(|e| first_line(&format!("{e:#}"))),
        (_, Err(why)) => Err(why.clone()),
        (Err(e), _) => Err(first_line(&format!("{e:#}"))),
    };
    println!();
    println!("{:<44} {:>10}", "berthd idle memory", "VmRSS KiB");
    for (name, kib) in [
        ("no containers", rss_empty),
        ("20 running containers", rss_loaded),
    ] {
        println!(
            "{name:<44} {kib:>10}   target < 10 MB: {}",
            verdict(kib < 10 * 1024)
        );
    }
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>10}   (the binary's pages are shared: \
         VmRSS counts them in each)",
        format!("per-container supervisors, {RUNNING} together"),
        "VmRSS KiB",
        "PSS KiB",
        "private KiB"
    );
    let mem_row = |name: &str, m: &Result<Mem, String>| match m {
        Ok(m) => println!("{name:<44} {:>10} {:>10} {:>10}", m.rss, m.pss, m.private),
        Err(why) => println!("{name:<44} not available: {why}"),
    };
    mem_row("berth monitors", &monitors);
    mem_row("docker: containerd-shim-runc-v2", &shims);
    if let (Ok(b), Ok(d)) = (&monitors, &shims) {
        println!(
            "{:<44} {:>9.2}x",
            "shims / monitors (PSS)",
            d.pss as f64 / b.pss.max(1) as f64
        );
    }
    for i in 0..RUNNING {
        let _ = berthd.berth(&["rm", "-f", &format!("idle{i}")]);
    }

    println!();
    println!("engine: building a large image ...");
    let big = BigImage::build(&work.join("big")).context("cannot build the large image")?;
    let loads = load_runs(&berthd, &big, &work.join("untar"))?;
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>10}   ({LOAD_RUNS} runs)",
        format!(
            "image load: {} MB archive, {} MB unpacked",
            big.archive_bytes / 1_000_000,
            big.unpacked_bytes / 1_000_000
        ),
        "median ms",
        "min ms",
        "max ms"
    );
    for (name, t) in [
        (
            format!("berth load -i ({BIG_LAYERS} gzip layers)"),
            &loads.berth,
        ),
        ("tar -xzf of the same layers".to_string(), &loads.tar),
        (
            "tar -xzf, then sync -f (files on disk)".to_string(),
            &loads.tar_sync,
        ),
    ] {
        println!(
            "{name:<44} {:>10} {:>10} {:>10}",
            ms(median(t)),
            ms(t[0]),
            ms(t[t.len() - 1])
        );
    }
    let r = ratio(&loads.berth, &loads.tar);
    println!(
        "{:<44} {:>9.2}x   target <= 1.25x: {}",
        "berth load / tar",
        r,
        verdict(r <= 1.25)
    );
    println!(
        "{:<44} {:>9.2}x",
        "berth load / (tar, then sync -f)",
        ratio(&loads.berth, &loads.tar_sync)
    );
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Runs a command to completion; its stdout, or its stderr as the error.
fn run_cmd(c: &mut Command) -> Result<String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            c,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cmd(args: &[&str]) -> Result<String> {
    run_cmd(Command::new(args[0]).args(&args[1..]))
}

/// One untimed run, then [`START_RUNS`] timed ones; sorted.
fn time_runs(mut make: impl FnMut() -> Command) -> Result<Vec<Duration>> {
    run_cmd(make().stdout(Stdio::null()))?;
    let mut times = Vec::with_capacity(START_RUNS);
    for _ in 0..START_RUNS {
        let mut c = make();
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let out = c.output().context("cannot run the client")?;
        times.push(started.elapsed());
        ensure!(
            out.status.success(),
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    times.sort_unstable();
    Ok(times)
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Memory of a group of processes, from `/proc/PID/smaps_rollup`, in KiB:
/// resident (shared pages counted in each), proportional (shared pages
/// split between their users), and private to the group's processes.
struct Mem {
    rss: u64,
    pss: u64,
    private: u64,
}

impl Mem {
    fn of(pids: &[u32]) -> Result<Mem, String> {
        if pids.is_empty() {
            return Err("no processes found".into());
        }
        let mut m = Mem {
            rss: 0,
            pss: 0,
            private: 0,
        };
        for pid in pids {
            let path = format!("/proc/{pid}/smaps_rollup");
            let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
            let field = |name: &str| -> u64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or(0)
            };
            m.rss += field("Rss");
            m.pss += field("Pss");
            m.private += field("Private_Clean") + field("Private_Dirty");
        }
        Ok(m)
    }
}

/// Starts [`RUNNING`] idle containers under `d`, measures the shims
/// containerd runs for them (the ones whose command line names this
/// dockerd's directory), and removes the containers.
fn docker_shims(d: &Dockerd) -> Result<Mem> {
    let mut ids = Vec::new();
    let result = (|| {
        for _ in 0..RUNNING {
            let id = d.docker(&["run", "-d", "--network", "none", IMAGE, "sleep", "3600"])?;
            ids.push(id.trim().to_owned());
        }
        std::thread::sleep(SETTLE);
        let dir = d.dir.to_string_lossy().into_owned();
        let shims: Vec<u32> = fs::read_dir("/proc")?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("containerd-shim") && cmdline.contains(&dir)
            })
            .collect();
        Mem::of(&shims).map_err(anyhow::Error::msg)
    })();
    if !ids.is_empty() {
        let mut rm = vec!["rm", "-f"];
        rm.extend(ids.iter().map(String::as_str));
        let _ = d.docker(&rm);
    }
    result
}

/// An OCI bundle of the archive's rootfs (`umoci unpack`) that runs
/// `/bin/true` without a terminal, in its own namespaces (network too).
fn runc_bundle(work: &Path, archive: &Path) -> Result<PathBuf> {
    let layout = work.join("busybox-oci");
    let bundle = work.join("bundle");
    cmd(&[
        "skopeo",
        "copy",
        "-q",
        &format!("docker-archive:{}:{IMAGE}", archive.display()),
        &format!("oci:{}:latest", layout.display()),
    ])?;
    cmd(&[
        "umoci",
        "unpack",
        "--image",
        &format!("{}:latest", layout.display()),
        &bundle.to_string_lossy(),
    ])?;
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(bundle)
}

/// A berthd on a temp root and socket, with a bridge of its own.
struct Berthd {
    child: Child,
    berth: PathBuf,
    root: PathBuf,
    socket: PathBuf,
}

impl Berthd {
    /// `bridge`: with this bench's bridge, else `--no-bridge`.
    fn start(berthd: &Path, berth: &Path, dir: &Path, bridge: bool) -> Result<Berthd> {
        let images = dir.join("images");
        fs::create_dir_all(&images)?;
        let log = fs::File::create(dir.join("berthd.log"))?;
        let child = Command::new(berthd)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--socket")
            .arg(dir.join("run/berthd.sock"))
            .arg("--images-dir")
            .arg(&images)
            .args(if bridge {
                &[
                    "--bridge-name",
                    BRIDGE_NAME,
                    "--bridge-subnet",
                    BRIDGE_SUBNET,
                ][..]
            } else {
                &["--no-bridge"][..]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", berthd.display()))?;
        let mut d = Berthd {
            child,
            berth: berth.to_path_buf(),
            root: dir.join("root"),
            socket: dir.join("run/berthd.sock"),
        };
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        while d.berth(&["version"]).is_err() {
            if let Some(st) = d.child.try_wait()? {
                bail!(
                    "berthd exited ({st}): {}",
                    fs::read_to_string(dir.join("berthd.log")).unwrap_or_default()
                );
            }
            ensure!(Instant::now() < deadline, "berthd did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn berth_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.berth);
        c.arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        c
    }

    fn berth(&self, args: &[&str]) -> Result<String> {
        run_cmd(&mut self.berth_cmd(args))
    }

    /// Each container's monitor process, as berthd's state records it.
    fn monitor_pids(&self) -> Vec<u32> {
        fs::read_dir(self.root.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| fs::read(e.path().join("monitor.json")).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|m| m["exit"].is_null())
            .filter_map(|m| u32::try_from(m["monitor_pid"].as_u64()?).ok())
            .collect()
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if let Ok(ids) = self.berth(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.berth(&["rm", "-f", id]);
            }
        }
        stop(&mut self.child);
        // berthd leaves its bridge and table for its next start; this one
        // has none.
        let _ = cmd(&["ip", "link", "del", BRIDGE_NAME]);
        let _ = cmd(&["nft", "delete", "table", "ip", BRIDGE_NAME]);
    }
}

/// SIGTERM, then SIGKILL after 30 s.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix_kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn nix_kill(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) on a child this process spawned and has not reaped.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A dockerd on temp data and exec roots and a socket of its own, with no
/// iptables rules and no bridge, and its own containerd.
struct Dockerd {
    child: Child,
    dir: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path) -> Result<Dockerd> {
        let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("dockerd is not installed (apt-get install docker.io)")?;
        ensure!(
            Path::new("/usr/bin/docker").exists(),
            "/usr/bin/docker is not installed (apt-get install docker.io)"
        );
        fs::create_dir_all(dir)?;
        fs::write(dir.join("daemon.json"), "{}\n")?;
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new(dockerd)
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--cgroup-parent=berth-bench-docker",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot run dockerd")?;
        let mut d = Dockerd {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        while d.docker(&["version"]).is_err() {
            if let Some(st) = d.child.try_wait()? {
                let log = fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
                let why = log
                    .lines()
                    .rev()
                    .find(|l| l.contains("level=fatal") || l.contains("failed"))
                    .unwrap_or("see its log")
                    .to_string();
                bail!("dockerd exited ({st}): {why}");
            }
            ensure!(
                Instant::now() < deadline,
                "dockerd did not answer in {DAEMON_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(d)
    }

    fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.join("docker.sock").display()),
        )
        .env("DOCKER_CONFIG", self.dir.join("client"))
        .args(args);
        c
    }

    fn docker(&self, args: &[&str]) -> Result<String> {
        run_cmd(&mut self.docker_cmd(args))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// `docker run` starts on the same busybox image, or why there are none.
fn docker_runs(d: &Dockerd, archive: &Path) -> Result<Vec<Duration>, String> {
    let load = || -> Result<Vec<Duration>> {
        d.docker(&["load", "-i", &archive.to_string_lossy()])?;
        time_runs(|| d.docker_cmd(&["run", "--rm", "--network", "none", IMAGE, "/bin/true"]))
    };
    load().map_err(|e| first_line(&format!("{e:#}")))
}

/// An OCI archive of [`BIG_LAYERS`] gzip layers, each holding random
/// (incompressible) files and text files, and its layer blobs.
struct BigImage {
    archive: PathBuf,
    layers: Vec<PathBuf>,
    archive_bytes: u64,
    unpacked_bytes: u64,
}

impl BigImage {
    fn build(dir: &Path) -> Result<BigImage> {
        let layout = dir.join("layout");
        let image = format!("{}:latest", layout.display());
        cmd(&["umoci", "init", "--layout", &layout.to_string_lossy()])?;
        cmd(&["umoci", "new", "--image", &image])?;
        let mut unpacked_bytes = 0;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for layer in 0..BIG_LAYERS {
            let tree = dir.join(format!("layer{layer}"));
            let d = tree.join(format!("data{layer}"));
            fs::create_dir_all(d.join("text"))?;
            let mut random = vec![0u8; RANDOM_MB_PER_LAYER << 20];
            fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
                .context("cannot read /dev/urandom")?;
            for (i, chunk) in random.chunks(4 << 20).enumerate() {
                fs::write(d.join(format!("random{i}.bin")), chunk)?;
            }
            // Text files of 256 KiB: words drawn by a xorshift generator,
            // which gzip shrinks about 3x.
            let files = (TEXT_MB_PER_LAYER << 20) / (256 << 10);
            for i in 0..files {
                let mut f =
                    std::io::BufWriter::new(fs::File::create(d.join(format!("text/file{i}.txt")))?);
                let mut written = 0;
                while written < 256 << 10 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let w = WORDS[(seed % WORDS.len() as u64) as usize];
                    f.write_all(w.as_bytes())?;
                    f.write_all(if seed.is_multiple_of(13) { b"\n" } else { b" " })?;
                    written += w.len() + 1;
                }
                f.flush()?;
            }
            unpacked_bytes += ((RANDOM_MB_PER_LAYER + TEXT_MB_PER_LAYER) << 20) as u64;
            // umoci gzips the tar as it adds it.
            let tar = dir.join(format!("layer{layer}.tar"));
            run_cmd(
                Command::new("tar")
                    .arg("-cf")
                    .arg(&tar)
                    .arg("-C")
                    .arg(&tree)
                    .arg("."),
            )?;
            cmd(&[
                "umoci",
                "raw",
                "add-layer",
                "--image",
                &image,
                &tar.to_string_lossy(),
            ])?;
            fs::remove_dir_all(&tree)?;
            fs::remove_file(&tar)?;
        }
        let archive = dir.join("big.tar");
        cmd(&[
            "skopeo",
            "copy",
            "-q",
            &format!("oci:{image}"),
            &format!("oci-archive:{}:{BIG_IMAGE}", archive.display()),
        ])?;
        let layers = layer_blobs(&layout)?;
        ensure!(
            layers.len() == BIG_LAYERS,
            "expected {BIG_LAYERS} layers, the manifest has {}",
            layers.len()
        );
        Ok(BigImage {
            archive_bytes: fs::metadata(&archive)?.len(),
            archive,
            layers,
            unpacked_bytes,
        })
    }
}

/// The layer blobs of an OCI layout's only image, bottom first.
fn layer_blobs(layout: &Path) -> Result<Vec<PathBuf>> {
    let blob = |digest: &str| -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("unexpected digest {digest}"))?;
        Ok(layout.join("blobs/sha256").join(hex))
    };
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json names no manifest")?;
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(digest)?)?)?;
    manifest["layers"]
        .as_array()
        .context("the manifest has no layers")?
        .iter()
        .map(|l| blob(l["digest"].as_str().unwrap_or("")))
        .collect()
}

/// Timed loads, sorted.
struct LoadTimes {
    /// `berth load -i` of the archive (then `rmi`, untimed).
    berth: Vec<Duration>,
    /// `tar -xzf` of each layer into an empty directory (then removed).
    tar: Vec<Duration>,
    /// The same, then `sync -f` of the directory's filesystem: what having
    /// the files on disk costs (berthd fsyncs blobs, and syncs layers in the
    /// background behind markers that rebuild them after a crash).
    tar_sync: Vec<Duration>,
}

/// Times the loads; the archive and the layers are read once first, so
/// every run starts from the page cache.
fn load_runs(berthd: &Berthd, big: &BigImage, untar: &Path) -> Result<LoadTimes> {
    for f in std::iter::once(&big.archive).chain(&big.layers) {
        std::io::copy(&mut fs::File::open(f)?, &mut std::io::sink())?;
    }
    let archive = big.archive.to_string_lossy();
    let mut t = LoadTimes {
        berth: Vec::new(),
        tar: Vec::new(),
        tar_sync: Vec::new(),
    };
    let _ = cmd(&["sync"]);
    for _ in 0..LOAD_RUNS {
        let started = Instant::now();
        berthd.berth(&["load", "-i", &archive])?;
        t.berth.push(started.elapsed());
        berthd.berth(&["rmi", BIG_IMAGE])?;
        let _ = cmd(&["sync"]);

        for sync in [false, true] {
            fs::create_dir_all(untar)?;
            let started = Instant::now();
            for layer in &big.layers {
                run_cmd(
                    Command::new("tar")
                        .arg("-xzf")
                        .arg(layer)
                        .arg("-C")
                        .arg(untar),
                )?;
            }
            if sync {
                run_cmd(Command::new("sync").arg("-f").arg(untar))?;
                t.tar_sync.push(started.elapsed());
            } else {
                t.tar.push(started.elapsed());
            }
            fs::remove_dir_all(untar)?;
            let _ = cmd(&["sync"]);
        }
    }
    t.berth.sort_unstable();
    t.tar.sort_unstable();
    t.tar_sync.sort_unstable();
    Ok(t)
}

/// The text files' vocabulary.
const WORDS: [&str; 32] = [
    "container",
    "image",
    "layer",
    "bridge",
    "daemon",
    "socket",
    "manifest",
    "digest",
    "overlay",
    "cgroup",
    "namespace",
    "kernel",
    "init",
    "network",
    "volume",
    "registry",
    "berth",
    "harbour",
    "anchor",
    "vessel",
    "tide",
    "quay",
    "mooring",
    "keel",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "on",
];
