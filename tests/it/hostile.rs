//! A hostile serving peer: it speaks the protocol over real QUIC and TLS but lies. The client
//! must reject every lie, clean up, apply no metadata and never let the partition appear
//! (docs/design.md, invariants *zero partial state*, *metadata after files* and *bad input
//! never crashes a peer*, seen from the client side).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use quicstrap::client::FetchError;
use quicstrap::protocol::{
    encode, Accept, ControlFrame, FileEntry, FileHeader, PartitionMeta, Request,
};
use quicstrap::wire::{write_frame, FrameReader};

/// What the hostile server got: the connection, the control stream, the request.
struct Session {
    conn: quinn::Connection,
    send: quinn::SendStream,
    request: Request,
}

/// Starts a one-shot hostile server running `act` on the first request; `act` hands the
/// session back so its streams stay open (a dropped stream would end cleanly and hide the lie).
async fn hostile<F, Fut>(act: F) -> (quinn::Endpoint, SocketAddr)
where
    F: FnOnce(Session) -> Fut + Send + 'static,
    Fut: Future<Output = Session> + Send,
{
    let ep = hand_played_peer();
    let addr = ep.local_addr().unwrap();
    let accept = ep.clone();
    tokio::spawn(async move {
        let conn = accept.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let mut reader = FrameReader::new(recv, 1 << 16);
        let Some(ControlFrame::Request(request)) = reader.next_frame().await.unwrap() else {
            panic!("no request")
        };
        let session = act(Session {
            conn: conn.clone(),
            send,
            request,
        })
        .await;
        // Keep the connection and the streams open until the client gives up.
        let _ = tokio::time::timeout(Duration::from_secs(30), conn.closed()).await;
        drop((reader, session));
    });
    (ep, addr)
}

fn entry(name: &str, content: &[u8]) -> FileEntry {
    let mut h = quicstrap::checksum::Hasher::new(quicstrap::checksum::ChecksumAlgo::Md5);
    h.update(content);
    FileEntry {
        name: name.into(),
        size: content.len() as u64,
        digest: h.finish(),
    }
}

/// Answers the request with `Accept` for `files`.
async fn accept(s: &mut Session, files: Vec<FileEntry>) {
    write_frame(
        &mut s.send,
        &ControlFrame::Accept(Accept {
            files,
            snapshot: Default::default(),
        }),
    )
    .await
    .unwrap();
}

/// Ends the transfer as a server does: `Metadata` (empty), then `Complete`.
async fn metadata_then_complete(s: &mut Session) {
    write_frame(
        &mut s.send,
        &ControlFrame::Metadata(PartitionMeta::default()),
    )
    .await
    .unwrap();
    write_frame(&mut s.send, &ControlFrame::Complete)
        .await
        .unwrap();
}

async fn send_file(s: &Session, index: u32, bytes: &[u8], finish: bool) -> quinn::SendStream {
    let mut st = s.conn.open_uni().await.unwrap();
    write_frame(
        &mut st,
        &FileHeader {
            transfer_id: s.request.transfer_id,
            index,
            offset: 0,
        },
    )
    .await
    .unwrap();
    st.write_all(bytes).await.unwrap();
    if finish {
        st.finish().unwrap();
    }
    st
}

/// Fetches from the hostile server and checks the client's verdict and that nothing is left;
/// returns the attempts for further checks.
async fn expect_rejection(addr: SocketAddr, outcome: &str) -> Vec<quicstrap::client::Attempt> {
    let dst = tempfile::tempdir().unwrap();
    let id = id(0);
    // The first verdict is the subject here: no resume of a stalled hostile peer.
    let f = fetcher(|c| {
        c.policy.idle_timeout = Duration::from_secs(2);
        c.max_resumes = 0;
    });
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        f.fetch(&id, &[quicstrap::Peer::new(addr)], dst.path()),
    )
    .await
    .expect("the client gave up in bounded time")
    .unwrap_err();
    let FetchError::AllPeersFailed { attempts } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts[0].outcome, outcome, "{attempts:?}");
    assert!(!id.dir(dst.path()).exists(), "partition dir appeared");
    // Only a stall keeps what arrived (with its journal), for a resume; nothing else does.
    for d in temp_dirs(dst.path()) {
        assert!(
            outcome == "idle_timeout" && d.join(quicstrap::client::resume::JOURNAL_FILE).is_file(),
            "temp dir left: {}",
            d.display()
        );
    }
    assert!(open_fds_under(dst.path()).is_empty(), "file handle left");
    // Nothing was written outside the store directory either.
    let entries: Vec<_> = std::fs::read_dir(dst.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    attempts.clone()
}

const CURRENT: &[u8] = b"MANIFEST-000005\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_before_every_file_is_rejected() {
    let _turn = turn(Needs::Nothing).await;
    let (_ep, addr) = hostile(|mut s| async move {
        let files = vec![entry("CURRENT", CURRENT), entry("000007.sst", &[7u8; 4096])];
        accept(&mut s, files).await;
        send_file(&s, 0, CURRENT, true).await;
        metadata_then_complete(&mut s).await;
        s
    })
    .await;
    expect_rejection(addr, "protocol_violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_in_the_manifest_are_rejected() {
    let _turn = turn(Needs::Nothing).await;
    let (_ep, addr) = hostile(|mut s| async move {
        let files = vec![entry("CURRENT", CURRENT), entry("../../escaped", b"x")];
        accept(&mut s, files).await;
        s
    })
    .await;
    expect_rejection(addr, "protocol_violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_bytes_than_announced_are_cut_off() {
    let _turn = turn(Needs::Nothing).await;
    let (_ep, addr) = hostile(|mut s| async move {
        let files = vec![entry("CURRENT", CURRENT)];
        accept(&mut s, files).await;
        let mut long = CURRENT.to_vec();
        long.extend_from_slice(&[0u8; 100_000]);
        send_file(&s, 0, &long, true).await;
        s
    })
    .await;
    expect_rejection(addr, "size_mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_stream_that_never_ends_trips_the_idle_timeout() {
    let _turn = turn(Needs::Nothing).await;
    let (_ep, addr) = hostile(|mut s| async move {
        let files = vec![entry("CURRENT", CURRENT), entry("000007.sst", &[7u8; 4096])];
        accept(&mut s, files).await;
        send_file(&s, 0, CURRENT, true).await;
        let st = send_file(&s, 1, &[7u8; 100], false).await;
        // Hold the stream open, silent.
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(st);
        s
    })
    .await;
    expect_rejection(addr, "idle_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_the_limit_is_refused_before_it_is_buffered() {
    let _turn = turn(Needs::Nothing).await;
    let (_ep, addr) = hostile(|mut s| async move {
        let files = vec![entry("CURRENT", CURRENT)];
        accept(&mut s, files).await;
        send_file(&s, 0, CURRENT, true).await;
        // A length prefix announcing 1 GiB of metadata.
        let mut huge = (1u32 << 30).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0u8; 64]);
        s.send.write_all(&huge).await.unwrap();
        s
    })
    .await;
    expect_rejection(addr, "protocol_violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_stream_outside_the_manifest_is_rejected() {
    let _turn = turn(Needs::Nothing).await;
    let (_ep, addr) = hostile(|mut s| async move {
        let files = vec![entry("CURRENT", CURRENT)];
        accept(&mut s, files).await;
        send_file(&s, 5, b"surprise", true).await;
        s
    })
    .await;
    expect_rejection(addr, "protocol_violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_with_valid_checksums_never_appears() {
    let _turn = turn(Needs::Nothing).await;
    // Every file matches its digest, Complete arrives, but the files are not a RocksDB: the
    // commit's cross-check of the metadata against the data refuses it.
    let (_ep, addr) = hostile(|mut s| async move {
        let files = vec![entry("CURRENT", CURRENT)];
        accept(&mut s, files).await;
        send_file(&s, 0, CURRENT, true).await;
        let meta = PartitionMeta {
            offset: Some(41),
            version_state: None,
        };
        s.send
            .write_all(&encode(&ControlFrame::Metadata(meta)))
            .await
            .unwrap();
        write_frame(&mut s.send, &ControlFrame::Complete)
            .await
            .unwrap();
        s
    })
    .await;
    expect_rejection(addr, "protocol_violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_trickling_in_below_one_buffer_per_idle_timeout_is_not_idle() {
    let _turn = turn(Needs::Nothing).await;
    // 16 KiB at 1 KiB per 250 ms: progress every quarter second, but the whole file is far
    // less than one receive buffer, so a client that counted progress per buffer written would
    // see nothing for 4 s and give up at its 2 s idle timeout. (A slow share of a slow path
    // looks like this: 20 clients on 20 Mbit/s, eight files each in flight.)
    const SLICE: usize = 1024;
    const SLICES: usize = 16;
    let sst = [7u8; SLICE * SLICES];
    let (_ep, addr) = hostile(move |mut s| async move {
        let files = vec![entry("CURRENT", CURRENT), entry("000007.sst", &sst)];
        accept(&mut s, files).await;
        send_file(&s, 0, CURRENT, true).await;
        let mut st = send_file(&s, 1, &[], false).await;
        for slice in sst.chunks(SLICE) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            st.write_all(slice).await.unwrap();
        }
        st.finish().unwrap();
        let _ = st.stopped().await;
        metadata_then_complete(&mut s).await;
        s
    })
    .await;
    // Both files arrive whole and match their digests (with a 2 s idle timeout); only the
    // commit's check that they form a database refuses them (they do not).
    let attempts = expect_rejection(addr, "protocol_violation").await;
    assert_eq!(attempts[0].bytes, (CURRENT.len() + sst.len()) as u64);
}
