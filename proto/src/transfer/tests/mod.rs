//! Every rule of a transfer, driven with simulated time: no sockets, no sleeps. The client's
//! rules in `client`, the server's in `server`; the shared fixtures and the cross-cutting
//! checks (reason names, random event sequences) here.

mod client;
mod server;

use std::time::Duration;

use super::*;
use crate::frame::*;
use crate::types::{ChecksumAlgo, PartitionMeta, SnapshotId, TableFormat};

pub(super) fn entry(name: &str, size: u64) -> FileEntry {
    FileEntry {
        name: name.into(),
        size,
        digest: vec![0; 16],
    }
}

pub(super) fn manifest() -> Vec<FileEntry> {
    vec![entry("CURRENT", 16), entry("000001.sst", 10)]
}

pub(super) fn request(version: u16) -> Request {
    Request {
        version,
        transfer_id: 7,
        store: "users".into(),
        store_version: 1,
        partition: 0,
        table_format: TableFormat::Block,
        checksum: ChecksumAlgo::Md5,
        resume: None,
    }
}

/// The snapshot the tests' servers serve.
pub(super) const SNAP: SnapshotId = SnapshotId([3; 16]);

pub(super) fn meta() -> PartitionMeta {
    PartitionMeta {
        offset: Some(42),
        version_state: None,
    }
}

pub(super) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn reject_reasons_have_stable_names() {
    for r in RejectReason::ALL {
        assert_eq!(r.as_str().parse::<RejectReason>(), Ok(r));
        assert_eq!(r.to_string(), r.as_str());
    }
    assert!("nonsense".parse::<RejectReason>().is_err());
}

#[test]
fn random_event_sequences_never_break_a_rule() {
    // The fuzz target's checks (`script`), over a fixed pseudo-random sample, so every run of
    // the unit tests covers some of what fuzzing does.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 200) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        script::run_client(&data);
        script::run_server(&data);
        script::run_fetch(&data);
    }
}
