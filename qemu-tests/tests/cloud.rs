//! The manifest from the cloud: a NoCloud `cidata` seed ISO on a CD-ROM,
//! and an EC2-style instance metadata service (IMDSv2) that this test
//! serves on 127.0.0.1 and QEMU's user network puts at 169.254.169.254:80
//! inside the guest (`guestfwd`, through the `tcp-stdio` helper). A seed
//! holding cloud-init's `#cloud-config` is named on the console and skipped.
//!
//! The guests boot a generic image: one built without a manifest, which is
//! the only kind that asks the metadata service.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use qemu_tests::{Guest, Image};

/// From QEMU start to `berth: ready` under TCG on two shared cores.
const READY: Duration = Duration::from_secs(120);
const READY_LINE: &str = r"berth: ready uptime_ms=(\d+) workloads=(\d+)$";

/// The EC2 session token the test's metadata service hands out.
const TOKEN: &str = "berth-test-token-6f1c";

/// QEMU's user network with the guest cut off from the host's network
/// (slirp still answers DHCP): a generic image asks 169.254.169.254, which
/// must reach only what a test serves, never the host's own surroundings.
const ISOLATED: &str = "restrict=on";

/// An image built without a manifest, the only kind that asks the
/// metadata service; built once, shared by the tests.
fn generic_image() -> Result<Image> {
    static GENERIC: OnceLock<Result<Image, String>> = OnceLock::new();
    GENERIC
        .get_or_init(|| Image::build_generic("cloud-generic", &[]).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| anyhow!("cannot build the generic image: {e}"))
}

/// A NoCloud seed ISO (volume id `cidata`, Joliet and Rock Ridge, as
/// cloud-localds makes it) holding `user-data` and a `meta-data`.
fn seed_iso(dir: &Path, user_data: &str) -> Result<PathBuf> {
    let content = dir.join("seed");
    std::fs::create_dir_all(&content)?;
    std::fs::write(content.join("user-data"), user_data)?;
    std::fs::write(content.join("meta-data"), "instance-id: berth-test\n")?;
    let iso = dir.join("seed.iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o"])
        .arg(&iso)
        .arg(&content)
        .output()
        .context("cannot run xorriso (scripts/setup.sh installs it)")?;
    ensure!(
        out.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(iso)
}

#[test]
fn manifest_from_a_nocloud_seed_on_a_cdrom() -> Result<()> {
    let image = generic_image()?;
    let dir = tempfile::tempdir()?;
    let iso = seed_iso(dir.path(), "[system]\nhostname = \"from-nocloud\"\n")?;
    let mut guest = Guest::from_image(&image)
        .user_net_options(ISOLATED)
        .qemu_arg("-drive")
        .qemu_arg(&format!(
            "file={},format=raw,if=ide,media=cdrom,readonly=on",
            iso.display()
        ))
        .boot()?;
    guest.expect_console(r"berth: manifest from nocloud:/dev/sr0:/user-data$", READY)?;
    guest.expect_console(r"hostname set to from-nocloud$", READY)?;
    let ready = guest.expect_console(READY_LINE, READY)?;
    eprintln!("ready after {:.1?} wall", guest.elapsed());
    assert_eq!(ready.get(2), Some("0"), "{}", ready.text());
    // A manifest was found on the machine: the metadata service is not asked.
    let console = guest.console();
    ensure!(
        !console.contains("metadata service"),
        "the metadata service was asked although a seed had the manifest; console in {}",
        guest.record_failure().display()
    );
    Ok(())
}

/// An OpenStack config drive as a FAT disk (label `config-2`, the form
/// Nova writes with `config_drive_format=vfat`): the manifest at
/// `openstack/latest/user_data`. Checks the FAT label probe, the vfat
/// modules (nls_ascii is Debian's default iocharset) and the config-2 path.
#[test]
fn manifest_from_a_fat_config_drive() -> Result<()> {
    let image = generic_image()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("config-2.img");
    let user_data = dir.path().join("user_data");
    std::fs::write(&user_data, "[system]\nhostname = \"from-config-drive\"\n")?;
    let run = |program: &str, args: &[&str]| -> Result<()> {
        let out = Command::new(program)
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(args)
            .output()
            .with_context(|| format!("cannot run {program} (scripts/setup.sh installs it)"))?;
        ensure!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let d = disk.to_string_lossy();
    run("mkfs.vfat", &["-n", "config-2", "-C", &d, "8192"])?;
    run("mmd", &["-i", &d, "::/openstack", "::/openstack/latest"])?;
    run(
        "mcopy",
        &[
            "-i",
            &d,
            &user_data.to_string_lossy(),
            "::/openstack/latest/user_data",
        ],
    )?;
    let mut guest = Guest::from_image(&image)
        .user_net_options(ISOLATED)
        .disk_read_only(&disk)
        .boot()?;
    guest.expect_console(
        r"berth: manifest from config-drive:/dev/vda:/openstack/latest/user_data$",
        READY,
    )?;
    guest.expect_console(r"hostname set to from-config-drive$", READY)?;
    guest.expect_console(READY_LINE, READY)?;
    Ok(())
}

/// What the metadata service saw: each request's first line and its
/// `X-aws-ec2-metadata-token`, in arrival order.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// An IMDSv2 service on 127.0.0.1: `PUT /latest/api/token` (with a TTL
/// header) gives [`TOKEN`]; `GET /latest/user-data` gives `user_data` with
/// that token and 401 without it; everything else is 404.
fn serve_imds(user_data: &'static str) -> Result<(u16, Seen)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let log = Arc::clone(&log);
            std::thread::spawn(move || answer(conn, user_data, &log));
        }
    });
    Ok((port, seen))
}

fn answer(mut conn: TcpStream, user_data: &str, seen: &Seen) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let first = head.lines().next().unwrap_or("").to_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let token = header("X-aws-ec2-metadata-token");
    if let Ok(mut log) = seen.lock() {
        log.push((first.clone(), token.clone()));
    }
    let (status, body) = if first.starts_with("PUT /latest/api/token ")
        && header("X-aws-ec2-metadata-token-ttl-seconds").is_some()
    {
        ("200 OK", TOKEN)
    } else if first.starts_with("GET /latest/user-data ") {
        if token.as_deref() == Some(TOKEN) {
            ("200 OK", user_data)
        } else {
            ("401 Unauthorized", "")
        }
    } else {
        ("404 Not Found", "")
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The guest side of QEMU's (isolated) user network moved to
/// 169.254.169.0/24, with 169.254.169.254:80 forwarded to 127.0.0.1:`port`
/// by `tcp-stdio`.
fn metadata_network(port: u16) -> String {
    let helper = env!("CARGO_BIN_EXE_tcp-stdio");
    format!(
        "{ISOLATED},net=169.254.169.0/24,\
         guestfwd=tcp:169.254.169.254:80-cmd:{helper} 127.0.0.1:{port}"
    )
}

#[test]
fn manifest_from_the_metadata_service_after_cloud_config_on_a_seed() -> Result<()> {
    let image = generic_image()?;
    let (port, seen) = serve_imds("[system]\nhostname = \"from-imds\"\n")?;
    let dir = tempfile::tempdir()?;
    let iso = seed_iso(dir.path(), "#cloud-config\nhostname: from-cloud-init\n")?;
    let mut guest = Guest::from_image(&image)
        .user_net_options(&metadata_network(port))
        .disk_read_only(&iso)
        .boot()?;
    // The seed's cloud-init user-data is named and skipped...
    guest.expect_console(
        r"berth: user-data from nocloud:/dev/vda:/user-data is a #cloud-config document, not a berth manifest \(TOML\); ignored$",
        READY,
    )?;
    // ...and with no manifest baked in, the network comes up first and the
    // metadata service is asked.
    guest.expect_console(r"berth: berth-netd ready$", READY)?;
    guest.expect_console(r"berth: manifest from imds:ec2$", READY)?;
    guest.expect_console(r"hostname set to from-imds$", READY)?;
    // netd read no host name at first (DHCP could have set one): it is
    // restarted with the manifest, and the engine waits for it again.
    guest.expect_console(
        r"restarting berth-netd for the manifest's network settings$",
        READY,
    )?;
    guest.expect_console(r"berth: berth-netd ready$", READY)?;
    let ready = guest.expect_console(READY_LINE, READY)?;
    eprintln!("ready after {:.1?} wall", guest.elapsed());
    assert_eq!(ready.get(2), Some("0"), "{}", ready.text());

    let requests = seen.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let put = requests
        .iter()
        .position(|(line, _)| line.starts_with("PUT /latest/api/token "));
    let get = requests.iter().position(|(line, token)| {
        line.starts_with("GET /latest/user-data ") && token.as_deref() == Some(TOKEN)
    });
    match (put, get) {
        (Some(put), Some(get)) if put < get => {}
        _ => bail!(
            "expected PUT /latest/api/token, then GET /latest/user-data with its token; \
             the service saw {requests:#?}; console in {}",
            guest.record_failure().display()
        ),
    }
    Ok(())
}

#[test]
fn without_a_metadata_service_a_generic_image_boots_on_quickly() -> Result<()> {
    let image = generic_image()?;
    // 169.254.169.254 is on the guest's link, and nothing answers for it
    // (slirp answers ARP only for its own addresses and forwards): the
    // connection attempt times out, as on a network that drops it.
    let mut guest = Guest::from_image(&image)
        .user_net_options(&format!("{ISOLATED},net=169.254.169.0/24"))
        .boot()?;
    let netd = guest.expect_console(r"^\[\s*(\d+)\.(\d+)\] berth: berth-netd ready$", READY)?;
    let asked = guest.expect_console(
        r"^\[\s*(\d+)\.(\d+)\] info .*no instance metadata service: .*$",
        READY,
    )?;
    let millis = |m: &qemu_tests::Matched| -> Result<u64> {
        let secs: u64 = m.parse(1).context("seconds")?;
        let ms: u64 = m.parse(2).context("milliseconds")?;
        Ok(secs * 1000 + ms)
    };
    let took = millis(&asked)? - millis(&netd)?;
    eprintln!("metadata lookup: {took} ms ({})", asked.text());
    // The budget is 3 s; TCG's slow guest gets room for the work around
    // the lookup, and a lookup that cost the budget twice still fails.
    ensure!(
        took <= 5000,
        "asking for a metadata service that is not there took {took} ms (budget 3 s)"
    );
    guest.expect_console(r"berth: no manifest found$", READY)?;
    let ready = guest.expect_console(READY_LINE, READY)?;
    assert_eq!(ready.get(2), Some("0"), "{}", ready.text());
    Ok(())
}

/// `berth.cloud=off`: a generic image next to a working metadata service
/// does not ask it.
#[test]
fn berth_cloud_off_skips_the_metadata_service() -> Result<()> {
    let image = generic_image()?;
    let (port, seen) = serve_imds("[system]\nhostname = \"from-imds\"\n")?;
    let mut guest = Guest::from_image(&image)
        .user_net_options(&metadata_network(port))
        .append_cmdline("berth.cloud=off")
        .boot()?;
    guest.expect_console(r"berth: no manifest found$", READY)?;
    guest.expect_console(READY_LINE, READY)?;
    let asked = seen.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    ensure!(
        asked.is_empty(),
        "the metadata service was asked: {asked:?}"
    );
    ensure!(
        !guest.console().contains("from-imds"),
        "the metadata service's manifest was applied"
    );
    Ok(())
}
