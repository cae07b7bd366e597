//! Single-threaded cases of the staging arena, including its bitmaps; the model
//! comparison and the threaded runs are in tests/.

use super::*;

const G: usize = GRANULE_BYTES;

fn arena(granules: usize) -> (ArenaWriter, ArenaReader) {
    StagingArena::new(vec![0; granules * G]).split()
}

/// `granules` granules of `byte`.
fn payload(granules: usize, byte: u8) -> Vec<u8> {
    vec![byte; granules * G]
}

/// The `claimed` and `written` words.
fn bitmaps(reader: &ArenaReader) -> (Vec<u64>, Vec<u64>) {
    let load = |words: &[AtomicU64]| -> Vec<u64> {
        words
            .iter()
            .map(|word| word.load(Ordering::Relaxed))
            .collect()
    };
    (load(&reader.shared.claimed), load(&reader.shared.written))
}

#[test]
fn words_cover_a_range_with_one_mask_per_word() {
    let collect = |granules: Range<usize>| words(granules).collect::<Vec<_>>();
    assert_eq!(collect(0..0), []);
    assert_eq!(collect(70..70), []);
    assert_eq!(collect(0..1), [(0, 1)]);
    assert_eq!(collect(3..5), [(0, 0b11000)]);
    assert_eq!(collect(0..64), [(0, u64::MAX)]);
    assert_eq!(collect(63..65), [(0, 1 << 63), (1, 1)]);
    assert_eq!(
        collect(60..200),
        [(0, 0xf << 60), (1, u64::MAX), (2, u64::MAX), (3, 0xff)]
    );
}

#[test]
fn a_write_is_read_back_and_marks_its_granules() {
    let (writer, reader) = arena(4);
    writer.write(G, &payload(2, 7)).unwrap();
    assert_eq!(bitmaps(&reader), (vec![0b0110], vec![0b0110]));
    assert_eq!(reader.read(G, 2 * G).unwrap(), Some(&payload(2, 7)[..]));
    assert_eq!(
        reader.read(2 * G, G).unwrap(),
        Some(&payload(1, 7)[..]),
        "a part"
    );
}

#[test]
fn reads_see_none_until_every_granule_is_written() {
    let (writer, reader) = arena(4);
    assert_eq!(reader.read(0, 4 * G).unwrap(), None);
    writer.write(0, &payload(1, 1)).unwrap();
    assert_eq!(reader.read(0, 2 * G).unwrap(), None, "granule 1 is missing");
    writer.write(G, &payload(1, 2)).unwrap();
    let both = reader.read(0, 2 * G).unwrap().unwrap();
    assert_eq!(both[..G], payload(1, 1)[..]);
    assert_eq!(both[G..], payload(1, 2)[..]);
}

#[test]
fn an_overlapping_write_is_refused_and_leaves_no_bits() {
    let (writer, reader) = arena(4);
    writer.write(G, &payload(2, 1)).unwrap();
    let before = bitmaps(&reader);
    for (at, granules) in [(0, 2), (2 * G, 2), (0, 4), (2 * G, 1)] {
        assert_eq!(
            writer.write(at, &payload(granules, 9)),
            Err(ArenaError::Overlap {
                at,
                len: granules * G
            })
        );
        assert_eq!(
            bitmaps(&reader),
            before,
            "after the refused {at}+{granules}"
        );
    }
    assert_eq!(reader.read(G, 2 * G).unwrap(), Some(&payload(2, 1)[..]));
}

#[test]
fn a_refused_claim_across_words_undoes_every_word() {
    let (writer, reader) = arena(200);
    // Held: granule 130, in word 2.
    writer.write(130 * G, &payload(1, 1)).unwrap();
    let before = bitmaps(&reader);
    // Words 0 and 1 are claimed before word 2 refuses.
    assert!(matches!(
        writer.write(60 * G, &payload(100, 2)),
        Err(ArenaError::Overlap { .. })
    ));
    assert_eq!(bitmaps(&reader), before);
    // And all of it can be claimed around the held granule.
    writer.write(60 * G, &payload(70, 3)).unwrap();
    writer.write(131 * G, &payload(29, 4)).unwrap();
    assert_eq!(
        bitmaps(&reader).0,
        [0xf << 60, u64::MAX, 0xffff_ffff, 0],
        "granules 60..160"
    );
}

#[test]
fn adjacent_ranges_both_succeed() {
    let (writer, reader) = arena(130);
    writer.write(0, &payload(64, 1)).unwrap();
    writer.write(64 * G, &payload(1, 2)).unwrap();
    writer.write(65 * G, &payload(65, 3)).unwrap();
    assert_eq!(bitmaps(&reader).1, [u64::MAX, u64::MAX, 0b11]);
    let all = reader.read(0, 130 * G).unwrap().unwrap();
    assert!(all[..64 * G].iter().all(|&byte| byte == 1));
    assert!(all[64 * G..65 * G].iter().all(|&byte| byte == 2));
    assert!(all[65 * G..].iter().all(|&byte| byte == 3));
}

#[test]
fn a_released_range_can_be_claimed_again() {
    let (writer, mut reader) = arena(4);
    writer.write(0, &payload(3, 1)).unwrap();
    reader.release(0, 2 * G).unwrap();
    assert_eq!(bitmaps(&reader), (vec![0b100], vec![0b100]));
    assert_eq!(reader.read(0, G).unwrap(), None);
    assert!(matches!(
        writer.write(G, &payload(2, 2)),
        Err(ArenaError::Overlap { .. })
    ));
    writer.write(G, &payload(1, 2)).unwrap();
    assert_eq!(reader.read(G, G).unwrap(), Some(&payload(1, 2)[..]));
    assert_eq!(reader.read(2 * G, G).unwrap(), Some(&payload(1, 1)[..]));
}

#[test]
fn misaligned_and_out_of_bounds_ranges_are_errors_everywhere() {
    let (writer, mut reader) = arena(2);
    fn misaligned<T>(at: usize, len: usize) -> Result<T, ArenaError> {
        Err(ArenaError::Misaligned { at, len })
    }
    fn outside<T>(at: usize, len: usize) -> Result<T, ArenaError> {
        Err(ArenaError::OutOfBounds {
            at,
            len,
            size: 2 * G,
        })
    }
    assert_eq!(writer.write(1, &payload(1, 0)), misaligned(1, G));
    assert_eq!(writer.write(0, &[0; 100]), misaligned(0, 100));
    assert_eq!(reader.write(G + 8, &[]), misaligned(G + 8, 0));
    assert_eq!(reader.read(0, G + 1), misaligned(0, G + 1));
    assert_eq!(reader.release(G / 2, G), misaligned(G / 2, G));
    assert_eq!(writer.write(G, &payload(2, 0)), outside(G, 2 * G));
    assert_eq!(reader.write(3 * G, &[]), outside(3 * G, 0));
    assert_eq!(reader.read(2 * G, G), outside(2 * G, G));
    let far = usize::MAX - (G - 1);
    assert_eq!(
        reader.read(far, 2 * G),
        outside(far, 2 * G),
        "at + len overflows"
    );
    assert_eq!(reader.release(0, 4 * G), outside(0, 4 * G));
    assert_eq!(bitmaps(&reader), (vec![0], vec![0]));
}

#[test]
fn empty_ranges_claim_nothing_and_always_succeed() {
    let (writer, mut reader) = arena(2);
    writer.write(0, &payload(2, 1)).unwrap();
    for at in [0, G, 2 * G] {
        writer.write(at, &[]).unwrap();
        reader.write(at, &[]).unwrap();
        assert_eq!(reader.read(at, 0).unwrap(), Some(&[][..]));
        reader.release(at, 0).unwrap();
    }
    assert_eq!(bitmaps(&reader), (vec![0b11], vec![0b11]));
    let (writer, reader) = StagingArena::new(Vec::new()).split();
    assert!(writer.is_empty() && reader.is_empty());
    writer.write(0, &[]).unwrap();
    assert_eq!(reader.read(0, 0).unwrap(), Some(&[][..]));
}

#[test]
fn the_reader_writes_like_a_writer_and_may_copy_out_of_the_arena() {
    let (writer, reader) = arena(4);
    reader.write(0, &payload(2, 5)).unwrap();
    assert!(matches!(
        writer.write(G, &payload(1, 6)),
        Err(ArenaError::Overlap { .. })
    ));
    // A payload borrowed from the arena itself: written granules, disjoint from the claim.
    let held = reader.read(0, 2 * G).unwrap().unwrap();
    reader.write(2 * G, held).unwrap();
    assert_eq!(reader.read(2 * G, 2 * G).unwrap(), Some(&payload(2, 5)[..]));
}

#[test]
#[should_panic(expected = "not all written")]
fn releasing_what_was_not_written_is_a_bug() {
    let (writer, mut reader) = arena(4);
    writer.write(0, &payload(1, 1)).unwrap();
    let _ = reader.release(0, 2 * G);
}

#[test]
#[should_panic(expected = "not all written")]
fn releasing_twice_is_a_bug() {
    let (writer, mut reader) = arena(1);
    writer.write(0, &payload(1, 1)).unwrap();
    reader.release(0, G).unwrap();
    let _ = reader.release(0, G);
}

#[test]
#[should_panic(expected = "not a multiple of 512")]
fn the_arena_length_must_be_whole_granules() {
    let _ = StagingArena::new(vec![0; G + 1]);
}

#[test]
fn the_buffer_is_kept_as_given_and_freed_whole() {
    // Spare capacity (as a prefaulted buffer might have) must survive: miri checks the
    // free matches the allocation.
    let mut bytes = Vec::with_capacity(5 * G);
    bytes.resize(2 * G, 3);
    let address = bytes.as_ptr();
    let arena = StagingArena::new(bytes);
    assert_eq!(arena.len(), 2 * G);
    let (writer, reader) = arena.split();
    assert_eq!((writer.len(), reader.len()), (2 * G, 2 * G));
    assert_eq!(reader.shared.bytes.as_ptr().cast_const(), address);
    assert_eq!(reader.shared.capacity, 5 * G);
    writer.write(0, &payload(1, 4)).unwrap();
    drop(writer);
    assert_eq!(reader.read(0, G).unwrap(), Some(&payload(1, 4)[..]));
}

#[test]
fn errors_say_what_was_wrong() {
    let message = |error: ArenaError| error.to_string();
    assert_eq!(
        message(ArenaError::Misaligned { at: 3, len: 512 }),
        "range 3+512 is not aligned to 512 bytes"
    );
    assert_eq!(
        message(ArenaError::OutOfBounds {
            at: 0,
            len: 1024,
            size: 512
        }),
        "range 0+1024 is outside the arena of 512 bytes"
    );
    assert_eq!(
        message(ArenaError::Overlap { at: 512, len: 512 }),
        "range 512+512 overlaps a range already claimed"
    );
}

#[test]
fn handles_are_send_and_sync_as_intended() {
    fn send<S: Send>() {}
    fn sync<S: Sync>() {}
    fn clone<C: Clone>() {}
    send::<StagingArena>();
    send::<ArenaWriter>();
    sync::<ArenaWriter>();
    clone::<ArenaWriter>();
    send::<ArenaReader>();
}

#[test]
fn a_claim_longer_than_its_payload_holds_the_whole_range_written() {
    let (writer, mut reader) = arena(8);
    writer.claim_and_write(G, 3 * G, &payload(1, 9)).unwrap();
    assert_eq!(bitmaps(&reader), (vec![0b1110], vec![0b1110]));
    assert_eq!(reader.read(G, G).unwrap(), Some(&payload(1, 9)[..]));
    // The tail was claimed, not copied to: another writer cannot have it.
    assert_eq!(
        writer.write(3 * G, &payload(1, 1)),
        Err(ArenaError::Overlap { at: 3 * G, len: G })
    );
    assert_eq!(
        writer.claim_and_write(5 * G, G, &payload(2, 1)),
        Err(ArenaError::PayloadTooLong {
            payload: 2 * G,
            len: G
        })
    );
    assert_eq!(
        bitmaps(&reader),
        (vec![0b1110], vec![0b1110]),
        "refusals leave no bit"
    );
    reader.release(G, 3 * G).unwrap();
    assert_eq!(bitmaps(&reader), (vec![0], vec![0]));
}
