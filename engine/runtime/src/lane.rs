//! One lane: a TCP connection carrying whole frames. Incoming bytes collect in a buffer
//! bounded by the largest frame this side accepts, and every whole frame is handed to the
//! caller (`FrameReader`); outgoing bytes wait in a buffer the state machine fills with
//! `poll_transmit` until the socket takes them. A frame that could never fit, bad bytes, or
//! a closed connection is an error: the caller drops the lane.
//!
//! A lane is either polled whole by one thread (`Lane::new`: a non-blocking socket), or
//! split (`Lane::split`): a receiver thread blocks in reads on its own `FrameReader` while
//! the poller sends without blocking (`MSG_DONTWAIT`) on the same connection.

use std::io::{self, IoSlice, Read};
use std::net::TcpStream;
use std::time::Duration;

use thiserror::Error;

use ordo_core::primary::tx::TxBatch;
use ordo_core::protocol::{decode, frame_len, DecodeError, Frame, PeerError, Seq, HEADER_BYTES};

/// Slices per vectored write: Linux's `IOV_MAX`.
const MAX_SLICES: usize = 1024;

#[derive(Debug, Error)]
pub enum LaneError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("connection closed mid-frame ({0} bytes of a frame received): truncated frame")]
    Truncated(usize),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("frame of {len} bytes is larger than the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("no handshake within {0} ms of connecting")]
    NoHandshake(u64),
}

/// Idle this long, a connection is probed; unanswered probes, or data unacknowledged for
/// `USER_TIMEOUT`, end it. A peer whose host died or whose link vanished (no RST ever
/// comes) is then noticed in seconds, not after TCP's default quarter of an hour, and
/// frees its lane or client slot.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_PROBES: u32 = 5;
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets keepalive probes and a user timeout on the TCP socket `stream` (see
/// `KEEPALIVE_IDLE`).
pub fn detect_dead_peer(stream: impl std::os::fd::AsFd) -> io::Result<()> {
    let socket = socket2::SockRef::from(&stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// The receiving half of a lane.
#[derive(Debug)]
pub struct FrameReader {
    stream: TcpStream,
    rx: Vec<u8>,
    /// Bytes of `rx` holding data.
    rx_len: usize,
}

impl FrameReader {
    fn new(stream: TcpStream, max_frame_bytes: usize) -> FrameReader {
        assert!(max_frame_bytes >= HEADER_BYTES);
        FrameReader {
            stream,
            rx: vec![0; max_frame_bytes],
            rx_len: 0,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads once (blocking if the socket blocks) and hands each whole frame now in the
    /// buffer to `handle`. Returns the frames handled, or `None` if a non-blocking socket
    /// had nothing.
    pub fn read_frames(
        &mut self,
        mut handle: impl FnMut(&Frame<'_>) -> Result<(), PeerError>,
    ) -> Result<Option<usize>, LaneError> {
        loop {
            match self.stream.read(&mut self.rx[self.rx_len..]) {
                Ok(0) if self.rx_len > 0 => return Err(LaneError::Truncated(self.rx_len)),
                Ok(0) => return Err(LaneError::Closed),
                Ok(read) => {
                    self.rx_len += read;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut frames = 0;
        let mut at = 0;
        while self.rx_len - at >= HEADER_BYTES {
            let len = frame_len(&self.rx[at..self.rx_len])?;
            if len > self.rx.len() {
                return Err(LaneError::FrameTooLarge {
                    len,
                    max: self.rx.len(),
                });
            }
            if self.rx_len - at < len {
                break;
            }
            let (frame, used) = decode(&self.rx[at..at + len])?;
            debug_assert_eq!(used, len);
            handle(&frame)?;
            frames += 1;
            at += len;
        }
        self.rx.copy_within(at..self.rx_len, 0);
        self.rx_len -= at;
        Ok(Some(frames))
    }
}

#[derive(Debug)]
pub struct Lane {
    stream: TcpStream,
    /// `None` when a receiver thread has it (`split`).
    reader: Option<FrameReader>,
    tx: Vec<u8>,
    /// What `tx` may hold: the room `tx_room` offers is measured against this, not the
    /// Vec's capacity, so a frame that overshoots once cannot make the buffer grow again.
    tx_limit: usize,
    /// Bytes of `tx` already written to the socket.
    tx_sent: usize,
}

impl Lane {
    /// Wraps a connected stream (made non-blocking, Nagle off). `max_frame_bytes` bounds
    /// what one incoming frame may be; `tx_bytes` is the outgoing buffer's capacity.
    pub fn new(stream: TcpStream, max_frame_bytes: usize, tx_bytes: usize) -> io::Result<Lane> {
        let (mut lane, reader) = Lane::setup(stream, true, max_frame_bytes, tx_bytes)?;
        lane.reader = Some(reader);
        Ok(lane)
    }

    /// Wraps a connected stream (blocking, Nagle off) as a sending lane and the reader a
    /// receiver thread blocks on. Shutting the stream down (`shutdown`) ends the reader.
    pub fn split(
        stream: TcpStream,
        max_frame_bytes: usize,
        tx_bytes: usize,
    ) -> io::Result<(Lane, FrameReader)> {
        Lane::setup(stream, false, max_frame_bytes, tx_bytes)
    }

    /// The socket options every lane has, a sending lane and a reader on the connection.
    fn setup(
        stream: TcpStream,
        nonblocking: bool,
        max_frame_bytes: usize,
        tx_bytes: usize,
    ) -> io::Result<(Lane, FrameReader)> {
        stream.set_nonblocking(nonblocking)?;
        stream.set_nodelay(true)?;
        detect_dead_peer(&stream)?;
        let reader = FrameReader::new(stream.try_clone()?, max_frame_bytes);
        let lane = Lane {
            stream,
            reader: None,
            tx: Vec::with_capacity(tx_bytes),
            tx_limit: tx_bytes,
            tx_sent: 0,
        };
        Ok((lane, reader))
    }

    /// Ends the connection both ways: a receiver thread blocked on its reader wakes with
    /// an error.
    pub fn shutdown(&self) {
        // Already closed by the peer is fine: either way nothing more moves.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads what the socket has and hands each whole frame to `handle`. Returns the
    /// number of frames handled (0 when nothing was there). Only for a lane made by `new`.
    pub fn receive(
        &mut self,
        mut handle: impl FnMut(&Frame<'_>) -> Result<(), PeerError>,
    ) -> Result<usize, LaneError> {
        let reader = self
            .reader
            .as_mut()
            .expect("a split lane's reader is elsewhere");
        let mut frames = 0;
        while let Some(handled) = reader.read_frames(&mut handle)? {
            frames += handled;
        }
        Ok(frames)
    }

    /// The outgoing buffer, for the state machine's `poll_transmit` to append to, and how
    /// much room it has left.
    pub fn tx_room(&mut self) -> (&mut Vec<u8>, usize) {
        if self.tx_sent == self.tx.len() {
            self.tx.clear();
            self.tx_sent = 0;
        }
        let room = self.tx_limit.saturating_sub(self.tx.len());
        (&mut self.tx, room)
    }

    /// Sends `batch` with vectored writes, its payloads straight from where
    /// `payload(seq)` finds them (the primary's retention), up to `IOV_MAX` slices per
    /// system call. What the socket does not take now is copied into the outgoing buffer
    /// for `send` to finish later, so nothing of `batch` is borrowed past this call. Only
    /// with the outgoing buffer empty (`send` returned true). True if all went out.
    pub fn send_batch<'a>(
        &mut self,
        batch: &'a TxBatch,
        payload: impl Fn(Seq) -> &'a [u8] + 'a,
    ) -> Result<bool, LaneError> {
        assert_eq!(self.tx_sent, self.tx.len(), "unsent bytes go first");
        self.tx.clear();
        self.tx_sent = 0;
        let socket = socket2::SockRef::from(&self.stream);
        let mut segments = batch.segments(payload).peekable();
        let mut slices: [IoSlice<'a>; MAX_SLICES] = [IoSlice::new(&[]); MAX_SLICES];
        while segments.peek().is_some() {
            let mut count = 0;
            let mut total = 0;
            while count < MAX_SLICES {
                let Some(segment) = segments.next() else {
                    break;
                };
                slices[count] = IoSlice::new(segment);
                total += segment.len();
                count += 1;
            }
            let mut taken = 0;
            loop {
                // Never blocks, also on a split lane's blocking socket.
                match socket.send_vectored_with_flags(&slices[..count], libc::MSG_DONTWAIT) {
                    Ok(0) => return Err(LaneError::Closed),
                    Ok(sent) => taken = sent,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
                break;
            }
            if taken < total {
                // Keep the rest: of these slices from `taken` on, then every segment left.
                let mut skip = taken;
                for slice in &slices[..count] {
                    let part = &slice[skip.min(slice.len())..];
                    skip = skip.saturating_sub(slice.len());
                    self.tx.extend_from_slice(part);
                }
                segments.for_each(|segment| self.tx.extend_from_slice(segment));
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes as much of the outgoing buffer as the socket takes; true once it is empty.
    pub fn send(&mut self) -> Result<bool, LaneError> {
        let socket = socket2::SockRef::from(&self.stream);
        while self.tx_sent < self.tx.len() {
            // Never blocks, also on a split lane's blocking socket.
            match socket.send_with_flags(&self.tx[self.tx_sent..], libc::MSG_DONTWAIT) {
                Ok(0) => return Err(LaneError::Closed),
                Ok(written) => self.tx_sent += written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;

    use super::*;
    use ordo_core::protocol::{encode, AppliedFrame, DataSetId, Seq, SyncFrame};

    fn pair(max_frame: usize) -> (Lane, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (Lane::new(server, max_frame, 1 << 16).unwrap(), client)
    }

    /// A lane notices a vanished peer: keepalive probes and a user timeout are set.
    #[test]
    fn a_lane_probes_for_a_dead_peer() {
        let (lane, _client) = pair(4096);
        let socket = socket2::SockRef::from(lane.stream());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    }

    fn sync(seq: u64) -> Frame<'static> {
        Frame::Sync(SyncFrame {
            seq: Seq(seq),
            data_set: DataSetId(1),
            first_seq: Seq(1),
            write_count: seq - 1,
            stream_offset: 0,
            ends_resync: false,
        })
    }

    /// Receives until `want` frames arrived (the peer wrote them all already). The deadline
    /// only keeps a broken test from hanging CI; nothing is timed.
    fn receive_all(lane: &mut Lane, want: usize) -> Result<Vec<Frame<'static>>, LaneError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < want {
            assert!(
                std::time::Instant::now() < deadline,
                "loopback bytes never arrived"
            );
            lane.receive(|frame| {
                let Frame::Sync(sync) = frame else {
                    panic!("only syncs are sent")
                };
                got.push(Frame::Sync(*sync));
                Ok(())
            })?;
        }
        Ok(got)
    }

    #[test]
    fn frames_split_anywhere_arrive_whole_and_in_order() {
        let (mut lane, mut client) = pair(4096);
        let mut bytes = Vec::new();
        (2..40).for_each(|seq| encode(&sync(seq), &mut bytes));
        // Dribble the bytes in uneven pieces, so frames straddle reads.
        for piece in bytes.chunks(7) {
            client.write_all(piece).unwrap();
        }
        let got = receive_all(&mut lane, 38).unwrap();
        let expected: Vec<Frame<'_>> = (2..40).map(sync).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn garbage_a_bad_crc_and_an_oversized_frame_are_errors() {
        let (mut lane, mut client) = pair(4096);
        client.write_all(&[0x55; 64]).unwrap();
        assert!(matches!(
            receive_all(&mut lane, 1),
            Err(LaneError::Decode(DecodeError::BadMagic(_)))
        ));

        let (mut lane, mut client) = pair(4096);
        let mut bytes = Vec::new();
        encode(&sync(5), &mut bytes);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        client.write_all(&bytes).unwrap();
        assert!(matches!(
            receive_all(&mut lane, 1),
            Err(LaneError::Decode(DecodeError::CrcMismatch { .. }))
        ));

        let (mut lane, mut client) = pair(64);
        let mut bytes = Vec::new();
        let frame = Frame::Applied(AppliedFrame {
            data_set: DataSetId(1),
            applied_seq: Seq(2),
            stream_end: 3,
        });
        encode(&frame, &mut bytes);
        encode(&sync(9), &mut bytes);
        let big = ordo_core::protocol::WriteFrame {
            volume: ordo_core::protocol::VolumeId(0),
            seq: Seq(1),
            data_set: DataSetId(1),
            offset: 0,
            stream_offset: 0,
            payload: &[0; 512],
        };
        encode(&Frame::Write(big), &mut bytes);
        client.write_all(&bytes).unwrap();
        let mut handled = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let error = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "loopback bytes never arrived"
            );
            match lane.receive(|_| {
                handled += 1;
                Ok(())
            }) {
                Ok(_) => continue,
                Err(error) => break error,
            }
        };
        assert_eq!(
            handled, 2,
            "the frames before the oversized one were handled"
        );
        assert!(
            matches!(error, LaneError::FrameTooLarge { max: 64, .. }),
            "{error}"
        );
    }

    /// A batch bigger than the socket takes at once: what the vectored writes leave is
    /// copied and sent later, and the peer gets exactly the frames `encode` makes.
    #[test]
    fn a_batch_goes_out_whole_even_when_the_socket_takes_part() {
        use ordo_core::primary::tx::FrameSink;
        use ordo_core::protocol::{VolumeId, WriteFrame};

        let (mut lane, client) = pair(4096);
        socket2::SockRef::from(lane.stream())
            .set_send_buffer_size(64 << 10)
            .unwrap();
        let payloads: Vec<Vec<u8>> = (0..300u32)
            .map(|i| vec![i as u8; 512 * (1 + (i as usize % 16))])
            .collect();
        let mut batch = TxBatch::default();
        let mut expected = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let seq = Seq(i as u64 + 1);
            if i % 7 == 0 {
                batch.push(&sync(seq.0 + 1));
                encode(&sync(seq.0 + 1), &mut expected);
            }
            let write = WriteFrame {
                volume: VolumeId(0),
                seq,
                data_set: DataSetId(1),
                offset: 0,
                stream_offset: 0,
                payload,
            };
            batch.push_write(seq, &write);
            encode(&Frame::Write(write), &mut expected);
        }
        assert_eq!(batch.len(), expected.len());
        let all_sent = lane
            .send_batch(&batch, |seq| &payloads[seq.0 as usize - 1])
            .unwrap();
        assert!(
            !all_sent,
            "a 64 KiB socket buffer cannot take {} bytes",
            expected.len()
        );
        let want = expected.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0; want];
            let mut client = client;
            client.read_exact(&mut got).unwrap();
            got
        });
        // The deadline only keeps a broken test from hanging CI; nothing is timed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !lane.send().unwrap() {
            assert!(std::time::Instant::now() < deadline, "never drained");
            std::thread::yield_now();
        }
        assert!(reader.join().unwrap() == expected, "the bytes differ");
    }

    #[test]
    fn a_closed_peer_is_reported_and_sending_drains_the_buffer() {
        let (mut lane, client) = pair(4096);
        let (tx, room) = lane.tx_room();
        assert_eq!(room, 1 << 16);
        encode(&sync(3), tx);
        assert!(lane.send().unwrap());
        let mut reader = client.try_clone().unwrap();
        let mut buf = [0u8; 56];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(decode(&buf).unwrap().0, sync(3));
        drop((client, reader));
        assert!(matches!(receive_all(&mut lane, 1), Err(LaneError::Closed)));
    }
}
