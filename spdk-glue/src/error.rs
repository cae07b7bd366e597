//! What can go wrong between ordo and SPDK, typed.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpdkError {
    #[error("reading the SPDK config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("SPDK's environment did not start (DPDK EAL init failed: see SPDK's log above; hugepages reserved? try --spdk-no-huge for small tests)")]
    EnvInit,
    #[error("SPDK's environment was already started in this process with other options (SPDK starts once per process)")]
    AlreadyStarted,
    #[error(
        "SPDK's environment failed to start earlier in this process and cannot be started again"
    )]
    StartFailedBefore,
    #[error("SPDK's environment is not started (give --spdk-config)")]
    NotStarted,
    #[error("SPDK could not load {path} ({stage}: error {rc}; SPDK's log above says which call)")]
    LoadConfig {
        path: PathBuf,
        stage: &'static str,
        rc: i32,
    },
    #[error("SPDK: no thread could be created ({0})")]
    Thread(&'static str),
    #[error("SPDK bdev {name:?}: {what} (errno {errno})")]
    Bdev {
        name: String,
        what: &'static str,
        errno: i32,
    },
    #[error("SPDK bdev {name:?}: {what}")]
    BdevShape { name: String, what: String },
    #[error("SPDK's application framework did not start (error {0}; SPDK's log above says why)")]
    AppStart(i32),
    #[error("SPDK runs without reactors here (no reactor cores were given)")]
    NoReactors,
    #[error("core {0} runs no SPDK reactor (not in the reactor cores)")]
    NotAReactor(u32),
    #[error("with SPDK's reactors running, bdevs are opened by pollers on them (Env::spawn_poller), not from other threads")]
    NotOnReactor,
    #[error(
        "SPDK: out of DMA memory for {bytes} bytes (raise --spdk-mem-mb or reserve more hugepages)"
    )]
    DmaAlloc { bytes: usize },
}
