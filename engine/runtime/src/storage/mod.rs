//! The storage backends on real files and devices, behind `ordo_core::storage::Storage`:
//! `file` (positional I/O inside submit) and, on Linux, `uring` (io_uring, O_DIRECT where
//! the filesystem allows it). Both run the shared contract suite (`file_contract`).

#[forbid(unsafe_code)]
pub mod file;
#[cfg(test)]
#[forbid(unsafe_code)]
mod file_contract;
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // io_uring: SQEs point the kernel at our buffers (see uring.rs).
pub mod uring;
#[forbid(unsafe_code)]
mod volume_file;

pub use file::FileStorage;
#[cfg(target_os = "linux")]
pub use uring::UringStorage;
