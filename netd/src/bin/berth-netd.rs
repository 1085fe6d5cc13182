//! `berth-netd`: brings up the network from the boot manifest's `[network]`
//! section (DHCP on every physical NIC without one), tells init when it is
//! up, and keeps leases renewed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use netd::daemon::{self, Options};
use netd::dhcp::store::DEFAULT_STATE_DIR;
use netd::readiness::Notifier;

/// berth's network daemon.
#[derive(Parser, Debug)]
#[command(name = "berth-netd", version)]
struct Cli {
    /// The boot manifest, or a file with just a [network] table. Without
    /// it (or without [network]), every physical NIC gets DHCP.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to write the resolver configuration.
    #[arg(long, value_name = "PATH", default_value = netd::resolv::DEFAULT_PATH)]
    resolv_conf: PathBuf,
    /// Where to remember leases between runs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Set the host name from DHCP. Ignored when the manifest's
    /// [system].hostname is set.
    #[arg(long)]
    set_hostname: bool,
    /// Seconds to wait for every interface before reporting readiness with
    /// the interfaces that are configured.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    ready_timeout: u64,
    /// Where to look for physical NICs (tests point it elsewhere).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/sys/class/net",
        hide = true
    )]
    class_net: PathBuf,
    /// Log debugging detail (each DHCP message).
    #[arg(short, long)]
    verbose: bool,
}

struct Logger {
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level && m.target().starts_with("netd")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                _ => "",
            };
            eprintln!("berth-netd: {level}{}", record.args());
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    // Take the readiness fd before anything else can open a file on it.
    let notifier = Notifier::from_env();
    let cli = Cli::parse();
    let level = if cli.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let logger: &'static Logger = Box::leak(Box::new(Logger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }

    let file = match &cli.config {
        Some(path) => match netd::manifest::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("berth-netd: config error: {}", netd::iface::error_chain(&e));
                return ExitCode::from(2);
            }
        },
        None => netd::manifest::NetdConfig::default(),
    };
    let set_hostname = cli.set_hostname && file.hostname.is_none();
    let opts = Options {
        config: file.network,
        resolv_conf: cli.resolv_conf,
        state_dir: cli.state_dir,
        set_hostname,
        class_net: cli.class_net,
        ready_timeout: Duration::from_secs(cli.ready_timeout),
    };
    match run(opts, notifier) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-netd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Options, notifier: Notifier) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(daemon::run(opts, notifier))
        .map_err(|e| anyhow::anyhow!(netd::iface::error_chain(&e)))
}
