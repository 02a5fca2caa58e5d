//! What an authenticated client can make a server hold, and for how long: no state for a
//! partition that is not there (RSS of a `serve` process under 100 000 requests for distinct
//! missing partitions, over QUIC and over HTTPS keep-alive), a per-client share of snapshot
//! users, connections closed when they carry no transfer — by the server after its idle time,
//! and first by the fetcher's pool after its own, shorter one.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::common::*;
use quicstrap::net::tls::{self, Identity};
use quicstrap::net::wire::{write_frame, FrameReader};
use quicstrap::protocol::{ControlFrame, Reject, RejectReason, Request, PROTOCOL_VERSION};
use quicstrap::store::checksum::ChecksumAlgo;
use quicstrap::store::partition::TableFormat;

/// How much a `serve` process's RSS may grow over 100 000 requests of one transport.
const RSS_GROWTH_LIMIT_KB: u64 = 2_000;

/// A store name of 120 characters that no other request uses.
fn missing_store(n: u64) -> String {
    format!("missing-{n:012}-{}", "x".repeat(99))
}

/// The resident set size of process `pid`, in kB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A QUIC client endpoint on `ip` presenting `identity`.
fn quic_client(ip: [u8; 4], identity: &Identity) -> quinn::Endpoint {
    let crypto = tls::client_config(identity).unwrap();
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::from((ip, 0))).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(qc)));
    ep
}

/// A connection to `server` from `ip` as `identity`.
async fn connect(ip: [u8; 4], identity: &Identity, server: SocketAddr) -> quinn::Connection {
    let ep = quic_client(ip, identity);
    let conn = ep.connect(server, "localhost").unwrap().await.unwrap();
    // The connection keeps its endpoint's driver alive; the handle can go.
    drop(ep);
    conn
}

fn request(transfer_id: u64, store: &str, partition: u32) -> Request {
    Request {
        version: PROTOCOL_VERSION,
        transfer_id,
        store: store.into(),
        store_version: 3,
        partition,
        table_format: TableFormat::Block,
        checksum: ChecksumAlgo::Md5,
        resume: None,
    }
}

/// Sends `req` on a new control stream; returns the first answer that is not a heartbeat, and
/// the stream (a transfer the server accepted lasts while it is open).
async fn ask(
    conn: &quinn::Connection,
    req: &Request,
) -> (ControlFrame, quinn::SendStream, FrameReader) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    write_frame(&mut send, &ControlFrame::Request(req.clone()))
        .await
        .unwrap();
    let mut reader = FrameReader::new(recv, 1 << 24);
    loop {
        let frame =
            tokio::time::timeout(Duration::from_secs(30), reader.next_frame::<ControlFrame>())
                .await
                .expect("the server answered in time")
                .expect("a readable answer")
                .expect("a frame");
        if frame != ControlFrame::Preparing {
            return (frame, send, reader);
        }
    }
}

/// An HTTP/1.1 keep-alive connection over TLS to `server` from `ip` as `identity`.
async fn https_connect(
    ip: [u8; 4],
    identity: &Identity,
    server: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>> {
    let mut cfg = tls::client_config(identity).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    let tcp = socket.connect(server).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET path` on `sender`: the status, the typed refusal if any, and the body.
async fn https_get(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    path: &str,
) -> (u16, Option<String>, String) {
    sender.ready().await.unwrap();
    let resp = sender
        .send_request(
            hyper::Request::get(path)
                .header("host", "localhost")
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let reject = resp
        .headers()
        .get(quicstrap_baseline::REJECT_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, reject, String::from_utf8_lossy(&body).into_owned())
}

/// Requests over QUIC with `workers` control streams at a time on one connection, each for a
/// partition nobody has, numbered from `next` up to `end`; each must be refused `NotFound`.
async fn quic_missing(conn: &quinn::Connection, next: &Arc<AtomicU64>, end: u64, workers: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (conn, next) = (conn.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return;
                }
                let (answer, _, _) = ask(&conn, &request(n, &missing_store(n), n as u32)).await;
                match answer {
                    ControlFrame::Reject(Reject {
                        reason: RejectReason::NotFound,
                        ..
                    }) => {}
                    other => panic!("request {n}: {other:?}"),
                }
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
}

/// The same over HTTPS, one request at a time on each of `conns` keep-alive connections.
async fn https_missing(server: SocketAddr, next: &Arc<AtomicU64>, end: u64, conns: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let next = next.clone();
        tasks.spawn(async move {
            let mut sender =
                https_connect([127, 0, 0, 1], &tls::dev::client().unwrap(), server).await;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return;
                }
                let path = format!("/v1/{}/3/{n}/manifest", missing_store(n));
                let (status, reject, body) = https_get(&mut sender, &path).await;
                assert_eq!(
                    (status, reject.as_deref()),
                    (404, Some("not_found")),
                    "request {n}: {body}"
                );
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
}

/// A `serve` process asked over QUIC and HTTPS for 100 000 distinct partitions it does not
/// hold, each: its RSS after a warm-up stays within 2 MB. (Each such request used to leave an
/// entry in the snapshot map, about 300 B, for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_memory_stays_flat_under_requests_for_missing_partitions() {
    let _turn = turn(Needs::Nothing).await;
    const WARM_UP: u64 = 5_000;
    const REQUESTS: u64 = 100_000;
    // Below the per-client share (20): every request reaches the partition lookup.
    const AT_ONCE: usize = 8;
    let data = tempfile::tempdir().unwrap();
    let mut cmd = serve_command_in(None, data.path(), "127.0.0.1:0");
    cmd.args(["--http-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "error")
        .stderr(Stdio::inherit());
    let mut serve = ServeProcess::spawn(cmd);
    let https = serve.next_addr("https listening on");
    serve.drain_stdout();
    let pid = serve.pid();
    let conn = connect([127, 0, 0, 1], &tls::dev::client().unwrap(), serve.addr).await;
    let quic_next = Arc::new(AtomicU64::new(0));
    // HTTPS asks for names QUIC never asked for: each request is for a partition new to the
    // server.
    const HTTPS_FROM: u64 = 1_000_000;
    let https_next = Arc::new(AtomicU64::new(HTTPS_FROM));
    let start = Instant::now();
    quic_missing(&conn, &quic_next, WARM_UP, AT_ONCE).await;
    https_missing(https, &https_next, HTTPS_FROM + WARM_UP, 4).await;
    let before = rss_kb(pid);
    let quic_started = Instant::now();
    quic_missing(&conn, &quic_next, WARM_UP + REQUESTS, AT_ONCE).await;
    let after_quic = rss_kb(pid);
    let quic_took = quic_started.elapsed();
    let quic_secs = start.elapsed().as_secs_f64();
    let https_started = Instant::now();
    https_missing(https, &https_next, HTTPS_FROM + WARM_UP + REQUESTS, 4).await;
    let after_https = rss_kb(pid);
    let https_took = https_started.elapsed();
    println!(
        "serve RSS: {before} kB after the warm-up, {after_quic} kB after {REQUESTS} QUIC \
         requests, {after_https} kB after {REQUESTS} HTTPS requests (QUIC done at {quic_secs:.1} s, \
         all at {:.1} s)",
        start.elapsed().as_secs_f64()
    );
    let growth = |from: u64, to: u64| to.saturating_sub(from);
    assert!(
        growth(before, after_quic) < RSS_GROWTH_LIMIT_KB,
        "QUIC: RSS {before} -> {after_quic} kB over {REQUESTS} requests"
    );
    assert!(
        growth(after_quic, after_https) < RSS_GROWTH_LIMIT_KB,
        "HTTPS: RSS {after_quic} -> {after_https} kB over {REQUESTS} requests"
    );
    chaos_outcome("missing_partitions_quic", true, quic_took, 0);
    chaos_outcome("missing_partitions_https", true, https_took, 0);
    conn.close(0u32.into(), b"done");
    serve.stop(Duration::from_secs(10));
}

/// One client (a certificate at a host) holding its share of snapshot users is answered
/// `Busy`, naming the per-client share, over QUIC and HTTPS; the same certificate from another
/// host and another certificate from the same host are other clients and are served; once the
/// first client's transfer ends it is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_share_is_busy_while_others_are_served() {
    let _turn = turn(Needs::Nothing).await;
    let started = Instant::now();
    let (src, id, _) = seeded_1k(90, 4_000);
    // Slow, so an accepted transfer holds its user for the whole test.
    let quic = server_at(src.path(), 100_000, |c| {
        c.snapshots.max_users_per_client = 1
    })
    .await;
    let https = https_server(&quic, |_| {}).await;
    let addr = quic.local_addr().unwrap();
    let (node, other_cert) = (tls::dev::client().unwrap(), tls::dev::server().unwrap());
    const HOST: [u8; 4] = [127, 0, 0, 1];
    const OTHER_HOST: [u8; 4] = [127, 0, 0, 2];

    let a = connect(HOST, &node, addr).await;
    let (first, held, _held_reader) = ask(&a, &request(1, &id.store, id.partition)).await;
    assert!(matches!(first, ControlFrame::Accept(_)), "{first:?}");
    // Over its share: on the same connection, and on another one of the same client.
    let a2 = connect(HOST, &node, addr).await;
    for (conn, transfer) in [(&a, 2), (&a2, 1)] {
        let (over, _, _) = ask(conn, &request(transfer, &id.store, id.partition)).await;
        let ControlFrame::Reject(Reject {
            reason: RejectReason::Busy,
            message,
        }) = &over
        else {
            panic!("expected Busy, got {over:?}")
        };
        assert!(message.contains("per-client share"), "{message}");
    }
    let stats = quic.stats();
    assert_eq!(stats.busy_per_client.load(Ordering::Relaxed), 2);
    assert_eq!(stats.busy.load(Ordering::Relaxed), 2);
    // Over HTTPS too: the share is the snapshot manager's, whatever the transport.
    let mut a_https = https_connect(HOST, &node, https.local_addr()).await;
    let manifest = format!("/v1/{}/{}/{}/manifest", id.store, id.version, id.partition);
    let (status, reject, body) = https_get(&mut a_https, &manifest).await;
    assert_eq!((status, reject.as_deref()), (503, Some("busy")), "{body}");
    assert!(body.contains("per-client share"), "{body}");
    assert_eq!(https.stats().busy_per_client.load(Ordering::Relaxed), 1);

    // Other clients are served meanwhile.
    let b = connect(OTHER_HOST, &node, addr).await;
    let (served, _b_send, _b_reader) = ask(&b, &request(1, &id.store, id.partition)).await;
    assert!(matches!(served, ControlFrame::Accept(_)), "{served:?}");
    let c = connect(HOST, &other_cert, addr).await;
    let (served, _c_send, _c_reader) = ask(&c, &request(1, &id.store, id.partition)).await;
    assert!(matches!(served, ControlFrame::Accept(_)), "{served:?}");
    let mut d_https = https_connect(OTHER_HOST, &other_cert, https.local_addr()).await;
    let (status, _, body) = https_get(&mut d_https, &manifest).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(quic.snapshots().users(), 4);

    // The first client's transfer ends: it has room again.
    drop((held, _held_reader));
    a.close(0u32.into(), b"gone");
    wait_for("the first transfer to end", Duration::from_secs(30), || {
        quic.snapshots().users() == 3
    })
    .await;
    let (again, _, _) = ask(&a2, &request(2, &id.store, id.partition)).await;
    assert!(matches!(again, ControlFrame::Accept(_)), "{again:?}");
    chaos_outcome("client_over_its_share", true, started.elapsed(), 0);
    https.shutdown().await;
    quic.shutdown().await;
}

/// A connection that carries no transfer is closed by the server after its idle time (and
/// counted); one whose transfer lasts longer than that is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_closes_connections_that_carry_no_transfer() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, total) = seeded_1k(91, 2_000);
    const IDLE: Duration = Duration::from_secs(2);
    // The transfer takes about twice the idle time.
    let rate = total * 1_000 / (2 * IDLE.as_millis() as u64);
    let quic = server_at(src.path(), rate, |c| c.connection_idle = IDLE).await;
    let stats = quic.stats();

    let idle = connect(
        [127, 0, 0, 1],
        &tls::dev::client().unwrap(),
        quic.local_addr().unwrap(),
    )
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(30), idle.closed())
        .await
        .expect("closed by the server");
    let quinn::ConnectionError::ApplicationClosed(close) = &closed else {
        panic!("{closed:?}")
    };
    assert_eq!(
        (close.error_code.into_inner(), &close.reason[..]),
        (0, &b"idle"[..])
    );
    assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);

    // A transfer longer than the idle time keeps its connection.
    let started = Instant::now();
    let dst = fetch_ok(&quic, &id).await;
    assert!(
        started.elapsed() > IDLE,
        "the transfer was not longer than the idle time"
    );
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    assert_eq!(stats.connections.load(Ordering::Relaxed), 2);
    chaos_outcome("idle_connection_closed", true, started.elapsed(), 0);
    quic.shutdown().await;
}

/// The fetcher's pooled connection stays open for as long as its transfer runs, then closes
/// once unused for the pool's idle time, long before the server's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closes_when_no_transfer_uses_it() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, total) = seeded_1k(92, 2_000);
    const POOL_IDLE: Duration = Duration::from_millis(500);
    // The transfer takes about four times the pool's idle time.
    let rate = total * 1_000 / (4 * POOL_IDLE.as_millis() as u64);
    let quic = server_at(src.path(), rate, |c| {
        c.connection_idle = Duration::from_secs(3600)
    })
    .await;
    let f = fetcher(|c| c.tuning.pool_idle = POOL_IDLE);
    let dst = tempfile::tempdir().unwrap();
    let started = Instant::now();
    f.fetch(&id, &[peer(&quic)], dst.path()).await.unwrap();
    assert!(
        started.elapsed() > POOL_IDLE,
        "the transfer was not longer than the idle time"
    );
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    // One connection for the check and the whole transfer: not closed under it.
    assert_eq!(quic.stats().connections.load(Ordering::Relaxed), 1);
    wait_for(
        "the pooled connection to close",
        Duration::from_secs(30),
        || quic.open_connections() == 0,
    )
    .await;
    assert_eq!(
        quic.stats().idle_closed.load(Ordering::Relaxed),
        0,
        "closed by the server"
    );
    // The next partition from that peer connects again.
    let again = tempfile::tempdir().unwrap();
    f.fetch(&id, &[peer(&quic)], again.path()).await.unwrap();
    assert_eq!(quic.stats().connections.load(Ordering::Relaxed), 2);
    f.close().await;
    quic.shutdown().await;
}
