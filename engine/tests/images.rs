//! The image store against archives made by the real tools (umoci, skopeo):
//! every import form, the unpacked rootfs seen through a real overlayfs
//! mount, layer sharing, reference counting and digest verification.
//! Runs as root (whiteouts are device nodes, opaque dirs use trusted.* xattrs).

mod image_fixtures;

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use engine::image::{Digest, Format, ImageError, ImageStore};
use image_fixtures::{chain, fixtures};

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live across the call; the
    // kernel writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (rc >= 0).then(|| buf[..rc as usize].to_vec())
}

/// A read-only overlay of `layers` (bottom first), unmounted on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(layers: &[PathBuf], at: &Path) -> Overlay {
        fs::create_dir_all(at).unwrap();
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", lower.join(":")))
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount overlay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Overlay(at.to_owned())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// What the busybox `latest` image must look like once its layers are stacked.
fn check_rootfs(layers: &[PathBuf], scratch: &Path) {
    assert_eq!(layers.len(), 2);
    let (l1, l2) = (&layers[0], &layers[1]);

    // Layer 1, as unpacked.
    let bb = fs::metadata(l1.join("bin/busybox")).unwrap();
    assert_eq!(bb.len(), fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(bb.mode() & 0o777, 0o755);
    assert_eq!(
        fs::read_link(l1.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let secret = fs::metadata(l1.join("etc/secret")).unwrap();
    assert_eq!(
        (secret.uid(), secret.gid(), secret.mode() & 0o7777),
        (1000, 1000, 0o600)
    );
    assert_eq!(
        fs::metadata(l1.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let passwd = fs::metadata(l1.join("etc/passwd")).unwrap();
    let hard = fs::metadata(l1.join("etc/passwd.hard")).unwrap();
    assert_eq!(passwd.ino(), hard.ino(), "hard link kept as a hard link");
    let null = fs::symlink_metadata(l1.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));

    // Layer 2: the overlayfs forms of the whiteouts.
    let wh = fs::symlink_metadata(l2.join("etc/motd")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    assert!(!l2.join("etc/.wh.motd").exists());
    assert_eq!(
        xattr(&l2.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l2.join("opaque/.wh..wh..opq").exists());

    // Stacked by the kernel.
    let mnt = scratch.join("mnt");
    let _overlay = Overlay::mount(layers, &mnt);
    assert!(!mnt.join("etc/motd").exists(), "whiteout hides etc/motd");
    assert_eq!(
        fs::read_to_string(mnt.join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
    let mut opaque: Vec<String> = fs::read_dir(mnt.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    opaque.sort();
    assert_eq!(opaque, vec!["c"], "opaque dir hides the lower a and b");
    let out = Command::new(mnt.join("bin/busybox"))
        .args(["echo", "ok"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

/// File and directory times as the layer's tar headers say (directories'
/// are set after their contents are written).
fn check_times(store: &ImageStore, image: &engine::image::Image) {
    let blob: Digest = image.manifest.layers()[0]
        .digest()
        .as_ref()
        .parse()
        .unwrap();
    let file = fs::File::open(store.root().join("blobs/sha256").join(blob.hex())).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut checked = 0;
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if ["etc/passwd", "bin", "etc", "bin/busybox"].contains(&name.as_str()) {
            let m = fs::symlink_metadata(image.layers[0].join(&name)).unwrap();
            assert_eq!(m.mtime() as u64, e.header().mtime().unwrap(), "{name}");
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

fn tags(store: &ImageStore) -> Vec<String> {
    let mut t: Vec<String> = store
        .list()
        .iter()
        .flat_map(|s| s.tags.iter().map(|r| r.familiar()))
        .collect();
    t.sort();
    t
}

#[test]
fn oci_layout_shares_the_base_layer() {
    let f = fixtures();
    let (dir, store) = store();
    let imported = store.import(&f.layout, Some("busybox")).unwrap();
    assert_eq!(imported.len(), 2);
    assert_eq!(tags(&store), vec!["busybox:base", "busybox:latest"]);
    let unpacked: usize = imported.iter().map(|i| i.layers_unpacked).sum();
    let reused: usize = imported.iter().map(|i| i.layers_reused).sum();
    assert_eq!(
        (unpacked, reused),
        (2, 1),
        "the shared layer is unpacked once"
    );
    assert_eq!(store.layer_dirs().unwrap().len(), 2);

    let latest = store.resolve("busybox").unwrap();
    let base = store.resolve("docker.io/library/busybox:base").unwrap();
    check_times(&store, &latest);
    assert_eq!(latest.layers[0], base.layers[0]);
    assert_eq!(base.layers.len(), 1);
    assert_eq!(
        base.config.config().as_ref().unwrap().cmd().as_deref(),
        Some(&["/bin/sh".to_owned()][..])
    );
    assert_eq!(
        latest.id.to_string(),
        latest.manifest.config().digest().to_string()
    );
    // By id, short id, and manifest digest.
    assert_eq!(
        store
            .resolve(&latest.id.to_string())
            .unwrap()
            .manifest_digest,
        latest.manifest_digest
    );
    assert_eq!(store.resolve(&latest.id.hex()[..12]).unwrap().id, latest.id);
    assert_eq!(
        store
            .resolve(&format!("busybox@{}", latest.manifest_digest))
            .unwrap()
            .id,
        latest.id
    );
    check_rootfs(&latest.layers, dir.path());
}

#[test]
fn every_form_imports_and_reuses_unpacked_layers() {
    let f = fixtures();
    let (dir, store) = store();
    let first = store.import(&f.oci_archive, Some("busybox:oci")).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].layers_unpacked, first[0].layers_reused), (2, 0));
    let image = store.resolve("busybox:oci").unwrap();
    check_rootfs(&image.layers, dir.path());
    let inodes: Vec<u64> = image
        .layers
        .iter()
        .map(|l| fs::metadata(l).unwrap().ino())
        .collect();

    // docker-archive layers are uncompressed (other blob digests), the zstd
    // layout's are zstd: same diff_ids, so nothing is unpacked again.
    for (path, name) in [
        (&f.docker_archive, None),
        (&f.docker_archive_gz, None),
        (&f.zstd_layout, Some("busybox:zstd")),
        (&f.layout, Some("busybox")),
        (&f.oci_archive, Some("busybox:oci")),
    ] {
        let got = store.import(path, name).unwrap();
        for i in &got {
            assert_eq!(
                i.layers_unpacked,
                0,
                "{} unpacked a layer again",
                path.display()
            );
        }
    }
    assert_eq!(store.layer_dirs().unwrap().len(), 2);
    let again: Vec<u64> = image
        .layers
        .iter()
        .map(|l| fs::metadata(l).unwrap().ino())
        .collect();
    assert_eq!(inodes, again, "layer directories untouched");
    assert_eq!(
        tags(&store),
        vec![
            "busybox:base",
            "busybox:latest",
            "busybox:oci",
            "busybox:zstd"
        ]
    );
    // Every form of the image has the same config, so the same id.
    let docker = store.resolve("busybox:latest").unwrap();
    assert_eq!(docker.diff_ids, image.diff_ids);
    assert_eq!(docker.id, image.id);
    // Nothing left behind.
    let leftovers: Vec<_> = image_fixtures::walk(&dir.path().join("store"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn each_form_unpacks_in_a_fresh_store() {
    let f = fixtures();
    for (path, name, tag, format) in [
        (
            &f.docker_archive,
            None,
            "busybox:latest",
            Format::DockerArchive,
        ),
        (
            &f.docker_archive_gz,
            None,
            "busybox:latest",
            Format::DockerArchive,
        ),
        (
            &f.zstd_layout,
            Some("zbox"),
            "zbox:latest",
            Format::OciLayout,
        ),
        (&f.oci_archive, Some("obox:1"), "obox:1", Format::OciArchive),
    ] {
        assert_eq!(
            ImageStore::detect(path).unwrap(),
            format,
            "{}",
            path.display()
        );
        let (dir, store) = store();
        let got = store.import(path, name).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].layers_unpacked, 2, "{}", path.display());
        assert_eq!(tags(&store), vec![tag]);
        check_rootfs(&store.resolve(tag).unwrap().layers, dir.path());
    }
}

#[test]
fn untagged_oci_archive_is_reachable_by_id() {
    let f = fixtures();
    let (_dir, store) = store();
    let got = store.import(&f.oci_archive, None).unwrap();
    assert!(got[0].tags.is_empty());
    let listed = store.list();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].tags.is_empty());
    assert!(
        listed[0].size > 1_000_000,
        "size is the uncompressed layers"
    );
    store.resolve(&got[0].id.to_string()).unwrap();
}

#[test]
fn remove_untags_and_collects_only_unused_things() {
    let f = fixtures();
    let (_dir, store) = store();
    store.import(&f.layout, Some("busybox")).unwrap();
    let latest = store.resolve("busybox:latest").unwrap();
    let base = store.resolve("busybox:base").unwrap();
    let blob_dir = store.root().join("blobs/sha256");
    let blobs = || fs::read_dir(&blob_dir).unwrap().count();
    assert_eq!(blobs(), 6, "2 manifests, 2 configs, 2 layers");

    // A second tag keeps the image alive when the first goes.
    store.tag("busybox:latest", "mine:v1").unwrap();
    let r = store.remove("busybox:latest", &HashSet::new()).unwrap();
    assert!(r.deleted.is_empty());
    assert_eq!((r.blobs_removed, r.layers_removed), (0, 0));
    assert_eq!(store.resolve("mine:v1").unwrap().id, latest.id);
    assert!(matches!(
        store.resolve("busybox:latest"),
        Err(ImageError::NotFound(_))
    ));

    // Removing the last tag deletes the image; its own layer goes, the one
    // `base` shares stays.
    let r = store.remove("mine:v1", &HashSet::new()).unwrap();
    assert_eq!(r.deleted, vec![latest.id]);
    assert_eq!((r.blobs_removed, r.layers_removed), (3, 1));
    assert!(!latest.layers[1].exists());
    assert!(base.layers[0].exists());
    store.resolve("busybox:base").unwrap();

    // A layer a container still uses survives its last image.
    let in_use: HashSet<Digest> = [base.diff_ids[0]].into_iter().collect();
    let r = store.remove(&base.id.to_string(), &in_use).unwrap();
    assert_eq!(r.deleted, vec![base.id]);
    assert_eq!((r.blobs_removed, r.layers_removed), (3, 0));
    assert!(base.layers[0].is_dir());
    assert_eq!(blobs(), 0);
    assert_eq!(store.gc(&HashSet::new()).unwrap(), (0, 1));
    assert!(!base.layers[0].exists());
    assert!(store.list().is_empty());

    // And the store reopens empty and consistent.
    drop(store);
    let reopened = ImageStore::open(&blob_dir.join("../..")).unwrap();
    assert!(reopened.list().is_empty());
}

#[test]
fn concurrent_imports_share_layers() {
    let f = fixtures();
    let (dir, store) = store();
    std::thread::scope(|s| {
        let a = s.spawn(|| store.import(&f.docker_archive, None));
        let b = s.spawn(|| store.import(&f.oci_archive, Some("busybox:oci")));
        let c = s.spawn(|| store.import(&f.zstd_layout, Some("busybox:zstd")));
        for h in [a, b, c] {
            h.join().unwrap().unwrap();
        }
    });
    assert_eq!(store.layer_dirs().unwrap().len(), 2);
    assert_eq!(
        tags(&store),
        vec!["busybox:latest", "busybox:oci", "busybox:zstd"]
    );
    check_rootfs(&store.resolve("busybox:zstd").unwrap().layers, dir.path());
    let leftovers: Vec<_> = image_fixtures::walk(store.root())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn records_survive_reopening() {
    let f = fixtures();
    let (dir, store) = store();
    store.import(&f.docker_archive, None).unwrap();
    let before = store.resolve("busybox").unwrap();
    drop(store);
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    let after = store.resolve("busybox").unwrap();
    assert_eq!((before.id, before.layers.clone()), (after.id, after.layers));
}

/// A layer's files are synced in the background after the import returns;
/// a marker under `unsynced/` stands for them until then. A crash before the
/// sync (simulated: the marker is still there and the layer lost files)
/// makes the next open rebuild the layer from its blob.
#[test]
fn layers_an_unclean_shutdown_left_unsynced_are_rebuilt_from_their_blobs() {
    let Synced {
        dir: _dir,
        root,
        image,
        layer,
        blob,
        diff_hex,
    } = synced_busybox();
    let markers = |root: &Path| -> Vec<String> {
        fs::read_dir(root.join("unsynced"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        markers(&root),
        Vec::<String>::new(),
        "flush leaves no marker"
    );
    let before = image_fixtures::walk(&layer);
    assert!(!before.is_empty());

    // The crash: the layer's last files never reached the disk, and its
    // marker (diff_id.blob) is still there.
    let victim = before
        .iter()
        .rev()
        .find(|p| layer.join(p).is_file())
        .expect("the layer has a regular file")
        .clone();
    fs::remove_file(layer.join(&victim)).unwrap();
    fs::write(
        root.join("unsynced")
            .join(format!("{diff_hex}.{}", blob.hex())),
        b"",
    )
    .unwrap();

    let store = ImageStore::open(&root).unwrap();
    assert!(layer.join(&victim).is_file(), "{victim:?} is back");
    assert_eq!(image_fixtures::walk(&layer), before);
    assert_eq!(
        markers(&root),
        Vec::<String>::new(),
        "the rebuilt layer is synced"
    );
    assert_eq!(store.resolve("busybox").unwrap().layers, image.layers);
}

#[test]
fn layers_a_killed_daemon_left_unsynced_are_synced_not_rebuilt() {
    let Synced {
        dir: _dir,
        root,
        image,
        layer,
        blob,
        diff_hex,
    } = synced_busybox();

    // What a SIGKILL'd berthd leaves: the marker of a layer unpacked during
    // this boot. A container may have the layer mounted: its files must
    // stay where they are (a rebuild would replace the directory).
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let marker = root
        .join("unsynced")
        .join(format!("{diff_hex}.{}.1-0", blob.hex()));
    fs::write(&marker, boot.trim()).unwrap();
    let sentinel = layer.join("berth-test-sentinel");
    fs::write(&sentinel, "kept").unwrap();
    let inode = fs::metadata(&layer).unwrap().ino();

    let store = ImageStore::open(&root).unwrap();
    assert_eq!(
        fs::metadata(&layer).unwrap().ino(),
        inode,
        "the layer was replaced"
    );
    assert!(sentinel.is_file(), "the layer was rebuilt");
    assert!(
        !marker.exists(),
        "the layer was synced and its marker removed"
    );
    assert_eq!(store.resolve("busybox").unwrap().layers, image.layers);
}

/// A store holding busybox, flushed (no marker left) and closed, and its
/// top layer: where the unsynced-layer tests start.
struct Synced {
    dir: tempfile::TempDir,
    root: PathBuf,
    image: engine::image::Image,
    layer: PathBuf,
    blob: Digest,
    diff_hex: String,
}

fn synced_busybox() -> Synced {
    let f = fixtures();
    let (dir, store) = store();
    let root = dir.path().join("store");
    store.import(&f.docker_archive, None).unwrap();
    let image = store.resolve("busybox").unwrap();
    store.flush();
    let layer = image.layers.last().unwrap().clone();
    let blob = Digest::from_oci(image.manifest.layers().last().unwrap().digest()).unwrap();
    let diff_hex = image.diff_ids.last().unwrap().hex().to_string();
    Synced {
        dir,
        root,
        image,
        layer,
        blob,
        diff_hex,
    }
}

/// Copies an archive, flipping one byte in the data of the entry `member`.
fn corrupt(src: &Path, dst: &Path, member: impl Fn(&str) -> bool) -> String {
    let mut bytes = fs::read(src).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut hit = None;
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if e.header().entry_type().is_file() && e.size() > 100_000 && member(&name) {
            hit = Some((name, e.raw_file_position() + e.size() / 2));
            break;
        }
    }
    let (name, at) = hit.expect("a large member to corrupt");
    bytes[at as usize] ^= 0x55;
    fs::write(dst, bytes).unwrap();
    name
}

#[test]
fn a_flipped_byte_is_a_digest_mismatch_naming_the_layer() {
    let f = fixtures();
    let (dir, store) = store();

    let bad = dir.path().join("bad-oci.tar");
    let member = corrupt(&f.oci_archive, &bad, |n| n.starts_with("blobs/sha256/"));
    let err = store.import(&bad, Some("busybox")).unwrap_err();
    let msg = chain(&err);
    let expected = member.trim_start_matches("blobs/sha256/");
    assert!(msg.contains("digest mismatch"), "{msg}");
    assert!(msg.contains("layer 1 of image"), "{msg}");
    assert!(
        msg.contains(&format!("expected sha256:{expected}")),
        "{msg}"
    );
    assert!(store.list().is_empty());
    assert_eq!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "failed import left blobs"
    );
    assert!(
        store.layer_dirs().unwrap().is_empty(),
        "failed import left layers"
    );

    // A docker archive's layer is checked against the config's diff_id.
    let bad = dir.path().join("bad-docker.tar");
    corrupt(&f.docker_archive, &bad, |n| n.ends_with(".tar"));
    let err = store.import(&bad, None).unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("digest mismatch") && msg.contains("layer 1 of image busybox:latest"),
        "{msg}"
    );
    assert_eq!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert!(store.layer_dirs().unwrap().is_empty());
    let leftovers: Vec<_> = image_fixtures::walk(store.root())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The intact archive still imports into the same store.
    store.import(&f.docker_archive, None).unwrap();
}

#[test]
fn not_an_image_archive() {
    let (dir, store) = store();
    let junk = dir.path().join("junk.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("hello.txt").unwrap();
    h.set_size(2);
    h.set_cksum();
    b.append(&h, &b"hi"[..]).unwrap();
    fs::write(&junk, b.into_inner().unwrap()).unwrap();
    let msg = chain(&store.import(&junk, None).unwrap_err());
    assert!(
        msg.contains("is not a docker save archive, an OCI archive or an OCI layout"),
        "{msg}"
    );
    let text = dir.path().join("text.tar");
    fs::write(
        &text,
        "not a tar at all, just some text that is long enough ".repeat(20),
    )
    .unwrap();
    assert!(store.import(&text, None).is_err());
    assert!(matches!(
        store.import(&dir.path().join("missing.tar"), None),
        Err(ImageError::Import { .. })
    ));
}
