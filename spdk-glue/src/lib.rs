//! ordo on SPDK: the workspace's only FFI. A narrow binding generated from an installed
//! SPDK's headers (`sys`), one RAII wrapper per C object (environment, SPDK thread, DMA
//! buffer, bdev descriptor and io channel) and `BdevStorage`, the engine's `Storage` on an
//! SPDK bdev. Everything is behind the `spdk` feature: without it this crate is empty, so
//! the workspace builds where SPDK is not installed.
//!
//! Two ways to run (see `env`): ordo's own pinned threads drive SPDK (its "bring your own
//! threads" model, as its fio plugin uses), or SPDK's reactors run ordo's pollers as SPDK
//! pollers. Either way each bdev has an SPDK thread of its own that its owner polls, so a
//! read can wait for its completion without returning to a reactor.

#![cfg_attr(not(feature = "spdk"), forbid(unsafe_code))]

#[cfg(feature = "spdk")]
mod app;
#[cfg(feature = "spdk")]
mod bdev;
#[cfg(feature = "spdk")]
mod dma;
#[cfg(feature = "spdk")]
mod env;
mod error;
#[cfg(feature = "spdk")]
mod process;
#[cfg(feature = "spdk")]
mod request;
#[cfg(feature = "spdk")]
mod sys;
#[cfg(feature = "spdk")]
mod thread;

#[cfg(feature = "spdk")]
pub use app::PollerHandle;
#[cfg(feature = "spdk")]
pub use bdev::BdevStorage;
#[cfg(feature = "spdk")]
pub use env::{env, init, Env, EnvOptions};
pub use error::SpdkError;
