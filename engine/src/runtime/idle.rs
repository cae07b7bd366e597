//! What a poller does when a round found no work: the one place the idle policy lives, so a
//! shared 2-core CI box stays usable while a bare-metal node spins.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Poll again at once (a dedicated core).
    Spin,
    /// Give the core to another thread, then poll again.
    Yield,
    /// Sleep this long (a shared machine).
    Park(Duration),
}

impl IdlePolicy {
    /// Called after each round; does nothing after a round that did work.
    pub fn after_round(self, did_work: bool) {
        if did_work {
            return;
        }
        match self {
            IdlePolicy::Spin => std::hint::spin_loop(),
            IdlePolicy::Yield => std::thread::yield_now(),
            IdlePolicy::Park(duration) => std::thread::park_timeout(duration),
        }
    }
}
