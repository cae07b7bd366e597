//! WRITE_ZEROES and TRIM through the export, from real clients: nbdcopy copying a sparse
//! image (it zeroes the holes instead of writing them), qemu-io zeroing with and without
//! leave to deallocate (NBD's NO_HOLE), and fstrim on a mounted filesystem (the loop
//! device's discards reach the export through nbdfuse as TRIM). Each zeroing is one
//! record on the link, applied in its data set; the replica must equal the primary.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{assert_verifies, number, random_bytes, run, Pair, CATCH_UP};

/// Bytes of `path` that hold data on disk (not holes).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn zeroes(pair: &Pair) -> u64 {
    number(&pair.primary.status(), &["counters", "zeroes"])
}

fn assert_replicated(pair: &Pair, image: &[u8]) {
    pair.wait_caught_up(CATCH_UP);
    assert_verifies(pair);
    let primary = std::fs::read(&pair.primary_image).unwrap();
    assert!(primary == image, "the primary differs from the image");
    let replica = std::fs::read(&pair.replica_image).unwrap();
    assert!(replica == image, "the replica differs from the image");
}

#[test]
fn nbdcopy_of_a_sparse_image_zeroes_its_holes_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::start(dir.path(), "64M", &[]);
    let uri = format!("nbd://{}/data", pair.nbd);
    let info = run("nbdinfo", &[&uri]);
    assert!(
        info.contains("can_zero: true") && info.contains("can_trim: true"),
        "{info}"
    );

    // First every byte written, then an image with 8 MiB of data and 56 of holes.
    let full = dir.path().join("full");
    std::fs::write(&full, random_bytes(64 << 20, 1)).unwrap();
    run("nbdcopy", &[&full.display().to_string(), &uri]);
    let mut image = vec![0u8; 64 << 20];
    for (i, chunk) in image.chunks_mut(8 << 20).enumerate() {
        chunk[..1 << 20].copy_from_slice(&random_bytes(1 << 20, 10 + i as u64));
    }
    let sparse = dir.path().join("sparse");
    let file = std::fs::File::create(&sparse).unwrap();
    file.set_len(64 << 20).unwrap();
    for i in 0..8u64 {
        use std::os::unix::fs::FileExt;
        let at = (i * (8 << 20)) as usize;
        file.write_all_at(&image[at..at + (1 << 20)], at as u64)
            .unwrap();
    }
    let before = zeroes(&pair);
    run("nbdcopy", &[&sparse.display().to_string(), &uri]);
    assert!(zeroes(&pair) > before, "nbdcopy zeroed the holes");
    assert_replicated(&pair, &image);
    // Whatever the primary's filesystem made of the zeroings, the replica's made the same.
    let (primary, replica) = (
        allocated(&pair.primary_image),
        allocated(&pair.replica_image),
    );
    assert!(
        replica <= primary + (1 << 20),
        "replica {replica} bytes allocated, primary {primary}"
    );
}

#[test]
fn qemu_io_zeroes_keep_or_free_the_range_as_no_hole_says() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::start(dir.path(), "16M", &[]);
    let uri = format!("nbd://{}/data", pair.nbd);
    let qemu_io = |command: &str| {
        let out = run("qemu-io", &["-f", "raw", "-c", command, &uri]);
        assert!(!out.contains("failed"), "qemu-io {command}: {out}");
    };
    qemu_io("write -P 0x5a 0 8M");
    pair.wait_caught_up(CATCH_UP);
    let written = allocated(&pair.primary_image);
    assert!(written >= 8 << 20, "{written}");

    // Without leave to unmap (NBD_CMD_FLAG_NO_HOLE): zeros, still allocated.
    qemu_io("write -z 0 4M");
    // With it, and unaligned: the partial blocks at the ends are written as zeros.
    qemu_io("write -z -u 4194000 4000000");
    let mut image = vec![0u8; 16 << 20];
    image[8194000..8 << 20].fill(0x5a);
    assert_replicated(&pair, &image);
    let freed = allocated(&pair.primary_image);
    assert!(
        freed <= written - (3 << 20) && freed >= 4 << 20,
        "allocated {written} -> {freed}: the NO_HOLE range stays, the other is freed"
    );
    let replica = allocated(&pair.replica_image);
    assert!(
        replica >= 4 << 20 && replica <= freed + (1 << 20),
        "replica allocated {replica}, primary {freed}"
    );
    assert!(zeroes(&pair) >= 2);
}
