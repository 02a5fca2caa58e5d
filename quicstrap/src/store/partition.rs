//! Partition storage: where a partition lives on disk and what it carries inside.
//!
//! A partition is one RocksDB instance at `<root>/<store>_v<version>/<partition>/`. Its
//! ingestion offset and store-version state live in the same DB, in the column family
//! [`META_CF`], written in the same `WriteBatch` as the data. A checkpoint of the DB therefore
//! carries exactly the offset of the data it holds, with no side file to race
//! (docs/design.md, invariant *offset never ahead of data*).

use std::fmt;
use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, Options, PlainTableFactoryOptions, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::protocol::names;
pub use crate::protocol::{PartitionMeta, TableFormat, VersionState};

/// Column family holding the ingestion offset and the store-version state.
pub const META_CF: &str = "quicstrap_meta";
const OFFSET_KEY: &[u8] = b"offset";
const VERSION_STATE_KEY: &[u8] = b"version_state";

/// Names one partition of one store version: the unit that is transferred.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionId {
    /// Store name, restricted to [`names::validate_store`]'s safe set.
    pub store: String,
    /// Store version; a new push makes a new version.
    pub version: u32,
    /// Partition number, also the Kafka partition number.
    pub partition: u32,
}

impl PartitionId {
    /// Builds an id, refusing store names that could escape the data root.
    pub fn new(store: &str, version: u32, partition: u32) -> Result<Self, names::NameError> {
        names::validate_store(store)?;
        Ok(Self {
            store: store.to_owned(),
            version,
            partition,
        })
    }

    /// `<store>_v<version>`: the store-version directory and Kafka topic name.
    pub fn store_version_dir(&self) -> String {
        format!("{}_v{}", self.store, self.version)
    }

    /// The partition directory under `root`.
    pub fn dir(&self, root: &Path) -> PathBuf {
        root.join(self.store_version_dir())
            .join(self.partition.to_string())
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_v{}/{}", self.store, self.version, self.partition)
    }
}

/// Errors of the local partition store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB refused an operation (open, write, checkpoint).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A filesystem operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The meta column family holds bytes that do not decode.
    #[error("corrupt metadata in partition: {0}")]
    CorruptMeta(String),
}

/// Block-based table `format_version` of every SST quicstrap writes: 5 is the newest that
/// RocksDB 8.0 reads (6 needs 8.6, and 11.x writes 7 by default), so a received or
/// ingested partition stays readable by the older RocksDB a node may run. Reading accepts
/// every version.
pub const SST_FORMAT_VERSION: i32 = 5;

/// RocksDB options for a partition of `format`. Compression is RocksDB's default (snappy);
/// every codec is compiled in, so a database written with any of them opens.
pub fn db_options(format: TableFormat) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    if format == TableFormat::Block {
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_format_version(SST_FORMAT_VERSION);
        // Index and filter blocks in the block cache, not on the heap beside each open table:
        // otherwise an open partition holds ~13 MiB per GB of data for as long as it is open,
        // and a server's memory grows with the size of what it serves.
        table.set_cache_index_and_filter_blocks(true);
        opts.set_block_based_table_factory(&table);
    }
    if format == TableFormat::Plain {
        opts.set_allow_mmap_reads(true);
        opts.set_plain_table_factory(&PlainTableFactoryOptions {
            user_key_length: 0,
            bloom_bits_per_key: 10,
            // 0: total-order (binary search) index, no prefix extractor needed.
            hash_table_ratio: 0.0,
            index_sparseness: 16,
            huge_page_tlb_size: 0,
            encoding_type: rocksdb::KeyEncodingType::Plain,
            full_scan_mode: false,
            store_index_in_file: false,
        });
    }
    opts
}

/// Opens (creating if needed) a partition DB for writing, with the meta column family.
pub fn open(dir: &Path, format: TableFormat) -> Result<DB, StorageError> {
    open_with(dir, format, |_| {})
}

/// [`open`] with every column family's options adjusted by `tune`: an embedding node's own
/// tuning (write buffers, background threads), or a test forcing RocksDB into a corner such
/// as a write stall.
pub fn open_with(
    dir: &Path,
    format: TableFormat,
    tune: impl Fn(&mut Options),
) -> Result<DB, StorageError> {
    let options = || {
        let mut o = db_options(format);
        tune(&mut o);
        o
    };
    let opts = options();
    let mut cfs: Vec<String> = DB::list_cf(&opts, dir).unwrap_or_default();
    if !cfs.iter().any(|c| c == "default") {
        cfs.push("default".into());
    }
    if !cfs.iter().any(|c| c == META_CF) {
        cfs.push(META_CF.into());
    }
    let descs = cfs
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, options()));
    Ok(DB::open_cf_descriptors(&opts, dir, descs)?)
}

/// Opens a partition (or checkpoint) read-only, whatever column families it has.
pub fn open_read_only(dir: &Path, format: TableFormat) -> Result<DB, StorageError> {
    let mut opts = db_options(format);
    // Open table files when read, not all at once: a read-only open is for a few keys (the
    // offset record, a check), and opening every SST of a 10 GB partition up front — index
    // blocks and properties of ~160 files — held a snapshot's first byte and every commit
    // back by most of a second.
    opts.set_max_open_files(64);
    opts.set_skip_stats_update_on_db_open(true);
    // Every column family with the partition's own table options: opened with defaults, a
    // PLAIN_TABLE file would be read as block-based and fail.
    let descs: Vec<ColumnFamilyDescriptor> = DB::list_cf(&opts, dir)?
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, db_options(format)))
        .collect();
    Ok(DB::open_cf_descriptors_read_only(&opts, dir, descs, false)?)
}

/// Reads the offset record and version state; a DB without the meta column family gives
/// an empty [`PartitionMeta`] ("no offset").
pub fn read_meta(db: &DB) -> Result<PartitionMeta, StorageError> {
    let Some(cf) = db.cf_handle(META_CF) else {
        return Ok(PartitionMeta::default());
    };
    let offset = match db.get_cf(cf, OFFSET_KEY)? {
        None => None,
        Some(bytes) => {
            let arr: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| StorageError::CorruptMeta("offset is not 8 bytes".into()))?;
            Some(u64::from_be_bytes(arr))
        }
    };
    let version_state = match db.get_cf(cf, VERSION_STATE_KEY)? {
        None => None,
        Some(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| StorageError::CorruptMeta(format!("version state: {e}")))?,
        ),
    };
    Ok(PartitionMeta {
        offset,
        version_state,
    })
}

/// One record to apply: a put, or a delete when `value` is `None` (a Kafka tombstone).
pub type Record<'a> = (&'a [u8], Option<&'a [u8]>);

/// Applies `records` and the offset of the last one in a single `WriteBatch`, so the data and
/// its offset can never disagree, not even across a crash.
pub fn apply_batch<'a>(
    db: &DB,
    records: impl IntoIterator<Item = Record<'a>>,
    last_offset: u64,
) -> Result<(), StorageError> {
    let cf = db
        .cf_handle(META_CF)
        .ok_or_else(|| StorageError::CorruptMeta("meta column family missing".into()))?;
    let mut batch = WriteBatch::default();
    for (key, value) in records {
        match value {
            Some(v) => batch.put(key, v),
            None => batch.delete(key),
        }
    }
    batch.put_cf(cf, OFFSET_KEY, last_offset.to_be_bytes());
    db.write(batch)?;
    Ok(())
}

/// Records the store-version state (written once, when the partition is created).
pub fn write_version_state(db: &DB, state: &VersionState) -> Result<(), StorageError> {
    let cf = db
        .cf_handle(META_CF)
        .ok_or_else(|| StorageError::CorruptMeta("meta column family missing".into()))?;
    let bytes = serde_json::to_vec(state).map_err(|e| StorageError::CorruptMeta(e.to_string()))?;
    db.put_cf(cf, VERSION_STATE_KEY, bytes)?;
    Ok(())
}

/// SST files and total bytes of the files in a partition directory.
pub fn dir_summary(dir: &Path) -> Result<(usize, u64), StorageError> {
    let mut sst_files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            bytes += meta.len();
            if entry.file_name().to_string_lossy().ends_with(".sst") {
                sst_files += 1;
            }
        }
    }
    Ok((sst_files, bytes))
}

/// Why two partitions are not the same, or could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// Either side could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data differs, first at this key (lossy UTF-8).
    #[error("first difference at key {0}")]
    Key(String),
    /// One side has more keys than the other.
    #[error("different key counts")]
    KeyCount,
    /// The offsets or version states differ.
    #[error("metadata differs: {0:?} vs {1:?}")]
    Meta(PartitionMeta, PartitionMeta),
}

/// Compares two partitions (or checkpoints) key by key, then their metadata: the proof that a
/// fetched partition is its source. Returns the keys compared.
pub fn verify_equal(a: &Path, b: &Path) -> Result<u64, CompareError> {
    let da = open_read_only(a, TableFormat::Block)?;
    let db = open_read_only(b, TableFormat::Block)?;
    let mut n = 0u64;
    let mut ia = da.iterator(rocksdb::IteratorMode::Start);
    let mut ib = db.iterator(rocksdb::IteratorMode::Start);
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => break,
            (Some(x), Some(y)) => {
                let (ka, va) = x.map_err(StorageError::from)?;
                let (kb, vb) = y.map_err(StorageError::from)?;
                if ka != kb || va != vb {
                    return Err(CompareError::Key(String::from_utf8_lossy(&ka).into_owned()));
                }
                n += 1;
            }
            _ => return Err(CompareError::KeyCount),
        }
    }
    let (ma, mb) = (read_meta(&da)?, read_meta(&db)?);
    if ma != mb {
        return Err(CompareError::Meta(ma, mb));
    }
    Ok(n)
}

/// Partitions for the engine's own unit tests. The seed generator of the integration tests,
/// the benchmarks and the demo (`testkit::seed`) is built on this crate, so it cannot serve
/// the crate's unit tests; this is the little they need.
#[cfg(test)]
pub(crate) mod fixture {
    use rand::{RngCore, SeedableRng};

    use super::*;

    /// Key of record `i`.
    pub(crate) fn key(i: u64) -> Vec<u8> {
        format!("key-{i:012}").into_bytes()
    }

    /// Value of record `i`: random-looking, so the files hold about what was written.
    pub(crate) fn value(i: u64, size: usize) -> Vec<u8> {
        let mut v = vec![0; size];
        rand::rngs::StdRng::seed_from_u64(i).fill_bytes(&mut v);
        v
    }

    /// A partition at `dir` of `records` records of `value_size` bytes, flushed every
    /// `per_flush` records, then compacted once: settled, so nothing changes its files later.
    pub(crate) fn fill(
        dir: &Path,
        format: TableFormat,
        records: u64,
        value_size: usize,
        per_flush: u64,
    ) {
        std::fs::create_dir_all(dir).unwrap();
        let db = open(dir, format).unwrap();
        let state = VersionState {
            table_format: format,
            producer: "unit test".into(),
        };
        write_version_state(&db, &state).unwrap();
        let mut i = 0;
        while i < records {
            let end = (i + per_flush.max(1)).min(records);
            let pairs: Vec<_> = (i..end).map(|n| (key(n), value(n, value_size))).collect();
            let batch = pairs.iter().map(|(k, v)| (&k[..], Some(&v[..])));
            apply_batch(&db, batch, end - 1).unwrap();
            db.flush().unwrap();
            i = end;
        }
        db.compact_range::<&[u8], &[u8]>(None, None);
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{fill, key, value};
    use super::*;

    #[test]
    fn offset_travels_with_the_data_in_one_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open(tmp.path(), TableFormat::Block).unwrap();
        apply_batch(&db, [(&b"a"[..], Some(&b"1"[..]))], 7).unwrap();
        apply_batch(&db, [(&b"a"[..], None)], 8).unwrap();
        let meta = read_meta(&db).unwrap();
        assert_eq!(meta.offset, Some(8));
        assert_eq!(db.get(b"a").unwrap(), None);
        // A checkpoint carries exactly the offset of its own data.
        let cp = tmp.path().join("cp");
        rocksdb::checkpoint::Checkpoint::new(&db)
            .unwrap()
            .create_checkpoint(&cp)
            .unwrap();
        apply_batch(&db, [(&b"b"[..], Some(&b"2"[..]))], 9).unwrap();
        let ro = open_read_only(&cp, TableFormat::Block).unwrap();
        assert_eq!(read_meta(&ro).unwrap().offset, Some(8));
        assert_eq!(ro.get(b"b").unwrap(), None);
    }

    #[test]
    fn a_db_without_meta_family_has_no_offset() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut o = Options::default();
            o.create_if_missing(true);
            let db = DB::open(&o, tmp.path()).unwrap();
            db.put(b"k", b"v").unwrap();
        }
        let db = open_read_only(tmp.path(), TableFormat::Block).unwrap();
        assert_eq!(read_meta(&db).unwrap(), PartitionMeta::default());
    }

    #[test]
    fn plain_table_partition_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        fill(tmp.path(), TableFormat::Plain, 3_000, 100, 1_000);
        let db = open_read_only(tmp.path(), TableFormat::Plain).unwrap();
        assert_eq!(db.get(key(2_999)).unwrap(), Some(value(2_999, 100)));
        let meta = read_meta(&db).unwrap();
        assert_eq!(meta.offset, Some(2_999));
        assert_eq!(
            meta.version_state.map(|v| v.table_format),
            Some(TableFormat::Plain)
        );
    }
}
