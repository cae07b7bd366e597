//! What one round of a poller did, and what a poller does after a round that found no
//! work: the one place both live, for ordo's own pollers, SPDK's reactors (`ordo-spdk`
//! reports a `Round` to SPDK as busy or idle) and the daemons' runners, so a shared 2-core
//! CI box stays usable while a bare-metal node spins.

use std::time::Duration;

/// What one round of a poller did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// It did work: poll again at once.
    Busy,
    /// It found nothing to do: the idle policy decides what happens before the next.
    Idle,
    /// The poller is finished (its owner asked it to stop and it drained): no more rounds.
    Done,
}

impl From<bool> for Round {
    /// `Busy` if the round did work, else `Idle`.
    fn from(did_work: bool) -> Round {
        if did_work {
            Round::Busy
        } else {
            Round::Idle
        }
    }
}

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
    /// Called after each round; waits as the policy says only after an idle one.
    pub fn after_round(self, round: Round) {
        if round != Round::Idle {
            return;
        }
        match self {
            IdlePolicy::Spin => std::hint::spin_loop(),
            IdlePolicy::Yield => std::thread::yield_now(),
            IdlePolicy::Park(duration) => std::thread::park_timeout(duration),
        }
    }

    /// `after_round`, for a poller with work due in `due` (an open-loop client's next
    /// operation): a park ends by then, so the wait never makes that work late.
    pub fn after_round_before(self, round: Round, due: Option<Duration>) {
        match (self, due) {
            (IdlePolicy::Park(duration), Some(due)) if round == Round::Idle => {
                std::thread::park_timeout(duration.min(due))
            }
            _ => self.after_round(round),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_round_that_did_work_is_busy() {
        assert_eq!(Round::from(true), Round::Busy);
        assert_eq!(Round::from(false), Round::Idle);
    }

    #[test]
    fn a_park_ends_before_work_that_is_due() {
        let policy = IdlePolicy::Park(Duration::from_secs(30));
        let start = Instant::now();
        policy.after_round_before(Round::Idle, Some(Duration::from_millis(1)));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the park waited for its own length, not the work due"
        );
    }

    #[test]
    fn only_an_idle_round_parks() {
        let policy = IdlePolicy::Park(Duration::from_secs(5));
        let start = Instant::now();
        policy.after_round(Round::Busy);
        policy.after_round(Round::Done);
        // An unpark before the idle round makes its park return at once.
        std::thread::current().unpark();
        policy.after_round(Round::Idle);
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "no round waited the park out"
        );
    }
}
