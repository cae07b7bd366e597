//! Starting a secondary: formatting a new journal, or reopening one and restaging what
//! it holds past the applied watermark, after checking that the configuration, the
//! devices and the replicas are those the journal belongs to.

use ordo_lockfree::{ArenaWriter, ReorderBuffer, StagingArena};

use crate::protocol::digest::MAX_DIGEST_SPAN_BYTES;
use crate::protocol::{HistoryFlags, Role, MAX_DIGESTS};

use super::journal::Superblock;

use super::*;

impl<S: Storage> Secondary<S> {
    /// Formats `journal` and starts a secondary with nothing applied. `journal_id` should
    /// be random: it tells this journal's records from those of an earlier one on the same
    /// device, and tells the primary when a secondary's state was replaced.
    /// `replicas_zeroed`: every replica is all zeros (volumes this secondary created), so
    /// a primary whose history began as zeros needs no initial sync.
    pub fn create(
        config: SecondaryConfig,
        journal_id: u64,
        mut journal: S,
        mut replicas: Vec<S>,
        replicas_zeroed: bool,
    ) -> Result<Secondary<S>, SecondaryError> {
        prepare(&config, &mut journal, &mut replicas)?;
        let journal = Journal::format(
            journal,
            config.group,
            journal_id,
            config.window_bytes,
            config.max_write_bytes,
            volumes_digest(&config, &replicas),
            replicas_zeroed,
        )?;
        Secondary::assemble(config, journal, replicas, false)
    }

    /// Restarts a secondary from its journal and replica: what the journal holds past the
    /// applied watermark is staged again (and applied once complete).
    pub fn open(
        config: SecondaryConfig,
        mut journal: S,
        mut replicas: Vec<S>,
    ) -> Result<Secondary<S>, SecondaryError> {
        prepare(&config, &mut journal, &mut replicas)?;
        let journal = Journal::open(journal, config.group)?;
        if journal.superblock().volumes_digest != volumes_digest(&config, &replicas) {
            return Err(SecondaryError::JournalMismatch(
                "the replica volumes (names, sizes, block sizes or their order) are not those this journal was created for".into(),
            ));
        }
        Secondary::assemble(config, journal, replicas, true)
    }

    /// Builds the secondary on a formatted or opened journal; when `recovering`, first
    /// restages what the journal holds past the applied watermark.
    fn assemble(
        config: SecondaryConfig,
        mut journal: Journal<S>,
        replicas: Vec<S>,
        recovering: bool,
    ) -> Result<Secondary<S>, SecondaryError> {
        let sb = *journal.superblock();
        if !sb.window_bytes.is_multiple_of(STAGING_GRANULE_BYTES) {
            return Err(SecondaryError::JournalMismatch(format!(
                "its window of {} bytes is not a multiple of {STAGING_GRANULE_BYTES}",
                sb.window_bytes
            )));
        }
        let volumes = describe(&config.volume_names, &replicas);
        let hello = Hello {
            role: Role::Secondary,
            group: config.group,
            max_write_bytes: sb.max_write_bytes,
            volumes,
            generation: sb.history,
            ancestors: Vec::new(),
            flags: HistoryFlags::default(),
            resume: ResumeState::default(),
        };
        let mut epoch_end = None;
        let mut recovered = 0;
        let (staging, cursor, inbox, records) = if recovering {
            // Restaged before the receiving side starts: its reorder buffer begins at the
            // seq after what the journal holds.
            let (mut staging, arena_writer) = staging_at_watermark(&sb);
            let mut cursor =
                Cursor::at_watermark(sb.applied_data_set, sb.applied_seq, sb.applied_stream_end);
            recovered = restage(
                &mut journal,
                &replicas,
                &mut staging,
                &mut cursor,
                &mut epoch_end,
            )?;
            let (inbox, records) = inbox_after(&hello, &replicas, &sb, &cursor, arena_writer);
            (staging, cursor, inbox, records)
        } else {
            receiving_side(&hello, &journal, &replicas)
        };
        let max_records = staging.seq_capacity();
        let in_flight: u32 = replicas.iter().map(|r| r.geometry().max_in_flight).sum();
        Ok(Secondary {
            hello,
            inbox: Arc::new(inbox),
            records,
            cursor,
            lanes: vec![Lane::default(); config.lanes],
            applier: Applier::new(in_flight as usize, config.bug, recovering),
            appended: VecDeque::with_capacity(max_records),
            flushing: Vec::with_capacity(max_records),
            flush_in_flight: false,
            superblock_flush_due: false,
            pending_acks: Vec::with_capacity(max_records),
            ack_ranges: Vec::with_capacity(MAX_ACK_RANGES),
            applied_dirty: false,
            next_applied_ms: 0,
            completions: Vec::with_capacity(64),
            failed: None,
            stats: SecondaryStats {
                recovered_records: recovered,
                ..SecondaryStats::default()
            },
            rebase: None,
            edit: None,
            epoch_end,
            digest_replies: VecDeque::with_capacity(MAX_DIGEST_REPLIES),
            digest_spares: (0..MAX_DIGEST_REPLIES)
                .map(|_| Vec::with_capacity(MAX_DIGESTS))
                .collect(),
            digest_waiting: None,
            digest_buf: vec![0; MAX_DIGEST_SPAN_BYTES as usize],
            inbox_version: 0,
            held_full: false,
            held_watch: (0, 0),
            staging,
            journal,
            replicas,
            config,
        })
    }
}

/// An empty staging window at the journal's watermark, and the arena's writing half.
fn staging_at_watermark(sb: &Superblock) -> (Staging, ArenaWriter) {
    // A record starts below the window's end and costs at most this much.
    let arena_bytes = sb.window_bytes + stream_cost(sb.max_write_bytes);
    let arena = StagingArena::new(crate::storage::prefaulted(arena_bytes as usize));
    let (arena_writer, arena_reader) = arena.split();
    let staging = Staging::new(
        sb.window_bytes,
        arena_reader,
        sb.applied_data_set,
        sb.applied_seq,
        sb.applied_stream_end,
    );
    (staging, arena_writer)
}

/// The inbox and reorder buffer receivers fill from the seq after `cursor`.
fn inbox_after<S: Storage>(
    hello: &Hello,
    replicas: &[S],
    sb: &Superblock,
    cursor: &Cursor,
    arena_writer: ArenaWriter,
) -> (Inbox, Consumer<Staged>) {
    let capacity = Staging::seq_capacity_for(sb.window_bytes).next_power_of_two();
    let (producer, records) = ReorderBuffer::new(capacity, cursor.next_seq.0).split();
    let geometries = replicas.iter().map(|r| r.geometry()).collect();
    let inbox = Inbox::new(
        hello.clone(),
        geometries,
        sb.window_bytes,
        sb.applied_stream_end,
        producer,
        arena_writer,
    );
    (inbox, records)
}

/// A receiving side with nothing staged, at the journal's watermark: at start on a new
/// journal, and after a re-base.
pub(super) fn receiving_side<S: Storage>(
    hello: &Hello,
    journal: &Journal<S>,
    replicas: &[S],
) -> (Staging, Cursor, Inbox, Consumer<Staged>) {
    let sb = *journal.superblock();
    let (staging, arena_writer) = staging_at_watermark(&sb);
    let cursor = Cursor::at_watermark(sb.applied_data_set, sb.applied_seq, sb.applied_stream_end);
    let (inbox, records) = inbox_after(hello, replicas, &sb, &cursor, arena_writer);
    (staging, cursor, inbox, records)
}

/// Restages what the journal holds past the applied watermark: the run of records that
/// follow it in seq order, as the journal writer took them. Records already applied are
/// skipped; so is anything after the run (there is none in a journal written in seq
/// order: its durable records form a prefix of the log); the primary sends those again.
/// Returns how many records were restaged.
fn restage<S: Storage>(
    journal: &mut Journal<S>,
    replicas: &[S],
    staging: &mut Staging,
    cursor: &mut Cursor,
    epoch_end: &mut Option<DataSetId>,
) -> Result<u64, SecondaryError> {
    let mut recovered = 0;
    let mut misfit = None;
    let mut run_ended = false;
    let applied_seq = staging.applied_seq();
    journal.scan(|record| {
        let header = &record.header;
        if let Err(why) = fits_replicas(replicas, header) {
            misfit.get_or_insert(why);
            return;
        }
        if header.seq <= applied_seq || run_ended {
            return;
        }
        let staged = Staged {
            data_set: header.data_set,
            stream_offset: header.stream_offset,
            kind: header.kind,
        };
        let mut next = *cursor;
        if next.take(header.seq, &staged).is_err() {
            run_ended = true;
            return;
        }
        let slot = Slot {
            seq: header.seq,
            data_set: header.data_set,
            stream_offset: header.stream_offset,
            kind: header.kind,
            state: SlotState::Durable,
        };
        match staging.restore(slot, record.payload) {
            Ok(()) => {
                *cursor = next;
                recovered += 1;
                if let RecordKind::Sync {
                    ends_resync: true, ..
                } = header.kind
                {
                    epoch_end.get_or_insert(header.data_set);
                }
            }
            Err(why) => {
                misfit.get_or_insert(format!("a record does not fit the staging arena: {why}"));
            }
        }
    })?;
    match misfit {
        Some(why) => Err(SecondaryError::JournalMismatch(why)),
        None => Ok(recovered),
    }
}

/// Checks the configuration and the storage handed in, and drains the storage: completions
/// of a previous owner's requests must not reach this one's applier.
fn prepare<S: Storage>(
    config: &SecondaryConfig,
    journal: &mut S,
    replicas: &mut [S],
) -> Result<(), SecondaryError> {
    config.validate()?;
    check_storage(config, journal, replicas)?;
    drain_all(journal, replicas);
    Ok(())
}

/// What the superblock remembers of the replica volumes (see `Superblock::volumes_digest`).
fn volumes_digest<S: Storage>(config: &SecondaryConfig, replicas: &[S]) -> u32 {
    describe(&config.volume_names, replicas)
        .iter()
        .fold(0, |crc, volume| {
            let crc = crc32c::crc32c_append(crc, &(volume.name.len() as u32).to_le_bytes());
            let crc = crc32c::crc32c_append(crc, volume.name.as_bytes());
            let crc = crc32c::crc32c_append(crc, &volume.size_bytes.to_le_bytes());
            crc32c::crc32c_append(crc, &volume.block_size.to_le_bytes())
        })
}

pub(super) fn drain_all<S: Storage>(journal: &mut S, replicas: &mut [S]) {
    drain(journal);
    replicas.iter_mut().for_each(|r| drain(r));
}

/// Whether a record found in the journal fits the replicas this secondary has (it was
/// checked on arrival, but the configuration may have changed since).
fn fits_replicas<S: Storage>(replicas: &[S], header: &RecordHeader) -> Result<(), String> {
    let (volume, offset, len, zeroes) = match header.kind {
        RecordKind::Write {
            volume,
            offset,
            len,
        } => (volume, offset, len, false),
        RecordKind::Zero {
            volume,
            offset,
            len,
            ..
        } => (volume, offset, len, true),
        RecordKind::Sync { .. } => return Ok(()),
    };
    let replica = replicas.get(usize::from(volume.0)).ok_or_else(|| {
        format!(
            "the journal holds writes to volume {} but there are {} replicas",
            volume.0,
            replicas.len()
        )
    })?;
    let geometry = replica.geometry();
    let fits = if zeroes {
        geometry.check_zeroes(offset, u64::from(len))
    } else {
        geometry.check_io(offset, len as usize)
    };
    fits.map_err(|e| {
        format!(
            "the journal holds a write that does not fit volume {}: {e}",
            volume.0
        )
    })
}

/// The smallest journal device queue: a record, a flush and a superblock in flight.
const MIN_JOURNAL_QUEUE: u32 = 4;

fn check_storage<S: Storage>(
    config: &SecondaryConfig,
    journal: &S,
    replicas: &[S],
) -> Result<(), SecondaryError> {
    let depth = journal.geometry().max_in_flight;
    if depth < MIN_JOURNAL_QUEUE {
        let why = format!(
            "the journal device queue ({depth}) must hold at least {MIN_JOURNAL_QUEUE} requests"
        );
        return Err(ConfigError::Invalid(why).into());
    }
    if replicas.len() != config.volume_names.len() {
        return Err(ConfigError::Invalid(format!(
            "{} volume names for {} replicas",
            config.volume_names.len(),
            replicas.len()
        ))
        .into());
    }
    for (name, replica) in config.volume_names.iter().zip(replicas) {
        if replica.geometry().max_io_bytes < config.max_write_bytes {
            return Err(SecondaryError::Replica {
                name: name.clone(),
                error: StorageError::TooLarge {
                    len: u64::from(config.max_write_bytes),
                    max: replica.geometry().max_io_bytes,
                },
            });
        }
    }
    Ok(())
}
