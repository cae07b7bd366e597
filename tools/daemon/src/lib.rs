//! ordo-daemon: the two daemons (`ordo primary`, `ordo secondary`) and what an operator
//! runs against them, as a library the `ordo` binary dispatches to: their settings
//! (`config`), volume specs (`volume`), where their pollers run (`runner`, SPDK's wiring in
//! `spdk`), the control socket and its reports, the primary's NBD export, `ordo status` and
//! `ordo verify` (`inspect`), and `ordo demo`.
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod demo;
pub mod inspect;
pub mod nbd_export;
pub mod operate;
pub mod primary;
pub mod primary_state;
pub mod report;
pub mod runner;
pub mod secondary;
pub mod shared;
pub mod spdk;
pub mod volume;
