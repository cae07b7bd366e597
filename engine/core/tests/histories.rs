//! Scenarios of replication histories, a real primary and a real secondary driven
//! together (`pair_support`): a clean stop resumes the same generation with nothing
//! resent; a crash begins a new generation, and the secondary re-bases onto it holding its
//! old image until the resync's end point; a seeded replica's initial sync sends almost
//! nothing; an unrelated history is refused until the operator discards it; the operator
//! lets a held resync go on inconsistent, also one too large for the journal window, which
//! the secondary reports as stuck; one that fits keeps its room against the application's
//! writes, which wait for it instead. Expected images are plain byte vectors written
//! here, never read back from the engine. The wire of histories is at the end.

mod pair_support;

use ordo_core::primary::intent::{required_bytes as record_bytes, WriteIntent};
use ordo_core::primary::{
    format_record, DataSetPolicy, PeerError, Primary, PrimaryConfig, ResyncPhase, ResyncRoom,
    Start, SubmitError,
};
use ordo_core::protocol::{
    decode, encode, DataSetId, DecodeError, DigestRequestFrame, DigestsFrame, Frame, GenerationId,
    GroupId, Hello, HistoryFlags, ResumeState, Role, Seq, SyncFrame, VolumeId, VolumeInfo,
    HEADER_BYTES, MAX_ANCESTORS, MAX_DIGESTS,
};
use ordo_core::secondary::journal::required_bytes as journal_bytes;
use ordo_core::secondary::{ReplicaState, Secondary, SecondaryConfig};
use ordo_core::storage::{drain, Geometry, MemStorage, Storage};
use pair_support::Pair;

const GROUP: GroupId = GroupId(15);
const BLOCK: u32 = 4096;
/// Five 1 MiB extents of the write-intent record: four on the first volume, one on the
/// second.
const VOLUMES: [(&str, u64); 2] = [("data", 4 << 20), ("log", 1 << 20)];
const MAX_WRITE: u32 = 64 << 10;
const LANES: usize = 2;
/// The history a fresh primary's record is formatted with.
const GENERATION: GenerationId = GenerationId(0x6E4E_0001);
/// Steps (simulated milliseconds) a scenario may take to get where it must.
const PATIENCE: u64 = 20_000;

/// One image per volume: what the primary's volumes hold, by the writes made here.
#[derive(Clone, Debug, PartialEq)]
struct Image(Vec<Vec<u8>>);

impl Image {
    fn zeros() -> Image {
        Image(
            VOLUMES
                .iter()
                .map(|&(_, size)| vec![0; size as usize])
                .collect(),
        )
    }

    /// Bytes no write here makes (a disk that held data before ordo), from `seed`.
    fn seeded(seed: u64) -> Image {
        let mut x = seed | 1;
        let mut byte = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        Image(
            VOLUMES
                .iter()
                .map(|&(_, size)| (0..size).map(|_| byte()).collect())
                .collect(),
        )
    }

    fn write(&mut self, volume: u16, offset: u64, data: &[u8]) {
        let at = offset as usize;
        self.0[usize::from(volume)][at..at + data.len()].copy_from_slice(data);
    }

    /// Volumes holding this image.
    fn volumes(&self) -> Vec<MemStorage> {
        self.0
            .iter()
            .map(|bytes| {
                let mut volume = mem(bytes.len() as u64);
                for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
                    volume.submit_write(0, (i << 20) as u64, chunk).unwrap();
                    drain(&mut volume);
                }
                volume
            })
            .collect()
    }
}

fn mem(size_bytes: u64) -> MemStorage {
    MemStorage::new(Geometry::new(size_bytes, BLOCK).unwrap()).unwrap()
}

fn names() -> Vec<String> {
    VOLUMES.iter().map(|&(name, _)| name.to_string()).collect()
}

fn infos() -> Vec<VolumeInfo> {
    let info = |&(name, size_bytes): &(&str, u64)| VolumeInfo {
        name: name.to_string(),
        size_bytes,
        block_size: BLOCK,
    };
    VOLUMES.iter().map(info).collect()
}

/// Data sets close on a flush, or at 8 writes; `resync_rate_bytes` 0 is no limit.
fn primary_config(resync_rate_bytes: u64) -> PrimaryConfig {
    PrimaryConfig {
        group: GROUP,
        volume_names: names(),
        policy: DataSetPolicy {
            interval_ms: 0,
            max_writes: 8,
            max_bytes: 256 << 10,
        },
        window_bytes: 4 << 20,
        max_write_bytes: MAX_WRITE,
        lanes: LANES,
        retransmit_ms: 50,
        max_pending_flushes: 8,
        resync_rate_bytes,
        ..PrimaryConfig::default()
    }
}

fn secondary_config() -> SecondaryConfig {
    SecondaryConfig {
        group: GROUP,
        volume_names: names(),
        window_bytes: 2 << 20,
        max_write_bytes: MAX_WRITE,
        lanes: LANES,
        applied_interval_ms: 20,
        bug: None,
    }
}

/// A primary on `volumes` and a new write-intent record of `generation` (`genesis_zero`:
/// the volumes are all zeros, created for it).
fn primary_on(
    volumes: Vec<MemStorage>,
    generation: GenerationId,
    genesis_zero: bool,
    resync_rate_bytes: u64,
) -> Primary<MemStorage> {
    let device = mem(record_bytes(&infos()).next_multiple_of(4096));
    let record = format_record(device, &infos(), generation, genesis_zero).unwrap();
    let config = primary_config(resync_rate_bytes);
    let p = Primary::new(config, volumes, record, generation.0).unwrap();
    assert_eq!(
        p.generation(),
        generation,
        "a fresh record's history resumes"
    );
    p
}

/// A secondary on a new journal over `replicas` (`zeroed`: all zeros, created for it).
fn secondary_on(replicas: Vec<MemStorage>, zeroed: bool, journal_id: u64) -> Secondary<MemStorage> {
    let window_bytes = secondary_config().window_bytes;
    secondary_with_window(replicas, zeroed, journal_id, window_bytes)
}

fn secondary_with_window(
    replicas: Vec<MemStorage>,
    zeroed: bool,
    journal_id: u64,
    window_bytes: u64,
) -> Secondary<MemStorage> {
    let config = SecondaryConfig {
        window_bytes,
        ..secondary_config()
    };
    let journal = mem(journal_bytes(config.window_bytes, MAX_WRITE, BLOCK).next_multiple_of(4096));
    Secondary::create(config, journal_id, journal, replicas, zeroed).unwrap()
}

/// A fresh primary of `generation` and a fresh secondary, both on zeroed volumes.
fn fresh_pair(generation: GenerationId, resync_rate_bytes: u64) -> (Pair, Image) {
    let image = Image::zeros();
    let p = primary_on(image.volumes(), generation, true, resync_rate_bytes);
    let s = secondary_on(image.volumes(), true, 0x5EC0_0001);
    (Pair::new(p, s, LANES, 0), image)
}

/// Writes `blocks` blocks at block `block` of `volume` on the primary, and in `image`.
/// Each 512 bytes differ, so a misplaced or torn copy shows.
fn write(
    pair: &mut Pair,
    image: &mut Image,
    volume: u16,
    block: u64,
    blocks: usize,
    fill_byte: u8,
) -> Seq {
    let data = fill(blocks, fill_byte);
    let offset = block * u64::from(BLOCK);
    image.write(volume, offset, &data);
    let now = pair.now_ms;
    pair.p
        .submit_write(now, VolumeId(volume), offset, &data, 0)
        .unwrap()
}

/// `blocks` blocks of `fill` on, each 512 bytes different.
fn fill(blocks: usize, fill: u8) -> Vec<u8> {
    (0..blocks * BLOCK as usize)
        .map(|i| fill.wrapping_add((i / 512) as u8))
        .collect()
}

fn flush(pair: &mut Pair) -> DataSetId {
    pair.p.flush(0).unwrap()
}

/// Whether the secondary's replica is the image of the primary's last closed data set.
fn caught_up(pair: &Pair) -> bool {
    let target = (pair.p.generation(), pair.p.last_closed());
    pair.s.replica_point() == Some(target) && pair.s.is_between_data_sets()
}

fn catch_up(pair: &mut Pair) {
    pair.run_until(
        "the replica reaches the last closed data set",
        PATIENCE,
        caught_up,
    );
}

/// Catches up, and the replica is consistent, the primary's image, with no error on
/// either side.
fn converges(pair: &mut Pair, image: &Image) {
    catch_up(pair);
    assert_eq!(pair.s.replica_state(), ReplicaState::Consistent);
    assert_replica(&pair.s, image);
    assert!(pair.primary_errors.is_empty() && pair.secondary_errors.is_empty());
}

fn assert_replica(s: &Secondary<MemStorage>, image: &Image) {
    for (index, expected) in image.0.iter().enumerate() {
        let actual = s.replicas()[index].contents();
        let at = actual.iter().zip(expected).position(|(a, b)| a != b);
        assert_eq!(
            at, None,
            "replica {index} differs from the image at byte {at:?}"
        );
    }
}

fn replica_is(s: &Secondary<MemStorage>, image: &Image) -> bool {
    image
        .0
        .iter()
        .zip(s.replicas())
        .all(|(expected, replica)| replica.contents() == &expected[..])
}

/// How the primary went down before it is started again on its volumes and record.
enum Stop {
    /// `record_clean_stop` is durable.
    Clean,
    /// The process died: every write it submitted is on the devices, and nothing else.
    Crash,
}

/// Starts the primary again on its own volumes and write-intent record.
fn restart_primary(pair: Pair, stop: Stop) -> Pair {
    let rate = 0;
    restart_primary_at_rate(pair, stop, rate)
}

fn restart_primary_at_rate(mut pair: Pair, stop: Stop, resync_rate_bytes: u64) -> Pair {
    if let Stop::Clean = stop {
        pair.run_until("everything is applied and freed", PATIENCE, |pair| {
            pair.p.retention_bytes() == 0 && pair.p.peer_applied() == pair.p.last_closed()
        });
        let txn = pair.p.record_clean_stop().unwrap();
        pair.run_until("the clean stop is durable", PATIENCE, |pair| {
            pair.p.intent_durable(txn)
        });
    }
    let (p, s, now_ms) = pair.into_parts();
    let (mut volumes, mut record) = p.into_storages();
    volumes.iter_mut().for_each(drain);
    drain(&mut record);
    let record = WriteIntent::open(record, &infos()).unwrap();
    let config = primary_config(resync_rate_bytes);
    let p = Primary::new(config, volumes, record, now_ms).unwrap();
    Pair::new(p, s, LANES, now_ms)
}

/// Steps until the replica is the image of the primary's last closed data set, checking
/// at every step that a held replica is the image it had (`base`, at `point`): untouched
/// until the resync's end point is staged, then applied as one unit (so between data sets
/// it is that image or the new one). Returns the steps it was seen held.
fn catch_up_holding(pair: &mut Pair, point: (GenerationId, DataSetId), base: &Image) -> u64 {
    let mut held_steps = 0;
    for _ in 0..PATIENCE {
        held_steps += u64::from(check_holding(pair, point, base));
        if caught_up(pair) {
            return held_steps;
        }
        pair.step();
    }
    panic!("the replica never caught up: {}", pair.describe());
}

/// Whether the secondary holds its image now, checking that it is `base` at `point`
/// (once the end point is staged, the unit applied whole: held between data sets).
fn check_holding(pair: &Pair, point: (GenerationId, DataSetId), base: &Image) -> bool {
    let end_staged = match pair.p.resync_stats().phase {
        ResyncPhase::Ending { end } | ResyncPhase::Done { end } => {
            pair.s.stats().last_staged >= end
        }
        ResyncPhase::Idle | ResyncPhase::Scanning => false,
    };
    let held = pair.s.replica_state() == ReplicaState::Held;
    if held && (!end_staged || pair.s.is_between_data_sets()) {
        assert_eq!(pair.s.replica_point(), Some(point));
        let unmoved = replica_is(&pair.s, base);
        assert!(unmoved, "a held replica moved: {}", pair.describe());
        return true;
    }
    false
}

/// A fresh pair at `resync_rate_bytes` whose secondary applied one data set; then the link
/// goes down, the primary writes a block in each extent alone, crashes and starts again on
/// its disks, and the secondary re-bases held, with its resync under way. Returns the pair,
/// the primary's image, and the point and image the secondary holds.
fn held_mid_resync(resync_rate_bytes: u64) -> (Pair, Image, (GenerationId, DataSetId), Image) {
    let (mut pair, mut image) = fresh_pair(GENERATION, resync_rate_bytes);
    write(&mut pair, &mut image, 0, 0, 1, 0x41);
    flush(&mut pair);
    catch_up(&mut pair);
    let (followed, image_1) = ((GENERATION, DataSetId(1)), image.clone());

    pair.linked = false;
    pair.break_lanes();
    for extent in 0..4 {
        write(
            &mut pair,
            &mut image,
            0,
            extent * 256 + 1,
            1,
            0x42 + extent as u8,
        );
    }
    write(&mut pair, &mut image, 1, 9, 1, 0x4F);
    flush(&mut pair);
    pair.run(20);
    let mut pair = restart_primary_at_rate(pair, Stop::Crash, resync_rate_bytes);
    pair.run_until("the secondary re-based, held", PATIENCE, |pair| {
        pair.s.replica_state() == ReplicaState::Held && !pair.s.rebasing()
    });
    pair.run_until("the resync compared something", PATIENCE, |pair| {
        pair.p.resync_stats().bytes_compared > 0
    });
    assert_eq!(pair.p.resync_stats().phase, ResyncPhase::Scanning);
    (pair, image, followed, image_1)
}

/// The newest Hello the primary sent.
fn last_hello(pair: &Pair) -> &Hello {
    pair.primary_hellos
        .last()
        .expect("the primary greeted the secondary")
}

#[test]
fn a_clean_stop_resumes_the_same_generation_at_the_next_seq_with_nothing_resent() {
    let (mut pair, mut image) = fresh_pair(GENERATION, 0);
    write(&mut pair, &mut image, 0, 3, 2, 0x31);
    write(&mut pair, &mut image, 1, 7, 1, 0x32);
    assert_eq!(flush(&mut pair), DataSetId(1));
    catch_up(&mut pair);
    assert_replica(&pair.s, &image);

    // Two writes and a sync took seqs 1 to 3.
    let mut pair = restart_primary(pair, Stop::Clean);
    assert_eq!(
        pair.p.start(),
        Start::Resumed {
            data_set: DataSetId(1)
        }
    );
    assert_eq!(pair.p.generation(), GENERATION);
    pair.run(10);
    assert_eq!(write(&mut pair, &mut image, 0, 100, 1, 0x33), Seq(4));
    assert_eq!(flush(&mut pair), DataSetId(2));
    catch_up(&mut pair);

    assert_eq!(pair.s.replica_point(), Some((GENERATION, DataSetId(2))));
    assert_replica(&pair.s, &image);
    let stats = pair.p.stats();
    assert_eq!(
        stats.frames_sent, 2,
        "the new write and its sync, nothing from before"
    );
    assert_eq!(stats.retransmits, 0);
    assert_eq!(pair.p.resync_stats().bytes_sent, 0);
    assert_eq!(pair.p.resync_stats().phase, ResyncPhase::Idle);
    assert_eq!(pair.s.stats().rebases, 0);
    assert_eq!(last_hello(&pair).generation, GENERATION);
    assert!(pair.primary_errors.is_empty() && pair.secondary_errors.is_empty());
}

#[test]
fn a_crash_begins_a_new_generation_and_the_secondary_holds_its_image_until_the_end_point() {
    let (mut pair, mut image) = fresh_pair(GENERATION, 0);
    write(&mut pair, &mut image, 0, 0, 4, 0x21);
    flush(&mut pair);
    catch_up(&mut pair);
    let (followed, image_1) = ((GENERATION, DataSetId(1)), image.clone());
    assert!(pair.s.allow_inconsistent().is_err(), "nothing is held");

    // The link goes down; the primary writes alone (three blocks the secondary lacks),
    // then crashes and starts again on its disks.
    pair.linked = false;
    pair.break_lanes();
    write(&mut pair, &mut image, 0, 300, 2, 0x22);
    write(&mut pair, &mut image, 1, 5, 1, 0x23);
    flush(&mut pair);
    pair.run(20);
    let mut pair = restart_primary(pair, Stop::Crash);
    assert!(matches!(pair.p.start(), Start::NewGeneration { .. }));
    let new = pair.p.generation();
    assert_ne!(new, GENERATION);
    // A data set of the new generation closes before the resync's end point.
    write(&mut pair, &mut image, 0, 500, 1, 0x24);
    assert_eq!(flush(&mut pair), DataSetId(1));

    let held_steps = catch_up_holding(&mut pair, followed, &image_1);
    assert!(held_steps > 0, "the secondary re-based held");
    assert_eq!(last_hello(&pair).ancestors.first(), Some(&GENERATION));
    assert_eq!(pair.s.history(), new);
    assert_eq!(pair.s.replica_state(), ReplicaState::Consistent);
    assert_replica(&pair.s, &image);
    let resync = pair.p.resync_stats();
    assert!(
        matches!(resync.phase, ResyncPhase::Done { .. }),
        "{resync:?}"
    );
    // The three blocks written while the link was down, and the one written since (which
    // a held replica does not apply before the end point).
    assert_eq!(
        resync.bytes_sent,
        4 * u64::from(BLOCK),
        "only the blocks that differ"
    );
    assert!(pair.primary_errors.is_empty() && pair.secondary_errors.is_empty());
}

#[test]
fn a_replica_seeded_with_the_primarys_data_gets_an_initial_sync_that_sends_almost_nothing() {
    let mut image = Image::seeded(0x5EED);
    let p = primary_on(image.volumes(), GENERATION, false, 0);
    let s = secondary_on(image.volumes(), false, 0x5EC0_0002);
    let mut pair = Pair::new(p, s, LANES, 0);
    // One block written after the copy was taken.
    write(&mut pair, &mut image, 0, 9, 1, 0x77);
    flush(&mut pair);

    let mut inconsistent_steps = 0;
    for _ in 0..PATIENCE {
        if caught_up(&pair) {
            break;
        }
        if pair.s.replica_state() == ReplicaState::Inconsistent {
            inconsistent_steps += 1;
            assert_eq!(pair.s.replica_point(), None);
        }
        pair.step();
    }
    assert!(caught_up(&pair), "{}", pair.describe());
    assert!(inconsistent_steps > 0, "inconsistent until the end point");
    assert_eq!(pair.s.replica_state(), ReplicaState::Consistent);
    assert_replica(&pair.s, &image);
    let resync = pair.p.resync_stats();
    let total: u64 = VOLUMES.iter().map(|&(_, size)| size).sum();
    assert_eq!(
        resync.bytes_compared, total,
        "every extent compared: {resync:?}"
    );
    assert!(
        resync.bytes_sent <= u64::from(BLOCK),
        "at most the block written since: {resync:?}"
    );
}

#[test]
fn an_unrelated_history_is_refused_until_the_operator_discards_it() {
    let (mut pair, mut image_a) = fresh_pair(GENERATION, 0);
    write(&mut pair, &mut image_a, 0, 10, 3, 0xA1);
    flush(&mut pair);
    catch_up(&mut pair);
    let (_, s, now_ms) = pair.into_parts();

    let other = GenerationId(0x0B0B);
    let mut image_b = Image::zeros();
    let p = primary_on(image_b.volumes(), other, true, 0);
    let mut pair = Pair::new(p, s, LANES, now_ms);
    write(&mut pair, &mut image_b, 0, 11, 2, 0xB1);
    flush(&mut pair);
    pair.run(200);
    let unrelated = PeerError::UnrelatedHistory {
        primary: other,
        secondary: GENERATION,
    };
    for errors in [&pair.secondary_errors, &pair.primary_errors] {
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|e| *e == unrelated), "{errors:?}");
    }
    assert_eq!(pair.p.stalled(), Some(&unrelated));
    assert_eq!(pair.p.stats().frames_sent, 0, "no record reached it");
    assert_eq!(pair.s.replica_point(), Some((GENERATION, DataSetId(1))));
    assert_replica(&pair.s, &image_a);

    pair.s.discard_history();
    let mut inconsistent_steps = 0;
    for _ in 0..PATIENCE {
        if caught_up(&pair) {
            break;
        }
        inconsistent_steps += u64::from(pair.s.replica_state() == ReplicaState::Inconsistent);
        pair.step();
    }
    assert!(caught_up(&pair), "{}", pair.describe());
    assert!(
        inconsistent_steps > 0,
        "a discarded replica is inconsistent until the end point"
    );
    assert_eq!(pair.s.history(), other);
    assert_eq!(pair.p.stalled(), None);
    assert_replica(&pair.s, &image_b);
}

#[test]
fn allow_inconsistent_lets_a_held_secondary_apply_data_sets_as_they_complete() {
    // A slow resync (1 MiB a second, an extent at a time), so that it is still comparing
    // when the operator decides.
    let (mut pair, mut image, followed, image_1) = held_mid_resync(1 << 20);

    // Held: a data set of the new generation is staged, and not applied.
    let applied_before = pair.s.stats().data_sets_applied;
    write(&mut pair, &mut image, 0, 700, 1, 0x50);
    let held_set = flush(&mut pair);
    pair.run_until("the data set is staged", PATIENCE, |pair| {
        pair.s.stats().last_staged >= held_set
    });
    pair.run(50);
    assert_eq!(pair.p.resync_stats().phase, ResyncPhase::Scanning);
    assert_eq!(pair.s.stats().data_sets_applied, applied_before);
    assert_eq!(pair.s.replica_point(), Some(followed));
    assert_replica(&pair.s, &image_1);

    pair.s.allow_inconsistent().unwrap();
    pair.run_until("data sets are applied as they complete", PATIENCE, |pair| {
        pair.s.stats().data_sets_applied > applied_before
    });
    assert_eq!(
        pair.p.resync_stats().phase,
        ResyncPhase::Scanning,
        "before the end point"
    );
    assert_eq!(pair.s.replica_state(), ReplicaState::Inconsistent);
    assert_eq!(pair.s.replica_point(), None);

    converges(&mut pair, &image);
}

/// Recomputes the crc of the frame filling `buf` (the header's last four bytes), so that
/// an edited field reaches the decoder's checks.
fn reseal(buf: &mut [u8]) {
    buf[12..HEADER_BYTES].fill(0);
    let crc = crc32c::crc32c(buf);
    buf[12..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

fn encoded(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out);
    out
}

#[test]
fn the_frames_of_histories_round_trip_and_malformed_ones_are_typed_errors() {
    let every_flag = HistoryFlags {
        genesis_stream: true,
        genesis_bits: true,
        replica_zeroed: true,
        discard: true,
        inconsistent: true,
        held: true,
        resync_all: true,
        resync_from_zero: true,
    };
    let hello = Frame::Hello(Hello {
        role: Role::Primary,
        group: GROUP,
        max_write_bytes: MAX_WRITE,
        volumes: infos(),
        generation: GENERATION,
        ancestors: (1..=MAX_ANCESTORS as u64).map(GenerationId).collect(),
        flags: every_flag,
        resume: ResumeState::default(),
    });
    let end_point = Frame::Sync(SyncFrame {
        seq: Seq(9),
        data_set: DataSetId(3),
        first_seq: Seq(9),
        write_count: 0,
        stream_offset: 12 << 12,
        ends_resync: true,
    });
    let request = Frame::DigestRequest(DigestRequestFrame {
        id: 4,
        volume: VolumeId(1),
        offset: 1 << 20,
        len: 1 << 20,
    });
    let digests = Frame::Digests(DigestsFrame {
        id: 4,
        volume: VolumeId(1),
        offset: 1 << 20,
        len: 1 << 20,
        digests: (0..MAX_DIGESTS as u64).collect(),
    });
    for frame in [&hello, &end_point, &request, &digests] {
        let buf = encoded(frame);
        assert_eq!(decode(&buf), Ok((frame.clone(), buf.len())));
    }
    let plain = Frame::Sync(SyncFrame {
        ends_resync: false,
        ..match end_point {
            Frame::Sync(sync) => sync,
            _ => unreachable!(),
        }
    });
    assert_ne!(
        encoded(&plain),
        encoded(&end_point),
        "the end point is on the wire"
    );

    // Each edit is at a byte offset from the frame's start (a 16-byte header, then the
    // body), resealed so the crc passes.
    let hello_bytes = encoded(&hello);
    let digests_bytes = encoded(&digests);
    let request_bytes = encoded(&request);
    let malformed = |buf: &[u8], at: usize, bytes: &[u8]| {
        let mut buf = buf.to_vec();
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        reseal(&mut buf);
        decode(&buf).map(|_| ()).unwrap_err()
    };
    let too_many_ancestors = (MAX_ANCESTORS as u16 + 1).to_le_bytes();
    assert_eq!(
        malformed(&hello_bytes, HEADER_BYTES + 20, &too_many_ancestors),
        DecodeError::Malformed("too many ancestors in hello")
    );
    assert_eq!(
        malformed(&hello_bytes, HEADER_BYTES + 22, &0x0100u16.to_le_bytes()),
        DecodeError::Malformed("unknown flags in hello")
    );
    assert!(matches!(
        malformed(&hello_bytes, HEADER_BYTES + 20, &1u16.to_le_bytes()),
        DecodeError::BadLength { kind: 1, .. }
    ));
    let too_many_digests = (MAX_DIGESTS as u16 + 1).to_le_bytes();
    assert_eq!(
        malformed(&digests_bytes, HEADER_BYTES + 2, &too_many_digests),
        DecodeError::Malformed("too many digests")
    );
    assert!(matches!(
        malformed(&digests_bytes, HEADER_BYTES + 2, &3u16.to_le_bytes()),
        DecodeError::BadLength { kind: 9, .. }
    ));
    assert!(matches!(
        malformed(&request_bytes, 8, &25u32.to_le_bytes()),
        DecodeError::BadLength {
            kind: 8,
            body_len: 25
        }
    ));
    assert_eq!(
        malformed(&request_bytes, HEADER_BYTES + 2, &[1]),
        DecodeError::Malformed("non-zero padding in digest request")
    );
}

#[test]
fn a_secondary_restarted_mid_resync_still_holds_its_image_and_converges() {
    let (pair, image, followed, image_1) = held_mid_resync(1 << 20);
    let (p, s, now_ms) = pair.into_parts();
    let (journal, replicas) = s.into_storages();
    let s = Secondary::open(secondary_config(), journal, replicas).unwrap();
    let mut pair = Pair::new(p, s, LANES, now_ms);
    assert_eq!(pair.s.replica_state(), ReplicaState::Held);
    assert_eq!(pair.s.replica_point(), Some(followed));
    assert_replica(&pair.s, &image_1);

    catch_up_holding(&mut pair, followed, &image_1);
    assert_eq!(pair.s.replica_state(), ReplicaState::Consistent);
    assert_replica(&pair.s, &image);
    assert!(pair.primary_errors.is_empty() && pair.secondary_errors.is_empty());
}

#[test]
fn a_second_crash_mid_resync_keeps_the_secondary_on_its_first_image_until_the_new_end_point() {
    let (mut pair, mut image, followed, image_1) = held_mid_resync(1 << 20);
    let second = pair.p.generation();
    write(&mut pair, &mut image, 0, 600, 1, 0x60);
    flush(&mut pair);
    pair.run(10);

    let mut pair = restart_primary_at_rate(pair, Stop::Crash, 1 << 20);
    let third = pair.p.generation();
    assert_ne!(third, second);
    write(&mut pair, &mut image, 1, 200, 1, 0x61);
    flush(&mut pair);
    catch_up_holding(&mut pair, followed, &image_1);
    let ancestors = &last_hello(&pair).ancestors;
    assert_eq!(ancestors[..2], [second, GENERATION], "newest first");
    assert_eq!(pair.s.history(), third);
    assert_eq!(pair.s.replica_state(), ReplicaState::Consistent);
    assert_replica(&pair.s, &image);
    assert!(pair.primary_errors.is_empty() && pair.secondary_errors.is_empty());
}

#[test]
fn a_held_resync_larger_than_the_journal_window_says_so_and_goes_on_only_when_allowed() {
    let (mut pair, mut image) = fresh_pair(GENERATION, 0);
    write(&mut pair, &mut image, 0, 0, 1, 0x61);
    flush(&mut pair);
    catch_up(&mut pair);
    let (followed, image_1) = ((GENERATION, DataSetId(1)), image.clone());

    // Three of the data volume's four extents rewritten while the link is down (more than
    // the secondary's 2 MiB window), then a crash: the resync must send all of it.
    pair.linked = false;
    pair.break_lanes();
    let blocks_per_write = (MAX_WRITE / BLOCK) as usize;
    for n in 0..(3 << 20) / MAX_WRITE as u64 {
        let block = n * blocks_per_write as u64;
        write(
            &mut pair,
            &mut image,
            0,
            block,
            blocks_per_write,
            0x70 + n as u8,
        );
    }
    flush(&mut pair);
    pair.run(20);
    let mut pair = restart_primary(pair, Stop::Crash);
    pair.run_until("the secondary re-based, held", PATIENCE, |pair| {
        pair.s.replica_state() == ReplicaState::Held && !pair.s.rebasing()
    });
    assert!(!pair.s.held_resync_full(), "not before it filled");
    pair.run_until("the held resync is reported stuck", PATIENCE, |pair| {
        pair.s.held_resync_full()
    });
    // Stuck for good: nothing moves, the replica is the image it was.
    let compared = pair.p.resync_stats().bytes_compared;
    pair.run(3000);
    assert_eq!(pair.p.resync_stats().bytes_compared, compared);
    // (The primary compared it all; its end point waits behind what the window refused.)
    assert!(!matches!(
        pair.p.resync_stats().phase,
        ResyncPhase::Done { .. }
    ));
    assert!(pair.s.held_resync_full());
    assert_eq!(pair.s.replica_state(), ReplicaState::Held);
    assert_eq!(pair.s.replica_point(), Some(followed));
    assert_replica(&pair.s, &image_1);

    pair.s.allow_inconsistent().unwrap();
    catch_up(&mut pair);
    assert_eq!(pair.s.replica_state(), ReplicaState::Consistent);
    assert!(!pair.s.held_resync_full());
    assert_replica(&pair.s, &image);
    assert!(pair.primary_errors.is_empty() && pair.secondary_errors.is_empty());
}

#[test]
fn an_extent_written_all_the_time_keeps_its_bit_and_a_cold_one_is_cleared_once_applied() {
    let (mut pair, mut image) = fresh_pair(GENERATION, 0);
    // Extent 2 is written once; extent 0 every 150 ms for three seconds, each write
    // applied well before the next (so only its being hot keeps its bit).
    write(&mut pair, &mut image, 0, 512, 1, 0x20);
    for round in 0..20u8 {
        write(&mut pair, &mut image, 0, u64::from(round % 8), 1, round);
        flush(&mut pair);
        for _ in 0..150 {
            pair.step();
            if round >= 4 {
                // Extent 2: cold and applied, cleared. Extent 0: never cleared between
                // two writes (each time would cost a record transaction).
                assert_eq!(
                    pair.p.out_of_sync_extents(),
                    1,
                    "round {round}: {}",
                    pair.describe()
                );
            }
        }
    }
    catch_up(&mut pair);
    pair.run(500);
    assert_eq!(pair.p.out_of_sync_extents(), 0, "cold and applied: cleared");
    assert_replica(&pair.s, &image);
}

#[test]
fn a_held_re_base_decided_before_the_operators_consent_is_written_goes_on_inconsistent() {
    // Sim seed 447: the secondary decided a held re-base onto a new generation while the
    // operator's consent to go on inconsistent waited to be written; the consent landed
    // first, so when the re-base was written there was no image left to hold.
    let (mut pair, mut image, _, _) = held_mid_resync(1 << 20);
    write(&mut pair, &mut image, 0, 600, 1, 0x70);
    flush(&mut pair);
    pair.run(10);
    let mut pair = restart_primary_at_rate(pair, Stop::Crash, 1 << 20);
    pair.run_until("the secondary decides to re-base", PATIENCE, |pair| {
        pair.s.rebasing()
    });
    pair.s.allow_inconsistent().unwrap();
    let mut rebased_while_pending = false;
    for _ in 0..PATIENCE {
        rebased_while_pending |= pair.s.rebasing() && pair.s.edit_pending();
        if !pair.s.rebasing() && !pair.s.edit_pending() {
            break;
        }
        pair.step();
    }
    assert!(
        rebased_while_pending,
        "the re-base was decided while the consent waited: {}",
        pair.describe()
    );
    assert_eq!(pair.s.replica_state(), ReplicaState::Inconsistent);
    assert_eq!(pair.s.replica_point(), None);
    converges(&mut pair, &image);
}

#[test]
fn a_held_resync_that_fits_keeps_its_room_and_the_writes_made_meanwhile_wait_for_it() {
    // An 8 MiB journal window: the resync of what the crash left marked (two extents, at
    // most 3 MiB of stream each) fits it, but the 16 MiB the application writes meanwhile
    // would not: without the room kept they filled the window and the resync was stuck.
    let mut image = Image::zeros();
    let p = primary_on(image.volumes(), GENERATION, true, 0);
    let s = secondary_with_window(image.volumes(), true, 0x5EC0_0002, 8 << 20);
    let mut pair = Pair::new(p, s, LANES, 0);
    write(&mut pair, &mut image, 0, 0, 1, 0x31);
    flush(&mut pair);
    catch_up(&mut pair);
    let (followed, image_1) = ((GENERATION, DataSetId(1)), image.clone());
    pair.linked = false;
    pair.break_lanes();
    write(&mut pair, &mut image, 0, 256 + 3, 1, 0x32);
    flush(&mut pair);
    pair.run(20);
    let mut pair = restart_primary_at_rate(pair, Stop::Crash, 256 << 10);
    pair.run_until("the secondary re-based, held", PATIENCE, |pair| {
        pair.s.replica_state() == ReplicaState::Held && !pair.s.rebasing()
    });
    pair.run_until("the resync began", PATIENCE, |pair| {
        pair.p.resync_stats().phase == ResyncPhase::Scanning
    });
    assert_eq!(pair.p.resync_stats().room, ResyncRoom::Kept);

    let blocks = (MAX_WRITE / BLOCK) as usize;
    let mut refused = 0;
    for n in 0..(16 << 20) / MAX_WRITE as u64 {
        let data = fill(blocks, n as u8);
        let offset = (n % 16) * MAX_WRITE as u64;
        loop {
            let now = pair.now_ms;
            match pair.p.submit_write(now, VolumeId(1), offset, &data, 0) {
                Ok(_) => break,
                Err(SubmitError::WindowFull) => refused += 1,
                Err(error) => panic!("write {n}: {error}"),
            }
            assert!(!pair.s.held_resync_full(), "{}", pair.describe());
            check_holding(&pair, followed, &image_1);
            pair.step();
        }
        image.write(1, offset, &data);
    }
    flush(&mut pair);
    catch_up_holding(&mut pair, followed, &image_1);
    converges(&mut pair, &image);
    let resync = pair.p.resync_stats();
    assert!(matches!(resync.phase, ResyncPhase::Done { .. }));
    assert!(resync.room_waits > 0 && refused > 0, "{resync:?}");
    assert!(!pair.s.held_resync_full());
}
