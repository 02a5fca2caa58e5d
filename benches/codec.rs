//! Costs on the hot paths that are not the network: digests per byte (MD5 vs BLAKE3) and the
//! frame codec. Run: `cargo bench --bench codec`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use md5::Digest as _;
use quicstrap::protocol::{encode, Accept, ControlFrame, FileEntry, FrameDecoder};
use quicstrap::store::checksum::{ChecksumAlgo, Hasher, Md5};
use quicstrap::store::partition::PartitionMeta;

fn digests(c: &mut Criterion) {
    let data = vec![0x5au8; 4 << 20];
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for algo in [ChecksumAlgo::Md5, ChecksumAlgo::Blake3] {
        g.bench_with_input(BenchmarkId::from_parameter(algo), &data, |b, d| {
            b.iter(|| {
                let mut h = Hasher::new(algo);
                h.update(d);
                h.finish()
            })
        });
    }
    // The fallback where OpenSSL refuses MD5, and what `md5` cost before OpenSSL did it.
    g.bench_with_input(
        BenchmarkId::from_parameter("md5-portable"),
        &data,
        |b, d| {
            b.iter(|| {
                let mut h = Hasher::Md5(Md5::Portable(md5::Md5::new()));
                h.update(d);
                h.finish()
            })
        },
    );
    g.finish();
}

fn codec(c: &mut Criterion) {
    let files: Vec<FileEntry> = (0..1_000)
        .map(|i| FileEntry {
            name: format!("{i:06}.sst"),
            size: 64 << 20,
            digest: vec![7; 16],
        })
        .collect();
    let frame = ControlFrame::Accept(Accept {
        files,
        snapshot: Default::default(),
        meta: Default::default(),
    });
    let bytes = encode(&frame);
    c.bench_function("encode manifest of 1000 files", |b| {
        b.iter(|| encode(&frame))
    });
    c.bench_function("decode manifest of 1000 files", |b| {
        b.iter(|| {
            let mut d = FrameDecoder::new(1 << 24);
            d.push(&bytes);
            d.next_frame::<ControlFrame>().unwrap()
        })
    });
    let meta = encode(&ControlFrame::Metadata(PartitionMeta::default()));
    c.bench_function("decode metadata", |b| {
        b.iter(|| {
            let mut d = FrameDecoder::new(1 << 24);
            d.push(&meta);
            d.next_frame::<ControlFrame>().unwrap()
        })
    });
}

/// The benchmark group: criterion's macro writes its function without a doc comment.
#[allow(missing_docs)]
mod group {
    use super::{codec, criterion_group, digests};
    criterion_group!(benches, digests, codec);
}
use group::benches;
criterion_main!(benches);
