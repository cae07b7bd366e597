//! Replication lag of a running primary, seen from outside: a helper thread polls the
//! primary's control socket (`status`) and passes each sample to the bench's loop, which
//! never waits for it. Over NBD a write's data set is not visible, so it is bounded:
//!
//! - every status computed after the write was sequenced has `last_closed + 1 >= D` (the
//!   data set open then is D or a later one); the first poll *sent* after the write's
//!   acknowledgement is such a status, so `D <= last_closed + 1` of that poll;
//! - every status received before the write was sent has `last_closed + 1 <= D`.
//!
//! The write's data set is taken as the upper bound, and its lag as the time the first
//! status showing `applied >= that data set` was received, minus the ack time: an upper
//! bound of the true lag, by at most one poll (plus its round trip) when both bounds
//! agree (counted as exact) and by the gap to the next applied data set when they do not.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use crossbeam_channel::Receiver;
use hdrhistogram::Histogram;

use super::results::Counts;
use ordo_daemon::control;
use ordo_daemon::report::{RoleStatus, Status};

/// How long one status request may take before the poll counts as failed.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Samples the loop has not taken yet: the poller waits when it is this far ahead.
const SAMPLES_QUEUED: usize = 256;

/// One status poll: when it was sent and received (ns on the run's clock) and what it said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub sent_ns: u64,
    pub received_ns: u64,
    pub last_closed: u64,
    pub applied: u64,
    /// Bytes held in the primary's retention window.
    pub retention_bytes: u64,
    /// Writes that ever waited for room in the retention window.
    pub writes_waited: u64,
    /// Why replication stopped, if it did.
    pub stalled: Option<String>,
}

/// A status request, answered.
pub fn status(path: &std::path::Path) -> Result<Status> {
    Ok(control::status(path, CONTROL_TIMEOUT)?)
}

fn sample(path: &std::path::Path, clock: Instant) -> Result<Sample> {
    let sent_ns = clock.elapsed().as_nanos() as u64;
    let status = status(path)?;
    let received_ns = clock.elapsed().as_nanos() as u64;
    let RoleStatus::Primary(primary) = status.role else {
        bail!("{} is a secondary's control socket", path.display());
    };
    Ok(Sample {
        sent_ns,
        received_ns,
        last_closed: primary.data_sets.last_closed,
        applied: primary.data_sets.applied,
        retention_bytes: primary.retention.used_bytes,
        writes_waited: primary.writes.waited,
        stalled: primary.link.stalled,
    })
}

/// The helper thread: one status request every `every`, each sample sent to the loop.
pub struct StatusPoller {
    samples: Receiver<Result<Sample, String>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl StatusPoller {
    pub fn start(path: PathBuf, clock: Instant, every: Duration) -> Result<StatusPoller> {
        let (tx, samples) = crossbeam_channel::bounded(SAMPLES_QUEUED);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("bench-status".into())
            .spawn(move || {
                // Relaxed: a flag that orders nothing else; a late look costs one poll.
                while !stopping.load(Ordering::Relaxed) {
                    let started = clock.elapsed();
                    let sample = sample(&path, clock).map_err(|e| format!("{e:#}"));
                    let failed = sample.is_err();
                    if tx.send(sample).is_err() || failed {
                        return;
                    }
                    let next = started + every;
                    if let Some(wait) = next.checked_sub(clock.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            })
            .context("starting the status poller")?;
        Ok(StatusPoller {
            samples,
            stop,
            thread,
        })
    }

    /// The next sample, if one came; an error if the control socket stopped answering.
    pub fn try_next(&self) -> Result<Option<Sample>> {
        match self.samples.try_recv() {
            Ok(Ok(sample)) => Ok(Some(sample)),
            Ok(Err(error)) => anyhow::bail!("polling the primary's status: {error}"),
            Err(crossbeam_channel::TryRecvError::Empty) => Ok(None),
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                anyhow::bail!("the status poller stopped")
            }
        }
    }

    /// Stops the thread (after its request in progress, if any).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.samples);
        let _ = self.thread.join();
    }
}

/// A write acknowledged and not yet seen applied.
#[derive(Clone, Copy, Debug)]
struct Acked {
    ack_ns: u64,
    /// Lowest data set it can be in (known when it was sent).
    lowest: u64,
    /// The data set it is counted in (the upper bound), or 0 until a poll gave it.
    data_set: u64,
    bytes: u32,
}

/// Acknowledged writes in ack order, each waiting first for a poll that bounds its data
/// set, then for one that shows that data set applied. Bounded: the caller keeps room
/// before it sends a write.
#[derive(Debug)]
pub struct StatusLag {
    acked: VecDeque<Acked>,
    capacity: usize,
    /// Writes from this index on have no data set yet (bounds are given in ack order).
    unbounded_from: usize,
    last_closed: u64,
    applied: u64,
    /// When a flush sent after every write here was acknowledged got its reply.
    flushed_ns: Option<u64>,
    /// Writes whose two bounds agreed (their data set is exact), and the others.
    pub exact: u64,
    pub bounded: u64,
}

impl StatusLag {
    /// Room for `capacity` writes, starting from the primary's state before the run.
    pub fn new(capacity: usize, last_closed: u64, applied: u64) -> StatusLag {
        assert!(capacity > 0);
        StatusLag {
            acked: VecDeque::with_capacity(capacity),
            capacity,
            unbounded_from: 0,
            last_closed,
            applied,
            flushed_ns: None,
            exact: 0,
            bounded: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.acked.len()
    }

    /// Writes that may still be acknowledged without overflowing.
    pub fn room(&self) -> usize {
        self.capacity - self.acked.len()
    }

    /// The lowest data set a write sent now can belong to.
    pub fn lowest_now(&self) -> u64 {
        self.last_closed + 1
    }

    /// A write sent when `lowest_now()` was `lowest` was acknowledged at `ack_ns`.
    pub fn acked(&mut self, ack_ns: u64, lowest: u64, bytes: u32) {
        assert!(self.acked.len() < self.capacity, "the sender keeps room");
        debug_assert!(self.acked.back().is_none_or(|w| w.ack_ns <= ack_ns));
        self.acked.push_back(Acked {
            ack_ns,
            lowest,
            data_set: 0,
            bytes,
        });
    }

    /// A flush sent once every write here was acknowledged got its reply at `replied_ns`:
    /// it closed their data sets, so a poll sent after it bounds them by `last_closed`
    /// (not + 1, which could name a data set that no write will ever close).
    pub fn flushed(&mut self, replied_ns: u64) {
        debug_assert!(self.acked.back().is_none_or(|w| w.ack_ns <= replied_ns));
        self.flushed_ns = Some(replied_ns);
    }

    fn bound(&mut self, write_index: usize, data_set: u64) {
        let write = &mut self.acked[write_index];
        debug_assert!(write.data_set == 0 && write.lowest <= data_set);
        write.data_set = data_set;
        if write.lowest == data_set {
            self.exact += 1;
        } else {
            self.bounded += 1;
        }
    }

    /// A status sample: bounds the data sets of writes acknowledged before it was sent,
    /// then records the lag (into `lag`, when given) of every write whose data set it
    /// shows applied, and counts them in `counts`.
    pub fn sample(
        &mut self,
        sample: &Sample,
        mut lag: Option<&mut [&mut Histogram<u64>]>,
        counts: &mut Counts,
    ) -> Result<()> {
        ensure!(
            sample.last_closed >= self.last_closed && sample.applied >= self.applied,
            "the primary's data sets went back (closed {} then {}, applied {} then {}): did it restart?",
            self.last_closed,
            sample.last_closed,
            self.applied,
            sample.applied
        );
        (self.last_closed, self.applied) = (sample.last_closed, sample.applied);
        if self.flushed_ns.is_some_and(|at| sample.sent_ns >= at) {
            for index in 0..self.acked.len() {
                match self.acked[index].data_set {
                    0 => self.bound(index, sample.last_closed),
                    upper => self.acked[index].data_set = upper.min(sample.last_closed),
                }
            }
            self.unbounded_from = self.acked.len();
        }
        let upper = sample.last_closed + 1;
        while self.unbounded_from < self.acked.len() {
            if self.acked[self.unbounded_from].ack_ns > sample.sent_ns {
                break;
            }
            self.bound(self.unbounded_from, upper);
            self.unbounded_from += 1;
        }
        while let Some(write) = self.acked.front() {
            if write.data_set == 0 || write.data_set > sample.applied {
                break;
            }
            let lag_ns = sample.received_ns.saturating_sub(write.ack_ns).max(1);
            if let Some(histograms) = lag.as_deref_mut() {
                for histogram in histograms.iter_mut() {
                    histogram.saturating_record(lag_ns);
                }
            }
            counts.applied_writes += 1;
            counts.applied_bytes += u64::from(write.bytes);
            self.acked.pop_front();
            self.unbounded_from -= 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::new_histogram;

    fn at(sent_ns: u64, last_closed: u64, applied: u64) -> Sample {
        Sample {
            sent_ns,
            received_ns: sent_ns + 100,
            last_closed,
            applied,
            ..Sample::default()
        }
    }

    #[test]
    fn a_write_lags_until_a_poll_shows_the_data_set_open_after_its_ack_applied() {
        let mut lag = StatusLag::new(4, 4, 4);
        let (mut histogram, mut counts) = (new_histogram(), Counts::default());
        // Sent while data set 5 was open, acknowledged at 1000.
        let lowest = lag.lowest_now();
        assert_eq!(lowest, 5);
        lag.acked(1_000, lowest, 4096);
        // A poll sent before the ack says nothing of it, even if it arrives later.
        lag.sample(&at(900, 4, 4), Some(&mut [&mut histogram]), &mut counts)
            .unwrap();
        // The first poll after the ack still sees 5 open: the write is in 5 (exact).
        lag.sample(&at(2_000, 4, 4), Some(&mut [&mut histogram]), &mut counts)
            .unwrap();
        assert_eq!((lag.exact, lag.bounded), (1, 0));
        lag.sample(&at(3_000, 5, 4), Some(&mut [&mut histogram]), &mut counts)
            .unwrap();
        assert_eq!(lag.len(), 1, "5 closed, not applied");
        lag.sample(&at(4_000, 6, 5), Some(&mut [&mut histogram]), &mut counts)
            .unwrap();
        assert_eq!(lag.len(), 0);
        // Received at 4100, acknowledged at 1000.
        assert_eq!(histogram.len(), 1);
        assert!(histogram.equivalent(histogram.max(), 3_100));
        assert_eq!((counts.applied_writes, counts.applied_bytes), (1, 4096));
    }

    #[test]
    fn a_data_set_closed_between_send_and_poll_counts_to_the_next_one_an_upper_bound() {
        let mut lag = StatusLag::new(4, 4, 4);
        let (mut histogram, mut counts) = (new_histogram(), Counts::default());
        lag.acked(1_000, lag.lowest_now(), 512);
        // Data set 5 closed before the poll: the write is in 5 or 6; 6 is taken.
        lag.sample(&at(2_000, 5, 4), None, &mut counts).unwrap();
        assert_eq!((lag.exact, lag.bounded), (0, 1));
        lag.sample(&at(3_000, 6, 5), Some(&mut [&mut histogram]), &mut counts)
            .unwrap();
        assert_eq!(histogram.len(), 0, "5 applied is not enough");
        lag.sample(&at(5_000, 6, 6), Some(&mut [&mut histogram]), &mut counts)
            .unwrap();
        assert!(histogram.equivalent(histogram.max(), 4_100));
        assert_eq!(counts.applied_writes, 1);
    }

    #[test]
    fn after_the_final_flush_the_last_closed_data_set_bounds_every_write() {
        let mut lag = StatusLag::new(4, 4, 4);
        let (mut histogram, mut counts) = (new_histogram(), Counts::default());
        lag.acked(1_000, lag.lowest_now(), 512);
        // 5 closed before the poll: the write is in 5 or 6, and 6 is taken; nothing else
        // is written, so 6 never closes.
        lag.sample(&at(2_000, 5, 4), None, &mut counts).unwrap();
        lag.acked(2_500, lag.lowest_now(), 512);
        // The last write is exactly in 6; a flush after it closes 6.
        lag.flushed(3_000);
        lag.sample(&at(2_900, 5, 5), None, &mut counts).unwrap();
        assert_eq!(counts.applied_writes, 0, "polled before the flush's reply");
        assert_eq!((lag.exact, lag.bounded), (1, 1));
        lag.sample(&at(3_100, 6, 6), Some(&mut [&mut histogram]), &mut counts)
            .unwrap();
        assert_eq!((lag.len(), counts.applied_writes), (0, 2));

        // A flush that closed nothing: the bound falls back to the last closed data set.
        lag.acked(4_000, lag.lowest_now(), 512);
        lag.sample(&at(5_000, 7, 6), None, &mut counts).unwrap();
        lag.flushed(6_000);
        lag.sample(&at(6_100, 7, 7), Some(&mut [&mut histogram]), &mut counts)
            .unwrap();
        assert_eq!((lag.len(), counts.applied_writes), (0, 3), "7, not 8");
        assert!(histogram.equivalent(histogram.max(), 2_200));
    }

    #[test]
    fn room_is_the_capacity_left_and_a_primary_going_back_is_an_error() {
        let mut lag = StatusLag::new(2, 0, 0);
        lag.acked(10, 1, 512);
        lag.acked(20, 1, 512);
        assert_eq!(lag.room(), 0);
        let mut counts = Counts::default();
        lag.sample(&at(30, 0, 0), None, &mut counts).unwrap();
        lag.sample(&at(40, 1, 1), None, &mut counts).unwrap();
        assert_eq!((lag.room(), counts.applied_writes), (2, 2));
        let error = lag.sample(&at(50, 0, 0), None, &mut counts).unwrap_err();
        assert!(error.to_string().contains("restart"), "{error}");
    }
}
