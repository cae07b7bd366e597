//! ordo-engine: the sans-I/O core of ordo's asynchronous block replication.
//!
//! The primary and secondary are state machines: they take events (a write submitted, a
//! frame received, a storage completion, a clock tick) and produce frames to send and
//! storage requests, never reading a clock, spawning a thread or touching a socket. The
//! simulator (`sim`) and the real runtime drive the same code. See DESIGN.md for the
//! protocol and the one invariant every test checks.
// Denied crate-wide and forbidden in every module but storage, so that storage::uring
// alone may allow it (CONVENTIONS.md §3).
#![deny(unsafe_code)]

#[forbid(unsafe_code)]
pub mod primary;
#[forbid(unsafe_code)]
pub mod protocol;
#[forbid(unsafe_code)]
pub mod runtime;
#[forbid(unsafe_code)]
pub mod secondary;
#[forbid(unsafe_code)]
pub mod sim;
pub mod storage;
