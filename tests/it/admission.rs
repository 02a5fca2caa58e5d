//! Admission before authentication: floods an open port meets, each bounded in count and
//! time, on loopback only. The flooders come from 127.0.0.2 (another host to the server),
//! and while each flood runs an allowed client from 127.0.0.1 still completes a fetch.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use quicstrap::net::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FLOODER: [u8; 4] = [127, 0, 0, 2];

/// `count` QUIC Initial packets, each opening a different connection (fresh connection IDs),
/// as a real client makes them: captured from a quinn client aimed at a socket of ours.
///
/// One connection at a time, each awaited asynchronously: a burst of 200 Initials overflows
/// a default-sized receive buffer, and a blocking receive can hold up the endpoint's driver,
/// so the capture must not depend on either.
async fn client_initials(count: usize) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let crypto = tls::client_config(&tls::dev::client().unwrap()).unwrap();
    let client_cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    ));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let target = sink.local_addr().unwrap();
    let mut pending = Vec::new();
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut buf = [0u8; 2048];
    while out.len() < count {
        pending.push(
            endpoint
                .connect_with(client_cfg.clone(), target, "localhost")
                .unwrap(),
        );
        // Wait for this connection's Initial; resends of earlier ones are skipped.
        loop {
            let n = tokio::time::timeout(Duration::from_secs(30), sink.recv(&mut buf))
                .await
                .expect("the client sends its Initial")
                .unwrap();
            // Long-header Initial; the destination CID tells connections (and resends) apart.
            let dcid_len = buf[5] as usize;
            if seen.insert(buf[6..6 + dcid_len].to_vec()) {
                out.push(buf[..n].to_vec());
                break;
            }
        }
    }
    drop(pending);
    endpoint.close(0u32.into(), b"");
    out
}

/// A server over a fresh partition, sent `count` handshakes from the flooding host that
/// will never finish; returns once `flooded` holds of its counters. `slots` is how many of
/// them the server's configuration lets start a handshake; it answers every other one at
/// once (refused or sent a Retry).
async fn flooded_server(
    partition: u32,
    count: usize,
    slots: u64,
    tweak: impl FnOnce(&mut quicstrap::server::ServerConfig),
    flooded: impl Fn(&quicstrap::server::ServerStats) -> bool,
) -> (
    tempfile::TempDir,
    quicstrap::PartitionId,
    quicstrap::server::Server,
) {
    let (src, id, quic) = served(partition, (20_000, 1000, 5_000), |c| {
        c.policy.handshake_timeout = Duration::from_secs(2);
        tweak(c);
    })
    .await;
    let target = quic.local_addr().unwrap();
    let flood = UdpSocket::bind(SocketAddr::from((FLOODER, 0))).unwrap();
    // Never more than 32 Initials ahead of what the server has answered, so its socket's
    // receive buffer (~90 of them by default) cannot drop part of the flood on a host that
    // is slow to schedule it.
    let stats = quic.stats();
    // A handshake that timed out freed its slot for a later Initial: count it as answered.
    let answered = || {
        stats.refused.load(Ordering::Relaxed)
            + stats.retried.load(Ordering::Relaxed)
            + stats.handshakes_failed.load(Ordering::Relaxed)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for (sent, initial) in (0u64..).zip(client_initials(count).await.iter()) {
        while sent > answered() + slots + 32 {
            assert!(Instant::now() < deadline, "the server stopped answering");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        flood.send_to(initial, target).unwrap();
    }
    wait_for("the flood to be handled", Duration::from_secs(10), || {
        flooded(&stats)
    })
    .await;
    (src, id, quic)
}

/// Meanwhile, from another host, an allowed client fetches: reported as `scenario`.
async fn allowed_client_fetches(
    scenario: &str,
    src: &std::path::Path,
    id: &quicstrap::PartitionId,
    quic: &quicstrap::server::Server,
) {
    let start = Instant::now();
    let dst = fetch_ok(quic, id).await;
    assert_same(&id.dir(src), &id.dir(dst.path()));
    chaos_outcome(scenario, true, start.elapsed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_capped_per_host_and_allowed_clients_still_fetch() {
    let _turn = turn(Needs::Nothing).await;
    // 200 handshakes that will never finish, from one host: four get a slot.
    let (src, id, quic) = flooded_server(
        50,
        200,
        4,
        |c| {
            c.max_handshakes_per_ip = 4;
            c.retry_above = 1_000;
        },
        |s| s.refused.load(Ordering::Relaxed) >= 150,
    )
    .await;
    allowed_client_fetches("quic_handshake_flood", src.path(), &id, &quic).await;
    // The half-open ones are dropped at the handshake timeout, not the idle timeout.
    let stats = quic.stats();
    wait_for(
        "half-open handshakes to time out",
        Duration::from_secs(10),
        || stats.handshakes_failed.load(Ordering::Relaxed) >= 4,
    )
    .await;
    assert!(stats.refused.load(Ordering::Relaxed) <= 196);
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_a_threshold_unvalidated_clients_must_answer_a_retry_first() {
    let _turn = turn(Needs::Nothing).await;
    // A spoofed-source flood never answers a Retry: past two half-open handshakes it costs
    // the server one stateless packet each.
    let (src, id, quic) = flooded_server(
        51,
        100,
        2,
        |c| {
            c.retry_above = 2;
            c.max_handshakes_per_ip = 64;
        },
        |s| s.retried.load(Ordering::Relaxed) >= 90,
    )
    .await;
    // A real client answers the Retry and fetches.
    allowed_client_fetches("quic_flood_retry", src.path(), &id, &quic).await;
    quic.shutdown().await;
}

/// [`allowed_client_fetches`] over the HTTPS baseline listening on `addr`.
async fn allowed_https_client_fetches(
    scenario: &str,
    src: &std::path::Path,
    id: &quicstrap::PartitionId,
    addr: SocketAddr,
) {
    let dst = tempfile::tempdir().unwrap();
    let start = Instant::now();
    https_fetcher(|_| {})
        .fetch(
            id,
            &[quicstrap::Peer::new(addr)],
            dst.path(),
            &Default::default(),
        )
        .await
        .expect("an allowed client fetches during the flood");
    assert_same(&id.dir(src), &id.dir(dst.path()));
    chaos_outcome(scenario, true, start.elapsed(), 0);
}

/// A TCP connection from the flooding host, to `addr`.
async fn flood_connect(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((FLOODER, 0)))?;
    sock.connect(addr).await
}

/// True once the server has closed `s` (a read returns end of stream or an error).
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 64];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connect_flood_is_capped_per_host_and_allowed_clients_still_fetch() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, quic) = served(52, (20_000, 1000, 5_000), |_| {}).await;
    let https = https_server(&quic, |c| {
        c.max_connections_per_ip = 8;
        c.policy.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = https.local_addr();
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(flood_connect(addr).await.unwrap());
    }
    let stats = https.stats();
    wait_for("refusals", Duration::from_secs(10), || {
        stats.connections_refused.load(Ordering::Relaxed) >= 150
    })
    .await;
    allowed_https_client_fetches("tcp_connect_flood", src.path(), &id, addr).await;
    // The eight admitted ones sent nothing: closed at the handshake timeout.
    let mut closed = 0;
    for s in &mut held {
        if closed_within(s, Duration::from_secs(6)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 200, "every flood connection is closed");
    https.shutdown().await;
    quic.shutdown().await;
}

/// A TLS client with the dev identity, speaking HTTP/1.1 to the baseline.
async fn https_client(addr: SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut cfg = tls::client_config(&tls::dev::client().unwrap()).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_and_allowed_clients_still_fetch() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, quic) = served(53, (20_000, 1000, 5_000), |_| {}).await;
    let https = https_server(&quic, |c| {
        c.policy.handshake_timeout = Duration::from_secs(2);
        c.header_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = https.local_addr();
    // Unauthenticated: a TLS ClientHello one byte at a time, from the flooding host.
    let trickle_tls = tokio::spawn(async move {
        let mut s = flood_connect(addr).await.unwrap();
        let start = Instant::now();
        // A record header announcing 512 bytes, then the record a byte at a time: nothing
        // the server can reject early, only time out.
        let trickle = [0x16u8, 0x03, 0x01, 0x02, 0x00]
            .into_iter()
            .chain(std::iter::repeat(0));
        for b in trickle.take(40) {
            if s.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let cut = closed_within(&mut s, Duration::from_secs(5)).await;
        (cut, start.elapsed())
    });
    // Authenticated: headers one byte at a time.
    let trickle_headers = tokio::spawn(async move {
        let mut s = https_client(addr).await;
        let start = Instant::now();
        let mut cut = false;
        for b in b"GET /v1/it_store/3/53/manifest HTTP/1.1\r\nHost: x\r\n" {
            if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
                cut = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if !cut {
            let mut b = [0u8; 256];
            cut = matches!(
                tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
                Ok(Ok(_)) | Ok(Err(_))
            );
        }
        (cut, start.elapsed())
    });
    // An allowed client is not held up by either.
    allowed_https_client_fetches("https_slowloris", src.path(), &id, addr).await;
    let (cut, after) = trickle_tls.await.unwrap();
    assert!(
        cut && after < Duration::from_secs(9),
        "TLS trickle: cut {cut} after {after:?}"
    );
    let (cut, after) = trickle_headers.await.unwrap();
    assert!(
        cut && after < Duration::from_secs(9),
        "header trickle: cut {cut} after {after:?}"
    );
    https.shutdown().await;
    quic.shutdown().await;
}

/// Reads one HTTP/1.1 response head (up to the blank line); returns it.
async fn read_head(s: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "connection closed mid-head"
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_body_releases_its_snapshot() {
    let _turn = turn(Needs::Nothing).await;
    let (_src, _id, quic) = served(54, (60_000, 1000, 60_000), |_| {}).await;
    let https = https_server(&quic, |c| {
        c.write_timeout = Duration::from_secs(2);
        c.policy.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let mut s = https_client(https.local_addr()).await;
    s.write_all(b"GET /v1/it_store/3/54/manifest HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let session = manifest["session"].as_str().unwrap().to_owned();
    let big = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|f| f["size"].as_u64().unwrap())
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    s.write_all(
        format!("GET /v1/it_store/3/54/files/{big}?session={session} HTTP/1.1\r\nHost: x\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    read_head(&mut s).await;
    // ... and reads no more of a ~60 MB body.
    assert_eq!(quic.snapshots().users(), 1);
    let stats = https.stats();
    wait_for(
        "the stalled connection to be cut",
        Duration::from_secs(15),
        || stats.write_stalls.load(Ordering::Relaxed) == 1,
    )
    .await;
    wait_for(
        "the snapshot slot to be released",
        Duration::from_secs(15),
        || quic.snapshots().users() == 0 && https.sessions() == 0,
    )
    .await;
    drop(s);
    https.shutdown().await;
    quic.shutdown().await;
}

/// CPU seconds (user + system) the serving process has used so far.
fn cpu_seconds(pid: i32) -> f64 {
    testkit::cpu_seconds(pid).expect("the server's CPU time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_out_of_file_descriptors_backs_off_instead_of_spinning() {
    let _turn = turn(Needs::Nothing).await;
    let root = tempfile::tempdir().unwrap();
    let mut serve = ServeProcess::start(root.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics: SocketAddr = serve
        .next_line("metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    // Leave the process four spare descriptors.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", serve.pid()))
        .unwrap()
        .count() as u64;
    let limit = libc::rlimit {
        rlim_cur: fds + 4,
        rlim_max: fds + 4,
    };
    // SAFETY: prlimit on our own child, with a valid rlimit.
    let rc = unsafe {
        libc::prlimit(
            serve.pid(),
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    // Connections that say nothing: four take the spare descriptors, the rest wait in the
    // backlog, where every accept now fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(tokio::net::TcpStream::connect(metrics).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_seconds(serve.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(serve.pid()) - before;
    assert!(used < 0.5, "the listener spun: {used:.2} CPU-s in 2 s");
    // Once they go, a scrape is served again.
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(metrics).await {
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
            if out.contains("quicstrap_") {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "no scrape served after the flood");
    serve.signal(libc::SIGTERM);
}
