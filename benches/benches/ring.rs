//! The secondary's and the primary's per-write structures on one core: the sequencing ring
//! (crossbeam's `ArrayQueue`, between the frontend and the poller), the reorder buffer
//! (writes from 8 lanes interleaved out of seq order, drained in order), and both in a
//! row (issue 5's P4: at least 10M writes/s per core). Criterion prints each as
//! elements (writes) per second.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use ordo_lockfree::ReorderBuffer;

/// Writes per measured iteration: a poller round's batch.
const BATCH: u64 = 64;
const LANES: u64 = 8;

/// The order 8 lanes deliver seqs `base..base + BATCH` in: lane k carries every 8th seq,
/// and the lanes' streams interleave lane by lane.
fn lane_order(base: u64) -> impl Iterator<Item = u64> {
    (0..LANES).flat_map(move |lane| (0..BATCH / LANES).map(move |i| base + i * LANES + lane))
}

fn ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("per write");
    group.throughput(Throughput::Elements(BATCH));

    let queue = ArrayQueue::<u64>::new(4096);
    let mut seq = 0;
    group.bench_function("sequencing ring: push then pop a batch", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                seq += 1;
                queue.push(black_box(seq)).expect("room for a batch");
            }
            for _ in 0..BATCH {
                black_box(queue.pop());
            }
        });
    });

    let (producer, mut consumer) = ReorderBuffer::<u64>::new(4096, 0).split();
    // Criterion calls each routine more than once: the stream goes on across calls.
    let mut base = 0;
    group.bench_function("reorder buffer: insert from 8 lanes, drain in order", |b| {
        b.iter(|| {
            for seq in lane_order(base) {
                producer.insert(seq, black_box(seq)).expect("in the window");
            }
            let drained = consumer.drain(BATCH as usize, |_, value| {
                black_box(value);
            });
            assert_eq!(drained, BATCH as usize);
            base += BATCH;
        });
    });

    let queue = ArrayQueue::<u64>::new(4096);
    let (producer, mut consumer) = ReorderBuffer::<u64>::new(4096, 0).split();
    let mut base = 0;
    group.bench_function("ring then reorder buffer (P4)", |b| {
        b.iter(|| {
            for seq in lane_order(base) {
                queue.push(seq).expect("room for a batch");
            }
            while let Some(seq) = queue.pop() {
                producer.insert(seq, black_box(seq)).expect("in the window");
            }
            let drained = consumer.drain(BATCH as usize, |_, value| {
                black_box(value);
            });
            assert_eq!(drained, BATCH as usize);
            base += BATCH;
        });
    });
    group.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
