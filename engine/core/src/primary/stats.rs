//! What the primary counts, for status and the benchmark.

use crate::protocol::DataSetId;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrimaryStats {
    pub writes_accepted: u64,
    /// Writes that started or ended inside a block, merged with the rest of it.
    pub sub_block_writes: u64,
    /// Ranges zeroed (NBD's WRITE_ZEROES and TRIM).
    pub zeroes_accepted: u64,
    /// Writes refused because the retention window was full (each was retried).
    pub window_full: u64,
    pub data_sets_closed: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub retransmits: u64,
    /// Times sending stopped because the secondary's journal window was used up.
    pub credit_stalls: u64,
    /// The newest data set whose closing sync was sent (every record of it was sent once).
    pub last_sent: DataSetId,
    /// Times the retention window was dropped: it stayed full (`WindowFull::Track`), or a
    /// secondary could not be served from what it held.
    pub window_drops: u64,
}
