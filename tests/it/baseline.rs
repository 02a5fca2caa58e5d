//! The HTTP/TCP baseline: it serves the same snapshots (one checkpoint, digests computed once
//! for both transports), validates the same way, leaves nothing behind on failure, and is
//! fetchable with curl.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use quicstrap::client::{NextStep, Progress};
use quicstrap::store::partition::TableFormat;
use quicstrap::Peer;

fn https_peer(h: &quicstrap_baseline::HttpServer) -> Peer {
    Peer::new(h.local_addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_fetch_equals_the_source_over_one_or_four_connections_on_one_snapshot() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, quic) = served(40, (20_000, 500, 2_000), |_| {}).await;
    let https = https_server(&quic, |_| {}).await;
    for connections in [1, 4] {
        let dst = tempfile::tempdir().unwrap();
        let f = https_fetcher(|c| c.connections = connections);
        let report = f
            .fetch(&id, &[https_peer(&https)], dst.path(), &Progress::default())
            .await
            .unwrap();
        assert!(report.files >= 10, "{} files", report.files);
        assert_same(&id.dir(src.path()), &id.dir(dst.path()));
        assert!(temp_dirs(dst.path()).is_empty());
    }
    // QUIC after HTTPS: the very same snapshot, each file digested once, by the first fetch
    // that sent it, for all of them.
    let dst = fetch_ok(&quic, &id).await;
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    assert_eq!(quic.snapshots().created(), 1);
    let snap = quic.snapshots().current(&id).await.unwrap();
    let size: u64 = snap.files.iter().map(|f| f.size).sum();
    assert_eq!(snap.digest_bytes(), size);
    // The metadata request ended each session: no snapshot is held any more.
    assert_eq!(https.sessions(), 0);
    assert_eq!(quic.snapshots().users(), 0);
    https.shutdown().await;
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_refusals_are_the_same_typed_rejections_and_move_on() {
    let _turn = turn(Needs::Nothing).await;
    let empty = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (src, id) = seeded(41, (3_000, 200, 1_000));
    let busy_q = server(src.path(), |c| c.snapshots.max_users = 0).await;
    let busy = https_server(&busy_q, |_| {}).await;
    let missing_q = server(empty.path(), |_| {}).await;
    let missing = https_server(&missing_q, |_| {}).await;
    let plain_q = server(empty.path(), |c| c.policy.table_format = TableFormat::Plain).await;
    let plain = https_server(&plain_q, |c| c.policy.table_format = TableFormat::Plain).await;
    let good_q = server(src.path(), |_| {}).await;
    let good = https_server(&good_q, |_| {}).await;
    let report = https_fetcher(|_| {})
        .fetch(
            &id,
            &[
                https_peer(&busy),
                https_peer(&missing),
                https_peer(&plain),
                https_peer(&good),
            ],
            dst.path(),
            &Progress::default(),
        )
        .await
        .unwrap();
    let outcomes: Vec<_> = report.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["busy", "not_found", "format_mismatch", "ok"]);
    for a in &report.attempts[..3] {
        assert_eq!(a.next_step, Some(NextStep::NextPeer));
        assert_eq!(a.bytes, 0);
    }
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_checksum_mismatch_cleans_up_and_the_next_peer_succeeds() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (bad_src, id) = seeded(42, (20_000, 500, 5_000));
    let (good_src, _) = seeded(42, (20_000, 500, 5_000));
    let bad_q = server(bad_src.path(), |_| {}).await;
    let bad = https_server(&bad_q, |_| {}).await;
    let good_q = server(good_src.path(), |_| {}).await;
    let good = https_server(&good_q, |_| {}).await;
    poison_snapshot(&bad_q, &id).await;
    let f = https_fetcher(|c| c.connections = 2);
    let err = f
        .fetch(&id, &[https_peer(&bad)], dst.path(), &Progress::default())
        .await
        .unwrap_err();
    let attempts = all_failed(&err);
    assert_eq!(attempts[0].outcome, "checksum_mismatch");
    assert_eq!(attempts[0].next_step, Some(NextStep::CleanupThenNextPeer));
    assert!(!id.dir(dst.path()).exists(), "partition dir appeared");
    assert!(temp_dirs(dst.path()).is_empty(), "temp dir left");
    assert!(open_fds_under(dst.path()).is_empty(), "file handles left");
    let report = f
        .fetch(
            &id,
            &[https_peer(&bad), https_peer(&good)],
            dst.path(),
            &Progress::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.attempts.len(), 2);
    assert_same(&id.dir(good_src.path()), &id.dir(dst.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_client_not_on_the_allow_list_is_refused() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (_src, id, quic) = served(43, (1_000, 100, 1_000), |_| {}).await;
    let https = https_server(&quic, |_| {}).await;
    let mut cfg =
        quicstrap_baseline::HttpFetchConfig::new(quicstrap::net::tls::dev::intruder().unwrap());
    cfg.policy.connect_timeout = Duration::from_secs(5);
    let f = quicstrap_baseline::HttpFetcher::new(cfg).unwrap();
    let err = f
        .fetch(&id, &[https_peer(&https)], dst.path(), &Progress::default())
        .await
        .unwrap_err();
    let attempts = all_failed(&err);
    // TLS 1.3 reports a refused client certificate on the first read, so the refusal shows
    // as a failed connection or as the peer hanging up before any byte of the manifest.
    assert!(
        ["connect_failed", "peer_gone"].contains(&attempts[0].outcome.as_str()),
        "{attempts:?}"
    );
    assert_eq!(attempts[0].bytes, 0);
    assert!(!id.dir(dst.path()).exists());
    assert_eq!(
        quic.snapshots().created(),
        0,
        "a refused client made a snapshot"
    );
}

/// A client that connects and stalls before its TLS handshake is hung up on, so it cannot pin
/// a task and a socket for good; and it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_https_client_is_hung_up_on() {
    let _turn = turn(Needs::Nothing).await;
    use tokio::io::AsyncReadExt;
    let src = tempfile::tempdir().unwrap();
    let quic = server(src.path(), |_| {}).await;
    let https = https_server(&quic, |c| {
        c.policy.handshake_timeout = Duration::from_millis(300)
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(https.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("still open 5 s after a 300 ms handshake limit")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close");
    assert_eq!(
        https
            .stats()
            .handshakes_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// A `serve` process killed mid-file: the HTTPS client cleans up, leaves nothing, and the
/// next peer serves the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_server_killed_mid_file_leaves_nothing_and_the_next_peer_serves() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (dying_src, id) = seeded(44, (40_000, 1000, 4_000));
    let (good_src, _) = seeded(44, (40_000, 1000, 4_000));
    let mut dying = ServeProcess::start(
        dying_src.path(),
        &["--http-listen", "127.0.0.1:0", "--write-limit", "4000000"],
    );
    let dying_addr = dying.next_addr("https listening on ");
    let mut good = ServeProcess::start(good_src.path(), &["--http-listen", "127.0.0.1:0"]);
    let good_addr = good.next_addr("https listening on ");
    let f = std::sync::Arc::new(https_fetcher(|_| {}));
    let progress = std::sync::Arc::new(Progress::default());
    let task = {
        let (f, id, dst, p) = (
            f.clone(),
            id.clone(),
            dst.path().to_owned(),
            progress.clone(),
        );
        let peers = vec![Peer::new(dying_addr), Peer::new(good_addr)];
        tokio::spawn(async move { f.fetch(&id, &peers, &dst, &p).await })
    };
    wait_bytes(&progress, 2_000_000).await;
    dying.signal(libc::SIGKILL);
    let report = task.await.unwrap().unwrap();
    let outcomes: Vec<_> = report.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["peer_gone", "ok"], "{:?}", report.attempts);
    assert!(report.attempts[0].bytes > 2_000_000);
    assert_same(&id.dir(good_src.path()), &id.dir(dst.path()));
    assert!(temp_dirs(dst.path()).is_empty(), "temp dir left");
    assert!(open_fds_under(dst.path()).is_empty(), "file handles left");
}

/// The baseline is plain HTTPS: curl fetches the manifest and a file, and the file matches
/// the manifest's digest.
#[test]
fn curl_fetches_the_manifest_and_a_file() {
    let _turn = turn_blocking(Needs::Nothing);
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is not installed (scripts/setup.sh installs it)");
    }
    let out = tempfile::tempdir().unwrap();
    let (src, id) = seeded(45, (5_000, 200, 1_000));
    let mut serve = ServeProcess::start(src.path(), &["--http-listen", "127.0.0.1:0"]);
    let addr = serve.next_addr("https listening on ");
    let c = certs();
    let curl = |url: &str, out_file: Option<&std::path::Path>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--cert"])
            .arg(c.join("client.crt"))
            .arg("--key")
            .arg(c.join("client.key"))
            .arg("--cacert")
            .arg(c.join("ca.crt"))
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())]);
        if let Some(o) = out_file {
            // Headers and trailers go to `<file>.headers`.
            cmd.arg("-o")
                .arg(o)
                .args(["-H", "TE: trailers", "-D"])
                .arg(o.with_extension("headers"));
        }
        let r = cmd
            .arg(format!("https://localhost:{}{url}", addr.port()))
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        r.stdout
    };
    let base = format!("/v1/{}/{}/{}", id.store, id.version, id.partition);
    let manifest: quicstrap_baseline::Manifest =
        serde_json::from_slice(&curl(&format!("{base}/manifest?checksum=md5"), None)).unwrap();
    let file = manifest.files.iter().max_by_key(|f| f.size).unwrap();
    let path = out.path().join(&file.name);
    curl(
        &format!("{base}/files/{}?session={}", file.name, manifest.session),
        Some(&path),
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, file.size);
    let mut h =
        quicstrap::store::checksum::Hasher::new(quicstrap::store::checksum::ChecksumAlgo::Md5);
    h.update(&bytes);
    // A cold snapshot knows no SST digest before sending: it follows the body as a trailer.
    assert_eq!(file.digest, "", "{file:?}");
    let headers = std::fs::read_to_string(path.with_extension("headers")).unwrap();
    let trailer = headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{}: ", quicstrap_baseline::DIGEST_TRAILER)))
        .unwrap_or_else(|| panic!("no digest trailer in {headers}"));
    assert_eq!(hex::encode(h.finish()), trailer.trim());
    let meta: quicstrap::store::partition::PartitionMeta = serde_json::from_slice(&curl(
        &format!("{base}/metadata?session={}", manifest.session),
        None,
    ))
    .unwrap();
    assert_eq!(meta.offset, Some(4_999));
}
