//! A filesystem on the export, as a new user makes one: `nbdfuse` exposes the primary's
//! export as a file, a loop device sits on it, `mkfs.ext4` formats it and the kernel
//! mounts it. The kernel passes the loop device's 512-byte sectors through FUSE, so the
//! export sees writes that start and end inside its 4 KiB blocks; the filesystem must
//! come back fsck-clean, the files as written, and the replica equal to the primary;
//! fstrim's discards arrive as TRIM.
//! Needs root, /dev/fuse and loop devices, and nbdfuse, e2fsprogs and util-linux (CI
//! installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{assert_verifies, number, random_bytes, run, wait_until, Pair, CATCH_UP};

/// The export as a block device: nbdfuse's file, a loop device on it, and where its
/// filesystem is mounted, each undone on drop (in reverse) even when a test fails.
struct Attached {
    fuse_dir: PathBuf,
    nbdfuse: Child,
    device: String,
    mounted: Option<PathBuf>,
}

impl Attached {
    fn new(uri: &str, dir: &Path) -> Attached {
        let fuse_dir = dir.join("fuse");
        std::fs::create_dir_all(&fuse_dir).unwrap();
        let log = std::fs::File::create(dir.join("nbdfuse.log")).unwrap();
        let nbdfuse = Command::new("nbdfuse")
            .arg(&fuse_dir)
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nbdfuse runs (CI installs it with apt-get)");
        let file = fuse_dir.join("nbd");
        wait_until("nbdfuse shows the export", Duration::from_secs(30), || {
            std::fs::metadata(&file).is_ok_and(|m| m.len() > 0)
        });
        let device = run("losetup", &["-f", "--show", &file.display().to_string()])
            .trim()
            .to_string();
        assert!(device.starts_with("/dev/loop"), "{device}");
        Attached {
            fuse_dir,
            nbdfuse,
            device,
            mounted: None,
        }
    }

    fn mount(&mut self, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        run("mount", &[&self.device, &at.display().to_string()]);
        self.mounted = Some(at.to_path_buf());
    }

    fn unmount(&mut self) {
        if let Some(at) = self.mounted.take() {
            run("umount", &[&at.display().to_string()]);
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(at) = self.mounted.take() {
            let _ = Command::new("umount").arg(&at).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.fuse_dir)
            .status();
        let _ = self.nbdfuse.kill();
        let _ = self.nbdfuse.wait();
    }
}

/// Files of several sizes (a byte, a sector and a bit, a block and a bit, 3 MiB) in a
/// few directories, with their contents.
fn files() -> Vec<(PathBuf, Vec<u8>)> {
    [1usize, 700, 4097, 3 << 20, 12_345]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let path = PathBuf::from(format!("d{}/e{}/f{i}", i % 2, i % 3));
            (path, random_bytes(len, 500 + i as u64))
        })
        .collect()
}

#[test]
fn a_filesystem_made_through_nbdfuse_on_a_loop_device_is_fsck_clean_and_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::start(dir.path(), "64M", &[]);
    let uri = format!("nbd://{}/data", pair.nbd);
    let mnt = dir.path().join("mnt");
    let mut attached = Attached::new(&uri, dir.path());
    run("mkfs.ext4", &["-q", "-F", &attached.device]);
    attached.mount(&mnt);
    for (path, data) in files() {
        let path = mnt.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
    }
    // A file written and deleted, then fstrim: the loop device's discards reach the
    // export through nbdfuse as TRIM, each a zeroing record replicated in its data set.
    std::fs::write(mnt.join("scratch"), random_bytes(16 << 20, 99)).unwrap();
    run("sync", &[]);
    std::fs::remove_file(mnt.join("scratch")).unwrap();
    run("sync", &[]);
    let zeroes = || number(&pair.primary.status(), &["counters", "zeroes"]);
    let before = zeroes();
    let trimmed = run("fstrim", &["-v", &mnt.display().to_string()]);
    assert!(trimmed.contains("trimmed"), "{trimmed}");
    assert!(zeroes() > before, "fstrim reached the export: {trimmed}");
    attached.unmount();

    // Mounted again from a cold cache: every file reads back as written.
    run("blockdev", &["--flushbufs", &attached.device]);
    attached.mount(&mnt);
    for (path, data) in files() {
        let read = std::fs::read(mnt.join(&path)).unwrap();
        assert!(read == data, "{} reads back different", path.display());
    }
    attached.unmount();
    let fsck = Command::new("e2fsck")
        .args(["-fn", &attached.device])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn found problems:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    drop(attached);

    pair.wait_caught_up(CATCH_UP);
    assert_verifies(&pair);
    let primary = std::fs::read(&pair.primary_image).unwrap();
    let replica = std::fs::read(&pair.replica_image).unwrap();
    assert!(primary == replica, "the replica differs from the primary");
}

/// qemu-io at byte offsets: the largest request (1 MiB) starting inside a block (the
/// export sends it as two writes), a single byte, two bytes across a block boundary over
/// it; each reads back as written, and the replica equals the primary.
#[test]
fn writes_at_any_offset_read_back_and_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::start(dir.path(), "16M", &[]);
    let uri = format!("nbd://{}/data", pair.nbd);
    let qemu_io = |commands: &[&str]| {
        let mut args = vec!["-f", "raw"];
        for command in commands {
            args.extend(["-c", command]);
        }
        args.push(&uri);
        let out = run("qemu-io", &args);
        assert!(!out.contains("failed"), "qemu-io {commands:?}: {out}");
    };
    qemu_io(&[
        "write -P 0x5a 1000 1M",
        "write -P 0x33 3 1",
        "write -P 0x77 4095 2",
    ]);
    qemu_io(&[
        "read -P 0 0 3",
        "read -P 0x33 3 1",
        "read -P 0 4 996",
        "read -P 0x5a 1000 3095",
        "read -P 0x77 4095 2",
        "read -P 0x5a 4097 1045479",
        "read -P 0 1049576 4096",
    ]);
    pair.wait_caught_up(CATCH_UP);
    assert_verifies(&pair);
    let primary = std::fs::read(&pair.primary_image).unwrap();
    assert!(primary[1000..4095].iter().all(|&b| b == 0x5a));
    assert_eq!(primary[3], 0x33);
    assert!(primary == std::fs::read(&pair.replica_image).unwrap());
}
