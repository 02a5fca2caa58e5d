//! The client machine's rules.

use std::time::{Duration, Instant};

use super::*;
use crate::frame::*;
use crate::transfer::*;
use crate::types::SnapshotId;

const LIMITS: ClientLimits = ClientLimits {
    idle: Duration::from_secs(10),
    complete_grace: Duration::from_secs(2),
    closed_grace: Duration::from_secs(1),
    max_files: 100,
    prepare: Duration::from_secs(60),
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
    c.handle_frame(accept_frame(manifest(), SNAP), t0);
    assert_eq!(drain(&mut c), vec![ClientAction::Accepted]);
    c
}

/// The server's `Accept` of `files` from `snapshot`, at `meta()`.
fn accept_frame(files: Vec<FileEntry>, snapshot: SnapshotId) -> ControlFrame {
    ControlFrame::Accept(Accept {
        files,
        snapshot,
        meta: meta(),
    })
}

fn header(index: u32) -> FileHeader {
    FileHeader {
        transfer_id: 7,
        index,
        offset: 0,
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
    c.handle_frame(accept_frame(manifest(), SNAP), t0 + secs(31.0));
    assert_eq!(drain(&mut c), vec![ClientAction::Accepted]);
    assert_eq!(c.files().len(), 2);
}

#[test]
fn heartbeats_hold_a_request_no_longer_than_the_prepare_limit() {
    let t0 = Instant::now();
    let mut c = ClientTransfer::new(request(1), LIMITS, t0);
    drain(&mut c);
    // A heartbeat every 5 s keeps the idle limit (10 s) from ever firing...
    for s in (5..60).step_by(5) {
        let now = t0 + secs(s as f64);
        c.handle_frame(ControlFrame::Preparing, now);
        c.handle_timeout(now);
        assert!(drain(&mut c).is_empty());
    }
    // ...but not the prepare limit (60 s), which the timer points at.
    assert_eq!(c.poll_timeout(), Some(t0 + LIMITS.prepare));
    c.handle_frame(ControlFrame::Preparing, t0 + secs(59.9));
    c.handle_timeout(t0 + LIMITS.prepare);
    assert_eq!(
        failure(&mut c),
        Some(ClientFailure::Unprepared(LIMITS.prepare))
    );
    // Once accepted, the limit no longer applies.
    let mut c = accepted(t0);
    c.handle_file_progress(t0 + secs(59.0));
    c.handle_timeout(t0 + secs(65.0));
    assert!(failure(&mut c).is_none());
}

#[test]
fn a_rejection_message_is_escaped_and_cut() {
    let t0 = Instant::now();
    let mut c = ClientTransfer::new(request(1), LIMITS, t0);
    drain(&mut c);
    c.handle_frame(
        ControlFrame::Reject(Reject {
            reason: RejectReason::Busy,
            message: format!("line\nforged {}", "x".repeat(1 << 20)),
        }),
        t0,
    );
    match failure(&mut c) {
        Some(ClientFailure::Rejected { message, .. }) => {
            assert!(message.starts_with("line\\nforged xxx"), "{message}");
            assert!(message.len() < 300, "{} bytes kept", message.len());
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
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
    check_manifest(&ok, 100, ChecksumAlgo::Md5).unwrap();
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
        assert!(
            check_manifest(&m, 100, ChecksumAlgo::Md5).is_err(),
            "{bad:?} accepted"
        );
    }
    let mut twice = ok.clone();
    twice.push(entry("000001.sst", 10));
    assert_eq!(
        check_manifest(&twice, 100, ChecksumAlgo::Md5),
        Err(ManifestError::Duplicate("000001.sst".into()))
    );
    assert_eq!(
        check_manifest(&[entry("000001.sst", 1)], 100, ChecksumAlgo::Md5),
        Err(ManifestError::NoCurrent)
    );
    let huge = vec![entry("CURRENT", u64::MAX), entry("x.sst", 2)];
    assert_eq!(
        check_manifest(&huge, 100, ChecksumAlgo::Md5),
        Err(ManifestError::SizeOverflow)
    );
    assert_eq!(
        check_manifest(&ok, 1, ChecksumAlgo::Md5),
        Err(ManifestError::TooManyFiles(2))
    );
    // A digest of another length than the algorithm's: a peer cannot make the receiver hold
    // and journal digests of any size.
    let mut long = ok.clone();
    long[0].digest = vec![0; 100 << 20];
    assert!(matches!(
        check_manifest(&long, 100, ChecksumAlgo::Md5),
        Err(ManifestError::DigestLength { len, want: 16, .. }) if len == 100 << 20
    ));
    assert!(matches!(
        check_manifest(&ok, 100, ChecksumAlgo::Blake3),
        Err(ManifestError::DigestLength {
            len: 16,
            want: 32,
            ..
        })
    ));

    // The machine refuses such an Accept before asking for any file.
    let t0 = Instant::now();
    let mut c = ClientTransfer::new(request(1), LIMITS, t0);
    drain(&mut c);
    c.handle_frame(accept_frame(twice, SNAP), t0);
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
    c.handle_frame(ControlFrame::Complete, t0);
    assert!(
        drain(&mut c).is_empty(),
        "committed files that never arrived"
    );
}

#[test]
fn commit_comes_only_after_every_file_and_complete_with_the_accepts_metadata() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
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
fn a_version_2_metadata_frame_is_a_violation_before_or_after_complete() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.handle_frame(ControlFrame::Metadata(meta()), t0);
    protocol_failure(&mut c, "unexpected frame Metadata");

    let mut c = accepted(t0);
    c.handle_frame(ControlFrame::Complete, t0);
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

/// A client resuming `SNAP` with `manifest()`, still needing `files`.
fn resuming(t0: Instant, files: Vec<FileStart>) -> ClientTransfer {
    let from = ResumeFrom {
        snapshot: SNAP,
        manifest: manifest(),
        files: files.clone(),
    };
    let mut c = ClientTransfer::resume(request(crate::PROTOCOL_VERSION), from, LIMITS, t0);
    match drain(&mut c).as_slice() {
        [ClientAction::Send(ControlFrame::Request(r))] => assert_eq!(
            r.resume,
            Some(Resume {
                snapshot: SNAP,
                files
            })
        ),
        other => panic!("{other:?}"),
    }
    assert!(c.is_resume());
    c
}

#[test]
fn a_resume_receives_only_what_it_asked_for_from_where_it_asked() {
    let t0 = Instant::now();
    let mut c = resuming(
        t0,
        vec![FileStart {
            index: 1,
            offset: 4,
        }],
    );
    c.handle_frame(accept_frame(manifest(), SNAP), t0);
    assert_eq!(drain(&mut c), vec![ClientAction::Accepted]);
    // File 1 from byte 4; file 0 was validated before.
    c.handle_file_stream(
        FileHeader {
            transfer_id: 7,
            index: 1,
            offset: 4,
        },
        t0,
    );
    assert_eq!(
        drain(&mut c),
        vec![ClientAction::ReceiveFile {
            index: 1,
            entry: manifest()[1].clone(),
            offset: 4
        }]
    );
    c.handle_file_done(1, 6, t0);
    c.handle_frame(ControlFrame::Complete, t0);
    assert_eq!(drain(&mut c), vec![ClientAction::Commit(meta())]);
    assert_eq!(c.bytes(), 6);

    // A file not asked for, or from another offset, is a violation.
    for header in [
        FileHeader {
            transfer_id: 7,
            index: 0,
            offset: 0,
        },
        FileHeader {
            transfer_id: 7,
            index: 1,
            offset: 0,
        },
    ] {
        let mut c = resuming(
            t0,
            vec![FileStart {
                index: 1,
                offset: 4,
            }],
        );
        c.handle_frame(accept_frame(manifest(), SNAP), t0);
        drain(&mut c);
        c.handle_file_stream(header, t0);
        protocol_failure(&mut c, "file stream for index");
    }
}

#[test]
fn a_resume_accepts_only_the_snapshot_and_manifest_it_holds_part_of() {
    let t0 = Instant::now();
    let mut other = manifest();
    other[1].size = 11;
    for (files, snapshot) in [(manifest(), SnapshotId([9; 16])), (other, SNAP)] {
        let mut c = resuming(
            t0,
            vec![FileStart {
                index: 0,
                offset: 0,
            }],
        );
        c.handle_frame(
            ControlFrame::Accept(Accept {
                files,
                snapshot,
                meta: meta(),
            }),
            t0,
        );
        protocol_failure(&mut c, "resume of snapshot");
    }
    // The server no longer has it: a typed refusal, for a fresh start.
    let mut c = resuming(
        t0,
        vec![FileStart {
            index: 0,
            offset: 0,
        }],
    );
    c.handle_frame(
        ControlFrame::Reject(Reject {
            reason: RejectReason::SnapshotGone,
            message: "gone".into(),
        }),
        t0,
    );
    assert!(matches!(
        failure(&mut c),
        Some(ClientFailure::Rejected {
            reason: RejectReason::SnapshotGone,
            ..
        })
    ));
}

#[test]
fn a_resume_with_every_file_held_commits_on_complete() {
    let t0 = Instant::now();
    let mut c = resuming(t0, Vec::new());
    c.handle_frame(accept_frame(manifest(), SNAP), t0);
    assert_eq!(drain(&mut c), vec![ClientAction::Accepted]);
    c.handle_frame(ControlFrame::Complete, t0);
    assert_eq!(drain(&mut c), vec![ClientAction::Commit(meta())]);
}

#[test]
fn a_suspend_tells_the_server_to_keep_the_snapshot() {
    let t0 = Instant::now();
    let mut c = accepted(t0);
    c.suspend("stalled".into());
    assert_eq!(
        drain(&mut c),
        vec![
            ClientAction::Send(ControlFrame::Suspend {
                reason: "stalled".into()
            }),
            ClientAction::FinishSend
        ]
    );
    // Said once: a later abort adds nothing.
    c.abort("late".into());
    assert!(drain(&mut c).is_empty());
}

#[test]
fn digests_the_manifest_leaves_out_come_in_the_trailer_and_must_agree() {
    // A manifest with no digest for the SST: the server computes it while sending.
    let mut files = manifest();
    files[1].digest.clear();
    assert!(check_manifest(&files, 10, ChecksumAlgo::Md5).is_ok());
    let t0 = Instant::now();
    let mut c = ClientTransfer::new(request(crate::PROTOCOL_VERSION), LIMITS, t0);
    drain(&mut c);
    c.handle_frame(accept_frame(files.clone(), SNAP), t0);
    assert_eq!(drain(&mut c), vec![ClientAction::Accepted]);
    assert_eq!(
        c.meta(),
        Some(&meta()),
        "the offset is known before any byte"
    );

    // The trailer is what the file must match when the manifest has nothing...
    let md5 = ChecksumAlgo::Md5;
    assert_eq!(
        expected_digest(&files[1], &[3; 16], md5),
        Ok(&[3u8; 16][..])
    );
    // ...of the algorithm's length...
    assert!(matches!(
        expected_digest(&files[1], &[3; 32], md5),
        Err(TrailerError::Length {
            len: 32,
            want: 16,
            ..
        })
    ));
    // ...and it may not contradict a digest the manifest gave.
    assert_eq!(
        expected_digest(&files[0], &files[0].digest, md5),
        Ok(&files[0].digest[..])
    );
    assert_eq!(
        expected_digest(&files[0], &[9; 16], md5),
        Err(TrailerError::Contradicts("CURRENT".into()))
    );
}

#[test]
fn a_resume_takes_digests_learned_since_but_refuses_other_ones() {
    let t0 = Instant::now();
    // The first Accept knew no digest of file 1; the resumed one does.
    let mut first = manifest();
    first[1].digest.clear();
    let mut c = ClientTransfer::resume(
        request(crate::PROTOCOL_VERSION),
        ResumeFrom {
            snapshot: SNAP,
            manifest: first.clone(),
            files: vec![FileStart {
                index: 1,
                offset: 4,
            }],
        },
        LIMITS,
        t0,
    );
    drain(&mut c);
    c.handle_frame(accept_frame(manifest(), SNAP), t0);
    assert_eq!(drain(&mut c), vec![ClientAction::Accepted]);
    assert_eq!(c.files(), manifest().as_slice(), "learned digest kept");

    // The other way round: the client keeps the digest it had.
    assert_eq!(merge_digests(&manifest(), first.clone()), manifest());
    // A digest both know, but different: another file.
    let mut other = manifest();
    other[0].digest = vec![9; 16];
    assert!(!same_files(&manifest(), &other));
    assert!(same_files(&first, &manifest()));
    let mut c = ClientTransfer::resume(
        request(crate::PROTOCOL_VERSION),
        ResumeFrom {
            snapshot: SNAP,
            manifest: manifest(),
            files: Vec::new(),
        },
        LIMITS,
        t0,
    );
    drain(&mut c);
    c.handle_frame(accept_frame(other, SNAP), t0);
    protocol_failure(&mut c, "resume of snapshot");
}
