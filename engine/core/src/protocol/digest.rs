//! How a resync compares a range of a volume on both sides: in units of
//! `DIGEST_UNIT_BYTES` (or the block size, if larger), one xxh3-64 digest each, at most
//! `MAX_DIGEST_SPAN_BYTES` per request. The last unit of a volume may be shorter.

use super::frame::{DIGEST_UNIT_BYTES, MAX_DIGESTS};

/// Most bytes one digest request covers.
pub const MAX_DIGEST_SPAN_BYTES: u32 = 1 << 20;
const _: () = assert!(MAX_DIGEST_SPAN_BYTES / DIGEST_UNIT_BYTES <= MAX_DIGESTS as u32);

/// The comparison unit on a volume of `block_size`-byte blocks: whole blocks, so a unit
/// that differs can be sent as one block-aligned write.
pub fn unit_bytes(block_size: u32) -> u32 {
    DIGEST_UNIT_BYTES.max(block_size)
}

/// The digest of one unit's bytes.
pub fn digest(unit: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(unit)
}

/// How many units `len` bytes at `offset` are on a volume of `size_bytes` with
/// `block_size`-byte blocks, if it is a range a request may ask for: starting on a unit,
/// ending on a unit or at the volume's end, inside the volume, not empty, at most
/// `MAX_DIGEST_SPAN_BYTES`.
pub fn span_units(size_bytes: u64, block_size: u32, offset: u64, len: u32) -> Option<usize> {
    let unit = u64::from(unit_bytes(block_size));
    let end = offset.checked_add(u64::from(len))?;
    let aligned_end = end.is_multiple_of(unit) || end == size_bytes;
    let valid = len > 0
        && len <= MAX_DIGEST_SPAN_BYTES
        && offset.is_multiple_of(unit)
        && aligned_end
        && end <= size_bytes;
    valid.then(|| u64::from(len).div_ceil(unit) as usize)
}

/// Appends the digest of every unit of `data` (a range read from a volume) to `out`.
pub fn digests_of(data: &[u8], block_size: u32, out: &mut Vec<u64>) {
    let unit = unit_bytes(block_size) as usize;
    out.extend(data.chunks(unit).map(digest));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_starts_on_a_unit_and_ends_on_one_or_at_the_volume_end() {
        let size = 10 * 4096 + 512;
        assert_eq!(span_units(size, 512, 0, 8192), Some(2));
        assert_eq!(
            span_units(size, 512, 40960, 512),
            Some(1),
            "the short last unit"
        );
        assert_eq!(
            span_units(size, 512, 4096, 4096 + 512),
            None,
            "ends mid-unit"
        );
        assert_eq!(span_units(size, 512, 512, 4096), None, "starts mid-unit");
        assert_eq!(span_units(size, 512, 0, 0), None);
        assert_eq!(span_units(size, 512, 40960, 4096), None, "past the end");
        assert_eq!(span_units(u64::MAX, 4096, u64::MAX - 4095, 4096), None);
        assert_eq!(span_units(8 << 20, 4096, 0, (1 << 20) + 4096), None);
        assert_eq!(span_units(8 << 20, 65536, 65536, 1 << 20), Some(16));
    }

    #[test]
    fn a_changed_byte_changes_only_its_units_digest() {
        let mut data = vec![7u8; 3 * 4096];
        let (mut before, mut after) = (vec![], vec![]);
        digests_of(&data, 4096, &mut before);
        data[4096 + 17] ^= 1;
        digests_of(&data, 4096, &mut after);
        assert_eq!(before.len(), 3);
        assert_eq!((before[0], before[2]), (after[0], after[2]));
        assert_ne!(before[1], after[1]);
    }
}
