//! ordo on SPDK: the workspace's only FFI. A narrow binding generated from an installed
//! SPDK's headers (`sys`), one RAII wrapper per C object (environment, SPDK thread, DMA
//! buffer, bdev descriptor and io channel) and `BdevStorage`, the engine's `Storage` on an
//! SPDK bdev. Everything is behind the `spdk` feature: without it this crate is empty, so
//! the workspace builds where SPDK is not installed.
//!
//! Threading follows SPDK's "bring your own threads" model (the one its fio plugin uses):
//! SPDK's thread library runs without its event framework, each ordo poller thread that
//! opens a bdev gets an SPDK thread of its own and polls it inside `Storage::poll`, and a
//! background thread polls the application thread that loaded the JSON config.

#![cfg_attr(not(feature = "spdk"), forbid(unsafe_code))]

#[cfg(feature = "spdk")]
mod bdev;
#[cfg(feature = "spdk")]
mod dma;
#[cfg(feature = "spdk")]
mod env;
mod error;
#[cfg(feature = "spdk")]
mod sys;
#[cfg(feature = "spdk")]
mod thread;

#[cfg(feature = "spdk")]
pub use bdev::BdevStorage;
#[cfg(feature = "spdk")]
pub use env::{env, init, Env, EnvOptions};
pub use error::SpdkError;
