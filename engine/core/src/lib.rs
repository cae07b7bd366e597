//! ordo-core: the sans-I/O core of ordo's asynchronous block replication.
//!
//! The primary and secondary are state machines: they take events (a write submitted, a
//! frame received, a storage completion, a clock tick) and produce frames to send and
//! storage requests, never reading a clock, spawning a thread or touching a socket. The
//! simulator (`sim`) and the real runtime drive the same code. See DESIGN.md for the
//! protocol and the one invariant every test checks.
//!
//! The compiler holds it to that: this crate depends on no socket, thread, io_uring or
//! libc crate (CI checks its `cargo tree`), and it has no unsafe code. `ordo-runtime`
//! drives it with threads, sockets and real storage.
#![forbid(unsafe_code)]

pub mod injected;
pub mod primary;
pub mod protocol;
pub mod secondary;
pub mod sim;
pub mod storage;
