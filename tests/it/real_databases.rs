//! Databases quicstrap did not write: one per compression type RocksDB offers, written here
//! with options quicstrap never chooses (small blocks, small memtables, three column
//! families, deletes). Served by a real server and fetched over real QUIC, each must arrive
//! equal key by key in every column family, and open with the options the node runs.

use std::path::Path;

use crate::common::*;
use quicstrap::store::partition::{self, TableFormat};
use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Options, DB};

const CFS: [&str; 3] = ["default", "users", "events"];
const KEYS: u32 = 4_000;

/// Every compression type, its name, and how an SST's `rocksdb.compression` property
/// records it (RocksDB 11: `BuiltinV2;<type id>;`, and an empty list for none).
const TYPES: [(DBCompressionType, &str, &str); 7] = [
    (DBCompressionType::None, "none", ";;"),
    (DBCompressionType::Snappy, "snappy", "BuiltinV2;01;"),
    (DBCompressionType::Zlib, "zlib", "BuiltinV2;02;"),
    (DBCompressionType::Bz2, "bz2", "BuiltinV2;03;"),
    (DBCompressionType::Lz4, "lz4", "BuiltinV2;04;"),
    (DBCompressionType::Lz4hc, "lz4hc", "BuiltinV2;05;"),
    (DBCompressionType::Zstd, "zstd", "BuiltinV2;07;"),
];

fn foreign_options(compression: DBCompressionType) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(compression);
    opts.set_bottommost_compression_type(compression);
    // Many small SSTs: a 256 KiB memtable, 4 KiB blocks.
    opts.set_write_buffer_size(256 << 10);
    let mut table = BlockBasedOptions::default();
    table.set_block_size(4 << 10);
    opts.set_block_based_table_factory(&table);
    opts
}

fn value(cf: &str, k: u32) -> Vec<u8> {
    // Compressible but not constant, so every codec has real work.
    format!("{cf}:{k}:").repeat(12).into_bytes()
}

/// Writes a database the way another program would; returns what codec each of its SSTs
/// records, to show the codec really was used.
fn write_foreign(dir: &Path, compression: DBCompressionType) -> Vec<&'static str> {
    let opts = foreign_options(compression);
    let descs = CFS
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(*n, foreign_options(compression)));
    let db = DB::open_cf_descriptors(&opts, dir, descs).unwrap();
    for cf in CFS {
        let h = db.cf_handle(cf).unwrap();
        for k in 0..KEYS {
            db.put_cf(h, format!("{cf}-{k:06}"), value(cf, k)).unwrap();
        }
        // Tombstones too.
        for k in (0..KEYS).step_by(7) {
            db.delete_cf(h, format!("{cf}-{k:06}")).unwrap();
        }
        db.flush_cf(h).unwrap();
    }
    drop(db);
    // Each SST records its codec in its (uncompressed) properties block, after the key
    // `rocksdb.compression` (stored as the suffix `ression` past the shared prefix).
    let mut recorded = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".sst") {
            let bytes = std::fs::read(e.path()).unwrap();
            for (_, _, tag) in TYPES {
                let needle = format!("ression{tag}");
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    recorded.push(tag);
                }
            }
        }
    }
    recorded
}

/// A column family's name and every key and value in it, in order.
type Family = (String, Vec<(Box<[u8]>, Box<[u8]>)>);

/// Every key and value of every column family the foreign writer made, in order.
fn contents(dir: &Path) -> Vec<Family> {
    let db = partition::open_read_only(dir, TableFormat::Block).unwrap();
    CFS.iter()
        .map(|cf| {
            let h = db.cf_handle(cf).unwrap();
            let kvs = db
                .iterator_cf(h, rocksdb::IteratorMode::Start)
                .map(Result::unwrap)
                .collect();
            (cf.to_string(), kvs)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_type_round_trips_in_every_column_family() {
    let _turn = turn(Needs::Nothing).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let server = server(src.path(), |_| {}).await;
    let f = fetcher(|_| {});
    for (n, (compression, name, tag)) in TYPES.into_iter().enumerate() {
        let id = id(n as u32);
        let recorded = write_foreign(&id.dir(src.path()), compression);
        assert!(
            recorded.len() >= 3 && recorded.iter().all(|r| *r == tag),
            "{name}: the writer's SSTs record {recorded:?}, not only {tag}"
        );
        let expected = contents(&id.dir(src.path()));
        assert_eq!(expected.len(), 3);
        let live = KEYS as usize - (KEYS as usize).div_ceil(7);
        for (cf, kvs) in &expected {
            assert_eq!(kvs.len(), live, "{name}: {cf}");
        }
        let report = f
            .fetch(&id, &[peer(&server)], dst.path())
            .await
            .unwrap_or_else(|e| panic!("{name}: fetch failed: {e}"));
        assert_eq!(report.attempts.len(), 1, "{name}");
        // Opened by the node's own code with the node's own options, equal everywhere.
        assert!(
            contents(&id.dir(dst.path())) == expected,
            "{name}: the fetched database differs from the source"
        );
        // And writable by the node, as a partition it will ingest into.
        let db = partition::open(&id.dir(dst.path()), TableFormat::Block).unwrap();
        db.put(b"after", b"transfer").unwrap();
    }
    server.shutdown().await;
}

/// The block-based `format_version` an SST records (its properties block stores the key
/// `rocksdb.format.version` as the suffix `ormat.version`, then the varint value).
fn format_versions(dir: &Path) -> Vec<u8> {
    let needle = b"ormat.version";
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            let at = bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("a format version property");
            bytes[at + needle.len()]
        })
        .collect()
}

#[test]
fn sst_files_quicstrap_writes_stay_readable_by_rocksdb_8() {
    let _turn = turn_blocking(Needs::Nothing);
    let dir = tempfile::tempdir().unwrap();
    // Seeded (the benchmarks' and demo's partitions) ...
    testkit::seed::seed(dir.path(), TableFormat::Block, 20_000, 100, 5_000).unwrap();
    let seeded = format_versions(dir.path());
    assert!(seeded.len() >= 3);
    // ... and written by ingestion into a partition the node opened.
    let db = partition::open(dir.path(), TableFormat::Block).unwrap();
    db.put(b"more", b"data").unwrap();
    db.flush().unwrap();
    drop(db);
    let all = format_versions(dir.path());
    assert!(all.len() > seeded.len());
    assert!(
        all.iter()
            .all(|v| *v == partition::SST_FORMAT_VERSION as u8),
        "format versions {all:?}, want {} (RocksDB 8.0 reads up to 5)",
        partition::SST_FORMAT_VERSION
    );
    // A database written with RocksDB 11's own default is newer: the check sees it.
    let foreign = tempfile::tempdir().unwrap();
    let other = DB::open(&foreign_options(DBCompressionType::None), foreign.path()).unwrap();
    other.put(b"k", b"v").unwrap();
    other.flush().unwrap();
    drop(other);
    assert!(format_versions(foreign.path()).iter().all(|v| *v > 5));
}
