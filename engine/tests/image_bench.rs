//! `berth load` throughput against `tar -x` of the same layers (issue 3's
//! target: within 1.25x). Not a correctness test: run it by hand or from
//! `make bench`, in release mode, with an archive to load:
//!
//! ```sh
//! BERTH_BENCH_ARCHIVE=big.tar cargo test --release -p engine --test image_bench -- --ignored --nocapture
//! ```
//!
//! Prints one line: `image-load: archive=... load_ms=N tar_ms=M tar_sync_ms=S ratio=R ...`
//! (tar_sync: tar followed by sync(2), what having the files on disk costs;
//! set BERTH_BENCH_DIR=/dev/shm to take the disk out of the comparison).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use engine::image::layer::Compression;
use engine::image::ImageStore;

/// User + system CPU time of this process (all threads).
fn cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage only writes the rusage struct it is given, which
    // is zero-initialised and lives across the call.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `tar -xzf` of a layer blob, gzip-compressing it first (untimed) when the
/// store holds it uncompressed (docker archives), so the comparison is
/// always with `tar -xzf`.
fn tar_extract(blob: &Path, scratch: &Path, into: &Path) -> Duration {
    let mut head = [0u8; 8];
    let n = std::io::Read::read(&mut fs::File::open(blob).unwrap(), &mut head).unwrap();
    let gz = scratch.join("layer.tar.gz");
    let flag = match Compression::detect(&head[..n]).unwrap() {
        Compression::Gzip => {
            fs::copy(blob, &gz).unwrap();
            "-xzf"
        }
        Compression::Zstd => {
            fs::copy(blob, &gz).unwrap();
            "--zstd"
        }
        Compression::None => {
            let out = fs::File::create(&gz).unwrap();
            assert!(Command::new("gzip")
                .arg("-c")
                .arg(blob)
                .stdout(out)
                .status()
                .unwrap()
                .success());
            "-xzf"
        }
    };
    fs::read(&gz).unwrap();
    fs::create_dir_all(into).unwrap();
    let start = Instant::now();
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(into).arg(flag);
    if flag == "--zstd" {
        cmd.arg("-xf");
    }
    let status = cmd.arg(&gz).status().unwrap();
    assert!(status.success());
    let took = start.elapsed();
    fs::remove_file(&gz).unwrap();
    took
}

#[test]
#[ignore = "benchmark: needs BERTH_BENCH_ARCHIVE and a release build"]
fn load_against_tar() {
    let Ok(archive) = std::env::var("BERTH_BENCH_ARCHIVE") else {
        eprintln!("image-load: skipped (BERTH_BENCH_ARCHIVE not set)");
        return;
    };
    let archive = Path::new(&archive);
    let scratch = tempfile::tempdir_in(
        std::env::var("BERTH_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .unwrap();
    // Warm the page cache for both sides alike.
    fs::read(archive).unwrap();

    let store = ImageStore::open(&scratch.path().join("store")).unwrap();
    let cpu0 = cpu(libc::RUSAGE_SELF);
    let start = Instant::now();
    let images = store.import(archive, Some("bench")).unwrap();
    let load = start.elapsed();
    let load_cpu = cpu(libc::RUSAGE_SELF) - cpu0;

    // tar -x of the same layer blobs, from the store (so in cache too).
    let image = store.resolve(&images[0].id.to_string()).unwrap();
    let mut tar = Duration::ZERO;
    for (i, l) in image.manifest.layers().iter().enumerate() {
        let d: engine::image::Digest = l.digest().as_ref().parse().unwrap();
        let blob = store.root().join("blobs/sha256").join(d.hex());
        tar += tar_extract(
            &blob,
            scratch.path(),
            &scratch.path().join(format!("tar{i}")),
        );
    }
    // The load leaves its data durable (fsync/syncfs); tar does not, so
    // also report tar followed by sync.
    let start = Instant::now();
    nix::unistd::sync();
    let tar_sync = tar + start.elapsed();
    println!(
        "image-load: archive={} load_ms={} tar_ms={} tar_sync_ms={} ratio={:.2} ratio_vs_tar_sync={:.2} load_cpu_ms={}",
        archive.display(),
        load.as_millis(),
        tar.as_millis(),
        tar_sync.as_millis(),
        load.as_secs_f64() / tar.as_secs_f64(),
        load.as_secs_f64() / tar_sync.as_secs_f64(),
        load_cpu.as_millis(),
    );
}
