//! Where the link puts the frames it sends: a plain buffer (every byte copied in, as the
//! simulator takes them), or a `TxBatch` that holds the frames' heads and only names the
//! retained payloads, so a lane can write them from the retention window with one vectored
//! write instead of copying them.

use crate::protocol::{encode, encode_write_head, Frame, Seq, WriteFrame};

/// What `Primary::poll_transmit` appends frames to.
pub trait FrameSink {
    /// Bytes of frames held, payloads included.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a frame.
    fn push(&mut self, frame: &Frame<'_>);

    /// Appends the write frame of retained record `seq` (its payload lies in retention).
    fn push_write(&mut self, seq: Seq, write: &WriteFrame<'_>);
}

impl FrameSink for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn push(&mut self, frame: &Frame<'_>) {
        encode(frame, self);
    }

    fn push_write(&mut self, _seq: Seq, write: &WriteFrame<'_>) {
        encode(&Frame::Write(*write), self);
    }
}

/// A retained payload to send after `at` bytes of the batch's heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadRef {
    pub at: usize,
    pub seq: Seq,
    pub len: usize,
}

/// Frames as heads in one buffer and references to retained payloads between them. Valid
/// until the primary next changes: send it (`Lane::send_batch`) in the same round.
#[derive(Debug, Default)]
pub struct TxBatch {
    heads: Vec<u8>,
    payloads: Vec<PayloadRef>,
    payload_bytes: usize,
}

impl TxBatch {
    pub fn with_capacity(head_bytes: usize, payloads: usize) -> TxBatch {
        TxBatch {
            heads: Vec::with_capacity(head_bytes),
            payloads: Vec::with_capacity(payloads),
            payload_bytes: 0,
        }
    }

    pub fn clear(&mut self) {
        self.heads.clear();
        self.payloads.clear();
        self.payload_bytes = 0;
    }

    /// The batch's bytes in wire order: head runs and payloads, the latter from
    /// `payload(seq)`.
    pub fn segments<'a>(
        &'a self,
        payload: impl Fn(Seq) -> &'a [u8] + 'a,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        let heads = &self.heads;
        let tail = self.payloads.last().map_or(0, |r| r.at);
        let runs = self.payloads.iter().scan(0, move |from, r| {
            let retained = payload(r.seq);
            assert_eq!(retained.len(), r.len, "retained payload of {}", r.seq);
            let before = &heads[*from..r.at];
            *from = r.at;
            Some([before, retained])
        });
        runs.flatten()
            .chain(std::iter::once(&heads[tail..]))
            .filter(|segment| !segment.is_empty())
    }
}

impl FrameSink for TxBatch {
    fn len(&self) -> usize {
        self.heads.len() + self.payload_bytes
    }

    fn push(&mut self, frame: &Frame<'_>) {
        encode(frame, &mut self.heads);
    }

    fn push_write(&mut self, seq: Seq, write: &WriteFrame<'_>) {
        encode_write_head(write, &mut self.heads);
        if !write.payload.is_empty() {
            self.payloads.push(PayloadRef {
                at: self.heads.len(),
                seq,
                len: write.payload.len(),
            });
            self.payload_bytes += write.payload.len();
        }
    }
}
