//! The wire codec and crc32c, per frame and per byte: what every record costs on both
//! sides besides the copies.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ordo_core::protocol::{
    decode, encode, encode_write_head, DataSetId, Frame, Seq, VolumeId, WriteFrame,
};

fn write(payload: &[u8]) -> WriteFrame<'_> {
    WriteFrame {
        volume: VolumeId(0),
        seq: Seq(7),
        data_set: DataSetId(3),
        offset: 1 << 20,
        stream_offset: 1 << 30,
        payload,
    }
}

fn codec(c: &mut Criterion) {
    for size in [4096usize, 1 << 20] {
        let payload = vec![0xA5u8; size];
        let mut group = c.benchmark_group(format!("write frame, {} KiB", size >> 10));
        group.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::with_capacity(size + 4096);
        group.bench_function("encode (copies the payload)", |b| {
            b.iter(|| {
                out.clear();
                encode(&Frame::Write(write(black_box(&payload))), &mut out);
            });
        });
        group.bench_function("encode head only (vectored send)", |b| {
            b.iter(|| {
                out.clear();
                encode_write_head(&write(black_box(&payload)), &mut out);
            });
        });
        let mut wire = Vec::new();
        encode(&Frame::Write(write(&payload)), &mut wire);
        group.bench_function("decode (checks the crc)", |b| {
            b.iter(|| black_box(decode(black_box(&wire)).expect("valid")));
        });
        group.bench_function("crc32c", |b| {
            b.iter(|| black_box(crc32c::crc32c(black_box(&payload))));
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
