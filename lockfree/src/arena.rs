//! A staging arena: one byte buffer that many writer threads copy record payloads into, and
//! one reader (the thread that journals and applies them) reads and frees.
//!
//! # Claims
//!
//! The arena is cut into granules of [`GRANULE_BYTES`]; ranges start and end on granule
//! boundaries. Each granule has two bits, in two bitmaps of `AtomicU64` words: `claimed`
//! and `written`. A write of a range
//!
//! 1. claims it: one `fetch_or` per bitmap word the range touches. If any granule was
//!    claimed already, the write undoes exactly the bits it set and fails with
//!    [`ArenaError::Overlap`], having touched no byte;
//! 2. copies its bytes in (a plain `memcpy`);
//! 3. marks the range written: one `fetch_or` per word, Release.
//!
//! The reader reads a range only when every granule in it is `written` (Acquire loads,
//! pairing with step 3), and frees it with `release`, which clears `written` and then
//! `claimed` (Release, pairing with the Acquire of step 1 of the next writer there).
//!
//! # Why no byte is ever raced on
//!
//! - Two writers never touch the same byte: each copies only into granules whose `claimed`
//!   bit its own `fetch_or` turned on, and a set bit is cleared only by `release`.
//! - A writer never touches bytes the reader may be reading: the reader reads only written
//!   granules, which stay claimed until `release`; `release` takes `&mut ArenaReader`, so
//!   no slice `read` returned is still alive, and its Release clear orders the reader's
//!   reads before the next claim's writes.
//! - The reader never reads bytes a writer is writing: a writer's `written` bits go on
//!   only after its copy, with Release.
//!
//! A caller that gets the ranges wrong (two records claiming the same bytes) gets an error,
//! never a data race: that is what makes it safe to let a remote peer choose the ranges.

use std::fmt;
use std::ptr::NonNull;

use crate::primitive::{Arc, AtomicU64, Ordering};

/// The claim granule, in bytes.
pub const GRANULE_BYTES: usize = 512;
const WORD_GRANULES: usize = 64;

/// Why a range was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    #[error("range {at}+{len} is not aligned to {GRANULE_BYTES} bytes")]
    Misaligned { at: usize, len: usize },
    #[error("range {at}+{len} is outside the arena of {size} bytes")]
    OutOfBounds { at: usize, len: usize, size: usize },
    #[error("range {at}+{len} overlaps a range already claimed")]
    Overlap { at: usize, len: usize },
    #[error("{payload} bytes do not fit the claimed {len}")]
    PayloadTooLong { payload: usize, len: usize },
}

/// The bitmap words and masks a granule range touches.
#[derive(Clone, Copy)]
struct Granules {
    first: usize,
    end: usize,
}

impl Granules {
    /// `(word index, mask)` for every word the range touches, in order.
    fn words(self) -> impl Iterator<Item = (usize, u64)> {
        let (first, end) = (self.first, self.end);
        let words = if first == end {
            0..0
        } else {
            first / WORD_GRANULES..(end - 1) / WORD_GRANULES + 1
        };
        words.map(move |word| {
            let lo = first.max(word * WORD_GRANULES) - word * WORD_GRANULES;
            let hi = end.min((word + 1) * WORD_GRANULES) - word * WORD_GRANULES;
            let mask = if hi - lo == WORD_GRANULES {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            (word, mask)
        })
    }
}

struct Shared {
    /// The bytes, from `Box<[u8]>::into_raw`; freed in `drop`.
    bytes: NonNull<u8>,
    len: usize,
    claimed: Box<[AtomicU64]>,
    written: Box<[AtomicU64]>,
}

// SAFETY: the bytes are only reached through the claim protocol in the module doc, which
// makes every access to a byte either exclusive (one claiming writer) or ordered after the
// last write to it (the reader, after an Acquire of its `written` bits); the bitmaps are
// atomics. No thread-affine state is held.
unsafe impl Send for Shared {}
// SAFETY: as for `Send`: shared access goes through the atomics and the claim protocol.
unsafe impl Sync for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.bytes.as_ptr(), self.len);
        // SAFETY: `bytes` and `len` came from `Box::into_raw` of a `Box<[u8]>` in
        // `StagingArena::new`, and this is the only place that frees it; `&mut self` means
        // no handle is left to touch it.
        drop(unsafe { Box::from_raw(slice) });
    }
}

impl Shared {
    fn check(&self, at: usize, len: usize) -> Result<Granules, ArenaError> {
        if !at.is_multiple_of(GRANULE_BYTES) || !len.is_multiple_of(GRANULE_BYTES) {
            return Err(ArenaError::Misaligned { at, len });
        }
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(ArenaError::OutOfBounds {
                at,
                len,
                size: self.len,
            });
        }
        Ok(Granules {
            first: at / GRANULE_BYTES,
            end: (at + len) / GRANULE_BYTES,
        })
    }

    /// Claims `[at, at + len)`, copies `payload` to its start, marks it all written.
    fn write(&self, at: usize, len: usize, payload: &[u8]) -> Result<(), ArenaError> {
        let granules = self.check(at, len)?;
        if payload.len() > len {
            return Err(ArenaError::PayloadTooLong {
                payload: payload.len(),
                len,
            });
        }
        for (word, mask) in granules.words() {
            // Acquire, pairing with the Release clear in `release`: the reader's reads of
            // these granules (and the previous writer's copy) happen before our copy.
            let previous = self.claimed[word].fetch_or(mask, Ordering::Acquire);
            if previous & mask != 0 {
                // Undo only what we set: this word's bits that were clear, and every
                // earlier word's whole mask (they were all clear, or we would have
                // stopped there). Relaxed: we wrote no byte, so there is nothing to order.
                self.claimed[word].fetch_and(!(mask & !previous), Ordering::Relaxed);
                for (earlier, mask) in granules.words().take_while(|(w, _)| *w < word) {
                    self.claimed[earlier].fetch_and(!mask, Ordering::Relaxed);
                }
                return Err(ArenaError::Overlap { at, len });
            }
        }
        // SAFETY: `check` put `[at, at + len)` inside the allocation and `payload.len() <=
        // len`; every granule of it is claimed by us (each bit was clear before our
        // `fetch_or`), so no other writer touches these bytes, and the reader reads them
        // only after our Release below; `payload` is caller memory, not the arena's, so
        // the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                self.bytes.as_ptr().add(at),
                payload.len(),
            );
        }
        for (word, mask) in granules.words() {
            // Release, pairing with the Acquire load in `read`: our copy happens before
            // the reader's reads.
            self.written[word].fetch_or(mask, Ordering::Release);
        }
        Ok(())
    }
}

/// The arena before it is split into its writers' and its reader's handles.
pub struct StagingArena {
    shared: Shared,
}

impl StagingArena {
    /// Takes `bytes` (which the caller may have prefaulted) as the arena.
    ///
    /// # Panics
    ///
    /// If the length is not a multiple of [`GRANULE_BYTES`]: configuration, checked
    /// before this is called.
    pub fn new(bytes: Vec<u8>) -> StagingArena {
        let len = bytes.len();
        assert!(
            len.is_multiple_of(GRANULE_BYTES),
            "arena of {len} bytes is not a multiple of {GRANULE_BYTES}"
        );
        let words = (len / GRANULE_BYTES).div_ceil(WORD_GRANULES);
        let raw = Box::into_raw(bytes.into_boxed_slice());
        let bytes = NonNull::new(raw.cast::<u8>()).expect("Box::into_raw is never null");
        StagingArena {
            shared: Shared {
                bytes,
                len,
                claimed: (0..words).map(|_| AtomicU64::new(0)).collect(),
                written: (0..words).map(|_| AtomicU64::new(0)).collect(),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.shared.len
    }

    pub fn is_empty(&self) -> bool {
        self.shared.len == 0
    }

    /// The writers' handle (clone it, one per thread) and the one reader.
    pub fn split(self) -> (ArenaWriter, ArenaReader) {
        let shared = Arc::new(self.shared);
        let reader = ArenaReader {
            shared: Arc::clone(&shared),
        };
        (ArenaWriter { shared }, reader)
    }
}

/// A writer's handle: any number, on any threads.
#[derive(Clone)]
pub struct ArenaWriter {
    shared: Arc<Shared>,
}

impl ArenaWriter {
    /// Claims `[at, at + len)`, copies `payload` to its start (the rest of the range is
    /// claimed, not written: a record's stream overhead, say) and marks the range written.
    /// The range stays claimed until the reader releases it.
    pub fn write(&self, at: usize, len: usize, payload: &[u8]) -> Result<(), ArenaError> {
        self.shared.write(at, len, payload)
    }

    pub fn len(&self) -> usize {
        self.shared.len
    }

    pub fn is_empty(&self) -> bool {
        self.shared.len == 0
    }
}

/// The one reader: not `Clone`; freeing ranges takes `&mut self`.
pub struct ArenaReader {
    shared: Arc<Shared>,
}

impl ArenaReader {
    /// The bytes of `[at, at + len)` if every granule of it is written, `None` if one is
    /// not (yet).
    pub fn read(&self, at: usize, len: usize) -> Result<Option<&[u8]>, ArenaError> {
        let shared = &*self.shared;
        let granules = shared.check(at, len.next_multiple_of(GRANULE_BYTES))?;
        for (word, mask) in granules.words() {
            // Acquire, pairing with the writer's Release `fetch_or`: its copy happens
            // before our read.
            if shared.written[word].load(Ordering::Acquire) & mask != mask {
                return Ok(None);
            }
        }
        // SAFETY: in bounds (`check`); every granule is written, so its writer finished
        // its copy before (Acquire above) and no writer can claim it again until
        // `release`, which needs `&mut self` and so cannot run while the returned slice
        // (borrowing `self`) lives.
        Ok(Some(unsafe {
            std::slice::from_raw_parts(shared.bytes.as_ptr().add(at), len)
        }))
    }

    /// Writes from the reader's thread (restoring records at start): the same claim rules
    /// as [`ArenaWriter::write`].
    pub fn write(&self, at: usize, len: usize, payload: &[u8]) -> Result<(), ArenaError> {
        self.shared.write(at, len, payload)
    }

    /// Frees `[at, at + len)` for writers to claim again.
    ///
    /// # Panics
    ///
    /// If a granule of the range is not claimed and written: the caller lost track of
    /// what it holds.
    pub fn release(&mut self, at: usize, len: usize) -> Result<(), ArenaError> {
        let shared = &*self.shared;
        let granules = shared.check(at, len)?;
        for (word, mask) in granules.words() {
            // Relaxed: only this thread reads `written` bits it did not set, and the clear
            // of `claimed` below (Release) orders this before any new claim's writes.
            let written = shared.written[word].fetch_and(!mask, Ordering::Relaxed);
            assert_eq!(written & mask, mask, "released a range not written");
            // Release, pairing with the next claimer's Acquire `fetch_or`: our reads of
            // these bytes happen before its copy.
            let claimed = shared.claimed[word].fetch_and(!mask, Ordering::Release);
            assert_eq!(claimed & mask, mask, "released a range not claimed");
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.shared.len
    }

    pub fn is_empty(&self) -> bool {
        self.shared.len == 0
    }
}

impl fmt::Debug for StagingArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagingArena")
            .field("len", &self.len())
            .finish()
    }
}

impl fmt::Debug for ArenaWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaWriter")
            .field("len", &self.len())
            .finish()
    }
}

impl fmt::Debug for ArenaReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaReader")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const G: usize = GRANULE_BYTES;

    fn arena(granules: usize) -> (ArenaWriter, ArenaReader) {
        StagingArena::new(vec![0; granules * G]).split()
    }

    #[test]
    fn a_written_range_reads_back_and_a_partial_payload_leaves_the_rest_claimed() {
        let (writer, reader) = arena(200);
        let payload: Vec<u8> = (0..3 * G).map(|i| i as u8).collect();
        writer.write(70 * G, 5 * G, &payload).unwrap();
        assert_eq!(reader.read(70 * G, 3 * G).unwrap(), Some(&payload[..]));
        // The claimed tail is refused to another writer.
        let error = writer.write(74 * G, G, &[1; G]).unwrap_err();
        assert_eq!(error, ArenaError::Overlap { at: 74 * G, len: G });
        // Reads may end mid-granule (a payload shorter than its granules).
        assert_eq!(reader.read(70 * G, 10).unwrap(), Some(&payload[..10]));
    }

    #[test]
    fn an_overlapping_claim_is_refused_and_leaves_no_bit_set() {
        let (writer, mut reader) = arena(256);
        writer.write(100 * G, 10 * G, &[7; 10 * G]).unwrap();
        // Starts before, ends inside; spans three words.
        assert!(writer.write(20 * G, 85 * G, &[]).is_err());
        // Everything the failed claim set was undone: the rest is free.
        writer.write(20 * G, 80 * G, &[]).unwrap();
        writer.write(110 * G, 100 * G, &[]).unwrap();
        reader.release(20 * G, 80 * G).unwrap();
        reader.release(100 * G, 10 * G).unwrap();
        reader.release(110 * G, 100 * G).unwrap();
        writer.write(0, 256 * G, &[]).unwrap();
    }

    #[test]
    fn adjacent_ranges_both_succeed_and_release_lets_a_range_be_claimed_again() {
        let (writer, mut reader) = arena(128);
        writer.write(0, 64 * G, &[1; G]).unwrap();
        writer.write(64 * G, 64 * G, &[2; G]).unwrap();
        assert!(writer.write(63 * G, 2 * G, &[]).is_err());
        reader.release(0, 64 * G).unwrap();
        writer.write(0, 2 * G, &[3; 2 * G]).unwrap();
        assert_eq!(reader.read(0, 2 * G).unwrap(), Some(&[3; 2 * G][..]));
        assert_eq!(reader.read(64 * G, 1).unwrap(), Some(&[2][..]));
    }

    #[test]
    fn nothing_is_read_before_it_is_written() {
        let (_writer, reader) = arena(8);
        assert_eq!(reader.read(0, G).unwrap(), None);
        assert_eq!(reader.read(0, 0).unwrap(), Some(&[][..]));
    }

    #[test]
    fn misaligned_out_of_bounds_and_too_long_are_errors() {
        let (writer, reader) = arena(8);
        assert!(matches!(
            writer.write(1, G, &[]),
            Err(ArenaError::Misaligned { .. })
        ));
        assert!(matches!(
            writer.write(0, 100, &[]),
            Err(ArenaError::Misaligned { .. })
        ));
        assert!(matches!(
            writer.write(8 * G, G, &[]),
            Err(ArenaError::OutOfBounds { .. })
        ));
        assert!(matches!(
            writer.write(usize::MAX - G + 1, G, &[]),
            Err(ArenaError::OutOfBounds { .. })
        ));
        assert!(matches!(
            writer.write(0, G, &[0; G + 1]),
            Err(ArenaError::PayloadTooLong { .. })
        ));
        assert!(matches!(
            reader.read(7 * G, G + 1),
            Err(ArenaError::OutOfBounds { .. })
        ));
        // A zero-length range claims nothing.
        writer.write(3 * G, 0, &[]).unwrap();
        writer.write(3 * G, 0, &[]).unwrap();
    }

    #[test]
    #[should_panic(expected = "not written")]
    fn releasing_what_is_not_held_panics() {
        let (_writer, mut reader) = arena(8);
        reader.release(0, G).unwrap();
    }
}
