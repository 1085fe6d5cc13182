//! Manifest discovery from real ext4 images (made with `mkfs.ext4 -d`), read
//! with ext4-view and without mounting.

use std::path::Path;
use std::process::Command;

use init::cmdline::Cmdline;
use init::discover::{discover, labelled_disks, Roots, Source};
use init::labels::Filesystem;
use init::seed::{SeedError, SeedReader};

/// No disk here is a cloud seed: reading one is a test failure.
struct NoSeeds;

impl SeedReader for NoSeeds {
    fn read(
        &mut self,
        device: &Path,
        _: Filesystem,
        _: &str,
    ) -> Result<Option<Vec<u8>>, SeedError> {
        panic!("{} is no seed disk", device.display())
    }
}

fn mkfs(image: &Path, label: &str, content: &Path) -> bool {
    Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-d"])
        .arg(content)
        .arg(image)
        .arg("4M")
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn config_disk_wins_over_data_disk_and_baked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let roots = Roots {
        sys_block: dir.path().join("sys"),
        dev: dir.path().join("dev"),
        root: dir.path().join("root"),
    };
    for d in [&roots.sys_block, &roots.dev, &roots.root.join("etc/berth")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(roots.root.join("etc/berth/manifest.toml"), "# baked\n").expect("baked");
    for (dev, label, text) in [
        ("vda", "berth-data", Some("# data\n")),
        ("vdb", "berth-config", Some("# config\n")),
        ("vdc", "other", Some("# other\n")),
        ("vdd", "berth-config", None),
    ] {
        let content = dir.path().join(format!("content-{dev}"));
        std::fs::create_dir_all(&content).expect("mkdir");
        if let Some(text) = text {
            std::fs::write(content.join("manifest.toml"), text).expect("manifest");
        }
        if !mkfs(&roots.dev.join(dev), label, &content) {
            eprintln!("mkfs.ext4 -d is not available; skipping");
            return;
        }
        std::fs::create_dir_all(roots.sys_block.join(dev)).expect("mkdir");
        std::fs::write(roots.sys_block.join(dev).join("size"), "8192\n").expect("size");
    }

    let disks = labelled_disks(&roots);
    let labels: Vec<&str> = disks.iter().map(|d| d.label.as_str()).collect();
    assert_eq!(
        labels,
        ["berth-data", "berth-config", "other", "berth-config"]
    );

    let found =
        discover(&Cmdline::parse("quiet"), &roots, &disks, &mut NoSeeds).expect("a manifest");
    assert_eq!(found.source, Source::Disk(roots.dev.join("vdb")));
    assert_eq!(found.text, "# config\n");

    // Without the config disk the data disk's manifest is used.
    let data_only: Vec<_> = disks
        .iter()
        .filter(|d| d.label != "berth-config")
        .cloned()
        .collect();
    let found =
        discover(&Cmdline::parse(""), &roots, &data_only, &mut NoSeeds).expect("a manifest");
    assert_eq!(found.source, Source::Disk(roots.dev.join("vda")));

    // A config disk without /manifest.toml falls through to the baked one.
    let empty: Vec<_> = disks
        .iter()
        .filter(|d| d.device.ends_with("vdd"))
        .cloned()
        .collect();
    let found = discover(&Cmdline::parse(""), &roots, &empty, &mut NoSeeds).expect("a manifest");
    assert_eq!(found.source, Source::Baked);
}
