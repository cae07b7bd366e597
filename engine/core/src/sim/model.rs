//! The checker's independent model of the primary: a plain image per volume, updated in
//! seq order as writes are accepted, and a digest of the whole group's image at the end of
//! every closed data set. It shares no code with the engine.

use std::hash::{DefaultHasher, Hasher};

use crate::protocol::{DataSetId, Seq};

#[derive(Debug)]
pub struct Model {
    volumes: Vec<Vec<u8>>,
    last_write: Seq,
    /// Digest of the image at the end of data set `i + 1`.
    closed: Vec<u64>,
    empty_digest: u64,
}

/// Digest of a group image (all volumes in order).
pub fn digest<'a>(volumes: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for volume in volumes {
        hasher.write(volume);
        hasher.write_usize(volume.len());
    }
    hasher.finish()
}

impl Model {
    pub fn new(volume_sizes: &[usize]) -> Model {
        let volumes: Vec<Vec<u8>> = volume_sizes.iter().map(|&n| vec![0; n]).collect();
        let empty_digest = digest(volumes.iter().map(Vec::as_slice));
        Model {
            volumes,
            last_write: Seq::NONE,
            closed: Vec::new(),
            empty_digest,
        }
    }

    pub fn write(
        &mut self,
        seq: Seq,
        volume: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        if seq <= self.last_write {
            return Err(format!("write got {seq} after {}", self.last_write));
        }
        self.last_write = seq;
        let at = offset as usize;
        self.volumes[volume][at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// A range zeroed (NBD's WRITE_ZEROES or TRIM), in seq order with the writes.
    pub fn zero(&mut self, seq: Seq, volume: usize, offset: u64, len: u64) -> Result<(), String> {
        if seq <= self.last_write {
            return Err(format!("zeroing got {seq} after {}", self.last_write));
        }
        self.last_write = seq;
        let at = offset as usize;
        self.volumes[volume][at..at + len as usize].fill(0);
        Ok(())
    }

    /// The primary closed `data_set` with its sync at `sync_seq`: every write accepted so
    /// far must belong to it or an earlier one, and none may be missing.
    pub fn close(&mut self, data_set: DataSetId, sync_seq: Seq) -> Result<(), String> {
        if data_set.0 != self.closed.len() as u64 + 1 {
            return Err(format!(
                "closed {data_set} after {} data sets",
                self.closed.len()
            ));
        }
        if sync_seq.0 != self.last_write.0 + 1 {
            return Err(format!(
                "{data_set} closed at {sync_seq} but the last write is {}",
                self.last_write
            ));
        }
        self.closed
            .push(digest(self.volumes.iter().map(Vec::as_slice)));
        Ok(())
    }

    pub fn last_closed(&self) -> DataSetId {
        DataSetId(self.closed.len() as u64)
    }

    /// Digest of the image at the end of `data_set` (0: the empty image).
    pub fn digest_at(&self, data_set: DataSetId) -> Option<u64> {
        match data_set.0 {
            0 => Some(self.empty_digest),
            n => self.closed.get(n as usize - 1).copied(),
        }
    }

    pub fn image(&self) -> &[Vec<u8>] {
        &self.volumes
    }
}
