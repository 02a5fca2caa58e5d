//! Limits that were built and never checked: the server's per-transfer timeout, the
//! connectivity check's overall cap, the server's write limit (alone and shared by two
//! client connections) and the client's partitions-at-once limit. Each assertion is a
//! ceiling or a count, never "fast enough": a slow host cannot make a limit look broken.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use quicstrap::client::NextStep;
use quicstrap::control::pacing::RateLimiter;
use quicstrap::Peer;

/// The token bucket may run ahead of its rate by its credit (100 ms) plus one chunk.
fn min_seconds(bytes: u64, rate: u64) -> f64 {
    (bytes.saturating_sub(rate / 10 + (1 << 20)) as f64) / rate as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_giving_up_past_its_partition_timeout_is_resumed_to_the_end() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (src, id, quic) = served(60, (30_000, 1000, 10_000), |c| {
        c.partition_timeout = Duration::from_secs(2)
    })
    .await;
    // Reads at 2 MB/s: 30 MB would take 15 s, and the server gives each transfer 2 s. Small
    // windows keep most of it on the server, so each cut lands mid-transfer.
    let f = slow_fetcher(2_000_000, |c| {
        c.policy.idle_timeout = Duration::from_secs(30);
        c.tuning.idle_timeout = Duration::from_secs(30);
        c.tuning.stream_window = 1 << 20;
        c.tuning.connection_window = 2 << 20;
    });
    let r = f
        .fetch(&id, &[peer(&quic)], dst.path())
        .await
        .expect("resumed after every cut until done");
    // The server's limit cut the transfer (a reset stream), the client kept what had arrived
    // and asked the same peer for the rest, again and again: a slow transfer that still moves
    // is never thrown away.
    let a = &r.attempts;
    assert!(a.len() >= 2, "{a:?}");
    assert_eq!(a[0].outcome, "stream_reset", "{a:?}");
    assert_eq!(a[0].next_step, Some(NextStep::Resume), "{a:?}");
    assert!(a.iter().all(|x| x.resent_bytes == 0), "{a:?}");
    assert!(a.last().unwrap().resumed_bytes > 0, "{a:?}");
    assert!(quic.stats().failed.load(Ordering::Relaxed) >= 1);
    wait_for("the slot to be released", Duration::from_secs(5), || {
        quic.snapshots().users() == 0
    })
    .await;
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    assert!(temp_dirs(dst.path()).is_empty());
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connectivity_check_is_capped_as_a_whole() {
    let _turn = turn(Needs::Nothing).await;
    // Peers that swallow every packet: each handshake would wait out its connect timeout.
    let holes: Vec<UdpSocket> = (0..24)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<Peer> = holes
        .iter()
        .map(|s| Peer::new(s.local_addr().unwrap()))
        .collect();
    let f = fetcher(|c| {
        c.policy.connect_timeout = Duration::from_secs(60);
        c.check_concurrency = 4;
        c.check_timeout = Duration::from_secs(2);
    });
    let start = Instant::now();
    let verdicts = f.check_peers(&peers).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "check took {took:?}");
    assert_eq!(verdicts.len(), peers.len());
    assert!(verdicts.iter().all(Result::is_err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_write_limit_holds_for_one_transfer_and_for_two_connections() {
    let _turn = turn(Needs::Nothing).await;
    const RATE: u64 = 4_000_000;
    let src = tempfile::tempdir().unwrap();
    let (a, b) = (id(61), id(62));
    seed(src.path(), &a, 12_000, 1000, 4_000);
    seed(src.path(), &b, 12_000, 1000, 4_000);
    let quic = server(src.path(), |c| {
        c.policy.write_limiter = RateLimiter::new(RATE)
    })
    .await;

    // One transfer.
    let dst = tempfile::tempdir().unwrap();
    let start = Instant::now();
    fetcher(|_| {})
        .fetch(&a, &[peer(&quic)], dst.path())
        .await
        .unwrap();
    let (bytes, secs) = (sent(&quic), start.elapsed().as_secs_f64());
    assert!(
        secs >= min_seconds(bytes, RATE),
        "{bytes} bytes in {secs:.2} s: over the {RATE} B/s write limit"
    );
    assert_same(&a.dir(src.path()), &a.dir(dst.path()));

    // Two clients (two connections) at once share the same limit.
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (f1, f2) = (fetcher(|_| {}), fetcher(|_| {}));
    let before = sent(&quic);
    let start = Instant::now();
    let peers = [peer(&quic)];
    let (r1, r2) = tokio::join!(
        f1.fetch(&a, &peers, d1.path()),
        f2.fetch(&b, &peers, d2.path())
    );
    r1.unwrap();
    r2.unwrap();
    let (bytes, secs) = (sent(&quic) - before, start.elapsed().as_secs_f64());
    assert!(
        secs >= min_seconds(bytes, RATE),
        "{bytes} bytes over two connections in {secs:.2} s: over the shared {RATE} B/s"
    );
    assert_eq!(quic.stats().connections.load(Ordering::Relaxed), 3);
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_receives_at_most_max_partitions_at_once() {
    let _turn = turn(Needs::Nothing).await;
    const MAX: usize = 3;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let ids: Vec<_> = (0..8).map(|p| id(70 + p)).collect();
    for id in &ids {
        seed(src.path(), id, 3_000, 1000, 1_000);
    }
    let quic = server(src.path(), |c| {
        c.policy.write_limiter = RateLimiter::new(6_000_000)
    })
    .await;
    let f = Arc::new(fetcher(|c| c.max_partitions = MAX));
    let runs: Vec<_> = ids
        .iter()
        .map(|id| spawn_fetch(&f, id, vec![peer(&quic)], dst.path()))
        .collect();
    // Sample how many are receiving (a temp dir each) until all are done. (Not the server's
    // snapshot users: a partition's turn ends when its commit does, and the server counts
    // the transfer until the client's Done reaches it, so under load the next request can
    // arrive first.)
    let mut most = 0;
    while runs.iter().any(|(t, _)| !t.is_finished()) {
        most = most.max(temp_dirs(dst.path()).len());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        most <= MAX,
        "{most} partitions received at once, limit {MAX}"
    );
    assert_eq!(
        most, MAX,
        "the limit was never reached: the test measured nothing"
    );
    for (t, _) in runs {
        t.await.unwrap().unwrap();
    }
    for id in &ids {
        assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    }
    quic.shutdown().await;
}

type Run = (
    tokio::task::JoinHandle<Result<quicstrap::FetchReport, quicstrap::FetchError>>,
    Arc<quicstrap::client::Progress>,
);

/// File payload bytes a server has written to its streams.
fn sent(quic: &quicstrap::Server) -> u64 {
    quic.stats().bytes_sent.load(Ordering::Relaxed)
}

/// Until every run is done, samples what the server has written to its streams and the
/// clients have not yet received: the server's send queue plus the clients' unread data.
/// Returns the most of that, of `budget`'s grant, and of its connections at once.
async fn sample_queue(
    servers: &[&quicstrap::Server],
    budget: &quicstrap::control::budget::BufferBudget,
    runs: &[Run],
) -> (u64, u64, usize) {
    let (mut queued, mut granted, mut conns) = (0, 0, 0);
    while runs.iter().any(|(t, _)| !t.is_finished()) {
        let received: u64 = runs
            .iter()
            .map(|(_, p)| p.received.load(Ordering::Relaxed))
            .sum();
        let written: u64 = servers.iter().map(|s| sent(s)).sum();
        queued = queued.max(written.saturating_sub(received));
        granted = granted.max(budget.granted());
        conns = conns.max(budget.connections());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (queued, granted, conns)
}

/// Four clients at once split a send budget too small for all of them: the server never
/// grants more than its cap, every client is served to the end (a fair share each, nobody
/// starved into a timeout), and the budget is whole again afterwards. (That a slow path
/// queues no more than its share is the emulated-link check of `benches/memory.rs`: on
/// loopback nothing waits for the path.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_share_the_servers_send_budget_and_none_starves() {
    let _turn = turn(Needs::Nothing).await;
    const CAP: u64 = 12 << 20;
    let src = tempfile::tempdir().unwrap();
    let ids: Vec<_> = (0..4).map(|p| id(80 + p)).collect();
    for id in &ids {
        seed(src.path(), id, 10_000, 1000, 2_500);
    }
    let quic = server(src.path(), |c| {
        c.max_send_buffer = CAP;
        c.policy.write_limiter = RateLimiter::new(0);
    })
    .await;
    let dst = tempfile::tempdir().unwrap();
    // One fetcher each (four connections, each with its own window), reading 4 MB/s so the
    // transfers overlap.
    let runs: Vec<Run> = ids
        .iter()
        .map(|id| {
            spawn_fetch(
                &slow_fetcher(4_000_000, |_| {}),
                id,
                vec![peer(&quic)],
                dst.path(),
            )
        })
        .collect();
    let budget = quic.send_budget().clone();
    let (_, granted, conns) = sample_queue(&[&quic], &budget, &runs).await;
    assert!(granted <= CAP, "{granted} bytes granted, cap {CAP}");
    assert_eq!(
        conns, 4,
        "the transfers never overlapped: the test measured nothing"
    );
    for (t, _) in runs {
        t.await.unwrap().expect("every client is served");
    }
    for id in &ids {
        assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    }
    assert_eq!((budget.granted(), budget.connections()), (0, 0));
    quic.shutdown().await;
}

/// A client that reads slowly from two peers holds no more unread data than its receive
/// budget: flow control lets a server write only as far as the client's window, and without
/// path-sized windows each connection would let 96 MiB pile up unread. The cap here fits both
/// connections' loopback windows (the 8 MiB floor) and the four transfers' receive buffers,
/// so no window is ever shrunk below credit already granted (QUIC cannot take credit back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_no_more_unread_data_than_its_receive_budget() {
    let _turn = turn(Needs::Nothing).await;
    const CAP: u64 = 2 * quicstrap::net::transport::MIN_RECV_WINDOW + 4 * (2 << 20);
    let src = tempfile::tempdir().unwrap();
    let ids: Vec<_> = (0..4).map(|p| id(90 + p)).collect();
    for id in &ids {
        seed(src.path(), id, 20_000, 1000, 5_000);
    }
    let quick = |c: &mut quicstrap::ServerConfig| c.policy.write_limiter = RateLimiter::new(0);
    let (a, b) = (
        server(src.path(), quick).await,
        server(src.path(), quick).await,
    );
    let dst = tempfile::tempdir().unwrap();
    // One fetcher reading 10 MB/s in all; two connections (one per peer), two partitions
    // on each.
    let f = slow_fetcher(10_000_000, |c| c.max_recv_buffer = CAP);
    let runs: Vec<Run> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let p = if i % 2 == 0 { peer(&a) } else { peer(&b) };
            spawn_fetch(&f, id, vec![p], dst.path())
        })
        .collect();
    let (queued, granted, conns) = sample_queue(&[&a, &b], f.recv_budget(), &runs).await;
    assert!(granted <= CAP, "{granted} bytes granted, cap {CAP}");
    assert_eq!(
        conns, 2,
        "the transfers never overlapped: the test measured nothing"
    );
    assert!(
        queued <= CAP,
        "{queued} bytes written and not yet received, cap {CAP}"
    );
    for (t, _) in runs {
        t.await.unwrap().expect("every partition arrives");
    }
    for id in &ids {
        assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    }
    assert_eq!(
        (f.recv_budget().granted(), f.recv_budget().connections()),
        (0, 0)
    );
    a.shutdown().await;
    b.shutdown().await;
}
