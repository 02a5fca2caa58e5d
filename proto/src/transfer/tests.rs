//! Every rule of a transfer, driven with simulated time: no sockets, no sleeps.

use std::time::{Duration, Instant};

use super::*;
use crate::codec::{encode, DecodeError, LEN_PREFIX};
use crate::frame::*;
use crate::types::{ChecksumAlgo, PartitionMeta, TableFormat};

fn entry(name: &str, size: u64) -> FileEntry {
    FileEntry {
        name: name.into(),
        size,
        digest: vec![0; 16],
    }
}

fn manifest() -> Vec<FileEntry> {
    vec![entry("CURRENT", 16), entry("000001.sst", 10)]
}

fn request(version: u16) -> Request {
    Request {
        version,
        transfer_id: 7,
        store: "users".into(),
        store_version: 1,
        partition: 0,
        table_format: TableFormat::Block,
        checksum: ChecksumAlgo::Md5,
    }
}

fn meta() -> PartitionMeta {
    PartitionMeta {
        offset: Some(42),
        version_state: None,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ---- client ----------------------------------------------------------------------------

const LIMITS: ClientLimits = ClientLimits {
    idle: Duration::from_secs(10),
    complete_grace: Duration::from_secs(2),
    closed_grace: Duration::from_secs(1),
    max_files: 100,
};

fn drain(c: &mut ClientTransfer) -> Vec<ClientAction> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

/// A client that has sent its request and had `manifest()` accepted.
fn accepted(t0: Instant) -> ClientTransfer {
    let mut c = ClientTransfer::new(request(crate::PROTOCOL_VERSION), LIMITS, t0);
    assert!(matches!(
        drain(&mut c).as_slice(),
        [ClientAction::Send(ControlFrame::Request(_))]
    ));
    c.handle_frame(ControlFrame::Accept(Accept { files: manifest() }), t0);
    assert_eq!(drain(&mut c), vec![ClientAction::Accepted]);
    c
}

fn header(index: u32) -> FileHeader {
    FileHeader {
        transfer_id: 7,
        index,
    }
}

fn failure(c: &mut ClientTransfer) -> Option<ClientFailure> {
    drain(c).into_iter().find_map(|a| match a {
        ClientAction::Fail(f) => Some(f),
        _ => None,
    })
}

fn protocol_failure(c: &mut ClientTransfer, needle: &str) {
    match failure(c) {
        Some(ClientFailure::Protocol(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a protocol failure with {needle:?}, got {other:?}"),
    }
    assert!(c.is_ended());
}

/// Receives both files and validates them.
fn receive_all(c: &mut ClientTransfer, now: Instant) {
    for i in 0..2 {
        c.handle_file_stream(header(i), now);
        assert!(matches!(
            drain(c).as_slice(),
            [ClientAction::ReceiveFile { index, .. }] if *index == i
        ));
        c.handle_file_done(i, 5, now);
    }
}

#[test]
fn preparing_heartbeats_are_skipped_and_keep_the_wait_alive() {
    let t0 = Instant::now();
    let mut c = ClientTransfer::new(request(1), LIMITS, t0);
    drain(&mut c);
    // Thirty seconds of heartbeats, each inside the 10 s idle limit.
    for s in (5..=30).step_by(5) {
        let now = t0 + secs(s as f64);
        c.handle_timeout(now);
        c.handle_frame(ControlFrame::Preparing, now);
        assert!(drain(&mut c).is_empty(), "a heartbeat is no answer");
    }
    c.handle_frame(
        ControlFrame::Accept(Accept { files: manifest() }),
        t0 + secs(31.0),
    );
    assert_eq!(drain(&mut c), vec![ClientAction::Accepted]);
    assert_eq!(c.files().len(), 2);
}

#[test]
fn no_answer_within_the_idle_limit_is_an_idle_failure() {
    let t0 = Instant::now();
    let mut c = ClientTransfer::new(request(1), LIMITS, t0);
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + LIMITS.idle));
    c.handle_timeout(t0 + secs(9.9));
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(t0 + LIMITS.idle);
    assert_eq!(failure(&mut c), Some(ClientFailure::Idle(LIMITS.idle)));
}

#[test]
fn a_reject_is_typed_and_anything_else_first_is_a_violation() {
    let t0 = Instant::now();
    let mut c = ClientTransfer::new(request(1), LIMITS, t0);
    c.handle_frame(
        ControlFrame::Reject(Reject {
            reason: RejectReason::Busy,
            message: "full".into(),
        }),
        t0,
    );
    assert_eq!(
        failure(&mut c),
        Some(ClientFailure::Rejected {
            reason: RejectReason::Busy,
            message: "full".into()
        })
    );
    for first in [
        ControlFrame::Complete,
        ControlFrame::Metadata(meta()),
        ControlFrame::Done,
    ] {
        let mut c = ClientTransfer::new(request(1), LIMITS, t0);
        c.handle_frame(first, t0);
        protocol_failure(&mut c, "expected Accept or Reject");
    }
    let mut c = ClientTransfer::new(request(1), LIMITS, t0);
    c.handle_control_end(t0);
    protocol_failure(&mut c, "control stream ended");
}

#[test]
fn manifests_with_path_tricks_or_lies_are_refused() {
    let ok = manifest();
    check_manifest(&ok, 100).unwrap();
    for bad in [
        "../CURRENT",
        "/etc/passwd",
        "a/b",
        "..",
        ".hidden",
        RECEIPT_FILE,
    ] {
        let mut m = ok.clone();
        m.push(entry(bad, 1));
        assert!(check_manifest(&m, 100).is_err(), "{bad:?} accepted");
    }
    let mut twice = ok.clone();
    twice.push(entry("000001.sst", 10));
    assert_eq!(
        check_manifest(&twice, 100),
        Err(ManifestError::Duplicate("000001.sst".into()))
    );
    assert_eq!(
        check_manifest(&[entry("000001.sst", 1)], 100),
        Err(ManifestError::NoCurrent)
    );
    let huge = vec![entry("CURRENT", u64::MAX), entry("x.sst", 2)];
    assert_eq!(check_manifest(&huge, 100), Err(ManifestError::SizeOverflow));
    assert_eq!(check_manifest(&ok, 1), Err(ManifestError::TooManyFiles(2)));

    // The machine refuses such an Accept before asking for any file.
    let t0 = Instant::now();
    let mut c = ClientTransfer::new(request(1), LIMITS, t0);
    drain(&mut c);
    c.handle_frame(ControlFrame::Accept(Accept { files: twice }), t0);
    protocol_failure(&mut c, "listed twice");
}

#[test]
fn file_streams_outside_the_manifest_or_sent_twice_are_violations() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.handle_file_stream(header(2), t0);
    protocol_failure(&mut c, "index 2 not in the manifest");

    let mut c = accepted(t0);
    c.handle_file_stream(header(0), t0);
    drain(&mut c);
    c.handle_file_stream(header(0), t0);
    protocol_failure(&mut c, "sent twice");

    let mut c = ClientTransfer::new(request(1), LIMITS, t0);
    drain(&mut c);
    c.handle_file_stream(header(0), t0);
    protocol_failure(&mut c, "before Accept");
}

#[test]
fn a_done_report_for_a_file_never_handed_out_counts_for_nothing() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.handle_file_done(0, 5, t0);
    c.handle_file_done(1, 5, t0);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    c.handle_frame(ControlFrame::Complete, t0);
    assert!(
        drain(&mut c).is_empty(),
        "committed files that never arrived"
    );
}

#[test]
fn commit_comes_only_after_every_file_metadata_and_complete() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    c.handle_file_stream(header(0), t0);
    drain(&mut c);
    c.handle_file_done(0, 16, t0);
    c.handle_frame(ControlFrame::Complete, t0);
    assert!(drain(&mut c).is_empty(), "one file is still missing");
    c.handle_file_stream(header(1), t0);
    drain(&mut c);
    // The same file reported twice is counted once.
    c.handle_file_done(0, 16, t0);
    assert!(drain(&mut c).is_empty());
    c.handle_file_done(1, 10, t0);
    assert_eq!(drain(&mut c), vec![ClientAction::Commit(meta())]);
    assert_eq!(c.bytes(), 26);
    // After the commit: Done, then the stream is finished; nothing else.
    c.handle_committed(Ok(()));
    assert_eq!(
        drain(&mut c),
        vec![
            ClientAction::Send(ControlFrame::Done),
            ClientAction::FinishSend
        ]
    );
    c.abort("late".into());
    assert!(drain(&mut c).is_empty(), "a second goodbye");
}

#[test]
fn complete_without_metadata_or_metadata_after_complete_are_violations() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    receive_all(&mut c, t0);
    c.handle_frame(ControlFrame::Complete, t0);
    protocol_failure(&mut c, "Complete without Metadata");

    let mut c = accepted(t0);
    c.handle_frame(ControlFrame::Complete, t0);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    protocol_failure(&mut c, "unexpected frame Metadata");

    let mut c = accepted(t0);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    protocol_failure(&mut c, "unexpected frame Metadata");

    let mut c = accepted(t0);
    c.handle_frame(ControlFrame::Preparing, t0);
    protocol_failure(&mut c, "unexpected frame Preparing");

    let mut c = accepted(t0);
    c.handle_control_end(t0);
    protocol_failure(&mut c, "ended before Complete");
}

#[test]
fn the_control_stream_may_end_after_complete() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    c.handle_frame(ControlFrame::Complete, t0);
    c.handle_control_end(t0);
    assert!(!c.wants_control());
    receive_all(&mut c, t0 + secs(0.5));
    assert_eq!(drain(&mut c), vec![ClientAction::Commit(meta())]);
}

#[test]
fn file_streams_may_trail_complete_by_the_grace_period_only() {
    let t0 = Instant::now();
    // Within the grace period: fine.
    let mut c = accepted(t0);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    c.handle_frame(ControlFrame::Complete, t0);
    assert_eq!(c.poll_timeout(), Some(t0 + LIMITS.complete_grace));
    c.handle_timeout(t0 + secs(1.9));
    assert!(drain(&mut c).is_empty());
    receive_all(&mut c, t0 + secs(1.9));
    assert_eq!(drain(&mut c), vec![ClientAction::Commit(meta())]);

    // A file stream still missing at the end of it was never sent, whatever else arrives.
    let mut c = accepted(t0);
    c.handle_file_stream(header(0), t0);
    drain(&mut c);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    c.handle_frame(ControlFrame::Complete, t0);
    c.handle_file_progress(t0 + secs(1.5));
    c.handle_timeout(t0 + LIMITS.complete_grace);
    protocol_failure(&mut c, "Complete before every file was sent");
}

#[test]
fn progress_of_any_kind_resets_the_idle_clock() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.handle_file_stream(header(0), t0);
    drain(&mut c);
    let mut now = t0;
    for _ in 0..10 {
        now += secs(9.0);
        c.handle_file_progress(now);
        c.handle_timeout(now);
    }
    assert!(
        drain(&mut c).is_empty(),
        "a slow, steady transfer is not idle"
    );
    assert_eq!(c.poll_timeout(), Some(now + LIMITS.idle));
    c.handle_timeout(now + LIMITS.idle);
    assert_eq!(failure(&mut c), Some(ClientFailure::Idle(LIMITS.idle)));
}

#[test]
fn a_closed_connection_fails_after_its_short_grace_not_the_idle_limit() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.handle_file_stream(header(0), t0);
    drain(&mut c);
    c.handle_connection_closed();
    // Draining bytes still count.
    c.handle_file_progress(t0 + secs(0.8));
    c.handle_timeout(t0 + secs(1.5));
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(t0 + secs(1.8)));
    c.handle_timeout(t0 + secs(1.8));
    assert_eq!(failure(&mut c), Some(ClientFailure::ConnectionClosed));
}

#[test]
fn a_failure_asks_for_cleanup_first_and_the_abort_goes_out_once() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.handle_file_stream(header(0), t0);
    // The failure drops the pending ReceiveFile: nothing more to start.
    c.handle_file_stream(header(5), t0);
    assert_eq!(drain(&mut c).len(), 1, "only the failure");
    c.abort("protocol violation".into());
    assert_eq!(
        drain(&mut c),
        vec![
            ClientAction::Send(ControlFrame::Abort {
                reason: "protocol violation".into()
            }),
            ClientAction::FinishSend
        ]
    );
    c.abort("again".into());
    assert!(drain(&mut c).is_empty());
    // Ended: nothing moves it any more.
    c.handle_frame(ControlFrame::Complete, t0);
    c.handle_timeout(t0 + secs(100.0));
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn a_failed_commit_tells_the_server_abort() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    receive_all(&mut c, t0);
    c.handle_frame(ControlFrame::Complete, t0);
    drain(&mut c);
    // No timeout while the commit runs: a slow disk is not a slow peer.
    assert_eq!(c.poll_timeout(), None);
    c.handle_committed(Err("disk full".into()));
    assert_eq!(
        drain(&mut c),
        vec![
            ClientAction::Send(ControlFrame::Abort {
                reason: "disk full".into()
            }),
            ClientAction::FinishSend
        ]
    );
}

// ---- server ----------------------------------------------------------------------------

const SERVER: ServerLimits = ServerLimits {
    table_format: TableFormat::Block,
    request_timeout: Duration::from_secs(10),
    idle: Duration::from_secs(8),
    partition_timeout: Duration::from_secs(3600),
};

fn sdrain(s: &mut ServerTransfer) -> Vec<ServerAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn payload(frame: &ControlFrame) -> Vec<u8> {
    encode(frame)[LEN_PREFIX..].to_vec()
}

/// The rejection a request gets, with its preceding `StopReading`.
fn refusal(raw: Option<&[u8]>) -> (RejectReason, String) {
    let mut s = ServerTransfer::new(SERVER, Instant::now());
    s.handle_request(raw);
    refused(&mut s, true)
}

fn refused(s: &mut ServerTransfer, stop_reading: bool) -> (RejectReason, String) {
    let actions = sdrain(s);
    let (reject, rest) = if stop_reading {
        assert_eq!(
            actions.first(),
            Some(&ServerAction::StopReading),
            "{actions:?}"
        );
        (&actions[1], &actions[2..])
    } else {
        (&actions[0], &actions[1..])
    };
    let ServerAction::Send(ControlFrame::Reject(Reject { reason, message })) = reject else {
        panic!("expected a Reject, got {actions:?}");
    };
    assert_eq!(
        rest,
        [
            ServerAction::FinishSend,
            ServerAction::End(ServerEnd::Rejected(*reason))
        ]
    );
    (*reason, message.clone())
}

/// A server transfer that leased its snapshot at `t0`.
fn leased(t0: Instant) -> ServerTransfer {
    let mut s = ServerTransfer::new(SERVER, t0);
    s.handle_request(Some(&payload(&ControlFrame::Request(request(1)))));
    assert!(matches!(
        sdrain(&mut s).as_slice(),
        [ServerAction::Lease(r)] if r.transfer_id == 7
    ));
    s.handle_leased(t0);
    s
}

/// A server transfer pushing files since `t0`.
fn pushing(t0: Instant) -> ServerTransfer {
    let mut s = leased(t0);
    s.handle_manifest(manifest(), t0);
    assert_eq!(
        sdrain(&mut s),
        vec![
            ServerAction::Send(ControlFrame::Accept(Accept { files: manifest() })),
            ServerAction::PushFiles
        ]
    );
    s
}

#[test]
fn requests_are_validated_before_anything_is_leased() {
    let (r, m) = refusal(Some(&payload(&ControlFrame::Request(request(9)))));
    assert_eq!(r, RejectReason::UnsupportedVersion);
    assert!(m.contains("version 9"), "{m}");

    let mut bad_store = request(1);
    bad_store.store = "../etc".into();
    let (r, m) = refusal(Some(&payload(&ControlFrame::Request(bad_store))));
    assert_eq!(
        (r, m.starts_with("store name")),
        (RejectReason::BadRequest, true)
    );

    let mut plain = request(1);
    plain.table_format = TableFormat::Plain;
    let (r, m) = refusal(Some(&payload(&ControlFrame::Request(plain))));
    assert_eq!(r, RejectReason::FormatMismatch);
    assert_eq!(m, "requested plain but this peer serves block");

    let (r, m) = refusal(Some(&payload(&ControlFrame::Done)));
    assert_eq!(
        (r, m.as_str()),
        (RejectReason::BadRequest, "expected a request, got Done")
    );

    let (r, m) = refusal(Some(&[0xff, 0xff, 0xff]));
    assert_eq!(r, RejectReason::BadRequest);
    assert!(m.starts_with("malformed request"), "{m}");

    let (r, m) = refusal(None);
    assert_eq!((r, m.as_str()), (RejectReason::BadRequest, "stream ended"));
}

#[test]
fn a_newer_request_that_does_not_decode_is_told_its_version_is_unsupported() {
    // A future layout: version 2, then fields this build does not know.
    let mut raw = payload(&ControlFrame::Request(request(2)));
    raw.truncate(3);
    let (r, m) = refusal(Some(&raw));
    assert_eq!(r, RejectReason::UnsupportedVersion);
    assert!(m.contains("version 2"), "{m}");
    // Our own version that does not decode is just malformed.
    let mut raw = payload(&ControlFrame::Request(request(1)));
    raw.truncate(3);
    assert_eq!(refusal(Some(&raw)).0, RejectReason::BadRequest);
}

#[test]
fn an_unreadable_or_late_request_is_a_bad_request() {
    let mut s = ServerTransfer::new(SERVER, Instant::now());
    s.handle_request_error(
        Some(&DecodeError::TooLarge {
            len: 1 << 20,
            max: 65536,
        }),
        "ignored".into(),
    );
    let (r, m) = refused(&mut s, true);
    assert_eq!(r, RejectReason::BadRequest);
    assert_eq!(m, "frame of 1048576 bytes over the 65536 limit");

    let t0 = Instant::now();
    let mut s = ServerTransfer::new(SERVER, t0);
    assert_eq!(s.poll_timeout(), Some(t0 + SERVER.request_timeout));
    s.handle_timeout(t0 + secs(9.0));
    assert!(sdrain(&mut s).is_empty());
    s.handle_timeout(t0 + SERVER.request_timeout);
    assert_eq!(refused(&mut s, true).1, "no request in time");
}

#[test]
fn a_refused_lease_is_a_typed_reject_that_keeps_reading_nothing() {
    let t0 = Instant::now();
    let mut s = ServerTransfer::new(SERVER, t0);
    s.handle_request(Some(&payload(&ControlFrame::Request(request(1)))));
    sdrain(&mut s);
    s.handle_refused(RejectReason::Busy, "no slot".into());
    assert_eq!(
        refused(&mut s, false),
        (RejectReason::Busy, "no slot".into())
    );
    assert!(s.is_ended());
}

#[test]
fn heartbeats_go_out_while_the_snapshot_is_digested() {
    let t0 = Instant::now();
    let mut s = leased(t0);
    let beat = heartbeat_interval(SERVER.idle);
    assert_eq!(beat, Duration::from_secs(2));
    assert_eq!(s.poll_timeout(), Some(t0 + beat));
    s.handle_timeout(t0 + beat - secs(0.1));
    assert!(sdrain(&mut s).is_empty(), "no heartbeat before its time");
    let mut beats = 0;
    let mut now = t0;
    while now < t0 + secs(20.0) {
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
        beats += sdrain(&mut s)
            .iter()
            .filter(|a| **a == ServerAction::Send(ControlFrame::Preparing))
            .count();
    }
    assert_eq!(
        beats, 10,
        "one heartbeat per interval, never a stall while digesting"
    );
    // A driver that wakes late sends one heartbeat, not a burst.
    s.handle_timeout(now + secs(7.0));
    assert_eq!(sdrain(&mut s).len(), 1);
    // Heartbeats are well inside the client's idle limit, also for short limits.
    assert!(heartbeat_interval(Duration::from_millis(100)) >= Duration::from_millis(50));
    assert!(heartbeat_interval(Duration::from_secs(600)) <= Duration::from_secs(5));
}

#[test]
fn metadata_and_complete_go_out_only_after_every_file_is_acknowledged() {
    let t0 = Instant::now();
    let mut s = pushing(t0);
    assert!(s.wants_control());
    s.handle_send_progress(t0 + secs(5.0));
    s.handle_timeout(t0 + secs(10.0));
    assert!(sdrain(&mut s).is_empty());
    s.handle_files_acked(meta(), t0 + secs(11.0));
    assert_eq!(
        sdrain(&mut s),
        vec![
            ServerAction::Send(ControlFrame::Metadata(meta())),
            ServerAction::Send(ControlFrame::Complete),
            ServerAction::FinishSend,
        ]
    );
    s.handle_frame(ControlFrame::Done);
    assert_eq!(sdrain(&mut s), vec![ServerAction::End(ServerEnd::Done)]);
    // Nothing before the manifest: no Accept while digesting.
    let mut s = leased(t0);
    s.handle_files_acked(meta(), t0);
    assert!(sdrain(&mut s).is_empty());
}

#[test]
fn a_client_that_takes_nothing_is_given_up_on() {
    let t0 = Instant::now();
    let mut s = pushing(t0);
    s.handle_send_progress(t0 + secs(6.0));
    s.handle_timeout(t0 + secs(13.9));
    assert!(sdrain(&mut s).is_empty());
    s.handle_timeout(t0 + secs(14.0));
    assert_eq!(sdrain(&mut s), vec![ServerAction::End(ServerEnd::Timeout)]);

    // Nor may it sit on the snapshot without answering Complete.
    let mut s = pushing(t0);
    s.handle_files_acked(meta(), t0);
    sdrain(&mut s);
    s.handle_timeout(t0 + SERVER.idle);
    assert_eq!(sdrain(&mut s), vec![ServerAction::End(ServerEnd::Timeout)]);
}

#[test]
fn the_partition_timeout_bounds_the_whole_transfer() {
    let t0 = Instant::now();
    let mut s = pushing(t0);
    let mut now = t0;
    while now < t0 + SERVER.partition_timeout {
        now += secs(5.0);
        s.handle_send_progress(now);
        s.handle_timeout(now);
    }
    assert_eq!(sdrain(&mut s), vec![ServerAction::End(ServerEnd::Timeout)]);
}

#[test]
fn client_frames_while_pushing_end_the_transfer_typed() {
    let t0 = Instant::now();
    let mut s = pushing(t0);
    s.handle_frame(ControlFrame::Abort {
        reason: "checksum".into(),
    });
    assert_eq!(
        sdrain(&mut s),
        vec![ServerAction::End(ServerEnd::ClientAborted(
            "checksum".into()
        ))]
    );
    let mut s = pushing(t0);
    s.handle_frame(ControlFrame::Done);
    assert_eq!(
        sdrain(&mut s),
        vec![ServerAction::End(ServerEnd::Protocol(
            "unexpected Done".into()
        ))]
    );
    let mut s = pushing(t0);
    s.handle_control_end();
    assert_eq!(
        sdrain(&mut s),
        vec![ServerAction::End(ServerEnd::ClientAborted(
            "control stream closed".into()
        ))]
    );
    let mut s = pushing(t0);
    s.handle_files_acked(meta(), t0);
    sdrain(&mut s);
    s.handle_control_end();
    assert_eq!(
        sdrain(&mut s),
        vec![ServerAction::End(ServerEnd::ClientAborted(
            "no Done".into()
        ))]
    );
    // Once ended, nothing more comes out.
    s.handle_frame(ControlFrame::Done);
    s.fail(ServerEnd::Timeout);
    assert!(sdrain(&mut s).is_empty());
}

#[test]
fn a_failure_the_driver_reports_drops_what_was_still_to_do() {
    let t0 = Instant::now();
    let mut s = leased(t0);
    s.handle_manifest(manifest(), t0);
    // Writing Accept failed: the push that was queued behind it must not start.
    assert!(matches!(s.poll_action(), Some(ServerAction::Send(_))));
    s.fail(ServerEnd::ClientAborted("stream gone".into()));
    assert_eq!(
        sdrain(&mut s),
        vec![ServerAction::End(ServerEnd::ClientAborted(
            "stream gone".into()
        ))]
    );
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
    }
}
