//! Who may connect, and what bad input does: typed refusals, and the server keeps serving
//! everyone else (docs/design.md, invariant *bad input never crashes a peer*).

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use quicstrap::client::{FetchConfig, Fetcher};
use quicstrap::net::tls;
use quicstrap::protocol::{
    encode, ControlFrame, FrameDecoder, Reject, RejectReason, Request, PROTOCOL_VERSION,
};
use quicstrap::store::checksum::ChecksumAlgo;
use quicstrap::store::partition::TableFormat;

async fn refused_with(identity: tls::Identity) {
    let dst = tempfile::tempdir().unwrap();
    let (_src, id, server) = served(0, (1_000, 100, 1_000), |_| {}).await;
    let mut cfg = FetchConfig::new(identity);
    cfg.policy.connect_timeout = Duration::from_secs(3);
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    let f = Fetcher::new(cfg).unwrap();
    let err = f
        .fetch(&id, &[peer(&server)], dst.path())
        .await
        .unwrap_err();
    let attempts = all_failed(&err);
    // The handshake or the first stream fails; the server never accepted a transfer.
    assert!(
        ["connect_failed", "peer_gone", "connect_timeout"].contains(&attempts[0].outcome.as_str()),
        "{attempts:?}"
    );
    assert_eq!(
        server
            .stats()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(!id.dir(dst.path()).exists());
    // Allowed clients are still served.
    fetcher(|_| {})
        .fetch(&id, &[peer(&server)], dst.path())
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_the_allow_list_is_refused() {
    let _turn = turn(Needs::Nothing).await;
    refused_with(tls::dev::intruder().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_ca_is_refused() {
    let _turn = turn(Needs::Nothing).await;
    refused_with(tls::dev::rogue().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_name_mismatch_is_refused() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (_src, id, server) = served(1, (100, 10, 100), |_| {}).await;
    let wrong = quicstrap::Peer::new(server.local_addr().unwrap()).with_name("evil.example");
    let err = fetcher(|_| {})
        .fetch(&id, &[wrong], dst.path())
        .await
        .unwrap_err();
    let attempts = all_failed(&err);
    assert_eq!(attempts[0].outcome, "connect_failed");
    server.shutdown().await;
}

/// A raw, allowed QUIC client that can send anything on a control stream.
pub(crate) async fn raw_connection(
    server: &quicstrap::Server,
) -> (quinn::Endpoint, quinn::Connection) {
    let crypto = tls::client_config(&tls::dev::client().unwrap()).unwrap();
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(qc)));
    let conn = ep
        .connect(server.local_addr().unwrap(), "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

/// Sends `bytes` on a new control stream (ending it when `finish`) and returns the server's
/// first answer, skipping `Preparing` heartbeats.
async fn answer_with(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> ControlFrame {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        let _ = send.finish();
    }
    let mut reader = quicstrap::net::wire::FrameReader::new(recv, 1 << 24);
    loop {
        let frame =
            tokio::time::timeout(Duration::from_secs(15), reader.next_frame::<ControlFrame>())
                .await
                .expect("server answered in time")
                .expect("readable answer")
                .expect("a frame in the answer");
        if frame != ControlFrame::Preparing {
            return frame;
        }
    }
}

pub(crate) async fn answer(conn: &quinn::Connection, bytes: &[u8]) -> ControlFrame {
    answer_with(conn, bytes, true).await
}

fn request(store: &str) -> Request {
    Request {
        version: PROTOCOL_VERSION,
        transfer_id: 1,
        store: store.into(),
        store_version: 3,
        partition: 0,
        table_format: TableFormat::Block,
        checksum: ChecksumAlgo::Md5,
        resume: None,
    }
}

fn reason(f: &ControlFrame) -> RejectReason {
    match f {
        ControlFrame::Reject(Reject { reason, .. }) => *reason,
        other => panic!("expected a Reject, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_bad_frames_get_typed_errors_and_others_are_still_served() {
    let _turn = turn(Needs::Nothing).await;
    let (_src, id, server) = served(0, (2_000, 100, 1_000), |c| {
        c.request_timeout = Duration::from_secs(2)
    })
    .await;
    let (_ep, conn) = raw_connection(&server).await;
    let long = "a".repeat(4_000);
    for store in [
        "..",
        "../it_store",
        "a/b",
        "/etc/passwd",
        "it_store/../x",
        long.as_str(),
        "",
    ] {
        let f = answer(&conn, &encode(&ControlFrame::Request(request(store)))).await;
        assert_eq!(reason(&f), RejectReason::BadRequest, "store {store:?}");
    }
    // Garbled bytes inside a valid length prefix.
    let mut garbled = vec![0, 0, 0, 6];
    garbled.extend_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        reason(&answer(&conn, &garbled).await),
        RejectReason::BadRequest
    );
    // A length over the limit is refused before anything is buffered.
    let mut huge = (1u32 << 31).to_be_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 16]);
    assert_eq!(
        reason(&answer(&conn, &huge).await),
        RejectReason::BadRequest
    );
    // A truncated frame (stream ends inside it).
    let whole = encode(&ControlFrame::Request(request("it_store")));
    assert_eq!(
        reason(&answer(&conn, &whole[..whole.len() - 3]).await),
        RejectReason::BadRequest
    );
    // Not a request at all.
    assert_eq!(
        reason(&answer(&conn, &encode(&ControlFrame::Complete)).await),
        RejectReason::BadRequest
    );
    // A newer protocol version, in its own (unknown) layout.
    let future = [0u8, 0, 0, 5, 0, 9, 0xff, 0xff, 0x01];
    assert_eq!(
        reason(&answer(&conn, &future).await),
        RejectReason::UnsupportedVersion
    );
    // The current layout with another version number.
    let mut r = request("it_store");
    r.version = PROTOCOL_VERSION + 1;
    assert_eq!(
        reason(&answer(&conn, &encode(&ControlFrame::Request(r))).await),
        RejectReason::UnsupportedVersion
    );
    // Unknown partition.
    let mut r = request("it_store");
    r.partition = 77;
    assert_eq!(
        reason(&answer(&conn, &encode(&ControlFrame::Request(r))).await),
        RejectReason::NotFound
    );
    // The same connection, and a fresh client, are still served.
    let ok = answer_with(
        &conn,
        &encode(&ControlFrame::Request(request("it_store"))),
        false,
    )
    .await;
    assert!(matches!(ok, ControlFrame::Accept(_)), "{ok:?}");
    fetch_ok(&server, &id).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_control_stream_times_out_and_a_flood_is_bounded() {
    let _turn = turn(Needs::Nothing).await;
    let (_src, id, server) = served(0, (500, 100, 500), |c| {
        c.request_timeout = Duration::from_millis(500);
        c.tuning.max_control_streams = 8;
    })
    .await;
    let (_ep, conn) = raw_connection(&server).await;
    // Open many control streams that never send a whole request: the server rejects each
    // after the request timeout, and the stream limit (8) bounds how many it holds at once —
    // the 40 only get through because the server closes each stalled stream.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            // A stream is only visible to the server once something is sent; send half a
            // length prefix.
            send.write_all(&[0, 0]).await.unwrap();
            let got = recv.read_to_end(1 << 16).await.unwrap_or_default();
            let mut dec = FrameDecoder::new(1 << 16);
            dec.push(&got);
            dec.next_frame::<ControlFrame>().unwrap()
        }));
    }
    for t in tasks {
        let f = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("flood drained")
            .unwrap()
            .expect("a reject");
        assert_eq!(reason(&f), RejectReason::BadRequest);
    }
    fetch_ok(&server, &id).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_snapshot_slot() {
    let _turn = turn(Needs::Nothing).await;
    let (_src, id, server) = served(0, (20_000, 1000, 5_000), |c| {
        c.policy.idle_timeout = Duration::from_secs(1);
        c.snapshots.max_users = 1;
    })
    .await;
    let (_ep, conn) = raw_connection(&server).await;
    // Ask, get the manifest, then read nothing: flow control stalls the server's writes.
    let ok = answer_with(
        &conn,
        &encode(&ControlFrame::Request(request("it_store"))),
        false,
    )
    .await;
    assert!(matches!(ok, ControlFrame::Accept(_)), "{ok:?}");
    assert_eq!(server.snapshots().users(), 1);
    let stats = server.stats();
    wait_for("stalled transfer dropped", Duration::from_secs(15), || {
        server.snapshots().users() == 0
    })
    .await;
    assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The only slot is free again for a client that reads.
    fetch_ok(&server, &id).await;
    server.shutdown().await;
}
