//! The server machine's rules.

use std::time::{Duration, Instant};

use super::*;
use crate::codec::{encode, DecodeError, LEN_PREFIX};
use crate::frame::*;
use crate::transfer::*;
use crate::types::TableFormat;

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
    s.handle_request(Some(&payload(&ControlFrame::Request(request(
        crate::PROTOCOL_VERSION,
    )))));
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
    s.handle_manifest(manifest(), SNAP, meta(), t0);
    assert_eq!(
        sdrain(&mut s),
        vec![
            ServerAction::Send(ControlFrame::Accept(Accept {
                files: manifest(),
                snapshot: SNAP,
                meta: meta(),
            })),
            ServerAction::PushFiles(vec![
                FileStart {
                    index: 0,
                    offset: 0
                },
                FileStart {
                    index: 1,
                    offset: 0
                }
            ])
        ]
    );
    s
}

#[test]
fn requests_are_validated_before_anything_is_leased() {
    let (r, m) = refusal(Some(&payload(&ControlFrame::Request(request(9)))));
    assert_eq!(r, RejectReason::UnsupportedVersion);
    assert!(m.contains("version 9"), "{m}");

    let mut bad_store = request(crate::PROTOCOL_VERSION);
    bad_store.store = "../etc".into();
    let (r, m) = refusal(Some(&payload(&ControlFrame::Request(bad_store))));
    assert_eq!(
        (r, m.starts_with("store name")),
        (RejectReason::BadRequest, true)
    );

    let mut plain = request(crate::PROTOCOL_VERSION);
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
    // A future layout: the next version, then fields this build does not know.
    let next = crate::PROTOCOL_VERSION + 1;
    let mut raw = payload(&ControlFrame::Request(request(next)));
    raw.truncate(3);
    let (r, m) = refusal(Some(&raw));
    assert_eq!(r, RejectReason::UnsupportedVersion);
    assert!(m.contains(&format!("version {next}")), "{m}");
    // Our own version that does not decode is just malformed.
    let mut raw = payload(&ControlFrame::Request(request(crate::PROTOCOL_VERSION)));
    raw.truncate(3);
    assert_eq!(refusal(Some(&raw)).0, RejectReason::BadRequest);
}

/// The request of protocol version 1, as a version-1 client encodes it: no `resume`.
#[derive(serde::Serialize)]
enum V1Frame {
    Request {
        version: u16,
        transfer_id: u64,
        store: String,
        store_version: u32,
        partition: u32,
        table_format: TableFormat,
        checksum: crate::types::ChecksumAlgo,
    },
}

#[test]
fn a_version_1_request_is_refused_as_unsupported_not_misread() {
    let old = V1Frame::Request {
        version: 1,
        transfer_id: 7,
        store: "users".into(),
        store_version: 1,
        partition: 0,
        table_format: TableFormat::Block,
        checksum: crate::types::ChecksumAlgo::Md5,
    };
    let raw = postcard::to_stdvec(&old).unwrap();
    let (r, m) = refusal(Some(&raw));
    assert_eq!(r, RejectReason::UnsupportedVersion);
    assert!(m.contains("version 1 not supported"), "{m}");
}

/// A leased transfer whose request resumes `files` of snapshot `SNAP`.
fn leased_resume(t0: Instant, files: Vec<FileStart>) -> ServerTransfer {
    let mut req = request(crate::PROTOCOL_VERSION);
    req.resume = Some(Resume {
        snapshot: SNAP,
        files,
    });
    let mut s = ServerTransfer::new(SERVER, t0);
    s.handle_request(Some(&payload(&ControlFrame::Request(req))));
    assert!(matches!(sdrain(&mut s).as_slice(), [ServerAction::Lease(r)] if r.resume.is_some()));
    s.handle_leased(t0);
    s
}

#[test]
fn a_resume_pushes_only_the_files_asked_for_from_their_offsets() {
    let t0 = Instant::now();
    let wanted = vec![FileStart {
        index: 1,
        offset: 4,
    }];
    let mut s = leased_resume(t0, wanted.clone());
    s.handle_manifest(manifest(), SNAP, meta(), t0);
    assert_eq!(
        sdrain(&mut s),
        vec![
            ServerAction::Send(ControlFrame::Accept(Accept {
                files: manifest(),
                snapshot: SNAP,
                meta: meta(),
            })),
            ServerAction::PushFiles(wanted)
        ]
    );
}

#[test]
fn a_resume_that_does_not_fit_the_manifest_is_a_bad_request() {
    let t0 = Instant::now();
    for files in [
        // Outside the manifest.
        vec![FileStart {
            index: 5,
            offset: 0,
        }],
        // Past the end of the file (10 bytes).
        vec![FileStart {
            index: 1,
            offset: 11,
        }],
        // Out of order, or twice.
        vec![
            FileStart {
                index: 1,
                offset: 0,
            },
            FileStart {
                index: 0,
                offset: 0,
            },
        ],
        vec![
            FileStart {
                index: 1,
                offset: 0,
            },
            FileStart {
                index: 1,
                offset: 0,
            },
        ],
    ] {
        let mut s = leased_resume(t0, files);
        s.handle_manifest(manifest(), SNAP, meta(), t0);
        assert_eq!(refused(&mut s, false).0, RejectReason::BadRequest);
    }
}

#[test]
fn only_an_abort_or_a_protocol_breach_forfeits_a_resume() {
    let t0 = Instant::now();
    let end = |frame: Option<ControlFrame>| {
        let mut s = pushing(t0);
        match frame {
            Some(f) => s.handle_frame(f),
            None => s.handle_control_end(),
        }
        match sdrain(&mut s).as_slice() {
            [ServerAction::End(e)] => e.clone(),
            other => panic!("{other:?}"),
        }
    };
    let suspended = end(Some(ControlFrame::Suspend {
        reason: "stall".into(),
    }));
    assert_eq!(suspended, ServerEnd::Suspended("stall".into()));
    assert!(suspended.resumable());
    assert!(end(None).resumable());
    assert!(!end(Some(ControlFrame::Abort {
        reason: "bad".into()
    }))
    .resumable());
    assert!(!end(Some(ControlFrame::Complete)).resumable());
    let mut s = pushing(t0);
    s.handle_timeout(t0 + SERVER.idle);
    assert_eq!(sdrain(&mut s), vec![ServerAction::End(ServerEnd::Timeout)]);
    assert!(ServerEnd::Timeout.resumable());
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
    s.handle_request(Some(&payload(&ControlFrame::Request(request(
        crate::PROTOCOL_VERSION,
    )))));
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
fn complete_goes_out_only_after_every_file_is_acknowledged() {
    let t0 = Instant::now();
    let mut s = pushing(t0);
    assert!(s.wants_control());
    s.handle_send_progress(t0 + secs(5.0));
    s.handle_timeout(t0 + secs(10.0));
    assert!(sdrain(&mut s).is_empty());
    s.handle_files_acked(t0 + secs(11.0));
    assert_eq!(
        sdrain(&mut s),
        vec![
            ServerAction::Send(ControlFrame::Complete),
            ServerAction::FinishSend,
        ]
    );
    s.handle_frame(ControlFrame::Done);
    assert_eq!(sdrain(&mut s), vec![ServerAction::End(ServerEnd::Done)]);
    // Nothing before the manifest: no Complete while the snapshot is made.
    let mut s = leased(t0);
    s.handle_files_acked(t0);
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
    s.handle_files_acked(t0);
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
        vec![ServerAction::End(ServerEnd::ClientGone(
            "control stream closed".into()
        ))]
    );
    let mut s = pushing(t0);
    s.handle_files_acked(t0);
    sdrain(&mut s);
    s.handle_control_end();
    assert_eq!(
        sdrain(&mut s),
        vec![ServerAction::End(ServerEnd::ClientGone("no Done".into()))]
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
    s.handle_manifest(manifest(), SNAP, meta(), t0);
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
