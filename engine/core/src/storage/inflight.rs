//! Writes in flight to a set of volumes, so a caller can keep overlapping writes in order:
//! the storage contract gives two overlapping writes in flight no defined order, and both
//! the primary (local writes in seq order) and the secondary's applier (higher seq wins
//! inside a data set) need one. Bounded at construction; never allocates afterwards.

use super::IoTag;
use crate::protocol::VolumeId;

#[derive(Clone, Copy, Debug)]
struct Extent {
    tag: IoTag,
    volume: VolumeId,
    start: u64,
    end: u64,
}

#[derive(Debug)]
pub struct InFlightWrites {
    extents: Vec<Extent>,
}

impl InFlightWrites {
    pub fn with_capacity(capacity: usize) -> InFlightWrites {
        InFlightWrites {
            extents: Vec::with_capacity(capacity),
        }
    }

    pub fn is_full(&self) -> bool {
        self.extents.len() == self.extents.capacity()
    }

    pub fn len(&self) -> usize {
        self.extents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    pub fn overlaps(&self, volume: VolumeId, offset: u64, len: u64) -> bool {
        let end = offset + len;
        self.extents
            .iter()
            .any(|e| e.volume == volume && e.start < end && offset < e.end)
    }

    pub fn insert(&mut self, tag: IoTag, volume: VolumeId, offset: u64, len: u64) {
        assert!(!self.is_full(), "caller checks is_full first");
        debug_assert!(!self.overlaps(volume, offset, len));
        debug_assert!(self.extents.iter().all(|e| e.tag != tag));
        self.extents.push(Extent {
            tag,
            volume,
            start: offset,
            end: offset + len,
        });
    }

    /// Removes the write with `tag`; false if there was none.
    pub fn remove(&mut self, tag: IoTag) -> bool {
        match self.extents.iter().position(|e| e.tag == tag) {
            Some(index) => {
                self.extents.swap_remove(index);
                true
            }
            None => false,
        }
    }

    /// Smallest tag in flight.
    pub fn min_tag(&self) -> Option<IoTag> {
        self.extents.iter().map(|e| e.tag).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_per_volume_and_half_open() {
        let mut writes = InFlightWrites::with_capacity(4);
        writes.insert(1, VolumeId(0), 4096, 8192);
        assert!(writes.overlaps(VolumeId(0), 8192, 4096));
        assert!(writes.overlaps(VolumeId(0), 0, 8192));
        assert!(
            !writes.overlaps(VolumeId(0), 0, 4096),
            "ends touch, no overlap"
        );
        assert!(!writes.overlaps(VolumeId(0), 12288, 4096));
        assert!(!writes.overlaps(VolumeId(1), 4096, 4096), "other volume");
        assert!(writes.remove(1));
        assert!(!writes.remove(1));
        assert!(!writes.overlaps(VolumeId(0), 4096, 4096));
    }
}
