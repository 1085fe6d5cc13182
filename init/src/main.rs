//! berth-init: PID 1 of the berth appliance.
//!
//! As PID 1 it runs the boot sequence of DESIGN.md: filesystems, kernel
//! modules, the manifest, the daemons, then waits for a shutdown request.
//! Anywhere else it is a child subreaper that supervises the daemons named on
//! its command line (see `init::hostmode`), which is how it is tested.
//!
//! It never panics on purpose and never exits as PID 1: a failing step is
//! logged and the machine stays up, reaping, so it can be powered off.

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::LevelFilter;
use nix::sys::signalfd::SignalFd;
use nix::unistd::{getpid, Pid};

use init::cmdline::{Cmdline, CMDLINE_PATH, LOG_KEY};
use init::discover::{self, Found, LabelledDisk, Roots, DATA_LABEL};
use init::event_loop::{open_signalfd, EventLoop, Watch};
use init::hostmode::{CliError, HostOptions, USAGE};
use init::imds;
use init::logger::{self, uptime, MILESTONE};
use init::manifest::Manifest;
use init::modindex::{ModuleIndex, INDEX_PATH, MODULES_DIR};
use init::modules::{self, KernelKmod, Loader, SYS_ROOT};
use init::mounts;
use init::powerbutton::PowerButtons;
use init::seed::MountingReader;
use init::shutdown::{self, Mode, ShutdownKind};
use init::supervisor::{Backoff, DaemonSpec, Supervisor};

/// The network daemon, started first.
const NETD: &str = "/sbin/berth-netd";
/// The engine, started once the network is ready (or timed out).
const BERTHD: &str = "/sbin/berthd";
/// The daemons init starts, in order, and how long each may take to report.
const DAEMONS: [(&str, Duration); 2] = [
    (NETD, Duration::from_secs(10)),
    (BERTHD, Duration::from_secs(60)),
];
/// The manifest as init understood it, for the daemons.
const EFFECTIVE_MANIFEST: &str = "/run/berth/manifest.toml";
/// How long coldplug waits for devices that drivers probe asynchronously.
const COLDPLUG_SETTLE: Duration = Duration::from_millis(100);

fn main() {
    // The kernel runs /sbin/modprobe (a link to us) for modules it wants on
    // its own: crypto-crc32c for ext4, fs-overlay, netfilter pieces.
    if is_modprobe() {
        modprobe_main()
    }
    // Signals first, before any child exists: blocked and read from a signalfd.
    let signals = open_signalfd();
    logger::init(LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| log::error!("internal error: {info}")));
    // `--supervise-only` also makes a PID 1 in a container a plain supervisor.
    let supervise_only = std::env::args().skip(1).any(|a| a == "--supervise-only");
    let mode = if getpid().as_raw() == 1 && !supervise_only {
        Mode::Pid1
    } else {
        Mode::Host
    };
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot set up signal handling: {e}; only reaping from now on");
            reap_forever(mode)
        }
    };
    let (kind, daemons, grace) = match mode {
        Mode::Pid1 => guarded(&signals, boot),
        Mode::Host => guarded(&signals, host),
    };
    shutdown::stop_processes(mode, &daemons, grace, &signals, &mut |pid, status| {
        log::debug!("pid {pid} stopped ({status:?})");
    });
    shutdown::finish(kind, mode)
}

/// What a run ends with: the shutdown asked for, the daemons to stop first
/// (newest first) and the grace period.
type Outcome = (ShutdownKind, Vec<Pid>, Duration);

/// Runs `f`; if it panics, stays up with nothing but reaping and signals so
/// the machine can still be shut down cleanly.
fn guarded(signals: &SignalFd, f: fn(&SignalFd) -> Outcome) -> Outcome {
    if let Ok(outcome) = catch_unwind(AssertUnwindSafe(|| f(signals))) {
        return outcome;
    }
    log::error!(target: MILESTONE, "init failed; staying up so the machine can be powered off");
    loop {
        let idle = catch_unwind(AssertUnwindSafe(|| {
            let mut none = Supervisor::new(Vec::new(), Backoff::default());
            // The boot never completed: do not announce it now.
            let _ = none.take_boot_complete();
            let mut buttons = PowerButtons::default();
            buttons.rescan();
            // A named result: the loop's temporaries must drop before `none`.
            #[allow(clippy::let_and_return)]
            let kind = EventLoop {
                signals,
                supervisor: &mut none,
                buttons: &mut buttons,
                watch: None,
            }
            .run();
            kind
        }));
        if let Ok(kind) = idle {
            return (kind, Vec::new(), shutdown::DEFAULT_GRACE);
        }
    }
}

/// The boot sequence (DESIGN.md, "Boot, end to end"), then the main loop.
fn boot(signals: &SignalFd) -> Outcome {
    // 2. Filesystems, the console and the kernel log.
    mount_early();
    let cmdline = read_cmdline();
    install_modprobe_helper();
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        log::warn!("cannot route Ctrl-Alt-Del to init: {e}");
    }

    // 2. Kernel modules: coldplug now; the manifest's own list once it is known.
    let index = modules::read_index(Path::new(INDEX_PATH));
    check_release(index.as_ref());
    let empty = ModuleIndex::new("");
    let mut loader = Loader::new(
        index.as_ref().unwrap_or(&empty),
        Path::new(MODULES_DIR),
        KernelKmod,
    );
    coldplug(&mut loader);
    let mut buttons = PowerButtons::default();
    buttons.rescan();

    // 3. The manifest: the command line, disks, the image's own.
    let disks = discover::labelled_disks(&Roots::default());
    let found = {
        let mut seeds = MountingReader {
            load_modules: |names: &[&str]| {
                loader.load_names(names);
            },
        };
        discover::discover(&cmdline, &Roots::default(), &disks, &mut seeds)
    };
    // Nothing on the machine: the instance metadata service, once the
    // network is up.
    let ask_cloud = found.is_none() && cmdline.cloud_lookup();
    let (mut manifest, text) = match found {
        Some(found) => parse_found(found),
        None => {
            if ask_cloud {
                log::info!("no manifest on the command line, a disk or in the image");
            } else {
                log::info!(target: MILESTONE, "no manifest found");
            }
            (Manifest::default(), String::new())
        }
    };
    apply_system(&manifest, &mut loader);

    // 4. State: the data disk, or a tmpfs.
    mount_data(&disks, &mut loader);
    write_effective_manifest(&text);

    // 5. The daemons.
    let mut supervisor;
    if ask_cloud {
        supervisor = Supervisor::new(daemon_specs(&manifest, &[NETD]), Backoff::default());
        supervisor.start(Instant::now());
        let interrupted = EventLoop {
            signals,
            supervisor: &mut supervisor,
            buttons: &mut buttons,
            watch: None,
        }
        .run_until_settled();
        if let Some(kind) = interrupted {
            return (kind, supervisor.stop(), shutdown::DEFAULT_GRACE);
        }
        if let Some(found) = discover::from_metadata_service(imds::ADDRESS, imds::BUDGET) {
            let (cloud, text) = parse_found(found);
            apply_system(&cloud, &mut loader);
            write_effective_manifest(&text);
            if netd_reads_differently(&text)
                && supervisor.restart(&daemon_name(NETD), Instant::now())
            {
                log::info!("restarting berth-netd for the manifest's network settings");
            }
            manifest = cloud;
        } else {
            log::info!(target: MILESTONE, "no manifest found");
        }
        supervisor.extend(daemon_specs(&manifest, &[BERTHD]), Instant::now());
    } else {
        supervisor = Supervisor::new(daemon_specs(&manifest, &[NETD, BERTHD]), Backoff::default());
        supervisor.start(Instant::now());
    }

    // 7./8. Ready once the daemons report; then wait for a shutdown request,
    // watching for late devices (a power button appears after coldplug).
    let kind = EventLoop {
        signals,
        supervisor: &mut supervisor,
        buttons: &mut buttons,
        watch: Some(Watch {
            run: Box::new(|buttons: &mut PowerButtons| {
                let late =
                    loader.coldplug_pass(&|| modules::scan_sys_modaliases(Path::new(SYS_ROOT)));
                if !late.is_empty() {
                    log::info!("late coldplug loaded {}", late.join(" "));
                }
                buttons.rescan();
            }),
            every: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }),
    }
    .run();
    (
        kind,
        supervisor.stop(),
        shutdown::grace_for(manifest.workloads.values()),
    )
}

/// Host mode: supervise the daemons from the command line as a subreaper.
fn host(signals: &SignalFd) -> Outcome {
    let opts = match HostOptions::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(CliError::Help) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            std::process::exit(0)
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "berth-init: {e}\n{USAGE}");
            std::process::exit(2)
        }
    };
    log::set_max_level(opts.log);
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!("cannot become a child subreaper: {e}; orphans will not be reaped");
    }
    let backoff = Backoff::new(
        opts.backoff,
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    let mut supervisor = Supervisor::new(opts.daemons, backoff);
    supervisor.start(Instant::now());
    let kind = EventLoop {
        signals,
        supervisor: &mut supervisor,
        buttons: &mut PowerButtons::new(Path::new("/nonexistent"), Path::new("/nonexistent")),
        watch: None,
    }
    .run();
    (kind, supervisor.stop(), opts.grace)
}

/// Mounts `/proc`, `/sys` and `/dev`, makes sure fds 0-2 are the console,
/// says hello, then mounts the rest.
fn mount_early() {
    // Before any other mount, so the bind carries nothing along.
    let left = mounts::leave_rootfs();
    let specs = mounts::early_mounts();
    let (first, rest) = specs.split_at(3.min(specs.len()));
    for spec in first {
        if let Err(e) = mounts::mount_one(spec) {
            log::error!("{}", logger::chain(&e));
        }
    }
    logger::ensure_console_fds();
    logger::attach_kmsg();
    log::info!(target: MILESTONE, "init started uptime_ms={}", uptime().as_millis());
    match left {
        Ok(true) => log::debug!("/ is a bind mount of the initramfs (containers can pivot_root)"),
        Ok(false) => {}
        Err(e) => log::error!("{e}; containers will fail to pivot_root"),
    }
    for spec in rest {
        if let Err(e) = mounts::mount_one(spec) {
            log::error!("{}", logger::chain(&e));
        }
    }
    let (enabled, errors) = mounts::enable_controllers(Path::new(mounts::CGROUP_ROOT));
    for e in errors {
        log::warn!("{}", logger::chain(&e));
    }
    log::debug!("cgroup controllers for children: {}", enabled.join(" "));
}

fn read_cmdline() -> Cmdline {
    let cmdline = match std::fs::read_to_string(CMDLINE_PATH) {
        Ok(text) => {
            logger::attach_screen(&text);
            Cmdline::parse(&text)
        }
        Err(e) => {
            log::warn!("cannot read {CMDLINE_PATH}: {e}");
            Cmdline::default()
        }
    };
    if let Some(level) = cmdline.get(LOG_KEY) {
        match logger::parse_level(level) {
            Some(level) => log::set_max_level(level),
            None => log::warn!("{LOG_KEY}={level} is not a log level"),
        }
    }
    cmdline
}

fn check_release(index: Option<&ModuleIndex>) {
    let (Some(index), Ok(uname)) = (index, nix::sys::utsname::uname()) else {
        return;
    };
    let running = uname.release().to_string_lossy();
    if index.kernel_release() != running {
        log::warn!(
            "module index is for kernel {} but {running} is running; modules may not load",
            index.kernel_release()
        );
    }
}

fn coldplug(loader: &mut Loader<'_, KernelKmod>) {
    let start = Instant::now();
    let scan = || modules::scan_sys_modaliases(Path::new(SYS_ROOT));
    let report = loader.coldplug(&scan, COLDPLUG_SETTLE);
    log::info!(
        "coldplug: {} modules for {} devices in {}ms ({} passes)",
        report.loaded.len(),
        report.devices,
        start.elapsed().as_millis(),
        report.passes
    );
    log::debug!("coldplug loaded: {}", report.loaded.join(" "));
}

/// Validates a manifest that was found. An invalid one is reported and
/// replaced by an empty one: boot goes on with no workloads.
fn parse_found(found: Found) -> (Manifest, String) {
    log::info!(target: MILESTONE, "manifest from {}", found.source);
    match Manifest::parse(&found.text, &found.source.origin()) {
        Ok(manifest) => (manifest, found.text),
        Err(e) => {
            log::error!(target: MILESTONE, "manifest error: {e}");
            (Manifest::default(), String::new())
        }
    }
}

/// Whether berth-netd takes something from manifest `text` (its
/// `[network]`, or a host name that DHCP must then not set) that an empty
/// manifest lacks, so a netd started without it must be restarted.
fn netd_reads_differently(text: &str) -> bool {
    netd::manifest::parse(text, EFFECTIVE_MANIFEST)
        .is_ok_and(|c| c != netd::manifest::NetdConfig::default())
}

/// `[system]`: host name, sysctls, extra modules.
fn apply_system(manifest: &Manifest, loader: &mut Loader<'_, KernelKmod>) {
    let hostname = manifest.hostname();
    match nix::unistd::sethostname(hostname) {
        Ok(()) => log::info!("hostname set to {hostname}"),
        Err(e) => log::warn!("cannot set the host name to {hostname:?}: {e}"),
    }
    let sysctl: BTreeMap<String, String> = manifest
        .system
        .sysctl
        .iter()
        .map(|(k, v)| (k.0.clone(), v.0.clone()))
        .collect();
    for e in init::sysctl::apply(Path::new("/proc/sys"), &sysctl) {
        log::warn!("{}", logger::chain(&e));
    }
    let names: Vec<&str> = manifest
        .system
        .modules
        .iter()
        .map(|m| m.0.as_str())
        .collect();
    if !names.is_empty() {
        let loaded = loader.load_names(&names);
        log::info!("manifest modules: loaded {}", loaded.join(" "));
    }
}

fn mount_data(disks: &[LabelledDisk], loader: &mut Loader<'_, KernelKmod>) {
    let device = discover::disk_with_label(disks, DATA_LABEL).map(|d| d.device.as_path());
    if device.is_some() {
        loader.load_names(&["ext4"]);
    }
    match mounts::mount_data(device) {
        Ok(what) => log::info!("{} is {what}", mounts::DATA_DIR),
        Err(e) => log::error!("{}", logger::chain(&e)),
    }
}

/// The daemons read the manifest init settled on (empty if none or invalid).
fn write_effective_manifest(text: &str) {
    let path = Path::new(EFFECTIVE_MANIFEST);
    let result = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)?
                .write_all(text.as_bytes())
        });
    if let Err(e) = result {
        log::error!("cannot write {EFFECTIVE_MANIFEST}: {e}");
    }
}

/// The daemons at `paths` that are in the image, in [`DAEMONS`] order.
fn daemon_specs(manifest: &Manifest, paths: &[&str]) -> Vec<DaemonSpec> {
    let mut specs = Vec::new();
    for (path, timeout) in DAEMONS.iter().filter(|(p, _)| paths.contains(p)) {
        if PathBuf::from(path).exists() {
            specs.push(DaemonSpec::new(
                *path,
                daemon_args(path, manifest),
                *timeout,
            ));
        } else {
            log::info!("{path} is not installed");
        }
    }
    if paths.contains(&BERTHD) && !Path::new(BERTHD).exists() && !manifest.workloads.is_empty() {
        log::warn!(
            target: MILESTONE,
            "{} declared workloads not started: no engine is installed ({BERTHD})",
            manifest.workloads.len()
        );
    }
    specs
}

/// The supervisor's name for the daemon at `path` (its file name).
fn daemon_name(path: &str) -> String {
    DaemonSpec::new(path, Vec::new(), Duration::ZERO).name
}

/// The command line init gives the daemon at `path`.
fn daemon_args(path: &str, manifest: &Manifest) -> Vec<String> {
    let mut args = vec!["--config".to_string(), EFFECTIVE_MANIFEST.to_string()];
    if path == BERTHD && manifest.system.console_logs {
        // The workloads' output on the console, `name | line`.
        args.push("--console-logs".to_string());
    }
    args
}

/// Whether we were started as `modprobe` (by the kernel's request_module).
fn is_modprobe() -> bool {
    std::env::args_os()
        .next()
        .is_some_and(|a| Path::new(&a).file_name().is_some_and(|n| n == "modprobe"))
}

/// `modprobe [-q] [--] NAME...`: loads each name or alias from the index.
fn modprobe_main() -> ! {
    logger::init(LevelFilter::Warn);
    logger::attach_kmsg();
    let Some(index) = modules::read_index(Path::new(INDEX_PATH)) else {
        std::process::exit(1)
    };
    let mut loader = Loader::new(&index, Path::new(MODULES_DIR), KernelKmod);
    let mut ok = true;
    for request in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
        if !loader.modprobe(&request) {
            log::debug!("modprobe: nothing provides {request:?}");
            ok = false;
        }
    }
    std::process::exit(if ok { 0 } else { 1 })
}

/// Points the kernel's module helper (`/proc/sys/kernel/modprobe`, default
/// `/sbin/modprobe`) at this binary.
fn install_modprobe_helper() {
    const HELPER: &str = "/sbin/modprobe";
    let me = match std::fs::read_link("/proc/self/exe") {
        Ok(p) => p,
        Err(e) => {
            log::warn!("cannot find my own executable: {e}; no modprobe helper");
            return;
        }
    };
    if std::fs::symlink_metadata(HELPER).is_err() {
        let made =
            std::fs::create_dir_all("/sbin").and_then(|()| std::os::unix::fs::symlink(&me, HELPER));
        if let Err(e) = made {
            log::warn!("cannot link {HELPER} to {}: {e}", me.display());
            return;
        }
    }
    if let Err(e) = std::fs::write("/proc/sys/kernel/modprobe", HELPER) {
        log::debug!("cannot set /proc/sys/kernel/modprobe: {e}");
    }
}

/// Last resort when signals cannot be handled: reap forever (PID 1) or exit.
fn reap_forever(mode: Mode) -> ! {
    if mode == Mode::Host {
        std::process::exit(1)
    }
    loop {
        match nix::sys::wait::wait() {
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berthd_mirrors_workload_output_only_when_the_manifest_asks() {
        let quiet = Manifest::parse("[system]\n", "m.toml").unwrap();
        assert_eq!(
            daemon_args(BERTHD, &quiet),
            ["--config", EFFECTIVE_MANIFEST]
        );
        let loud = Manifest::parse("[system]\nconsole_logs = true\n", "m.toml").unwrap();
        assert_eq!(
            daemon_args(BERTHD, &loud),
            ["--config", EFFECTIVE_MANIFEST, "--console-logs"]
        );
        assert_eq!(daemon_args(NETD, &loud), ["--config", EFFECTIVE_MANIFEST]);
    }

    #[test]
    fn netd_restarts_only_for_what_it_reads() {
        assert!(!netd_reads_differently(""));
        assert!(!netd_reads_differently(
            "[system]\nmodules = [\"overlay\"]\n[workloads.web]\nimage = \"busybox\"\n"
        ));
        assert!(netd_reads_differently("[system]\nhostname = \"x\"\n"));
        assert!(netd_reads_differently(
            "[network]\n[[network.interface]]\nname = \"eth0\"\ndhcp = true\n"
        ));
        assert_eq!(daemon_name(NETD), "berth-netd");
    }
}
