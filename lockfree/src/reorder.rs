//! A lock-free reorder buffer: receivers on several threads insert writes that arrive out
//! of seq order (from several lanes), one consumer takes them strictly in seq order.
//!
//! # Algorithm
//!
//! Per-slot sequence stamps after Vyukov's bounded MPMC queue (as in crossbeam's
//! `ArrayQueue`), with slots keyed by `seq` instead of a tail counter. Slot `seq % capacity`
//! is the only place `seq` can live. Its stamp, an `AtomicU64`, holds `seq << 2 | state`
//! for the one seq the slot currently serves, with state `EMPTY` (waiting for that seq),
//! `WRITING` (a producer reserved it and has not published a value yet) or `FULL`. One
//! seq's life in its slot is:
//!
//! ```text
//! EMPTY(s) --reserve: CAS--> WRITING(s) --publish: store--> FULL(s)
//!    ^                            |
//!    +--- abort: the reservation -+
//!         dropped unpublished, store
//!
//! FULL(s) --the consumer takes the value, stores--> EMPTY(s + capacity)
//! ```
//!
//! `insert` is `reserve` then `publish`. A caller that must not copy its value before it
//! knows the seq is its own (a receiver moving a payload into a staging area) reserves
//! first, and publishes or drops the [`Reservation`].
//!
//! Producers never move a shared tail: they share nothing but the slot their seq maps to
//! and a read of the published `next`. The consumer owns `next`, keeps it in its handle
//! and publishes it (for the producers' window check) once per batch: every producer
//! reads that cache line on every insert, so it is written as rarely as delivery allows.
//!
//! # ABA
//!
//! A stamp carries the whole seq, not a lap bit or a "full" flag, and the seq in it never
//! decreases: only the consumer changes it, and only upward (`FULL(s)` to
//! `EMPTY(s + capacity)`). A producer's CAS expects `EMPTY(seq)` exactly: it cannot
//! succeed for a slot serving another lap, however long the producer stalled between
//! reading `next` and the CAS (had the stamp been only "empty/full", a producer that saw
//! "empty" for lap k, stalled while the consumer went round, could fill it during lap k+1
//! with a value of the wrong seq). Symmetrically the consumer takes a value only on
//! `FULL(next)` exactly.
//!
//! An abort is the one transition back to a value the stamp had before (`WRITING(s)` to
//! `EMPTY(s)`), and it is harmless: only the producer holding the reservation makes it
//! (no other party changes a `WRITING` stamp), and the consumer does not move past `s`
//! while the slot is not `FULL(s)`, so the slot has not left lap `s`: a stalled producer
//! whose CAS then finds `EMPTY(s)` claims the seq it meant to, in the lap it meant to.
//! `FULL(s)` is reached at most once per lap (only the consumer leaves it, to the next
//! lap), so the consumer can never take one seq twice. Stamps of different seqs differ
//! while `seq < SEQ_LIMIT` (2^62; `seq << 2` must fit), which holds for the life of any
//! replication group (at 10^9 writes per second, 146 years) and is asserted.
//!
//! # Progress
//!
//! `reserve` is wait-free (one load, one CAS, no loop), and so are `publish` and an
//! abort (one store each). The consumer cannot move past a seq whose producer stalls
//! while holding its reservation, but that is the nature of delivering in order: it could
//! not move past a seq that has not arrived either. Another producer of that seq is
//! refused as `Duplicate` meanwhile; if the holder aborts, a later insert or reserve of
//! the seq succeeds.

use std::fmt;
use std::mem::{ManuallyDrop, MaybeUninit};

use crossbeam_utils::CachePadded;

use crate::primitive::{Arc, AtomicU64, Ordering, UnsafeCell};

/// Seqs must stay below this: a stamp is `seq << 2 | state`.
pub const SEQ_LIMIT: u64 = 1 << 62;

const STATE_BITS: u32 = 2;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
const EMPTY: u64 = 0;
const WRITING: u64 = 1;
const FULL: u64 = 2;

fn stamp(seq: u64, state: u64) -> u64 {
    debug_assert!(seq < SEQ_LIMIT);
    debug_assert!(state <= FULL);
    (seq << STATE_BITS) | state
}

fn stamp_seq(stamp: u64) -> u64 {
    stamp >> STATE_BITS
}

fn stamp_state(stamp: u64) -> u64 {
    stamp & STATE_MASK
}

/// Why an insert or a reserve was refused; each variant gives the value back (`()` for a
/// reserve).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected<T> {
    /// `seq` is below `next`: already consumed (a resend of something delivered).
    #[error("seq already consumed")]
    Stale(T),
    /// `seq` is at or past `next + capacity`: no slot for it yet. Backpressure: the
    /// caller holds the value and retries once the consumer has advanced.
    #[error("seq ahead of the window")]
    Ahead(T),
    /// Another insert of the same seq got there first.
    #[error("seq already held")]
    Duplicate(T),
}

impl<T> Rejected<T> {
    /// The value that was not inserted.
    pub fn into_inner(self) -> T {
        match self {
            Rejected::Stale(value) | Rejected::Ahead(value) | Rejected::Duplicate(value) => value,
        }
    }
}

impl Rejected<()> {
    /// The same refusal, giving back `value` (an insert refused by its reserve).
    fn with_value<T>(self, value: T) -> Rejected<T> {
        match self {
            Rejected::Stale(()) => Rejected::Stale(value),
            Rejected::Ahead(()) => Rejected::Ahead(value),
            Rejected::Duplicate(()) => Rejected::Duplicate(value),
        }
    }
}

/// A snapshot of the buffer's counters. Each is exact; taken while inserts run, they are
/// not a consistent set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    pub inserted: u64,
    pub rejected_ahead: u64,
    pub rejected_stale: u64,
    pub rejected_duplicate: u64,
}

struct Slot<T> {
    stamp: AtomicU64,
    /// Initialized exactly while the stamp is `FULL` (and during `WRITING`, once the
    /// publishing producer has written it, until its `FULL` store).
    value: UnsafeCell<MaybeUninit<T>>,
}

/// Every producer bumps these, so each gets its own cache line.
struct Counters {
    inserted: CachePadded<AtomicU64>,
    rejected_ahead: CachePadded<AtomicU64>,
    rejected_stale: CachePadded<AtomicU64>,
    rejected_duplicate: CachePadded<AtomicU64>,
}

/// The shared buffer. Build it with [`ReorderBuffer::new`], then [`split`] it into the
/// producers' handle and the one consumer.
///
/// ```
/// use ordo_lockfree::{Rejected, ReorderBuffer};
///
/// let (producer, mut consumer) = ReorderBuffer::new(4, 100).split();
/// producer.insert(101, "b").unwrap();
/// assert_eq!(consumer.pop(), None, "100 has not arrived");
/// producer.insert(100, "a").unwrap();
/// assert_eq!(producer.insert(104, "e"), Err(Rejected::Ahead("e")));
/// let mut delivered = Vec::new();
/// consumer.drain(16, |seq, value| delivered.push((seq, value)));
/// assert_eq!(delivered, [(100, "a"), (101, "b")]);
/// ```
///
/// [`split`]: ReorderBuffer::split
pub struct ReorderBuffer<T> {
    /// The consumer's `next` as last published; producers read it for the window check.
    next_published: CachePadded<AtomicU64>,
    counters: Counters,
    /// `capacity - 1`; capacity is a power of two.
    mask: u64,
    /// Slots are not padded: padding would cost a cache line per slot, and the consumer
    /// walks them in order. Same choice as crossbeam's `ArrayQueue`.
    slots: Box<[Slot<T>]>,
}

// SAFETY: values only move between threads (a producer moves one in, the consumer moves it
// out), never shared by reference, so `T: Send` is enough. Access to each slot's value is
// serialized by its stamp as argued in `reserve`, `Reservation::publish` and `take_next`.
unsafe impl<T: Send> Send for ReorderBuffer<T> {}
// SAFETY: as for `Send`: `&ReorderBuffer` only lets a thread move values in (`insert`,
// or `reserve` and `publish`; a `Reservation` sent to another thread moves its value in
// from there), and moving out needs the one `Consumer`.
unsafe impl<T: Send> Sync for ReorderBuffer<T> {}

impl<T> ReorderBuffer<T> {
    /// A buffer of `capacity` slots whose consumer starts at `first_seq`. All memory is
    /// allocated here; nothing allocates afterwards.
    ///
    /// # Panics
    ///
    /// If `capacity` is not a power of two, or `first_seq + capacity` exceeds
    /// [`SEQ_LIMIT`]. Both are configuration, checked before this is called.
    pub fn new(capacity: usize, first_seq: u64) -> ReorderBuffer<T> {
        assert!(
            capacity.is_power_of_two(),
            "reorder buffer capacity {capacity} is not a power of two"
        );
        let capacity_seqs = capacity as u64;
        assert!(
            first_seq <= SEQ_LIMIT - capacity_seqs,
            "first seq {first_seq} too close to the seq limit"
        );
        let mask = capacity_seqs - 1;
        let slots = (0..capacity_seqs)
            .map(|index| {
                // The first seq at or after `first_seq` that maps to this slot.
                let seq = first_seq + (index.wrapping_sub(first_seq) & mask);
                debug_assert_eq!(seq & mask, index);
                Slot {
                    stamp: AtomicU64::new(stamp(seq, EMPTY)),
                    value: UnsafeCell::new(MaybeUninit::uninit()),
                }
            })
            .collect();
        ReorderBuffer {
            next_published: CachePadded::new(AtomicU64::new(first_seq)),
            counters: Counters {
                inserted: CachePadded::new(AtomicU64::new(0)),
                rejected_ahead: CachePadded::new(AtomicU64::new(0)),
                rejected_stale: CachePadded::new(AtomicU64::new(0)),
                rejected_duplicate: CachePadded::new(AtomicU64::new(0)),
            },
            mask,
            slots,
        }
    }

    /// The producers' handle (clone it, one per receiver) and the one consumer.
    pub fn split(self) -> (Producer<T>, Consumer<T>) {
        // Relaxed: `self` is owned here, so no other thread can have touched `next`.
        let next = self.next_published.load(Ordering::Relaxed);
        let shared = Arc::new(self);
        let consumer = Consumer {
            shared: Arc::clone(&shared),
            next,
        };
        (Producer { shared }, consumer)
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn stats(&self) -> ReorderStats {
        // Relaxed: each counter is a statistic on its own; nothing is published through it.
        ReorderStats {
            inserted: self.counters.inserted.load(Ordering::Relaxed),
            rejected_ahead: self.counters.rejected_ahead.load(Ordering::Relaxed),
            rejected_stale: self.counters.rejected_stale.load(Ordering::Relaxed),
            rejected_duplicate: self.counters.rejected_duplicate.load(Ordering::Relaxed),
        }
    }

    fn slot(&self, seq: u64) -> &Slot<T> {
        &self.slots[(seq & self.mask) as usize]
    }

    /// Puts `value` in the slot for `seq`, or says why not. Callable from any number of
    /// threads at once; wait-free. The same as [`reserve`] then [`Reservation::publish`].
    ///
    /// [`reserve`]: ReorderBuffer::reserve
    pub fn insert(&self, seq: u64, value: T) -> Result<(), Rejected<T>> {
        match self.reserve(seq) {
            Ok(reservation) => {
                reservation.publish(value);
                Ok(())
            }
            Err(rejected) => Err(rejected.with_value(value)),
        }
    }

    /// Claims the slot for `seq` (`EMPTY(seq)` to `WRITING(seq)`) before its value exists,
    /// or says why not (counted as an insert's refusal would be). Until the reservation
    /// is published or dropped, the consumer waits at `seq` as for a seq not yet arrived
    /// and other inserts of `seq` are refused as `Duplicate`. Callable from any number of
    /// threads at once; wait-free.
    pub fn reserve(&self, seq: u64) -> Result<Reservation<'_, T>, Rejected<()>> {
        // Acquire, pairing with the consumer's Release publish: every slot the consumer
        // released for seqs below `next` (its `EMPTY(s + capacity)` stores come before
        // the publish) is visible to the CAS below, so the slot for an in-window seq can
        // no longer show an earlier lap: that is asserted, not handled. It also orders the
        // consumer's move out of the slot's previous value before our write (see the CAS).
        let next = self.next_published.load(Ordering::Acquire);
        if seq < next {
            return Err(self.count(Rejected::Stale(())));
        }
        if seq - next > self.mask {
            return Err(self.count(Rejected::Ahead(())));
        }
        // In the window, so `seq < next + capacity <= SEQ_LIMIT`: the stamp fits.
        let slot = self.slot(seq);
        // Success Acquire, pairing with the Release store that made the stamp
        // `EMPTY(seq)`: the consumer's, whose move of the previous lap's value out of the
        // cell then happens before our write in `publish`; or an aborting producer's,
        // whose own Acquire CAS had synchronized with the consumer's store, so the chain
        // carries the same order through any number of aborts (a plain store breaks the
        // consumer's release sequence, hence the abort's Release). The window check's
        // Acquire orders the consumer's move too (it releases a slot before publishing
        // the `next` that admits us), so today this pair is redundant; it is kept so the
        // slot protocol is sound on its own, as in Vyukov's queue, whatever the window
        // check becomes (loom finds the race only when both pairs are weakened). Failure
        // Relaxed: we then only classify, never touch the cell.
        match slot.stamp.compare_exchange(
            stamp(seq, EMPTY),
            stamp(seq, WRITING),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(Reservation { buffer: self, seq }),
            Err(actual) => {
                let held = stamp_seq(actual);
                // An earlier lap here would mean the Acquire on `next` did not order the
                // consumer's release of this slot before us.
                assert!(
                    held >= seq,
                    "slot for seq {seq} still serves seq {held} after next {next} was published"
                );
                if held == seq {
                    debug_assert_ne!(stamp_state(actual), EMPTY);
                    Err(self.count(Rejected::Duplicate(())))
                } else {
                    // The consumer took `seq` after our load of `next`.
                    Err(self.count(Rejected::Stale(())))
                }
            }
        }
    }

    fn count<U>(&self, rejected: Rejected<U>) -> Rejected<U> {
        let counter = match &rejected {
            Rejected::Stale(_) => &self.counters.rejected_stale,
            Rejected::Ahead(_) => &self.counters.rejected_ahead,
            Rejected::Duplicate(_) => &self.counters.rejected_duplicate,
        };
        // Relaxed: a statistic; see `stats`.
        counter.fetch_add(1, Ordering::Relaxed);
        rejected
    }

    /// Takes the value for `seq` if it is there and releases its slot for
    /// `seq + capacity`. Does not publish `next`.
    ///
    /// # Safety
    ///
    /// Only the single consumer may call this, with `seq` its `next`: every seq below has
    /// been taken, so the slot serves `seq` and nobody else moves values out of it.
    unsafe fn take_next(&self, seq: u64) -> Option<T> {
        let slot = self.slot(seq);
        // Acquire, pairing with the producer's Release store of `FULL(seq)`: its write of
        // the value happens before our read.
        let current = slot.stamp.load(Ordering::Acquire);
        assert_eq!(
            stamp_seq(current),
            seq,
            "the slot for the consumer's next serves another seq"
        );
        if stamp_state(current) != FULL {
            return None;
        }
        let value = slot.value.with_mut(|cell| {
            // SAFETY: the stamp is `FULL(seq)`, so a producer wrote the value (visible by
            // the Acquire above) and no producer can touch the cell until it reads the
            // `EMPTY` we store below; the caller is the only consumer. Reading moves the
            // value out: the cell is logically uninitialized from here.
            unsafe { (*cell).assume_init_read() }
        });
        let released = seq + self.capacity() as u64;
        assert!(released < SEQ_LIMIT, "seq space exhausted");
        // Release, pairing with the Acquire CAS of the producer of `released`: our move
        // out of the cell happens before its write into it (and, through the publish
        // that follows, before its window check passes).
        slot.stamp.store(stamp(released, EMPTY), Ordering::Release);
        Some(value)
    }
}

impl<T> Drop for ReorderBuffer<T> {
    fn drop(&mut self) {
        for slot in self.slots.iter() {
            // Relaxed: `&mut self` means every handle is gone, and dropping the last `Arc`
            // ordered all their accesses before this.
            let current = slot.stamp.load(Ordering::Relaxed);
            // A reservation borrows a handle, so only a leaked one (`mem::forget`) can
            // still hold its slot here.
            assert_ne!(
                stamp_state(current),
                WRITING,
                "a reservation was leaked: neither published nor dropped"
            );
            if stamp_state(current) == FULL {
                slot.value.with_mut(|cell| {
                    // SAFETY: `FULL` means the cell holds a value nobody took, and
                    // `&mut self` means nobody else can.
                    unsafe { (*cell).assume_init_drop() };
                });
            }
        }
    }
}

impl<T> fmt::Debug for ReorderBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReorderBuffer")
            .field("capacity", &self.capacity())
            // Relaxed: informational.
            .field(
                "next_published",
                &self.next_published.load(Ordering::Relaxed),
            )
            .field("stats", &self.stats())
            .finish()
    }
}

/// The slot of one seq, claimed by [`ReorderBuffer::reserve`] before its value exists.
/// [`publish`] moves the value in; dropping it unpublished aborts: the slot waits for the
/// seq again, and a later insert or reserve of it may succeed.
///
/// ```
/// use ordo_lockfree::{Rejected, ReorderBuffer};
///
/// let (producer, mut consumer) = ReorderBuffer::new(4, 0).split();
/// let reservation = producer.reserve(0).unwrap();
/// assert_eq!(producer.insert(0, "again").unwrap_err(), Rejected::Duplicate("again"));
/// assert_eq!(consumer.pop(), None, "reserved is not yet arrived");
/// drop(reservation);
/// producer.reserve(0).unwrap().publish("a");
/// assert_eq!(consumer.pop(), Some((0, "a")));
/// ```
///
/// [`publish`]: Reservation::publish
#[must_use = "dropping a reservation aborts it: the seq is free again"]
pub struct Reservation<'a, T> {
    buffer: &'a ReorderBuffer<T>,
    seq: u64,
}

impl<T> Reservation<'_, T> {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Moves `value` into the slot and marks it `FULL(seq)`: the consumer may take it.
    pub fn publish(self, value: T) {
        // Our `Drop` (the abort) must not run: the slot ends `FULL`, not `EMPTY`.
        let this = ManuallyDrop::new(self);
        let (buffer, seq) = (this.buffer, this.seq);
        let slot = buffer.slot(seq);
        // Relaxed: our own CAS wrote this and only we change a `WRITING(seq)` stamp, so
        // coherence gives us our value back.
        debug_assert_eq!(slot.stamp.load(Ordering::Relaxed), stamp(seq, WRITING));
        slot.value.with_mut(|cell| {
            // SAFETY: our reserve's CAS moved the stamp from `EMPTY(seq)` to
            // `WRITING(seq)`. Only we change a `WRITING` stamp, so no other producer can
            // claim this slot until our store below (their CAS expects `EMPTY(seq)`), and
            // the consumer touches the cell only on `FULL(seq)`. The reserve's Acquire
            // ordered the previous lap's move out before this write. The cell holds no
            // value (moved out, or never filled), so nothing is overwritten unsafely.
            unsafe { (*cell).write(value) };
        });
        // Relaxed: a statistic; see `stats`.
        buffer.counters.inserted.fetch_add(1, Ordering::Relaxed);
        // Release, pairing with the consumer's Acquire load in `take_next`: our write of
        // the value happens before its read.
        slot.stamp.store(stamp(seq, FULL), Ordering::Release);
    }
}

impl<T> Drop for Reservation<'_, T> {
    /// The abort: `WRITING(seq)` back to `EMPTY(seq)`. See the module doc on why a stamp
    /// value coming back is sound here.
    fn drop(&mut self) {
        let slot = self.buffer.slot(self.seq);
        // Relaxed: as in `publish`, the stamp is still our own `WRITING(seq)`.
        debug_assert_eq!(slot.stamp.load(Ordering::Relaxed), stamp(self.seq, WRITING));
        // Release, pairing with the Acquire CAS of the next reserver of `seq`. We never
        // touched the cell, but our CAS acquired the consumer's move out of it, and this
        // store passes that order on (a CAS reading a plain store synchronizes only with
        // that store, not with the consumer's earlier one). Redundant with the window
        // check's Acquire today, like the CAS's; loom finds the race when both are Relaxed.
        slot.stamp.store(stamp(self.seq, EMPTY), Ordering::Release);
    }
}

impl<T> fmt::Debug for Reservation<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("seq", &self.seq)
            .finish()
    }
}

/// The receivers' side: clone one per thread. Inserts and reserves never block.
pub struct Producer<T> {
    shared: Arc<ReorderBuffer<T>>,
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Self {
        Producer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Producer<T> {
    /// See [`ReorderBuffer::insert`].
    pub fn insert(&self, seq: u64, value: T) -> Result<(), Rejected<T>> {
        self.shared.insert(seq, value)
    }

    /// Claims the slot for `seq` (`EMPTY(seq)` to `WRITING(seq)`) without a value yet.
    /// See [`ReorderBuffer::reserve`].
    pub fn reserve(&self, seq: u64) -> Result<Reservation<'_, T>, Rejected<()>> {
        self.shared.reserve(seq)
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    pub fn stats(&self) -> ReorderStats {
        self.shared.stats()
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Producer").field(&*self.shared).finish()
    }
}

/// The one consumer: not `Clone`, and every call that moves `next` takes `&mut self`.
///
/// ```compile_fail,E0599
/// let (_, consumer) = ordo_lockfree::ReorderBuffer::<u64>::new(4, 0).split();
/// let second = consumer.clone(); // a second consumer: refused
/// ```
pub struct Consumer<T> {
    shared: Arc<ReorderBuffer<T>>,
    /// The consumer's own `next`; `shared.next_published` lags it within a batch.
    next: u64,
}

impl<T> Consumer<T> {
    /// The next seq to deliver.
    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    pub fn stats(&self) -> ReorderStats {
        self.shared.stats()
    }

    /// The value for `next`, if it has arrived; `next` then advances and is published.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let item = self.take()?;
        self.publish();
        Some(item)
    }

    /// Hands `f` the contiguous run starting at `next`, at most `max` values, then
    /// publishes the new `next` once. Returns how many it handed over. Producers see the
    /// slots freed by this batch only after the publish: until then an insert into them is
    /// refused as `Ahead`, conservatively.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(u64, T)) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some((seq, value)) = self.take() else {
                break;
            };
            f(seq, value);
            taken += 1;
        }
        if taken > 0 {
            self.publish();
        }
        taken
    }

    fn take(&mut self) -> Option<(u64, T)> {
        let seq = self.next;
        // SAFETY: `Consumer` is the only consumer (not `Clone`, built once by `split`),
        // `&mut self` serializes its calls, and `seq` is its `next`.
        let value = unsafe { self.shared.take_next(seq) }?;
        self.next = seq + 1;
        Some((seq, value))
    }

    fn publish(&self) {
        // Release, pairing with the Acquire load in `insert`: the slot releases for every
        // seq below `next` happen before a producer's window check passes on them.
        self.shared
            .next_published
            .store(self.next, Ordering::Release);
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("next", &self.next)
            .field("shared", &*self.shared)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
#[path = "reorder_tests.rs"]
mod tests;
