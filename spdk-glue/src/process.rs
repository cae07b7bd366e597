//! What SPDK has once per process, whichever way it runs (`env` on ordo's threads, `app`
//! on reactors): the options it starts with, and the one thread it runs on, started here
//! and joined at exit.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::error::SpdkError;

/// How to start SPDK's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvOptions {
    /// Names the process to DPDK (its shared files are per process id, so several ordo
    /// processes can run at once).
    pub name: String,
    /// An SPDK JSON config: `{"subsystems": [{"subsystem": "bdev", "config": [...]}]}`.
    pub config: PathBuf,
    /// Memory for DMA buffers and bdevs, in MiB (required without hugepages).
    pub mem_size_mb: Option<u32>,
    /// Plain memory instead of hugepages: for tests and small machines; no PCI devices.
    pub no_huge: bool,
    /// Do not probe PCI devices (malloc, aio and other software bdevs only).
    pub no_pci: bool,
    /// Run SPDK's reactors on these cores (the first is the main reactor) and ordo's
    /// pollers on them; `None`: ordo's own threads drive SPDK.
    pub reactor_cores: Option<Vec<u32>>,
}

/// The thread SPDK runs on (the application thread's poller, or the first reactor): one
/// per process, whichever way SPDK was started, joined at exit.
static SPDK_THREAD: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);

/// Starts the thread SPDK runs on, named `name`: `body` reports through its sender once
/// SPDK is up (or could not start), then keeps SPDK running until told to stop. Waits for
/// that report; then `at_exit`, which stops SPDK and calls `join_spdk_thread`, is
/// registered to run at process exit.
pub(crate) fn start_spdk_thread(
    name: &str,
    body: impl FnOnce(mpsc::SyncSender<Result<(), SpdkError>>) + Send + 'static,
    at_exit: extern "C" fn(),
) -> Result<(), SpdkError> {
    let (report, outcome) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(report))
        .map_err(|_| SpdkError::Thread("SPDK's thread did not start"))?;
    outcome
        .recv()
        .unwrap_or(Err(SpdkError::Thread("SPDK's thread ended")))?;
    *SPDK_THREAD.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    // SAFETY: registers a plain `extern "C" fn()` valid for the whole process. Handlers
    // run in reverse order of registration, so it runs before the destructors SPDK and
    // DPDK registered when they were loaded.
    if unsafe { libc::atexit(at_exit) } != 0 {
        tracing::warn!("SPDK: no exit handler; the process may crash on exit");
    }
    Ok(())
}

/// At exit, once SPDK was told to stop: waits for its thread to end.
pub(crate) fn join_spdk_thread() {
    let handle = SPDK_THREAD.lock().ok().and_then(|mut h| h.take());
    if let Some(handle) = handle {
        let _ = handle.join();
    }
}
