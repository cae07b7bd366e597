//! The real runtime's building blocks: what moves the sans-I/O state machines' frames over
//! real sockets, and how pollers idle. The daemons that assemble them (CLI, config, NBD
//! export, pinned pollers) come next.

pub mod idle;
pub mod lane;
pub mod primary_node;
pub mod secondary_node;
