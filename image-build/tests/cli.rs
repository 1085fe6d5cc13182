//! berth-build as a user runs it: exit codes, error lines, and the initramfs
//! it writes from the real Debian kernel.

#[path = "../src/testkernel.rs"]
mod testkernel;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use init::modindex::ModuleIndex;

const BERTH_BUILD: &str = env!("CARGO_BIN_EXE_berth-build");

const MANIFEST: &str = r#"[system]
hostname = "t"
modules = ["overlay"]
"#;

fn berth_build(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BERTH_BUILD)
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A bin dir whose berth-init is busybox (a static ELF, which is all the
/// builder checks).
fn bin_dir(root: &Path) -> PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("berth-init"))
        .expect("busybox-static must be installed");
    bin
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// `build` against the real kernel tree, with extra arguments.
fn build(manifest: &Path, out: &Path, bin: &Path, extra: &[&str]) -> Output {
    build_with(Some(manifest), out, bin, extra)
}

/// `build` with the test kernel; `manifest` none bakes no manifest.
fn build_with(manifest: Option<&Path>, out: &Path, bin: &Path, extra: &[&str]) -> Output {
    use std::ffi::OsString;
    let mut args: Vec<OsString> = vec!["build".into()];
    if let Some(m) = manifest {
        args.push(m.into());
    }
    let common: [OsString; 8] = [
        "-o".into(),
        out.into(),
        "--kernel".into(),
        testkernel::vmlinuz().into(),
        "--modules".into(),
        testkernel::modules_dir().into(),
        "--bin-dir".into(),
        bin.into(),
    ];
    args.extend(common);
    args.extend(extra.iter().map(Into::into));
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    berth_build(&refs)
}

/// Decompresses an initrd.img and lists it with GNU cpio.
fn list(initrd: &Path) -> (Vec<u8>, Vec<String>) {
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(initrd).unwrap())
        .read_to_end(&mut cpio)
        .unwrap();
    let mut child = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cpio (Debian package cpio) must be installed");
    child.stdin.take().unwrap().write_all(&cpio).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let names = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (cpio, names)
}

/// Extracts one member's contents from a newc archive with GNU cpio.
fn extract(cpio: &[u8], member: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("cpio")
        .args(["-i", "-d", "--quiet", member])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(cpio).unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read(dir.path().join(member)).unwrap()
}

#[test]
fn validate_accepts_a_good_manifest_and_points_at_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir.path().join("good.toml"), MANIFEST);
    let out = berth_build(&[]);
    assert!(!out.status.success(), "no subcommand must fail");

    let out = berth_build(&["validate".as_ref(), good.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let bad = write(
        &dir.path().join("bad.toml"),
        "[system]\nhostname = \"t\"\nfrobnicate = 1\n",
    );
    let out = berth_build(&["validate".as_ref(), bad.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("{}:3:1: ", bad.display())) && first.contains("frobnicate"),
        "{err}"
    );

    let missing = dir.path().join("nope.toml");
    let out = berth_build(&["validate".as_ref(), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope.toml"), "{}", stderr(&out));
}

#[test]
fn build_names_a_missing_berth_init_and_bad_includes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(&dir.path().join("m.toml"), MANIFEST);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = build(&manifest, &dir.path().join("out"), &empty, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{}/berth-init does not exist", empty.display())),
        "{}",
        stderr(&out)
    );

    let bin = bin_dir(dir.path());
    let out = build(
        &manifest,
        &dir.path().join("out"),
        &bin,
        &["--include", "no-colon"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--include \"no-colon\" is not SRC:DEST"),
        "{}",
        stderr(&out)
    );

    let gone = dir.path().join("gone");
    let arg = format!("{}:/srv/x", gone.display());
    let out = build(
        &manifest,
        &dir.path().join("out"),
        &bin,
        &["--include", &arg],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "--include source {} does not exist",
            gone.display()
        )),
        "{}",
        stderr(&out)
    );

    let arg = format!("{}:/init", manifest.display());
    let out = build(
        &manifest,
        &dir.path().join("out"),
        &bin,
        &["--include", &arg],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("collides with /init from berth-init"),
        "{}",
        stderr(&out)
    );

    // Only optional binaries can be left out; a stand-in then takes the path.
    let out = build(
        &manifest,
        &dir.path().join("out"),
        &bin,
        &["--without", "berth-init"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--without \"berth-init\": only optional binaries can be left out"),
        "{}",
        stderr(&out)
    );

    // A dynamically linked berth-init would not start without a libc.
    std::fs::copy(
        std::fs::canonicalize("/bin/sh").unwrap(),
        bin.join("berth-init"),
    )
    .unwrap();
    let out = build(&manifest, &dir.path().join("out"), &bin, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is dynamically linked"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn build_names_a_missing_kernel_and_a_missing_tool() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir(dir.path());
    let manifest = write(&dir.path().join("m.toml"), MANIFEST);
    let gone = dir.path().join("vmlinuz-gone");
    let out = berth_build(&[
        "build".as_ref(),
        manifest.as_os_str(),
        "-o".as_ref(),
        dir.path().join("out").as_os_str(),
        "--kernel".as_ref(),
        gone.as_os_str(),
        "--modules".as_ref(),
        testkernel::modules_dir().as_os_str(),
        "--bin-dir".as_ref(),
        bin.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("kernel image {} does not exist", gone.display())),
        "{}",
        stderr(&out)
    );

    // Unpacking a .deb needs dpkg-deb; without it on PATH the error says
    // which Debian package to install.
    let deb = write(&dir.path().join("linux-image-x_1_amd64.deb"), "not really");
    let out = Command::new(BERTH_BUILD)
        .arg("build")
        .arg(&manifest)
        .arg("-o")
        .arg(dir.path().join("out"))
        .arg("--kernel-deb")
        .arg(&deb)
        .arg("--bin-dir")
        .arg(&bin)
        .env("PATH", dir.path().join("empty-path"))
        .env("BERTH_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("dpkg-deb is not installed (apt-get install dpkg)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn build_reports_bad_manifests_and_unknown_modules() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir(dir.path());
    let bad = write(
        &dir.path().join("bad.toml"),
        "[system]\nmodules = [\"overlay\", 3]\n",
    );
    let out = build(&bad, &dir.path().join("out"), &bin, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{}:2:", bad.display())),
        "{}",
        stderr(&out)
    );

    let unknown = write(
        &dir.path().join("unknown.toml"),
        "[system]\nmodules = [\"overlay\", \"no_such_mod\", \"zfs\"]\n",
    );
    let out = build(&unknown, &dir.path().join("out"), &bin, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no module named no_such_mod, zfs"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("out/initrd.img").exists());
}

#[test]
fn build_is_deterministic_and_holds_what_init_needs() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir(dir.path());
    let manifest = write(&dir.path().join("m.toml"), MANIFEST);
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("index.html"), "hi\n").unwrap();
    let include = format!("{}:/srv/www", site.display());

    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        let res = build(&manifest, out, &bin, &["--include", &include]);
        assert!(res.status.success(), "{}", stderr(&res));
    }
    let image = std::fs::read(a.join("initrd.img")).unwrap();
    assert_eq!(
        image,
        std::fs::read(b.join("initrd.img")).unwrap(),
        "two builds differ"
    );
    assert_eq!(
        std::fs::read(a.join("vmlinuz")).unwrap(),
        std::fs::read(testkernel::vmlinuz()).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(a.join("cmdline")).unwrap(),
        "console=tty0 console=ttyS0,115200 panic=-1 quiet loglevel=4\n"
    );

    let (cpio, names) = list(&a.join("initrd.img"));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are not sorted (directories first)");
    for want in [
        "init",
        "dev/console",
        "etc/berth/manifest.toml",
        "lib/modules/berth.index",
        "lib/modules/kernel/drivers/net/virtio_net.ko",
        "lib/modules/kernel/fs/overlayfs/overlay.ko",
        "srv/www/index.html",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    assert_eq!(
        extract(&cpio, "etc/berth/manifest.toml"),
        MANIFEST.as_bytes()
    );
    assert_eq!(extract(&cpio, "srv/www/index.html"), b"hi\n");

    // The index init reads: every module it names is in the archive, and the
    // dependency order of virtio_net is loadable.
    let index = String::from_utf8(extract(&cpio, "lib/modules/berth.index")).unwrap();
    let index = ModuleIndex::parse(&index).unwrap();
    let release = testkernel::modules_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(index.kernel_release(), release);
    let mut ko = 0;
    for m in index.modules() {
        assert!(
            names.contains(&format!("lib/modules/{}", m.path)),
            "{} not in the archive",
            m.path
        );
        ko += 1;
    }
    assert_eq!(
        ko,
        names.iter().filter(|n| n.ends_with(".ko")).count(),
        "stray modules"
    );
    let order: Vec<&str> = index
        .load_order(&["virtio_net"])
        .unwrap()
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(order.last(), Some(&"virtio_net"));
    assert!(
        order.contains(&"net_failover") && order.contains(&"virtio"),
        "{order:?}"
    );
    assert_eq!(
        index.modules_for_alias("virtio:d00000001v00001AF4"),
        ["virtio_net"]
    );
    assert!(index
        .modules_for_alias("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
        .contains(&"virtio_pci"));
}

/// A `docker save`-shaped archive whose only image is tagged `tag`; the
/// builder reads nothing but `manifest.json`.
fn docker_archive(path: &Path, tag: &str) -> PathBuf {
    let manifest = format!(r#"[{{"Config":"c.json","RepoTags":["{tag}"],"Layers":[]}}]"#);
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "manifest.json", manifest.as_bytes())
        .unwrap();
    tar.finish().unwrap();
    path.to_path_buf()
}

#[test]
fn build_refuses_a_workload_whose_image_no_archive_holds() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir(dir.path());
    let archive = docker_archive(&dir.path().join("busybox.tar"), "busybox:latest");
    let archive = archive.to_str().unwrap();
    let out_dir = dir.path().join("out");

    let wrong = write(
        &dir.path().join("wrong.toml"),
        "[workloads.web]\nimage = \"busybox:1.36\"\n",
    );
    let out = build(&wrong, &out_dir, &bin, &["--image", archive]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "berth-build: workload web: image busybox:1.36 is in none of the --image archives \
         (they hold: busybox:latest)\n"
    );
    let out = build(&wrong, &out_dir, &bin, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).ends_with("(no --image was given)\n"),
        "{}",
        stderr(&out)
    );
    assert!(!out_dir.join("initrd.img").exists());

    // `busybox` is `busybox:latest` is `docker.io/library/busybox:latest`.
    let right = write(
        &dir.path().join("right.toml"),
        "[workloads.web]\nimage = \"docker.io/library/busybox\"\n\n\
         [workloads.sh]\nimage = \"busybox\"\n",
    );
    let out = build(&right, &out_dir, &bin, &["--image", archive]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, names) = list(&out_dir.join("initrd.img"));
    assert!(
        names
            .iter()
            .any(|n| n == "usr/share/berth/images/busybox.tar"),
        "{names:?}"
    );

    // An OCI image layout directory is baked as a directory, named by its
    // index.json; any other directory is refused.
    let layout = dir.path().join("alpine-layout");
    std::fs::create_dir(&layout).unwrap();
    write(
        &layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    write(
        &layout.join("index.json"),
        &format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1,"annotations":{{"io.containerd.image.name":"docker.io/library/alpine:3"}}}}]}}"#,
            "a".repeat(64)
        ),
    );
    let alpine = write(
        &dir.path().join("alpine.toml"),
        "[workloads.web]\nimage = \"alpine:3\"\n",
    );
    let out = build(
        &alpine,
        &out_dir,
        &bin,
        &["--image", layout.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, names) = list(&out_dir.join("initrd.img"));
    assert!(
        names
            .iter()
            .any(|n| n == "usr/share/berth/images/alpine-layout/index.json"),
        "{names:?}"
    );
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let out = build(
        &alpine,
        &out_dir,
        &bin,
        &["--image", plain.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("a directory must be an OCI image layout"),
        "{}",
        stderr(&out)
    );
}

fn disk(args: &[&Path]) -> Output {
    let mut all: Vec<&std::ffi::OsStr> = vec!["disk".as_ref()];
    all.extend(args.iter().map(|a| a.as_os_str()));
    berth_build(&all)
}

#[test]
fn disk_makes_a_berth_data_ext4_holding_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(&dir.path().join("m.toml"), MANIFEST);
    let img = dir.path().join("data.img");
    let (o, size, m, force) = (
        Path::new("-o"),
        Path::new("--size"),
        Path::new("--manifest"),
        Path::new("--force"),
    );

    let out = disk(&[o, &img, size, "16M".as_ref(), m, &manifest]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    let fs = ext4_view::Ext4::load(Box::new(std::fs::File::open(&img).unwrap())).unwrap();
    assert_eq!(fs.label().to_str().unwrap(), "berth-data");
    assert_eq!(fs.read_to_string("/manifest.toml").unwrap(), MANIFEST);

    // An existing file is kept unless --force.
    let out = disk(&[o, &img, size, "8M".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "berth-build: {} exists (give --force to replace it)\n",
            img.display()
        )
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    let out = disk(&[o, &img, size, "8M".as_ref(), force]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fs = ext4_view::Ext4::load(Box::new(std::fs::File::open(&img).unwrap())).unwrap();
    assert_eq!(fs.label().to_str().unwrap(), "berth-data");
    assert!(!fs.exists("/manifest.toml").unwrap());

    // A manifest that does not validate is not put on a disk.
    let bad = write(&dir.path().join("bad.toml"), "[system]\ncolour = 1\n");
    let other = dir.path().join("other.img");
    let out = disk(&[o, &other, size, "8M".as_ref(), m, &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{}:2:1: unknown key `colour`", bad.display())),
        "{}",
        stderr(&out)
    );
    let out = disk(&[o, &other, size, "lots".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--size: invalid size"),
        "{}",
        stderr(&out)
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("tmp") || n == "other.img")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `--format`: each medium is written, sized and laid out as its tools
/// expect (booting them is qemu-tests' media.rs); bad names and missing
/// tools are clear errors; without a manifest nothing is baked.
#[test]
fn build_writes_each_format_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir(dir.path());
    let manifest = write(&dir.path().join("m.toml"), MANIFEST);

    let out = build(
        &manifest,
        &dir.path().join("bad"),
        &bin,
        &["--format", "iso,dmg"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("unknown format \"dmg\" (formats: kernel, iso, raw, qcow2, vmdk, vdi, vhd)"),
        "{}",
        stderr(&out)
    );

    // A missing tool is named with its package, before any work.
    let mut c = Command::new(BERTH_BUILD);
    c.arg("build")
        .arg(&manifest)
        .args(["-o"])
        .arg(dir.path().join("notools"))
        .arg("--kernel")
        .arg(testkernel::vmlinuz())
        .arg("--modules")
        .arg(testkernel::modules_dir())
        .arg("--bin-dir")
        .arg(&bin)
        .args(["--format", "qcow2"])
        .env("PATH", dir.path().join("empty-path"));
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not installed (apt-get install"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("notools/initrd.img").exists());

    let media = dir.path().join("media");
    let first_build = std::time::Instant::now();
    let out = build_with(
        None,
        &media,
        &bin,
        &[
            "--format",
            "raw,iso,qcow2,vmdk,vdi,vhd",
            "--cmdline",
            "console=ttyS0 berth.test=1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut names: Vec<String> = std::fs::read_dir(&media)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "berth.img",
            "berth.iso",
            "berth.qcow2",
            "berth.vdi",
            "berth.vhd",
            "berth.vmdk"
        ],
        "kernel was not asked for, and no scratch files are left"
    );

    // raw: a GPT with the BIOS boot partition and the ESP, GRUB's boot.img
    // in the MBR pointing at sector 2048.
    let raw = media.join("berth.img");
    let dump = Command::new("sfdisk")
        .arg("--json")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", stderr(&dump));
    let table: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(table["partitiontable"]["label"], "gpt");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type"], "21686148-6449-6E6F-744E-656564454649");
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[1]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    let mbr = std::fs::read(&raw).unwrap();
    assert_eq!(&mbr[0x5c..0x64], &2048u64.to_le_bytes());
    assert_eq!(&mbr[510..512], &[0x55, 0xaa]);
    // The ESP holds the payload and the menu with our command line.
    let esp_offset = parts[1]["start"].as_u64().unwrap() * 512;
    let cfg = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{esp_offset}", raw.display()))
        .arg("::/boot/grub/grub.cfg")
        .output()
        .unwrap();
    assert!(cfg.status.success(), "{}", stderr(&cfg));
    assert!(
        String::from_utf8_lossy(&cfg.stdout)
            .contains("linux /boot/vmlinuz console=ttyS0 berth.test=1"),
        "{}",
        String::from_utf8_lossy(&cfg.stdout)
    );
    let esp_files = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-/", "-i"])
        .arg(format!("{}@@{esp_offset}", raw.display()))
        .arg("::/")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&esp_files.stdout).to_lowercase();
    for f in ["efi/boot/bootx64.efi", "boot/vmlinuz", "boot/initrd.img"] {
        assert!(listing.contains(f), "{f} not in the ESP:\n{listing}");
    }

    // iso: ISO 9660 with an El Torito catalog (BIOS and UEFI entries).
    let iso = Command::new("xorriso")
        .args(["-indev"])
        .arg(media.join("berth.iso"))
        .args(["-report_el_torito", "plain"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&iso.stdout);
    assert!(
        report.contains("BIOS") && report.contains("UEFI"),
        "{report}"
    );
    // Its dates are SOURCE_DATE_EPOCH (1700000000, as berth_build sets).
    let pvd = Command::new("xorriso")
        .args(["-indev"])
        .arg(media.join("berth.iso"))
        .arg("-pvd_info")
        .output()
        .unwrap();
    let pvd = String::from_utf8_lossy(&pvd.stdout);
    assert!(pvd.contains("Modif. Time  : 2023111422132000"), "{pvd}");

    // Reproducible: built again (in a later FAT two-second tick, so any
    // date taken from the clock would differ) the ISO and the raw disk are
    // the same bytes.
    let tick = std::time::Duration::from_secs(2);
    if let Some(rest) = tick.checked_sub(first_build.elapsed()) {
        std::thread::sleep(rest);
    }
    let again = dir.path().join("again");
    let out = build_with(
        None,
        &again,
        &bin,
        &[
            "--format",
            "raw,iso",
            "--cmdline",
            "console=ttyS0 berth.test=1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for file in ["berth.iso", "berth.img"] {
        let (a, b) = (media.join(file), again.join(file));
        let same = std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap();
        assert!(same, "{file} differs between two builds of the same inputs");
    }

    // The converted images pass qemu-img's own checks and keep the size.
    let raw_size = std::fs::metadata(&raw).unwrap().len();
    for (file, format) in [
        ("berth.qcow2", "qcow2"),
        ("berth.vmdk", "vmdk"),
        ("berth.vdi", "vdi"),
        ("berth.vhd", "vpc"),
    ] {
        let path = media.join(file);
        let info = Command::new("qemu-img")
            .args(["info", "--output=json", "-f", format])
            .arg(&path)
            .output()
            .unwrap();
        assert!(info.status.success(), "{}", stderr(&info));
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert!(
            info["virtual-size"].as_u64().unwrap() >= raw_size,
            "{file}: {info}"
        );
        if format == "vpc" {
            // qemu-img has no check for VHD: read the footer as Azure does.
            // A fixed VHD is the raw disk and a 512-byte footer: cookie
            // "conectix", disk type 2 (fixed), size a whole number of MiB.
            let bytes = std::fs::read(&path).unwrap();
            let footer = &bytes[bytes.len() - 512..];
            assert_eq!(&footer[..8], b"conectix");
            assert_eq!(u32::from_be_bytes(footer[60..64].try_into().unwrap()), 2);
            let size = u64::from_be_bytes(footer[48..56].try_into().unwrap());
            assert_eq!(size % (1024 * 1024), 0, "{size}");
            assert_eq!(
                &bytes[..bytes.len() - 512],
                &std::fs::read(&raw).unwrap()[..]
            );
            continue;
        }
        let check = Command::new("qemu-img")
            .args(["check", "-f", format])
            .arg(&path)
            .output()
            .unwrap();
        assert!(check.status.success(), "{file}: {}", stderr(&check));
        assert!(
            String::from_utf8_lossy(&check.stdout).contains("No errors were found"),
            "{file}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
}

/// Without a manifest nothing is baked: init looks for one at boot.
#[test]
fn build_without_a_manifest_bakes_none() {
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir(dir.path());
    let out_dir = dir.path().join("out");
    let out = build_with(None, &out_dir, &bin, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, names) = list(&out_dir.join("initrd.img"));
    assert!(names.iter().any(|n| n == "init"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.contains("manifest.toml")),
        "{names:?}"
    );
}
