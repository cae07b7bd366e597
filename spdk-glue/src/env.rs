//! SPDK's environment, started once per process (DPDK cannot be initialised twice in one
//! process, so there is no teardown before exit): DPDK's EAL (memory, no hugepages on
//! request) and the subsystems with the bdevs of a JSON config (the format SPDK's own
//! applications take), in one of two ways:
//! - on ordo's own threads (no reactor cores given): the thread library without SPDK's
//!   event framework, as SPDK's fio plugin runs it; a background thread owns SPDK's
//!   application thread and polls it, and each bdev's SPDK thread is polled by its owner;
//! - on reactors (`reactor_cores`): SPDK's application framework (`app.rs`), with ordo's
//!   pollers started as SPDK pollers on them by `Env::spawn_poller`.

use std::ffi::{c_int, c_void, CString};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use ordo_runtime::idle::Round;

use crate::app::PollerHandle;
use crate::error::SpdkError;
pub use crate::process::EnvOptions;
use crate::process::{join_spdk_thread, start_spdk_thread};
use crate::sys;

/// A JSON config larger than this is refused before it is read.
const CONFIG_BYTES_MAX: u64 = 16 << 20;
/// How long the application thread's poller sleeps when SPDK had nothing for it: its
/// messages are rare (bdev registration, hot remove), and it must not take a core.
const APP_IDLE: Duration = Duration::from_micros(500);

/// The started environment: proof that bdevs can be opened.
#[derive(Debug)]
pub struct Env {
    options: EnvOptions,
}

impl Env {
    pub fn options(&self) -> &EnvOptions {
        &self.options
    }

    /// Unregisters bdev `name` as a hot remove would, on SPDK's application thread; the
    /// receiver gets SPDK's result once the removal is complete, which is only after
    /// every descriptor on it closed. For tests of what a removed bdev does.
    #[doc(hidden)]
    pub fn remove_bdev(&self, name: &str) -> Result<mpsc::Receiver<i32>, SpdkError> {
        let name = CString::new(name).map_err(|_| SpdkError::Thread("a name with a NUL byte"))?;
        let (done, result) = mpsc::sync_channel(1);
        let removal = Box::into_raw(Box::new(Removal { name, done }));
        // SAFETY: the application thread lives as long as the process; sending it a
        // message is allowed from any OS thread; `removal` is reclaimed once, by
        // `remove_on_app_thread` (or below if the message was not sent).
        let rc = unsafe {
            let app = sys::spdk_thread_get_app_thread();
            sys::spdk_thread_send_msg(app, Some(remove_on_app_thread), removal.cast())
        };
        if rc != 0 {
            // SAFETY: not sent, so still ours.
            drop(unsafe { Box::from_raw(removal) });
            return Err(SpdkError::Thread(
                "could not message SPDK's application thread",
            ));
        }
        Ok(result)
    }

    /// Starts a poller as an SPDK poller on a new SPDK thread on `core`'s reactor (a
    /// core of `reactor_cores`). `make` runs on that thread first and builds the poller's
    /// state (bdevs opened in it belong to that reactor); what it returns is then called
    /// every reactor round until it returns `Round::Done`. A panic in either ends the
    /// poller with an error instead of crossing into SPDK.
    pub fn spawn_poller<M, P>(&self, core: u32, make: M) -> Result<PollerHandle, SpdkError>
    where
        M: FnOnce() -> Result<P, String> + Send + 'static,
        P: FnMut() -> Round + 'static,
    {
        let cores = self
            .options
            .reactor_cores
            .as_ref()
            .ok_or(SpdkError::NoReactors)?;
        if !cores.contains(&core) {
            return Err(SpdkError::NotAReactor(core));
        }
        crate::app::spawn_poller(
            core,
            Box::new(move || make().map(|p| Box::new(p) as Box<dyn FnMut() -> Round>)),
        )
    }
}

enum Started {
    Ok(&'static Env),
    Failed,
}

static STARTED: Mutex<Option<Started>> = Mutex::new(None);
/// Set at process exit: the application thread stops polling before SPDK's and DPDK's
/// destructors free what a poll would touch.
static STOP: AtomicBool = AtomicBool::new(false);
/// The environment, if `init` started it.
pub fn env() -> Option<&'static Env> {
    match *STARTED.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(Started::Ok(env)) => Some(env),
        _ => None,
    }
}

/// Starts SPDK's environment with `options`, once per process: a second call with the
/// same options returns the running environment, with other options it is an error.
pub fn init(options: EnvOptions) -> Result<&'static Env, SpdkError> {
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    match &*started {
        Some(Started::Ok(env)) if env.options == options => return Ok(env),
        Some(Started::Ok(_)) => return Err(SpdkError::AlreadyStarted),
        Some(Started::Failed) => return Err(SpdkError::StartFailedBefore),
        None => {}
    }
    let json = read_config(&options)?;
    if options.no_huge && options.mem_size_mb.is_none() {
        return Err(SpdkError::Config {
            path: options.config.clone(),
            message: "running without hugepages needs a memory size (--spdk-mem-mb)".into(),
        });
    }
    if options.reactor_cores.as_ref().is_some_and(Vec::is_empty) {
        return Err(SpdkError::NoReactors);
    }
    // From here on, a failure leaves DPDK half started: no second attempt.
    *started = Some(Started::Failed);
    if let Some(cores) = &options.reactor_cores {
        crate::app::start(&options, cores)?;
        let env: &'static Env = Box::leak(Box::new(Env { options }));
        *started = Some(Started::Ok(env));
        return Ok(env);
    }
    let thread_options = options.clone();
    start_spdk_thread(
        "spdk-app",
        move |report| app_thread(thread_options, json, report),
        stop_app_thread,
    )?;
    let env: &'static Env = Box::leak(Box::new(Env { options }));
    *started = Some(Started::Ok(env));
    Ok(env)
}

fn read_config(options: &EnvOptions) -> Result<Vec<u8>, SpdkError> {
    let bad = |message: String| SpdkError::Config {
        path: options.config.clone(),
        message,
    };
    let len = std::fs::metadata(&options.config)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if len > CONFIG_BYTES_MAX {
        return Err(bad(format!("{len} bytes, more than {CONFIG_BYTES_MAX}")));
    }
    let json = std::fs::read(&options.config).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| bad(format!("not JSON: {e}")))?;
    if !value.get("subsystems").is_some_and(|s| s.is_array()) {
        return Err(bad(
            "no \"subsystems\" array (SPDK's JSON config format, as `spdk_tgt --json` takes)"
                .into(),
        ));
    }
    Ok(json)
}

/// Starts the environment on this (unpinned) thread, loads the config, reports the
/// outcome, then polls SPDK's application thread until the process ends.
fn app_thread(options: EnvOptions, json: Vec<u8>, report: mpsc::SyncSender<Result<(), SpdkError>>) {
    let app = match start(&options, json) {
        Ok(app) => app,
        Err(error) => {
            let _ = report.send(Err(error));
            return;
        }
    };
    let _ = report.send(Ok(()));
    // Relaxed: the flag orders nothing; the exit handler joins this thread.
    while !STOP.load(Ordering::Relaxed) {
        // SAFETY: `app` is the SPDK thread this OS thread created in `start`; only this
        // thread polls it, and it is never destroyed (it lives as long as the process).
        let did = unsafe { sys::spdk_thread_poll(app, 0, 0) };
        if did == 0 {
            std::thread::sleep(APP_IDLE);
        }
    }
}

/// Process exit: stop polling SPDK's application thread, and wait until it stopped.
extern "C" fn stop_app_thread() {
    STOP.store(true, Ordering::Relaxed);
    join_spdk_thread();
}

struct Removal {
    name: CString,
    done: mpsc::SyncSender<i32>,
}

extern "C" fn remove_on_app_thread(arg: *mut c_void) {
    // SAFETY: the `Removal` boxed in `remove_bdev`, handed over once.
    let removal = unsafe { Box::from_raw(arg.cast::<Removal>()) };
    // SAFETY: on the application thread; the name is NUL-terminated.
    let bdev = unsafe { sys::spdk_bdev_get_by_name(removal.name.as_ptr()) };
    if bdev.is_null() {
        let _ = removal.done.try_send(-19); // ENODEV
        return;
    }
    let done = Box::into_raw(Box::new(removal.done));
    // SAFETY: `bdev` was just looked up on the application thread, where SPDK wants the
    // unregistration; `done` is reclaimed once, by `removed`.
    unsafe { sys::spdk_bdev_unregister(bdev, Some(removed), done.cast()) };
}

extern "C" fn removed(arg: *mut c_void, rc: c_int) {
    // SAFETY: the sender boxed in `remove_on_app_thread`, handed over once.
    let done = unsafe { Box::from_raw(arg.cast::<mpsc::SyncSender<i32>>()) };
    let _ = done.try_send(rc);
}

/// What the config-loading callbacks share with `start`, which polls until `rc` is set.
struct Loading {
    json: Vec<u8>,
    stage: &'static str,
    rc: Option<c_int>,
}

fn start(options: &EnvOptions, mut json: Vec<u8>) -> Result<*mut sys::spdk_thread, SpdkError> {
    // Leaked: DPDK keeps pointers into its arguments for the life of the process.
    let name = CString::new(options.name.as_str())
        .map_err(|_| SpdkError::Thread("a process name with a NUL byte"))?;
    let name: &'static CString = Box::leak(Box::new(name));
    // SAFETY: `spdk_env_opts` is plain data; `spdk_env_opts_init` fills every field once
    // `opts_size` says how large our copy of the struct is (SPDK's versioned options).
    let mut opts: sys::spdk_env_opts = unsafe { std::mem::zeroed() };
    opts.opts_size = std::mem::size_of::<sys::spdk_env_opts>();
    // SAFETY: `opts` is a valid, writable spdk_env_opts with opts_size set.
    unsafe { sys::spdk_env_opts_init(&mut opts) };
    opts.name = name.as_ptr();
    opts.no_huge = options.no_huge;
    opts.no_pci = options.no_pci;
    if let Some(mb) = options.mem_size_mb {
        opts.mem_size = c_int::try_from(mb).unwrap_or(c_int::MAX);
    }
    // SAFETY: `opts` was initialised by spdk_env_opts_init; its strings are 'static.
    if unsafe { sys::spdk_env_init(&opts) } < 0 {
        return Err(SpdkError::EnvInit);
    }
    // SAFETY: no arguments; undoes the EAL's pinning of this thread to the first core
    // (ordo pins its own pollers).
    unsafe { sys::spdk_unaffinitize_thread() };
    // SAFETY: called once (guarded by `init`), after the environment, with no scheduling
    // callback: each SPDK thread is polled by the OS thread that created it.
    if unsafe { sys::spdk_thread_lib_init(None, 0) } != 0 {
        return Err(SpdkError::Thread("the thread library did not start"));
    }
    // SAFETY: the thread library is initialised; the name is a NUL-terminated literal; a
    // NULL cpumask means any core.
    let app = unsafe { sys::spdk_thread_create(c"ordo_app".as_ptr(), ptr::null()) };
    if app.is_null() {
        return Err(SpdkError::Thread("the application thread"));
    }
    // SAFETY: `app` was just created and is polled only by this OS thread.
    unsafe { sys::spdk_set_thread(app) };
    json.push(0);
    let mut loading = Loading {
        json,
        stage: "startup RPCs",
        rc: None,
    };
    let ctx: *mut Loading = &mut loading;
    // SAFETY: the JSON buffer and `loading` outlive the load: this function polls until
    // `rc` is set and only then returns (the callbacks are the last use of `ctx`). SPDK
    // copies the JSON before parsing it.
    unsafe {
        sys::spdk_subsystem_load_config(
            (*ctx).json.as_mut_ptr().cast(),
            ((*ctx).json.len() - 1) as isize,
            Some(startup_loaded),
            ctx.cast(),
            true,
        )
    };
    loop {
        // SAFETY: as above: `app` belongs to this OS thread.
        unsafe { sys::spdk_thread_poll(app, 0, 0) };
        // SAFETY: the callbacks ran (if at all) inside the poll above, on this thread;
        // no reference to `loading` is alive across it.
        if let Some(rc) = unsafe { (*ctx).rc } {
            if rc != 0 {
                return Err(SpdkError::LoadConfig {
                    path: options.config.clone(),
                    // SAFETY: as above.
                    stage: unsafe { (*ctx).stage },
                    rc,
                });
            }
            return Ok(app);
        }
    }
}

/// The config's startup-time RPCs ran: start the subsystems.
extern "C" fn startup_loaded(rc: c_int, ctx: *mut c_void) {
    let loading = ctx.cast::<Loading>();
    if rc != 0 {
        // SAFETY: `ctx` is the `Loading` that `start` keeps alive until `rc` is set.
        unsafe { (*loading).rc = Some(rc) };
        return;
    }
    // SAFETY: as above.
    unsafe { (*loading).stage = "subsystem init" };
    // SAFETY: called on the application thread, once the startup RPCs are done, as
    // SPDK's own applications do; `ctx` stays valid (see above).
    unsafe { sys::spdk_subsystem_init(Some(subsystems_started), ctx) };
}

/// The subsystems are up: run the config's runtime RPCs (bdev_malloc_create, ...).
extern "C" fn subsystems_started(rc: c_int, ctx: *mut c_void) {
    let loading = ctx.cast::<Loading>();
    if rc != 0 {
        // SAFETY: `ctx` is the `Loading` that `start` keeps alive until `rc` is set.
        unsafe { (*loading).rc = Some(rc) };
        return;
    }
    // SAFETY: as above; the JSON buffer is the one passed for the startup RPCs, still
    // NUL-terminated and alive.
    unsafe {
        (*loading).stage = "runtime RPCs";
        sys::spdk_rpc_set_state(sys::SPDK_RPC_RUNTIME);
        sys::spdk_subsystem_load_config(
            (*loading).json.as_mut_ptr().cast(),
            ((*loading).json.len() - 1) as isize,
            Some(runtime_loaded),
            ctx,
            true,
        );
    }
}

extern "C" fn runtime_loaded(rc: c_int, ctx: *mut c_void) {
    // SAFETY: `ctx` is the `Loading` that `start` keeps alive until `rc` is set.
    unsafe { (*ctx.cast::<Loading>()).rc = Some(rc) };
}
