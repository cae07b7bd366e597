//! Opening a regular file or block device as a volume: the sizing rules that the
//! positional-I/O and io_uring backends share, so that both open the same path the same way.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use ordo_core::storage::{Geometry, StorageError};

/// Opens the volume at `path` read+write, sized by the rules `FileStorage::open` states,
/// and returns the file and a geometry with the default request and queue limits. `open`
/// makes the open(2) call (`OpenOptions::open` does), so that a backend can add its own
/// flags (and retry without them).
pub(super) fn open_volume<F>(
    path: &Path,
    size_bytes: Option<u64>,
    block_size: u32,
    open: F,
) -> Result<(File, Geometry), StorageError>
where
    F: FnOnce(&OpenOptions, &Path) -> std::io::Result<File>,
{
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    let (file, size_bytes) = match size_bytes {
        Some(size_bytes) => {
            // Refuse a bad geometry before creating anything.
            Geometry::new(size_bytes, block_size)?;
            let file = open(options.create(true).truncate(false), path)?;
            if volume_len(&file)? < size_bytes {
                if !file.metadata()?.is_file() {
                    return Err(StorageError::BadGeometry(
                        "device is smaller than the requested size",
                    ));
                }
                file.set_len(size_bytes)?;
            }
            (file, size_bytes)
        }
        None => {
            let file = open(&options, path)?;
            let size_bytes = volume_len(&file)?;
            (file, size_bytes)
        }
    };
    let geometry = Geometry::new(size_bytes, block_size)?;
    debug_assert!(volume_len(&file).is_ok_and(|len| len >= geometry.size_bytes));
    Ok((file, geometry))
}

/// The length of a regular file, or of a block device, whose metadata length is 0; its
/// size is where its end is.
fn volume_len(file: &File) -> Result<u64, StorageError> {
    let metadata = file.metadata()?;
    if metadata.file_type().is_block_device() {
        let mut handle = file;
        Ok(handle.seek(SeekFrom::End(0))?)
    } else {
        Ok(metadata.len())
    }
}

/// Makes `len` bytes at `offset` of `file` read back as zeros with the cheapest means the
/// file or device has: with `unmap`, a punched hole; without, an allocated zeroed range
/// (`FALLOC_FL_ZERO_RANGE`, or a hole allocated again where only holes are supported, as
/// on tmpfs). Where it has neither, zeros are written from the buffer `buffer` gives
/// (its length at a time; what O_DIRECT needs it to be, aligned, is the caller's part).
pub(super) fn zero_range<'a>(
    file: &File,
    offset: u64,
    len: u64,
    unmap: bool,
    buffer: impl FnOnce() -> &'a mut [u8],
) -> std::io::Result<()> {
    let write_zeros = |offset: u64, len: u64| {
        use std::os::unix::fs::FileExt;
        let zeros = buffer();
        zeros.fill(0);
        let mut at = 0;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], offset + at)?;
            at += n as u64;
        }
        Ok(())
    };
    use rustix::fs::{fallocate, FallocateFlags as F};
    let unsupported = |e: &rustix::io::Errno| {
        matches!(*e, rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS)
    };
    if !unmap {
        match fallocate(file, F::ZERO_RANGE | F::KEEP_SIZE, offset, len) {
            Err(e) if unsupported(&e) => {}
            other => return other.map_err(Into::into),
        }
    }
    match fallocate(file, F::PUNCH_HOLE | F::KEEP_SIZE, offset, len) {
        Err(e) if unsupported(&e) => return write_zeros(offset, len),
        Err(e) => return Err(e.into()),
        Ok(()) if unmap => return Ok(()),
        Ok(()) => {}
    }
    // The hole reads as zeros already; allocating it keeps NO_HOLE's promise.
    match fallocate(file, F::KEEP_SIZE, offset, len) {
        Err(e) if unsupported(&e) => write_zeros(offset, len),
        other => other.map_err(Into::into),
    }
}
