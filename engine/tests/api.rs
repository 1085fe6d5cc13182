//! berthd end to end: a real `berthd` on a socket of its own (temp
//! `--root`, `--no-bridge`), driven by Debian's docker CLI, by the `berth`
//! CLI and by raw HTTP. Needs root (run by `make test`). Containers use
//! `--network none` or `host`, except in the bridge test, whose berthd has
//! a bridge and subnet of its own; the pull test pulls from Debian's
//! docker-registry on 127.0.0.1. Every test owns its daemon; the
//! [`Daemon`] guard removes its containers and kills it even when the test
//! fails.

mod image_fixtures;
mod registry;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use registry::Registry;

const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");
const BERTH: &str = env!("CARGO_BIN_EXE_berth");
/// Debian's docker.io client (20.10); /usr/local/bin/docker is another one.
const DOCKER: &str = "/usr/bin/docker";
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- fixtures

/// The busybox image in the three forms `berth load` takes.
struct Images {
    /// `docker-archive:…:busybox:latest` made by skopeo.
    docker_archive: PathBuf,
    /// `oci-archive:…:ocibox:1` made by skopeo.
    oci_archive: PathBuf,
    /// An OCI layout directory whose ref.name is `layoutbox:1`.
    layout: PathBuf,
}

/// A layer: busybox with every applet linked in /bin, /etc/passwd, /tmp.
fn busybox_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    let busybox =
        fs::read("/bin/busybox").expect("/bin/busybox is missing: install busybox-static");
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for name in String::from_utf8(list.stdout).unwrap().lines() {
        if name != "busybox" {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, format!("bin/{name}"), "busybox")
                .unwrap();
        }
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let mut h = header(tar::EntryType::Regular, 0o644, passwd.len() as u64);
    b.append_data(&mut h, "etc/passwd", &passwd[..]).unwrap();
    b.into_inner().unwrap()
}

fn must(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Built once per test binary: the layout by hand, the archives by skopeo.
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        // One directory per test process (two runs may overlap); those of
        // processes that are gone are removed.
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        for e in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("api-images-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("api-images-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let layout = dir.join("layout");
        image_fixtures::write_layout(&layout, &[busybox_layer()], "layoutbox:1");
        let src = format!("oci:{}:layoutbox:1", layout.display());
        let docker_archive = dir.join("bb.tar");
        let oci_archive = dir.join("bb-oci.tar");
        must(Command::new("skopeo").args([
            "copy",
            "-q",
            &src,
            &format!("docker-archive:{}:busybox:latest", docker_archive.display()),
        ]));
        must(Command::new("skopeo").args([
            "copy",
            "-q",
            &src,
            &format!("oci-archive:{}:ocibox:1", oci_archive.display()),
        ]));
        Images {
            docker_archive,
            oci_archive,
            layout,
        }
    })
}

// ---------------------------------------------------------------- harness

/// Polls `f` until it gives `Some`, for at most `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A finished command.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: out
                .status
                .code()
                .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success; the output.
    fn ok(self, what: &str) -> Run {
        assert_eq!(
            self.code, 0,
            "{what} failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts a failure with one line on stderr that contains `needle`.
    fn fails_with(self, what: &str, needle: &str) -> Run {
        assert_ne!(self.code, 0, "{what} should fail; stdout: {}", self.stdout);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{what}: expected one error line, got {:?}",
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "{what}: {:?} does not contain {needle:?}",
            self.stderr
        );
        self
    }
}

/// A berthd on its own root and socket. Dropping it removes every
/// container (starting the daemon again if a test killed it) and kills it.
struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// berthd's flags besides --root and --socket: how its network is set
    /// up (`--no-bridge`, or a bridge's flags), where its images are, ...
    args: Vec<String>,
}

impl Daemon {
    fn start() -> Daemon {
        Daemon::start_with(&["--no-bridge"])
    }

    /// A berthd with a bridge of its own (`--bridge-name`, `--bridge-subnet`),
    /// so tests do not touch the host's berth0 or each other's.
    fn with_bridge(name: &str, subnet: &str) -> Daemon {
        Daemon::start_with(&["--bridge-name", name, "--bridge-subnet", subnet])
    }

    fn start_with(args: &[&str]) -> Daemon {
        Daemon::start_in(Daemon::dir(), args)
    }

    fn dir() -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("berth-api-")
            .tempdir_in("/tmp")
            .unwrap();
        fs::create_dir_all(dir.path().join("no-images")).unwrap();
        dir
    }

    /// A berthd that runs `manifest`'s workloads (busybox baked in, as the
    /// appliance has it) and copies their output to its log.
    fn with_workloads(manifest: &str) -> Daemon {
        let dir = Daemon::dir();
        let baked = dir.path().join("images");
        fs::create_dir(&baked).unwrap();
        fs::copy(&images().docker_archive, baked.join("busybox.tar")).unwrap();
        let config = dir.path().join("berth.toml");
        fs::write(&config, manifest).unwrap();
        let (baked, config) = (baked.display().to_string(), config.display().to_string());
        Daemon::start_in(
            dir,
            &[
                "--no-bridge",
                "--console-logs",
                "--config",
                &config,
                "--images-dir",
                &baked,
            ],
        )
    }

    fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Daemon {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if !args.iter().any(|a| a == "--images-dir") {
            args.push("--images-dir".into());
            args.push(dir.path().join("no-images").display().to_string());
        }
        let mut d = Daemon {
            dir,
            child: None,
            args,
        };
        d.spawn();
        d
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/berthd.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Starts berthd and waits until it answers /_ping.
    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berthd.log"))
            .unwrap();
        let child = Command::new(BERTHD)
            .arg("--root")
            .arg(self.root())
            .arg("--socket")
            .arg(self.socket())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for("berthd to answer /_ping", TIMEOUT, || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("berthd exited ({st}): {}", self.log());
                }
            }
            http(&self.socket(), "GET", "/_ping", None)
                .ok()
                .filter(|r| r.status == 200)
        });
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// SIGKILLs berthd (its containers' monitors stay).
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn berth_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BERTH);
        c.arg("--host").arg(self.host()).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// `berth ARGS`.
    fn berth(&self, args: &[&str]) -> Run {
        Run::from(self.berth_cmd(args).output().unwrap())
    }

    fn docker_cmd(&self, args: &[&str]) -> Command {
        assert!(
            Path::new(DOCKER).exists(),
            "{DOCKER} is missing: install Debian's docker.io (apt-get install docker.io; scripts/setup.sh does)"
        );
        let mut c = Command::new(DOCKER);
        c.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `/usr/bin/docker ARGS` against this daemon.
    fn docker(&self, args: &[&str]) -> Run {
        Run::from(self.docker_cmd(args).output().unwrap())
    }

    /// `berth inspect NAME`, parsed.
    fn inspect(&self, name: &str) -> serde_json::Value {
        let r = self.berth(&["inspect", name]).ok("berth inspect");
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v[0].clone()
    }

    fn status(&self, name: &str) -> String {
        self.inspect(name)["State"]["Status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Waits until `berth logs NAME` contains `needle`; the logs.
    fn logs_contain(&self, name: &str, needle: &str) -> String {
        wait_for(
            &format!("{needle:?} in the logs of {name}"),
            TIMEOUT,
            || {
                let r = self.berth(&["logs", name]);
                r.stdout.contains(needle).then_some(r.stdout)
            },
        )
    }

    fn load(&self) {
        self.berth(&["load", "-i", images().docker_archive.to_str().unwrap()])
            .ok("berth load");
    }
}

impl Daemon {
    /// (monitor pid, its start time, container pid) of every run without
    /// a recorded exit.
    fn live_runs(&self) -> Vec<(i32, u64, i32)> {
        let Ok(dirs) = fs::read_dir(self.root().join("containers")) else {
            return Vec::new();
        };
        dirs.flatten()
            .filter_map(|e| fs::read(e.path().join("monitor.json")).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|m| m["exit"].is_null())
            .filter_map(|m| {
                Some((
                    i32::try_from(m["monitor_pid"].as_u64()?).ok()?,
                    m["monitor_start"].as_u64()?,
                    i32::try_from(m["container_pid"].as_u64()?).ok()?,
                ))
            })
            .collect()
    }
}

/// Field 22 of /proc/PID/stat (start time), against pid reuse.
fn proc_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_none() {
            // A test killed it: bring it back to remove its containers.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn()));
        }
        if self.child.is_some() {
            let ids = self.berth(&["ps", "-aq"]).stdout;
            for id in ids.split_whitespace() {
                let _ = self.berth(&["rm", "-f", id]);
            }
        }
        self.kill9();
        // Whatever still runs (berthd could not come back): SIGKILL each
        // container's PID 1, which ends its pid namespace and its monitor.
        for (monitor, start, pid) in self.live_runs() {
            if proc_start(monitor) == Some(start) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if std::thread::panicking() {
            eprintln!("berthd's log:\n{}", self.log());
        }
    }
}

/// An HTTP answer.
struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on the socket (`Connection: close`).
fn http(sock: &Path, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Http> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let body = body.unwrap_or("");
    // One write, as a client's buffered writer does. A server may answer
    // and close before reading a body it has no use for; its answer is
    // still there to read, so a broken pipe here is not the result.
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match s.write_all(request.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r?,
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut raw = Vec::new();
    r.read_to_end(&mut raw)?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(&raw) } else { raw };
    Ok(Http {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..i]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[i + 2..i + 2 + size]);
        raw = &raw[i + 2 + size + 2..];
    }
    out
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------- (a) docker CLI

#[test]
fn docker_cli_drives_berthd() {
    let d = Daemon::start();
    d.load();

    let v = d.docker(&["version"]).ok("docker version");
    assert!(v.stdout.contains("Server:"), "{}", v.stdout);
    assert!(v.stdout.contains("1.41"), "{}", v.stdout);

    let i = d.docker(&["images"]).ok("docker images");
    assert!(
        i.stdout
            .lines()
            .any(|l| l.starts_with("busybox ") && l.contains("latest")),
        "{}",
        i.stdout
    );

    // Foreground: output and exit code.
    let fg = d.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo fg-out; echo fg-err >&2; exit 5",
    ]);
    assert_eq!(fg.code, 5, "{} {}", fg.stdout, fg.stderr);
    assert_eq!(fg.stdout, "fg-out\n");
    assert!(fg.stderr.contains("fg-err"), "{}", fg.stderr);

    // Background.
    let id = d
        .docker(&[
            "run",
            "-d",
            "--name",
            "bg",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "echo hello-bg; while :; do sleep 1; done",
        ])
        .ok("docker run -d")
        .stdout
        .trim()
        .to_owned();
    assert!(is_id(&id), "{id:?}");
    let ps = d.docker(&["ps"]).ok("docker ps");
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.starts_with(&id[..12]) && l.ends_with("bg")),
        "{}",
        ps.stdout
    );
    wait_for("hello-bg in docker logs", TIMEOUT, || {
        let r = d.docker(&["logs", "bg"]);
        (r.stdout == "hello-bg\n").then_some(())
    });
    let ex = d.docker(&["exec", "bg", "sh", "-c", "echo in-exec $$; exit 4"]);
    assert_eq!(ex.code, 4, "{}", ex.stderr);
    assert!(ex.stdout.starts_with("in-exec "), "{}", ex.stdout);

    let ins = d.docker(&["inspect", "bg"]).ok("docker inspect");
    let v: serde_json::Value = serde_json::from_str(&ins.stdout).unwrap();
    assert_eq!(v[0]["Id"], id.as_str());
    assert_eq!(v[0]["Name"], "/bg");
    assert_eq!(v[0]["State"]["Running"], true);
    assert_eq!(v[0]["HostConfig"]["NetworkMode"], "none");
    let f = d
        .docker(&["inspect", "-f", "{{.State.Status}} {{.Config.Image}}", "bg"])
        .ok("docker inspect -f");
    assert_eq!(f.stdout.trim(), "running busybox");

    // sh as PID 1 ignores SIGTERM: stop ends with SIGKILL after 1 s.
    d.docker(&["stop", "-t", "1", "bg"]).ok("docker stop");
    let w = d.docker(&["wait", "bg"]).ok("docker wait (exited)");
    assert_eq!(w.stdout.trim(), "137");
    assert_eq!(d.status("bg"), "exited");
    let ps = d.docker(&["ps"]).ok("docker ps");
    assert!(!ps.stdout.contains("bg"), "{}", ps.stdout);
    let psa = d.docker(&["ps", "-a"]).ok("docker ps -a");
    assert!(psa.stdout.contains("Exited (137)"), "{}", psa.stdout);
    d.docker(&["rm", "bg"]).ok("docker rm");
    let psa = d.docker(&["ps", "-a", "-q"]).ok("docker ps -a -q");
    assert_eq!(psa.stdout, "");

    // wait blocks until the container exits, and prints its code.
    let ctl = d.dir.path().join("ctl");
    fs::create_dir_all(&ctl).unwrap();
    let bind = format!("{}:/ctl", ctl.display());
    d.docker(&[
        "run",
        "-d",
        "--name",
        "waiter",
        "--network",
        "none",
        "-v",
        &bind,
        "busybox",
        "sh",
        "-c",
        "while [ ! -e /ctl/go ]; do sleep 0.1; done; exit 7",
    ])
    .ok("docker run -d waiter");
    let waiting = d
        .docker_cmd(&["wait", "waiter"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(d.status("waiter"), "running");
    fs::write(ctl.join("go"), "").unwrap();
    let w = Run::from(waiting.wait_with_output().unwrap()).ok("docker wait");
    assert_eq!(w.stdout.trim(), "7");
    d.docker(&["rm", "waiter"]).ok("docker rm waiter");

    // logs --tail, exec -i, restart, kill -s, start.
    d.docker(&[
        "run",
        "-d",
        "--name",
        "w",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "trap 'echo usr1; exit 3' USR1; for i in 1 2 3; do echo l$i; done; \
         while :; do sleep 0.2 & wait; done",
    ])
    .ok("docker run -d w");
    wait_for("l3 in docker logs --tail 2", TIMEOUT, || {
        let r = d.docker(&["logs", "--tail", "2", "w"]);
        (r.stdout == "l2\nl3\n").then_some(())
    });
    let mut ei = d
        .docker_cmd(&["exec", "-i", "w", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ei.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let ei = Run::from(ei.wait_with_output().unwrap()).ok("docker exec -i");
    assert_eq!(ei.stdout, "ABC\n");
    let pid = d.inspect("w")["State"]["Pid"].clone();
    d.docker(&["restart", "-t", "0", "w"]).ok("docker restart");
    let v = d.inspect("w");
    assert_eq!(v["State"]["Status"], "running");
    assert_ne!(v["State"]["Pid"], pid);
    // The trap is set once the loop runs, after the restart's l3.
    wait_for("the restarted w to log again", TIMEOUT, || {
        (d.docker(&["logs", "w"]).stdout.matches("l3").count() == 2).then_some(())
    });
    d.docker(&["kill", "-s", "USR1", "w"]).ok("docker kill -s");
    let w = d.docker(&["wait", "w"]).ok("docker wait w");
    assert_eq!(w.stdout.trim(), "3");
    assert!(d.docker(&["logs", "w"]).stdout.ends_with("usr1\n"));
    d.docker(&["start", "w"]).ok("docker start");
    assert_eq!(d.status("w"), "running");
    d.docker(&["rm", "-f", "w"]).ok("docker rm -f");

    // Errors are Docker's.
    let e = d.docker(&["inspect", "nosuch"]);
    assert_ne!(e.code, 0);
    assert!(e.stderr.contains("No such object: nosuch"), "{}", e.stderr);
    let e = d.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-m",
        "64m",
        "busybox",
        "cat",
        "/sys/fs/cgroup/memory.max",
    ]);
    if host_offers("memory") {
        assert_eq!((e.code, e.stdout.trim()), (0, "67108864"), "{}", e.stderr);
    } else {
        assert_eq!(e.code, 125);
        assert!(
            e.stderr.contains("cannot enforce the memory limit"),
            "{}",
            e.stderr
        );
    }

    let r = d.docker(&["rmi", "busybox"]).ok("docker rmi");
    assert!(
        r.stdout.contains("Untagged: busybox:latest"),
        "{}",
        r.stdout
    );
    assert_eq!(
        d.docker(&["images", "-q"]).ok("docker images -q").stdout,
        ""
    );
}

// ---------------------------------------------------------------- (b) berth CLI

#[test]
fn berth_loads_every_format_and_rmi_respects_users() {
    let d = Daemon::start();
    let imgs = images();
    let l1 = d
        .berth(&["load", "-i", imgs.docker_archive.to_str().unwrap()])
        .ok("load docker-archive");
    assert!(
        l1.stdout.contains("Loaded image: busybox:latest"),
        "{}",
        l1.stdout
    );
    let l2 = d
        .berth(&["load", "-i", imgs.oci_archive.to_str().unwrap()])
        .ok("load oci-archive");
    assert!(
        l2.stdout.contains("Loaded image: ocibox:1"),
        "{}",
        l2.stdout
    );
    let l3 = d
        .berth(&["load", "-i", imgs.layout.to_str().unwrap()])
        .ok("load OCI layout directory");
    assert!(
        l3.stdout.contains("Loaded image: layoutbox:1"),
        "{}",
        l3.stdout
    );

    let im = d.berth(&["images"]).ok("images");
    for (repo, tag) in [("busybox", "latest"), ("ocibox", "1"), ("layoutbox", "1")] {
        assert!(
            im.stdout
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([repo, tag])),
            "{repo}:{tag} not in\n{}",
            im.stdout
        );
    }
    // Every form runs.
    for image in ["busybox", "ocibox:1", "layoutbox:1"] {
        let r = d.berth(&["run", "--rm", "--network", "none", image, "echo", image]);
        assert_eq!((r.code, r.stdout.trim()), (0, image), "{}", r.stderr);
    }

    // The same image under several names: untagging one is fine even
    // while a container uses it, the others keep it.
    d.berth(&[
        "run",
        "--name",
        "user",
        "--network",
        "none",
        "ocibox:1",
        "true",
    ])
    .ok("run user");
    let r = d
        .berth(&["rmi", "busybox", "layoutbox:1"])
        .ok("rmi of other names");
    assert!(
        r.stdout.contains("Untagged: busybox:latest"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Untagged: layoutbox:1"), "{}", r.stdout);
    // The last name, or the id, of an image a stopped container uses: refused.
    d.berth(&["rmi", "ocibox:1"])
        .fails_with("rmi of a used image", "user");
    let id = d.inspect("ocibox:1")["Id"].as_str().unwrap().to_owned();
    d.berth(&["rmi", &id])
        .fails_with("rmi of a used image by id", "user");
    d.berth(&["start", "user"]).ok("start after refused rmi");
    assert!(d.berth(&["images"]).stdout.contains("ocibox"));
    d.berth(&["rm", "user"]).ok("rm user");
    let r = d.berth(&["rmi", "ocibox:1"]).ok("rmi");
    assert!(r.stdout.contains("Untagged: ocibox:1"), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("Deleted: {id}")), "{}", r.stdout);
    assert_eq!(d.berth(&["images", "-q"]).stdout, "");
    d.berth(&["rmi", "ocibox:1"])
        .fails_with("rmi of a removed image", "ocibox:1");
    // rmi -f removes the last name even while a container uses it.
    d.load();
    d.berth(&[
        "run",
        "--name",
        "user2",
        "--network",
        "none",
        "busybox",
        "true",
    ])
    .ok("run user2");
    d.berth(&["rmi", "busybox"])
        .fails_with("rmi of a used image", "user2");
    d.berth(&["rmi", "-f", "busybox"]).ok("rmi -f");
    assert_eq!(d.berth(&["images", "-q"]).stdout, "");

    // A bad archive is one line.
    let junk = d.dir.path().join("junk.tar");
    fs::write(&junk, b"not a tar").unwrap();
    d.berth(&["load", "-i", junk.to_str().unwrap()])
        .fails_with("load junk", "");
    d.berth(&["load", "-i", "/nonexistent.tar"])
        .fails_with("load missing", "/nonexistent.tar");
}

#[test]
fn berth_run_flags_reach_the_container() {
    let d = Daemon::start();
    d.load();
    let vol = d.dir.path().join("vol");
    fs::create_dir_all(&vol).unwrap();
    fs::write(vol.join("in"), "from-host\n").unwrap();
    let rw = format!("{}:/data", vol.display());
    let ro = format!("{}:/data:ro", vol.display());

    let run = |args: &[&str]| d.berth(&[&["run", "--rm", "--network", "none"], args].concat());

    // Exit code and output; stderr goes to stderr.
    let r = run(&["busybox", "sh", "-c", "echo fg; echo err >&2; exit 3"]);
    assert_eq!((r.code, r.stdout.as_str()), (3, "fg\n"), "{}", r.stderr);
    assert_eq!(r.stderr, "err\n");

    let r = run(&[
        "-e",
        "A=1",
        "-e",
        "B=two words",
        "busybox",
        "sh",
        "-c",
        "echo \"$A|$B\"",
    ]);
    assert_eq!(r.stdout, "1|two words\n", "{}", r.stderr);

    // A bare -e K passes the client's K, and nothing when it is unset.
    let r = Run::from(
        d.berth_cmd(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-e",
            "FROM_CLIENT",
            "-e",
            "UNSET_HERE",
            "busybox",
            "sh",
            "-c",
            "echo \"$FROM_CLIENT|${UNSET_HERE-unset}\"",
        ])
        .env("FROM_CLIENT", "passed on")
        .env_remove("UNSET_HERE")
        .output()
        .unwrap(),
    );
    assert_eq!(r.stdout, "passed on|unset\n", "{}", r.stderr);

    let r = run(&["-w", "/tmp", "busybox", "pwd"]);
    assert_eq!(r.stdout, "/tmp\n", "{}", r.stderr);

    let r = run(&[
        "-u",
        "1000:1001",
        "busybox",
        "sh",
        "-c",
        "echo $(id -u):$(id -g)",
    ]);
    assert_eq!(r.stdout, "1000:1001\n", "{}", r.stderr);
    let r = run(&["-u", "1000", "busybox", "id", "-u"]);
    assert_eq!(r.stdout, "1000\n", "{}", r.stderr);

    let r = run(&[
        "-v",
        &rw,
        "busybox",
        "sh",
        "-c",
        "cat /data/in; echo back > /data/out",
    ]);
    assert_eq!(r.stdout, "from-host\n", "{}", r.stderr);
    assert_eq!(fs::read_to_string(vol.join("out")).unwrap(), "back\n");
    let r = run(&[
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/in; echo x > /data/out2",
    ]);
    assert_ne!(r.code, 0);
    assert_eq!(r.stdout, "from-host\n");
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    assert!(!vol.join("out2").exists());

    let r = run(&["--read-only", "busybox", "touch", "/x"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    let r = run(&["busybox", "touch", "/x"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // --network none: only lo; host: the host's interfaces.
    let r = run(&["busybox", "cat", "/proc/net/dev"]);
    let ifaces = |s: &str| -> Vec<String> {
        s.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_owned())
            .collect()
    };
    assert_eq!(ifaces(&r.stdout), vec!["lo"], "{}", r.stderr);
    // Host networking is the host's network namespace itself. Compare the
    // namespace, not interface lists: other tests add and remove veths while
    // this one runs.
    let host = d
        .berth(&[
            "run",
            "--rm",
            "--network",
            "host",
            "busybox",
            "readlink",
            "/proc/self/ns/net",
        ])
        .ok("run --network host");
    let mine = fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(host.stdout.trim_end(), mine.to_str().unwrap());
    let none = run(&["busybox", "readlink", "/proc/self/ns/net"]);
    assert_ne!(
        none.stdout.trim_end(),
        mine.to_str().unwrap(),
        "{}",
        none.stderr
    );

    // --rm removes; --name names; without --rm the container stays.
    d.berth(&[
        "run",
        "--name",
        "kept",
        "--network",
        "none",
        "busybox",
        "true",
    ])
    .ok("run --name");
    let psa = d.berth(&["ps", "-a"]).ok("ps -a").stdout;
    assert!(psa.lines().any(|l| l.ends_with(" kept")), "{psa}");
    assert_eq!(psa.lines().count(), 2, "--rm left containers:\n{psa}");
    d.berth(&[
        "run",
        "--name",
        "kept",
        "--network",
        "none",
        "busybox",
        "true",
    ])
    .fails_with("run with a used name", "kept");

    // -d --rm: removed once it exits.
    let id = d
        .berth(&["run", "-d", "--rm", "--network", "none", "busybox", "true"])
        .ok("run -d --rm")
        .stdout
        .trim()
        .to_owned();
    assert!(is_id(&id), "{id:?}");
    wait_for("the -d --rm container to be removed", TIMEOUT, || {
        let r = d.berth(&["inspect", &id]);
        (r.code != 0 && r.stderr.contains("no such object")).then_some(())
    });

    // A missing command is Docker's 127, and one line.
    let r = run(&["busybox", "/no/such/cmd"]);
    assert_eq!(r.code, 127, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);

    // Limits: berthd keeps its cgroups under /sys/fs/cgroup/berth. Where
    // that hierarchy offers a limit's controller the limit is enforced;
    // where it does not (cgroup v1, a hybrid set-up) berth must refuse it
    // clearly, not ignore it, and leave no container behind. The VM suite
    // (qemu-tests) tests enforcement on every run.
    let mut refused = 0;
    for (flag, value, limit, file, enforced) in [
        ("--memory", "64M", "memory", "memory.max", "67108864"),
        ("--cpus", "0.5", "cpus", "cpu.max", "50000 100000"),
        ("--pids-limit", "10", "pids", "pids.max", "10"),
    ] {
        let controller = file.split('.').next().unwrap_or_default();
        if host_offers(controller) {
            let r = d.berth(&[
                "run",
                "--rm",
                "--network",
                "none",
                flag,
                value,
                "busybox",
                "cat",
                &format!("/sys/fs/cgroup/{file}"),
            ]);
            assert_eq!((r.code, r.stdout.trim()), (0, enforced), "{}", r.stderr);
            continue;
        }
        refused += 1;
        for detach in [false, true] {
            let mut args = vec!["run", "--network", "none", flag, value];
            if detach {
                args.push("-d");
            }
            args.extend(["busybox", "true"]);
            d.berth(&args).fails_with(
                &format!("run {flag}"),
                &format!("cannot enforce the {limit} limit"),
            );
        }
    }
    if refused == 3 {
        let r = d.berth(&[
            "run",
            "--network",
            "none",
            "-m",
            "8M",
            "--pids-limit",
            "5",
            "busybox",
            "true",
        ]);
        assert_eq!(r.code, 125);
        assert!(r.stderr.contains("memory and pids"), "{}", r.stderr);
    }
    assert_eq!(d.berth(&["ps", "-aq"]).stdout.lines().count(), 1);
}

/// Whether berthd's cgroup hierarchy (`/sys/fs/cgroup`, when it is
/// cgroup v2) offers `controller`, so that a limit on it is enforced.
fn host_offers(controller: &str) -> bool {
    fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.split_whitespace().any(|x| x == controller))
}

#[test]
fn berth_manages_a_container_lifecycle() {
    let d = Daemon::start();
    d.load();
    let script = "trap 'echo got-usr1; exit 9' USR1; i=0; \
                  while :; do i=$((i+1)); echo line-$i; sleep 0.2 & wait; done";
    let id = d
        .berth(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            script,
        ])
        .ok("run -d")
        .stdout
        .trim()
        .to_owned();
    assert!(is_id(&id), "{id:?}");
    let ps = d.berth(&["ps"]).ok("ps").stdout;
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&id[..12]) && l.contains("Up") && l.ends_with(" web")),
        "{ps}"
    );
    assert_eq!(d.berth(&["ps", "-q"]).stdout.trim(), &id[..12]);
    d.logs_contain("web", "line-5");

    // --tail N: the last N lines.
    let tail = d
        .berth(&["logs", "--tail", "2", "web"])
        .ok("logs --tail")
        .stdout;
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2, "{tail}");
    assert!(lines.iter().all(|l| l.starts_with("line-")), "{tail}");

    // -f follows new lines, and ends when the container does.
    let mut follow = d
        .berth_cmd(&["logs", "-f", "--tail", "0", "web"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("line-"), "{first:?}");

    // exec; exec -i passes stdin.
    let ex = d.berth(&["exec", "web", "sh", "-c", "echo x-$PPID; exit 6"]);
    assert_eq!((ex.code, ex.stdout.as_str()), (6, "x-0\n"), "{}", ex.stderr);
    let mut ei = d
        .berth_cmd(&["exec", "-i", "web", "sh", "-c", "tr a-z A-Z; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ei.stdin
        .take()
        .unwrap()
        .write_all(b"hello stdin\n")
        .unwrap();
    let ei = Run::from(ei.wait_with_output().unwrap()).ok("exec -i");
    assert_eq!(ei.stdout, "HELLO STDIN\ndone\n");

    // kill -s: the trap runs, the code is the script's.
    d.berth(&["kill", "-s", "USR1", "web"]).ok("kill -s USR1");
    let w = d.berth(&["wait", "web"]).ok("wait");
    assert_eq!(w.stdout.trim(), "9");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("got-usr1"), "{rest}");
    assert!(follow.wait().unwrap().success());
    let ins = d.inspect("web");
    assert_eq!(ins["State"]["Status"], "exited");
    assert_eq!(ins["State"]["ExitCode"], 9);
    assert!(d.berth(&["ps", "-q"]).stdout.is_empty());
    assert!(d.berth(&["ps", "-a"]).stdout.contains("Exited (9)"));

    // start again: the log goes on.
    d.berth(&["start", "web"]).ok("start");
    assert_eq!(d.status("web"), "running");
    let started = d.inspect("web")["State"]["StartedAt"].clone();
    // stop -t 1: sh ignores SIGTERM as PID 1, so SIGKILL after 1 s.
    let t = Instant::now();
    d.berth(&["stop", "-t", "1", "web"]).ok("stop -t 1");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(d.inspect("web")["State"]["ExitCode"], 137);
    // restart from stopped, and from running.
    d.berth(&["restart", "-t", "1", "web"]).ok("restart");
    assert_eq!(d.status("web"), "running");
    let pid1 = d.inspect("web")["State"]["Pid"].as_i64().unwrap();
    d.berth(&["restart", "-t", "0", "web"])
        .ok("restart running");
    let again = d.inspect("web");
    assert_eq!(again["State"]["Status"], "running");
    assert_ne!(again["State"]["Pid"].as_i64().unwrap(), pid1);
    assert_ne!(again["State"]["StartedAt"], started);

    // rm refuses a running container; rm -f kills it.
    d.berth(&["rm", "web"])
        .fails_with("rm of a running container", "web");
    d.berth(&["rm", "-f", "web"]).ok("rm -f");
    assert!(d.berth(&["ps", "-aq"]).stdout.is_empty());
}

#[test]
fn berth_foreground_run_reports_signals_and_restarts() {
    let d = Daemon::start();
    d.load();
    // A foreground run that is killed exits 128+9.
    let fg = d
        .berth_cmd(&[
            "run",
            "--name",
            "victim",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "echo up; while :; do sleep 1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    d.logs_contain("victim", "up");
    d.berth(&["kill", "victim"]).ok("kill");
    let r = Run::from(fg.wait_with_output().unwrap());
    assert_eq!(r.code, 137, "{} {}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "up\n");
    d.berth(&["kill", "victim"])
        .fails_with("kill of a stopped container", "victim");

    // SIGTERM to a foreground berth run goes to the container (docker's
    // sig-proxy): its trap runs and run exits with the trap's code.
    let mut fg = d
        .berth_cmd(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "trap 'echo term; exit 7' TERM; echo ready; while :; do sleep 0.1 & wait; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let berth_pid = fg.id();
    // berth catches SIGTERM once it proxies signals (SigCgt bit 15).
    wait_for("berth run to catch SIGTERM", TIMEOUT, || {
        let status = fs::read_to_string(format!("/proc/{berth_pid}/status")).ok()?;
        let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
        let mask = u64::from_str_radix(caught.trim(), 16).ok()?;
        (mask & (1 << (libc::SIGTERM - 1)) != 0).then_some(())
    });
    let mut out = BufReader::new(fg.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(berth_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "term\n");
    assert_eq!(fg.wait().unwrap().code(), Some(7));

    // --restart on-failure:2 runs it three times in all.
    d.berth(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--network",
        "none",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "echo try; exit 1",
    ])
    .ok("run --restart on-failure:2");
    wait_for("flaky to give up", TIMEOUT, || {
        let v = d.inspect("flaky");
        (v["State"]["Status"] == "exited" && v["RestartCount"] == 2).then_some(())
    });
    assert_eq!(d.berth(&["logs", "flaky"]).stdout, "try\ntry\ntry\n");
    assert_eq!(
        d.inspect("flaky")["HostConfig"]["RestartPolicy"]["Name"],
        "on-failure"
    );
    // --restart always comes back after a kill, but not after stop.
    d.berth(&[
        "run",
        "-d",
        "--name",
        "always",
        "--network",
        "none",
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "echo boot; while :; do sleep 1; done",
    ])
    .ok("run --restart always");
    d.logs_contain("always", "boot");
    d.berth(&["kill", "always"]).ok("kill always");
    wait_for("always to restart", TIMEOUT, || {
        let v = d.inspect("always");
        (v["State"]["Status"] == "running" && v["RestartCount"] == 1).then_some(())
    });
    d.berth(&["stop", "-t", "0", "always"]).ok("stop always");
    assert_eq!(d.status("always"), "exited");
    assert_eq!(d.inspect("always")["RestartCount"], 1);
}

#[test]
fn berth_errors_are_one_line() {
    let d = Daemon::start();
    d.load();
    let cases: &[(&[&str], &str)] = &[
        (&["inspect", "nosuch"], "nosuch"),
        (&["logs", "nosuch"], "nosuch"),
        (&["start", "nosuch"], "nosuch"),
        (&["stop", "nosuch"], "nosuch"),
        (&["restart", "nosuch"], "nosuch"),
        (&["kill", "nosuch"], "nosuch"),
        (&["rm", "nosuch"], "nosuch"),
        (&["wait", "nosuch"], "nosuch"),
        (&["exec", "nosuch", "true"], "nosuch"),
        (&["rmi", "nosuch:1"], "nosuch:1"),
        (
            &["run", "--restart", "sometimes", "busybox", "true"],
            "sometimes",
        ),
        (
            &["run", "--network", "overlay", "busybox", "true"],
            "overlay",
        ),
        (&["run", "--memory", "lots", "busybox", "true"], "lots"),
        (
            &["run", "-v", "relative:x", "busybox", "true"],
            "relative:x",
        ),
        (
            &[
                "run",
                "-u",
                "nobody-here",
                "--network",
                "none",
                "busybox",
                "true",
            ],
            "nobody-here",
        ),
        (&["logs", "--tail", "many", "nosuch"], "many"),
        (&["stop", "-t", "soon", "x"], "soon"),
        (&["kill", "-s", "SIGNOPE", "x"], "SIGNOPE"),
    ];
    for (args, needle) in cases {
        d.berth(args)
            .fails_with(&format!("berth {}", args.join(" ")), needle);
    }
    // A container that exists but is not running.
    d.berth(&[
        "run",
        "--name",
        "done",
        "--network",
        "none",
        "busybox",
        "true",
    ])
    .ok("run done");
    let stopped = d
        .berth(&["exec", "done", "true"])
        .fails_with("exec in a stopped container", "done");
    // As `docker exec`: a container that is missing or not running is 1.
    assert_eq!(stopped.code, 1, "{}", stopped.stderr);
    assert_eq!(d.berth(&["exec", "nosuch", "true"]).code, 1);
    d.berth(&["kill", "-s", "SIGNOPE", "done"])
        .fails_with("kill -s SIGNOPE", "SIGNOPE");
    // The daemon is gone: one line saying so.
    let other = Command::new(BERTH)
        .args(["--host", "unix:///nonexistent/berthd.sock", "ps"])
        .output()
        .unwrap();
    Run::from(other).fails_with("ps without a daemon", "is berthd running?");
    // An image the store does not have (no registry is reachable here).
    let r = d
        .berth(&["run", "--network", "none", "127.0.0.1:9/nosuch:1", "true"])
        .fails_with("run of an unknown image", "cannot be pulled");
    assert_eq!(r.code, 125);
    assert!(
        r.stderr.contains("no such image: 127.0.0.1:9/nosuch:1"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
    let r = d.berth(&["inspect", "nosuch:1"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("nosuch"), "{}", r.stderr);
}

// ---------------------------------------------------------------- (c) raw API

#[test]
fn api_socket_ping_and_errors() {
    let mut d = Daemon::start();
    let sock = d.socket();
    let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");

    let p = http(&sock, "GET", "/_ping", None).unwrap();
    assert_eq!((p.status, p.body.as_str()), (200, "OK"));
    assert_eq!(p.header("Api-Version"), Some("1.41"));
    let p = http(&sock, "GET", "/v1.41/_ping", None).unwrap();
    assert_eq!(p.status, 200);

    let nf = http(&sock, "GET", "/v1.41/no/such/route", None).unwrap();
    assert_eq!(nf.status, 404);
    assert_eq!(nf.header("Content-Type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&nf.body).unwrap();
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("/no/such/route")),
        "{}",
        nf.body
    );
    let nc = http(&sock, "GET", "/containers/nosuch/json", None).unwrap();
    assert_eq!(nc.status, 404);
    let v: serde_json::Value = serde_json::from_str(&nc.body).unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("nosuch"),
        "{}",
        nc.body
    );

    for body in [
        "{\"Image\": ",
        "[1,2",
        "{\"Image\": 5}",
        "\u{0}\u{1}garbage",
    ] {
        let r = http(&sock, "POST", "/v1.41/containers/create", Some(body)).unwrap();
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            !v["message"].as_str().unwrap_or("").is_empty(),
            "{}",
            r.body
        );
    }
    // The body is judged before the exec is looked up, as Docker does.
    let r = http(&sock, "POST", "/exec/nosuch/start", Some("{\"Detach\":")).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http(
        &sock,
        "POST",
        "/exec/nosuch/start",
        Some("{\"Detach\":true}"),
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.body.contains("no such exec instance: nosuch"),
        "{}",
        r.body
    );
    // Garbage that is not HTTP at all.
    {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"\x16\x03\x01 not http\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let _ = s.read_to_end(&mut sink);
    }
    // Still serving, and the same process.
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "berthd exited: {}",
        d.log()
    );
    let p = http(&sock, "GET", "/_ping", None).unwrap();
    assert_eq!(p.status, 200);
    let v = http(&sock, "GET", "/version", None).unwrap();
    let v: serde_json::Value = serde_json::from_str(&v.body).unwrap();
    assert_eq!(v["ApiVersion"], "1.41");
}

/// The blob (hex) a layer (diff_id hex) was unpacked from, per the
/// store's index (`images.json`: images by manifest, each with its layers'
/// blob and diff_id).
fn layer_blob(images: &Path, diff_hex: &str) -> Option<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(images.join("images.json")).ok()?).ok()?;
    let diff = format!("sha256:{diff_hex}");
    index["images"]
        .as_object()?
        .values()
        .flat_map(|i| i["layers"].as_array().cloned().unwrap_or_default())
        .find(|l| l["diff_id"] == diff.as_str())?["blob"]
        .as_str()?
        .strip_prefix("sha256:")
        .map(str::to_owned)
}

/// berthd's open file descriptors on `path`.
fn fds_on(pid: u32, path: &Path) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|f| fs::read_link(f.path()).is_ok_and(|t| t == path))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn api_log_followers_that_leave_are_let_go() {
    let d = Daemon::start();
    d.load();
    // Silent after one line: a follower gets nothing more to send.
    d.berth(&[
        "run",
        "-d",
        "--name",
        "quiet",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo once; while :; do sleep 1; done",
    ])
    .ok("run -d quiet");
    d.logs_contain("quiet", "once");
    let log = PathBuf::from(d.inspect("quiet")["LogPath"].as_str().unwrap());
    let pid = d.child.as_ref().unwrap().id();
    let mut followers = Vec::new();
    for _ in 0..3 {
        let mut s = UnixStream::connect(d.socket()).unwrap();
        write!(
            s,
            "GET /v1.41/containers/quiet/logs?stdout=1&stderr=1&follow=1 HTTP/1.1\r\nHost: berth\r\n\r\n"
        )
        .unwrap();
        let mut first = [0u8; 12];
        s.read_exact(&mut first).unwrap();
        assert!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
        followers.push(s);
    }
    wait_for(
        "berthd to hold the log open for 3 followers",
        TIMEOUT,
        || (fds_on(pid, &log) >= 3).then_some(()),
    );
    drop(followers);
    wait_for("berthd to let go of the log", TIMEOUT, || {
        (fds_on(pid, &log) == 0).then_some(())
    });
    assert_eq!(d.status("quiet"), "running");
}

fn threads_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |t| t.count())
}

#[test]
fn api_waiters_that_leave_are_let_go() {
    let d = Daemon::start();
    d.load();
    d.berth(&[
        "run",
        "-d",
        "--name",
        "long",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "while :; do sleep 1; done",
    ])
    .ok("run -d long");
    let pid = d.child.as_ref().unwrap().id();
    // Each wait holds one of berthd's blocking threads while it waits.
    let mut waiters = Vec::new();
    for _ in 0..20 {
        let mut s = UnixStream::connect(d.socket()).unwrap();
        write!(
            s,
            "POST /v1.41/containers/long/wait?condition=next-exit HTTP/1.1\r\nHost: berth\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut first = [0u8; 12];
        s.read_exact(&mut first).unwrap();
        assert!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
        waiters.push(s);
    }
    let busy = threads_of(pid);
    assert!(busy >= 20, "{busy} threads for 20 waiters");
    drop(waiters);
    // Freed threads go back to tokio's pool, which ends idle ones after
    // 10 s; waiters still stuck would keep theirs.
    wait_for("berthd to free the waiters' threads", TIMEOUT, || {
        (threads_of(pid) + 15 <= busy).then_some(())
    });
    // A waiter that stays still gets its answer.
    let w = d
        .berth_cmd(&["wait", "long"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    d.berth(&["kill", "long"]).ok("kill long");
    let w = Run::from(w.wait_with_output().unwrap()).ok("wait long");
    assert_eq!(w.stdout.trim(), "137");
}

// ---------------------------------------------------------------- (d) re-adoption

#[test]
fn containers_survive_a_berthd_sigkill() {
    let mut d = Daemon::start();
    d.load();
    let ctl = d.dir.path().join("ctl");
    fs::create_dir_all(&ctl).unwrap();
    let bind = format!("{}:/ctl", ctl.display());
    // Writes a line per tick; after /ctl/stop appears it exits 42.
    let script = "i=0; while [ ! -e /ctl/stop ]; do i=$((i+1)); echo tick-$i; \
                  echo $i > /ctl/count; sleep 0.1; done; echo bye; exit 42";
    d.berth(&[
        "run",
        "-d",
        "--name",
        "survivor",
        "--network",
        "none",
        "-v",
        &bind,
        "busybox",
        "sh",
        "-c",
        script,
    ])
    .ok("run -d survivor");
    d.logs_contain("survivor", "tick-2");
    let pid = d.inspect("survivor")["State"]["Pid"].as_i64().unwrap();
    // Exits while berthd is down: its restart policy applies when berthd
    // is back.
    d.berth(&[
        "run",
        "-d",
        "--name",
        "phoenix",
        "--restart",
        "always",
        "--network",
        "none",
        "-v",
        &bind,
        "busybox",
        "sh",
        "-c",
        "echo boot; while [ ! -e /ctl/die ]; do sleep 0.1; done; rm /ctl/die; exit 1",
    ])
    .ok("run -d phoenix");
    d.logs_contain("phoenix", "boot");
    let phoenix_pid = d.inspect("phoenix")["State"]["Pid"].as_i64().unwrap();

    d.kill9();
    fs::write(ctl.join("die"), "").unwrap();
    wait_for("phoenix to exit while berthd is down", TIMEOUT, || {
        (!Path::new(&format!("/proc/{phoenix_pid}")).exists()).then_some(())
    });
    // While berthd is down the container goes on: wait for it to count
    // past what it had written, so lines are logged with no daemon.
    let count = |ctl: &Path| -> u64 {
        fs::read_to_string(ctl.join("count"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let at_kill = count(&ctl);
    let target = at_kill + 5;
    wait_for(
        "the container to write while berthd is down",
        TIMEOUT,
        || (count(&ctl) >= target).then_some(()),
    );
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with berthd"
    );

    // Only berthd died: a layer it had not synced yet (marked, as a kill
    // right after a load leaves it) is whole, and survivor runs on it: it
    // must not be rebuilt under it.
    let images = d.root().join("images");
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let mut layers = Vec::new();
    for e in fs::read_dir(images.join("layers")).unwrap().flatten() {
        let hex = e.file_name().to_string_lossy().into_owned();
        let Some(blob) = layer_blob(&images, &hex) else {
            continue;
        };
        let marker = images.join("unsynced").join(format!("{hex}.{blob}.1-0"));
        fs::write(&marker, boot.trim()).unwrap();
        layers.push((e.path(), e.metadata().unwrap().ino(), marker));
    }
    assert!(
        !layers.is_empty(),
        "no layer of busybox under {}",
        images.display()
    );
    d.spawn();
    for (layer, ino, marker) in &layers {
        let now = fs::metadata(layer).map(|m| m.ino()).ok();
        assert_eq!(
            now,
            Some(*ino),
            "{} was replaced: {}",
            layer.display(),
            d.log()
        );
        assert!(!marker.exists(), "{} was not synced", marker.display());
    }
    let ps = d.berth(&["ps"]).ok("ps after restart").stdout;
    assert!(
        ps.lines()
            .any(|l| l.ends_with(" survivor") && l.contains("Up")),
        "{ps}"
    );
    let v = d.inspect("survivor");
    assert_eq!(v["State"]["Status"], "running");
    assert_eq!(v["State"]["Pid"].as_i64().unwrap(), pid);
    let logs = d.logs_contain("survivor", &format!("tick-{target}\n"));
    // Every line, none lost or doubled, across the daemon's absence.
    let ticks: Vec<&str> = logs.lines().collect();
    for (i, l) in ticks.iter().enumerate() {
        assert_eq!(*l, format!("tick-{}", i + 1), "{logs}");
    }

    wait_for("phoenix to be restarted", TIMEOUT, || {
        let v = d.inspect("phoenix");
        (v["State"]["Status"] == "running" && v["RestartCount"] == 1).then_some(())
    });
    assert_eq!(d.logs_contain("phoenix", "boot\nboot\n"), "boot\nboot\n");

    // logs -f on a re-adopted container follows it to its end.
    let mut follow = d
        .berth_cmd(&["logs", "-f", "--tail", "0", "survivor"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("tick-"), "{first:?}");
    fs::write(ctl.join("stop"), "").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.ends_with("bye\n"), "{rest}");
    assert!(follow.wait().unwrap().success());
    let w = d.berth(&["wait", "survivor"]).ok("wait after re-adoption");
    assert_eq!(w.stdout.trim(), "42");
    let v = d.inspect("survivor");
    assert_eq!(v["State"]["Status"], "exited");
    assert_eq!(v["State"]["ExitCode"], 42);
    assert!(d.berth(&["logs", "--tail", "1", "survivor"]).stdout == "bye\n");
}

// ---------------------------------------------------------------- (d) pull and bridge

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn berth_pulls_from_a_registry_and_runs_the_image() {
    let reg = Registry::start();
    // berthd speaks plain HTTP to loopback registries.
    reg.push(
        &format!("oci:{}:layoutbox:1", images().layout.display()),
        "tools/bb:1",
        &[],
    );
    let d = Daemon::start();
    let image = format!("{}/tools/bb:1", reg.domain);
    let r = d.berth(&["pull", &image]).ok("berth pull");
    assert!(
        r.stdout.contains("Downloaded newer image") || r.stdout.contains("Digest: sha256:"),
        "berth pull printed {:?}",
        r.stdout
    );
    let listed = d.berth(&["images"]).ok("berth images").stdout;
    assert!(
        listed.contains(&format!("{}/tools/bb", reg.domain)),
        "{listed}"
    );
    let r = d
        .berth(&[
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "/bin/echo",
            "pulled",
        ])
        .ok("berth run of the pulled image");
    assert_eq!(r.stdout, "pulled\n");
    // A second pull finds it up to date and fetches nothing.
    d.berth(&["pull", &image]).ok("second berth pull");

    let missing = format!("{}/tools/bb:nosuch", reg.domain);
    let r = d
        .berth(&["pull", &missing])
        .fails_with("pull of an unknown tag", "nosuch");
    assert!(!r.stderr.contains("\\n"), "{:?}", r.stderr);
    let listed = d.berth(&["images"]).ok("berth images").stdout;
    assert!(!listed.contains("nosuch"), "{listed}");
}

/// `ip -o link show master BRIDGE`: the names of the links on the bridge.
fn bridge_ports(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// `nft list table ip NAME`, or "" when there is no such table.
fn nft_table(name: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "table", "ip", name])
        .output()
        .unwrap_or_else(|e| panic!("cannot run nft: {e} (apt-get install nftables)"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP GET on `addr`; the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// Deletes a test's bridge and its nftables table (berthd leaves both,
/// as it does berth0 for the next start).
struct BridgeCleanup(String);

impl Drop for BridgeCleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn bridge_containers_reach_each_other_and_publish_ports() {
    // A bridge and a /24 of this test's own, away from berth0's 10.213/16.
    let pid = std::process::id();
    let bridge = format!("bapi{}", pid % 100_000);
    let subnet = format!("10.237.{}.0/24", pid % 250);
    let _cleanup = BridgeCleanup(bridge.clone());
    let d = Daemon::with_bridge(&bridge, &subnet);
    d.load();
    let port = free_port();
    let page = "hello from b";
    d.berth(&[
        "run",
        "-d",
        "--name",
        "b",
        "-p",
        &format!("{port}:8080"),
        "busybox",
        "sh",
        "-c",
        &format!(
            "mkdir -p /srv && echo '{page}' >/srv/index.html && exec httpd -f -p 8080 -h /srv"
        ),
    ])
    .ok("run b");
    d.berth(&["run", "-d", "--name", "a", "busybox", "sleep", "600"])
        .ok("run a");
    let ip_b = d.inspect("b")["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        ip_b.starts_with(&subnet[..subnet.len() - 4]),
        "b's address {ip_b:?} is not in {subnet}"
    );

    // By name, from one container to the other.
    let r = d.berth(&["exec", "a", "ping", "-c1", "-W5", "b"]);
    assert_eq!(r.code, 0, "ping b from a: {} {}", r.stdout, r.stderr);
    let body = wait_for("b's httpd from a", TIMEOUT, || {
        let r = d.berth(&["exec", "a", "wget", "-qO-", "http://b:8080/"]);
        (r.code == 0).then_some(r.stdout)
    });
    assert_eq!(body.trim(), page);

    // The published port, from the host.
    let published = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let body = wait_for("the published port", TIMEOUT, || {
        http_get(published, "/").ok().filter(|b| !b.is_empty())
    });
    assert_eq!(body.trim(), page);
    assert_eq!(
        bridge_ports(&bridge).len(),
        2,
        "{:?}",
        bridge_ports(&bridge)
    );
    let rules = nft_table(&bridge);
    assert!(rules.contains(&format!("dport {port}")), "{rules}");

    d.berth(&["rm", "-f", "a", "b"]).ok("rm -f a b");
    assert_eq!(bridge_ports(&bridge), Vec::<String>::new());
    let rules = nft_table(&bridge);
    assert!(!rules.contains(&format!("dport {port}")), "{rules}");
    assert!(!rules.contains(&ip_b), "{rules}");
    assert!(
        http_get(published, "/").map_or(true, |b| b.is_empty()),
        "port {port} still answers"
    );
}

/// A workload that says a lot when stopped: berthd, told to stop, stops
/// it and must not exit before its console copy has every line.
#[test]
fn a_stopped_workloads_last_lines_reach_the_console() {
    const LINES: usize = 300;
    let manifest = format!(
        r#"
[workloads.talker]
image = "busybox:latest"
network = "none"
command = ["sh", "-c", "trap 'i=0; while [ $i -lt {LINES} ]; do echo bye $i; i=$((i+1)); done; exit 0' TERM; echo ready; while :; do sleep 1 & wait; done"]
"#
    );
    let mut d = Daemon::with_workloads(&manifest);
    wait_for("the workload's first line on the console", TIMEOUT, || {
        d.log().contains("talker | ready").then_some(())
    });
    let mut berthd = d.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(berthd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for("berthd to exit", Duration::from_secs(30), || {
        berthd.try_wait().unwrap()
    });
    assert!(status.success(), "{status}: {}", d.log());
    let log = d.log();
    let said: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("talker | bye "))
        .collect();
    let want: Vec<String> = (0..LINES).map(|i| i.to_string()).collect();
    assert_eq!(said, want, "{log}");
    let last = log.find(&format!("talker | bye {}", LINES - 1)).unwrap();
    let stopped = log.find("berthd: stopped");
    assert!(stopped.is_some_and(|s| last < s), "{log}");
}
