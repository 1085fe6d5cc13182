//! Malicious layers: every escape attempt is refused with an error naming
//! the entry, through both import paths (an OCI layout directory, unpacked
//! from the stored blob; and a docker archive, unpacked while streaming),
//! and nothing is written outside the store.

mod image_fixtures;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use engine::image::ImageStore;
use image_fixtures::{chain, raw_tar, walk, write_docker_archive, write_layout, Raw};

/// Imports `layer` (after a harmless first layer) both ways and returns the
/// two error messages; checks that each failed import left nothing behind.
fn refused(root: &Path, layer: Vec<u8>) -> [String; 2] {
    let base = raw_tar(&[Raw::Dir("etc"), Raw::File("etc/hostname", b"ok\n")]);
    let layers = vec![base, layer];
    let store = ImageStore::open(&root.join("store")).unwrap();

    let layout = root.join("layout");
    let _ = fs::remove_dir_all(&layout);
    write_layout(&layout, &layers, "latest");
    let a = store
        .import(&layout, Some("evil"))
        .expect_err("layout import must fail");

    let archive = root.join("evil.tar");
    write_docker_archive(&archive, &layers, "evil:latest");
    let b = store
        .import(&archive, None)
        .expect_err("archive import must fail");

    assert!(store.list().is_empty());
    assert!(
        store.layer_dirs().unwrap().is_empty(),
        "a failed import left a layer"
    );
    let left: Vec<_> = walk(&root.join("store"))
        .into_iter()
        .filter(|p| {
            !["blobs", "blobs/sha256", "layers", "unsynced"]
                .iter()
                .any(|d| p.ends_with(d))
        })
        .collect();
    assert!(left.is_empty(), "a failed import left {left:?}");
    [chain(&a), chain(&b)]
}

fn assert_names(msgs: &[String; 2], entry: &str, why: &str) {
    for m in msgs {
        assert!(
            m.contains(&format!("refusing layer entry \"{entry}\"")),
            "{m}"
        );
        assert!(m.contains(why), "{m}");
        assert!(m.contains("layer 2 of image"), "{m}");
    }
}

/// No file named `name` anywhere under `dir`.
fn nowhere(dir: &Path, name: &str) {
    let hits: Vec<_> = walk(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect();
    assert!(hits.is_empty(), "{name} was written: {hits:?}");
}

#[test]
fn path_traversal_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let msgs = refused(
        tmp.path(),
        raw_tar(&[Raw::File("ok", b"1"), Raw::File("../../pwned-dotdot", b"x")]),
    );
    assert_names(&msgs, "../../pwned-dotdot", "\"..\"");
    nowhere(tmp.path(), "pwned-dotdot");
    nowhere(tmp.path().parent().unwrap(), "pwned-dotdot");

    let msgs = refused(tmp.path(), raw_tar(&[Raw::File("a/../../pwned-mid", b"x")]));
    assert_names(&msgs, "a/../../pwned-mid", "\"..\"");
    nowhere(tmp.path(), "pwned-mid");
}

#[test]
fn whiteouts_of_dot_and_dotdot_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let keep = tmp.path().join("keep");
    fs::create_dir(&keep).unwrap();
    fs::write(keep.join("file"), "precious").unwrap();
    for entry in ["sub/.wh...", ".wh..", "sub/.wh."] {
        let msgs = refused(
            tmp.path(),
            raw_tar(&[Raw::Dir("sub"), Raw::File(entry, b"")]),
        );
        assert_names(&msgs, entry, "whiteout of no file");
    }
    assert_eq!(fs::read_to_string(keep.join("file")).unwrap(), "precious");
    assert!(tmp.path().join("store/layers").is_dir());
}

#[test]
fn absolute_paths_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("pwned-abs");
    let name = target.to_str().unwrap().to_owned();
    let msgs = refused(tmp.path(), raw_tar(&[Raw::File(&name, b"x")]));
    assert_names(&msgs, &name, "absolute");
    assert!(!target.exists());
    nowhere(tmp.path(), "pwned-abs");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();

    // evil -> <tmp>/outside, then evil/pwned
    let link = outside.to_str().unwrap().to_owned();
    let msgs = refused(
        tmp.path(),
        raw_tar(&[Raw::Symlink("evil", &link), Raw::File("evil/pwned", b"x")]),
    );
    assert_names(&msgs, "evil/pwned", "symbolic link");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

    // evil -> / then evil/<tmp>/outside/pwned2
    let deep = format!("evil{}/pwned2", outside.display());
    let msgs = refused(
        tmp.path(),
        raw_tar(&[Raw::Symlink("evil", "/"), Raw::File(&deep, b"x")]),
    );
    assert_names(&msgs, &deep, "symbolic link");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

    // A relative link that climbs out, used as a directory.
    let msgs = refused(
        tmp.path(),
        raw_tar(&[Raw::Symlink("up", "../../../../../.."), Raw::Dir("up/x")]),
    );
    assert_names(&msgs, "up/x", "symbolic link");

    // Even a symlink that points inside is not followed.
    let msgs = refused(
        tmp.path(),
        raw_tar(&[
            Raw::Dir("real"),
            Raw::Symlink("alias", "real"),
            Raw::File("alias/f", b"x"),
        ]),
    );
    assert_names(&msgs, "alias/f", "symbolic link");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn hard_links_out_or_forward_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let passwd_ino = fs::metadata("/etc/passwd").unwrap().ino();

    let msgs = refused(
        tmp.path(),
        raw_tar(&[Raw::Hardlink("pw", "../../../../../../etc/passwd")]),
    );
    assert_names(&msgs, "pw", "hard link target");

    let msgs = refused(tmp.path(), raw_tar(&[Raw::Hardlink("pw", "/etc/passwd")]));
    assert_names(&msgs, "pw", "absolute");

    // Not (yet) extracted from this layer: names a file of a lower layer or
    // of the host.
    let msgs = refused(
        tmp.path(),
        raw_tar(&[Raw::Hardlink("early", "later"), Raw::File("later", b"x")]),
    );
    assert_names(&msgs, "early", "not an earlier file of this layer");
    let msgs = refused(
        tmp.path(),
        raw_tar(&[Raw::Hardlink("host", "etc/hostname")]),
    );
    assert_names(&msgs, "host", "not an earlier file of this layer");

    // Through a symlink of this layer.
    let msgs = refused(
        tmp.path(),
        raw_tar(&[Raw::Symlink("e", "/etc"), Raw::Hardlink("pw", "e/passwd")]),
    );
    assert_names(&msgs, "pw", "not an earlier file of this layer");

    for p in walk(tmp.path()) {
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.ino() != passwd_ino || m.dev() != fs::metadata("/etc/passwd").unwrap().dev());
    }
}

#[test]
fn harmless_links_are_kept_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let layer = raw_tar(&[
        Raw::Dir("etc"),
        Raw::File("etc/real", b"data"),
        Raw::Symlink("etc/abs", "/etc/passwd"),
        Raw::Symlink("etc/up", "../../../../etc/shadow"),
        Raw::Hardlink("etc/twin", "etc/real"),
        Raw::Hardlink("etc/twin2", "./etc/real"),
        // A later entry replaces an earlier one of the same name.
        Raw::File("etc/real2", b"one"),
        Raw::File("etc/real2", b"two"),
        // Ordinary xattrs are kept; overlayfs's own (trusted.*) are not
        // taken from a layer.
        Raw::Pax(&[
            ("SCHILY.xattr.user.berth", b"kept"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("mtime", b"1600000000.5"),
            ("uid", b"4242"),
        ]),
        Raw::File("etc/attrs", b"x"),
    ]);
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[layer], "v1");
    store.import(&layout, Some("fine")).unwrap();
    let image = store.resolve("fine:v1").unwrap();
    let l = &image.layers[0];
    assert_eq!(
        fs::read_link(l.join("etc/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(l.join("etc/up")).unwrap(),
        Path::new("../../../../etc/shadow")
    );
    let ino = fs::metadata(l.join("etc/real")).unwrap().ino();
    assert_eq!(fs::metadata(l.join("etc/twin")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(l.join("etc/twin2")).unwrap().ino(), ino);
    assert_eq!(fs::read(l.join("etc/real2")).unwrap(), b"two");
    let attrs = l.join("etc/attrs");
    assert_eq!(
        xattr::get(&attrs, "user.berth").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(xattr::get(&attrs, "trusted.overlay.redirect"), None);
    let m = fs::metadata(&attrs).unwrap();
    assert_eq!(
        (m.mtime(), m.mtime_nsec(), m.uid()),
        (1_600_000_000, 500_000_000, 4242)
    );
    // Directory times are applied after their contents are written.
    assert_eq!(fs::metadata(l.join("etc")).unwrap().mtime(), 1_700_000_000);
}

mod xattr {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    pub fn get(path: &Path, name: &str) -> Option<Vec<u8>> {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        let mut buf = [0u8; 256];
        // SAFETY: both strings are NUL-terminated and live across the call;
        // the kernel writes at most `buf.len()` bytes into `buf`.
        let rc =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (rc >= 0).then(|| buf[..rc as usize].to_vec())
    }
}
