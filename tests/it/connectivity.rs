//! The connectivity check: candidates are handshaked at once, verdicts are cached for the
//! freshness window (dead peers are not retried within it), and the good peer's connection
//! stays warm for the transfers that follow.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;
use quicstrap::Peer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peers_are_checked_once_and_the_good_connection_is_reused() {
    let _turn = turn(Needs::Nothing).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (a, b) = (id(70), id(71));
    seed(src.path(), &a, 2_000, 200, 1_000);
    seed(src.path(), &b, 2_000, 200, 1_000);
    let good = server(src.path(), |_| {}).await;
    // Nobody answers on these: each handshake runs into the connect timeout.
    let dead: Vec<Peer> = (0..3)
        .map(|i| Peer::new(format!("127.0.0.1:{}", 9 + i).parse().unwrap()))
        .collect();
    let mut peers = dead.clone();
    peers.push(peer(&good));
    let f = fetcher(|c| c.policy.connect_timeout = Duration::from_secs(2));

    let first = f.fetch(&a, &peers, dst.path()).await.unwrap();
    let outcomes: Vec<_> = first.attempts.iter().map(|x| x.outcome.as_str()).collect();
    assert_eq!(outcomes[3], "ok");
    for x in &first.attempts[..3] {
        assert!(
            ["connect_timeout", "connect_failed"].contains(&x.outcome.as_str()),
            "{x:?}"
        );
    }
    assert_eq!(f.connectivity_cache_len(), 4);

    // Within the freshness window the dead peers are not tried again, and the good peer's
    // connection from the check is the one the transfers use.
    let second = f.fetch(&b, &peers, dst.path()).await.unwrap();
    for x in &second.attempts[..3] {
        assert!(
            // A retry waits out the connect timeout; a skip takes no time. Half the timeout
            // tells them apart on any host.
            x.seconds < 1.0,
            "a cached dead peer was retried: {x:?} (connect timeout is 2 s)"
        );
    }
    assert_eq!(second.attempts[3].outcome, "ok");
    assert_eq!(good.stats().connections.load(Ordering::Relaxed), 1);
    assert_same(&a.dir(src.path()), &a.dir(dst.path()));
    assert_same(&b.dir(src.path()), &b.dir(dst.path()));

    // The check alone reports each verdict in order.
    let verdicts = f.check_peers(&peers).await;
    assert!(verdicts[..3].iter().all(|v| v.is_err()));
    assert!(verdicts[3].is_ok());
    f.close().await;
    good.shutdown().await;
}
