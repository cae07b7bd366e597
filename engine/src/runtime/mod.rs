//! The real runtime's building blocks: what moves the sans-I/O state machines' frames over
//! real sockets, the primary's request ring between application threads and its poller,
//! and how pollers idle. The daemons in `ordo-tools` assemble them.

pub mod idle;
pub mod lane;
pub mod primary_node;
pub mod primary_service;
pub mod secondary_node;
