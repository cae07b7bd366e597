//! What a handshake decides from the two sides' histories. Both sides run `decide` on the
//! same pair of `Hello`s, so they agree without another round trip: the secondary acts on
//! it (follows the stream, or re-bases onto the primary's generation), the primary plans
//! its resync from it, and both refuse an unrelated history.

use super::frame::{Hello, HistoryFlags};
use super::handshake::PeerError;
use super::ids::{DataSetId, GenerationId, Seq};

/// Where a primary's stream starts: every record after this point (the end of a closed
/// data set) it still holds, so a secondary that re-bases onto its history starts here.
/// A primary's `Hello` carries it in the fields a secondary's uses for what it applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStart {
    pub data_set: DataSetId,
    /// The seq of that data set's sync (0: the stream starts at seq 1).
    pub seq: Seq,
    pub stream_offset: u64,
}

/// What a primary's `Hello` says of its history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrimaryHistory {
    pub generation: GenerationId,
    /// Newest first.
    pub ancestors: Vec<GenerationId>,
    pub flags: HistoryFlags,
    pub start: StreamStart,
}

impl Hello {
    /// What a primary's `Hello` says of its history.
    pub fn history(&self) -> PrimaryHistory {
        PrimaryHistory {
            generation: self.generation,
            ancestors: self.ancestors.clone(),
            flags: self.flags,
            start: StreamStart {
                data_set: self.resume.applied_data_set,
                seq: self.resume.applied_seq,
                stream_offset: self.resume.applied_stream_end,
            },
        }
    }
}

/// How a secondary joins the primary's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Same history: the stream goes on from what the secondary holds.
    Resume,
    /// A zeroed secondary that holds no history meets a primary whose history began as
    /// zeros and retains every record since: it takes the primary's generation at data set
    /// 0 and follows the stream from seq 1, with no resync.
    Adopt,
    /// The secondary re-bases onto the primary's generation (what it holds of an older one
    /// is applied if complete, else dropped) and the primary resynchronises what may differ.
    /// `consistent`: the replica is the image of a data set of a history the primary
    /// descends from (or the zero image it began as), and stays so until the resync's end
    /// point is applied; otherwise it is marked inconsistent until then.
    Rebase { consistent: bool },
    /// Neither history descends from the other: nothing is overwritten.
    Refuse(PeerError),
}

/// `primary` is the primary's history, `theirs` and `flags` the secondary's, `holds` the
/// last seq up to which the secondary holds every record of its history (applied, or
/// staged durably) (both sides passed `check_hello`: group, volumes).
pub fn decide(
    primary: &PrimaryHistory,
    theirs: GenerationId,
    flags: HistoryFlags,
    holds: Seq,
) -> Decision {
    let ours = primary.generation;
    assert_ne!(ours, GenerationId::NONE, "a primary always has a history");
    if theirs == ours {
        // Records it lacks before the stream's start are gone from the primary: it
        // re-bases onto the same history at the start.
        return if holds >= primary.start.seq {
            Decision::Resume
        } else {
            Decision::Rebase {
                consistent: !flags.inconsistent,
            }
        };
    }
    if theirs == GenerationId::NONE {
        return if flags.replica_zeroed && primary.flags.genesis_stream {
            Decision::Adopt
        } else {
            Decision::Rebase {
                consistent: flags.replica_zeroed && primary.flags.genesis_bits,
            }
        };
    }
    if primary.ancestors.contains(&theirs) {
        return Decision::Rebase {
            consistent: !flags.inconsistent,
        };
    }
    if flags.discard {
        return Decision::Rebase { consistent: false };
    }
    Decision::Refuse(PeerError::UnrelatedHistory {
        primary: ours,
        secondary: theirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GroupId, HistoryFlags, ResumeState, Role};

    fn hello(role: Role, generation: u64, ancestors: &[u64], flags: HistoryFlags) -> Hello {
        Hello {
            role,
            group: GroupId(1),
            max_write_bytes: 4096,
            volumes: vec![],
            generation: GenerationId(generation),
            ancestors: ancestors.iter().map(|&g| GenerationId(g)).collect(),
            flags,
            resume: ResumeState::default(),
        }
    }

    fn primary(generation: u64, ancestors: &[u64], flags: HistoryFlags) -> PrimaryHistory {
        hello(Role::Primary, generation, ancestors, flags).history()
    }

    fn secondary(generation: u64, flags: HistoryFlags) -> (GenerationId, HistoryFlags) {
        let hello = hello(Role::Secondary, generation, &[], flags);
        (hello.generation, hello.flags)
    }

    fn decide(
        primary: &PrimaryHistory,
        &(theirs, flags): &(GenerationId, HistoryFlags),
    ) -> Decision {
        super::decide(primary, theirs, flags, Seq::NONE)
    }

    const NONE: HistoryFlags = HistoryFlags {
        genesis_stream: false,
        genesis_bits: false,
        replica_zeroed: false,
        discard: false,
        inconsistent: false,
        held: false,
        resync_all: false,
        resync_from_zero: false,
    };

    #[test]
    fn the_same_history_resumes_and_a_descendant_rebases_keeping_the_replica_consistent() {
        let p = primary(7, &[5, 3], NONE);
        assert_eq!(decide(&p, &secondary(7, NONE)), Decision::Resume);
        let consistent = Decision::Rebase { consistent: true };
        assert_eq!(decide(&p, &secondary(5, NONE)), consistent);
        assert_eq!(decide(&p, &secondary(3, NONE)), consistent, "two hops back");
        let inconsistent = HistoryFlags {
            inconsistent: true,
            ..NONE
        };
        assert_eq!(
            decide(&p, &secondary(5, inconsistent)),
            Decision::Rebase { consistent: false },
            "a replica already inconsistent stays so until the end point"
        );
    }

    #[test]
    fn a_fresh_secondary_adopts_follows_the_bitmap_or_takes_an_initial_sync() {
        let zeroed = HistoryFlags {
            replica_zeroed: true,
            ..NONE
        };
        let stream = HistoryFlags {
            genesis_stream: true,
            genesis_bits: true,
            ..NONE
        };
        let bits = HistoryFlags {
            genesis_bits: true,
            ..NONE
        };
        assert_eq!(
            decide(&primary(7, &[], stream), &secondary(0, zeroed)),
            Decision::Adopt
        );
        assert_eq!(
            decide(&primary(7, &[5], bits), &secondary(0, zeroed)),
            Decision::Rebase { consistent: true }
        );
        let initial = Decision::Rebase { consistent: false };
        assert_eq!(
            decide(&primary(7, &[], stream), &secondary(0, NONE)),
            initial
        );
        assert_eq!(
            decide(&primary(7, &[], NONE), &secondary(0, zeroed)),
            initial
        );
    }

    #[test]
    fn an_unrelated_history_is_refused_unless_the_secondary_may_be_discarded() {
        let p = primary(7, &[5], NONE);
        let refused = decide(&p, &secondary(9, NONE));
        assert!(
            matches!(
                refused,
                Decision::Refuse(PeerError::UnrelatedHistory { primary, secondary })
                    if primary == GenerationId(7) && secondary == GenerationId(9)
            ),
            "{refused:?}"
        );
        let discard = HistoryFlags {
            discard: true,
            ..NONE
        };
        assert_eq!(
            decide(&p, &secondary(9, discard)),
            Decision::Rebase { consistent: false }
        );
        assert_eq!(
            decide(&p, &secondary(7, discard)),
            Decision::Resume,
            "consent to be discarded does not throw away the same history"
        );
    }
}
