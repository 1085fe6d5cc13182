//! `berth-build`: turns a boot manifest and a kernel into boot artifacts
//! (`vmlinuz`, `initrd.img`, `cmdline`) and boots them under QEMU.

mod accel;
mod cache;
mod cpio;
mod disk;
mod elf;
mod image;
mod initrd;
mod kernel;
mod media;
mod modinfo;
mod modset;
mod qemu;
mod qmp;
#[cfg(test)]
mod testkernel;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

/// Builds and boots berth appliance images.
#[derive(Parser)]
#[command(name = "berth-build", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks a boot manifest; prints `file:line:col: message` and exits 1 if it is invalid.
    Validate {
        /// The manifest (TOML).
        manifest: PathBuf,
    },
    /// Writes boot artifacts in DIR: by default vmlinuz, initrd.img and
    /// cmdline; with --format also berth.iso, berth.img (raw), berth.qcow2,
    /// berth.vmdk, berth.vdi, berth.vhd.
    Build {
        /// The manifest (TOML), validated and baked in at
        /// /etc/berth/manifest.toml. Without one the image looks for it at
        /// boot: the kernel command line, a disk, the cloud's user-data.
        manifest: Option<PathBuf>,
        /// Output directory.
        #[arg(short, long, value_name = "DIR")]
        out: PathBuf,
        /// What to write, comma-separated: kernel (vmlinuz + initrd.img +
        /// cmdline), iso, raw, qcow2, vmdk, vdi, vhd.
        #[arg(long, value_name = "LIST", default_value = "kernel")]
        format: String,
        /// The kernel command line the media boot with (written to cmdline).
        #[arg(long, value_name = "CMDLINE", default_value = image::DEFAULT_CMDLINE)]
        cmdline: String,
        /// A bzImage kernel (needs --modules). Default: Debian's linux-image-amd64.
        #[arg(
            long,
            value_name = "BZIMAGE",
            requires = "modules",
            conflicts_with = "kernel_deb"
        )]
        kernel: Option<PathBuf>,
        /// The kernel's lib/modules/<release> directory.
        #[arg(long, value_name = "DIR", requires = "kernel")]
        modules: Option<PathBuf>,
        /// A linux-image-*.deb to take the kernel and modules from.
        #[arg(long, value_name = "FILE")]
        kernel_deb: Option<PathBuf>,
        /// Where berth-init (required), berth-netd, berthd and berth are.
        /// Default: the directory of this executable.
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Adds a host file or directory to the image.
        #[arg(long, value_name = "SRC:DEST")]
        include: Vec<String>,
        /// Leaves an optional binary (berth-netd, berthd, berth) out of the
        /// image, e.g. to put your own at its path with --include.
        #[arg(long, value_name = "NAME")]
        without: Vec<String>,
        /// Bakes an image archive (docker save, OCI archive; .tar, .tar.gz,
        /// .tar.zst) into the image; berthd loads it at boot (repeatable).
        #[arg(long, value_name = "FILE")]
        image: Vec<PathBuf>,
    },
    /// Writes an ext4 data disk labelled berth-data (berthd's state; init
    /// reads a manifest at its root), for `run --disk`.
    Disk {
        /// The image file.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// Its size, like 64M or 1G.
        #[arg(long, value_name = "SIZE")]
        size: String,
        /// A boot manifest, validated and put at /manifest.toml.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Boots DIR (made by `build`) in QEMU with the serial console on stdio.
    Run {
        /// The directory `build` wrote.
        dir: PathBuf,
        /// Accelerator; `auto` probes KVM once per host boot and falls back to TCG.
        #[arg(long, value_enum, default_value = "auto")]
        accel: accel::Choice,
        /// Guest memory in MiB.
        #[arg(long, value_name = "MB", default_value_t = 512)]
        memory: u32,
        /// Guest CPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// A raw disk image, attached as virtio-blk (repeatable).
        #[arg(long, value_name = "FILE")]
        disk: Vec<PathBuf>,
        /// Forwards 127.0.0.1:HOSTPORT to the guest (repeatable; add /udp for UDP).
        #[arg(long, value_name = "HOSTPORT:GUESTPORT")]
        forward: Vec<String>,
        /// Appended to the kernel command line.
        #[arg(long, value_name = "EXTRA")]
        cmdline: Option<String>,
        /// Also serve QMP on this unix socket.
        #[arg(long, value_name = "PATH")]
        qmp: Option<PathBuf>,
        /// End QEMU when the guest reboots (or panics) instead of restarting it.
        #[arg(long)]
        no_reboot: bool,
        /// Power the guest off cleanly once its console shows `berth: ready` (CI, scripted demos).
        #[arg(long)]
        power_off_when_ready: bool,
        /// Runs a host shell command once the guest is ready (e.g. `curl` a
        /// forwarded port); with --power-off-when-ready, powers off after
        /// it, and a failing command makes the run fail.
        #[arg(long, value_name = "COMMAND")]
        when_ready: Option<String>,
    },
    /// Prints the accelerator `run --accel auto` uses: kvm or tcg.
    Accel {
        /// Kernel to probe with. Default: Debian's, from the cache.
        #[arg(long, value_name = "BZIMAGE")]
        kernel: Option<PathBuf>,
    },
    /// Fetches Debian's linux-image-amd64 into the cache (if not there) and prints its directory.
    Kernel,
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-build: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { manifest } => match init::manifest::Manifest::load(&manifest) {
            Ok(m) => {
                println!(
                    "{}: valid ({} workloads)",
                    manifest.display(),
                    m.workloads.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Build {
            manifest,
            out,
            format,
            cmdline,
            kernel,
            modules,
            kernel_deb,
            bin_dir,
            include,
            without,
            image,
        } => {
            let kernel = match (kernel, modules, kernel_deb) {
                (Some(image), Some(modules), None) => kernel::Source::Files { image, modules },
                (None, None, Some(deb)) => kernel::Source::Deb(deb),
                (None, None, None) => kernel::Source::Debian,
                _ => bail!("give either --kernel with --modules, or --kernel-deb"),
            };
            let bin_dir = match bin_dir {
                Some(dir) => dir,
                None => std::env::current_exe()
                    .context("cannot find the berth-build executable (give --bin-dir)")?
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
            };
            let request = image::Request {
                manifest,
                out,
                kernel,
                bin_dir,
                includes: include
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?,
                without,
                images: image,
                mtime: source_date_epoch()?,
                formats: media::parse_formats(&format).map_err(anyhow::Error::msg)?,
                cmdline,
            };
            let report = image::build(&request)?;
            for name in &report.skipped {
                eprintln!(
                    "berth-build: warning: kernel {} has no module {name}; skipped",
                    report.release
                );
            }
            eprintln!(
                "berth-build: wrote {}: kernel {}, {} modules, {} ({}){}, initrd.img {} KiB",
                request.out.display(),
                report.release,
                report.modules,
                report.binaries.join(" "),
                request.bin_dir.display(),
                if report.images.is_empty() {
                    String::new()
                } else {
                    format!(", images {}", report.images.join(" "))
                },
                report.initrd_bytes.div_ceil(1024)
            );
            for (path, size) in &report.artifacts {
                eprintln!("berth-build:   {} ({size} bytes)", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Disk {
            out,
            size,
            manifest,
            force,
        } => {
            let request = disk::Request {
                out,
                size,
                manifest,
                force,
            };
            let size = disk::make(&request)?;
            eprintln!(
                "berth-build: wrote {}: ext4 labelled {}, {size}{}",
                request.out.display(),
                disk::LABEL,
                if request.manifest.is_some() {
                    ", with /manifest.toml"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            dir,
            accel,
            memory,
            cpus,
            disk,
            forward,
            cmdline,
            qmp,
            no_reboot,
            power_off_when_ready,
            when_ready,
        } => {
            let options = qemu::Options {
                dir,
                accel,
                memory_mb: memory,
                cpus,
                disks: disk,
                forwards: forward
                    .iter()
                    .map(|f| f.parse())
                    .collect::<Result<_, _>>()?,
                cmdline,
                qmp,
                no_reboot,
                power_off_when_ready,
                when_ready,
            };
            let status = qemu::run(&options)?;
            Ok(ExitCode::from(
                u8::try_from(qemu::exit_code(status)).unwrap_or(1),
            ))
        }
        Command::Accel { kernel } => {
            let kernel = match kernel {
                Some(k) => k,
                None => kernel::resolve(&kernel::Source::Debian)?.image,
            };
            println!("{}", accel::choose(accel::Choice::Auto, &kernel)?.name());
            Ok(ExitCode::SUCCESS)
        }
        Command::Kernel => {
            let cache = cache::dir()?;
            let root = kernel::unpack(&kernel::fetch_debian(&cache)?, &cache)?;
            kernel::from_root(&root)?;
            println!("{}", root.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Archive mtimes: `$SOURCE_DATE_EPOCH` (reproducible-builds.org), else 0.
fn source_date_epoch() -> anyhow::Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds that fits in 32 bits")
        }),
        _ => Ok(0),
    }
}
