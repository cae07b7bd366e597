//! ordo-runtime: what drives the sans-I/O core (`ordo-core`) on a real machine. It moves
//! the state machines' frames over sockets (lanes), runs the primary's request ring
//! between application threads and its poller and the secondary's receivers, decides how
//! pollers idle, and holds the storage backends on files (`file`, `uring`). The daemons in
//! `ordo-daemon` assemble it.
// Denied crate-wide and forbidden in every module but storage, so that storage::uring
// alone may allow it (CONVENTIONS.md §3).
#![deny(unsafe_code)]

#[forbid(unsafe_code)]
pub mod idle;
#[forbid(unsafe_code)]
pub mod lane;
#[forbid(unsafe_code)]
pub mod lane_sender;
#[forbid(unsafe_code)]
pub mod primary_node;
#[forbid(unsafe_code)]
pub mod primary_service;
#[forbid(unsafe_code)]
pub mod secondary_node;
pub mod storage;
