//! Replication lag per write: from the write's acknowledgement on the primary to the moment
//! the primary learns that the secondary applied the write's data set. Writes are kept in
//! seq order from submission until their data set is reported applied; the secondary's
//! journal and the primary's retention window bound how many that can be.

use std::collections::VecDeque;

use hdrhistogram::Histogram;
use ordo_core::protocol::{DataSetId, Seq};

use super::results::Counts;

#[derive(Clone, Copy, Debug)]
struct Pending {
    seq: Seq,
    /// When it was acknowledged (ns since the run began), or `None`.
    acked_ns: Option<u64>,
    bytes: u32,
}

#[derive(Debug)]
pub struct LagTracker {
    writes: VecDeque<Pending>,
    /// Closed data sets not yet applied: their id and sync seq, in order.
    closed: VecDeque<(DataSetId, Seq)>,
    applied: DataSetId,
}

impl LagTracker {
    /// Room for `writes` unapplied writes before the queues grow.
    pub fn with_capacity(writes: usize) -> LagTracker {
        LagTracker {
            writes: VecDeque::with_capacity(writes),
            closed: VecDeque::with_capacity(writes.min(1 << 16)),
            applied: DataSetId::NONE,
        }
    }

    /// A write was accepted with `seq` (seqs are accepted in increasing order).
    pub fn submitted(&mut self, seq: Seq, bytes: u32) {
        debug_assert!(self.writes.back().is_none_or(|w| w.seq < seq));
        self.writes.push_back(Pending {
            seq,
            acked_ns: None,
            bytes,
        });
    }

    /// The write `seq` was acknowledged at `now_ns`.
    pub fn acked(&mut self, seq: Seq, now_ns: u64) {
        // Not found: its data set was already reported applied (the secondary can apply a
        // write before the primary's own volume acknowledges it); its lag was taken as 0.
        if let Ok(index) = self.writes.binary_search_by_key(&seq, |w| w.seq) {
            self.writes[index].acked_ns = Some(now_ns);
        }
    }

    pub fn closed(&mut self, data_set: DataSetId, sync_seq: Seq) {
        self.closed.push_back((data_set, sync_seq));
    }

    /// The primary learned at `now_ns` that the secondary applied through `applied`:
    /// records the lag of every write of those data sets in `lag` (when given) and counts
    /// them in `counts`.
    pub fn applied(
        &mut self,
        applied: DataSetId,
        now_ns: u64,
        mut lag: Option<&mut [&mut Histogram<u64>]>,
        counts: &mut Counts,
    ) {
        if applied <= self.applied {
            return;
        }
        self.applied = applied;
        let mut through = None;
        while let Some(&(data_set, sync_seq)) = self.closed.front() {
            if data_set > applied {
                break;
            }
            through = Some(sync_seq);
            self.closed.pop_front();
        }
        let Some(through) = through else {
            return;
        };
        while let Some(write) = self.writes.front() {
            if write.seq >= through {
                break;
            }
            let lag_ns = write.acked_ns.map_or(0, |at| now_ns.saturating_sub(at));
            if let Some(histograms) = lag.as_deref_mut() {
                for histogram in histograms.iter_mut() {
                    histogram.saturating_record(lag_ns.max(1));
                }
            }
            counts.applied_writes += 1;
            counts.applied_bytes += u64::from(write.bytes);
            self.writes.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::new_histogram;

    #[test]
    fn a_write_lags_from_its_ack_until_its_data_set_is_reported_applied() {
        let mut tracker = LagTracker::with_capacity(8);
        let mut lag = new_histogram();
        let mut counts = Counts::default();
        // Data set 1: seqs 1, 2 (sync 3); data set 2: seq 4 (sync 5); seq 6 open.
        for seq in [1, 2, 4, 6] {
            tracker.submitted(Seq(seq), 4096);
        }
        tracker.closed(DataSetId(1), Seq(3));
        tracker.closed(DataSetId(2), Seq(5));
        tracker.acked(Seq(2), 1_000);
        tracker.acked(Seq(1), 2_000);
        tracker.acked(Seq(4), 3_000);
        tracker.applied(DataSetId(1), 10_000, Some(&mut [&mut lag]), &mut counts);
        // Recorded to 3 significant digits.
        assert_eq!(lag.len(), 2);
        assert!(lag.equivalent(lag.min(), 8_000) && lag.equivalent(lag.max(), 9_000));
        assert_eq!((counts.applied_writes, counts.applied_bytes), (2, 8192));
        // An old or repeated watermark changes nothing.
        tracker.applied(DataSetId(1), 20_000, Some(&mut [&mut lag]), &mut counts);
        assert_eq!(lag.len(), 2);
        tracker.applied(DataSetId(2), 20_000, None, &mut counts);
        assert_eq!(lag.len(), 2, "not recorded while not measuring");
        assert_eq!(counts.applied_writes, 3);
        assert_eq!(tracker.writes.len(), 1, "seq 6 is in no closed data set");
    }

    #[test]
    fn a_write_applied_before_its_local_ack_lags_zero() {
        let mut tracker = LagTracker::with_capacity(1);
        let (mut lag, mut counts) = (new_histogram(), Counts::default());
        tracker.submitted(Seq(1), 512);
        tracker.closed(DataSetId(1), Seq(2));
        tracker.applied(DataSetId(1), 5_000, Some(&mut [&mut lag]), &mut counts);
        tracker.acked(Seq(1), 6_000);
        assert_eq!((lag.len(), lag.max()), (1, 1), "recorded as the 1 ns floor");
    }
}
