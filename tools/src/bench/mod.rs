//! `ordo bench`: the latency-histogram benchmark of ordo's write path.
#![allow(dead_code)] // While the subcommand is being built.

pub mod results;
