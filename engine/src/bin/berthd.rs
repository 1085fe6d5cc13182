//! `berthd`: berth's container engine daemon.
//!
//! Opens the state under `--root`, re-adopts the containers that kept
//! running, loads the images baked into the initramfs, serves the Docker
//! Engine API on `--socket`, and, with `--config`, creates and starts the
//! manifest's workloads in `depends_on` order, then tells init it is ready
//! (`READY workloads=N` on `$BERTH_READY_FD`). SIGTERM stops the workloads
//! in reverse order and exits 0.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use engine::api::{self, Api};
use engine::manager::{CreateSpec, HealthStatus, Manager, ManagerError, ManagerOptions, Status};
use engine::Workload;

/// berth's container engine daemon.
#[derive(Parser, Debug)]
#[command(name = "berthd", version)]
struct Args {
    /// State directory (images, containers, volumes).
    #[arg(long, default_value = "/var/lib/berth")]
    root: PathBuf,
    /// The API socket; its directory is also the runtime directory.
    #[arg(long, default_value = "/run/berth/berthd.sock")]
    socket: PathBuf,
    /// Boot manifest whose [workloads.*] berthd starts.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Image archives loaded at start (every *.tar, *.tar.gz, *.tar.zst).
    #[arg(long, default_value = "/usr/share/berth/images")]
    images_dir: PathBuf,
    /// Do not set up the bridge network (containers use host or none).
    #[arg(long)]
    no_bridge: bool,
    /// The bridge's name (also its nftables table's), so a second berthd
    /// (a test, a bench) does not take over the host's berth0.
    #[arg(long, default_value = netd::bridge::DEFAULT_BRIDGE)]
    bridge_name: String,
    /// The bridge's subnet; the bridge takes its first address.
    #[arg(long, default_value = netd::bridge::DEFAULT_SUBNET)]
    bridge_subnet: netd::bridge::Ipv4Net,
    /// Copies every container's output to stderr as `name | line` (init
    /// passes it, so workloads show on the appliance's console).
    #[arg(long)]
    console_logs: bool,
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let mut e = std::io::stderr().lock();
            let _ = match r.level() {
                log::Level::Error | log::Level::Warn => {
                    writeln!(
                        e,
                        "berthd: {}: {}",
                        r.level().as_str().to_lowercase(),
                        r.args()
                    )
                }
                _ => writeln!(e, "berthd: {}", r.args()),
            };
        }
    }
    fn flush(&self) {}
}

fn main() -> std::process::ExitCode {
    // berthd is also the containers' monitor program.
    engine::manager::monitor::dispatch();
    let _ = log::set_logger(&Logger);
    log::set_max_level(match std::env::var("BERTH_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    });
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The readiness pipe init passed, taken out of the environment so that
/// container monitors do not inherit it.
fn take_ready_fd() -> Option<OwnedFd> {
    let fd: i32 = std::env::var("BERTH_READY_FD").ok()?.parse().ok()?;
    std::env::remove_var("BERTH_READY_FD");
    if fd < 0
        || nix::fcntl::fcntl(
            // SAFETY: fd is only inspected here; it is not owned yet.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .is_err()
    {
        log::warn!("BERTH_READY_FD={fd} is not an open file descriptor");
        return None;
    }
    // SAFETY: init gave this process the fd to own (checked open above), and
    // nothing else in berthd uses it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn tell_ready(fd: Option<OwnedFd>, line: &str) {
    if let Some(fd) = fd {
        let mut f = std::fs::File::from(fd);
        if let Err(e) = f.write_all(line.as_bytes()) {
            log::warn!("cannot tell init that berthd is ready: {e}");
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let ready = take_ready_fd();
    let run_dir = args
        .socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/run/berth"))
        .to_path_buf();
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let mut opts = ManagerOptions::new(&args.root);
    opts.run_dir = run_dir;
    if args.no_bridge {
        opts.bridge = None;
    } else if let Some(bridge) = opts.bridge.as_mut() {
        bridge.name.clone_from(&args.bridge_name);
        bridge.subnet = args.bridge_subnet;
    }
    if args.console_logs {
        let sink: engine::manager::ConsoleSink = Arc::new(std::sync::Mutex::new(std::io::stderr()));
        opts.console_logs = Some(sink);
    }
    let manager = Manager::open(opts)
        .with_context(|| format!("cannot open berth's state in {}", args.root.display()))?;
    load_baked_images(&manager, &args.images_dir);
    let workloads = match &args.config {
        Some(path) => read_workloads(path)?,
        None => BTreeMap::new(),
    };
    let order = start_order(&workloads)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = bind(&args.socket)?;
        log::info!("API listening on {}", args.socket.display());
        let api = Api::new(manager.clone(), args.root.join("tmp"));
        let server = tokio::spawn(api::serve(listener, api));

        let m = manager.clone();
        let (w, o) = (workloads.clone(), order.clone());
        let startup = tokio::task::spawn_blocking(move || start_workloads(&m, &w, &o));

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot handle SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot handle SIGINT")?;
        let mut ready = ready;
        let mut startup = Some(startup);
        loop {
            tokio::select! {
                r = async {
                    match startup.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                }, if startup.is_some() => {
                    startup = None;
                    let n = r.unwrap_or(0);
                    log::info!("ready: {n} of {} workloads running", workloads.len());
                    tell_ready(ready.take(), &format!("READY workloads={n}\n"));
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        log::info!("stopping");
        server.abort();
        let _ = std::fs::remove_file(&args.socket);
        let m = manager.clone();
        let _ = tokio::task::spawn_blocking(move || {
            stop_workloads(&m, &workloads, &order);
            // What the stopped workloads said last reaches the console.
            if !m.drain_console(std::time::Duration::from_secs(2)) {
                log::warn!("the console may miss the last lines of stopped containers");
            }
            // New layers' files on disk: nothing to rebuild at the next start.
            m.images().flush();
        })
        .await;
        log::info!("stopped");
        Ok(())
    })
}

/// Binds the socket (mode 0660), replacing a stale one; refuses when
/// another daemon answers on it.
fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon is already listening on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

/// Imports every archive in `dir` (missing dir: nothing to do). A bad
/// archive is reported and skipped.
fn load_baked_images(manager: &Manager, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.ends_with(".tar")
                || n.ends_with(".tar.gz")
                || n.ends_with(".tgz")
                || n.ends_with(".tar.zst")
                || p.is_dir()
        })
        .collect();
    paths.sort();
    for p in paths {
        let t = Instant::now();
        match manager.images().import(&p, None) {
            Ok(imgs) => {
                for i in imgs {
                    let tags: Vec<String> = i.tags.iter().map(|t| t.familiar()).collect();
                    log::info!(
                        "loaded {} as {} ({} ms)",
                        p.display(),
                        if tags.is_empty() {
                            i.id.to_string()
                        } else {
                            tags.join(", ")
                        },
                        t.elapsed().as_millis()
                    );
                }
            }
            Err(e) => log::warn!("cannot load {}: {}", p.display(), chain(&e)),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[derive(serde::Deserialize)]
struct WorkloadsOnly {
    #[serde(default)]
    workloads: BTreeMap<String, Workload>,
}

/// The manifest's workloads (init validated the whole manifest already;
/// the other sections are not berthd's).
fn read_workloads(path: &Path) -> anyhow::Result<BTreeMap<String, Workload>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manifest {}", path.display()))?;
    let m: WorkloadsOnly = toml::from_str(&text)
        .with_context(|| format!("cannot read the workloads of {}", path.display()))?;
    Ok(m.workloads)
}

/// Workload names, dependencies first (ties by name).
fn start_order(w: &BTreeMap<String, Workload>) -> anyhow::Result<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 visiting, 2 done
    fn visit<'a>(
        name: &'a str,
        w: &'a BTreeMap<String, Workload>,
        state: &mut BTreeMap<&'a str, u8>,
        order: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(_) => bail!("workload {name} depends on itself through depends_on"),
            None => {}
        }
        let Some(wl) = w.get(name) else {
            bail!("depends_on names {name}, which is not a workload");
        };
        state.insert(name, 1);
        for d in &wl.depends_on {
            visit(d.get_ref(), w, state, order)?;
        }
        state.insert(name, 2);
        order.push(name.to_owned());
        Ok(())
    }
    for name in w.keys() {
        visit(name, w, &mut state, &mut order)?;
    }
    Ok(order)
}

/// How long a workload may take to become running (or healthy).
fn readiness_timeout(w: &Workload) -> Duration {
    let base = Duration::from_secs(30);
    match &w.healthcheck {
        None => base,
        Some(h) => {
            let per = h.interval.get() + h.timeout.get();
            base + h.start_period.map_or(Duration::ZERO, |d| d.get()) + per * (h.retries + 1)
        }
    }
}

/// Creates (unless it exists) and starts `name`, then waits for it to
/// run, or be healthy when it has a healthcheck.
fn bring_up(m: &Manager, name: &str, w: &Workload) -> Result<(), String> {
    match m.inspect(name) {
        Ok(c) if c.state.status == Status::Running => {}
        Ok(_) => m.start(name).map_err(|e| chain(&e))?,
        Err(ManagerError::NotFound(_)) => {
            m.create(CreateSpec::from_workload(name, w))
                .map_err(|e| chain(&e))?;
            m.start(name).map_err(|e| chain(&e))?;
        }
        Err(e) => return Err(chain(&e)),
    }
    let deadline = Instant::now() + readiness_timeout(w);
    loop {
        let c = m.inspect(name).map_err(|e| chain(&e))?;
        let health = c.state.health.as_ref().map(|h| h.status);
        match (c.state.status, health) {
            (Status::Running, None) if w.healthcheck.is_none() => return Ok(()),
            (Status::Running, Some(HealthStatus::Healthy)) => return Ok(()),
            (Status::Running, Some(HealthStatus::Unhealthy)) => {
                return Err("its healthcheck reports it unhealthy".into())
            }
            (Status::Exited | Status::Dead, _)
                if w.restart == engine::workload::RestartPolicy::No =>
            {
                return Err(format!(
                    "it exited with code {}",
                    c.state.exit_code.unwrap_or(-1)
                ))
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(format!(
                "it is not {} after {} s",
                if w.healthcheck.is_some() {
                    "healthy"
                } else {
                    "running"
                },
                readiness_timeout(w).as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the workloads in order; a workload whose dependency failed is
/// not started. Returns how many run.
fn start_workloads(m: &Arc<Manager>, w: &BTreeMap<String, Workload>, order: &[String]) -> usize {
    let mut failed: Vec<&str> = Vec::new();
    let mut running = 0;
    for name in order {
        let Some(wl) = w.get(name) else { continue };
        if let Some(d) = wl
            .depends_on
            .iter()
            .find(|d| failed.contains(&d.get_ref().as_str()))
        {
            log::warn!(
                "workload {name} not started: it depends on {}, which did not come up",
                d.get_ref()
            );
            failed.push(name);
            continue;
        }
        let t = Instant::now();
        match bring_up(m, name, wl) {
            Ok(()) => {
                running += 1;
                log::info!("workload {name} running ({} ms)", t.elapsed().as_millis());
            }
            Err(why) => {
                log::warn!("workload {name} failed to start: {why}");
                failed.push(name);
            }
        }
    }
    running
}

/// Stops the workloads in reverse dependency order, each with its own
/// stop signal and grace period.
fn stop_workloads(m: &Arc<Manager>, w: &BTreeMap<String, Workload>, order: &[String]) {
    for name in order.iter().rev() {
        if !w.contains_key(name) {
            continue;
        }
        match m.inspect(name) {
            Ok(c) if matches!(c.state.status, Status::Running | Status::Restarting) => {
                match m.stop(name, None) {
                    Ok(()) => log::info!("workload {name} stopped"),
                    Err(e) => log::warn!("cannot stop workload {name}: {}", chain(&e)),
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_start_first() {
        let text = r#"
            [system]
            hostname = "x"
            [workloads.web]
            image = "busybox"
            depends_on = ["db", "cache"]
            [workloads.db]
            image = "busybox"
            [workloads.cache]
            image = "busybox"
            depends_on = ["db"]
        "#;
        let m: WorkloadsOnly = toml::from_str(text).unwrap();
        assert_eq!(
            start_order(&m.workloads).unwrap(),
            vec!["db", "cache", "web"]
        );
    }

    #[test]
    fn cycles_are_refused() {
        let text = r#"
            [workloads.a]
            image = "busybox"
            depends_on = ["b"]
            [workloads.b]
            image = "busybox"
            depends_on = ["a"]
        "#;
        let m: WorkloadsOnly = toml::from_str(text).unwrap();
        let e = start_order(&m.workloads).unwrap_err().to_string();
        assert!(e.contains("depends on itself"), "{e}");
    }
}
