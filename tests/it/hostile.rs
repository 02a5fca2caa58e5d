//! A hostile serving peer: it speaks the protocol over real QUIC and TLS but lies. The client
//! must reject every lie, clean up, apply no metadata and never let the partition appear
//! (docs/design.md, invariants *zero partial state*, *metadata after files* and *bad input
//! never crashes a peer*, seen from the client side).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use quicstrap::net::wire::{write_frame, FrameReader};
use quicstrap::protocol::{
    encode, Accept, ControlFrame, FileEntry, FileHeader, FileTrailer, PartitionMeta, Request,
};

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

fn md5(content: &[u8]) -> Vec<u8> {
    let mut h =
        quicstrap::store::checksum::Hasher::new(quicstrap::store::checksum::ChecksumAlgo::Md5);
    h.update(content);
    h.finish()
}

fn entry(name: &str, content: &[u8]) -> FileEntry {
    FileEntry {
        name: name.into(),
        size: content.len() as u64,
        digest: md5(content),
    }
}

/// Answers the request with `Accept` for `files` (a client that refuses it may stop reading
/// before it is all written: that is no failure of the hostile side).
async fn accept(s: &mut Session, files: Vec<FileEntry>) {
    accept_at(s, files, PartitionMeta::default()).await
}

/// [`accept`] of a snapshot at `meta`.
async fn accept_at(s: &mut Session, files: Vec<FileEntry>, meta: PartitionMeta) {
    let _ = write_frame(
        &mut s.send,
        &ControlFrame::Accept(Accept {
            files,
            snapshot: Default::default(),
            meta,
        }),
    )
    .await;
}

/// Ends the transfer as a server does: `Complete`.
async fn complete(s: &mut Session) {
    write_frame(&mut s.send, &ControlFrame::Complete)
        .await
        .unwrap();
}

/// Ends a file stream as a server does: the digest trailer, then the end of the stream.
async fn finish_file(st: &mut quinn::SendStream, digest: Vec<u8>) {
    write_frame(st, &FileTrailer { digest }).await.unwrap();
    st.finish().unwrap();
}

/// Sends file `index` as `bytes`; `finish` ends it with the trailer an honest server would
/// send for those bytes.
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
        finish_file(&mut st, md5(bytes)).await;
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
    let attempts = all_failed(&err);
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
    attempts.to_vec()
}

const CURRENT: &[u8] = b"MANIFEST-000005\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_before_every_file_is_rejected() {
    let _turn = turn(Needs::Nothing).await;
    let (_ep, addr) = hostile(|mut s| async move {
        let files = vec![entry("CURRENT", CURRENT), entry("000007.sst", &[7u8; 4096])];
        accept(&mut s, files).await;
        send_file(&s, 0, CURRENT, true).await;
        complete(&mut s).await;
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

/// A file whose manifest entry has no digest (the server computes it while sending), and the
/// trailer that should bring it lies: the bytes are caught, nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_trailer_is_caught() {
    let _turn = turn(Needs::Nothing).await;
    let started = std::time::Instant::now();
    let (_ep, addr) = hostile(|mut s| async move {
        let mut unknown = entry("CURRENT", CURRENT);
        unknown.digest.clear();
        accept(&mut s, vec![unknown]).await;
        let mut st = send_file(&s, 0, CURRENT, false).await;
        let mut lie = md5(CURRENT);
        lie[0] ^= 1;
        finish_file(&mut st, lie).await;
        complete(&mut s).await;
        s
    })
    .await;
    expect_rejection(addr, "checksum_mismatch").await;
    chaos_outcome("v3_wrong_trailer", true, started.elapsed(), 0);
}

/// Bytes that match the trailer but not the digest the manifest gave: the server contradicts
/// itself; and a stream that ends without its trailer. Both refused, nothing committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailer_that_contradicts_the_manifest_or_is_missing_is_refused() {
    let _turn = turn(Needs::Nothing).await;
    let started = std::time::Instant::now();
    let (_ep, addr) = hostile(|mut s| async move {
        accept(&mut s, vec![entry("CURRENT", CURRENT)]).await;
        let other = b"MANIFEST-000009\n";
        let mut st = send_file(&s, 0, other, false).await;
        finish_file(&mut st, md5(other)).await;
        complete(&mut s).await;
        s
    })
    .await;
    expect_rejection(addr, "protocol_violation").await;

    let (_ep, addr) = hostile(|mut s| async move {
        accept(&mut s, vec![entry("CURRENT", CURRENT)]).await;
        let mut st = send_file(&s, 0, CURRENT, false).await;
        st.finish().unwrap();
        complete(&mut s).await;
        s
    })
    .await;
    expect_rejection(addr, "protocol_violation").await;
    chaos_outcome(
        "v3_trailer_contradicts_or_missing",
        true,
        started.elapsed(),
        0,
    );
}

/// A server of protocol version 2 ends a transfer with `Metadata`; since version 3 the
/// metadata came with `Accept`, and a second, later one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_frame_after_the_files_is_refused() {
    let _turn = turn(Needs::Nothing).await;
    let (_ep, addr) = hostile(|mut s| async move {
        accept(&mut s, vec![entry("CURRENT", CURRENT)]).await;
        send_file(&s, 0, CURRENT, true).await;
        write_frame(
            &mut s.send,
            &ControlFrame::Metadata(PartitionMeta::default()),
        )
        .await
        .unwrap();
        complete(&mut s).await;
        s
    })
    .await;
    expect_rejection(addr, "protocol_violation").await;
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
        let meta = PartitionMeta {
            offset: Some(41),
            version_state: None,
        };
        accept_at(&mut s, files, meta).await;
        send_file(&s, 0, CURRENT, true).await;
        s.send
            .write_all(&encode(&ControlFrame::Complete))
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
        finish_file(&mut st, md5(&sst)).await;
        let _ = st.stopped().await;
        complete(&mut s).await;
        s
    })
    .await;
    // Both files arrive whole and match their digests (with a 2 s idle timeout); only the
    // commit's check that they form a database refuses them (they do not).
    let attempts = expect_rejection(addr, "protocol_violation").await;
    assert_eq!(attempts[0].bytes, (CURRENT.len() + sst.len()) as u64);
}

// ---- What a hostile server can make a fetcher spend (bounded, then the next peer) ----

/// A field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// The receive budget of the fetchers below: the bound on what a transfer holds unread.
const BUDGET: u64 = 32 << 20;
/// What a hostile server may make a fetcher hold beyond its receive budget.
const SLACK: u64 = 64 << 20;

/// What a fetch that met the hostile server at `addr` first spent before it moved on.
struct Spent {
    /// Growth of the process's peak RSS over its RSS before the fetch.
    peak_rss: u64,
    /// The largest resume journal seen on disk.
    journal: u64,
    /// The most files the fetch had open at once.
    open_files: usize,
}

/// Fetches from the hostile server at `addr`, then from a good server with the partition: the
/// fetch must end at the good one, after an attempt at the hostile one ending in `outcome`.
async fn next_peer_after(addr: SocketAddr, outcome: &str, scenario: &str) -> Spent {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    let dst = tempfile::tempdir().unwrap();
    let (src, id, good) = served(0, (1_000, 100, 500), |_| {}).await;
    let f = fetcher(|c| {
        c.policy.idle_timeout = Duration::from_secs(2);
        c.max_resumes = 0;
        c.max_recv_buffer = BUDGET;
    });
    // Peak RSS counts from here (5 in clear_refs resets VmHWM to the current RSS).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_bytes("VmRSS:");
    let (journal, open_files) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
    let watch = {
        let (dst, journal, open_files) =
            (dst.path().to_owned(), journal.clone(), open_files.clone());
        let good_stats = good.stats();
        tokio::spawn(async move {
            loop {
                // What the hostile peer made the client write and hold open, measured while
                // only it has sent anything (the good peer's transfer has its own journal, and
                // its partition is opened as a database to be vetted and committed).
                if good_stats.accepted.load(Ordering::Relaxed) > 0 {
                    return;
                }
                for d in temp_dirs(&dst) {
                    let j = d.join(quicstrap::client::resume::JOURNAL_FILE);
                    let len = std::fs::metadata(j).map(|m| m.len()).unwrap_or(0);
                    journal.fetch_max(len, Ordering::Relaxed);
                }
                // Received files: not the journal, nor a temp dir held open for its lock.
                let receiving = open_fds_under(&dst)
                    .into_iter()
                    .filter(|p| {
                        !p.ends_with(quicstrap::client::resume::JOURNAL_FILE) && p.is_file()
                    })
                    .count();
                open_files.fetch_max(receiving, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        f.fetch(&id, &[quicstrap::Peer::new(addr), peer(&good)], dst.path()),
    )
    .await
    .expect("the client moved on in bounded time")
    .unwrap();
    let peak = status_bytes("VmHWM:");
    watch.abort();
    let _ = watch.await;
    assert_eq!(report.attempts[0].outcome, outcome, "{:?}", report.attempts);
    assert_eq!(report.attempts.last().unwrap().outcome, "ok");
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    assert!(
        temp_dirs(dst.path()).is_empty(),
        "the hostile peer's files went"
    );
    good.shutdown().await;
    let spent = Spent {
        peak_rss: peak.saturating_sub(before),
        journal: journal.load(Ordering::Relaxed),
        open_files: open_files.load(Ordering::Relaxed),
    };
    assert!(
        spent.peak_rss <= BUDGET + SLACK,
        "peak RSS grew by {} MiB",
        spent.peak_rss >> 20
    );
    println!(
        "{scenario}: peak RSS +{} MiB, journal {} bytes, {} files open at most",
        spent.peak_rss >> 20,
        spent.journal,
        spent.open_files
    );
    // For CHAOS.md: time to a complete partition from the good peer, nothing lost.
    chaos_outcome(scenario, true, started.elapsed(), 0);
    spent
}

/// A manifest entry with a digest of `len` bytes (MD5's is 16).
fn with_digest(name: &str, len: usize) -> FileEntry {
    FileEntry {
        name: name.into(),
        size: 1,
        digest: vec![0xab; len],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_longer_than_its_algorithm_is_refused_and_never_journaled() {
    let _turn = turn(Needs::Process).await;
    // 7 MiB of digest: under the control-frame limit, so only its length can refuse it. Once
    // accepted it would be held, cloned into the journal and written out as JSON.
    let (_ep, addr) = hostile(|mut s| async move {
        accept(&mut s, vec![with_digest("CURRENT", 7 << 20)]).await;
        s
    })
    .await;
    let spent = next_peer_after(addr, "protocol_violation", "hostile_digest_7mib").await;
    assert_eq!(spent.journal, 0, "nothing of it was journaled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_over_the_frame_limit_or_the_file_limit_is_refused() {
    let _turn = turn(Needs::Process).await;
    // Over the 8 MiB control-frame limit: refused before it is buffered.
    let (_ep, addr) = hostile(|mut s| async move {
        let mut files = vec![entry("CURRENT", CURRENT)];
        files.extend((0..40_000).map(|i| with_digest(&format!("{i:0>250}"), 16)));
        accept(&mut s, files).await;
        s
    })
    .await;
    next_peer_after(addr, "protocol_violation", "hostile_manifest_10mb").await;
    // More files than any partition has (100 000), in a frame under the limit.
    let (_ep, addr) = hostile(|mut s| async move {
        let mut files = vec![entry("CURRENT", CURRENT)];
        files.extend(
            (0..quicstrap::protocol::transfer::MAX_FILES)
                .map(|i| with_digest(&format!("{i}.sst"), 16)),
        );
        accept(&mut s, files).await;
        s
    })
    .await;
    next_peer_after(addr, "protocol_violation", "hostile_manifest_100001_files").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_manifest_costs_a_journal_of_its_file_list_and_little_more() {
    let _turn = turn(Needs::Process).await;
    // 25 000 files of 240-character names: a valid manifest of ~6.5 MB; the server then goes
    // silent, so the attempt stalls and keeps a journal.
    let names: Vec<String> = (0..25_000).map(|i| format!("{i:0>240}")).collect();
    let list: u64 = names.iter().map(|n| n.len() as u64 + 2 * 16).sum();
    let (_ep, addr) = hostile(move |mut s| async move {
        let mut files = vec![entry("CURRENT", CURRENT)];
        files.extend(names.iter().map(|n| with_digest(n, 16)));
        accept(&mut s, files).await;
        s
    })
    .await;
    let spent = next_peer_after(addr, "idle_timeout", "hostile_25000_long_names").await;
    assert!(
        spent.journal > list,
        "the journal was written: {} bytes",
        spent.journal
    );
    assert!(
        spent.journal <= (1 << 20) + list,
        "journal of {} bytes for a file list of {list}",
        spent.journal
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_file_streams_waits_unread_beyond_the_files_in_flight() {
    let _turn = turn(Needs::Process).await;
    // 400 files, every stream opened at once with a few bytes and never finished: a client
    // that received each at once would hold 400 buffers and 400 open files.
    const FILES: usize = 400;
    let (_ep, addr) = hostile(|mut s| async move {
        let mut files = vec![entry("CURRENT", CURRENT)];
        files.extend((1..FILES).map(|i| entry(&format!("{i:06}.sst"), &[7u8; 4096])));
        accept(&mut s, files).await;
        let mut held = Vec::new();
        for i in 0..FILES as u32 {
            let opened =
                tokio::time::timeout(Duration::from_secs(1), send_file(&s, i, &[7u8; 16], false))
                    .await;
            match opened {
                Ok(st) => held.push(st),
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(held);
        s
    })
    .await;
    let spent = next_peer_after(addr, "idle_timeout", "hostile_400_file_streams").await;
    let most = quicstrap::protocol::transfer::MAX_FILES_IN_FLIGHT;
    assert!(
        spent.open_files <= most,
        "{} files open at once, more than {most}",
        spent.open_files
    );
    assert!(
        spent.open_files > 0,
        "the watch saw the files being received"
    );
}
