//! The benchmarks' source partition, seeded once per size and reused by every benchmark that
//! asks for the same size (a marker file remembers it).

use std::path::Path;

/// Seeds `records` records of 1000 B as partition 0 of `store` version 1 under `data`, unless
/// a seed of that size is there already.
pub(crate) fn seed_source(data: &Path, store: &str, records: u64) {
    let dir = data.join(format!("{store}_v1")).join("0");
    let marker = data.join(format!(".records-{records}"));
    if marker.exists() && dir.join("CURRENT").exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data).expect("source dir");
    eprintln!("seeding {records} records of 1000 B ...");
    testkit::seed::seed(&dir, quicstrap::TableFormat::Block, records, 1000, 8192).expect("seed");
    std::fs::write(&marker, b"").expect("marker");
}
