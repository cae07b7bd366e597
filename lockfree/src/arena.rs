//! The staging arena: receivers on many threads copy record payloads into one byte
//! buffer at the offsets they were given, and one reader (the thread that journals and
//! applies them) reads each range once it is complete, then releases it for reuse.
//!
//! # Algorithm
//!
//! Ownership bitmaps over fixed granules, claimed a run of bits at a time as in a
//! lock-free bitmap allocator (Linux's `sbitmap`, bitmap ID allocators), here at offsets
//! the caller chooses instead of ones searched for. The arena is cut into granules of
//! [`GRANULE_BYTES`]; each has a `claimed` and a `written` bit, 64 to an `AtomicU64` word
//! of two bitmaps. A granule's life:
//!
//! ```text
//! free --claim: fetch_or `claimed` (Acquire)--> claimed
//!      --copy the payload, fetch_or `written` (Release)--> written
//!      --the reader's release: clear `written`, then `claimed` (Release)--> free
//! ```
//!
//! A write claims its whole range with one `fetch_or` per word it touches, in ascending
//! word order. If any granule was claimed already it clears exactly the bits it set
//! (those its `fetch_or`s found clear) and reports `Overlap`; otherwise it copies the
//! payload in with one memcpy and sets the range's `written` bits.
//!
//! # Soundness
//!
//! - A writer touches only bytes of granules whose `claimed` bit its own `fetch_or` set. A
//!   `fetch_or` returns the bit's previous value, so of two claims of one granule exactly
//!   one sees it clear: no two writers' copies overlap.
//! - The reader reads only granules whose `written` bit it loaded with Acquire. The writer
//!   sets it with a Release `fetch_or` after its copy, so the copy happens before the read.
//! - A written granule stays claimed until `release`, which takes `&mut ArenaReader`, so
//!   no `&[u8]` returned by `read` (which borrows the reader) is alive then. Release's
//!   Release clear of `claimed` pairs with the next writer's Acquire `fetch_or`: the
//!   reader's reads happen before that writer's copy.
//! - Every change to either bitmap is a read-modify-write, so no release sequence is ever
//!   broken: a claim that reads a value left by other claims or undos still synchronizes
//!   with the reader's release before them.
//!
//! # Progress
//!
//! `write`, `read` and `release` are wait-free: a bounded number of word operations, no
//! waiting on another thread. Two claims of overlapping ranges never both succeed, and
//! when only those two race, one of them does (the one whose `fetch_or` first reaches
//! the word where the later-starting range begins). A claim can also fail against the
//! bits a third, failing claim holds for a moment before undoing them. The engine gives
//! out disjoint ranges, so it sees `Overlap` only for a duplicate record.

use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::ptr::{self, NonNull};
use std::slice;

use crate::primitive::{AccessCells, Arc, AtomicU64, Ordering};

/// Ranges start and end on multiples of this.
pub const GRANULE_BYTES: usize = 512;

/// Granules per bitmap word.
const WORD_GRANULES: usize = u64::BITS as usize;

const _: () = assert!(GRANULE_BYTES.is_power_of_two());

/// Why a range was refused. Misaligned and out-of-bounds ranges come from a caller's
/// arithmetic (a peer's offset, checked here rather than trusted); an overlap from a
/// range claimed twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    #[error("range {at}+{len} is not aligned to {GRANULE_BYTES} bytes")]
    Misaligned { at: usize, len: usize },
    #[error("range {at}+{len} is outside the arena of {size} bytes")]
    OutOfBounds { at: usize, len: usize, size: usize },
    #[error("range {at}+{len} overlaps a range already claimed")]
    Overlap { at: usize, len: usize },
    #[error("a payload of {payload} bytes is longer than its claimed {len}")]
    PayloadTooLong { payload: usize, len: usize },
}

/// The words of a granule range and, in each, the bits of its granules. Nothing for an
/// empty range.
fn words(granules: Range<usize>) -> impl Iterator<Item = (usize, u64)> {
    let first = granules.start / WORD_GRANULES;
    let end = if granules.is_empty() {
        first
    } else {
        granules.end.div_ceil(WORD_GRANULES)
    };
    (first..end).map(move |word| {
        let base = word * WORD_GRANULES;
        let low = granules.start.max(base) - base;
        let high = granules.end.min(base + WORD_GRANULES) - base;
        debug_assert!(low < high && high <= WORD_GRANULES);
        (word, (u64::MAX >> (WORD_GRANULES - (high - low))) << low)
    })
}

/// What the writers and the reader share.
struct Shared {
    /// The caller's `Vec<u8>`, taken apart in `new` and put back together to be freed in
    /// `Drop`. Every access goes through this pointer; no reference to the whole buffer
    /// exists after `new`.
    bytes: NonNull<u8>,
    len: usize,
    capacity: usize,
    /// Not padded: a word covers 32 KiB of arena, so writers of different records rarely
    /// share one, and padding would multiply the bitmaps' size by 16.
    claimed: Box<[AtomicU64]>,
    written: Box<[AtomicU64]>,
    /// Shows the bytes' accesses to loom (one cell per granule); nothing otherwise.
    access: AccessCells,
}

// SAFETY: `Shared` owns its buffer as the `Vec<u8>` it came from did; only the raw pointer
// keeps the compiler from seeing that, and bytes may move between threads.
unsafe impl Send for Shared {}
// SAFETY: `&Shared` allows `write`, `read` and `release` (the last behind
// `&mut ArenaReader`), which touch bytes only as the module doc argues: a writer only
// granules its own claim set, the reader only granules it saw written, never both at once.
unsafe impl Sync for Shared {}

impl Shared {
    /// The granules of `[at, at + len)`, or why it is not a valid range.
    fn granules(&self, at: usize, len: usize) -> Result<Range<usize>, ArenaError> {
        if !at.is_multiple_of(GRANULE_BYTES) || !len.is_multiple_of(GRANULE_BYTES) {
            return Err(ArenaError::Misaligned { at, len });
        }
        match at.checked_add(len) {
            Some(end) if end <= self.len => Ok(at / GRANULE_BYTES..end / GRANULE_BYTES),
            _ => Err(ArenaError::OutOfBounds {
                at,
                len,
                size: self.len,
            }),
        }
    }

    /// Claims `[at, at + len)`, copies `payload` to its start, marks it all written.
    fn write(&self, at: usize, len: usize, payload: &[u8]) -> Result<(), ArenaError> {
        let granules = self.granules(at, len)?;
        if payload.len() > len {
            return Err(ArenaError::PayloadTooLong {
                payload: payload.len(),
                len,
            });
        }
        if !self.claim(granules.clone()) {
            return Err(ArenaError::Overlap { at, len });
        }
        let writing = self.access.write(granules.clone());
        // SAFETY: `granules` checked that `[at, at + len)` lies in the buffer, and the
        // payload is no longer than it (checked above). Our claim set
        // the `claimed` bit of each of its granules, so no other writer touches them, and
        // the reader reads granules only once their `written` bit (set below) is, and did
        // not read them since its release of them, which our claim's Acquire ordered
        // before this. `payload` cannot overlap the destination: a slice into the arena
        // (from `read`) covers only written granules, which are claimed, and ours were
        // not claimed before us.
        unsafe {
            ptr::copy_nonoverlapping(payload.as_ptr(), self.bytes.as_ptr().add(at), payload.len())
        };
        drop(writing);
        for (word, bits) in words(granules) {
            // Release, pairing with the reader's Acquire loads in `read` and `release`: our
            // copy happens before its reads of these bytes, and (through its release)
            // before the next writer's copy into them.
            let before = self.written[word].fetch_or(bits, Ordering::Release);
            assert_eq!(before & bits, 0, "granules of {at}+{len} written before");
        }
        Ok(())
    }

    /// Sets the `claimed` bits of `granules`. If any was set already, clears the ones this
    /// call set and returns false.
    fn claim(&self, granules: Range<usize>) -> bool {
        for (word, bits) in words(granules.clone()) {
            // Acquire, pairing with the reader's Release clear in `release`: its reads of
            // these granules' bytes and its clear of their `written` bits happen before our
            // copy and our set of `written`. Every change to `claimed` is a
            // read-modify-write, so this holds whatever claims and undos came between.
            let before = self.claimed[word].fetch_or(bits, Ordering::Acquire);
            if before & bits != 0 {
                self.unclaim(word, bits & !before);
                for (earlier, bits) in words(granules).take_while(|&(earlier, _)| earlier < word) {
                    self.unclaim(earlier, bits);
                }
                return false;
            }
        }
        true
    }

    /// Clears `bits` of `word`, set by a claim that then failed.
    fn unclaim(&self, word: usize, bits: u64) {
        // Relaxed: nothing was written under these bits, so nothing needs ordering before
        // the next claim of them; being a read-modify-write, this keeps the reader's
        // release sequence intact for that claim.
        let before = self.claimed[word].fetch_and(!bits, Ordering::Relaxed);
        assert_eq!(before & bits, bits, "claimed bits cleared under a claim");
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: pointer, length and capacity are those of the `Vec` taken apart in
        // `StagingArena::new`, and `&mut self` means no handle, so no access, is left.
        drop(unsafe { Vec::from_raw_parts(self.bytes.as_ptr(), self.len, self.capacity) });
    }
}

/// The arena before it is [`split`] into the writers' handle and the reader.
///
/// ```
/// use ordo_lockfree::{ArenaError, StagingArena, GRANULE_BYTES};
///
/// let (writer, mut reader) = StagingArena::new(vec![0; 4 * GRANULE_BYTES]).split();
/// writer.write(GRANULE_BYTES, &[7; 2 * GRANULE_BYTES]).unwrap();
/// assert_eq!(
///     writer.write(0, &[8; 2 * GRANULE_BYTES]),
///     Err(ArenaError::Overlap { at: 0, len: 2 * GRANULE_BYTES })
/// );
/// assert_eq!(reader.read(0, GRANULE_BYTES).unwrap(), None, "not written");
/// let payload = reader.read(GRANULE_BYTES, 2 * GRANULE_BYTES).unwrap().unwrap();
/// assert!(payload.iter().all(|&byte| byte == 7));
/// reader.release(GRANULE_BYTES, 2 * GRANULE_BYTES).unwrap();
/// writer.write(0, &[8; 2 * GRANULE_BYTES]).unwrap();
/// ```
///
/// [`split`]: StagingArena::split
pub struct StagingArena {
    shared: Shared,
}

impl StagingArena {
    /// An arena over `bytes` (which the caller may have prefaulted), all of it free. Its
    /// length must be a multiple of [`GRANULE_BYTES`]; the bitmaps are allocated here and
    /// nothing allocates afterwards.
    ///
    /// # Panics
    ///
    /// If the length is not a multiple of [`GRANULE_BYTES`]: configuration, checked before.
    pub fn new(bytes: Vec<u8>) -> StagingArena {
        let len = bytes.len();
        assert!(
            len.is_multiple_of(GRANULE_BYTES),
            "staging arena of {len} bytes is not a multiple of {GRANULE_BYTES}"
        );
        let granules = len / GRANULE_BYTES;
        let words = granules.div_ceil(WORD_GRANULES);
        let bitmap = || (0..words).map(|_| AtomicU64::new(0)).collect();
        // Taken apart without reallocating (`into_boxed_slice` could, and would lose the
        // prefaulting); `Shared::drop` puts it back together.
        let mut bytes = ManuallyDrop::new(bytes);
        let capacity = bytes.capacity();
        StagingArena {
            shared: Shared {
                bytes: NonNull::new(bytes.as_mut_ptr()).expect("a Vec's pointer is not null"),
                len,
                capacity,
                claimed: bitmap(),
                written: bitmap(),
                access: AccessCells::new(granules),
            },
        }
    }

    /// The writers' handle (clone it, one per receiver) and the one reader.
    pub fn split(self) -> (ArenaWriter, ArenaReader) {
        let shared = Arc::new(self.shared);
        let reader = ArenaReader {
            shared: Arc::clone(&shared),
        };
        (ArenaWriter { shared }, reader)
    }

    /// In bytes.
    pub fn len(&self) -> usize {
        self.shared.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for StagingArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagingArena")
            .field("len", &self.len())
            .finish()
    }
}

/// The receivers' side: clone one per thread. Writes never block.
#[derive(Clone)]
pub struct ArenaWriter {
    shared: Arc<Shared>,
}

impl ArenaWriter {
    /// Claims `[at, at + payload.len())`, copies `payload` in and marks it written; the
    /// range stays claimed until the reader releases it. An empty payload claims nothing
    /// and succeeds at any aligned offset in bounds. Refused without a trace (no granule
    /// left claimed) if the range is misaligned, out of bounds, or overlaps a claimed one.
    pub fn write(&self, at: usize, payload: &[u8]) -> Result<(), ArenaError> {
        self.shared.write(at, payload.len(), payload)
    }

    /// As [`write`](Self::write), but claims `len` bytes (at least the payload's): the
    /// rest of the range is claimed and marked written without being copied to (a
    /// record's share of a stream that its payload does not fill, say).
    pub fn claim_and_write(&self, at: usize, len: usize, payload: &[u8]) -> Result<(), ArenaError> {
        self.shared.write(at, len, payload)
    }

    /// In bytes.
    pub fn len(&self) -> usize {
        self.shared.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for ArenaWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaWriter")
            .field("len", &self.len())
            .finish()
    }
}

/// The one reader: not `Clone`, and `release` takes `&mut self`, so no slice it handed out
/// is alive when a range goes back to the writers.
///
/// ```compile_fail,E0599
/// let (_, reader) = ordo_lockfree::StagingArena::new(vec![0; 512]).split();
/// let second = reader.clone(); // a second reader: refused
/// ```
///
/// ```compile_fail,E0502
/// let (writer, mut reader) = ordo_lockfree::StagingArena::new(vec![0; 512]).split();
/// writer.write(0, &[1; 512]).unwrap();
/// let payload = reader.read(0, 512).unwrap().unwrap();
/// reader.release(0, 512).unwrap(); // while `payload` is borrowed: refused
/// assert_eq!(payload[0], 1);
/// ```
pub struct ArenaReader {
    shared: Arc<Shared>,
}

impl ArenaReader {
    /// The bytes of `[at, at + len)` if every granule in it is written, `None` if any is
    /// not (yet). An empty range is always there.
    pub fn read(&self, at: usize, len: usize) -> Result<Option<&[u8]>, ArenaError> {
        let shared = &*self.shared;
        let granules = shared.granules(at, len)?;
        for (word, bits) in words(granules.clone()) {
            // Acquire, pairing with the writers' Release `fetch_or` in `write`: their
            // copies into these granules happen before our reads of them.
            if shared.written[word].load(Ordering::Acquire) & bits != bits {
                return Ok(None);
            }
        }
        shared.access.read(granules);
        // SAFETY: `granules` checked that the range lies in the buffer. Each of its
        // granules has its `written` bit set, seen with Acquire, so the copy into it
        // happened before this. A written granule stays claimed, so no writer touches it,
        // until `release`, which takes `&mut self` and so cannot run while the returned
        // slice (borrowing `self`) lives.
        Ok(Some(unsafe {
            slice::from_raw_parts(shared.bytes.as_ptr().add(at), len)
        }))
    }

    /// Writes `payload` at `at` as [`ArenaWriter::write`] does, for setup on the reader's
    /// thread (restoring records from a journal at start).
    pub fn write(&self, at: usize, payload: &[u8]) -> Result<(), ArenaError> {
        self.shared.write(at, payload.len(), payload)
    }

    /// [`ArenaWriter::claim_and_write`] on the reader's thread.
    pub fn claim_and_write(&self, at: usize, len: usize, payload: &[u8]) -> Result<(), ArenaError> {
        self.shared.write(at, len, payload)
    }

    /// Gives `[at, at + len)` back to the writers: clears its `written`, then its
    /// `claimed` bits.
    ///
    /// # Panics
    ///
    /// If a granule of the range is not claimed and written: releasing what was not
    /// written, or twice, is the caller's bug.
    pub fn release(&mut self, at: usize, len: usize) -> Result<(), ArenaError> {
        let shared = &*self.shared;
        let granules = shared.granules(at, len)?;
        for (word, bits) in words(granules.clone()) {
            // Acquire, pairing with the writers' Release in `write`: their copies happen
            // before our release, so (through its Release) before the next writer's copy,
            // even for granules we never `read`.
            let written = shared.written[word].load(Ordering::Acquire);
            assert_eq!(
                written & bits,
                bits,
                "release of {at}+{len}: not all written"
            );
            // Relaxed: a writer sets `claimed` before `written`, and we acquired `written`;
            // only we clear either.
            let claimed = shared.claimed[word].load(Ordering::Relaxed);
            assert_eq!(
                claimed & bits,
                bits,
                "release of {at}+{len}: written, not claimed"
            );
        }
        // `&mut self`: every slice `read` returned is dead; its last use was before here.
        shared.access.read(granules.clone());
        for (word, bits) in words(granules.clone()) {
            // Relaxed: the next set of these bits follows a claim that acquires our clear
            // of `claimed` below, which follows this one, so it cannot come first.
            shared.written[word].fetch_and(!bits, Ordering::Relaxed);
        }
        for (word, bits) in words(granules) {
            // Release, pairing with the Acquire `fetch_or` of the next claim of these
            // granules: our reads of their bytes happen before its copy.
            shared.claimed[word].fetch_and(!bits, Ordering::Release);
        }
        Ok(())
    }

    /// In bytes.
    pub fn len(&self) -> usize {
        self.shared.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
#[path = "arena_tests.rs"]
mod tests;
