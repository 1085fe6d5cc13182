//! Test fixtures shared by the image tests: a busybox image made with the
//! real tools (umoci builds an OCI layout, skopeo converts it to an OCI
//! archive, a docker archive and a zstd layout), built once per test binary;
//! and writers for hand-made (malicious) layouts and archives.

#![allow(dead_code)]

use std::error::Error;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use engine::image::Digest;

/// The images the real tools made.
pub struct Fixtures {
    /// Holds everything below; wiped and rebuilt by each test binary.
    pub dir: PathBuf,
    /// OCI layout: `latest` (2 layers: busybox, then whiteouts) and `base`
    /// (the first layer only), both tags only (ref.name).
    pub layout: PathBuf,
    /// The same `latest` with zstd layers (skopeo --dest-compress-format zstd).
    pub zstd_layout: PathBuf,
    /// `skopeo copy oci:L:latest oci-archive:X.tar` (no name inside).
    pub oci_archive: PathBuf,
    /// `skopeo copy oci:L:latest docker-archive:Y.tar:busybox:latest`.
    pub docker_archive: PathBuf,
    /// Y.tar gzip-compressed (`gzip -k`).
    pub docker_archive_gz: PathBuf,
}

static FIXTURES: OnceLock<Fixtures> = OnceLock::new();

/// The fixtures, built on first use.
pub fn fixtures() -> &'static Fixtures {
    FIXTURES.get_or_init(build)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/setup.sh installs skopeo, umoci, busybox-static)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn build() -> Fixtures {
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fixtures-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let layout = dir.join("L");
    let bundle = dir.join("B");
    let l = |tag: &str| format!("{}:{tag}", layout.display());

    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &l("latest")]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &l("latest")])
        .arg(&bundle));
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "opaque", "dev", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "cat", "echo", "true"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::hard_link(root.join("etc/passwd"), root.join("etc/passwd.hard")).unwrap();
    fs::write(root.join("etc/motd"), "hello\n").unwrap();
    fs::write(root.join("etc/secret"), "s3cret\n").unwrap();
    run(Command::new("chown")
        .arg("1000:1000")
        .arg(root.join("etc/secret")));
    run(Command::new("chmod")
        .arg("0600")
        .arg(root.join("etc/secret")));
    run(Command::new("chmod").arg("1777").arg(root.join("tmp")));
    run(Command::new("mknod")
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));
    fs::write(root.join("opaque/a"), "a\n").unwrap();
    fs::write(root.join("opaque/b"), "b\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &l("latest")])
        .arg(&bundle));
    run(Command::new("umoci").args(["config", "--image", &l("latest"), "--config.cmd", "/bin/sh"]));
    run(Command::new("umoci").args(["tag", "--image", &l("latest"), "base"]));

    // Layer 2: delete etc/motd, make opaque/ opaque with one new file.
    let l2 = dir.join("l2");
    fs::create_dir_all(l2.join("etc")).unwrap();
    fs::create_dir_all(l2.join("opaque")).unwrap();
    fs::write(l2.join("etc/.wh.motd"), "").unwrap();
    fs::write(l2.join("opaque/.wh..wh..opq"), "").unwrap();
    fs::write(l2.join("opaque/c"), "c\n").unwrap();
    let l2tar = dir.join("layer2.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&l2)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(&l2tar)
        .args(["etc", "opaque"]));
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &l("latest")])
        .arg(&l2tar));

    let oci_archive = dir.join("X.tar");
    let docker_archive = dir.join("Y.tar");
    let zstd_layout = dir.join("Z");
    let src = format!("oci:{}", l("latest"));
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &src,
        &format!("oci-archive:{}", oci_archive.display()),
    ]));
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &src,
        &format!("docker-archive:{}:busybox:latest", docker_archive.display()),
    ]));
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-compress",
        "--dest-compress-format",
        "zstd",
        &src,
        &format!("oci:{}:latest", zstd_layout.display()),
    ]));
    run(Command::new("gzip").arg("-k").arg(&docker_archive));
    let docker_archive_gz = dir.join("Y.tar.gz");
    Fixtures {
        dir,
        layout,
        zstd_layout,
        oci_archive,
        docker_archive,
        docker_archive_gz,
    }
}

/// An error with its whole `source()` chain, as the CLI prints it.
pub fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// One entry of a hand-made tar, written byte for byte (the `tar` crate's
/// safe setters refuse the malicious names these tests need).
pub enum Raw<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// PAX extended header records for the next entry.
    Pax(&'a [(&'a str, &'a [u8])]),
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A layer tar from raw entries.
pub fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let pax: Vec<u8>;
        let (name, kind, link, data): (&str, tar::EntryType, &str, &[u8]) = match e {
            Raw::Dir(n) => (n, tar::EntryType::Directory, "", b""),
            Raw::File(n, d) => (n, tar::EntryType::Regular, "", d),
            Raw::Symlink(n, t) => (n, tar::EntryType::Symlink, t, b""),
            Raw::Hardlink(n, t) => (n, tar::EntryType::Link, t, b""),
            Raw::Pax(records) => {
                pax = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
                ("PaxHeaders/next", tar::EntryType::XHeader, "", &pax)
            }
        };
        {
            let u = h.as_ustar_mut().unwrap();
            assert!(name.len() < u.name.len() && link.len() < u.linkname.len());
            u.name[..name.len()].copy_from_slice(name.as_bytes());
            u.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn oci_config(diff_ids: &[Digest]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(ToString::to_string).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap()
}

/// Writes an OCI layout at `dir` holding one image with `layers`
/// (uncompressed tars), tagged `ref_name`.
pub fn write_layout(dir: &Path, layers: &[Vec<u8>], ref_name: &str) -> Digest {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
    let config = oci_config(&diff_ids);
    let config_d = put(&config);
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let d = put(l);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": l.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d.to_string(), "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    let manifest_d = put(&manifest);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_d.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    manifest_d
}

/// Writes a `docker save`-style archive at `path` holding one image with
/// `layers` (uncompressed tars), tagged `tag`.
pub fn write_docker_archive(path: &Path, layers: &[Vec<u8>], tag: &str) {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
    let config = oci_config(&diff_ids);
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    let mut layer_names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&name, l);
        layer_names.push(name);
    }
    add(&config_name, &config);
    let manifest =
        serde_json::json!([{ "Config": config_name, "RepoTags": [tag], "Layers": layer_names }]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    let bytes = b.into_inner().unwrap();
    fs::File::create(path).unwrap().write_all(&bytes).unwrap();
}

/// Every path under `dir` (not following symlinks).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
