//! Volume specs as users write them (`NAME=mem:SIZE`, `NAME=file:PATH[:SIZE]`,
//! `NAME=spdk:BDEV`), byte sizes with binary suffixes, and `Volume`: one storage type over
//! every backend so a daemon's volumes can mix them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use std::path::Path;

use ordo_core::storage::{
    Completion, Geometry, IoTag, MemStorage, Storage, StorageError, DEFAULT_MAX_IO_BYTES,
};
use ordo_runtime::storage::{FileStorage, UringStorage};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("{0:?} is not a size (a number of bytes, optionally with K, M, G or T: binary units)")]
    BadSize(String),
    #[error("{0:?} is not NAME=mem:SIZE, NAME=file:PATH[:SIZE] or NAME=spdk:BDEV")]
    BadVolume(String),
}

/// A number of bytes; parses `4096`, `64K`, `256M`, `1G`, `2T` (and `64KiB`, ... too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadSize(text.to_string());
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, suffix) = trimmed.split_at(split);
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let shift = match suffix.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => return Err(bad()),
        };
        number.checked_mul(1 << shift).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// In a config file a size is a string (`"256M"`) or a plain number of bytes.
impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Memory, zeroed at start: gone when the process ends.
    Mem { size: u64 },
    /// A file or block device; created (sparse) or extended to `size` when given.
    File { path: PathBuf, size: Option<u64> },
    /// An SPDK bdev of the `--spdk-config` (builds with the `spdk` feature).
    Spdk { bdev: String },
}

/// One `--volume NAME=SPEC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    pub backend: Backend,
}

impl FromStr for VolumeSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadVolume(text.to_string());
        let (name, spec) = text.split_once('=').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        let backend = if let Some(size) = spec.strip_prefix("mem:") {
            Backend::Mem {
                size: size.parse::<ByteSize>()?.0,
            }
        } else if let Some(rest) = spec.strip_prefix("file:") {
            // A trailing `:SIZE` is a size only if it parses as one; `file:a:b` is a path.
            let (path, size) = match rest.rsplit_once(':') {
                Some((path, size)) if size.parse::<ByteSize>().is_ok() => {
                    (path, Some(size.parse::<ByteSize>()?.0))
                }
                _ => (rest, None),
            };
            if path.is_empty() {
                return Err(bad());
            }
            Backend::File {
                path: PathBuf::from(path),
                size,
            }
        } else if let Some(bdev) = spec.strip_prefix("spdk:") {
            if bdev.is_empty() {
                return Err(bad());
            }
            Backend::Spdk {
                bdev: bdev.to_string(),
            }
        } else {
            return Err(bad());
        };
        Ok(VolumeSpec {
            name: name.to_string(),
            backend,
        })
    }
}

impl fmt::Display for VolumeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Mem { size } => write!(f, "{}=mem:{}", self.name, ByteSize(*size)),
            Backend::File { path, size: None } => {
                write!(f, "{}=file:{}", self.name, path.display())
            }
            Backend::File {
                path,
                size: Some(size),
            } => write!(
                f,
                "{}=file:{}:{}",
                self.name,
                path.display(),
                ByteSize(*size)
            ),
            Backend::Spdk { bdev } => write!(f, "{}=spdk:{bdev}", self.name),
        }
    }
}

impl Serialize for VolumeSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for VolumeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Requests in flight per `file:` volume (and its preallocated aligned buffers of up to
/// 1 MiB each, touched only when used).
pub const FILE_QUEUE_DEPTH: u32 = 64;

/// A volume on any backend.
#[derive(Debug)]
pub enum Volume {
    Mem(MemStorage),
    /// io_uring, O_DIRECT where the filesystem allows it.
    Uring(Box<UringStorage>),
    /// Positional I/O: where io_uring is unavailable (an old kernel, a seccomp filter).
    File(FileStorage),
    /// An SPDK bdev, driven from the thread that opened it.
    #[cfg(feature = "spdk")]
    Spdk(Box<ordo_spdk::BdevStorage>),
}

impl Volume {
    pub fn open(spec: &VolumeSpec, block_size: u32) -> anyhow::Result<Volume> {
        match &spec.backend {
            Backend::Mem { size } => Ok(Volume::Mem(MemStorage::new(Geometry::new(
                *size, block_size,
            )?)?)),
            Backend::File { path, size } => Ok(Volume::open_file(
                path,
                *size,
                block_size,
                DEFAULT_MAX_IO_BYTES,
            )?),
            Backend::Spdk { bdev } => {
                Volume::open_bdev(bdev, Some(block_size), DEFAULT_MAX_IO_BYTES)
            }
        }
    }

    /// SPDK bdev `name` on this thread (the poller's: an SPDK bdev is driven from the
    /// thread that opened it), with requests of at most `max_io_bytes`; its block size
    /// must be `block_size` if given. SPDK must have been started (`--spdk-config`).
    #[cfg(feature = "spdk")]
    pub fn open_bdev(
        name: &str,
        block_size: Option<u32>,
        max_io_bytes: u32,
    ) -> anyhow::Result<Volume> {
        let env = ordo_spdk::env().ok_or(ordo_spdk::SpdkError::NotStarted)?;
        let storage = ordo_spdk::BdevStorage::open(env, name, FILE_QUEUE_DEPTH, max_io_bytes)?;
        let bdev_block = storage.geometry().block_size;
        if let Some(block_size) = block_size {
            anyhow::ensure!(
                bdev_block == block_size,
                "SPDK bdev {name} has {bdev_block}-byte blocks, the block size here is {block_size} (--block-size)"
            );
        }
        Ok(Volume::Spdk(Box::new(storage)))
    }

    #[cfg(not(feature = "spdk"))]
    pub fn open_bdev(
        _name: &str,
        _block_size: Option<u32>,
        _max_io_bytes: u32,
    ) -> anyhow::Result<Volume> {
        anyhow::bail!("{}", crate::spdk::NOT_BUILT)
    }

    /// A file or block device through io_uring (saying in the log whether O_DIRECT was
    /// granted), or through positional I/O if this system has no io_uring. Its requests
    /// are at most `max_io_bytes`.
    pub fn open_file(
        path: &Path,
        size: Option<u64>,
        block_size: u32,
        max_io_bytes: u32,
    ) -> Result<Volume, StorageError> {
        let opened =
            UringStorage::open_with_max_io(path, size, block_size, FILE_QUEUE_DEPTH, max_io_bytes);
        let uring_error = match opened {
            Ok(storage) => {
                if storage.direct_io() {
                    tracing::info!("{}: io_uring, O_DIRECT", path.display());
                } else {
                    tracing::warn!(
                        "{}: the filesystem refuses O_DIRECT; io_uring with buffered I/O and fdatasync on flush",
                        path.display()
                    );
                }
                return Ok(Volume::Uring(Box::new(storage)));
            }
            Err(error @ StorageError::BadGeometry(_)) => return Err(error),
            Err(error) => error,
        };
        let mut storage = FileStorage::open(path, size, block_size)?;
        storage.set_max_io_bytes(max_io_bytes)?;
        tracing::warn!(
            "{}: io_uring unavailable ({uring_error}); positional I/O with fdatasync on flush",
            path.display()
        );
        Ok(Volume::File(storage))
    }

    fn inner(&self) -> &dyn Storage {
        match self {
            Volume::Mem(s) => s,
            Volume::Uring(s) => &**s,
            Volume::File(s) => s,
            #[cfg(feature = "spdk")]
            Volume::Spdk(s) => &**s,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Storage {
        match self {
            Volume::Mem(s) => s,
            Volume::Uring(s) => &mut **s,
            Volume::File(s) => s,
            #[cfg(feature = "spdk")]
            Volume::Spdk(s) => &mut **s,
        }
    }
}

impl Storage for Volume {
    fn geometry(&self) -> Geometry {
        self.inner().geometry()
    }

    fn submit_write(&mut self, tag: IoTag, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.inner_mut().submit_write(tag, offset, data)
    }

    fn submit_write_with(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), StorageError> {
        self.inner_mut().submit_write_with(tag, offset, len, fill)
    }

    fn submit_write_zeroes(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), StorageError> {
        self.inner_mut()
            .submit_write_zeroes(tag, offset, len, unmap)
    }
    fn submit_read(&mut self, tag: IoTag, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.inner_mut().submit_read(tag, offset, buf)
    }

    fn submit_flush(&mut self, tag: IoTag) -> Result<(), StorageError> {
        self.inner_mut().submit_flush(tag)
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        self.inner_mut().poll(out, max)
    }

    fn in_flight(&self) -> u32 {
        self.inner().in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "spdk"))]
    #[test]
    fn an_spdk_volume_in_a_build_without_spdk_says_how_to_get_one() {
        let volume = "data=spdk:Malloc0".parse().unwrap();
        let error = Volume::open(&volume, 4096).unwrap_err().to_string();
        assert!(error.contains("--features spdk"), "{error}");
    }

    #[test]
    fn sizes_parse_with_binary_suffixes_and_refuse_nonsense() {
        let ok = |text: &str| text.parse::<ByteSize>().unwrap().0;
        assert_eq!(ok("4096"), 4096);
        assert_eq!(ok("64K"), 64 << 10);
        assert_eq!(ok("256M"), 256 << 20);
        assert_eq!(ok("1GiB"), 1 << 30);
        assert_eq!(ok("2t"), 2 << 40);
        for bad in ["", "M", "12Q", "-1", "1.5G", "99999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(ByteSize(256 << 20).to_string(), "256M");
        assert_eq!(ByteSize(4097).to_string(), "4097");
    }

    #[test]
    fn volume_specs_parse_and_print_back() {
        let cases = [
            ("data=mem:64M", "data", Backend::Mem { size: 64 << 20 }),
            (
                "log=file:/var/lib/ordo/log.img:1G",
                "log",
                Backend::File {
                    path: "/var/lib/ordo/log.img".into(),
                    size: Some(1 << 30),
                },
            ),
            (
                "db=file:/dev/loop3",
                "db",
                Backend::File {
                    path: "/dev/loop3".into(),
                    size: None,
                },
            ),
        ];
        for (text, name, backend) in cases {
            let spec: VolumeSpec = text.parse().unwrap();
            assert_eq!(spec.name, name);
            assert_eq!(spec.backend, backend);
            assert_eq!(spec.to_string(), text);
        }
        let spdk: VolumeSpec = "db=spdk:Malloc0".parse().unwrap();
        assert_eq!(
            spdk.backend,
            Backend::Spdk {
                bdev: "Malloc0".into()
            }
        );
        assert_eq!(spdk.to_string(), "db=spdk:Malloc0");
        for bad in [
            "data",
            "=mem:1M",
            "data=mem:",
            "data=disk:/x",
            "data=file:",
            "data=spdk:",
        ] {
            assert!(bad.parse::<VolumeSpec>().is_err(), "{bad:?} parsed");
        }
    }
}
