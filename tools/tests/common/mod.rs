//! Helpers for tests that run real `ordo` daemons: spawning and killing them, their
//! control sockets, a small NBD client, waiting for a condition with a deadline, and the
//! assertions both test files share (verify passes, a file equals an image).

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the helpers"
)]

pub mod model;
pub mod nbd;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

pub const ORDO: &str = env!("CARGO_BIN_EXE_ordo");

/// Polls `condition` until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, condition: impl FnMut() -> bool) {
    wait_or_explain(what, limit, condition, String::new);
}

/// As `wait_until`, and the panic also says what `explain` finds then (status, logs).
pub fn wait_or_explain(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + limit;
    while !condition() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {limit:?} waiting until {what}\n{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A running `ordo` daemon whose output goes to files; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    args: Vec<String>,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    pub control: PathBuf,
}

impl Daemon {
    /// Starts `ordo ARGS` with logs in `dir`, and waits until its control socket answers.
    pub fn start(name: &str, dir: &Path, args: &[String], control: &Path) -> Daemon {
        let mut daemon = Daemon {
            name: name.to_string(),
            args: args.to_vec(),
            child: None,
            stdout: dir.join(format!("{name}.out")),
            stderr: dir.join(format!("{name}.err")),
            control: control.to_path_buf(),
        };
        daemon.restart();
        daemon
    }

    /// Starts the same command again (after a kill), appending to the same logs.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
        };
        let child = Command::new(ORDO)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(open(&self.stdout))
            .stderr(open(&self.stderr))
            .spawn()
            .expect("ordo starts");
        self.child = Some(child);
        let control = self.control.clone();
        let name = self.name.clone();
        wait_until(
            &format!("{name} answers on its control socket"),
            Duration::from_secs(30),
            || {
                assert!(self.running(), "{name} exited: {}", self.log());
                control_request(&control, &status_request()).is_some()
            },
        );
    }

    /// Stops it (SIGTERM) and starts it again with `extra` arguments added.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.terminate();
        self.args.extend(extra.iter().map(ToString::to_string));
        self.restart();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; waits for the exit and returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it logged (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// What it printed (stdout: the effective configuration).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Its status, as the control socket's JSON reply.
    pub fn status(&self) -> Value {
        let reply = control_request(&self.control, &status_request()).expect("the daemon answers");
        assert_eq!(reply["reply"], "status", "{reply}");
        reply
    }

    /// A digest of its volumes in chunks of `chunk_bytes`, as the JSON reply.
    pub fn digest(&self, chunk_bytes: u64) -> Value {
        let reply = control_request(&self.control, &digest_request(chunk_bytes))
            .expect("the daemon answers");
        assert_eq!(reply["reply"], "digest", "{reply}");
        reply
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `{"request":"status"}`
pub fn status_request() -> Value {
    json!({ "request": "status" })
}

/// `{"request":"digest","chunk_bytes":N}`: every volume whole.
pub fn digest_request(chunk_bytes: u64) -> Value {
    json!({ "request": "digest", "chunk_bytes": chunk_bytes })
}

/// One control-socket request, one JSON object on one line as a script sends it; the
/// reply, or `None` if nobody answers.
pub fn control_request(path: &Path, request: &Value) -> Option<Value> {
    control_line(path, &request.to_string())
}

/// One line sent to a control socket as it is; the reply, or `None` if nobody answers.
pub fn control_line(path: &Path, line: &str) -> Option<Value> {
    let mut stream = UnixStream::connect(path).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .ok()?;
    stream.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    serde_json::from_str(&reply).ok()
}

pub fn number(value: &Value, path: &[&str]) -> u64 {
    let mut v = value;
    for key in path {
        v = &v[key];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {value}"))
}

/// `ordo ARGS`, run to completion: (success, stdout + stderr).
pub fn ordo(args: &[&str]) -> (bool, String) {
    let output = Command::new(ORDO).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A secondary and a primary on loopback with one `file:` volume each, in `dir`.
#[derive(Debug)]
pub struct Pair {
    pub secondary: Daemon,
    pub primary: Daemon,
    pub nbd: SocketAddr,
    pub primary_image: PathBuf,
    pub replica_image: PathBuf,
}

impl Pair {
    pub fn start(dir: &Path, size: &str, extra_primary: &[&str]) -> Pair {
        let port = free_port();
        let secondary = Self::secondary(dir, port, size);
        let nbd: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let primary_image = dir.join("primary.img");
        let control = dir.join("primary.sock");
        let mut args: Vec<String> = [
            "primary",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--volume",
            &format!("data=file:{}:{size}", primary_image.display()),
            "--nbd",
            &nbd.to_string(),
            "--control",
            &control.display().to_string(),
            "--lanes",
            "4",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.extend(extra_primary.iter().map(ToString::to_string));
        let primary = Daemon::start("primary", dir, &args, &control);
        Pair {
            secondary,
            primary,
            nbd,
            primary_image,
            replica_image: dir.join("replica.img"),
        }
    }

    pub fn secondary(dir: &Path, port: u16, size: &str) -> Daemon {
        let state = dir.join("state");
        let args: Vec<String> = [
            "secondary",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
            &state.display().to_string(),
            "--volume",
            &format!("data=file:{}:{size}", dir.join("replica.img").display()),
            "--window-bytes",
            "64M",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        Daemon::start("secondary", dir, &args, &state.join("control.sock"))
    }

    /// Waits until the secondary applied everything the primary closed.
    pub fn wait_caught_up(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.primary.status();
            if number(&s, &["data_sets", "applied"]) == number(&s, &["data_sets", "last_closed"]) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the secondary did not apply every closed data set in {limit:?}\nprimary: {s}\nsecondary: {:?}\nprimary log:\n{}\nsecondary log:\n{}",
                    control_request(&self.secondary.control, &status_request()),
                    self.primary.log(),
                    self.secondary.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn verify(&self) -> (bool, String) {
        ordo(&[
            "verify",
            "--primary",
            &self.primary.control.display().to_string(),
            "--secondary",
            &self.secondary.control.display().to_string(),
        ])
    }
}

pub const BLOCK: usize = 4096;
pub const CATCH_UP: Duration = Duration::from_secs(120);

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (CI installs it with apt-get): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{program} {args:?} failed: {text}");
    text
}

pub fn assert_verifies(pair: &Pair) -> u64 {
    let (ok, out) = pair.verify();
    assert!(ok, "ordo verify failed: {out}");
    let line = out.lines().last().unwrap_or_default();
    let n = line
        .strip_prefix("replica matches primary at data set ")
        .unwrap_or_else(|| panic!("unexpected verify output {out:?}"));
    n.trim().parse().unwrap()
}

pub fn assert_file_equals(path: &Path, image: &[u8]) {
    let replica = std::fs::read(path).unwrap();
    assert_eq!(replica.len(), image.len());
    if let Some(at) = replica.iter().zip(image).position(|(a, b)| a != b) {
        panic!("{} differs from the image at byte {at}", path.display());
    }
}

pub fn write_data(index: u64) -> Vec<u8> {
    random_bytes(BLOCK, index + 1_000_000)
}
