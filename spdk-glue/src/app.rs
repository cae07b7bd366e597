//! SPDK's application framework: reactors pinned to the cores of a mask, and ordo's
//! pollers run as SPDK pollers on SPDK threads on those reactors (`Env::spawn_poller`).
//! Started once per process (spdk#612: `spdk_app_start` cannot run twice) by `env::init`
//! when the options name reactor cores; it loads the same JSON config.

use std::ffi::{c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;

use ordo_runtime::idle::Round;

use crate::error::SpdkError;
use crate::process::{join_spdk_thread, start_spdk_thread, EnvOptions};
use crate::sys;

/// Set once the framework runs: bdevs opened on a reactor get their thread there.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// The CPUs the process may run on, from before the reactors pinned anything: threads a
/// poller's `make` starts get these, not the reactor's one core.
static PROCESS_CPUS: Mutex<Option<libc::cpu_set_t>> = Mutex::new(None);
static REACTOR_CORES: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it for
    // this thread (pid 0) and returns 0 on success.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t; this changes only this thread's affinity.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        tracing::warn!("SPDK: could not change a reactor thread's CPU affinity");
    }
}

/// Runs `f` on this reactor thread with the process's CPUs but the reactors' (if any are
/// left), so that threads it starts (NBD, control, lane connector and receivers) do not
/// compete with a reactor that spins; then pins it back.
fn unpinned<R>(f: impl FnOnce() -> R) -> R {
    let process = *PROCESS_CPUS.lock().unwrap_or_else(|e| e.into_inner());
    let reactor = affinity();
    if let Some(mut process) = process {
        let mut others = process;
        for &core in REACTOR_CORES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // SAFETY: clears one bit of a set we own; CPU_CLR ignores cores beyond it.
            unsafe { libc::CPU_CLR(core as usize, &mut others) };
        }
        // SAFETY: counts the bits of a set we own.
        if unsafe { libc::CPU_COUNT(&others) } > 0 {
            process = others;
        }
        set_affinity(&process);
    }
    let result = f();
    if let Some(reactor) = &reactor {
        set_affinity(reactor);
    }
    result
}

type PollFn = Box<dyn FnMut() -> Round>;
type MakeFn = Box<dyn FnOnce() -> Result<PollFn, String> + Send>;

/// A poller started by `Env::spawn_poller`.
#[derive(Debug)]
pub struct PollerHandle {
    finished: mpsc::Receiver<Result<(), String>>,
}

impl PollerHandle {
    /// Waits until the poller returned `Round::Done` (Ok), or failed to start or panicked
    /// (the message).
    pub fn wait(self) -> Result<(), String> {
        self.finished
            .recv()
            .unwrap_or_else(|_| Err("the poller's thread went away".into()))
    }
}

/// True while the application framework runs in this process.
pub fn running() -> bool {
    // Relaxed: see `RUNNING`.
    RUNNING.load(Ordering::Relaxed)
}

/// True on an OS thread running one of the framework's reactors.
pub fn on_reactor() -> bool {
    // Relaxed: set once, before any poller can run.
    RUNNING.load(Ordering::Relaxed)
        // SAFETY: reads this OS thread's current SPDK thread and EAL core.
        && unsafe { !sys::spdk_get_thread().is_null() && sys::spdk_env_get_current_core() != u32::MAX }
}

/// Starts the framework on a thread of its own (it becomes the first core's reactor) with
/// reactors on `cores`, and returns once the config is loaded.
pub(crate) fn start(options: &EnvOptions, cores: &[u32]) -> Result<(), SpdkError> {
    let bad = |message: &str| SpdkError::Config {
        path: options.config.clone(),
        message: message.into(),
    };
    let strings = AppStrings {
        name: CString::new(options.name.as_str()).map_err(|_| bad("a name with a NUL byte"))?,
        config: CString::new(options.config.as_os_str().as_encoded_bytes())
            .map_err(|_| bad("a path with a NUL byte"))?,
        mask: CString::new(format!(
            "[{}]",
            cores
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ))
        .map_err(|_| bad("a core list with a NUL byte"))?,
    };
    *PROCESS_CPUS.lock().unwrap_or_else(|e| e.into_inner()) = affinity();
    *REACTOR_CORES.lock().unwrap_or_else(|e| e.into_inner()) = cores.to_vec();
    let options = options.clone();
    start_spdk_thread(
        "spdk-reactor",
        move |report| run(&options, strings, report),
        stop_at_exit,
    )
}

struct AppStrings {
    name: CString,
    config: CString,
    mask: CString,
}

/// The first reactor's thread: runs the framework until `spdk_app_stop`.
fn run(options: &EnvOptions, strings: AppStrings, report: mpsc::SyncSender<Result<(), SpdkError>>) {
    // SAFETY: plain C data; spdk_app_opts_init fills every field for our struct's size.
    let mut opts: sys::spdk_app_opts = unsafe { std::mem::zeroed() };
    // SAFETY: `opts` is writable and this is its size.
    unsafe { sys::spdk_app_opts_init(&mut opts, std::mem::size_of::<sys::spdk_app_opts>()) };
    opts.name = strings.name.as_ptr();
    opts.json_config_file = strings.config.as_ptr();
    opts.reactor_mask = strings.mask.as_ptr();
    // No RPC server (two daemons on a host would fight over its socket); the daemons
    // handle their own signals.
    opts.rpc_addr = ptr::null();
    opts.disable_signal_handlers = true;
    opts.no_huge = options.no_huge;
    opts.no_pci = options.no_pci;
    if let Some(mb) = options.mem_size_mb {
        opts.mem_size = c_int::try_from(mb).unwrap_or(c_int::MAX);
    }
    // Taken by `app_started`; leaked (one sender) if the framework fails before it.
    let started = Box::into_raw(Box::new(report.clone()));
    // SAFETY: `opts` and its strings outlive the call (it returns only after
    // spdk_app_stop); `started` is read once, by `app_started`.
    let rc = unsafe { sys::spdk_app_start(&mut opts, Some(app_started), started.cast()) };
    // Relaxed: nothing runs on the reactors any more.
    RUNNING.store(false, Ordering::Relaxed);
    if rc != 0 {
        // The start callback never ran if it failed before; if it did, the receiver has
        // its answer already and ignores this one.
        let _ = report.try_send(Err(SpdkError::AppStart(rc)));
    }
    // SAFETY: spdk_app_start returned; its counterpart releases the environment.
    unsafe { sys::spdk_app_fini() };
}

/// On the first reactor, once the subsystems and the config are up.
extern "C" fn app_started(ctx: *mut c_void) {
    // SAFETY: `ctx` is the sender boxed in `run`, handed over once.
    let report = unsafe { Box::from_raw(ctx.cast::<mpsc::SyncSender<Result<(), SpdkError>>>()) };
    // Relaxed: published to pollers by the SPDK messages that start them.
    RUNNING.store(true, Ordering::Relaxed);
    let _ = report.try_send(Ok(()));
}

/// Process exit: stop the framework (its reactors would run on while the process frees
/// what they use) and wait for it.
extern "C" fn stop_at_exit() {
    // Relaxed: see `RUNNING`.
    if RUNNING.load(Ordering::Relaxed) {
        // SAFETY: the application thread lives while the framework runs; sending a
        // message to it is allowed from any OS thread.
        unsafe {
            let app = sys::spdk_thread_get_app_thread();
            if !app.is_null() {
                sys::spdk_thread_send_msg(app, Some(stop_app), ptr::null_mut());
            }
        }
    }
    join_spdk_thread();
}

extern "C" fn stop_app(_ctx: *mut c_void) {
    // SAFETY: on the application thread, as spdk_app_stop requires.
    unsafe { sys::spdk_app_stop(0) };
}

/// Starts a poller on a new SPDK thread on `core`'s reactor: `make` runs there first
/// (open bdevs in it: they belong to that reactor; threads it starts may run on any of
/// the process's CPUs), then what it returns runs every reactor round until it returns
/// `Round::Done`.
pub(crate) fn spawn_poller(core: u32, make: MakeFn) -> Result<PollerHandle, SpdkError> {
    // SAFETY: plain data, set below.
    let mut cpuset: sys::spdk_cpuset = unsafe { std::mem::zeroed() };
    // SAFETY: the set is ours; a core outside the reactor mask is refused by the
    // scheduler below (the thread creation fails).
    unsafe {
        sys::spdk_cpuset_zero(&mut cpuset);
        sys::spdk_cpuset_set_cpu(&mut cpuset, core, true);
    }
    // SAFETY: the framework runs (the caller checked); the name is a literal and the
    // cpuset is copied.
    let thread = unsafe { sys::spdk_thread_create(c"ordo_poller".as_ptr(), &cpuset) };
    if thread.is_null() {
        return Err(SpdkError::Thread(
            "no SPDK thread on that core (in the reactor mask?)",
        ));
    }
    let (finished, handle) = mpsc::sync_channel(1);
    let launch = Box::into_raw(Box::new(Launch { make, finished }));
    // SAFETY: `thread` is live; sending a message is allowed from any OS thread; `launch`
    // is reclaimed exactly once, by `launch_poller` or below.
    let rc = unsafe { sys::spdk_thread_send_msg(thread, Some(launch_poller), launch.cast()) };
    if rc != 0 {
        // SAFETY: not sent, so still ours.
        drop(unsafe { Box::from_raw(launch) });
        return Err(SpdkError::Thread("could not message the new SPDK thread"));
    }
    Ok(PollerHandle { finished: handle })
}

struct Launch {
    make: MakeFn,
    finished: mpsc::SyncSender<Result<(), String>>,
}

struct Running {
    poll: PollFn,
    poller: *mut sys::spdk_poller,
    finished: mpsc::SyncSender<Result<(), String>>,
}

/// On the poller's SPDK thread: builds its state and registers it.
extern "C" fn launch_poller(arg: *mut c_void) {
    // SAFETY: the `Launch` boxed in `spawn_poller`, handed over once.
    let launch = unsafe { Box::from_raw(arg.cast::<Launch>()) };
    let Launch { make, finished } = *launch;
    let made = unpinned(|| catch_unwind(AssertUnwindSafe(make)))
        .unwrap_or_else(|_| Err("panicked".into()));
    let poll = match made {
        Ok(poll) => poll,
        Err(why) => {
            // SAFETY: on the poller's own SPDK thread, which has nothing registered.
            unsafe { sys::spdk_thread_exit(sys::spdk_get_thread()) };
            let _ = finished.send(Err(why));
            return;
        }
    };
    let running = Box::into_raw(Box::new(Running {
        poll,
        poller: ptr::null_mut(),
        finished,
    }));
    // SAFETY: on this SPDK thread; `running` stays valid until `run_poller` unregisters
    // the poller and frees it; period 0 means every reactor round.
    unsafe {
        (*running).poller = sys::spdk_poller_register(Some(run_poller), running.cast(), 0);
    }
}

/// One round of an ordo poller, called by its reactor.
extern "C" fn run_poller(arg: *mut c_void) -> c_int {
    let running = arg.cast::<Running>();
    // SAFETY: `arg` is the `Running` registered with this poller, alive until freed
    // below; no other reference to it exists during the call.
    let result = catch_unwind(AssertUnwindSafe(|| unsafe { ((*running).poll)() }));
    let outcome = match result {
        Ok(Round::Busy) => return sys::spdk_thread_poller_rc::SPDK_POLLER_BUSY as c_int,
        Ok(Round::Idle) => return sys::spdk_thread_poller_rc::SPDK_POLLER_IDLE as c_int,
        Ok(Round::Done) => Ok(()),
        Err(_) => Err("panicked".to_string()),
    };
    // SAFETY: unregistering a poller from its own callback is allowed; then nothing
    // refers to `running` any more and it is freed once, on its thread (dropping the
    // poller's state: its bdevs close here). The thread then exits.
    let (outcome, finished) = unsafe {
        sys::spdk_poller_unregister(&mut (*running).poller);
        let running = Box::from_raw(running);
        let finished = running.finished.clone();
        // A Drop that panics (after a round that did) must not unwind into SPDK either.
        let dropped = catch_unwind(AssertUnwindSafe(move || drop(running)));
        let outcome = outcome.and(dropped.map_err(|_| "panicked while stopping".to_string()));
        sys::spdk_thread_exit(sys::spdk_get_thread());
        (outcome, finished)
    };
    let _ = finished.send(outcome);
    sys::spdk_thread_poller_rc::SPDK_POLLER_BUSY as c_int
}
