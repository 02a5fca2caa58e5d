//! `quicstrap seed`: a source partition of N deterministic records, to serve and fetch.

use std::path::PathBuf;

use clap::Args;

use quicstrap::store::partition::{PartitionId, TableFormat};
use testkit::seed;

use crate::error::CliError;

// The options of `quicstrap seed`.
#[derive(Args)]
pub struct SeedArgs {
    /// Root of the partition tree.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Store name.
    #[arg(long)]
    pub store: String,
    /// Store version.
    #[arg(long, default_value_t = 1)]
    pub version: u32,
    /// Partition number.
    #[arg(long, default_value_t = 0)]
    pub partition: u32,
    /// Records to write.
    #[arg(long)]
    pub records: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1000)]
    pub value_size: usize,
    /// Records per SST file.
    #[arg(long, default_value_t = 16384)]
    pub records_per_sst: u64,
    /// Table format: block or plain.
    #[arg(long, default_value = "block")]
    pub format: TableFormat,
}

/// Seeds the partition; one that already exists is left alone (exit 2).
pub fn run(a: SeedArgs) -> Result<(), CliError> {
    let id = PartitionId::new(&a.store, a.version, a.partition)
        .map_err(|e| CliError::Unusable(format!("store name: {e}")))?;
    let dir = id.dir(&a.data_dir);
    if dir.exists() {
        return Err(CliError::Unusable(format!(
            "{} already exists",
            dir.display()
        )));
    }
    let s = seed::seed(&dir, a.format, a.records, a.value_size, a.records_per_sst)
        .map_err(CliError::failed)?;
    println!(
        "seeded {} at {}: {} records, {} SST files, {} bytes, last offset {}",
        id,
        dir.display(),
        s.records,
        s.sst_files,
        s.bytes,
        s.last_offset
    );
    Ok(())
}
