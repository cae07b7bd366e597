//! Identifiers of the replication protocol. Newtypes so a sequence number can never be
//! passed where a data-set id or a volume index is expected.

use std::fmt;

/// Sequence number of a write or sync record: strictly increasing per replication group,
/// starting at 1 (0 means "none yet").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

/// Id of a data set: increasing per replication group, starting at 1 (0 means "none").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataSetId(pub u64);

/// Index of a volume inside its replication group (the order of `--volume` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeId(pub u16);

/// Id of a replication history ("generation"): random, chosen when a primary starts a
/// history (its first start, or a restart that could not resume the stream it had). Seqs,
/// data-set ids and stream offsets count within one generation. 0 means "none" (a fresh
/// secondary that holds no history yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GenerationId(pub u64);

/// Id of a replication group; primary and secondary must agree on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl Seq {
    pub const NONE: Seq = Seq(0);
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl DataSetId {
    pub const NONE: DataSetId = DataSetId(0);
    pub fn next(self) -> DataSetId {
        DataSetId(self.0 + 1)
    }
}

impl GenerationId {
    pub const NONE: GenerationId = GenerationId(0);
}

impl fmt::Display for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}", self.0)
    }
}

impl fmt::Display for DataSetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data set {}", self.0)
    }
}

/// Journal cost of one record in the replication stream, in bytes: the payload plus a
/// fixed overhead that covers the record header and padding to a journal block of at most
/// 4096 bytes. Primary and secondary compute stream offsets with this same function, which
/// is what lets the secondary bound its journal use (see `secondary::journal`).
pub const RECORD_OVERHEAD_BYTES: u64 = 4096;

pub fn stream_cost(payload_len: u32) -> u64 {
    u64::from(payload_len) + RECORD_OVERHEAD_BYTES
}
