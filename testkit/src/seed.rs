//! Seeded partitions: deterministic records written the way a settled, ingested partition
//! looks on disk, so the demo, `quicstrap seed`, the tests and the benchmarks all move the
//! same kind of data — and a receiver can check any key without a copy of the source.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use serde::Serialize;

use quicstrap::store::partition::{
    apply_batch, db_options, dir_summary, write_version_state, StorageError, TableFormat,
    VersionState, META_CF,
};

/// Summary of a seeded partition, for the CLI and the demo.
#[derive(Clone, Debug, Serialize)]
pub struct SeedSummary {
    /// Records written.
    pub records: u64,
    /// Last offset written (records are numbered from 0).
    pub last_offset: u64,
    /// SST files in the partition after the flushes.
    pub sst_files: usize,
    /// Bytes of all files in the partition directory.
    pub bytes: u64,
}

/// Deterministic value for record `i`: incompressible-looking bytes derived from `i` so a
/// receiver can check every key without keeping a copy of the source.
pub fn seed_value(i: u64, value_size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(value_size);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    while out.len() < value_size {
        // xorshift64*: cheap and good enough to defeat block compression.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.truncate(value_size);
    out
}

/// Key of record `i` in a seeded partition.
pub fn seed_key(i: u64) -> Vec<u8> {
    format!("key-{i:012}").into_bytes()
}

/// Creates a source partition of `records` records of `value_size` bytes, flushed every
/// `records_per_sst` records so it spans several SST files, like a real ingested partition.
pub fn seed(
    dir: &Path,
    format: TableFormat,
    records: u64,
    value_size: usize,
    records_per_sst: u64,
) -> Result<SeedSummary, StorageError> {
    std::fs::create_dir_all(dir)?;
    // Seeding writes with background compaction off, then compacts once at the end into SST
    // files of about `records_per_sst` records each: the partition looks like a settled one
    // (several SSTs, empty L0), so a server that opens it has no compaction to run meanwhile.
    let target = (records_per_sst.max(1) * (value_size as u64 + 24)).max(64 << 10);
    let tune = |o: &mut Options| {
        // Random values do not compress: spare the CPU (and keep the seeded bytes what the
        // benchmarks have always moved).
        o.set_compression_type(rocksdb::DBCompressionType::None);
        o.set_disable_auto_compactions(true);
        o.set_target_file_size_base(target);
        o.set_max_bytes_for_level_base(target * 10);
    };
    let mut opts = db_options(format);
    tune(&mut opts);
    let descs = ["default", META_CF].map(|n| {
        let mut o = db_options(format);
        tune(&mut o);
        ColumnFamilyDescriptor::new(n, o)
    });
    let db = DB::open_cf_descriptors(&opts, dir, descs)?;
    write_version_state(
        &db,
        &VersionState {
            table_format: format,
            producer: "quicstrap seed".into(),
        },
    )?;
    const BATCH: u64 = 1_000;
    let per_sst = records_per_sst.max(1);
    let mut i = 0;
    while i < records {
        let end = (i + BATCH).min(records);
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (i..end)
            .map(|n| (seed_key(n), seed_value(n, value_size)))
            .collect();
        apply_batch(
            &db,
            pairs
                .iter()
                .map(|(k, v)| (k.as_slice(), Some(v.as_slice()))),
            end - 1,
        )?;
        if end / per_sst != i / per_sst || end == records {
            db.flush()?;
            if let Some(cf) = db.cf_handle(META_CF) {
                db.flush_cf(cf)?;
            }
        }
        i = end;
    }
    db.compact_range::<&[u8], &[u8]>(None, None);
    if let Some(cf) = db.cf_handle(META_CF) {
        db.compact_range_cf::<&[u8], &[u8]>(cf, None, None);
    }
    drop(db);
    summary(dir, records)
}

/// What a seeded partition of `records` records holds on disk.
pub fn summary(dir: &Path, records: u64) -> Result<SeedSummary, StorageError> {
    let (sst_files, bytes) = dir_summary(dir)?;
    Ok(SeedSummary {
        records,
        last_offset: records.saturating_sub(1),
        sst_files,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_values_are_deterministic_and_sized() {
        assert_eq!(seed_value(3, 100), seed_value(3, 100));
        assert_ne!(seed_value(3, 100), seed_value(4, 100));
        assert_eq!(seed_value(5, 1001).len(), 1001);
    }
}
