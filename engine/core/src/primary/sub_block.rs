//! Writes and reads that start or end inside a block, as NBD clients send them: a
//! partial block is merged with what the writes accepted before it left there, and a
//! read's partial ends are read whole and copied out.

use super::retention::Covering;
use super::{Primary, SubmitError};
use crate::protocol::VolumeId;
use crate::storage::{read_blocking, Storage};

impl<S: Storage> Primary<S> {
    /// Fills `merge[..span]` for a write of `data` at `offset` whose block-aligned span
    /// starts at `start`: the partial first and last blocks as every write accepted so far
    /// leaves them, then `data` over them. A block's latest contents are in the newest
    /// retained write covering it (even if that write is still on its way to the volume),
    /// else on the volume, read here and waited for as `read` does. Nothing is accepted
    /// if it fails; a full device queue is `Invalid(QueueFull)`: retry after a poll.
    pub(super) fn merge_partial(
        &mut self,
        volume: VolumeId,
        start: u64,
        offset: u64,
        data: &[u8],
        merge: &mut [u8],
    ) -> Result<(), SubmitError> {
        let block = u64::from(self.volumes[usize::from(volume.0)].geometry().block_size);
        let end = offset + data.len() as u64;
        let span_end = end.next_multiple_of(block);
        let (first, last) = (start, span_end - block);
        let head = (offset > first).then_some(first);
        // One block both starts and ends the write: it is merged once.
        let tail = (end < span_end && !(last == first && head.is_some())).then_some(last);
        for edge in [head, tail].into_iter().flatten() {
            let at = (edge - start) as usize;
            let out = &mut merge[at..at + block as usize];
            match self.retention.newest_covering(volume, edge) {
                Some(Covering::Data { start, payload, .. }) => {
                    let skip = (edge - start) as usize;
                    out.copy_from_slice(&payload[skip..skip + block as usize]);
                }
                Some(Covering::Zeroes { .. }) => out.fill(0),
                None => self.read_volume(volume, edge, out)?,
            }
        }
        let at = (offset - start) as usize;
        merge[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Reads `buf.len()` bytes of a local volume at `offset`: what completed writes left
    /// there, for the application's reads. Waits for the device (not for the write path);
    /// completions of writes and flushes that arrive meanwhile are handled as usual. Any
    /// byte range inside the volume may be read: the partial blocks at its ends are read
    /// whole and copied out. A full device queue is `Invalid(QueueFull)`: retry after the
    /// next poll.
    pub fn read(
        &mut self,
        volume: VolumeId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), SubmitError> {
        let storage = self
            .volumes
            .get(usize::from(volume.0))
            .ok_or(SubmitError::UnknownVolume(volume))?;
        let geometry = storage.geometry();
        let (start, span) = geometry.block_span(offset, buf.len())?;
        if start == offset && span == buf.len() as u64 {
            return self.read_volume(volume, offset, buf);
        }
        let block = u64::from(geometry.block_size);
        let end = offset + buf.len() as u64;
        let mut scratch = std::mem::take(&mut self.block);
        let mut result = Ok(());
        let mut at = offset;
        // A partial first block, the whole blocks after it, a partial last block.
        while at < end && result.is_ok() {
            let done = (at - offset) as usize;
            let block_start = at - at % block;
            if at == block_start && end - at >= block {
                let whole_end = end - end % block;
                let len = (whole_end - at) as usize;
                result = self.read_volume(volume, at, &mut buf[done..done + len]);
                at = whole_end;
            } else {
                let piece = &mut scratch[..block as usize];
                result = self.read_volume(volume, block_start, piece);
                let from = (at - block_start) as usize;
                let len = ((block_start + block).min(end) - at) as usize;
                buf[done..done + len].copy_from_slice(&piece[from..from + len]);
                at += len as u64;
            }
        }
        self.block = scratch;
        result
    }

    /// Reads block-aligned `buf.len()` bytes at `offset` from the volume, waiting for the
    /// device and handling every other completion that arrives meanwhile.
    fn read_volume(
        &mut self,
        volume: VolumeId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), SubmitError> {
        let storage = &mut self.volumes[usize::from(volume.0)];
        storage.geometry().check_io(offset, buf.len())?;
        let mut others = std::mem::take(&mut self.completions);
        others.clear();
        let result = read_blocking(storage, offset, buf, &mut others);
        let handled = !others.is_empty();
        others.drain(..).for_each(|c| self.handle_completion(c));
        self.completions = others;
        if handled {
            self.after_completions();
        }
        result.map_err(SubmitError::from)
    }
}
