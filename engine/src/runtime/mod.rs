//! The real runtime's building blocks: what moves the sans-I/O state machines' frames over
//! real sockets. The daemons that assemble them come with the runtime issue.

pub mod lane;
