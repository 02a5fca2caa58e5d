//! Resuming an interrupted transfer: a rerun after the client was killed asks the same peer for
//! the rest only; a held prefix that went bad is caught by the full-file digest and fetched
//! again; a snapshot the server no longer keeps (window passed, server restarted) means a
//! fresh, validated start. And the protocol versions before this one are refused, typed, by
//! and to peers that speak them.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use quicstrap::client::resume::{Journal, JOURNAL_FILE};
use quicstrap::net::wire::write_frame;
use quicstrap::protocol::{
    encode, ControlFrame, FileStart, Reject, RejectReason, Request, Resume, PROTOCOL_VERSION,
};

/// Records of the partitions here: ~40 MB in ten SSTs, several in flight at once.
const RECORDS: u64 = 40_000;

fn source(partition: u32) -> (tempfile::TempDir, quicstrap::PartitionId, u64) {
    seeded_1k(partition, RECORDS)
}

/// A server writing at 5 MB/s, so a test can act mid-transfer.
async fn slow_server(
    src: &Path,
    tweak: impl FnOnce(&mut quicstrap::server::ServerConfig),
) -> quicstrap::Server {
    server_at(src, 5_000_000, tweak).await
}

/// `quicstrap fetch --json` of `id` from `server` into `dst`.
fn fetch_process(server: &quicstrap::Server, id: &quicstrap::PartitionId, dst: &Path) -> Child {
    let mut cmd = testkit::fetch_command_in(None, dst, &id.store, id.version, id.partition);
    cmd.args(["--json", "--peer"])
        .arg(format!("localhost@{}", server.local_addr().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd.spawn().unwrap()
}

/// Starts a fetch process and SIGKILLs it once `bytes` arrived; returns the one temp dir it
/// left, which holds a journal.
async fn killed_at(
    server: &quicstrap::Server,
    id: &quicstrap::PartitionId,
    dst: &Path,
    bytes: u64,
) -> std::path::PathBuf {
    let mut fetch = fetch_process(server, id, dst);
    wait_for(
        "the transfer to get far enough",
        Duration::from_secs(60),
        || received(dst) >= bytes,
    )
    .await;
    fetch.kill().unwrap();
    fetch.wait().unwrap();
    assert!(!id.dir(dst).exists(), "a killed fetch left a partition dir");
    let left = temp_dirs(dst);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].join(JOURNAL_FILE).is_file(),
        "no journal beside the files"
    );
    left[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_at_60_percent_resumes_on_rerun_and_fetches_only_the_rest() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, total) = source(300);
    let quic = slow_server(src.path(), |_| {}).await;
    let dst = tempfile::tempdir().unwrap();
    killed_at(&quic, &id, dst.path(), total * 6 / 10).await;

    let (code, r) = report(fetch_process(&quic, &id, dst.path()));
    assert_eq!(code, 0, "{r}");
    let attempts = r["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{r}");
    let resumed = attempts[0]["resumed_bytes"].as_u64().unwrap();
    let sent = attempts[0]["bytes"].as_u64().unwrap();
    // What was on disk when killed stays; only the rest crosses the link again.
    assert!(resumed >= total / 2, "resumed {resumed} of {total}: {r}");
    assert!(
        sent <= total - resumed,
        "sent {sent} beside {resumed} resumed of {total}"
    );
    assert_eq!(attempts[0]["resent_bytes"], 0, "{r}");
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    assert!(temp_dirs(dst.path()).is_empty());
    assert!(!id.dir(dst.path()).join(JOURNAL_FILE).exists());
    assert_eq!(quic.stats().resumed.load(Ordering::Relaxed), 1);
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_partial_file_fails_its_digest_and_is_fetched_again() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, total) = source(301);
    let quic = slow_server(src.path(), |_| {}).await;
    let dst = tempfile::tempdir().unwrap();
    let tmp = killed_at(&quic, &id, dst.path(), total / 2).await;
    // A byte of a partially received file flipped on disk between the runs.
    let journal: Journal =
        serde_json::from_slice(&std::fs::read(tmp.join(JOURNAL_FILE)).unwrap()).unwrap();
    let partial = journal
        .manifest
        .iter()
        .enumerate()
        .filter(|(i, _)| !journal.validated.contains(&(*i as u32)))
        .map(|(_, f)| tmp.join(&f.name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 2))
        .expect("a partially received file");
    corrupt(&partial);

    let (code, r) = report(fetch_process(&quic, &id, dst.path()));
    assert_eq!(code, 0, "{r}");
    let attempts = r["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{r}");
    assert_eq!(attempts[0]["outcome"], "checksum_mismatch", "{r}");
    assert_eq!(attempts[0]["next_step"], "Resume", "{r}");
    assert_eq!(attempts[1]["outcome"], "ok", "{r}");
    assert!(attempts[1]["resumed_bytes"].as_u64().unwrap() > 0, "{r}");
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    assert!(temp_dirs(dst.path()).is_empty());
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_resume_window_the_snapshot_is_gone_and_the_fetch_starts_afresh() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, total) = source(302);
    let quic = slow_server(src.path(), |c| {
        c.policy.idle_timeout = Duration::from_secs(2);
        c.snapshots.resume_window = Duration::from_secs(1);
    })
    .await;
    let dst = tempfile::tempdir().unwrap();
    killed_at(&quic, &id, dst.path(), total * 3 / 10).await;
    // The server sees the client gone, holds the snapshot for its window, then lets go.
    let stats = quic.stats();
    wait_for(
        "the server to end the transfer",
        Duration::from_secs(30),
        || stats.failed.load(Ordering::Relaxed) >= 1 && quic.snapshots().users() == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let rejected = stats.rejected.load(Ordering::Relaxed);
    let (code, r) = report(fetch_process(&quic, &id, dst.path()));
    assert_eq!(code, 0, "{r}");
    // The resume is refused; what was kept is discarded, and the same peer is asked afresh.
    let gone = &r["attempts"][0];
    assert_eq!(gone["outcome"], "snapshot_gone", "{r}");
    assert_eq!(gone["next_step"], "Afresh", "{r}");
    assert!(gone["resent_bytes"].as_u64().unwrap() >= total / 4, "{r}");
    let attempt = &r["attempts"][1];
    assert_eq!(attempt["outcome"], "ok", "{r}");
    assert_eq!(attempt["resumed_bytes"], 0, "{r}");
    // Everything crossed the link again: nothing of the discarded files was reused.
    assert!(attempt["bytes"].as_u64().unwrap() >= total * 9 / 10, "{r}");
    assert_eq!(
        stats.rejected.load(Ordering::Relaxed),
        rejected + 1,
        "no snapshot_gone"
    );
    assert_eq!(stats.resumed.load(Ordering::Relaxed), 0);
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    assert!(temp_dirs(dst.path()).is_empty());
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_no_longer_has_the_snapshot_so_the_fetch_starts_afresh() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, total) = source(303);
    let first = slow_server(src.path(), |_| {}).await;
    let addr = first.local_addr().unwrap();
    let f = Arc::new(fetcher(|_| {}));
    let dst = tempfile::tempdir().unwrap();
    let peers = vec![quicstrap::peers::Peer::new(addr)];
    let (task, progress) = spawn_fetch(&f, &id, peers.clone(), dst.path());
    wait_bytes(&progress, total * 3 / 10).await;
    // Restarted on the same address: its snapshots are new ones.
    first.shutdown().await;
    let restarted = server(src.path(), |c| c.listen = addr).await;
    let report = match task.await.unwrap() {
        Ok(report) => report,
        // The retry came before the restart: the next fetch resumes what was kept.
        Err(_) => f.fetch(&id, &peers, dst.path()).await.unwrap(),
    };
    // The restarted peer refused the resume; the same peer was asked afresh and what was kept
    // was thrown away, counted as re-sent.
    let a = &report.attempts;
    let gone = a.iter().position(|x| x.outcome == "snapshot_gone");
    let gone = gone.unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(a[gone].next_step, Some(quicstrap::client::NextStep::Afresh));
    assert!(
        a.iter().map(|x| x.resent_bytes).sum::<u64>() > 0,
        "{report:?}"
    );
    let last = a.last().unwrap();
    assert_eq!(last.outcome, "ok");
    assert_eq!(last.resumed_bytes, 0, "{report:?}");
    assert!(last.bytes >= total * 9 / 10, "{report:?}");
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    assert!(temp_dirs(dst.path()).is_empty());
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resume_an_interrupted_attempt_leaves_nothing() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, total) = source(304);
    let quic = slow_server(src.path(), |_| {}).await;
    let f = Arc::new(fetcher(|c| c.resume = false));
    let dst = tempfile::tempdir().unwrap();
    let (task, progress) = spawn_fetch(&f, &id, vec![peer(&quic)], dst.path());
    wait_bytes(&progress, total / 4).await;
    quic.shutdown().await;
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.attempts().len(), 1, "{err}");
    assert!(temp_dirs(dst.path()).is_empty());
    assert!(!id.dir(dst.path()).exists());
}

/// The request of protocol version 1, as a version-1 client encodes it: no `resume`.
#[derive(serde::Serialize, serde::Deserialize)]
enum V1Frame {
    Request {
        version: u16,
        transfer_id: u64,
        store: String,
        store_version: u32,
        partition: u32,
        table_format: quicstrap::store::partition::TableFormat,
        checksum: quicstrap::store::checksum::ChecksumAlgo,
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_versions_1_and_2_are_refused_as_unsupported() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, _) = source(305);
    let quic = server(src.path(), |_| {}).await;
    let (_ep, conn) = crate::security::raw_connection(&quic).await;
    let v1 = V1Frame::Request {
        version: 1,
        transfer_id: 1,
        store: id.store.clone(),
        store_version: id.version,
        partition: id.partition,
        table_format: quicstrap::store::partition::TableFormat::Block,
        checksum: quicstrap::store::checksum::ChecksumAlgo::Md5,
    };
    // Version 2's request has version 3's layout: only the version differs.
    let mut v2 = raw_request(&id, 2, None);
    if let ControlFrame::Request(r) = &mut v2 {
        r.version = 2;
    }
    for old in [encode(&v1), encode(&v2)] {
        match crate::security::answer(&conn, &old).await {
            ControlFrame::Reject(r) => {
                assert_eq!(r.reason, RejectReason::UnsupportedVersion, "{}", r.message)
            }
            other => panic!("{other:?}"),
        }
    }
    // And the server serves on.
    fetch_ok(&quic, &id).await;
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_of_versions_1_and_2_refuse_this_client_typed() {
    let _turn = turn(Needs::Nothing).await;
    for speaks in [1u16, 2] {
        // What an older server does: read the request in its own layout (the fields it knows
        // come first; version 2's is this one), see another version, refuse. `Reject` is the
        // same in every version.
        let ep = hand_played_peer();
        let addr = ep.local_addr().unwrap();
        let old_server = ep.clone();
        tokio::spawn(async move {
            let conn = old_server.accept().await.unwrap().await.unwrap();
            let (mut send, recv) = conn.accept_bi().await.unwrap();
            let mut reader = quicstrap::net::wire::FrameReader::new(recv, 1 << 16);
            let raw = reader.next_raw().await.unwrap().unwrap();
            let version = match speaks {
                1 => {
                    let V1Frame::Request { version, .. } = postcard::from_bytes(&raw).unwrap();
                    version
                }
                _ => match postcard::from_bytes(&raw).unwrap() {
                    ControlFrame::Request(r) => r.version,
                    other => panic!("{other:?}"),
                },
            };
            assert_eq!(version, PROTOCOL_VERSION);
            let refusal = ControlFrame::Reject(Reject {
                reason: RejectReason::UnsupportedVersion,
                message: format!(
                    "protocol version {version} not supported (this peer speaks {speaks})"
                ),
            });
            write_frame(&mut send, &refusal).await.unwrap();
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        });
        let dst = tempfile::tempdir().unwrap();
        let err = fetcher(|_| {})
            .fetch(&id(306), &[quicstrap::peers::Peer::new(addr)], dst.path())
            .await
            .unwrap_err();
        assert_eq!(err.attempts()[0].outcome, "unsupported_version", "{err}");
        assert!(temp_dirs(dst.path()).is_empty());
        ep.close(0u32.into(), b"");
    }
}

/// A request for `id` on a raw connection, resuming `resume` if given.
fn raw_request(
    id: &quicstrap::PartitionId,
    transfer_id: u64,
    resume: Option<Resume>,
) -> ControlFrame {
    ControlFrame::Request(Request {
        version: PROTOCOL_VERSION,
        transfer_id,
        store: id.store.clone(),
        store_version: id.version,
        partition: id.partition,
        table_format: quicstrap::store::partition::TableFormat::Block,
        checksum: quicstrap::store::checksum::ChecksumAlgo::Md5,
        resume,
    })
}

/// A control stream of a raw client, both halves kept open: dropping the receiving half
/// would tell the server the client went away, which is an interruption of its own.
struct RawControl {
    send: quinn::SendStream,
    _reader: quicstrap::net::wire::FrameReader,
}

/// Sends `request` on a new control stream of `conn` and returns the answer (past
/// heartbeats) with the stream, to end the transfer with.
async fn ask(conn: &quinn::Connection, request: &ControlFrame) -> (ControlFrame, RawControl) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    write_frame(&mut send, request).await.unwrap();
    let mut reader = quicstrap::net::wire::FrameReader::new(recv, 1 << 24);
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), reader.next_frame())
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("a frame");
        if frame != ControlFrame::Preparing {
            let control = RawControl {
                send,
                _reader: reader,
            };
            return (frame, control);
        }
    }
}

/// Ends a transfer from the client's side with `last` (`Suspend` or `Abort`) and waits until
/// the server has let go of its snapshot.
async fn end_transfer(quic: &quicstrap::Server, mut control: RawControl, last: ControlFrame) {
    write_frame(&mut control.send, &last).await.unwrap();
    let _ = control.send.finish();
    wait_for("the transfer to end", Duration::from_secs(10), || {
        quic.snapshots().users() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_a_suspended_snapshot_for_a_resume_and_forgets_an_aborted_one() {
    let _turn = turn(Needs::Nothing).await;
    let (_src, id, quic) = served(307, (2_000, 100, 1_000), |_| {}).await;
    let (_ep, conn) = crate::security::raw_connection(&quic).await;

    // Accepted, then suspended by the client: the snapshot stays resumable.
    let (answer, send) = ask(&conn, &raw_request(&id, 1, None)).await;
    let ControlFrame::Accept(accept) = answer else {
        panic!("{answer:?}")
    };
    let snapshot = accept.snapshot;
    let reason = "stall".into();
    end_transfer(&quic, send, ControlFrame::Suspend { reason }).await;
    let wanted = Resume {
        snapshot,
        files: vec![FileStart {
            index: 0,
            offset: 0,
        }],
    };
    let (answer, send) = ask(&conn, &raw_request(&id, 2, Some(wanted.clone()))).await;
    match &answer {
        // The same snapshot and files; the server may know digests it computed since.
        ControlFrame::Accept(a) => {
            assert_eq!(a.snapshot, snapshot);
            assert!(quicstrap::protocol::transfer::same_files(
                &accept.files,
                &a.files
            ));
        }
        other => panic!("{other:?}"),
    }
    // Given up with Abort: a later resume of it is refused, typed.
    let reason = "done".into();
    end_transfer(&quic, send, ControlFrame::Abort { reason }).await;
    let (answer, _send) = ask(&conn, &raw_request(&id, 3, Some(wanted))).await;
    match answer {
        ControlFrame::Reject(r) => assert_eq!(r.reason, RejectReason::SnapshotGone),
        other => panic!("{other:?}"),
    }
    // A snapshot this server never made: refused the same way.
    let stranger = Resume {
        snapshot: quicstrap::protocol::SnapshotId([7; 16]),
        files: Vec::new(),
    };
    let (answer, _send) = ask(&conn, &raw_request(&id, 4, Some(stranger))).await;
    assert!(
        matches!(
            answer,
            ControlFrame::Reject(Reject {
                reason: RejectReason::SnapshotGone,
                ..
            })
        ),
        "{answer:?}"
    );
    quic.shutdown().await;
}
