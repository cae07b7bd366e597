//! The load `ordo bench` generates, fio's way: each job walks its own slice of the volume
//! (sequentially or at random offsets), keeps up to `iodepth` operations in flight, and
//! in open loop (`--rate`) starts each operation at an intended time, whether or not the
//! system kept up, so latency counts from when the operation should have started
//! (coordinated omission corrected, as wrk2 does).

use clap::ValueEnum;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// fio's `--rw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Write,
    Randwrite,
    Read,
    Randread,
    /// Random reads and writes, `--rwmixwrite` percent of them writes.
    Randrw,
}

impl Pattern {
    pub fn random(self) -> bool {
        matches!(
            self,
            Pattern::Randwrite | Pattern::Randread | Pattern::Randrw
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write,
    Read,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    pub offset: u64,
    /// When it should start, ns since the run began (open loop); 0 in closed loop.
    pub intended_ns: u64,
}

/// One job: its slice of the volume, its random stream and its schedule.
#[derive(Debug)]
pub struct Job {
    pattern: Pattern,
    write_percent: u8,
    block: u64,
    /// The job's slice: `first..first + blocks * block`.
    first: u64,
    blocks: u64,
    next_block: u64,
    rng: ChaCha8Rng,
    /// Nanoseconds between intended starts (open loop), or 0.
    period_ns: u64,
    issued: u64,
    pub in_flight: usize,
}

impl Job {
    /// Job `index` of `jobs` over a volume of `volume_bytes`; `block` divides it, and
    /// every job's slice holds at least one block (checked by the caller).
    pub fn new(
        pattern: Pattern,
        write_percent: u8,
        block: u64,
        volume_bytes: u64,
        (index, jobs): (usize, usize),
        seed: u64,
        ops_per_s: Option<f64>,
    ) -> Job {
        let blocks = volume_bytes / block / jobs as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        Job {
            pattern,
            write_percent,
            block,
            first: index as u64 * blocks * block,
            blocks,
            next_block: 0,
            rng,
            period_ns: ops_per_s.map_or(0, |rate| (1e9 / rate).max(1.0) as u64),
            issued: 0,
            in_flight: 0,
        }
    }

    /// When the next operation is due (ns since the run began), in open loop.
    pub fn next_due_ns(&self) -> Option<u64> {
        (self.period_ns > 0).then(|| self.issued * self.period_ns)
    }

    /// The next operation if one is due at `now_ns` (always in closed loop), with the time
    /// its latency counts from: its intended start in open loop, `now_ns` otherwise.
    pub fn next_due(&mut self, now_ns: u64) -> Option<(Op, u64)> {
        if self.next_due_ns().is_some_and(|due| due > now_ns) {
            return None;
        }
        let op = self.next();
        let start_ns = if self.period_ns > 0 {
            op.intended_ns
        } else {
            now_ns
        };
        Some((op, start_ns))
    }

    /// The next operation; its start is the intended one in open loop.
    pub fn next(&mut self) -> Op {
        let block = if self.pattern.random() {
            self.rng.random_range(0..self.blocks)
        } else {
            let block = self.next_block;
            self.next_block = (block + 1) % self.blocks;
            block
        };
        let kind = match self.pattern {
            Pattern::Write | Pattern::Randwrite => OpKind::Write,
            Pattern::Read | Pattern::Randread => OpKind::Read,
            Pattern::Randrw if self.rng.random_range(0..100) < self.write_percent => OpKind::Write,
            Pattern::Randrw => OpKind::Read,
        };
        let op = Op {
            kind,
            offset: self.first + block * self.block,
            intended_ns: self.issued * self.period_ns,
        };
        self.issued += 1;
        op
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(pattern: Pattern, index: usize, rate: Option<f64>) -> Job {
        Job::new(pattern, 30, 4096, 1 << 20, (index, 4), 7, rate)
    }

    #[test]
    fn sequential_jobs_walk_their_own_slices_and_wrap() {
        for index in 0..4 {
            let mut job = job(Pattern::Write, index, None);
            let slice = (1 << 20) / 4;
            let first = index as u64 * slice;
            let offsets: Vec<u64> = (0..65).map(|_| job.next().offset).collect();
            let expected: Vec<u64> = (0..64).chain(0..1).map(|b| first + b * 4096).collect();
            assert_eq!(offsets, expected);
        }
    }

    #[test]
    fn random_offsets_stay_in_the_slice_on_block_boundaries_and_follow_the_seed() {
        let mut a = job(Pattern::Randwrite, 2, None);
        let mut b = job(Pattern::Randwrite, 2, None);
        let mut other = job(Pattern::Randwrite, 1, None);
        let ops: Vec<Op> = (0..1000).map(|_| a.next()).collect();
        assert_eq!(ops, (0..1000).map(|_| b.next()).collect::<Vec<_>>());
        assert_ne!(
            ops.iter().map(|o| o.offset).collect::<Vec<_>>(),
            (0..1000).map(|_| other.next().offset).collect::<Vec<_>>()
        );
        for op in &ops {
            assert!((2 << 18..3 << 18).contains(&op.offset), "{op:?}");
            assert_eq!(op.offset % 4096, 0);
        }
    }

    #[test]
    fn a_read_write_mix_writes_about_its_share_and_pure_patterns_do_one_kind() {
        let mut mixed = job(Pattern::Randrw, 0, None);
        let writes = (0..10_000)
            .filter(|_| mixed.next().kind == OpKind::Write)
            .count();
        assert!((2_700..3_300).contains(&writes), "{writes} writes of 10000");
        let mut reads = job(Pattern::Randread, 0, None);
        assert!((0..100).all(|_| reads.next().kind == OpKind::Read));
    }

    #[test]
    fn open_loop_operations_are_due_on_a_fixed_schedule() {
        let mut job = job(Pattern::Write, 0, Some(1000.0));
        let due: Vec<u64> = (0..4)
            .map(|_| {
                let due = job.next_due_ns().unwrap();
                assert_eq!(job.next().intended_ns, due);
                due
            })
            .collect();
        assert_eq!(due, [0, 1_000_000, 2_000_000, 3_000_000]);
        assert_eq!(self::job(Pattern::Write, 0, None).next_due_ns(), None);
    }
}
