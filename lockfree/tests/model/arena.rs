//! The staging arena against a model (which granules are claimed, and a plain copy of
//! the bytes): random writes (aligned or not, in bounds or not, overlapping or not, from
//! a writer or the reader), reads and releases from one thread give the same answers,
//! and after every step exactly the model's claimed granules read back, with its bytes.

use ordo_lockfree::{ArenaError, ArenaReader, ArenaWriter, StagingArena, GRANULE_BYTES};
use proptest::prelude::*;

const G: usize = GRANULE_BYTES;

#[derive(Clone, Debug)]
enum Op {
    Write {
        at: usize,
        len: usize,
        by_reader: bool,
    },
    Read {
        at: usize,
        len: usize,
    },
    /// Skipped unless the model has the whole range claimed (releasing anything else is
    /// a bug the arena panics on, tested in its unit tests).
    Release {
        at: usize,
        len: usize,
    },
}

/// An offset or length of about `granules` granules, now and then off the grid.
fn bytes(granules: usize) -> impl Strategy<Value = usize> {
    let skew = prop_oneof![12 => Just(0), 1 => 1..G];
    (0..=granules, skew).prop_map(|(granules, skew)| granules * G + skew)
}

fn op(granules: usize) -> impl Strategy<Value = Op> {
    // Ranges up to half the arena, starting up to a granule past its end.
    let range = || (bytes(granules + 1), bytes(granules.div_ceil(2)));
    prop_oneof![
        4 => (range(), any::<bool>())
            .prop_map(|((at, len), by_reader)| Op::Write { at, len, by_reader }),
        2 => range().prop_map(|(at, len)| Op::Read { at, len }),
        3 => range().prop_map(|(at, len)| Op::Release { at, len }),
    ]
}

fn case() -> impl Strategy<Value = (usize, Vec<Op>)> {
    // 64 and 65 granules: one word exactly, and one granule into the next.
    let granules = if cfg!(miri) {
        prop_oneof![Just(1usize), Just(3), Just(65)].boxed()
    } else {
        prop_oneof![Just(1usize), Just(3), Just(64), Just(65), Just(130)].boxed()
    };
    // Miri: fewer ops, each still able to reach every granule.
    let ops = if cfg!(miri) { 1..40 } else { 1..200 };
    granules.prop_flat_map(move |granules| {
        let ops = prop::collection::vec(op(granules), ops.clone());
        (Just(granules), ops)
    })
}

/// What the arena should hold.
struct Model {
    claimed: Vec<bool>,
    bytes: Vec<u8>,
}

impl Model {
    /// The granules of a range, or the error the arena must give for it.
    fn granules(&self, at: usize, len: usize) -> Result<std::ops::Range<usize>, ArenaError> {
        if !at.is_multiple_of(G) || !len.is_multiple_of(G) {
            Err(ArenaError::Misaligned { at, len })
        } else if at + len > self.bytes.len() {
            Err(ArenaError::OutOfBounds {
                at,
                len,
                size: self.bytes.len(),
            })
        } else {
            Ok(at / G..(at + len) / G)
        }
    }

    fn write(&mut self, at: usize, payload: &[u8]) -> Result<(), ArenaError> {
        let granules = self.granules(at, payload.len())?;
        if self.claimed[granules.clone()]
            .iter()
            .any(|&claimed| claimed)
        {
            return Err(ArenaError::Overlap {
                at,
                len: payload.len(),
            });
        }
        self.claimed[granules].fill(true);
        self.bytes[at..at + payload.len()].copy_from_slice(payload);
        Ok(())
    }

    fn read(&self, at: usize, len: usize) -> Result<Option<&[u8]>, ArenaError> {
        let granules = self.granules(at, len)?;
        let written = self.claimed[granules].iter().all(|&claimed| claimed);
        Ok(written.then(|| &self.bytes[at..at + len]))
    }
}

/// A payload no other op writes: its op's id, and a count so a shifted copy shows.
fn payload(id: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id * 7 + i / 61) as u8).collect()
}

fn run(granules: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model {
        claimed: vec![false; granules],
        bytes: vec![0; granules * G],
    };
    let (writer, mut reader): (ArenaWriter, ArenaReader) =
        StagingArena::new(vec![0; granules * G]).split();
    for (id, op) in ops.iter().enumerate() {
        match *op {
            Op::Write { at, len, by_reader } => {
                let payload = payload(id, len);
                let got = if by_reader {
                    reader.write(at, &payload)
                } else {
                    writer.write(at, &payload)
                };
                prop_assert_eq!(got, model.write(at, &payload));
            }
            Op::Read { at, len } => {
                prop_assert_eq!(reader.read(at, len), model.read(at, len));
            }
            Op::Release { at, len } => {
                let expected = match model.granules(at, len) {
                    Ok(granules) if model.claimed[granules.clone()].iter().all(|&c| c) => {
                        model.claimed[granules].fill(false);
                        Ok(())
                    }
                    Ok(_) => continue,
                    Err(error) => Err(error),
                };
                prop_assert_eq!(reader.release(at, len), expected);
            }
        }
        // Under miri (slow, and after UB rather than logic) only at the end.
        if !cfg!(miri) {
            check_every_granule(&reader, &model, id)?;
        }
    }
    check_every_granule(&reader, &model, ops.len())
}

/// Every granule is written exactly when the model claims it (so a refused write left
/// nothing behind), with the model's bytes.
fn check_every_granule(
    reader: &ArenaReader,
    model: &Model,
    id: usize,
) -> Result<(), TestCaseError> {
    for granule in 0..model.claimed.len() {
        let at = granule * G;
        prop_assert_eq!(
            reader.read(at, G).unwrap(),
            model.read(at, G).unwrap(),
            "granule {} after op {}",
            granule,
            id
        );
    }
    Ok(())
}

proptest! {
    // Under miri: fewer cases, nothing persisted (as for the reorder buffer's model).
    #![proptest_config(if cfg!(miri) {
        ProptestConfig { cases: 4, failure_persistence: None, ..ProptestConfig::default() }
    } else {
        ProptestConfig::with_cases(512)
    })]

    #[test]
    fn the_arena_matches_the_model((granules, ops) in case()) {
        run(granules, &ops)?;
    }
}
