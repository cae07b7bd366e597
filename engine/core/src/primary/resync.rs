//! The primary's resync: brings a secondary that re-based onto this history to the
//! primary's image, comparing before sending (DRBD's `csums-alg`), while the application's
//! writes keep streaming.
//!
//! Extent by extent (1 MiB), from the set that may differ: ask the secondary for the
//! digests of its replica there, read the extent here, and send each differing unit as a
//! write record of the current stream, with the seq it gets now. The read happens on the
//! poller when no local write to the extent is in flight or waiting, so its contents are
//! exactly the image at that seq, and the records go into retention in the same step.
//!
//! Why that converges, whenever the secondary read its digests: once every extent is
//! compared, close the data set (its sync "ends the resync", K). For a unit `b`, the
//! secondary's image at K is the last record of this history touching `b` up to K (every
//! record, live or resync, covers whole units), or its base image of `b` if there is none.
//! If a record touches `b`, the primary's image at K is that same record's. If none does,
//! `b` was not written since the history began, so the primary's `b` at the read equals
//! its `b` at K, and the secondary's digest (of its base, as no record touched it) equals
//! it, or the unit was sent at the read, which is a record touching it. So at K both
//! images are equal, whatever the digests' age and even if read mid-apply.
//!
//! The replica meanwhile: a held secondary applies nothing of this history until K is
//! durable, then all of it as a unit (its image stays its base until then); an
//! inconsistent one applies as data sets complete.
//!
//! Room for a held resync: the secondary stages the stream only up to its applied point
//! plus its journal window, and a held secondary's applied point stands still until K, so
//! everything sent from the re-base to K (resync records and the application's writes)
//! must fit that one window. When the resync's worst case (every unit still to compare
//! differing, each in a record of its own and a sync) fits what is left of the window as
//! it begins, the resync *keeps its room*: a write of the application is admitted only
//! while it leaves that worst case free, and while one waits the comparison goes at full
//! speed, so a held resync that could fit always ends. (Each record covers at least one
//! unit and costs at most a unit, its header and one sync per unit, so the worst case of
//! what is left never grows: `reserve_bytes`.) When it does not fit, the primary says so
//! (`ResyncStats::room`) and the application's writes go on as before; the secondary may
//! then report the resync stuck (see `secondary`).

use super::*;
use crate::injected::InjectedBug;
use crate::protocol::digest::{digests_of, span_units, unit_bytes, MAX_DIGEST_SPAN_BYTES};
use crate::protocol::{DigestRequestFrame, DigestsFrame, MAX_DIGESTS};
use crate::storage::read_blocking;

/// The unit the write-intent record and a resync count in.
pub const EXTENT_BYTES: u64 = super::intent::EXTENT_BYTES;
/// Digest requests outstanding at once: enough that the secondary always has the next
/// ones to read while the primary compares (one extent a round, see `poll_resync`).
const SLOTS: usize = 8;
/// A digest request not answered in this many retransmit intervals is asked again.
const REQUEST_TIMEOUT_INTERVALS: u64 = 4;
/// A resync's records may fill at most this share of the retention window, so the
/// application's writes always find room first.
const RESYNC_WINDOW_SHARE: u64 = 2;

/// Where the resync of this history stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResyncPhase {
    /// No secondary needs one (or none has re-based onto this history yet).
    #[default]
    Idle,
    /// Comparing and sending.
    Scanning,
    /// Every extent is compared; the data set that ends the resync is `end`: the
    /// secondary's replica is the primary's image once it applied it.
    Ending { end: DataSetId },
    /// The secondary applied the end point.
    Done { end: DataSetId },
}

/// What a resync did, for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResyncStats {
    pub phase: ResyncPhase,
    /// Bytes of the set that may differ, when the resync began.
    pub bytes_total: u64,
    /// Bytes of it compared so far.
    pub bytes_compared: u64,
    /// Bytes sent because they differed.
    pub bytes_sent: u64,
    /// Extents whose read was put off because a write to them was in flight or the
    /// window had no room.
    pub deferred: u64,
    /// Digest requests asked again after a timeout or a broken lane.
    pub requests_resent: u64,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// Whether the resync keeps its room in a held secondary's window.
    pub room: ResyncRoom,
    /// Times the application's writes found no room beside a held resync that keeps its
    /// room (each wait ends when a write is admitted again).
    pub room_waits: u64,
}

/// A resync's room in the secondary's journal window (see the module's doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResyncRoom {
    /// The secondary applies the resync as data sets complete (inconsistent): it needs no
    /// room kept.
    #[default]
    NotHeld,
    /// Held, and its worst case fit as it began: the application's writes leave it room,
    /// so it always ends.
    Kept,
    /// Held, and its worst case (`needed` bytes of stream) did not fit the `free` bytes
    /// left in the secondary's window as it began: it ends only if what differs fits.
    MayNotFit { needed: u64, free: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Asked (or to be asked when `sent_ms` is `None`).
    Requested {
        sent_ms: Option<u64>,
    },
    /// The digests are in; to be read and compared.
    Answered,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    id: u64,
    volume: VolumeId,
    offset: u64,
    len: u32,
    digests: Vec<u64>,
    /// Bytes of the range compared (and sent where they differed) so far: a range whose
    /// differences do not fit the window at once goes in pieces, each read afresh.
    done: u32,
}

/// Extents that may differ, one bit each per volume.
#[derive(Debug, Default)]
pub(super) struct ExtentSet {
    words: Vec<Vec<u64>>,
    count: u64,
}

impl ExtentSet {
    pub(super) fn new(extents_per_volume: &[u64]) -> ExtentSet {
        let words = extents_per_volume
            .iter()
            .map(|&n| vec![0; n.div_ceil(64) as usize])
            .collect();
        ExtentSet { words, count: 0 }
    }

    pub(super) fn insert(&mut self, volume: VolumeId, extent: u64) {
        let word = &mut self.words[usize::from(volume.0)][(extent / 64) as usize];
        let bit = 1 << (extent % 64);
        if *word & bit == 0 {
            *word |= bit;
            self.count += 1;
        }
    }

    pub(super) fn contains(&self, volume: VolumeId, extent: u64) -> bool {
        self.words[usize::from(volume.0)][(extent / 64) as usize] & (1 << (extent % 64)) != 0
    }

    fn remove(&mut self, volume: VolumeId, extent: u64) {
        let word = &mut self.words[usize::from(volume.0)][(extent / 64) as usize];
        let bit = 1 << (extent % 64);
        if *word & bit != 0 {
            *word &= !bit;
            self.count -= 1;
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.count
    }

    /// The first extent at or after `(volume, extent)`, in volume then extent order.
    fn next_from(&self, volume: usize, extent: u64) -> Option<(VolumeId, u64)> {
        for (v, words) in self.words.iter().enumerate().skip(volume) {
            let start = if v == volume { extent } else { 0 };
            for (w, &word) in words.iter().enumerate().skip((start / 64) as usize) {
                let mut bits = word;
                if w as u64 == start / 64 {
                    bits &= u64::MAX << (start % 64);
                }
                if bits != 0 {
                    let extent = w as u64 * 64 + u64::from(bits.trailing_zeros());
                    return Some((VolumeId(v as u16), extent));
                }
            }
        }
        None
    }
}

#[derive(Debug)]
pub(super) struct Resync {
    stats: ResyncStats,
    to_scan: ExtentSet,
    /// Where the scan goes on from: (volume, extent).
    cursor: (usize, u64),
    slots: Vec<Slot>,
    next_id: u64,
    /// One extent read from a volume, and its digests.
    buf: Vec<u8>,
    ours: Vec<u64>,
    /// Bytes per second the comparison may go at (0: no limit), and the budget left: a
    /// range is asked for while it is positive, and costs its length (so the rate holds on
    /// average even below one range a second).
    rate_bytes: u64,
    budget_bytes: i64,
    budget_ms: u64,
    /// With `ResyncRoom::Kept`: the stream end a held secondary stages up to (its applied
    /// point, which stands still until the end point, plus its window).
    credit_end: Option<u64>,
    /// Bytes of the extents still to compare (a volume's last extent may be short).
    bytes_left: u64,
    /// The smallest comparison unit of the volumes (the most records per byte).
    unit: u64,
    /// A write of the application waits for the room this resync keeps: compare at full
    /// speed until one is admitted.
    writes_waiting: bool,
}

impl Resync {
    pub(super) fn new(extents_per_volume: &[u64], rate_bytes: u64) -> Resync {
        Resync {
            stats: ResyncStats::default(),
            to_scan: ExtentSet::new(extents_per_volume),
            cursor: (0, 0),
            slots: (0..SLOTS)
                .map(|_| Slot {
                    state: SlotState::Free,
                    id: 0,
                    volume: VolumeId(0),
                    offset: 0,
                    len: 0,
                    digests: Vec::with_capacity(MAX_DIGESTS),
                    done: 0,
                })
                .collect(),
            next_id: 1,
            buf: vec![0; MAX_DIGEST_SPAN_BYTES as usize],
            ours: Vec::with_capacity(MAX_DIGESTS),
            rate_bytes,
            budget_bytes: 0,
            budget_ms: 0,
            credit_end: None,
            bytes_left: 0,
            unit: 1,
            writes_waiting: false,
        }
    }

    /// The most stream bytes what is left to compare can still cost, with the end point's
    /// sync: every unit differing, each sent alone with a sync of its own. Extents in a
    /// slot count less what was compared of them already.
    fn reserve_bytes(&self) -> u64 {
        let compared: u64 = self
            .slots
            .iter()
            .filter(|s| s.state != SlotState::Free)
            .map(|s| u64::from(s.done))
            .sum();
        let left = self.bytes_left.saturating_sub(compared);
        // A unit, its record's header and a sync.
        let unit_cost = self.unit + 2 * RECORD_OVERHEAD_BYTES;
        left.div_ceil(self.unit) * unit_cost + RECORD_OVERHEAD_BYTES
    }

    pub(super) fn stats(&self) -> ResyncStats {
        self.stats
    }

    pub(super) fn phase(&self) -> ResyncPhase {
        self.stats.phase
    }

    /// Whether `(volume, extent)` is still to be compared (its write-intent bit must stay).
    pub(super) fn pending(&self, volume: VolumeId, extent: u64) -> bool {
        self.stats.phase == ResyncPhase::Scanning && self.to_scan.contains(volume, extent)
    }

    /// The next digest request to send, if one waits.
    pub(super) fn next_request(&mut self, now_ms: u64) -> Option<DigestRequestFrame> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.state == SlotState::Requested { sent_ms: None })?;
        slot.state = SlotState::Requested {
            sent_ms: Some(now_ms),
        };
        Some(DigestRequestFrame {
            id: slot.id,
            volume: slot.volume,
            offset: slot.offset,
            len: slot.len,
        })
    }

    /// Lanes broke: requests sent may be lost with them; ask again.
    pub(super) fn lanes_lost(&mut self) {
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::Requested { sent_ms: Some(_) }) {
                slot.state = SlotState::Requested { sent_ms: None };
                self.stats.requests_resent += 1;
            }
        }
    }

    /// Takes the secondary's digests for the request they answer (a late answer to a
    /// request asked again, or to one the resync no longer waits for, is dropped).
    pub(super) fn on_digests(&mut self, digests: &DigestsFrame) -> Result<(), PeerError> {
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| matches!(s.state, SlotState::Requested { .. }) && s.id == digests.id)
        else {
            return Ok(());
        };
        if (digests.volume, digests.offset, digests.len) != (slot.volume, slot.offset, slot.len) {
            return Err(PeerError::Violation(
                "digests for another range than the one asked for",
            ));
        }
        slot.digests.clear();
        slot.digests.extend_from_slice(&digests.digests);
        slot.state = SlotState::Answered;
        Ok(())
    }
}

impl<S: Storage> Primary<S> {
    /// Starts comparing `set` (extents that may differ) for a secondary that re-based
    /// onto this history. `held_credit_end`: the secondary holds its image until the end
    /// point, and stages the stream up to there (its applied point plus its window).
    pub(super) fn start_resync(&mut self, now_ms: u64, held_credit_end: Option<u64>) {
        let extents = self.extent_counts();
        let mut resync = Resync::new(&extents, self.config.resync_rate_bytes);
        for (volume, extent) in self.intent.set_extents() {
            resync.to_scan.insert(volume, extent);
            let size = self.volumes[usize::from(volume.0)].geometry().size_bytes;
            resync.bytes_left += (size - extent * EXTENT_BYTES).min(EXTENT_BYTES);
        }
        resync.stats.phase = ResyncPhase::Scanning;
        resync.stats.bytes_total = resync.bytes_left;
        resync.stats.started_ms = now_ms;
        resync.budget_ms = now_ms;
        // The smallest unit makes the most records of a byte: the worst case.
        resync.unit = self
            .volumes
            .iter()
            .map(|v| u64::from(unit_bytes(v.geometry().block_size)))
            .min()
            .unwrap_or(1); // No volume: nothing to compare.
        if let Some(credit_end) = held_credit_end {
            let needed = resync.reserve_bytes();
            let free = credit_end.saturating_sub(self.retention.stream_next());
            if needed <= free {
                resync.credit_end = Some(credit_end);
                resync.stats.room = ResyncRoom::Kept;
            } else {
                resync.stats.room = ResyncRoom::MayNotFit { needed, free };
                tracing::warn!(
                    needed,
                    free,
                    "resync: what may differ could need more of the secondary's journal window than is left; the secondary holds its image until the end point, and reports the resync stuck if what differs does not fit"
                );
            }
        }
        tracing::info!(
            extents = resync.to_scan.len(),
            room = ?resync.stats.room,
            "resync: comparing what may differ"
        );
        self.resync = resync;
    }

    /// Whether a write of the application costing `cost` stream bytes (and its sync) leaves
    /// a held resync that keeps its room enough of the secondary's window; when it does
    /// not, the write waits and the comparison goes at full speed meanwhile.
    pub(super) fn leaves_resync_room(&mut self, cost: u64) -> bool {
        if self.resync.phase() != ResyncPhase::Scanning {
            return true;
        }
        let Some(kept) = self.resync.credit_end else {
            return true;
        };
        if self.config.bug == Some(InjectedBug::ResyncWithoutRoom) {
            return true;
        }
        // The secondary's own word, once it has spoken since (the operator may have let
        // it apply as data sets complete); the one the resync began with otherwise.
        let credit_end = self.link.credit_end().unwrap_or(kept).max(kept);
        let need = self.retention.stream_next() + cost + RECORD_OVERHEAD_BYTES;
        if need.saturating_add(self.resync.reserve_bytes()) <= credit_end {
            self.resync.writes_waiting = false;
            return true;
        }
        if !self.resync.writes_waiting {
            self.resync.writes_waiting = true;
            self.resync.stats.room_waits += 1;
        }
        false
    }

    /// One round of resync work: asks for digests, compares one answered extent (the
    /// oldest request first), sends what differs, and closes the data set that ends it
    /// once every extent is compared. One extent a round (a read of up to 1 MiB) keeps the
    /// round short for the application's requests, and the request that replaces it goes
    /// out this round, so the secondary reads the next extents while the primary compares
    /// (comparing every answered slot at once made the two sides take turns).
    pub(super) fn poll_resync(&mut self, now_ms: u64) {
        if self.resync.phase() != ResyncPhase::Scanning {
            return;
        }
        self.refill_budget(now_ms);
        self.ask_for_digests(now_ms);
        let oldest = (0..SLOTS)
            .filter(|&i| self.resync.slots[i].state == SlotState::Answered)
            .min_by_key(|&i| self.resync.slots[i].id);
        if let Some(index) = oldest {
            self.compare_slot(index);
            self.ask_for_digests(now_ms);
        }
        let idle = self.resync.slots.iter().all(|s| s.state == SlotState::Free);
        if idle && self.resync.to_scan.len() == 0 {
            self.end_resync(now_ms);
        }
    }

    fn refill_budget(&mut self, now_ms: u64) {
        let resync = &mut self.resync;
        if resync.rate_bytes == 0 || resync.writes_waiting {
            resync.budget_bytes = i64::MAX;
            return;
        }
        let elapsed = now_ms.saturating_sub(resync.budget_ms);
        // At most a second's worth saved up, so a pause does not become a burst.
        let cap = i64::try_from(resync.rate_bytes).unwrap_or(i64::MAX);
        let refill =
            i64::try_from(resync.rate_bytes.saturating_mul(elapsed) / 1000).unwrap_or(i64::MAX);
        resync.budget_bytes = resync.budget_bytes.saturating_add(refill).min(cap);
        resync.budget_ms = now_ms;
    }

    /// Fills free slots with the next extents to compare, as the rate allows; asks again
    /// for digests not answered in time.
    fn ask_for_digests(&mut self, now_ms: u64) {
        let timeout = self.config.retransmit_ms * REQUEST_TIMEOUT_INTERVALS;
        let volumes = &self.volumes;
        let resync = &mut self.resync;
        for slot in &mut resync.slots {
            if let SlotState::Requested { sent_ms: Some(at) } = slot.state {
                if now_ms >= at + timeout {
                    slot.id = resync.next_id;
                    resync.next_id += 1;
                    slot.state = SlotState::Requested { sent_ms: None };
                    resync.stats.requests_resent += 1;
                }
            }
            if slot.state != SlotState::Free || resync.budget_bytes <= 0 {
                continue;
            }
            let (volume_index, extent) = resync.cursor;
            let Some((volume, extent)) = resync.to_scan.next_from(volume_index, extent) else {
                continue;
            };
            resync.cursor = (usize::from(volume.0), extent + 1);
            let geometry = volumes[usize::from(volume.0)].geometry();
            let offset = extent * EXTENT_BYTES;
            let len = (geometry.size_bytes - offset).min(EXTENT_BYTES) as u32;
            assert!(
                span_units(geometry.size_bytes, geometry.block_size, offset, len).is_some(),
                "an extent is a request a secondary takes"
            );
            *slot = Slot {
                state: SlotState::Requested { sent_ms: None },
                id: resync.next_id,
                volume,
                offset,
                len,
                digests: std::mem::take(&mut slot.digests),
                done: 0,
            };
            resync.next_id += 1;
            resync.budget_bytes = resync.budget_bytes.saturating_sub(i64::from(len));
        }
    }

    /// Reads what is left of the answered range of `index`, if no local write to it is in
    /// flight or waiting, compares, and sends the units that differ, as far as retention
    /// has room now (the read's contents are the image at this seq only: what did not fit
    /// is read again next time).
    fn compare_slot(&mut self, index: usize) {
        let slot = &self.resync.slots[index];
        let (volume, done) = (slot.volume, slot.done);
        let (offset, len) = (slot.offset + u64::from(done), slot.len - done);
        let storage = &self.volumes[usize::from(volume.0)];
        let full = storage.in_flight() >= storage.geometry().max_in_flight;
        if full || self.local_write_pending(volume, offset, u64::from(len)) {
            self.resync.stats.deferred += 1;
            return;
        }
        let mut others = std::mem::take(&mut self.completions);
        others.clear();
        let mut buf = std::mem::take(&mut self.resync.buf);
        let storage = &mut self.volumes[usize::from(volume.0)];
        let block_size = storage.geometry().block_size;
        let read = read_blocking(storage, offset, &mut buf[..len as usize], &mut others);
        let handled = !others.is_empty();
        others.drain(..).for_each(|c| self.handle_completion(c));
        // Back with its capacity: `poll_storage` polls as many as it holds.
        self.completions = others;
        if handled {
            self.after_completions();
        }
        match read {
            Ok(()) => {}
            Err(StorageError::QueueFull(_)) => {
                self.resync.buf = buf;
                self.resync.stats.deferred += 1;
                return;
            }
            Err(error) => {
                self.resync.buf = buf;
                self.failed.get_or_insert(error);
                return;
            }
        }
        let (handled, sent) = self.send_differing(index, &buf[..len as usize], block_size);
        self.resync.buf = buf;
        let resync = &mut self.resync;
        resync.stats.bytes_compared += u64::from(handled);
        resync.stats.bytes_sent += sent;
        let slot = &mut resync.slots[index];
        slot.done += handled;
        if slot.done == slot.len {
            let extent = slot.offset / EXTENT_BYTES;
            slot.state = SlotState::Free;
            resync.to_scan.remove(volume, extent);
            resync.bytes_left -= u64::from(slot.len);
        } else {
            resync.stats.deferred += 1;
        }
    }

    /// Whether a local write overlapping the range is in flight or waits to be started.
    fn local_write_pending(&self, volume: VolumeId, offset: u64, len: u64) -> bool {
        if self.local_in_flight.overlaps(volume, offset, len) {
            return true;
        }
        self.local_deferred.iter().any(|&seq| {
            self.retention
                .get(seq)
                .is_some_and(|record| match record.kind {
                    RecordKind::Write {
                        volume: v,
                        offset: o,
                        len: l,
                    }
                    | RecordKind::Zero {
                        volume: v,
                        offset: o,
                        len: l,
                        ..
                    } => v == volume && o < offset + len && offset < o + u64::from(l),
                    RecordKind::Sync { .. } => false,
                })
        })
    }

    /// Sends, in order, every run of units of `data` (what is left of slot `index`'s
    /// range) whose digest differs from the secondary's, as resync records, until a run
    /// does not fit its share of the retention window. Returns the bytes of `data` handled
    /// (compared, and sent where they differ) and the bytes sent.
    fn send_differing(&mut self, index: usize, data: &[u8], block_size: u32) -> (u32, u64) {
        let unit = unit_bytes(block_size) as usize;
        let slot = &mut self.resync.slots[index];
        let (volume, offset) = (slot.volume, slot.offset + u64::from(slot.done));
        let first_unit = slot.done as usize / unit;
        let digests = std::mem::take(&mut slot.digests);
        let mut ours = std::mem::take(&mut self.resync.ours);
        ours.clear();
        digests_of(data, block_size, &mut ours);
        let theirs = &digests[first_unit.min(digests.len())..];
        // Another count: a secondary answering for another unit size, a lying peer.
        // Everything differs then.
        let same_count = ours.len() == theirs.len();
        let differs = |i: usize| !same_count || ours[i] != theirs[i];
        let max_units = (self.config.max_write_bytes as usize / unit).max(1);
        let share = self.retention.window_bytes() / RESYNC_WINDOW_SHARE;
        let (mut i, mut sent) = (0, 0);
        while i < ours.len() {
            if !differs(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < ours.len() && differs(i) && i - start < max_units {
                i += 1;
            }
            let (a, b) = (start * unit, (i * unit).min(data.len()));
            let cost = stream_cost((b - a) as u32) + RECORD_OVERHEAD_BYTES;
            if self.retention.used_bytes() + cost > share || !self.retention.fits(cost, 0) {
                i = start;
                break;
            }
            let kind = RecordKind::Write {
                volume,
                offset: offset + a as u64,
                len: (b - a) as u32,
            };
            let seq = self.accept_resync(kind, &data[a..b]);
            self.note_write(volume, offset + a as u64, (b - a) as u64, seq, false);
            sent += (b - a) as u64;
        }
        let handled = (i * unit).min(data.len()) as u32;
        self.resync.ours = ours;
        self.resync.slots[index].digests = digests;
        (handled, sent)
    }

    /// Every extent is compared: the open data set (with the last resync records) is
    /// closed as the end point.
    fn end_resync(&mut self, now_ms: u64) {
        if !self.retention.fits(RECORD_OVERHEAD_BYTES, 0) {
            return;
        }
        let end = self.close_data_set_ending_resync();
        self.resync.stats.phase = ResyncPhase::Ending { end };
        self.resync.stats.ended_ms = now_ms;
        tracing::info!(%end, sent = self.resync.stats.bytes_sent, "resync: every extent compared; the end point is closed");
    }

    /// The secondary applied `applied`: the resync is done once that covers its end point.
    pub(super) fn resync_applied(&mut self, applied: DataSetId) {
        if let ResyncPhase::Ending { end } = self.resync.phase() {
            if applied >= end {
                self.resync.stats.phase = ResyncPhase::Done { end };
                tracing::info!(%end, "resync: done; the secondary is the primary's image again");
            }
        }
    }

    /// Whether the application's writes wait now for the room a held resync keeps (rather
    /// than for the retention window).
    pub fn waits_for_resync_room(&self) -> bool {
        self.resync.phase() == ResyncPhase::Scanning && self.resync.writes_waiting
    }

    pub fn resync_stats(&self) -> ResyncStats {
        self.resync.stats()
    }
}
