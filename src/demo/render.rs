//! The demo's human report: what was seeded, which peer answered what, how fast, and that
//! the result matched the source.

use super::run::DemoSummary;

/// Human summary of a demo run.
pub fn render(s: &DemoSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mb = |b: u64| b as f64 / 1e6;
    let _ = writeln!(
        out,
        "source: {} records, {} SST files, {:.1} MB (seeded in {:.1} s)",
        s.seed.records,
        s.seed.sst_files,
        mb(s.seed.bytes),
        s.seed_seconds
    );
    for p in &s.peers {
        let _ = writeln!(out, "peer {}  {}", p.addr, p.role);
    }
    let _ = writeln!(out, "attempts (in the order asked):");
    for (i, a) in s.report.attempts.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {}. {:<21} {:<16} {:>9.1} MB {:>7.3} s{}",
            i + 1,
            a.peer,
            a.outcome,
            mb(a.bytes),
            a.seconds,
            a.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "fetched {} from {}: {} files, {:.1} MB in {:.2} s = {:.0} MB/s; snapshot offset {:?}",
        s.report.partition,
        s.report.peer,
        s.report.files,
        mb(s.report.bytes),
        s.report.seconds,
        mb(s.report.bytes) / s.report.seconds.max(1e-9),
        s.report.meta.offset
    );
    let _ = writeln!(
        out,
        "verified: {} keys equal to the source, metadata equal",
        s.verified_keys
    );
    let _ = writeln!(
        out,
        "caught up: {} records written after the snapshot applied, offset {:?} -> {:?} \
         ({})",
        s.catch_up.records,
        s.catch_up.from_offset,
        s.catch_up.to_offset,
        if s.kafka {
            "from Kafka"
        } else {
            "embedded log; with --kafka, from Kafka"
        }
    );
    out
}
